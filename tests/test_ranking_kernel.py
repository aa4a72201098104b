"""Triton full-catalog rank counts and top-k (kernels/ranking.py through
fastgru4rec.ops.ranking) against the references: counts exactly equal on integer-valued data
with planted ties (all three rank modes), the target counted as tied with itself on float data,
top-k equal to torch.topk's values with ties broken by the lower index.

Runs on a GPU, or on CPU with TRITON_INTERPRET=1 set at process start (see
test_scoring_kernel.py)."""

import pytest
import torch

from conftest import kernel_test_setup

_, DEV = kernel_test_setup("ranking")

from fastgru4rec.ops.ranking import (RANK_MODES, rank_counts, rank_counts_from_scores,  # noqa: E402
                                     ranks_from_counts, topk_scores, topk_scores_reference)


def tie_data(seed, b, N, H):
    """Small integers: every score is exact in fp32 whatever the summation order, and many tie."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(-2, 3, (b, H), generator=g).float()
    W = torch.randint(-1, 2, (N, H), generator=g).float()
    bias = torch.randint(-1, 2, (N,), generator=g).float()
    t = torch.randint(0, N, (b,), generator=g)
    return h, W, bias, t


@pytest.mark.parametrize("b,N,H", [(1, 103, 16), (7, 1500, 20), (70, 2100, 33)])
def test_rank_counts_exact_with_planted_ties(b, N, H):
    h, W, bias, t = tie_data(b * N, b, N, H)
    W[5] = W[t[0]]; bias[5] = bias[t[0]]                 # an exact twin of row 0's target
    ref = rank_counts_from_scores(h @ W.t() + bias, t)
    got = rank_counts(h.to(DEV), W.to(DEV), bias.to(DEV), t.to(DEV), backend="triton",
                      precision="ieee")
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.int64
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])
    assert int(ref[1].max()) > 1 and int(ref[1][0]) >= (2 if t[0] != 5 else 1)
    for mode in RANK_MODES:
        assert torch.equal(ranks_from_counts(*got, mode).cpu(), ranks_from_counts(*ref, mode))


def test_rank_target_from_same_tile_arithmetic():
    """Float data: the target is always tied with itself (n_equal >= 1) and the counts agree
    with the reference up to the rounding of near-ties."""
    g = torch.Generator().manual_seed(0)
    b, N, H = 40, 1700, 100
    h, W = torch.randn(b, H, generator=g), torch.randn(N, H, generator=g)
    bias = torch.randn(N, generator=g)
    t = torch.randint(0, N, (b,), generator=g)
    gt, eq = rank_counts(h.to(DEV), W.to(DEV), bias.to(DEV), t.to(DEV), backend="triton",
                         precision="ieee")
    assert bool((eq >= 1).all())
    ref_gt, _ = rank_counts(h, W, bias, t, backend="torch")
    assert int((gt.cpu() - ref_gt).abs().max()) <= 2


def test_rank_nan_target_counts_like_the_reference():
    """A row whose hidden state is NaN (a diverged model) gets n_equal = 0 from the kernel as
    from the reference, which ranks_from_counts turns into a miss."""
    h, W, bias, t = tie_data(3, 4, 1200, 16)
    h[1] = float("nan")
    ref = rank_counts_from_scores(h @ W.t() + bias, t)
    got = rank_counts(h.to(DEV), W.to(DEV), bias.to(DEV), t.to(DEV), backend="triton",
                      precision="ieee")
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])
    assert int(ref[1][1]) == 0 and bool((ref[1][[0, 2, 3]] >= 1).all())
    assert ranks_from_counts(*got, "standard")[1].item() == float("inf")

@pytest.mark.parametrize("b,N,k", [(1, 50, 1), (5, 1100, 10), (3, 1500, 600), (2, 1300, 1024),
                                   (66, 700, 20)])
def test_topk_equals_torch_topk_lower_index_on_ties(b, N, k):
    h, W, bias, _ = tie_data(k + N, b, N, 12)
    v, i = topk_scores(h.to(DEV), W.to(DEV), bias.to(DEV), k, backend="triton", precision="ieee")
    scores = h @ W.t() + bias
    assert torch.equal(v.cpu(), torch.topk(scores, k, dim=1).values)
    rv, ri = topk_scores_reference(h, W, bias, k)
    assert torch.equal(i.cpu(), ri) and torch.equal(v.cpu(), rv)
    # ties really present inside the top-k, and resolved to the lower index
    assert bool((rv[:, 1:] == rv[:, :-1]).any()) or k == 1



def test_topk_goes_by_row_chunks(monkeypatch):
    """Rows are done in chunks of at most _MAX_KEYS candidate keys (here k >= the tile, every
    score is a candidate: 2 rows of 6 tiles × 256 keys make chunks of 2, 2, 1 rows)."""
    from fastgru4rec.ops.backend import load_kernels
    K = load_kernels("ranking")
    b, N, k = 5, 1300, 300
    h, W, bias, _ = tie_data(17, b, N, 12)
    calls = []
    real_topk = torch.topk
    monkeypatch.setattr(torch, "topk", lambda x, *a, **kw: calls.append(x.shape[0]) or real_topk(x, *a, **kw))
    n_cand = -(-N // 256) * 256
    monkeypatch.setattr(K, "_MAX_KEYS", 2 * n_cand)
    v, i = topk_scores(h.to(DEV), W.to(DEV), bias.to(DEV), k, backend="triton", precision="ieee")
    monkeypatch.undo()
    rv, ri = topk_scores_reference(h, W, bias, k)
    assert torch.equal(i.cpu(), ri) and torch.equal(v.cpu(), rv)
    if DEV == "cpu":          # the interpreter's tile is 256 columns (on a GPU it is 64)
        assert calls == [2, 2, 1]

def test_rank_and_topk_read_strided_tables_and_order_nan_like_the_reference():
    g = torch.Generator().manual_seed(6)
    b, N, H = 4, 300, 12
    h = torch.randn(b, H, generator=g)
    Wt = torch.randn(H, N, generator=g)
    bias2 = torch.randn(N, 2, generator=g)
    t = torch.randint(0, N, (b,), generator=g)
    dense = [x.contiguous().to(DEV) for x in (h, Wt.t(), bias2[:, 0])]
    strided = [h.to(DEV), Wt.to(DEV).t(), bias2.to(DEV)[:, 0]]
    want, got = (rank_counts(*a, t.to(DEV), backend="triton", precision="ieee")
                 for a in (dense, strided))
    assert all(torch.equal(x, y) for x, y in zip(got, want))
    want, got = (topk_scores(*a, 7, backend="triton", precision="ieee") for a in (dense, strided))
    assert all(torch.equal(x, y) for x, y in zip(got, want))
    # NaN scores first (as a descending sort puts them), whatever their sign bit: inf + -inf
    # gives a sign-bit NaN on x86
    hh = torch.tensor([[1.0, 0.0]])
    WW = torch.tensor([[1.0, 0.0], [float("inf"), 0.0], [2.0, 0.0], [0.0, 1.0]])
    bb = torch.tensor([0.0, float("-inf"), 0.0, float("nan")])
    rv, ri = topk_scores_reference(hh, WW, bb, 4)
    v, i = topk_scores(hh.to(DEV), WW.to(DEV), bb.to(DEV), 4, backend="triton", precision="ieee")
    assert ri.tolist() == [[1, 3, 2, 0]] and torch.equal(i.cpu(), ri)
    # an empty batch gives empty results, as the reference
    v, i = topk_scores(hh[:0].to(DEV), WW.to(DEV), bb.to(DEV), 2, backend="triton")
    assert v.shape == (0, 2) and i.shape == (0, 2)
    with pytest.raises(ValueError, match="targets"):
        rank_counts(*dense, t[:2].to(DEV), backend="triton")


def test_topk_negative_zero_and_errors():
    h = torch.tensor([[1.0, 0.0]])
    W = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-0.0, 0.0]])
    # -0.0 in the inputs; every score is +0.0 all the same (a dot product summed from +0.0,
    # plus a bias, is never -0.0): five exact ties, ranked by index
    bias = torch.tensor([0.0, 1.0, -0.0, -1.0, 0.0])
    h, W, bias = h.to(DEV), W.to(DEV), bias.to(DEV)
    v, i = topk_scores(h, W, bias, 5, backend="triton", precision="ieee")
    assert i.tolist() == [[0, 1, 2, 3, 4]] and v.abs().sum() == 0
    with pytest.raises(ValueError, match="k must be"):
        topk_scores(h, W, bias, 6, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        rank_counts(h, W, bias, torch.tensor([0]), backend="gpu")
    g = torch.Generator().manual_seed(1)
    hh, WW, bb = torch.randn(3, 8, generator=g), torch.randn(30, 8, generator=g), torch.zeros(30)
    assert torch.equal(topk_scores(hh, WW, bb, 4)[1], topk_scores_reference(hh, WW, bb, 4)[1])
