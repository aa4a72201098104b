"""Ranks on planted ties in every mode, and the tiled rank equal to the one-shot rank."""
import numpy as np
import pytest
import torch

from fastgru4rec.evaluate import MetricAccumulator
from fastgru4rec.ops.ranking import (rank_counts_dense, rank_counts_from_hidden,
                                     rank_counts_from_scores, ranks_from_counts,
                                     topk_scores_dense, topk_scores_reference)

# the plain comparison (the reference) and the faster float-flag count of a score matrix
DENSE_COUNTS = pytest.mark.parametrize("count", [rank_counts_from_scores, rank_counts_dense],
                                       ids=["reference", "dense"])


@DENSE_COUNTS
def test_planted_ties_each_mode(count):
    # row 0: target (item 2) score 0.5; items scoring above: 0.9 (1 item); equal: items 2,3,4
    # row 1: target (item 0) unique best
    # row 2: target (item 4) tied with everything (all zeros: a baseline with no candidates)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.5],
                           [2.0, 1.0, 1.0, 0.0, -1.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([2, 0, 4])
    g, e = count(scores, targets)
    assert g.tolist() == [1, 0, 0] and e.tolist() == [3, 1, 5]
    assert ranks_from_counts(g, e, "standard").tolist() == [2, 1, 1]        # #(>) + 1
    assert ranks_from_counts(g, e, "conservative").tolist() == [4, 1, 5]    # #(>=)
    assert ranks_from_counts(g, e, "median").tolist() == [3, 1, 3]          # between
    acc = MetricAccumulator([1, 3, 5], "conservative")
    acc.add_counts(g, e)
    res = acc.result()
    assert res["recall"] == {1: pytest.approx(1 / 3), 3: pytest.approx(1 / 3), 5: pytest.approx(1.0)}
    assert res["mrr"][5] == pytest.approx((1 / 4 + 1 + 1 / 5) / 3)
    acc = MetricAccumulator([2], "median")
    acc.add_counts(g, e)
    assert acc.result()["mrr"][2] == pytest.approx(1 / 3)   # only row 1 (rank 1) is inside @2


@DENSE_COUNTS
def test_nan_target_score_is_a_miss_not_rank_one(count):
    # A NaN score compares false with everything: #(>) = #(==) = 0, which the formulas alone
    # would turn into rank 1 (a diverged model scoring perfectly). Row 0: NaN target; row 1:
    # a finite target among NaN items (those are not counted above it); row 2: all NaN.
    nan = float("nan")
    scores = torch.tensor([[0.9, nan, 0.5], [nan, 0.2, nan], [nan, nan, nan]])
    targets = torch.tensor([1, 1, 0])
    g, e = count(scores, targets)
    assert g.tolist() == [0, 0, 0] and e.tolist() == [0, 1, 0]
    for mode in ("standard", "conservative", "median"):
        assert ranks_from_counts(g, e, mode).tolist() == [float("inf"), 1.0, float("inf")]
    acc = MetricAccumulator([1, 3], "standard")
    acc.add_counts(g, e)
    res = acc.result()
    assert res["recall"] == {1: pytest.approx(1 / 3), 3: pytest.approx(1 / 3)}
    assert res["mrr"] == {1: pytest.approx(1 / 3), 3: pytest.approx(1 / 3)}
    # the tiled path (two passes, target score read from its tile) gives the same counts
    h = torch.tensor([[nan, 1.0], [1.0, 0.0]])
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    bias = torch.zeros(3)
    full = rank_counts_from_scores(torch.addmm(bias, h, W.t()), torch.tensor([0, 0]))
    tiled = rank_counts_from_hidden(h, W, bias, torch.tensor([0, 0]), max_elements=2)
    assert [x.tolist() for x in tiled] == [x.tolist() for x in full] == [[0, 1], [0, 1]]

def test_tiled_counts_equal_untiled_with_planted_ties():
    rng = np.random.default_rng(0)
    b, N, H = 7, 103, 5
    h = torch.tensor(rng.integers(-2, 3, size=(b, H)), dtype=torch.float32)
    W = torch.tensor(rng.integers(-2, 3, size=(N, H)), dtype=torch.float32)   # many exact ties
    bias = torch.tensor(rng.integers(-1, 2, size=N), dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, N, size=b))
    full = rank_counts_from_scores(h @ W.t() + bias, targets)
    for max_elements in (b * 10, b * 33, b * N, 1 << 20):
        tiled = rank_counts_from_hidden(h, W, bias, targets, max_elements)
        assert torch.equal(tiled[0], full[0]) and torch.equal(tiled[1], full[1])
    assert int(full[1].max()) > 1   # ties were really planted


