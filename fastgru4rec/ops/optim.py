"""Adagrad with heavy-ball momentum (REFERENCE §4), dense and sparse-row forms.

    acc += g²;  v = μ·v - lr·g / sqrt(acc + 1e-6);  p += v

Item tables are updated sparsely: only the rows used in a step change, their accumulator and
velocity included (lazy momentum). Duplicate indices must be summed before squaring: callers
pass UNIQUE row indices with the summed row gradients (a gather of unique rows as a leaf tensor
gives exactly that from autograd).

The fast engine's forms have fixed shapes and never wait for the device (so a CUDA graph can
capture them): ``adagrad_momentum_scatter`` takes repeated ids and sums their gradients itself
(sort, not torch.unique), with a one-launch Triton kernel on CUDA that can update the bias rows
too; ``adagrad_momentum_list`` updates all dense parameters in one Triton launch per four
tensors on CUDA, ``adagrad_momentum_foreach`` (its reference) in seven multi-tensor launches.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .backend import load_contracts, load_kernels, reference_forced, resolve_backend

_contracts = load_contracts()

EPS = 1e-6


@torch.no_grad()
def adagrad_momentum_dense(param: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor,
                           vel: Optional[torch.Tensor], lr: float, momentum: float) -> None:
    _check_vel(vel, momentum, "adagrad_momentum_dense")
    acc.addcmul_(grad, grad)
    step = grad * torch.rsqrt(acc + EPS)
    if momentum > 0:
        vel.mul_(momentum).sub_(step, alpha=lr)
        param.add_(vel)
    else:
        param.sub_(step, alpha=lr)


def _native_rows_problem(*groups) -> Optional[str]:
    """Why the C++ row update cannot take these tensors, or None: each group (a table, its acc,
    vel, grad; None entries skipped) must hold CPU float32/float64 tensors of one dtype, the
    table, acc and vel contiguous (grad is made contiguous by the caller)."""
    for group in groups:
        tensors = [t for t in group if t is not None]
        dtype = tensors[0].dtype
        if dtype not in (torch.float32, torch.float64):
            return f"dtype {dtype} (native takes float32 or float64)"
        for t in tensors:
            if t.device.type != "cpu":
                return f"a tensor on {t.device} (native runs on the CPU)"
            if t.dtype != dtype:
                return f"mixed dtypes {dtype} and {t.dtype} in one table's tensors"
            if t is not group[3] and not t.is_contiguous():
                return "a non-contiguous tensor"
    return None


def _use_native(backend: str, groups) -> bool:
    """backend "native": yes, or ValueError naming what does not fit, before anything is
    written. "auto": when the tensors fit, the extension loads and FASTGRU4REC_BACKEND=torch
    does not ask for the reference."""
    if backend == "native":
        problem = _native_rows_problem(*groups)
        if problem is not None:
            raise ValueError(f"optimizer backend 'native': {problem}")
        return True
    if backend != "auto" or reference_forced() or _native_rows_problem(*groups) is not None:
        return False
    from .. import native
    return native.available()


def _native_args(table, acc, vel, ids, grad) -> tuple:
    """One table's arguments of the C++ row update as numpy views: (table, acc, vel or None,
    ids int64, grad), the ids and grad made contiguous (the others were checked to be)."""
    return (table.numpy(), acc.numpy(), vel.numpy() if vel is not None else None,
            ids.to(torch.int64).contiguous().numpy(), grad.contiguous().numpy())


def _check_vel(vel: Optional[torch.Tensor], momentum: float, what: str) -> None:
    if momentum > 0 and vel is None:
        raise ValueError(f"{what}: momentum={momentum} needs a velocity tensor (vel is None)")


@torch.no_grad()
def adagrad_momentum_rows(table: torch.Tensor, rows: torch.Tensor, grad_rows: torch.Tensor,
                          acc: torch.Tensor, vel: Optional[torch.Tensor], lr: float,
                          momentum: float, backend: str = "auto") -> None:
    """Update table[rows] (rows: int64 (u,), unique) with grad_rows (u, ...).

    backend: "torch" (the reference below), "native" (one C++ pass per row, CPU), "auto"
    (native for contiguous CPU float tensors when the extension loads, else, or with
    FASTGRU4REC_BACKEND=torch, torch). momentum > 0 needs vel; ValueError otherwise."""
    if backend not in ("auto", "torch", "native"):
        raise ValueError(f"optimizer backend {backend!r} is unknown (auto, torch, native)")
    _check_vel(vel, momentum, "adagrad_momentum_rows")
    vel = vel if momentum > 0 else None
    _contracts.check_rows_update("adagrad_momentum_rows", table, rows, grad_rows, acc, vel)
    if _use_native(backend, [(table, acc, vel, grad_rows)]):
        from .. import native
        native.adagrad_momentum_rows(*_native_args(table, acc, vel, rows, grad_rows), lr,
                                     momentum, EPS)
        return
    _update_rows(table, rows.long(), grad_rows, acc, vel, lr, momentum)   # checked above


@torch.no_grad()
def adagrad_momentum_rows_reference(table: torch.Tensor, rows: torch.Tensor,
                                    grad_rows: torch.Tensor, acc: torch.Tensor,
                                    vel: Optional[torch.Tensor], lr: float,
                                    momentum: float) -> None:
    """Plain-torch adagrad_momentum_rows."""
    _check_vel(vel, momentum, "adagrad_momentum_rows_reference")
    vel = vel if momentum > 0 else None
    _contracts.check_rows_update("adagrad_momentum_rows", table, rows, grad_rows, acc, vel)
    _update_rows(table, rows.long(), grad_rows, acc, vel, lr, momentum)


def _update_rows(table, rows, g, acc, vel, lr, momentum) -> None:
    """Gather rows, update, write back. ``rows`` may repeat only where the ``g`` rows of the
    repeats are equal (then every copy computes, and writes, the same values)."""
    acc_rows = acc.index_select(0, rows).addcmul_(g, g)
    acc.index_copy_(0, rows, acc_rows)
    step = g * torch.rsqrt(acc_rows + EPS)
    if momentum > 0:
        v = vel.index_select(0, rows).mul_(momentum).sub_(step, alpha=lr)
        vel.index_copy_(0, rows, v)
        table.index_copy_(0, rows, table.index_select(0, rows).add_(v))
    else:
        table.index_copy_(0, rows, table.index_select(0, rows).sub_(step, alpha=lr))


@torch.no_grad()
def adagrad_momentum_foreach(params: List[torch.Tensor], grads: List[torch.Tensor],
                             accs: List[torch.Tensor], vels: Optional[List[torch.Tensor]],
                             lr: float, momentum: float) -> None:
    """adagrad_momentum_dense on several parameters at once (torch._foreach_*: a few
    multi-tensor launches instead of five per parameter); same arithmetic, same results."""
    if not params:
        return
    torch._foreach_addcmul_(accs, grads, grads)
    denom = torch._foreach_add(accs, EPS)
    torch._foreach_rsqrt_(denom)
    steps = torch._foreach_mul(grads, denom)
    if momentum > 0:
        torch._foreach_mul_(vels, momentum)
        torch._foreach_add_(vels, steps, alpha=-lr)
        torch._foreach_add_(params, vels)
    else:
        torch._foreach_add_(params, steps, alpha=-lr)


@torch.no_grad()
def adagrad_momentum_list(params: List[torch.Tensor], grads: List[torch.Tensor],
                          accs: List[torch.Tensor], vels: Optional[List[torch.Tensor]],
                          lr: float, momentum: float, backend: str = "auto") -> None:
    """adagrad_momentum_dense on every tensor of a list. backend: "torch"
    (adagrad_momentum_foreach, the reference), "triton" (one launch per four tensors,
    kernels/optim.py), "auto" (triton on CUDA)."""
    if not params:
        return
    if not len(grads) == len(accs) == len(params) or (vels is not None
                                                      and len(vels) != len(params)):
        raise ValueError(f"adagrad_momentum_list: {len(params)} params, {len(grads)} grads, "
                         f"{len(accs)} accs, {'no' if vels is None else len(vels)} vels")
    _check_vel(vels, momentum, "adagrad_momentum_list")
    if resolve_backend(backend, params[0], "optimizer") == "triton":
        load_kernels("optim").adagrad_momentum_dense_list(params, grads, accs, vels, lr,
                                                          momentum, EPS)
        return
    adagrad_momentum_foreach(params, grads, accs, vels, lr, momentum)


@torch.no_grad()
def adagrad_momentum_scatter(table: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor,
                             acc: torch.Tensor, vel: Optional[torch.Tensor], lr: float,
                             momentum: float, backend: str = "auto", bias=None) -> None:
    """adagrad_momentum_rows for ids that may repeat: ids int64 (L,), grad (L, ...) one row per
    id occurrence; the gradients of equal ids are summed, then each touched row is updated
    once. Fixed shapes, no host sync. backend: "torch" (the reference: a sort, then sums by
    run), "triton" (CUDA, one launch after the sort), "native" (CPU: one C++ pass, the sums by
    a hash of the ids, no sort), "auto" (triton on CUDA; native for contiguous CPU float
    tensors when the extension loads; else, or with FASTGRU4REC_BACKEND=torch, torch).
    momentum > 0 needs vel (and the bias's vel); ValueError otherwise.

    bias: optional (bias_table (N,), bias_grad (L - offset,), bias_acc, bias_vel, offset): the
    same update of bias_table at ids[offset:] (the training step's columns when ids are
    [inputs; columns]); on triton in the same launch as the table, after the same sort."""
    if backend not in ("auto", "torch", "triton", "native"):
        raise ValueError(f"optimizer backend {backend!r} is unknown (auto, torch, triton, native)")
    if bias is not None:
        offset, n_cols = bias[4], bias[1].shape[0]
        if not 0 <= offset <= ids.shape[0] or n_cols != ids.shape[0] - offset:
            raise ValueError(f"adagrad_momentum_scatter: bias_grad has {n_cols} rows; the ids "
                             f"past offset {offset} are {ids.shape[0] - offset}")
    _check_vel(vel, momentum, "adagrad_momentum_scatter")
    if bias is not None:
        _check_vel(bias[3], momentum, "adagrad_momentum_scatter (bias)")
    used_vel = vel if momentum > 0 else None
    _contracts.check_rows_update("adagrad_momentum_scatter", table, ids, grad, acc, used_vel)
    # dtype, device and layout of every tensor the native pass touches: checked ("native")
    # or deciding the fallback ("auto") before anything is written
    groups = [(table, acc, used_vel, grad)]
    if bias is not None:
        groups.append((bias[0], bias[2], bias[3] if momentum > 0 else None, bias[1]))
    if _use_native(backend, groups):
        # one C++ call for both tables: it checks shapes and id ranges of both before it
        # writes either (DataError, a ValueError, naming the bias's arrays "bias ...")
        from .. import native
        t, a, v, g = groups[0]
        b_args = None
        if bias is not None:
            bt, ba, bv, bg = groups[1]
            b_args = _native_args(bt, ba, bv, ids[bias[4]:], bg)
        native.adagrad_momentum_scatter(*_native_args(t, a, v, ids, g), lr, momentum, EPS,
                                        bias=b_args)
        return
    sorted_ids, perm = torch.sort(ids)
    if resolve_backend(backend, table, "optimizer") == "triton":
        load_kernels("optim").adagrad_momentum_sorted_rows(
            table, sorted_ids, perm, grad, acc, vel, lr, momentum, EPS, bias=bias)
        return
    if bias is not None:
        b_table, b_grad, b_acc, b_vel, offset = bias
        adagrad_momentum_scatter(b_table, ids[offset:], b_grad, b_acc, b_vel, lr, momentum,
                                 backend="torch")
    # Reference: every sorted position computes its id's new row from the summed gradient;
    # equal ids compute identical values, so their duplicate writes agree.
    g = grad.index_select(0, perm)
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    run = torch.cumsum(first, 0) - 1                      # (L,) index of each id's run
    g = torch.zeros_like(g).index_add_(0, run, g).index_select(0, run)
    _update_rows(table, sorted_ids, g, acc, vel, lr, momentum)
