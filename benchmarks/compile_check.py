"""Compile every Triton kernel for a GPU that is not here, and report what each launch needs.

CI runs the kernels only in Triton's CPU interpreter, which accepts programs the GPU compiler
rejects and knows nothing of registers or shared memory. This script compiles, without a GPU,
every specialization the library launches at the sizes the GPU check runs (benchmarks/
gpu_check.sh: bench_gru, bench_scoring, the engine's fused step and optimizer), down to the
cubin for the target architecture (default sm_90: the H100/H200 this project is lent), and
reads back each kernel's registers per thread, stack bytes (per-thread local memory for spilled
registers and calls: a cost, not a failure), shared memory and global scratch. A launch fails
on the device when registers × threads exceed the SM's 64K registers, when shared memory
exceeds the opt-in limit (227 KB on sm_90), when a kernel needs global scratch and no
allocator is set, or when a grid exceeds CUDA's (2^31-1, 65535, 65535) programs (the interpreter
runs any grid); those are errors here.

    python benchmarks/compile_check.py [--arch 90] [--quick] [--shard I/N] [--json F] [--md F]
    PYTHONPATH=/dir/with/triton3.6 python benchmarks/compile_check.py     # the other Triton

Run it with both supported Tritons (3.6 on the lent GPU machines, 3.9 on PyPI). It exits 1
when a case fails to compile or a kernel does not fit, 2 on bad usage. TRITON_INTERPRET must
be unset (the interpreter replaces the compiler).

How: Triton's active driver is replaced by one that names the target and nothing else; every
kernel launch becomes a compile-only "warmup" (no code runs, outputs stay uninitialised: the
launch functions' later torch arithmetic runs on garbage and is ignored); kernels/launch.py's
interpreting / interpreter_blocks / require_cuda / sm_count are replaced so the launch functions pick their GPU
blocks for CPU tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]

#: per architecture: (SMs of the GPU we are lent, max opt-in shared bytes per block, registers
#: per SM). sm_90: H100 SXM / H200 (132 SMs, 227 KB); sm_80: A100 (108 SMs, 163 KB).
ARCH_LIMITS = {90: (132, 232448, 65536), 80: (108, 166912, 65536), 89: (128, 101376, 65536)}


# --------------------------------------------------------------------------- the fake target

class _TargetOnlyDriver:
    """What JITFunction.run asks the active driver for before compiling: the target, a device
    and a stream. Nothing here can launch."""

    def __init__(self, target):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True


class Recorder:
    """Makes every launch compile-only and remembers the compiled kernels, per case."""

    def __init__(self):
        self.case = "?"
        self.kernels: Dict[str, dict] = {}     # metadata hash -> record
        self.launch_log: Optional[List[str]] = None   # when a list: launched kernels' names

    def install(self, arch: int, sms: int):
        from triton.backends.compiler import GPUTarget
        from triton.runtime import driver
        from triton.runtime.jit import JITFunction

        driver.set_active(_TargetOnlyDriver(GPUTarget("cuda", arch, 32)))
        original_run = JITFunction.run
        recorder = self

        def compile_only(fn, *args, grid, warmup, **kwargs):
            check_grid(fn.__name__, grid, kwargs)
            kernel = original_run(fn, *args, grid=grid, warmup=True, **kwargs)
            recorder.add(fn, kernel)
            if recorder.launch_log is not None:
                recorder.launch_log.append("triton:" + fn.__name__)
            return kernel

        JITFunction.run = compile_only

        from fastgru4rec.ops.backend import load_kernels
        launch = load_kernels("launch")
        launch.interpreting = lambda: False
        launch.interpreter_blocks = lambda: False
        launch.require_cuda = lambda what, *tensors: None
        launch.sm_count = lambda device: sms

    def add(self, fn, kernel):
        md = kernel.metadata
        rec = self.kernels.get(md.hash)
        if rec is None:
            rec = self.kernels[md.hash] = dict(
                kernel=fn.__name__, module=fn.__module__.rsplit(".", 1)[-1],
                num_warps=md.num_warps, num_stages=md.num_stages, shared=md.shared,
                global_scratch=getattr(md, "global_scratch_size", 0), cases=[],
                constexprs=_constexprs(kernel), cubin=kernel.asm["cubin"])
        if self.case not in rec["cases"]:
            rec["cases"].append(self.case)


#: CUDA's grid limits (x, y, z): a launch past them fails on the device ("invalid argument"),
#: while the interpreter runs any grid.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def check_grid(name: str, grid, meta: dict) -> None:
    """Raise ValueError when a launch's grid exceeds CUDA's limits."""
    dims = tuple(grid(meta) if callable(grid) else grid)
    dims = dims + (1,) * (3 - len(dims))
    if any(d > lim for d, lim in zip(dims, GRID_LIMITS)) or min(dims) < 1:
        raise ValueError(f"{name}: grid {dims} outside CUDA's limits "
                         f"(1..{GRID_LIMITS[0]}, 1..{GRID_LIMITS[1]}, 1..{GRID_LIMITS[2]})")


def _constexprs(kernel) -> str:
    """The compile-time constants of a specialization: the constexpr parameters, and integer
    arguments Triton folded in (those equal to 1)."""
    src = getattr(kernel, "src", None)
    consts = getattr(src, "constants", None) or {}
    names = getattr(getattr(src, "fn", None), "arg_names", None)
    out = []
    for key, value in consts.items():
        idx = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        name = names[idx] if names and isinstance(idx, int) and idx < len(names) else str(idx)
        out.append(f"{name}={getattr(value, 'value', value)}")
    return " ".join(out)


def cuobjdump() -> Path:
    """The cuobjdump that ships with Triton's NVIDIA backend."""
    import triton
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def resource_usage(cubins: List[bytes]) -> List[Tuple[int, int, int]]:
    """(REG, LOCAL, STACK) of each cubin, read by the cuobjdump that ships with Triton."""
    tool = cuobjdump()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, cubin in enumerate(cubins):
            path = Path(tmp) / f"k{i}.cubin"
            path.write_bytes(cubin)
            text = subprocess.run([str(tool), "--dump-resource-usage", str(path)],
                                  capture_output=True, text=True, check=True).stdout
            fields = {}
            for tok in text.split():
                if ":" in tok:
                    k, _, v = tok.partition(":")
                    if v.isdigit():
                        fields[k] = int(v)
            out.append((fields.get("REG", -1), fields.get("LOCAL", -1), fields.get("STACK", -1)))
    return out


