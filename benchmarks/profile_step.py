#!/usr/bin/env python3
"""Where a training step's time goes: torch.profiler over a run of steps of each engine.

    python benchmarks/profile_step.py [--device cuda] [--steps 100] [--data TRAIN.tsv]
                                      [--preset rsc15] [-ps k=v,...] [--json OUT.json]

The fast engine's two step forms (fused: kernels on a GPU, the explicit backward on the CPU;
autograd) and the reference loop (on the CPU the fast engine's autograd form is the reference
step, so it is left out there). The fast engine's steps run eagerly (cuda_graph=False) with its
fixed-shape step, so every launch is visible: the
table gives launches per step (a CUDA graph replays the same launches, so their count bounds
what the graph can save) and the ops with the most device and host time. A GPU check runs it
after the timings (benchmarks/gpu_check.sh), so one lent GPU also says what to fix next.
Default data: the built-in synthetic set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastgru4rec.bench import PRESETS, _build_model, write_json_atomic  # noqa: E402
from fastgru4rec.config import GRU4RecConfig, parse_param_string  # noqa: E402
from fastgru4rec.engine import FastTrainer  # noqa: E402
from fastgru4rec.train import Trainer  # noqa: E402


def _device_time(evt) -> float:
    """Self device time (µs) of a profiler average, across torch versions."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(evt, name, None)
        if v is not None:
            return float(v)
    return 0.0


def profile_engine(name, cls, data, cfg, device, steps, top, **kw):
    model = _build_model(cfg, data.n_items, device)
    trainer = cls(model, cfg, data.supports, device, **kw)
    trainer.train_epoch(data, 0, False, max_steps=20)          # warm-up: compile, allocate
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        stats = trainer.train_epoch(data, 0, False, max_steps=steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
    # device-side events (kernels, memcpy / memset) are the profiler's CUDA-typed events
    n_kernels = sum(1 for evt in prof.events()
                    if getattr(evt, "device_type", None) == torch.autograd.DeviceType.CUDA)
    avgs = prof.key_averages()
    rows = sorted(avgs, key=lambda e: (_device_time(e), e.self_cpu_time_total), reverse=True)
    ops = [{"op": e.key, "calls_per_step": e.count / max(stats.n_steps, 1),
            "self_cpu_us_per_step": e.self_cpu_time_total / max(stats.n_steps, 1),
            "self_device_us_per_step": _device_time(e) / max(stats.n_steps, 1)}
           for e in rows[:top]]
    return {"engine": name, "steps": stats.n_steps,
            "ms_per_step_profiled": 1e3 * stats.seconds / max(stats.n_steps, 1),
            "device_launches_per_step": n_kernels / max(stats.n_steps, 1) if n_kernels else None,
            "top_ops": ops}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--data", help="training events file (default: synthetic)")
    ap.add_argument("--preset", default="rsc15", choices=sorted(PRESETS))
    ap.add_argument("-ps", "--parameter-string", default="")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    params = dict(PRESETS[args.preset], **parse_param_string(args.parameter_string))
    params["sample_store_size"] = 2048 * (args.steps + 40)
    cfg = GRU4RecConfig.from_dict(params)
    if args.data:
        from fastgru4rec.data import read_sessions
        data = read_sessions(args.data)
    else:
        from fastgru4rec.synthetic import synthetic_split
        data = synthetic_split(n_items=3000, n_sessions=8000, seed=7)[0]
    runs = [("fast, fused step (eager, no graph)", FastTrainer,
             dict(cuda_graph=False, step="fused")),
            ("fast, autograd step (eager, no graph)", FastTrainer,
             dict(cuda_graph=False, step="autograd")),
            ("reference", Trainer, {})]
    if device.type != "cuda":   # the CPU's autograd form of the fast engine is the reference step
        runs = [runs[0], runs[2]]
    if cfg.embedding_mode != "shared" or cfg.full_catalog:   # no fused step
        runs = [r for r in runs if r[2].get("step") != "fused"]
    out = {"device": str(device), "config": cfg.to_dict(),
           "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "engines": [profile_engine(n, c, data, cfg, device, args.steps, args.top, **kw)
                       for n, c, kw in runs]}
    for e in out["engines"]:
        print(f"\n{e['engine']}: {e['ms_per_step_profiled']:.3f} ms/step under the profiler, "
              f"device launches/step: {e['device_launches_per_step']}")
        print(f"  {'op':<44} {'calls/step':>10} {'cpu µs/step':>12} {'dev µs/step':>12}")
        for o in e["top_ops"]:
            print(f"  {o['op'][:44]:<44} {o['calls_per_step']:>10.1f} "
                  f"{o['self_cpu_us_per_step']:>12.1f} {o['self_device_us_per_step']:>12.1f}")
    if args.json:
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
