"""Evaluation benchmarks: full-ranking evaluation of a trained tiny model, and the rank op.

CPU: evaluate_model on the synthetic test split and on rsc15-sample's test set (a model trained
for a few hundred steps), and the rank counts of fastgru4rec.ops.ranking: the tiled path
(rank_counts_from_hidden, one tile and forced into 8 tiles) against the dense
matmul-and-compare baseline (addmm over the whole catalog, then rank_counts_from_scores); the
CPU top-k (torch.topk with ties re-ordered) against the reference's full stable sort; and
recommendations for every rsc15-sample test session, batched against one call per session.
GPU (skipped without CUDA): the same rank comparison at fastgru4rec.bench.GPU_RANK_SIZES, plus a
Triton path (ops.ranking.rank_counts, backend="triton"), and evaluate_model on the device.
"""
from __future__ import annotations

import pytest
import torch

from fastgru4rec.bench import GPU_RANK_SIZES
from fastgru4rec.config import GRU4RecConfig
from fastgru4rec.estimator import GRU4Rec
from fastgru4rec.evaluate import evaluate_model
from fastgru4rec.ops import ranking
from fastgru4rec.ops.backend import triton_available
from fastgru4rec.train import Trainer

TINY = dict(layers=[64], batch_size=32, n_sample=256, loss="cross-entropy", logq=1.0,
            learning_rate=0.1, momentum=0.1, dropout_p_hidden=0.2, elu_param=0.0,
            sample_store_size=256 * 310)


def _trained(train, steps=300, device="cpu"):
    cfg = GRU4RecConfig.from_dict(TINY)
    model = GRU4Rec(device=device, **cfg.to_dict()).build_model(train.n_items)
    Trainer(model, cfg, train.supports, torch.device(device)).train_epoch(
        train, 0, progress=False, max_steps=steps)
    return model


@pytest.fixture(scope="module")
def synthetic_model(synthetic_data):
    return _trained(synthetic_data[0])


@pytest.fixture(scope="module")
def rsc15_model(rsc15_sample):
    return _trained(rsc15_sample[0])