# --------------------------------------------------------------------------- the cases

def cases(quick: bool) -> Iterator[Tuple[str, Callable[[], None]]]:
    """(label, thunk): every launch the GPU check makes, at its sizes. --quick: one size per
    kernel family (every kernel, fewer specializations), for CI."""
    import torch

    from fastgru4rec.nn import GRULayer
    from fastgru4rec.ops import gru, ranking, scoring, train_step

    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    def ids(n, high):
        return torch.randint(0, high, (n,), generator=g)

    gru_sizes = [(32, 100)] if quick else [(b, H) for b in (32, 128, 512) for H in (100, 256, 512)]
    variants = ("cell", "original")
    # bench_gru: one layer, x·W_ih + h·W_hh, forward + backward, ieee (and tf32)
    for b, H in gru_sizes:
        for variant in variants:
            for prec in (("ieee",) if quick else ("ieee", "tf32")):
                def gru_dense(b=b, H=H, variant=variant, prec=prec):
                    layer = GRULayer(H, H, variant=variant)
                    x = randn(b, H).requires_grad_()
                    h = randn(b, H).requires_grad_()
                    out = gru.gru_step_fused(x, h, layer.weight_ih, layer.bias_ih,
                                             layer.weight_hh, layer.bias_hh, variant,
                                             backend="triton", precision=prec)
                    out.sum().backward()
                yield f"gru {variant} b{b} h{H} {prec}", gru_dense
    # the model's layer forms: embedding lookup fused (idx), one-hot table rows (no W_ih),
    # resets, both dropouts, bf16
    N = 5000
    for variant in variants:
        def gru_modes(variant=variant, quick=quick):
            b, H = 32, 100
            for dtype in ((torch.float32,) if quick else (torch.float32, torch.bfloat16)):
                layer = GRULayer(H, H, variant=variant).to(dtype)
                table = randn(N, H, dtype=dtype).requires_grad_()
                h = randn(b, H, dtype=dtype)
                reset = torch.rand(b, generator=g) < 0.3
                out = gru.gru_step_fused(table, h, layer.weight_ih, layer.bias_ih,
                                         layer.weight_hh, layer.bias_hh, variant, idx=ids(b, N),
                                         reset=reset, dropout_in=0.2, dropout_out=0.3, seed=7,
                                         backend="triton")
                out.float().sum().backward()
                onehot = GRULayer(None, H, variant=variant).to(dtype)
                proj = randn(N, 3 * H, dtype=dtype).requires_grad_()
                out = gru.gru_step_fused(proj, h, None, randn(3 * H, dtype=dtype),
                                         onehot.weight_hh, onehot.bias_hh, variant,
                                         idx=ids(b, N), reset=reset, dropout_out=0.3, seed=7,
                                         backend="triton")
                out.float().sum().backward()
        yield f"gru {variant} modes (idx, one-hot, reset, dropout, bf16)", gru_modes

    # bench_scoring: sampled loss + gradients, n_sample 2048, every loss
    sampled = [(32, 100)] if quick else [(b, H) for b in (32, 128, 512) for H in (100, 512)]
    losses = {"cross-entropy": dict(logq=1.0), "bpr-max": dict(bpreg=1.0, elu_param=0.5),
              "top1-max": dict(elu_param=0.5), "top1": {}, "bpr": {}}
    for b, H in sampled:
        for loss, kw in losses.items():
            for prec in (("tf32",) if quick else ("tf32", "ieee")):
                def sampled_case(b=b, H=H, loss=loss, kw=kw, prec=prec):
                    n_items = 50_000
                    W, bias = randn(n_items, H), randn(n_items)
                    Y = ids(b + 2048, n_items)
                    if kw.get("logq"):
                        kw = dict(kw, logq_per_column=randn(b + 2048))
                    scoring.fused_sampled_loss_and_grads(randn(b, H), W, bias, Y, loss,
                                                         scale=1 / b, backend="triton",
                                                         precision=prec, **kw)
                yield f"sampled {loss} b{b} h{H} s2048 {prec}", sampled_case

    def sampled_huge(n_sample=4_300_000):   # more than 65,535 column blocks (grid y/z limit)
        W, bias = torch.empty(1000, 16), torch.empty(1000)
        scoring.fused_sampled_loss_and_grads(randn(1, 16), W, bias, ids(1 + n_sample, 1000),
                                             "top1", backend="triton")
    yield "sampled top1 b1 h16 s4300000", sampled_huge

    def full_ce_update(b, H, n, prec):
        """the training step's form: loss + dh, then the item table's Adagrad-momentum update
        inside the dW kernel (with and without momentum, with the shared input rows)"""
        W, bias = torch.zeros(n, H), torch.zeros(n)
        for vel, shared in ((True, True), (False, True), (True, False)):
            fwd = scoring.full_catalog_forward(randn(b, H), W, bias, ids(b, n), backend="triton",
                                               precision=prec)
            states = [(torch.zeros_like(x), torch.zeros_like(x) if vel else None)
                      for x in (W, bias)]
            scoring.full_catalog_adagrad_update(   # shared: the input rows' gradients added
                fwd, W, bias, *states, 0.1, 0.2 if vel else 0.0,
                extra_ids=ids(b, n) if shared else None,
                extra_rows=randn(b, H) if shared else None)

    # full catalog: cross-entropy (training with n_sample="all"), rank and top-k (evaluation,
    # recommend); N = 1,000,000, b 512, H 256 as the must-show (quick: N 100,000)
    big_n = 100_000 if quick else 1_000_000
    for prec in (("tf32",) if quick else ("tf32", "ieee")):
        def full_ce(prec=prec):
            b, H = 512, 256
            W, bias = torch.empty(big_n, H), torch.empty(big_n)
            scoring.full_catalog_cross_entropy_and_grads(randn(b, H), W, bias, ids(b, big_n),
                                                         backend="triton", precision=prec)
            scoring.full_catalog_cross_entropy_and_grads(
                randn(b, H), W, bias, ids(b, big_n), backend="triton", precision=prec,
                d_weight_out=torch.empty(big_n, H), d_bias_out=torch.empty(big_n))
            full_ce_update(b, H, big_n, prec)
        yield f"full-catalog CE N{big_n} b512 h256 {prec}", full_ce
    if not quick:
        # the other tiles benchmarks/sweep_tiles.py times on a GPU (kernels/scoring.py's
        # FULL_CE_TILES), each compiled here first: a GPU run spends no time on one that
        # cannot compile or fit
        import sweep_tiles                    # beside this script (its folder is on sys.path)

        from fastgru4rec.ops.backend import load_kernels
        tiles = load_kernels("scoring").FULL_CE_TILES
        for kernel, candidates in sweep_tiles.CANDIDATES.items():
            for cand in candidates[1:]:
                def tile_case(kernel=kernel, cand=cand):
                    tiles[kernel] = cand
                    try:
                        b, H = 512, 256
                        scoring.full_catalog_cross_entropy_and_grads(
                            randn(b, H), torch.empty(big_n, H), torch.empty(big_n),
                            ids(b, big_n), backend="triton", precision="tf32")
                    finally:
                        tiles.pop(kernel, None)
                yield ("full-catalog CE tile candidate {} BM={} BN={} BK={} warps={} "
                       "tf32".format(kernel, *cand)), tile_case
    for prec in (("ieee",) if quick else ("ieee", "tf32x3", "tf32")):
        def rank(prec=prec):
            b, H = 512, 256
            ranking.rank_counts(randn(b, H), torch.empty(big_n, H), torch.empty(big_n),
                                ids(b, big_n), backend="triton", precision=prec)
        yield f"rank N{big_n} b512 h256 {prec}", rank
    for k in (20, 1024):
        def topk(k=k):
            ranking.topk_scores(randn(1, 100), torch.empty(big_n, 100), torch.empty(big_n), k,
                                backend="triton")
        yield f"top-k N{big_n} b1 h100 k{k}", topk

    # H 1024, the widest hidden size the library is meant for (b 512): a tile sized by the
    # padded H outgrows shared memory there (the full-catalog dh kernel did, at 256 KB)
    if not quick:
        def wide_full_ce(prec):
            b, H, n = 512, 1024, 20_000
            scoring.full_catalog_cross_entropy_and_grads(
                randn(b, H), torch.empty(n, H), torch.empty(n), ids(b, n), backend="triton",
                precision=prec)
            full_ce_update(b, H, n, prec)
        for prec in ("tf32", "ieee"):
            yield f"full-catalog CE N20000 b512 h1024 {prec}", lambda prec=prec: wide_full_ce(prec)

        def wide_sampled():
            b, H, n = 512, 1024, 20_000
            scoring.fused_sampled_loss_and_grads(
                randn(b, H), randn(n, H), randn(n), ids(b + 2048, n), "cross-entropy", logq=1.0,
                logq_per_column=randn(b + 2048), scale=1 / b, backend="triton", precision="tf32")
        yield "sampled cross-entropy b512 h1024 s2048 tf32", wide_sampled
        for variant in variants:
            def wide_gru(variant=variant):
                b, H, n = 512, 1024, 5000
                layer = GRULayer(H, H, variant=variant)
                out = gru.gru_step_fused(randn(n, H).requires_grad_(), randn(b, H),
                                         layer.weight_ih, layer.bias_ih, layer.weight_hh,
                                         layer.bias_hh, variant, idx=ids(b, n),
                                         reset=torch.rand(b, generator=g) < 0.3, dropout_in=0.2,
                                         dropout_out=0.3, seed=7, backend="triton")
                out.sum().backward()
            yield f"gru {variant} idx b512 h1024 ieee", wide_gru

        def wide_rank():
            b, H, n = 512, 1024, 20_000
            ranking.rank_counts(randn(b, H), torch.empty(n, H), torch.empty(n), ids(b, n),
                                backend="triton", precision="ieee")
            ranking.topk_scores(randn(4, H), torch.empty(n, H), torch.empty(n), 20,
                                backend="triton")
        yield "rank and top-k N20000 b512 h1024", wide_rank

    def topk_huge(n=5_000_000):   # more than 65,535 item tiles (a launch's y/z limit)
        ranking.topk_scores(randn(1, 100), torch.empty(n, 100), torch.empty(n), 100,
                            backend="triton")
    yield "top-k N5000000 b1 h100 k100", topk_huge

    # the engine's fused training step with its sparse and dense optimizer updates
    # (FastTrainer.fused_step, what its CUDA graph captures) at the authors' presets (bench
    # train and gpu_check's yoochoose1_64 epoch use rsc15, diginetica and yoochoose), under
    # HostSyncGuard: the Triton path must not synchronise either (the CPU tests check the torch
    # path; here the launch functions run too)
    import numpy as np

    from fastgru4rec.bench import PRESETS
    from fastgru4rec.config import GRU4RecConfig
    from fastgru4rec.engine import FastTrainer, HostSyncGuard
    from fastgru4rec.nn import GRU4RecModel
    for name in (["rsc15"] if quick else sorted(PRESETS)):
        def step(cfg=GRU4RecConfig(**PRESETS[name])):
            n_items, b = 40_000, cfg.batch_size
            variants = [cfg.layer_variant(l) for l in range(len(cfg.layers))]
            model = GRU4RecModel(n_items, cfg.layers, cfg.embedding_mode, cfg.embedding,
                                 variants, seed=1)
            trainer = FastTrainer(model, cfg, np.ones(n_items), torch.device("cpu"),
                                  step="fused", step_backend="triton",
                                  optimizer_backend="triton")
            with HostSyncGuard():
                trainer.fused_step(ids(b, n_items), ids(b, n_items), torch.ones(b, 1),
                                   ids(cfg.n_extra_samples, n_items), model.init_hidden(b))
        yield f"train step {name} preset (no host sync)", step
    if not quick:   # two layers and the original variant, beyond the presets
        def step2():
            layers = [GRULayer(64, 96, variant="original"), GRULayer(96, 64, variant="original")]
            W, bias = randn(5000, 64), randn(5000)
            train_step.shared_step_grads(
                W, bias, layers, ids(32, 5000), ids(32 + 512, 5000),
                [randn(32, 96), randn(32, 64)], torch.rand(32, generator=g) < 0.1,
                torch.tensor([3], dtype=torch.int64), loss="top1-max", batch_size=32,
                dropout_embed=0.25, dropout_hidden=0.1, elu_param=0.5, backend="triton")
        yield "train step 2 layers original top1-max", step2


