"""Adagrad with heavy-ball momentum (REFERENCE §4), dense and sparse-row forms.

    acc += g²;  v = μ·v - lr·g / sqrt(acc + 1e-6);  p += v

Item tables are updated sparsely: only the rows used in a step change, their accumulator and
velocity included (lazy momentum). Duplicate indices must be summed before squaring: callers
pass UNIQUE row indices with the summed row gradients (a gather of unique rows as a leaf tensor
gives exactly that from autograd).
"""
from __future__ import annotations

from typing import Optional

import torch

EPS = 1e-6


@torch.no_grad()
def adagrad_momentum_dense(param: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor,
                           vel: Optional[torch.Tensor], lr: float, momentum: float) -> None:
    acc.addcmul_(grad, grad)
    step = grad * torch.rsqrt(acc + EPS)
    if momentum > 0:
        vel.mul_(momentum).sub_(step, alpha=lr)
        param.add_(vel)
    else:
        param.sub_(step, alpha=lr)


@torch.no_grad()
def adagrad_momentum_rows(table: torch.Tensor, rows: torch.Tensor, grad_rows: torch.Tensor,
                          acc: torch.Tensor, vel: Optional[torch.Tensor], lr: float,
                          momentum: float) -> None:
    """Update table[rows] (rows: int64 (u,), unique) with grad_rows (u, ...)."""
    acc_rows = acc.index_select(0, rows).addcmul_(grad_rows, grad_rows)
    acc.index_copy_(0, rows, acc_rows)
    step = grad_rows * torch.rsqrt(acc_rows + EPS)
    if momentum > 0:
        v = vel.index_select(0, rows).mul_(momentum).sub_(step, alpha=lr)
        vel.index_copy_(0, rows, v)
        table.index_add_(0, rows, v)
    else:
        table.index_add_(0, rows, step, alpha=-lr)
