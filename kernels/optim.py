"""Triton kernel for the sparse Adagrad-with-momentum update of item-table rows (REFERENCE §4),
in the fixed-shape form the fast training engine needs (no torch.unique, no host sync).

Input: the L row ids a step touched, SORTED (duplicates allowed and adjacent), the permutation
that sorted them, and one gradient row per ORIGINAL position (L, H). One program per sorted
position; only the first position of each run of equal ids does work: it sums the gradient rows
of its run, then updates that table row once:

    acc += g²;  v = μ·v - lr·g / sqrt(acc + 1e-6);  p += v        (μ = 0: p -= lr·g / sqrt(..))

so each touched row is read and written exactly once (no race between duplicates) and the whole
update is one launch after the sort.

Interpreter rules (DESIGN.md): fp32 arithmetic, no libdevice, one configuration.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch


@triton.jit
def _adagrad_momentum_rows_kernel(p_rows, p_perm, p_grad, p_table, p_acc, p_vel, L, H,
                                  stride_g, stride_t, lr, momentum, eps,
                                  HAS_MOMENTUM: tl.constexpr, BLOCK_H: tl.constexpr):
    i = tl.program_id(0)
    row = tl.load(p_rows + i)
    prev = tl.load(p_rows + i - 1, mask=i > 0, other=-1)
    if row != prev:
        o_h = tl.arange(0, BLOCK_H)
        m_h = o_h < H
        g = tl.zeros([BLOCK_H], dtype=tl.float32)
        # sum the gradient rows of this id's run (its positions in the sorted order: i, i+1, ..)
        j = i
        r_j = row
        while r_j == row:
            src = tl.load(p_perm + j).to(tl.int64)
            g += tl.load(p_grad + src * stride_g + o_h, mask=m_h, other=0.0).to(tl.float32)
            j += 1
            r_j = tl.load(p_rows + j, mask=j < L, other=-1)
        base = row.to(tl.int64) * stride_t + o_h
        acc = tl.load(p_acc + base, mask=m_h, other=0.0).to(tl.float32) + g * g
        tl.store(p_acc + base, acc.to(p_acc.dtype.element_ty), mask=m_h)
        step = g / tl.sqrt(acc + eps)
        p = tl.load(p_table + base, mask=m_h, other=0.0).to(tl.float32)
        if HAS_MOMENTUM:
            v = tl.load(p_vel + base, mask=m_h, other=0.0).to(tl.float32) * momentum - lr * step
            tl.store(p_vel + base, v.to(p_vel.dtype.element_ty), mask=m_h)
            p = p + v
        else:
            p = p - lr * step
        tl.store(p_table + base, p.to(p_table.dtype.element_ty), mask=m_h)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """A (N,) table as (N, 1); an (N, H) table as is."""
    return t.view(-1, 1) if t.dim() == 1 else t


def adagrad_momentum_sorted_rows(table, sorted_ids, perm, grad, acc, vel, lr: float,
                                 momentum: float, eps: float) -> None:
    """Update ``table`` in place (with its ``acc`` / ``vel`` state, same shape) at the rows
    ``sorted_ids`` (int64 (L,), ascending, duplicates allowed). ``grad`` (L, H) or (L,) holds
    one gradient row per original position; ``perm`` (L,) int64 maps sorted positions to
    original ones (torch.sort's indices). Tables (N, H) or (N,), contiguous rows."""
    table2, acc2, grad2 = _as_rows(table), _as_rows(acc), _as_rows(grad)
    vel2 = _as_rows(vel) if vel is not None else acc2
    L, H = grad2.shape
    if L == 0:
        return
    for name, t in (("table", table2), ("acc", acc2), ("vel", vel2), ("grad", grad2)):
        if t.stride(1) != 1:
            raise ValueError(f"adagrad rows kernel: {name} rows must be contiguous")
    launch.require_cuda("the triton optimizer", table2, acc2, vel2, grad2, sorted_ids, perm)
    if acc2.stride(0) != table2.stride(0) or vel2.stride(0) != table2.stride(0):
        raise ValueError("adagrad rows kernel: table, acc and vel must have the same layout")
    _adagrad_momentum_rows_kernel[(L,)](
        sorted_ids, perm, grad2, table2, acc2, vel2, L, H, grad2.stride(0), table2.stride(0),
        float(lr), float(momentum), float(eps), HAS_MOMENTUM=vel is not None and momentum > 0,
        BLOCK_H=max(16, triton.next_power_of_2(H)), num_warps=4 if H >= 256 else 1)
