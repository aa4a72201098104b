"""Scoring / ranking kernel benchmarks (GPU only; every test skips without CUDA).

Sizes from the scoring issue:
  - sampled loss forward+backward, n_sample 2048, b ∈ {32, 128, 512} × H ∈ {100, 512}
    (cross-entropy with logQ at H 100, bpr-max with ELU + bpreg at H 512, as the presets):
    group "gpu-sampled-b{b}-h{H}", members "eager-reference" (baseline: gather + addmm +
    sampled_loss_reference + autograd + index_add into unique rows) and "fused"
    (ops.scoring.fused_sampled_loss_and_grads, backend triton, tf32 dots);
    test_sampled_fused_faster claims fused < eager at each size (CUDA-event medians).
  - full-catalog cross-entropy, N 1,000,000, b 512, H 256: torch (addmm + F.cross_entropy +
    backward) vs the fused one; test_full_ce_memory_and_time asserts peak extra memory ≤ 1/10 of
    torch's with the item-table gradient accumulated into a preallocated buffer (as a training
    loop's gradient buffer), and claims time no worse; it records the peak with a freshly allocated
    N × H gradient too (that tensor alone is 1 GiB).
  - rank, N 1,000,000, b 512, H 256: dense matmul-and-compare vs ops.ranking.rank_counts
    (triton) for precisions ieee / tf32x3 / tf32: asserts O(b) extra memory for each, claims
    ≥ 3× for tf32x3 and tf32, and "not slower" for ieee (exact fp32 products run on the FMA
    units: x3 would need 18% more than cuBLAS's fp32 matmul rate on an H200, see the test).
  - top-k for recommend(): b 1, N 1,000,000, k 20 and 1024, stable sort vs topk_scores_dense
    (the torch path) vs topk_scores (triton).
Time claims go through the ``claim`` fixture (benchmarks/conftest.py: reported, asserted only
with FASTGRU4REC_BENCH_ASSERT=1); memory bounds are asserted.
"""
from __future__ import annotations

