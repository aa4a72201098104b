"""Training benchmarks: one reference training step, and a short slice of an epoch.

CPU: the reference loop's step (fastgru4rec.train.Trainer.train_step) at the RSC15 setting (batch 32,
100 units, 2048 shared negatives, cross-entropy with logQ) on synthetic data and on
rsc15-sample, and a 60-step epoch slice (schedule included) on rsc15-sample by the reference
loop and by the fast engine (its explicit-backward fused step), in one group; and the fast
engine's epoch slice over synthetic catalogs of 20K, 200K and 2M items (the growth of a step's
time with N, the 20K catalog the baseline).
GPU (skipped without CUDA): up to 1,000 steps of the training loop on rsc15-sample at the engine issue's sizes
(fastgru4rec.bench.GPU_TRAIN_SIZES), the reference loop on the device as the baseline and the
fast engine (fastgru4rec.engine.FastTrainer), in one group so the speed-up is measured in the
same run.
"""
from __future__ import annotations

import pytest
import torch

from fastgru4rec.bench import GPU_TRAIN_SIZES, PRESETS, available_engines
from fastgru4rec.config import GRU4RecConfig
from fastgru4rec.estimator import GRU4Rec


def _trainer(data, params, device, engine="reference", store_steps=None):
    cfg = GRU4RecConfig.from_dict(params)
    if store_steps:   # a store just large enough: keeps the 10M-id draw out of setup time
        cfg = cfg.replace(sample_store_size=max(cfg.n_sample, 1) * store_steps)
    model = GRU4Rec(device=device, **cfg.to_dict()).build_model(data.n_items)
    return available_engines()[engine](model, cfg, data.supports, torch.device(device))


def _step_fn(trainer, data, device, sync=False):
    """A closure running one full-width training step on consecutive schedule slices."""
    sched = trainer.schedule(data)
    B = trainer.cfg.batch_size
    full = [t for t in range(sched.n_steps) if sched.width[t] == B]
    dev = torch.device(device)
    inputs = torch.from_numpy(sched.inputs.astype("int64")).to(dev)
    targets = torch.from_numpy(sched.targets.astype("int64")).to(dev)
    state = {"i": 0, "hidden": trainer.model.init_hidden(B)}

    def step():
        t = full[state["i"] % len(full)]
        state["i"] += 1
        lo, hi = int(sched.step_offsets[t]), int(sched.step_offsets[t + 1])
        loss, state["hidden"] = trainer.train_step(inputs[lo:hi], targets[lo:hi], state["hidden"])
        if sync:
            torch.cuda.synchronize()
        return loss

    return step


def _time_epoch_slice(benchmark, trainer, train, steps: int):
    """Time `steps` steps of train_epoch (schedule built each round), 3 rounds after a warm-up
    one; the last round's EpochStats is returned (its rates go into extra_info)."""
    stats = {}

    def run():
        stats["s"] = trainer.train_epoch(train, 0, progress=False, max_steps=steps)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["batches_per_s_last_round"] = stats["s"].batches_per_s
    return stats["s"]


RSC15 = PRESETS["rsc15"]
_CPU_ENGINES = ["reference", "fast"]


@pytest.mark.benchmark(group="cpu-train-step-b32-h100-s2048-ce")
def test_step_reference_synthetic(benchmark, synthetic_data):
    train, _ = synthetic_data
    step = _step_fn(_trainer(train, RSC15, "cpu", store_steps=200), train, "cpu")
    benchmark.extra_info.update(baseline="reference", data="synthetic", n_items=train.n_items)
    benchmark.pedantic(step, rounds=40, iterations=1, warmup_rounds=5)


@pytest.mark.benchmark(group="cpu-train-step-b32-h100-s2048-ce-rsc15")
def test_step_reference_rsc15(benchmark, rsc15_sample):
    train, _ = rsc15_sample
    step = _step_fn(_trainer(train, RSC15, "cpu", store_steps=200), train, "cpu")
    benchmark.extra_info.update(baseline="reference", data="rsc15-sample", n_items=train.n_items)
    benchmark.pedantic(step, rounds=40, iterations=1, warmup_rounds=5)