def test_bad_mode_and_cutoffs():
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        MetricAccumulator([20], "optimistic")
    with pytest.raises(ValueError, match="cut-offs"):
        MetricAccumulator([0], "standard")


def test_tiled_counts_in_float64_and_with_nan_items():
    # float64 scores (the 0/1 flags that count them are float32), exact ties, an item 1 ulp
    # above row 0's target in float64 (float32 would merge the two), and a NaN item, which
    # counts neither above nor equal
    rng = np.random.default_rng(1)
    b, N, H = 5, 41, 3
    h = torch.tensor(rng.normal(size=(b, H)))
    W = torch.tensor(rng.normal(size=(N, H)))
    bias = torch.zeros(N, dtype=torch.float64)
    targets = torch.tensor([0, 7, 40, 13, 21])
    W[1], W[2] = W[0], W[0]                       # exact ties with row 0's target item
    bias[3] = float("nan")
    W[4] = W[0]
    s0 = float(h[0] @ W[0])
    bias[4] = np.nextafter(s0, np.inf) - s0         # item 4 scores one float64 ulp above item 0
    full = rank_counts_from_scores(torch.addmm(bias, h, W.t()), targets)
    assert int(full[0][0]) >= 1
    dense = rank_counts_dense(torch.addmm(bias, h, W.t()), targets)
    assert torch.equal(dense[0], full[0]) and torch.equal(dense[1], full[1])
    for max_elements in (b * 4, b * 16, 1 << 20):
        tiled = rank_counts_from_hidden(h, W, bias, targets, max_elements)
        assert torch.equal(tiled[0], full[0]) and torch.equal(tiled[1], full[1])
    assert int(full[1][0]) == 3


def test_counts_past_float32_exact_range():
    # one row, 2^24 + 8 columns in a single tile, 2^24 + 3 of them tied with the target:
    # summing 0/1 flags in float32 would round that count (2^24 + 3 is not a float32); the
    # counts must be exact. Items 0..4 score 2, the rest 1.
    N = (1 << 24) + 8
    W = torch.ones(N, 1)
    W[:5] = 2.0
    h, bias = torch.ones(1, 1), torch.zeros(N)
    target = torch.tensor([N - 1])
    g, e = rank_counts_from_hidden(h, W, bias, target, max_elements=1 << 25)
    assert g.tolist() == [5] and e.tolist() == [N - 5]
    g, e = rank_counts_from_hidden(h, W, bias, target)          # tiles of 2^24 columns
    assert g.tolist() == [5] and e.tolist() == [N - 5]


def test_tiled_counts_with_inputs_that_require_grad_and_bad_targets():
    # counts from a model's outputs outside no_grad: the tiled path writes its tiles with out=,
    # which autograd refuses; it runs without a graph. Out-of-range targets are an error in
    # every tiling (the tiled path compared against an unset score and counted a miss).
    g = torch.Generator().manual_seed(2)
    h = torch.randn(3, 4, generator=g, requires_grad=True)
    W = torch.randn(50, 4, generator=g, requires_grad=True)
    bias = torch.zeros(50, requires_grad=True)
    t = torch.tensor([0, 17, 49])
    full = rank_counts_from_scores((h @ W.t() + bias).detach(), t)
    for max_elements in (3 * 7, 1 << 20):
        got = rank_counts_from_hidden(h, W, bias, t, max_elements)
        assert torch.equal(got[0], full[0]) and torch.equal(got[1], full[1])
        for bad in (torch.tensor([0, 50, 1]), torch.tensor([-1, 0, 1])):
            with pytest.raises(ValueError, match="targets must be item indices in 0..49"):
                rank_counts_from_hidden(h, W, bias, bad, max_elements)


