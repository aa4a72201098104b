"""Full-catalog rank of the target (REFERENCE §5), plain-torch reference.

For each row: n_greater = #(items scoring > target), n_equal = #(items scoring == target,
the target included). The target's score is read from the same score matrix as the others
(never recomputed by a separate dot product: that shifts ranks by rounding).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .backend import load_contracts, load_kernels, resolve_backend

_contracts = load_contracts()

RANK_MODES = ("standard", "conservative", "median")


def rank_counts_from_scores(scores: torch.Tensor, targets: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """scores (b, N), targets int64 (b,) -> (n_greater, n_equal), int64 (b,) each."""
    targets = _contracts.index_vector("targets", targets, scores.shape[0]).long()
    t = scores.gather(1, targets.unsqueeze(1))
    return (scores > t).sum(dim=1), (scores == t).sum(dim=1)


def _count_above_and_equal(scores: torch.Tensor, target_score: torch.Tensor,
                           flags: torch.Tensor, n_greater: torch.Tensor, n_equal: torch.Tensor):
    """n_greater += #(scores > target_score), n_equal += #(scores == target_score) per row.

    scores (b, T), target_score (b, 1); flags a float buffer of at least b * T elements.
    The same counts as rank_counts_from_scores, faster on a CPU: torch sums a bool (b, T)
    tensor into int64 through a slow path (about 50 ms at 512 x 32,768 on this project's
    2-core machine), while comparing into 0/1 floats and summing those takes about 7 ms.
    The float sums are exact: a row's count is at most T, and T <= 2^24 in float32 (float64
    beyond: _new_flags)."""
    b, T = scores.shape
    f = flags.view(-1)[:b * T].view(b, T)
    torch.gt(scores, target_score, out=f)
    n_greater += f.sum(dim=1).to(torch.int64)
    torch.eq(scores, target_score, out=f)
    n_equal += f.sum(dim=1).to(torch.int64)


def _new_flags(like: torch.Tensor, b: int, T: int) -> torch.Tensor:
    """The 0/1 flag buffer of _count_above_and_equal: float32 sums are exact up to 2^24."""
    return like.new_empty(b * T, dtype=torch.float32 if T <= 1 << 24 else torch.float64)


def rank_counts_dense(scores: torch.Tensor, targets: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """rank_counts_from_scores's counts, faster on a CPU (see _count_above_and_equal):
    scores (b, N), targets int64 (b,) -> (n_greater, n_equal), int64 (b,) each."""
    b, N = scores.shape
    targets = _contracts.index_vector("targets", targets, b).long()
    n_greater = torch.zeros(b, dtype=torch.int64, device=scores.device)
    n_equal = torch.zeros(b, dtype=torch.int64, device=scores.device)
    _count_above_and_equal(scores, scores.gather(1, targets.unsqueeze(1)),
                           _new_flags(scores, b, N), n_greater, n_equal)
    return n_greater, n_equal


@torch.no_grad()   # integer counts; the tiles are written with out= (no autograd through them)
def rank_counts_from_hidden(h: torch.Tensor, item_weight: torch.Tensor, item_bias: torch.Tensor,
                            targets: torch.Tensor, max_elements: int = 1 << 24
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rank counts of scores h (b, H) · item_weight (N, H)ᵀ + item_bias (N,) without holding
    more than ``max_elements`` scores at once: items are taken in tiles of T columns.

    When the catalog fits one tile this is one pass. Otherwise a first pass reads each target's
    score from its own tile and a second pass counts; both passes compute each tile with the
    same call on the same shapes (into the same contiguous buffer), so the target's score is
    bit-identical to the others'. The counts are rank_counts_from_scores's on the scores as the
    tiles compute them (tests/test_ranking.py holds them together on exactly representable
    scores); a product over a column slice may round a score differently from the same column of
    the whole (b, N) product (BLAS blocking), so a near-tie can move with ``max_elements``.
    Extra memory: the (b, T) tile and as many 0/1 flags (float32; float64 past 2^24 columns).
    """
    b, N = h.shape[0], item_weight.shape[0]
    targets = _contracts.index_vector("targets", targets, b)
    if b and (int(targets.min()) < 0 or int(targets.max()) >= N):
        raise ValueError(f"targets must be item indices in 0..{N - 1} (got "
                         f"{int(targets.min())}..{int(targets.max())})")
    T = max(1, min(N, max_elements // max(b, 1)))
    if T >= N:
        return rank_counts_dense(torch.addmm(item_bias, h, item_weight.t()), targets)
    flags = _new_flags(h, b, T)
    n_greater = torch.zeros(b, dtype=torch.int64, device=h.device)
    n_equal = torch.zeros(b, dtype=torch.int64, device=h.device)
    # one (b, T) buffer for every tile (a fresh 64 MB tensor per tile costs page faults); the
    # last, narrower tile uses its first b * n elements, contiguous like the others
    buffer = h.new_empty(b * T)

    def tile_scores(lo: int) -> torch.Tensor:
        n = min(T, N - lo)
        out = buffer[:b * n].view(b, n)
        return torch.addmm(item_bias[lo:lo + n], h, item_weight[lo:lo + n].t(), out=out)

    target_score = torch.empty(b, dtype=h.dtype, device=h.device)
    for lo in range(0, N, T):
        rows = torch.nonzero((targets >= lo) & (targets < lo + T)).squeeze(1)
        if rows.numel():
            s = tile_scores(lo)
            target_score[rows] = s[rows, targets[rows] - lo]
    t = target_score.unsqueeze(1)
    for lo in range(0, N, T):
        _count_above_and_equal(tile_scores(lo), t, flags, n_greater, n_equal)
    return n_greater, n_equal


def ranks_from_counts(n_greater: torch.Tensor, n_equal: torch.Tensor, mode: str) -> torch.Tensor:
    """float64 ranks (1 = best): standard #(>)+1, conservative #(>=), median in between.

    A finite target score ties with itself (n_equal >= 1); n_equal == 0 means the target's
    score is NaN (a diverged or corrupt model), where every comparison is false and the
    formulas would give rank 1. Such a row gets rank +inf: a miss at every cutoff."""
    g, e = n_greater.double(), n_equal.double()
    if mode == "standard":
        ranks = g + 1
    elif mode == "conservative":
        ranks = g + e
    elif mode == "median":
        ranks = g + 0.5 * (e - 1) + 1
    else:
        raise ValueError(f"unknown rank mode {mode!r} (choose from {', '.join(RANK_MODES)})")
    return ranks.masked_fill(n_equal == 0, float("inf"))


# ============================================================================ fused paths
#
# backend: "torch" (the references above), "triton" (kernels/ranking.py), "auto" (triton for
# CUDA tensors, torch otherwise). precision: tl.dot input precision of the Triton path; ranks
# default to "ieee" (exact fp32 scores; "tf32x3" ≈ fp32 and faster, "tf32" fastest).

def _kernels_ranking():
    return load_kernels("ranking")


def rank_counts(h: torch.Tensor, item_weight: torch.Tensor, item_bias: torch.Tensor,
                targets: torch.Tensor, *, max_elements: int = 1 << 24, backend: str = "auto",
                precision: str = "ieee") -> Tuple[torch.Tensor, torch.Tensor]:
    """(n_greater, n_equal) int64 (b,) of each row's target among the scores h (b, H) ·
    item_weight (N, H)ᵀ + item_bias (N,). torch: rank_counts_from_hidden (max_elements per
    tile); triton: streams item tiles with O(b) extra memory, the target's score taken from
    the same tile arithmetic as the others (the Triton path computes in fp32)."""
    if resolve_backend(backend, h, "rank") == "torch":
        _contracts.check_score_inputs(h, item_weight, item_bias)
        return rank_counts_from_hidden(h, item_weight, item_bias, targets, max_elements)
    return _kernels_ranking().rank_counts_fused(h, item_weight, item_bias, targets,
                                                precision=precision)


def topk_scores_reference(h, item_weight, item_bias, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) (b, k) of the k best items per row, best first, ties to the lower
    index (a stable descending sort: torch.topk does not order ties)."""
    scores = torch.addmm(item_bias, h, item_weight.t())
    v, i = torch.sort(scores, dim=1, descending=True, stable=True)
    return v[:, :k], i[:, :k]


@torch.no_grad()
def topk_scores_dense(h: torch.Tensor, item_weight: torch.Tensor, item_bias: torch.Tensor,
                      k: int, max_elements: int = 1 << 24) -> Tuple[torch.Tensor, torch.Tensor]:
    """topk_scores_reference's values and indices without sorting the catalog: item tiles of
    T columns (at most ``max_elements`` scores) for a block of up to 512 rows (a recommend
    batch's: the table is read once per block, not once per few rows: at 2M items the earlier
    row blocks were 8 rows; the block's candidates, rows × tiles × k, stay small beside the
    tile: 512 × 62 × 20 at 2M items), torch.topk in each tile (linear in N, where the
    reference's full sort is N log N), then the candidates merged by (score descending, index
    ascending). torch.topk picks any of the items tied at a tile's k-th score; that matters
    only when the tie lies at the row's final k-th score (an item tied above it is in the
    top k whichever way), so such a row, or one holding a NaN, is redone with the reference's
    stable sort: on the same scores the result equals the reference's exactly. (A tile's
    product may round differently from the reference's one product over all columns, in the
    last bits: items that tie but for rounding can then come in the other order, as between
    any two matmul kernels.)"""
    b = h.shape[0]
    if b == 0:
        return (h.new_empty((0, k)), torch.zeros((0, k), dtype=torch.int64, device=h.device))
    # up to 512 rows a block, fewer when max_elements leaves a tile of under max(k, 4096)
    # columns for so many rows (the candidates grow as rows² · N · k / max_elements)
    rows_per_block = min(b, 512, max(1, int(max_elements) // max(k, 4096)))
    values, indices = [], []
    for r0 in range(0, b, rows_per_block):
        v, i = _topk_rows_tiled(h[r0:r0 + rows_per_block], item_weight, item_bias, k,
                                max_elements)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def _topk_rows_tiled(h, item_weight, item_bias, k: int, max_elements: int):
    """topk_scores_dense on one block of R rows: (values, indices) (R, k)."""
    R, N = h.shape[0], item_weight.shape[0]
    T = min(N, max(k, int(max_elements) // R))
    buffer = h.new_empty(R * T)                  # one tile buffer, as rank_counts_from_hidden
    flags = _new_flags(h, R, T)
    cand_v, cand_i, tile_kth, tile_tied = [], [], [], []
    for lo in range(0, N, T):
        n = min(T, N - lo)
        s = torch.addmm(item_bias[lo:lo + n], h, item_weight[lo:lo + n].t(),
                        out=buffer[:R * n].view(R, n))
        kk = min(k, n)
        v, i = torch.topk(s, kk, dim=1)          # NaN counts as the largest: it surfaces here
        kth = v[:, -1:]
        # more items tied at this tile's k-th score than were picked: the pick among them was
        # arbitrary (counted through 0/1 floats: _count_above_and_equal's fast path)
        f = flags[:R * n].view(R, n)
        torch.eq(s, kth, out=f)
        tile_tied.append(f.sum(dim=1) > (v == kth).sum(dim=1))
        tile_kth.append(kth.squeeze(1))
        cand_v.append(v)
        cand_i.append(i + lo)
    v, i = torch.cat(cand_v, 1), torch.cat(cand_i, 1)
    i, by_index = torch.sort(i, dim=1)           # the candidates by index, then stably
    v, by_value = torch.sort(v.gather(1, by_index), dim=1, descending=True, stable=True)
    v, i = v[:, :k], i.gather(1, by_value[:, :k])  # by score: ties in index order
    kth = v[:, -1]
    ambiguous = (torch.stack(tile_tied, 1) & (torch.stack(tile_kth, 1) == kth.unsqueeze(1)))
    redo = ambiguous.any(1) | torch.isnan(v).any(1)
    if bool(redo.any()):
        rows = torch.nonzero(redo).view(-1)
        step = max(1, int(max_elements) // N)
        for r0 in range(0, rows.numel(), step):
            rr = rows[r0:r0 + step]
            scores = torch.addmm(item_bias, h[rr], item_weight.t())
            rv, ri = torch.sort(scores, dim=1, descending=True, stable=True)
            v[rr], i[rr] = rv[:, :k], ri[:, :k]
    return v, i


def topk_scores(h: torch.Tensor, item_weight: torch.Tensor, item_bias: torch.Tensor, k: int, *,
                backend: str = "auto", precision: str = "ieee"
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k over the catalog of h (b, H) · item_weight (N, H)ᵀ + item_bias: (values (b, k),
    indices int64 (b, k)), best first, ties broken by the lower index; 1 <= k <= N. The torch
    path is topk_scores_dense (equal to topk_scores_reference, without its full sort); the Triton
    path keeps per-tile candidates (never all b × N scores when k is below the tile) and merges
    them; its values are fp32."""
    N = item_weight.shape[0]
    k = int(k)
    if not 0 < k <= N:
        raise ValueError(f"k must be in 1..{N} (got {k})")
    if resolve_backend(backend, h, "rank") == "torch":
        _contracts.check_score_inputs(h, item_weight, item_bias)
        return topk_scores_dense(h, item_weight, item_bias, k)
    return _kernels_ranking().topk_fused(h, item_weight, item_bias, k, precision=precision)
