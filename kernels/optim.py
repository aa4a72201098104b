"""Triton kernels for the Adagrad-with-momentum updates of the fast training engine (REFERENCE
§4), in fixed-shape forms (no torch.unique, no host sync): the sparse update of item-table rows
(with the bias rows in the same pass) and the dense update of a list of parameters.

Sparse rows (``_adagrad_momentum_rows_kernel``):

Input: the L row ids a step touched, SORTED (duplicates allowed and adjacent), the permutation
that sorted them, and one gradient row per ORIGINAL position (L, H). One program per sorted
position; only the first position of each run of equal ids does work: it sums the gradient rows
of its run, then updates that table row once:

    acc += g²;  v = μ·v - lr·g / sqrt(acc + 1e-6);  p += v        (μ = 0: p -= lr·g / sqrt(..))

so each touched row is read and written exactly once (no race between duplicates) and the whole
update is one launch after the sort. With a bias table, the bias rows are the ids at original
positions >= bias_offset (the step's columns Y, when the item ids are [inputs; Y]): the same
program sums their bias gradients and, when its run holds at least one, updates the bias row
once too (a row touched only as an input keeps its bias, its accumulator and its velocity: lazy
momentum), so one sort and one launch serve both tables.

Dense list (``_adagrad_momentum_dense_kernel``): up to four parameters (a GRU layer's weight_ih,
weight_hh, bias_ih, bias_hh) per launch, one flat grid over their blocks; the engine's dense
update in one launch per layer instead of torch._foreach_*'s seven multi-tensor launches.

Interpreter rules (DESIGN.md): fp32 arithmetic, no libdevice, one configuration.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import contracts, launch


@triton.jit
def _adagrad_momentum_apply(p_table, p_acc, p_vel, offs, mask, g, lr, momentum, eps,
                            HAS_MOMENTUM: tl.constexpr):
    """acc += g²; v = μ·v - lr·g / sqrt(acc + eps); p += v (μ = 0: p -= lr·g / sqrt(..)) at
    ``offs`` (a block of elements or one scalar)."""
    acc = tl.load(p_acc + offs, mask=mask, other=0.0).to(tl.float32) + g * g
    tl.store(p_acc + offs, acc.to(p_acc.dtype.element_ty), mask=mask)
    step = g / tl.sqrt(acc + eps)
    p = tl.load(p_table + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_MOMENTUM:
        v = tl.load(p_vel + offs, mask=mask, other=0.0).to(tl.float32) * momentum - lr * step
        tl.store(p_vel + offs, v.to(p_vel.dtype.element_ty), mask=mask)
        p = p + v
    else:
        p = p - lr * step
    tl.store(p_table + offs, p.to(p_table.dtype.element_ty), mask=mask)


@triton.jit
def _adagrad_momentum_rows_kernel(p_rows, p_perm, p_grad, p_table, p_acc, p_vel,
                                  p_bgrad, p_bias, p_bacc, p_bvel, bias_offset, L, H,
                                  stride_g, stride_t, lr, momentum, eps,
                                  HAS_MOMENTUM: tl.constexpr, HAS_BIAS: tl.constexpr,
                                  BLOCK_H: tl.constexpr):
    i = tl.program_id(0)
    row = tl.load(p_rows + i)
    prev = tl.load(p_rows + i - 1, mask=i > 0, other=-1)
    if row != prev:
        o_h = tl.arange(0, BLOCK_H)
        m_h = o_h < H
        g = tl.zeros([BLOCK_H], dtype=tl.float32)
        g_bias = tl.zeros([1], dtype=tl.float32)
        n_bias = tl.zeros([1], dtype=tl.int32)       # occurrences of this id that carry a bias
        # sum the gradient rows of this id's run (its positions in the sorted order: i, i+1, ..)
        j = i
        r_j = row
        while r_j == row:
            src = tl.load(p_perm + j).to(tl.int64)
            g += tl.load(p_grad + src * stride_g + o_h, mask=m_h, other=0.0).to(tl.float32)
            if HAS_BIAS:
                is_col = (src + tl.zeros([1], dtype=tl.int64)) >= bias_offset
                g_bias += tl.load(p_bgrad + (src - bias_offset) + tl.zeros([1], dtype=tl.int64),
                                  mask=is_col, other=0.0).to(tl.float32)
                n_bias += is_col.to(tl.int32)
            j += 1
            r_j = tl.load(p_rows + j, mask=j < L, other=-1)
        _adagrad_momentum_apply(p_table, p_acc, p_vel, row.to(tl.int64) * stride_t + o_h, m_h,
                                g, lr, momentum, eps, HAS_MOMENTUM)
        if HAS_BIAS:
            _adagrad_momentum_apply(p_bias, p_bacc, p_bvel,
                                    row.to(tl.int64) + tl.zeros([1], dtype=tl.int64), n_bias > 0,
                                    g_bias, lr, momentum, eps, HAS_MOMENTUM)


@triton.jit
def _dense_block(p_param, p_grad, p_acc, p_vel, n, block, lr, momentum, eps,
                 HAS_MOMENTUM: tl.constexpr, BLOCK: tl.constexpr):
    offs = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(p_grad + offs, mask=mask, other=0.0).to(tl.float32)
    _adagrad_momentum_apply(p_param, p_acc, p_vel, offs, mask, g, lr, momentum, eps, HAS_MOMENTUM)


@triton.jit
def _adagrad_momentum_dense_kernel(p0, g0, a0, v0, n0, p1, g1, a1, v1, n1, p2, g2, a2, v2, n2,
                                   p3, g3, a3, v3, n3, end0, end1, end2, lr, momentum, eps,
                                   NT: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
                                   BLOCK: tl.constexpr):
    """Grid: the blocks of tensor 0, then of tensor 1, ... (end_t: the first block past tensor
    t). NT (1..4) tensors are live; the others' arguments are placeholders."""
    pid = tl.program_id(0)
    if pid < end0:
        _dense_block(p0, g0, a0, v0, n0, pid, lr, momentum, eps, HAS_MOMENTUM, BLOCK)
    if NT > 1:
        if (pid >= end0) & (pid < end1):
            _dense_block(p1, g1, a1, v1, n1, pid - end0, lr, momentum, eps, HAS_MOMENTUM, BLOCK)
    if NT > 2:
        if (pid >= end1) & (pid < end2):
            _dense_block(p2, g2, a2, v2, n2, pid - end1, lr, momentum, eps, HAS_MOMENTUM, BLOCK)
    if NT > 3:
        if pid >= end2:
            _dense_block(p3, g3, a3, v3, n3, pid - end2, lr, momentum, eps, HAS_MOMENTUM, BLOCK)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """A (N,) table as (N, 1); an (N, H) table as is."""
    return t.view(-1, 1) if t.dim() == 1 else t


