"""Sampled scoring and the GRU4Rec losses (REFERENCE §4), plain-torch reference.

A step with b active lanes scores C = b + n_sample columns
    Y = [targets of the b lanes ; n_sample extra items shared by the step]
    R = h · W[Y]ᵀ + bias[Y]                                  (b, C)
Lane i's positive is column i; every other column is a negative for it (nothing is masked,
even a negative equal to the positive). Every loss returns the SUM over lanes; the caller
divides by the configured batch size B.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import LOSSES

_EPS = 1e-24


def sampled_scores(h: torch.Tensor, item_rows: torch.Tensor, item_bias: torch.Tensor) -> torch.Tensor:
    """R (b, C) = h (b, H) · item_rows (C, H)ᵀ + item_bias (C,)."""
    return torch.addmm(item_bias, h, item_rows.t())


def logq_column_correction(log_support_y: torch.Tensor, b: int, sample_alpha: float) -> torch.Tensor:
    """log q_j per column (C,): log support for the b in-batch columns, alpha·log support for
    the extra-sample columns (q = support^alpha, raw counts)."""
    lq = log_support_y.clone()
    lq[b:] *= sample_alpha
    return lq


def _softmax_negatives(R: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """Softmax of each row over its negatives only (the positive column gets weight 0)."""
    e = torch.exp(R - R.max(dim=1, keepdim=True).values) * (1.0 - pos_mask)
    return e / e.sum(dim=1, keepdim=True)


def positive_mask(b: int, C: int, like: torch.Tensor) -> torch.Tensor:
    """(b, C) float mask with ones at (i, i): lane i's positive column."""
    m = torch.zeros(b, C, dtype=like.dtype, device=like.device)
    m[:, :b].fill_diagonal_(1.0)
    return m


def sampled_loss_reference(R: torch.Tensor, loss: str, *, logq_per_column: Optional[torch.Tensor] = None,
                           logq: float = 0.0, bpreg: float = 0.0, elu_param: float = 0.0,
                           pos_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over lanes of the per-lane loss for scores R (b, C), positives on the diagonal.

    logq_per_column: (C,) log q_j (see logq_column_correction), used by cross-entropy when
    logq > 0. pos_mask: optional cached positive_mask(b, C).
    """
    b, C = R.shape
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    if pos_mask is None:
        pos_mask = positive_mask(b, C, R)
    if loss == "cross-entropy":
        if logq > 0:
            R = R - logq * logq_per_column
        p = torch.softmax(R, dim=1)
        return -torch.log(p[:, :b].diagonal() + _EPS).sum()
    if loss in ("bpr-max", "top1-max") and elu_param > 0:
        R = F.elu(R, alpha=elu_param)
    r_pos = R[:, :b].diagonal().unsqueeze(1)                   # (b, 1)
    if loss == "bpr-max":
        s = _softmax_negatives(R, pos_mask)
        return (-torch.log((s * torch.sigmoid(r_pos - R)).sum(dim=1) + _EPS)
                + bpreg * (s * R * R).sum(dim=1)).sum()
    if loss == "top1-max":
        s = _softmax_negatives(R, pos_mask)
        return (s * (torch.sigmoid(R - r_pos) + torch.sigmoid(R * R))).sum()
    if loss == "top1":
        # mean over all C columns, with the positive's own regulariser σ(r_i²) removed
        per_col = torch.sigmoid(R - r_pos) + torch.sigmoid(R * R)
        return (per_col.sum(dim=1) - torch.sigmoid(r_pos.squeeze(1) ** 2)).sum() / C
    # bpr (ICLR 2016): the mean over all C columns of -log σ(r_i - r_j)
    return -F.logsigmoid(r_pos - R).sum() / C


def sampled_loss(R, loss, *, backend: str = "auto", **kwargs):
    """Dispatching entry point; the fused Triton score+loss plugs in here (backend "triton")."""
    if backend not in ("auto", "torch"):
        raise ValueError(f"scoring backend {backend!r} is not available (torch)")
    return sampled_loss_reference(R, loss, **kwargs)