# --------------------------------------------------------------------------- launches per step

#: aten ops that make views or allocate: no device kernel on CUDA
_NO_KERNEL = {"view", "_unsafe_view", "as_strided", "slice", "select", "expand", "t", "transpose",
              "alias", "detach", "unsqueeze", "squeeze", "empty", "empty_strided", "empty_like",
              "lift_fresh", "_reshape_alias", "permute", "diagonal", "split", "unbind",
              "split_with_sizes", "reshape", "narrow"}


def count_launches(recorder: Recorder, fn: Callable[[], None], label: str) -> dict:
    """Run ``fn`` once (it compiles), then again recording its device launches: Triton kernels
    as compiled here, torch ops as the aten ops that launch a kernel (views, allocations and
    this library's custom-op wrappers excluded; torch.sort counts once, on CUDA it is a few
    kernels), under HostSyncGuard (no host sync, no data-dependent shape)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastgru4rec.engine import HostSyncGuard

    class TorchLaunches(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if (name not in _NO_KERNEL and func.namespace != "fastgru4rec"
                    and recorder.launch_log is not None):
                recorder.launch_log.append("torch:" + name)
            return func(*args, **(kwargs or {}))

    recorder.case = f"{label} (launch count)"
    fn()
    recorder.launch_log = []
    try:
        with HostSyncGuard(), TorchLaunches():
            fn()
        log = recorder.launch_log
    finally:
        recorder.launch_log = None
    return dict(setting=label, launches=len(log),
                triton=sum(x.startswith("triton:") for x in log), sequence=log)


def step_launches(recorder: Recorder) -> List[dict]:
    """The device launches of one CUDA-graph body of the fast engine (_GraphedSteps.body: read
    the step's row, the fused step, the optimizer updates, the counters) at each of bench
    train's GPU settings (fastgru4rec.bench.GPU_TRAIN_SIZES). A graph replays every launch as
    a node, and at a few µs a node their number bounds the steps per second (issue: 20,000
    mini-batches/s at b 32, H 100)."""
    import torch

    from fastgru4rec.bench import GPU_TRAIN_SIZES, PRESETS
    from fastgru4rec.config import GRU4RecConfig
    from fastgru4rec.engine import FastTrainer, _GraphedSteps
    from fastgru4rec.nn import GRU4RecModel
    from fastgru4rec.synthetic import synthetic_split
    from fastgru4rec.train import EpochOnDevice

    data = synthetic_split(n_items=3000, n_sessions=3000, seed=7)[0]
    out = []
    for name, params in GPU_TRAIN_SIZES:
        cfg = GRU4RecConfig.from_dict(dict(PRESETS["rsc15"], **params,
                                           sample_store_size=params["n_sample"] * 8))
        variants = [cfg.layer_variant(l) for l in range(len(cfg.layers))]
        model = GRU4RecModel(data.n_items, cfg.layers, cfg.embedding_mode, cfg.embedding,
                             variants, seed=1)
        trainer = FastTrainer(model, cfg, data.supports, torch.device("cpu"), step="fused",
                              step_backend="triton", optimizer_backend="triton", chunk_steps=4)
        trainer.fixed_shapes = True
        ep = EpochOnDevice.upload(trainer.schedule(data), trainer.device)
        graphed = _GraphedSteps(trainer, ep, 4, torch.zeros((), dtype=torch.float64))
        graphed.load_chunk(0, 4, trainer._sample_chunk(4))
        out.append(count_launches(recorder, graphed.body, f"train step {name}"))
    return out


def gru_launches(recorder: Recorder) -> dict:
    """The launches of one GRU layer step, forward and backward, as bench_gru times it
    (ops.gru.gru_step_fused through autograd, b 32, H 100, "cell", int seed)."""
    import torch

    from fastgru4rec.nn import GRULayer
    from fastgru4rec.ops.gru import gru_step_fused

    layer = GRULayer(100, 100, variant="cell")
    x = torch.randn(32, 100, requires_grad=True)
    h = torch.randn(32, 100, requires_grad=True)
    leaves = [x, h, layer.weight_ih, layer.bias_ih, layer.weight_hh, layer.bias_hh]
    dout = torch.ones(32, 100)

    def step():
        out = gru_step_fused(x, h, layer.weight_ih, layer.bias_ih, layer.weight_hh,
                             layer.bias_hh, "cell", backend="triton")
        torch.autograd.grad(out, leaves, dout)
    return count_launches(recorder, step, "gru step b32-h100 fwd+bwd")


# --------------------------------------------------------------------------- report

def launch_problems(rec: dict, arch: int) -> List[str]:
    """Why a compiled kernel (regs, threads, shared, global_scratch) cannot launch on ``arch``
    (empty: it can)."""
    _, max_shared, regs_per_sm = ARCH_LIMITS[arch]
    why = []
    if rec["regs"] * rec["threads"] > regs_per_sm:
        why.append(f"{rec['regs']} registers x {rec['threads']} threads > {regs_per_sm}")
    if rec["shared"] > max_shared:
        why.append(f"shared {rec['shared']} B > {max_shared} B")
    if rec["global_scratch"]:
        why.append(f"needs {rec['global_scratch']} B of global scratch (no allocator is set)")
    return why


def check(arch: int, quick: bool, shard: Tuple[int, int] = (0, 1)) -> dict:
    import torch
    import triton

    sms = ARCH_LIMITS[arch][0]
    recorder = Recorder()
    recorder.install(arch, sms)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    failures = []
    t0 = time.perf_counter()
    n_cases = 0
    for i, (label, thunk) in enumerate(cases(quick)):
        if i % shard[1] != shard[0]:
            continue
        n_cases += 1
        recorder.case = label
        t = time.perf_counter()
        try:
            thunk()
        except Exception as e:   # a compile error is a result, reported with its case
            first = " ".join(str(e).strip().splitlines()[-3:])[:400]
            failures.append(dict(case=label, error=f"{type(e).__name__}: {first}"))
            print(f"FAIL  {label}: {type(e).__name__}: {first}", flush=True)
            continue
        print(f"ok    {label} ({time.perf_counter() - t:.1f} s)", flush=True)
    launches = []
    if shard[0] == 0:
        try:
            launches = step_launches(recorder) + [gru_launches(recorder)]
        except Exception as e:
            first = " ".join(str(e).strip().splitlines()[-3:])[:400]
            failures.append(dict(case="launches per step", error=f"{type(e).__name__}: {first}"))
            print(f"FAIL  launches per step: {type(e).__name__}: {first}", flush=True)
    records = list(recorder.kernels.values())
    usage = resource_usage([r.pop("cubin") for r in records])
    problems = []
    for r, (reg, local, stack) in zip(records, usage):
        r.update(regs=reg, local_bytes=local, stack_bytes=stack, threads=32 * r["num_warps"])
        why = launch_problems(r, arch)
        r["fits"] = not why
        if why:
            problems.append(dict(kernel=r["kernel"], constexprs=r["constexprs"], why="; ".join(why)))
    records.sort(key=lambda r: (r["module"], r["kernel"], r["constexprs"]))
    return dict(schema="fastgru4rec-compile-check/1", arch=f"sm_{arch}", triton=triton.__version__,
                torch=torch.__version__, quick=quick, cases=n_cases, failures=failures,
                problems=problems, kernels=records, step_launches=launches,
                seconds=round(time.perf_counter() - t0, 1))


def markdown(res: dict) -> str:
    lines = [f"## Triton {res['triton']} → {res['arch']}: {len(res['kernels'])} compiled "
             f"specializations from {res['cases']} cases, {len(res['failures'])} failed, "
             f"{len(res['problems'])} do not fit ({res['seconds']} s)", "",
             "| kernel | first case | constexprs | warps | regs | stack B | shared B | fits |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["kernels"]:
        lines.append(f"| {r['kernel']} | {r['cases'][0]} | {r['constexprs']} | {r['num_warps']} | "
                     f"{r['regs']} | {r['stack_bytes']} | {r['shared']} | "
                     f"{'yes' if r['fits'] else 'NO'} |")
    for s in res.get("step_launches", []):
        lines.append(f"\n{s['setting']}: {s['launches']} launches "
                     f"({s['triton']} Triton): " + " → ".join(x.split(":", 1)[1]
                                                              for x in s["sequence"]))
    for f in res["failures"]:
        lines.append(f"\nFAILED {f['case']}: {f['error']}")
    for p in res["problems"]:
        lines.append(f"\nDOES NOT FIT {p['kernel']} [{p['constexprs']}]: {p['why']}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(ARCH_LIMITS),
                    help="compute capability to compile for (90: H100/H200)")
    ap.add_argument("--quick", action="store_true", help="one size per kernel family (CI)")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="only cases i with i %% N == I (run N processes to compile in parallel)")
    ap.add_argument("--json", type=Path, help="write the full result here")
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: TRITON_INTERPRET is set; unset it (the interpreter replaces the "
              "compiler)", file=sys.stderr)
        return 2
    try:
        shard = tuple(int(x) for x in args.shard.split("/"))
        if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
            raise ValueError
    except ValueError:
        print(f"compile_check: --shard wants I/N with 0 <= I < N (got {args.shard!r})",
              file=sys.stderr)
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("compile_check: triton is not installed", file=sys.stderr)
        return 2
    if not cuobjdump().is_file():
        print(f"compile_check: {cuobjdump()} not found (this triton build ships no NVIDIA "
              "toolchain)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))   # a source checkout's kernels/ when not installed
    res = check(args.arch, args.quick, shard)
    from fastgru4rec.fileio import atomic_write
    md = markdown(res)
    for path, text in ((args.json, json.dumps(res, indent=1) + "\n"), (args.md, md)):
        if path:
            with atomic_write(path, "w") as f:
                f.write(text)
    print(md)
    return 1 if res["failures"] or res["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