def adagrad_momentum_sorted_rows(table, sorted_ids, perm, grad, acc, vel, lr: float,
                                 momentum: float, eps: float, bias=None) -> None:
    """Update ``table`` in place (with its ``acc`` / ``vel`` state, same shape) at the rows
    ``sorted_ids`` (int64 (L,), ascending, duplicates allowed). ``grad`` (L, H) or (L,) holds
    one gradient row per original position; ``perm`` (L,) int64 maps sorted positions to
    original ones (torch.sort's indices). Tables (N, H) or (N,), contiguous rows.

    bias: optional (bias_table (N,), bias_grad (L - offset,), bias_acc, bias_vel or None,
    offset): also update bias_table at the ids of original positions >= offset, bias_grad[k]
    being the gradient of original position offset + k (same lr, momentum)."""
    table2, acc2, grad2 = _as_rows(table), _as_rows(acc), _as_rows(grad)
    vel2 = _as_rows(vel) if vel is not None else acc2
    L, H = grad2.shape
    # the kernel writes row * stride + column for columns < H (the gradient's width) at the
    # given ids: a table of another width, or state of another shape, would be written past
    # its end. Ids are not range-checked (a host sync per step): they must be rows of table.
    for name, t in (("acc", acc2), ("vel", vel2)):
        if t.shape != table2.shape:
            raise ValueError(f"adagrad rows kernel: {name} has shape {tuple(t.shape)}, the "
                             f"table {tuple(table2.shape)}")
    if table2.shape[1] != H:
        raise ValueError(f"adagrad rows kernel: gradient rows have {H} columns, the table "
                         f"{table2.shape[1]}")
    sorted_ids = contracts.index_vector("adagrad rows kernel: sorted_ids", sorted_ids, L)
    perm = contracts.index_vector("adagrad rows kernel: perm", perm, L)
    if L == 0:
        return
    for name, t in (("table", table2), ("acc", acc2), ("vel", vel2), ("grad", grad2)):
        if t.stride(1) != 1:
            raise ValueError(f"adagrad rows kernel: {name} rows must be contiguous")
    launch.require_cuda("the triton optimizer", table2, acc2, vel2, grad2, sorted_ids, perm)
    if acc2.stride(0) != table2.stride(0) or vel2.stride(0) != table2.stride(0):
        raise ValueError("adagrad rows kernel: table, acc and vel must have the same layout")
    has_momentum = vel is not None and momentum > 0
    if bias is not None:
        b_table, b_grad, b_acc, b_vel, offset = bias
        if (vel is None) != (b_vel is None):
            raise ValueError("adagrad rows kernel: table and bias need velocities alike")
        for name, t in (("bias", b_table), ("bias acc", b_acc), ("bias grad", b_grad),
                        ("bias vel", b_vel if b_vel is not None else b_acc)):
            if t.dim() != 1 or t.stride(0) != 1:
                raise ValueError(f"adagrad rows kernel: {name} must be a contiguous vector")
        if b_acc.shape != b_table.shape or (b_vel is not None and b_vel.shape != b_table.shape):
            raise ValueError("adagrad rows kernel: bias acc / vel must have the bias's shape")
        if not 0 <= offset <= L or b_grad.shape[0] != L - offset:
            raise ValueError(f"adagrad rows kernel: bias_grad has {b_grad.shape[0]} rows, "
                             f"the ids past offset {offset} are {L - offset}")
        launch.require_cuda("the triton optimizer", b_table, b_grad, b_acc)
        bias_args = (b_grad, b_table, b_acc, b_vel if b_vel is not None else b_acc, int(offset))
    else:
        bias_args = (grad2, table2, acc2, vel2, 0)   # placeholders (HAS_BIAS=False)
    _adagrad_momentum_rows_kernel[(L,)](
        sorted_ids, perm, grad2, table2, acc2, vel2, *bias_args, L, H, grad2.stride(0),
        table2.stride(0), float(lr), float(momentum), float(eps), HAS_MOMENTUM=has_momentum,
        HAS_BIAS=bias is not None, BLOCK_H=max(16, launch.next_pow2(H)),
        num_warps=4 if H >= 256 else 1)