# ---------------------------------------------------------------------------- top-k on the CPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 3, 17, 40])
def test_topk_dense_equals_the_reference_sort_with_ties_and_nan(dtype, k):
    """topk_scores_dense (torch.topk, ties re-ordered, ambiguous rows re-sorted) against the
    reference's full stable sort, exactly: small-integer scores tie everywhere, also across
    the k-th place; a row of NaN; -0.0 ties with 0.0; row blocks of 3 rows."""
    g = torch.Generator().manual_seed(k)
    b, N, H = 11, 40, 6
    h = torch.randint(-2, 3, (b, H), generator=g).to(dtype)
    W = torch.randint(-1, 2, (N, H), generator=g).to(dtype)
    bias = torch.randint(-1, 2, (N,), generator=g).to(dtype)
    h[4] = 0.0                                   # every score of row 4 is its bias: 3 values
    bias[7] = -0.0
    h[5, 0] = float("nan")                       # row 5: every score NaN (0 * NaN too)
    rv, ri = topk_scores_reference(h, W, bias, k)
    for max_elements in (13, 3 * N, 1 << 24):      # 13: item tiles of max(k, 13) columns
        v, i = topk_scores_dense(h, W, bias, k, max_elements=max_elements)
        assert torch.equal(i, ri)
        torch.testing.assert_close(v, rv, rtol=0, atol=0, equal_nan=True)
    # ties across the k-th place exist (below k = N), so the re-sort path ran
    scores = torch.addmm(bias, h, W.t())
    assert k == N or any(int((scores[r] == rv[r, -1]).sum()) > int((rv[r] == rv[r, -1]).sum())
               for r in range(b) if not torch.isnan(rv[r, -1]))


@pytest.mark.parametrize("k", [1, 20, 300])
def test_topk_dense_over_item_tiles_for_a_block_of_rows(k):
    """Several rows scored against item tiles (the table read once for the block): ties
    everywhere, also at a tile's k-th place and across tiles, equal to the full stable sort."""
    g = torch.Generator().manual_seed(k)
    b, N, H = 6, 10_000, 4
    h = torch.randint(-2, 3, (b, H), generator=g).float()
    W = torch.randint(-1, 2, (N, H), generator=g).float()
    bias = torch.randint(-1, 2, (N,), generator=g).float()
    rv, ri = topk_scores_reference(h, W, bias, k)
    for max_elements in (4096 * b, 1 << 24):        # 3 tiles of 4096 items / one tile
        v, i = topk_scores_dense(h, W, bias, k, max_elements=max_elements)
        assert torch.equal(i, ri) and torch.equal(v, rv)


def test_topk_dense_at_k_equal_n_and_empty_batch():
    g = torch.Generator().manual_seed(3)
    h, W, bias = torch.randn(4, 5, generator=g), torch.randn(9, 5, generator=g), torch.zeros(9)
    for k in (9, 1):
        assert all(torch.equal(a, c) for a, c in zip(topk_scores_dense(h, W, bias, k),
                                                     topk_scores_reference(h, W, bias, k)))
    v, i = topk_scores_dense(h[:0], W, bias, 2)
    assert v.shape == (0, 2) and i.shape == (0, 2) and i.dtype == torch.int64


def test_topk_dense_redo_when_tile_picks_among_ties_are_arbitrary(monkeypatch):
    # torch.topk promises no order among ties; on the CPU it happens to return the lowest
    # index, which hides the redo path (rows whose tile picked arbitrarily among ties at the
    # k-th score are ranked again in chunks of rows). Ties broken to the HIGHER index here:
    # every row is redone, over several chunks, and must still equal the full stable sort.
    real = torch.topk

    def ties_to_the_higher_index(s, k, dim=1):
        v, i = real(s.flip(1), k, dim=dim)
        return v, s.shape[1] - 1 - i

    g = torch.Generator().manual_seed(0)
    b, N, H, k = 9, 10_000, 4, 5
    h = torch.randint(-2, 3, (b, H), generator=g).float()      # integer scores: many ties
    W = torch.randint(-1, 2, (N, H), generator=g).float()
    bias = torch.randint(-1, 2, (N,), generator=g).float()
    want_v, want_i = topk_scores_reference(h, W, bias, k)
    monkeypatch.setattr(torch, "topk", ties_to_the_higher_index)
    v, i = topk_scores_dense(h, W, bias, k, max_elements=4096 * b)   # tiles, and 4-row chunks
    assert torch.equal(i, want_i) and torch.equal(v, want_v)