import statistics

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("GPU benchmark: torch.cuda.is_available() is False on this machine",
                allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

from fastgru4rec.ops.ranking import (rank_counts, rank_counts_from_scores,  # noqa: E402
                                     topk_scores, topk_scores_dense,
                                     topk_scores_reference)
from fastgru4rec.ops.scoring import (full_catalog_cross_entropy_and_grads,  # noqa: E402
                                     fused_sampled_loss_and_grads,
                                     fused_sampled_loss_and_grads_reference,
                                     logq_column_correction)

SAMPLED_SIZES = [(b, H) for b in (32, 128, 512) for H in (100, 512)]
N_SAMPLE = 2048
N_ITEMS_SAMPLED = 200_000
FULL_CE_SIZE = (512, 256, 1_000_000)      # b, H, N
RANK_SIZE = (512, 256, 1_000_000)
PRECISIONS = ("ieee", "tf32x3", "tf32")


def cuda_ms(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def peak_extra_bytes(fn):
    """Peak memory allocated while fn runs, above what was allocated before (fn's outputs are
    freed before returning to the caller's measurement)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def _sampled_inputs(b, H):
    g = torch.Generator().manual_seed(b * 1000 + H)
    dev = "cuda"
    W = (torch.randn(N_ITEMS_SAMPLED, H, generator=g) * H ** -0.5).to(dev)
    bias = (torch.randn(N_ITEMS_SAMPLED, generator=g) * 0.1).to(dev)
    h = torch.randn(b, H, generator=g).to(dev)
    Y = torch.randint(0, N_ITEMS_SAMPLED, (b + N_SAMPLE,), generator=g).to(dev)
    support = torch.randint(1, 1000, (N_ITEMS_SAMPLED,), generator=g).double().log().to(dev)
    rows = torch.unique(Y, return_inverse=True)        # the training step computes these anyway
    if H == 100:
        kw = dict(loss="cross-entropy", logq=1.0,
                  logq_per_column=logq_column_correction(support[Y], b, 0.5).float())
    else:
        kw = dict(loss="bpr-max", bpreg=0.9, elu_param=1.0)
    return h, W, bias, Y, rows, kw


def _sampled_fn(impl, b, H):
    h, W, bias, Y, rows, kw = _sampled_inputs(b, H)
    kw = dict(kw)
    loss = kw.pop("loss")
    if impl == "eager-reference":
        return lambda: fused_sampled_loss_and_grads_reference(h, W, bias, Y, loss, scale=1 / b,
                                                              rows=rows, **kw)
    return lambda: fused_sampled_loss_and_grads(h, W, bias, Y, loss, scale=1 / b, rows=rows,
                                                backend="triton", precision="tf32", **kw)


@pytest.mark.parametrize("impl", ["eager-reference", "fused"])
@pytest.mark.parametrize("size", SAMPLED_SIZES, ids=lambda s: f"b{s[0]}-h{s[1]}")
def test_sampled_cuda(benchmark, cuda, cuda_timed, impl, size):
    b, H = size
    benchmark.group = f"gpu-sampled-b{b}-h{H}-s{N_SAMPLE}"
    if impl == "eager-reference":
        benchmark.extra_info["baseline"] = "eager reference (torch)"
    benchmark.extra_info.update(b=b, H=H, n_sample=N_SAMPLE, device=torch.cuda.get_device_name())
    benchmark.pedantic(cuda_timed(_sampled_fn(impl, b, H)), rounds=30, iterations=1,
                       warmup_rounds=3)


def test_sampled_fused_faster_cuda(cuda, claim):
    rows = []
    for b, H in SAMPLED_SIZES:
        ref = fused_sampled_loss_and_grads_reference
        eager = cuda_ms(_sampled_fn("eager-reference", b, H))
        fused = cuda_ms(_sampled_fn("fused", b, H))
        # the fused result agrees with the eager one (tf32 dots: loose tolerance)
        h, W, bias, Y, rws, kw = _sampled_inputs(b, H)
        kw = dict(kw)
        loss = kw.pop("loss")
        r = ref(h.double(), W.double(), bias.double(), Y, loss, rows=rws,
                **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()})
        f = fused_sampled_loss_and_grads(h, W, bias, Y, loss, rows=rws, backend="triton",
                                         precision="ieee", **kw)
        assert (f.d_rows.double() - r.d_rows).norm() <= 1e-4 * r.d_rows.norm()
        rows.append((b, H, eager, fused))
    print("\nsampled loss fwd+bwd (ms): b H eager fused speedup")
    for b, H, e, f in rows:
        print(f"  {b:4d} {H:4d} {e:8.3f} {f:8.3f} x{e / f:.2f}")
    for b, H, e, f in rows:
        claim(f < e, f"b{b} H{H}: fused {f:.3f} ms is not below eager {e:.3f} ms")


# ------------------------------------------------------------------ full-catalog cross-entropy
def _full_ce_inputs():
    b, H, N = FULL_CE_SIZE
    g = torch.Generator(device="cuda").manual_seed(0)
    W = torch.randn(N, H, device="cuda", generator=g) * H ** -0.5
    bias = torch.randn(N, device="cuda", generator=g) * 0.1
    h = torch.randn(b, H, device="cuda", generator=g)
    t = torch.randint(0, N, (b,), device="cuda", generator=g)
    return h, W, bias, t


def _torch_full_ce(h, W, bias, t):
    hh, WW, bb = (x.detach().requires_grad_() for x in (h, W, bias))
    loss = F.cross_entropy(torch.addmm(bb, hh, WW.t()), t, reduction="sum")
    return (loss.detach(),) + torch.autograd.grad(loss, (hh, WW, bb))


def _torch_full_ce_tf32(h, W, bias, t):
    """_torch_full_ce with cuBLAS allowed tf32 (the fused-tf32 member's arithmetic)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return _torch_full_ce(h, W, bias, t)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("impl", ["torch", "torch-tf32", "fused-tf32", "fused-ieee"])
def test_full_ce_cuda(benchmark, cuda, cuda_timed, impl):
    b, H, N = FULL_CE_SIZE
    benchmark.group = f"gpu-full-ce-b{b}-h{H}-n{N}"
    h, W, bias, t = _full_ce_inputs()
    if impl == "torch":
        benchmark.extra_info["baseline"] = "torch addmm + cross_entropy"
        fn = lambda: _torch_full_ce(h, W, bias, t)
    elif impl == "torch-tf32":
        # a baseline too: the first H200 run compared fused-tf32 with fp32 cuBLAS only
        benchmark.extra_info["baseline"] = "torch addmm (tf32) + cross_entropy"
        fn = lambda: _torch_full_ce_tf32(h, W, bias, t)
    else:
        prec = impl.split("-")[1]
        fn = lambda: full_catalog_cross_entropy_and_grads(h, W, bias, t, backend="triton",
                                                          precision=prec)
    benchmark.extra_info.update(b=b, H=H, N=N, peak_extra_bytes=peak_extra_bytes(fn))
    benchmark.pedantic(cuda_timed(fn), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_full_ce_kernel_breakdown_cuda(cuda, record_property, precision):
    """Where the fused full-catalog cross-entropy's time goes (first H200 run: 22.4 ms in tf32,
    132.8 ms in ieee, against 21.2 ms for fp32 torch): the forward, the dh and the dW kernels
    timed apart, each with its rate (the forward does 2·b·N·H FLOP, dh and dW each 4·b·N·H: the
    score tile recomputed, then the product), printed and recorded as properties."""
    from sweep_tiles import kernel_runner     # beside this file: the sweep's runners

    from fastgru4rec.ops.backend import load_kernels

    k = load_kernels("scoring")
    h, W, bias, t = _full_ce_inputs()
    h, W, bias = k.catalog_inputs(h, W, bias)
    b, H = h.shape
    N = W.shape[0]
    _, stats = k.full_ce_forward(h, W, bias, t, precision=precision)
    line = []
    for name, kernel, flop_per in (("forward", "fwd", 2), ("dh", "dh", 4), ("dW", "dw", 4)):
        fn = kernel_runner(k, kernel, h, W, bias, t, stats, precision)
        ms = cuda_ms(fn, reps=5, warmup=1)
        tflops = flop_per * b * N * H / (ms * 1e-3) / 1e12
        record_property(f"{name}_ms", ms)
        line.append(f"{name} {ms:.2f} ms ({tflops:.0f} TFLOP/s)")
    print(f"\nfull-catalog CE b{b} H{H} N{N} [{precision}] by kernel: " + ", ".join(line))


def test_full_ce_memory_and_time_cuda(cuda, claim):
    h, W, bias, t = _full_ce_inputs()
    ref = _torch_full_ce(h, W, bias, t)
    dW_buf, db_buf = torch.zeros_like(W), torch.zeros_like(bias)

    def fused_accum():
        return full_catalog_cross_entropy_and_grads(h, W, bias, t, d_weight_out=dW_buf,
                                                    d_bias_out=db_buf, backend="triton")

    fused_new = lambda: full_catalog_cross_entropy_and_grads(h, W, bias, t, backend="triton")
    out = fused_new()
    assert abs(float(out[0]) - float(ref[0])) <= 1e-3 * abs(float(ref[0]))
    assert (out[1] - ref[1]).norm() <= 1e-2 * ref[1].norm()
    assert (out[2] - ref[2]).norm() <= 1e-2 * ref[2].norm()
    del out
    mem_torch = peak_extra_bytes(lambda: _torch_full_ce(h, W, bias, t))
    mem_new = peak_extra_bytes(fused_new)
    mem_accum = peak_extra_bytes(fused_accum)
    ms_torch = cuda_ms(lambda: _torch_full_ce(h, W, bias, t), reps=5, warmup=1)
    ms_fused = cuda_ms(fused_accum, reps=5, warmup=1)
    print(f"\nfull-catalog CE b512 H256 N1M: torch {ms_torch:.1f} ms peak+{mem_torch / 2**20:.0f} MiB;"
          f" fused {ms_fused:.1f} ms peak+{mem_accum / 2**20:.0f} MiB (accumulating into a buffer),"
          f" +{mem_new / 2**20:.0f} MiB (allocating the N×H gradient)")
    assert mem_accum <= mem_torch / 10                     # bytes: deterministic, asserted
    claim(ms_fused <= ms_torch, f"fused {ms_fused:.1f} ms is slower than torch {ms_torch:.1f} ms")


# ------------------------------------------------------------------ rank and top-k
def _rank_inputs():
    b, H, N = RANK_SIZE
    g = torch.Generator(device="cuda").manual_seed(1)
    return (torch.randn(b, H, device="cuda", generator=g),
            torch.randn(N, H, device="cuda", generator=g) * H ** -0.5,
            torch.randn(N, device="cuda", generator=g) * 0.1,
            torch.randint(0, N, (b,), device="cuda", generator=g))


def _dense_rank(h, W, bias, t):
    return rank_counts_from_scores(torch.addmm(bias, h, W.t()), t)


@pytest.mark.parametrize("impl", ["dense-matmul-compare"] + [f"triton-{p}" for p in PRECISIONS])
def test_rank_cuda(benchmark, cuda, cuda_timed, impl):
    b, H, N = RANK_SIZE
    benchmark.group = f"gpu-rank-kernel-b{b}-h{H}-n{N}"
    h, W, bias, t = _rank_inputs()
    if impl == "dense-matmul-compare":
        benchmark.extra_info["baseline"] = "dense matmul-and-compare (torch)"
        fn = lambda: _dense_rank(h, W, bias, t)
    else:
        prec = impl.split("-", 1)[1]
        fn = lambda: rank_counts(h, W, bias, t, backend="triton", precision=prec)
    benchmark.extra_info.update(b=b, H=H, N=N, peak_extra_bytes=peak_extra_bytes(fn))
    benchmark.pedantic(cuda_timed(fn), rounds=10, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rank_3x_and_o_b_memory_cuda(cuda, precision, claim):
    h, W, bias, t = _rank_inputs()
    ref = _dense_rank(h, W, bias, t)
    got = rank_counts(h, W, bias, t, backend="triton", precision=precision)
    assert bool((got[1] >= 1).all())                       # the target ties with itself
    if precision == "ieee":
        assert int((got[0] - ref[0]).abs().max()) <= 8     # near-ties only
    ms_dense = cuda_ms(lambda: _dense_rank(h, W, bias, t), reps=10)
    ms_fused = cuda_ms(lambda: rank_counts(h, W, bias, t, backend="triton", precision=precision), reps=10)
    mem = peak_extra_bytes(lambda: rank_counts(h, W, bias, t, backend="triton", precision=precision))
    print(f"\nrank N1M b512 H256 [{precision}]: dense {ms_dense:.2f} ms, fused {ms_fused:.2f} ms "
          f"(x{ms_dense / ms_fused:.2f}), peak extra {mem / 2**10:.0f} KiB")
    assert mem <= 4 * 1024 * 1024                          # O(b): partial counts only
    if precision == "ieee":
        # exact fp32 products run on the FMA units, not the matrix units: 2·b·N·H = 262 GFLOP,
        # 5.2 ms at the 50.9 TFLOP/s cuBLAS's own fp32 matmul reached on the H200 and 3.9 ms at
        # the datasheet's ~67 TFLOP/s peak, against the 4.4 ms that x3 of the dense rank
        # (13.3 ms, first H200 run) would need: x3 in fp32 means beating SGEMM by 18% while
        # also counting. The claim here is "not slower"; x3 is the tf32x3 / tf32 modes'
        # (first run: x3.09 / x8.07)
        claim(ms_fused <= ms_dense, f"[ieee] x{ms_dense / ms_fused:.2f} the dense rank "
                                    f"(claim: not slower)")
    else:
        claim(ms_dense >= 3 * ms_fused, f"[{precision}] only x{ms_dense / ms_fused:.2f} the dense "
                                        f"rank (claim: x3)")


@pytest.mark.parametrize("impl", ["stable-sort", "dense-tiles", "triton"])
@pytest.mark.parametrize("k", [20, 1024])
def test_topk_cuda(benchmark, cuda, cuda_timed, impl, k):
    """Top-k of one row over 1M items: the reference (all scores, a stable sort), the torch path
    (topk_scores_dense: score tiles, torch.topk, a merge) and the Triton kernel. The first H200
    run had the kernel at x0.38 (k 20) and x0.16 (k 1024) of the sort: dense-tiles says whether
    recommend()'s CUDA path should be the torch one."""
    h, W, bias, _ = _rank_inputs()
    h = h[:1]
    benchmark.group = f"gpu-topk-b1-n{W.shape[0]}-k{k}"
    if impl == "stable-sort":
        benchmark.extra_info["baseline"] = "torch stable sort"
        fn = lambda: topk_scores_reference(h, W, bias, k)
    elif impl == "dense-tiles":
        fn = lambda: topk_scores_dense(h, W, bias, k)
    else:
        fn = lambda: topk_scores(h, W, bias, k, backend="triton", precision="ieee")
    v, i = fn()
    assert i.shape == (1, k)
    benchmark.pedantic(cuda_timed(fn), rounds=20, iterations=1, warmup_rounds=2)