_DENSE_PER_LAUNCH = 4   # the kernel's tensor slots
#: elements per program of the dense update (4 fp32 streams in, 3 out: memory-bound)
_DENSE_BLOCK = 1024


def adagrad_momentum_dense_list(params, grads, accs, vels, lr: float, momentum: float,
                                eps: float) -> None:
    """The dense update of every tensor of ``params`` (with ``grads``, ``accs``, ``vels`` or
    None: same shapes, contiguous), four tensors per launch."""
    has_momentum = vels is not None and momentum > 0
    for lo in range(0, len(params), _DENSE_PER_LAUNCH):
        slots, ends, n_blocks = [], [], 0
        for i in range(lo, min(lo + _DENSE_PER_LAUNCH, len(params))):
            p, g, a = params[i], grads[i], accs[i]
            v = vels[i] if has_momentum else a
            for name, t in (("param", p), ("grad", g), ("acc", a), ("vel", v)):
                if not t.is_contiguous() or t.shape != p.shape:
                    raise ValueError(f"adagrad dense kernel: {name} {i} must be contiguous with "
                                     f"the parameter's shape {tuple(p.shape)}")
            launch.require_cuda("the triton optimizer", p, g, a, v)
            slots += [p, g, a, v, p.numel()]
            n_blocks += launch.cdiv(p.numel(), _DENSE_BLOCK)
            ends.append(n_blocks)
        nt = len(ends)
        slots += slots[:5] * (_DENSE_PER_LAUNCH - nt)   # placeholders for the unused slots
        ends += [n_blocks] * (_DENSE_PER_LAUNCH - nt)
        if n_blocks == 0:
            continue
        _adagrad_momentum_dense_kernel[(n_blocks,)](
            *slots, *ends[:3], float(lr), float(momentum), float(eps), NT=nt,
            HAS_MOMENTUM=has_momentum, BLOCK=_DENSE_BLOCK)
