"""Full-catalog rank of the target (REFERENCE §5), plain-torch reference.

For each row: n_greater = #(items scoring > target), n_equal = #(items scoring == target,
the target included). The target's score is read from the same score matrix as the others
(never recomputed by a separate dot product: that shifts ranks by rounding).
"""
from __future__ import annotations

from typing import Tuple

import torch

RANK_MODES = ("standard", "conservative", "median")


def rank_counts_from_scores(scores: torch.Tensor, targets: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """scores (b, N), targets int64 (b,) -> (n_greater, n_equal), int64 (b,) each."""
    t = scores.gather(1, targets.unsqueeze(1))
    return (scores > t).sum(dim=1), (scores == t).sum(dim=1)


def rank_counts_from_hidden(h: torch.Tensor, item_weight: torch.Tensor, item_bias: torch.Tensor,
                            targets: torch.Tensor, max_elements: int = 1 << 24
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rank counts of scores h (b, H) · item_weight (N, H)ᵀ + item_bias (N,) without holding
    more than ``max_elements`` scores at once: items are taken in tiles of T columns.

    When the catalog fits one tile this is one pass. Otherwise a first pass reads each target's
    score from its own tile and a second pass counts; both passes compute each tile with the
    same call on the same shapes, so the target's score is bit-identical to the others'.
    """
    b, N = h.shape[0], item_weight.shape[0]
    T = max(1, min(N, max_elements // max(b, 1)))
    if T >= N:
        return rank_counts_from_scores(torch.addmm(item_bias, h, item_weight.t()), targets)
    tile_of = lambda lo: torch.addmm(item_bias[lo:lo + T], h, item_weight[lo:lo + T].t())
    target_score = torch.empty(b, dtype=h.dtype, device=h.device)
    for lo in range(0, N, T):
        rows = torch.nonzero((targets >= lo) & (targets < lo + T)).squeeze(1)
        if rows.numel():
            s = tile_of(lo)
            target_score[rows] = s[rows, targets[rows] - lo]
    n_greater = torch.zeros(b, dtype=torch.int64, device=h.device)
    n_equal = torch.zeros(b, dtype=torch.int64, device=h.device)
    t = target_score.unsqueeze(1)
    for lo in range(0, N, T):
        s = tile_of(lo)
        n_greater += (s > t).sum(dim=1)
        n_equal += (s == t).sum(dim=1)
    return n_greater, n_equal


def ranks_from_counts(n_greater: torch.Tensor, n_equal: torch.Tensor, mode: str) -> torch.Tensor:
    """float64 ranks (1 = best): standard #(>)+1, conservative #(>=), median in between."""
    g, e = n_greater.double(), n_equal.double()
    if mode == "standard":
        return g + 1
    if mode == "conservative":
        return g + e
    if mode == "median":
        return g + 0.5 * (e - 1) + 1
    raise ValueError(f"unknown rank mode {mode!r} (choose from {', '.join(RANK_MODES)})")