@pytest.mark.parametrize("engine", _CPU_ENGINES)
@pytest.mark.benchmark(group="cpu-epoch-slice-rsc15")
def test_epoch_slice_rsc15(benchmark, rsc15_sample, engine):
    """60 steps of train_epoch (schedule built each round) of the reference loop and of the
    fast engine (on the CPU its explicit-backward fused step): mini-batches/s in extra_info."""
    engines = available_engines()
    if engine not in engines:
        pytest.skip(f"engine {engine!r} not present (available: {', '.join(engines)})")
    train, _ = rsc15_sample
    steps = 60
    trainer = _trainer(train, RSC15, "cpu", engine=engine, store_steps=4 * (steps + 10))
    if engine == "reference":
        benchmark.extra_info["baseline"] = "reference"
    benchmark.extra_info.update(steps=steps, data="rsc15-sample")
    last = _time_epoch_slice(benchmark, trainer, train, steps)
    benchmark.extra_info["events_per_s_last_round"] = last.events_per_s


_CATALOG_SIZES = [20_000, 200_000, 2_000_000]


@pytest.fixture(scope="module")
def catalog_data():
    """n_items -> synthetic training SessionData whose catalog really holds n_items items: the
    same 40,000 generated sessions (~160K events, Zipf 0.9 popularity), then every item once
    more in two-event sessions after them. The timed steps never reach those (they come last
    in time); they put the whole catalog in the model and, at support 1 each, spread the
    sampler's negatives over the whole table, as a long tail does."""
    import numpy as np

    from fastgru4rec.data import SessionData
    from fastgru4rec.synthetic import synthetic_events

    out = {}
    for n in _CATALOG_SIZES:
        sessions, items, times = synthetic_events(n_items=n, n_sessions=40_000, zipf=0.9, seed=3)
        filler = np.arange(n)
        out[n] = SessionData.from_arrays(
            np.concatenate([sessions, np.char.add("fill", (filler // 2).astype(str))]),
            np.concatenate([items, np.char.add("i", filler.astype(str))]),
            np.concatenate([times, times.max() + 1.0 + filler]), source=f"<{n:,} items>")
        assert out[n].n_items == n
    return out


@pytest.mark.parametrize("n_items", _CATALOG_SIZES)
@pytest.mark.benchmark(group="cpu-epoch-slice-catalog-size")
def test_epoch_slice_catalog_size(benchmark, catalog_data, n_items):
    """How the fast engine's step time grows with the catalog at the RSC15 setting: a step
    touches only its own rows (inputs, targets, 2,048 negatives; sparse updates), so its work
    is the same at every N and only cache misses on the larger table's scattered rows add
    time. 100 steps of train_epoch per round; the 20K-item catalog is the baseline, so each
    larger one's ratio (below 1: slower) is measured in the same run."""
    if "fast" not in available_engines():
        pytest.skip("the fast engine is not present")
    train = catalog_data[n_items]
    steps = 100
    trainer = _trainer(train, RSC15, "cpu", engine="fast", store_steps=4 * (steps + 10))
    if n_items == _CATALOG_SIZES[0]:
        benchmark.extra_info["baseline"] = f"{n_items:,} items"
    benchmark.extra_info.update(steps=steps, data="synthetic", n_items=train.n_items,
                                n_events=train.n_events)
    _time_epoch_slice(benchmark, trainer, train, steps)


# ------------------------------------------------------------------------ GPU
_ENGINES = ["reference", "fast"]


@pytest.mark.parametrize("engine", _ENGINES)
@pytest.mark.parametrize("size", [name for name, _ in GPU_TRAIN_SIZES])
def test_train_cuda(benchmark, cuda, engine, size, rsc15_sample):
    """Up to 1,000 steps of train_epoch on rsc15-sample at the engine issue's sizes: the fast engine's steps are
    whole-loop properties (CUDA graph replays, device counters), so both engines are timed
    through the loop. mini-batches/s in extra_info."""
    engines = available_engines()
    if engine not in engines:
        pytest.skip(f"engine {engine!r} not present (available: {', '.join(engines)})")
    params = dict(PRESETS["rsc15"], **dict(GPU_TRAIN_SIZES)[size])
    benchmark.group = f"gpu-train-{size}"
    train, _ = rsc15_sample
    steps = 1000
    trainer = _trainer(train, params, "cuda", engine=engine, store_steps=4 * steps + 10)
    if engine == "reference":
        benchmark.extra_info["baseline"] = "reference"
    stats = {}

    def run():
        stats["s"] = trainer.train_epoch(train, 0, progress=False, max_steps=steps)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(engine=engine, size=size, device=torch.cuda.get_device_name(),
                                steps=steps,
                                batches_per_s_last_round=stats["s"].batches_per_s,
                                graph=getattr(trainer, "graph_status", None))