@pytest.mark.benchmark(group="cpu-evaluate")
def test_evaluate_synthetic(benchmark, synthetic_data, synthetic_model):
    _, test = synthetic_data
    res = benchmark.pedantic(lambda: evaluate_model(synthetic_model, test, batch_size=512),
                             rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(data="synthetic", n_points=res["n_events"],
                                n_items=synthetic_model.n_items, recall20=res["recall"][20])


@pytest.mark.benchmark(group="cpu-evaluate-rsc15")
def test_evaluate_rsc15(benchmark, rsc15_sample, rsc15_model):
    _, test = rsc15_sample
    res = benchmark.pedantic(lambda: evaluate_model(rsc15_model, test, batch_size=512),
                             rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(data="rsc15-sample", n_points=res["n_events"],
                                n_items=rsc15_model.n_items, recall20=res["recall"][20])


# ------------------------------------------------------------------------ the rank op
def _rank_inputs(b, H, N, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = torch.randn(b, H, generator=g).to(device)
    W = (torch.randn(N, H, generator=g) * H ** -0.5).to(device)
    bias = (torch.randn(N, generator=g) * 0.1).to(device)
    tgt = torch.randint(0, N, (b,), generator=g).to(device)
    return h, W, bias, tgt


def _dense(h, W, bias, tgt):
    return ranking.rank_counts_from_scores(torch.addmm(bias, h, W.t()), tgt)


def _check_same(fn, h, W, bias, tgt):
    ng, ne = fn(h, W, bias, tgt)
    rg, re = _dense(h, W, bias, tgt)
    # the same arithmetic per tile: the counts agree exactly (or within a tie or two when a
    # library picks a different kernel for a tile's shape)
    assert int((ng - rg).abs().max()) <= 2 and int((ne - re).abs().max()) <= 2


CPU_RANK = (512, 100, 20_000)
_VARIANTS = {
    "dense-matmul-compare": lambda h, W, b, t: _dense(h, W, b, t),
    "tiled-one-tile": lambda h, W, b, t: ranking.rank_counts_from_hidden(h, W, b, t),
    "tiled-8-tiles": lambda h, W, b, t: ranking.rank_counts_from_hidden(
        h, W, b, t, max_elements=h.shape[0] * (-(-W.shape[0] // 8))),
}


@pytest.mark.parametrize("variant", list(_VARIANTS))
def test_rank_cpu(benchmark, variant):
    b, H, N = CPU_RANK
    benchmark.group = f"cpu-rank-b{b}-h{H}-n{N}"
    args = _rank_inputs(b, H, N, "cpu")
    fn = _VARIANTS[variant]
    _check_same(fn, *args)
    if variant == "dense-matmul-compare":
        benchmark.extra_info["baseline"] = "dense matmul-and-compare"
    benchmark.extra_info.update(b=b, H=H, N=N)
    benchmark.pedantic(fn, args=args, rounds=10, iterations=1, warmup_rounds=2)


# ------------------------------------------------------------------------ top-k and recommend
CPU_TOPK = (512, 100, 20_000, 20)
_TOPK_VARIANTS = {
    "reference-full-sort": ranking.topk_scores_reference,    # a stable sort of every row
    "topk-dense": ranking.topk_scores_dense,                  # torch.topk, ties re-ordered
}


@pytest.mark.parametrize("variant", list(_TOPK_VARIANTS))
def test_topk_cpu(benchmark, variant):
    b, H, N, k = CPU_TOPK
    benchmark.group = f"cpu-topk-b{b}-h{H}-n{N}-k{k}"
    h, W, bias, _ = _rank_inputs(b, H, N, "cpu")
    fn = _TOPK_VARIANTS[variant]
    got, want = fn(h, W, bias, k), ranking.topk_scores_reference(h, W, bias, k)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    if variant == "reference-full-sort":
        benchmark.extra_info["baseline"] = "full stable sort"
    benchmark.extra_info.update(b=b, H=H, N=N, k=k)
    benchmark.pedantic(fn, args=(h, W, bias, k), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="cpu-recommend-rsc15-test-sessions")
@pytest.mark.parametrize("variant", ["one-by-one", "batched"])
def test_recommend_rsc15(benchmark, rsc15_sample, rsc15_model, variant):
    """Top-20 after every test session of rsc15-sample: GRU4Rec.recommend per session (the
    baseline) against recommend_sessions (512 sessions side by side)."""
    train, test = rsc15_sample
    est = GRU4Rec(**TINY)
    est.model, est.item_ids, est.supports = rsc15_model, train.item_ids, train.supports
    sessions = [[str(test.item_ids[i]) for i in test.items[test.offsets[s]:test.offsets[s + 1]]]
                for s in range(test.n_sessions)]
    if variant == "one-by-one":
        benchmark.extra_info["baseline"] = "recommend() per session"
        fn = lambda: [est.recommend(s, k=20) for s in sessions]   # noqa: E731
    else:
        fn = lambda: est.recommend_sessions(test, k=20)            # noqa: E731
    benchmark.extra_info.update(n_sessions=test.n_sessions, n_items=train.n_items)
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


def _gpu_variants():
    variants = dict(_VARIANTS)
    if triton_available():
        # the fused rank kernel (ops.ranking.rank_counts's triton backend)
        variants["triton"] = lambda h, W, b, t: ranking.rank_counts(h, W, b, t, backend="triton")
    return variants


@pytest.mark.parametrize("variant", list(_VARIANTS) + ["triton"])
@pytest.mark.parametrize("size", GPU_RANK_SIZES, ids=lambda s: f"b{s[0]}-h{s[1]}-n{s[2]}")
def test_rank_cuda(benchmark, cuda, cuda_timed, variant, size):
    variants = _gpu_variants()
    if variant not in variants:
        pytest.skip(f"rank variant {variant!r}: triton is not installed")
    b, H, N = size
    benchmark.group = f"gpu-rank-b{b}-h{H}-n{N}"
    args = _rank_inputs(b, H, N, cuda)
    fn = variants[variant]
    _check_same(fn, *args)
    if variant == "dense-matmul-compare":
        benchmark.extra_info["baseline"] = "dense matmul-and-compare (torch)"
    benchmark.extra_info.update(b=b, H=H, N=N, device=torch.cuda.get_device_name())
    benchmark.pedantic(cuda_timed(fn), args=args, rounds=50, iterations=1, warmup_rounds=5)


@pytest.mark.benchmark(group="gpu-evaluate-rsc15")
def test_evaluate_cuda_rsc15(benchmark, cuda, rsc15_sample, rsc15_model):
    _, test = rsc15_sample
    model = rsc15_model.to(cuda)
    try:
        res = benchmark.pedantic(lambda: evaluate_model(model, test, batch_size=512, device=cuda),
                                 rounds=3, iterations=1, warmup_rounds=1)
    finally:
        rsc15_model.to("cpu")
    benchmark.extra_info.update(data="rsc15-sample", n_points=res["n_events"],
                                device=torch.cuda.get_device_name())
