"""``fastgru4rec bench``: end-to-end training throughput and evaluation time.

    fastgru4rec bench [train] [DATA] [--test TEST] [--preset rsc15] [-ps k=v,...] [--epochs 1]
                      [--max-steps N] [--device cpu|cuda|auto] [--engine auto|reference|fast]
                      [--compare-reference] [--json OUT.json] [--plot OUT.png]

DATA defaults to the built-in synthetic dataset (fastgru4rec.synthetic; its test split is
evaluated); real event files are given by path (``--test`` adds an evaluation). The command
prints a table (mini-batches/s, events/s, epoch seconds, evaluation seconds) and, with
``--json``, writes one JSON object (written atomically) holding the numbers, the configuration,
the data's size and the environment (device, driver, library versions, CPU count, load).

How it measures:
- a warm-up of ``--warmup-steps`` steps runs first on a throw-away model (module loads, kernel
  compilation, allocator and handle creation stay out of the numbers); the measured run then
  trains a fresh model exactly as ``fastgru4rec train`` would (``warmup_seconds``: the warm-up's
  wall time, outside the numbers); on CUDA the warm-up also trains the epoch's last sessions,
  whose narrower steps are other kernel specializations, unless ``--max-steps`` stops the run
  before its first narrow step;
- the negative-sample store is drawn before the clock starts (``setup_seconds``);
- mini-batches/s and events/s come from the trainer's own epoch clock (the schedule is built
  before it starts; ``wall_seconds`` includes it); CUDA work is synchronised before each clock
  read. An "event" here is a training pair (an input item and its next item: a session of n
  events gives n - 1), the unit a step's lanes process: events/s = mini-batches/s × the mean
  number of active lanes; a file of E rows over S sessions trains E - S of them an epoch. On
  CUDA the fast engine warms up and captures its CUDA graph at the start of every epoch,
  inside that clock, as in real training: a short ``--max-steps`` window understates its
  steady-state rate (the throw-away warm-up model does not take that cost off the clock);
- evaluation is full ranking over all training items (``evaluate_model``), timed separately
  (with its progress bar unless ``-q``, as the training epochs), after an untimed evaluation
  of the first eval-batch-size test sessions (with warm-up steps on): otherwise the first
  engine's evaluation paid the first-use costs and two runs of the same evaluation code
  compared as x0.8. A test set of at most eval-batch-size sessions is warmed up on its
  sessions cut to two events each (one full-width step), not evaluated twice; on CUDA the
  first launches at the shrinking tail's other widths then stay inside the timed run.

Engines: ``reference`` is the eager training loop (fastgru4rec.train.Trainer). A fast engine is
picked up when ``fastgru4rec.train`` (or a module ``fastgru4rec.engine``) exposes ``FastTrainer``
with Trainer's constructor and ``train_epoch`` signature; ``--engine auto`` prefers it, and
``--compare-reference`` also times the reference on the same data and configuration and reports
the speed-up measured in the same run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cli import add_data_options, data_options, require_positive
from .fileio import atomic_write, check_writable

SCHEMA = "fastgru4rec-bench/1"

# REFERENCE.md §7: the authors' best published hyperparameters (shared embedding, n_sample 2048).
PRESETS: Dict[str, Dict[str, Any]] = {
    "rsc15": dict(loss="cross-entropy", layers=[100], batch_size=32, dropout_p_embed=0.0,
                  dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2, sample_alpha=0.5,
                  elu_param=0.0, bpreg=0.0, logq=1.0, n_sample=2048,
                  constrained_embedding=True),
    "yoochoose": dict(loss="cross-entropy", layers=[480], batch_size=48, dropout_p_embed=0.0,
                      dropout_p_hidden=0.2, learning_rate=0.07, momentum=0.0, sample_alpha=0.2,
                      elu_param=0.0, bpreg=0.0, logq=1.0, n_sample=2048,
                      constrained_embedding=True),
    "retailrocket": dict(loss="bpr-max", layers=[224], batch_size=80, dropout_p_embed=0.5,
                         dropout_p_hidden=0.05, learning_rate=0.05, momentum=0.4,
                         sample_alpha=0.4, bpreg=1.95, elu_param=0.5, logq=0.0, n_sample=2048,
                         constrained_embedding=True),
    "diginetica": dict(loss="bpr-max", layers=[512], batch_size=128, dropout_p_embed=0.5,
                       dropout_p_hidden=0.3, learning_rate=0.05, momentum=0.15, sample_alpha=0.3,
                       bpreg=0.9, elu_param=1.0, logq=0.0, n_sample=2048,
                       constrained_embedding=True),
}

# Sizes of the GPU benchmarks (engine and kernel issues), used by benchmarks/ and gpu_check.sh.
# (name, parameters over the rsc15 preset): the training step
GPU_TRAIN_SIZES: List[Tuple[str, Dict[str, Any]]] = [
    ("b32-h100-s2048-ce", dict(batch_size=32, layers=[100], n_sample=2048, loss="cross-entropy",
                               logq=1.0, sample_alpha=0.5, dropout_p_hidden=0.4,
                               learning_rate=0.2, momentum=0.2, elu_param=0.0)),
    ("b128-h512-s2048-bprmax", dict(batch_size=128, layers=[512], n_sample=2048, loss="bpr-max",
                                    logq=0.0, bpreg=0.9, elu_param=1.0, sample_alpha=0.3,
                                    dropout_p_embed=0.5, dropout_p_hidden=0.3,
                                    learning_rate=0.05, momentum=0.15)),
]
# (b lanes, H, N items): full-catalog ranking at evaluation (RSC15 1/1's catalog and a larger one)
GPU_RANK_SIZES: List[Tuple[int, int, int]] = [(512, 100, 37_483), (512, 512, 200_000)]


# ------------------------------------------------------------------------ environment
def _run_quiet(cmd: Sequence[str], timeout: float = 10.0) -> Optional[str]:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    """The installed version of a distribution, None when it is not installed; read from its
    metadata, not by importing it (triton can fail to import in odd ways on machines without
    a GPU, and is installed all the same)."""
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[Dict[str, Any]]:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    head = _run_quiet(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"])
    if head is None:
        return None
    # results files being rewritten (a run writing several) do not make the code "dirty"
    dirty = _run_quiet(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                        "--", ".", ":(exclude)benchmarks/results"])
    return {"commit": head, "dirty": bool(dirty)}


def environment_info(device=None) -> Dict[str, Any]:
    """Where a measurement was taken: device, driver, library versions, CPU, load."""
    import numpy as np
    import torch

    from . import __version__

    device = torch.device(device or "cpu")
    env: Dict[str, Any] = {
        "device": str(device),
        "device_name": _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fastgru4rec": __version__,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": np.__version__,
        "cuda_runtime": torch.version.cuda,
        "driver": None,
    }
    try:
        env["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        env["loadavg"] = None
    try:
        from . import native
        env["native_extension"] = bool(native.available())
    except Exception:
        env["native_extension"] = False
    git = _git_commit()
    if git:
        env["git"] = git
    if device.type == "cuda" and torch.cuda.is_available():
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        env["device_name"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["cudnn"] = torch.backends.cudnn.version()
        drv = _run_quiet(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                          f"--id={idx}"])
        env["driver"] = drv.splitlines()[0].strip() if drv else None
    return env


# ------------------------------------------------------------------------ engines
def available_engines() -> Dict[str, Any]:
    """name -> trainer class. 'reference' always; 'fast' when a FastTrainer exists."""
    import importlib

    from . import train

    engines: Dict[str, Any] = {"reference": train.Trainer}
    fast = getattr(train, "FastTrainer", None)
    if fast is None:
        try:
            fast = getattr(importlib.import_module(".engine", __package__), "FastTrainer", None)
        except ImportError:
            fast = None
    if fast is not None:
        engines["fast"] = fast
    return engines


def _resolve_engine(name: str, engines: Dict[str, Any]) -> str:
    from .errors import ConfigError

    if name == "auto":
        return "fast" if "fast" in engines else "reference"
    if name not in engines:
        raise ConfigError(f"engine {name!r} is not available here (available: "
                          f"{', '.join(engines)})")
    return name


# ------------------------------------------------------------------------ measuring
def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prime_sampler(trainer):
    """Draw the sample store now (what the first step would do), so it stays off the clock."""
    sampler = getattr(trainer, "sampler", None)
    if sampler is None:
        return
    refill = getattr(sampler, "_refill", None)
    if callable(refill) and getattr(sampler, "_row", 0) >= getattr(sampler, "n_rows", 0):
        refill()


def _make_trainer(engine_cls, model, config, supports, device):
    return engine_cls(model, config, supports, device)


def _build_model(config, n_items: int, device):
    from .estimator import GRU4Rec

    est = GRU4Rec(device=device, **config.to_dict())
    return est.build_model(n_items)


def _session_slice(data, lo: int, hi: int):
    """Sessions lo..hi-1 of a SessionData, with the whole item map (warm-up slices)."""
    from .data import SessionData
    lo, hi = max(0, int(lo)), min(int(hi), data.n_sessions)
    start, end = int(data.offsets[lo]), int(data.offsets[hi])
    return SessionData(data.offsets[lo:hi + 1] - start, data.items[start:end],
                       data.times[start:end], data.session_ids[lo:hi], data.item_ids,
                       data.supports, source=data.source)


def _first_sessions(data, n: int):
    """The first n sessions of a SessionData (the evaluation's warm-up slice)."""
    return _session_slice(data, 0, n)


def _cut_sessions(data, max_len: int):
    """Every session of a SessionData cut to its first max_len events (same item map)."""
    from .data import SessionData
    lengths = np.minimum(np.diff(data.offsets), max_len)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    take = np.repeat(data.offsets[:-1], lengths) + (
        np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths))
    return SessionData(offsets, data.items[take], data.times[take], data.session_ids,
                       data.item_ids, data.supports, source=data.source)


def _eval_warmup_data(test, eval_batch_size: int):
    """The untimed warm-up evaluation's data: the first eval_batch_size sessions. When they are
    the whole test set (at most eval_batch_size sessions), every session cut to its first two
    events instead: one step at the measured run's full width (its first-use costs: module
    loads, allocations, the kernels of that width) rather than a second run of the whole
    evaluation, which on a 2M-item catalog doubled the command's evaluation time."""
    if test.n_sessions > eval_batch_size:
        return _first_sessions(test, eval_batch_size)
    return _cut_sessions(test, 2)


def reaches_narrow_steps(trainer, train, max_steps: Optional[int]) -> bool:
    """Whether a run of ``max_steps`` steps in all (None: whole epochs) reaches a step narrower
    than the batch or with lanes compacted: the steps whose Triton specializations the CUDA
    warm-up compiles on the epoch's tail. A trial run cut before them (gpu_check's 2,000 and
    500 steps of rsc15-sample, whose epoch has about 3,100) skips that warm-up."""
    if max_steps is None:
        return True
    sched = trainer.schedule(train)
    widths = np.diff(sched.step_offsets)
    kept = np.diff(sched.keep_offsets)
    narrow = np.flatnonzero((widths != trainer.cfg.batch_size) | (kept > 0))
    return bool(narrow.size) and max_steps > int(narrow[0])


def measure_training(train, test, config, device, engine: str = "reference",
                     epochs: int = 1, max_steps: Optional[int] = None, warmup_steps: int = 20,
                     eval_batch_size: int = 512, cutoffs: Sequence[int] = (1, 5, 10, 20),
                     mode: str = "conservative", progress: bool = False) -> Dict[str, Any]:
    """Train ``epochs`` epochs (each cut at ``max_steps``) with one engine, then evaluate on
    ``test`` (if given). Returns the numbers as a JSON-able dict."""

    import torch

    from .evaluate import check_eval_batch_size, evaluate_model

    check_eval_batch_size(eval_batch_size, "eval_batch_size")
    engine_cls = available_engines()[engine]
    t_warm = time.perf_counter()
    if warmup_steps > 0:
        # a throw-away model with a small sample store: compiles, loads, allocates
        wcfg = config.replace(sample_store_size=max(config.n_extra_samples, 1) * (warmup_steps + 1))
        wmodel = _build_model(wcfg, train.n_items, device)
        wtrainer = _make_trainer(engine_cls, wmodel, wcfg, train.supports, device)
        wtrainer.train_epoch(train, 0, False, max_steps=warmup_steps)
        if torch.device(device).type == "cuda" and reaches_narrow_steps(wtrainer, train,
                                                                        max_steps):
            # The shrinking tail's steps (widths below B, down to 1; row offsets of any
            # parity) are other Triton specializations than the full-width steps' (an integer
            # argument of 1 or a multiple of 16, a 16-byte-aligned pointer), compiled at their
            # first launch: a whole epoch of the last 3B sessions compiles them here rather
            # than inside the measured epoch (yoochoose1_64 at B48: 17 tail widths)
            tail = _session_slice(train, train.n_sessions - 3 * config.batch_size,
                                  train.n_sessions)
            wtrainer.train_epoch(tail, 0, False)
        _sync(device)
        del wtrainer, wmodel
    # outside the clock, but said: on a GPU it is mostly the kernels' first compiles (cached
    # by Triton across runs) and, on CUDA, the tail widths' specializations
    warmup_seconds = time.perf_counter() - t_warm

    t0 = time.perf_counter()
    model = _build_model(config, train.n_items, device)
    trainer = _make_trainer(engine_cls, model, config, train.supports, device)
    _prime_sampler(trainer)
    _sync(device)
    setup_seconds = time.perf_counter() - t0

    epochs_out: List[Dict[str, Any]] = []
    for epoch in range(epochs):
        t1 = time.perf_counter()
        stats = trainer.train_epoch(train, epoch, progress, max_steps=max_steps)
        _sync(device)
        wall = time.perf_counter() - t1
        epochs_out.append(dict(epoch=stats.epoch, loss=stats.loss, n_steps=stats.n_steps,
                               n_events=stats.n_events, seconds=stats.seconds,
                               wall_seconds=wall, batches_per_s=stats.batches_per_s,
                               events_per_s=stats.events_per_s))
    steps = sum(e["n_steps"] for e in epochs_out)
    events = sum(e["n_events"] for e in epochs_out)
    seconds = sum(e["seconds"] for e in epochs_out)
    out: Dict[str, Any] = {
        "engine": engine,
        "warmup_steps": warmup_steps,
        "warmup_seconds": warmup_seconds,
        "setup_seconds": setup_seconds,
        "epochs": epochs_out,
        "n_steps": steps,
        "n_events": events,
        "train_seconds": seconds,
        "epoch_seconds": seconds / max(len(epochs_out), 1),
        "batches_per_s": steps / max(seconds, 1e-9),
        "events_per_s": events / max(seconds, 1e-9),
        "ms_per_step": 1e3 * seconds / max(steps, 1),
        "final_loss": epochs_out[-1]["loss"] if epochs_out else None,
        "graph": getattr(trainer, "graph_status", None),   # the fast engine's CUDA-graph use
        "eval": None,
    }
    if test is not None:
        head = _eval_warmup_data(test, eval_batch_size)
        if warmup_steps > 0 and np.any(np.diff(head.offsets) >= 2):   # an evaluation point
            evaluate_model(model, head, cutoffs, mode, eval_batch_size, device)
        _sync(device)
        t2 = time.perf_counter()
        # with its progress bar, as the timed training epochs: tqdm's cost (a counter per
        # step, a redraw at most every 0.5 s) is microseconds against a step's milliseconds
        res = evaluate_model(model, test, cutoffs, mode, eval_batch_size, device,
                             progress=progress)
        _sync(device)
        eval_s = time.perf_counter() - t2
        out["eval"] = {
            "seconds": eval_s,
            "n_points": res["n_events"],
            "points_per_s": res["n_events"] / max(eval_s, 1e-9),
            "batch_size": eval_batch_size,
            "n_items": int(train.n_items),
            "mode": mode,
            "recall": {str(k): v for k, v in res["recall"].items()},
            "mrr": {str(k): v for k, v in res["mrr"].items()},
        }
    del trainer
    return out


def _data_summary(data) -> Optional[Dict[str, Any]]:
    if data is None:
        return None
    return {"source": str(data.source), "n_events": int(data.n_events),
            "n_sessions": int(data.n_sessions), "n_items": int(data.n_items)}


def run_bench(train, test, config, device, engine: str = "auto", epochs: int = 1,
              max_steps: Optional[int] = None, warmup_steps: int = 20,
              compare_reference: bool = False, eval_batch_size: int = 512,
              cutoffs: Sequence[int] = (1, 5, 10, 20), mode: str = "conservative",
              progress: bool = False, label: Optional[str] = None,
              preset: Optional[str] = None, log=None,
              command: Optional[List[str]] = None) -> Dict[str, Any]:
    """The whole `bench train` measurement as one JSON-able dict (see module docstring);
    ``command``: the command line that ran it (``_command_line()``), kept in the result."""
    import torch

    device = torch.device(device)
    engines = available_engines()
    primary = _resolve_engine(engine, engines)
    order = [primary]
    notes: List[str] = []
    if compare_reference:
        if primary != "reference":
            order.append("reference")
        elif "fast" in engines:
            notes.append("compare-reference: the reference engine is the one timed (--engine "
                         "reference): nothing to compare it with")
        else:
            notes.append("compare-reference: no fast engine is present here, only the reference "
                         "loop was timed")
    env = environment_info(device)   # before the runs: the load is the machine's, not ours
    runs = []
    for name in order:
        if log:
            log(f"bench: {name} engine on {device} ...")
        runs.append(measure_training(train, test, config, device, name, epochs, max_steps,
                                     warmup_steps, eval_batch_size, cutoffs, mode, progress))
    first = runs[0]
    result: Dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "train",
        "label": label,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # how this file was made: benchmarks/report.py prints it as the file's "Reproduce"
        "command": command,
        "preset": preset,
        "config": config.to_dict(),
        "epochs": epochs,
        "max_steps": max_steps,
        "data": {"train": _data_summary(train), "test": _data_summary(test)},
        "env": env,
        "engines_available": list(engines),
        "runs": runs,
        # the primary run's headline numbers, flat
        "engine": first["engine"],
        "batches_per_s": first["batches_per_s"],
        "events_per_s": first["events_per_s"],
        "epoch_seconds": first["epoch_seconds"],
        "eval_seconds": first["eval"]["seconds"] if first["eval"] else None,
        "speedup_vs_reference": None,
        "notes": notes,
    }
    ref = next((r for r in runs if r["engine"] == "reference"), None)
    if ref is not None and first["engine"] != "reference":
        # training only: both engines evaluate with the same code (evaluate_model), so a
        # ratio of their evaluation times would be noise presented as a speed-up
        result["speedup_vs_reference"] = {
            "train": first["batches_per_s"] / max(ref["batches_per_s"], 1e-12)}
    return result


def _command_line() -> Optional[List[str]]:
    """The argv of this `fastgru4rec bench` process, the program named "fastgru4rec" (the
    console script and `python -m fastgru4rec` take the same arguments). None when bench runs
    inside another program (cli.main(argv) called from Python): sys.argv is then that
    program's, not the bench command's."""
    if sys.argv[1:2] != ["bench"]:
        return None
    return ["fastgru4rec", *sys.argv[1:]]


# ------------------------------------------------------------------------ output
def write_json_atomic(path, obj) -> Path:
    """Write JSON to path atomically (fileio.atomic_write)."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
    return path


def _config_brief(cfg: Dict[str, Any]) -> str:
    layers = "/".join(str(x) for x in cfg.get("layers", []))
    return (f"B={cfg.get('batch_size')} H={layers} n_sample={cfg.get('n_sample')} "
            f"{cfg.get('loss')}")


def format_table(result: Dict[str, Any]) -> str:
    """The printed table: one line per engine timed."""
    head = (f"{'engine':<10} {'device':<8} {'mb/s':>9} {'events/s':>11} {'ms/step':>8} "
            f"{'epoch s':>8} {'eval s':>7} {'eval pts/s':>11} {'loss':>8}")
    lines = [head, "-" * len(head)]
    for r in result["runs"]:
        ev = r["eval"]
        lines.append(
            f"{r['engine']:<10} {result['env']['device']:<8} {r['batches_per_s']:>9.1f} "
            f"{r['events_per_s']:>11,.0f} {r['ms_per_step']:>8.2f} {r['epoch_seconds']:>8.2f} "
            + (f"{ev['seconds']:>7.2f} {ev['points_per_s']:>11,.0f} " if ev else
               f"{'-':>7} {'-':>11} ")
            + (f"{r['final_loss']:>8.4f}" if r["final_loss"] is not None else f"{'-':>8}"))
    env = result["env"]
    tr = result["data"]["train"]
    lines.append(f"data: {tr['source']} ({tr['n_events']:,} events, {tr['n_items']:,} items); "
                 f"{_config_brief(result['config'])}; {result['epochs']} epoch(s)"
                 + (f", max {result['max_steps']} steps" if result["max_steps"] else ""))
    lines.append(f"env: {env['device_name']}; torch {env['torch']}, triton {env['triton']}, "
                 f"numpy {env['numpy']}; {env['cpu_count']} CPUs, {env['torch_threads']} torch "
                 f"threads" + (f"; driver {env['driver']}" if env.get("driver") else "")
                 + (f"; load {env['loadavg'][0]}" if env.get("loadavg") else ""))
    sp = result.get("speedup_vs_reference")
    if sp:
        lines.append(f"speed-up vs reference (same run): training x{sp['train']:.2f} "
                     f"(evaluation is the same code in both)")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _require_matplotlib():
    from .errors import ConfigError

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'fastgru4rec[plot]'") from None


def plot_result(result: Dict[str, Any], path) -> Path:
    """A PNG: mini-batches/s per engine, and evaluation seconds."""
    _require_matplotlib()
    import matplotlib.pyplot as plt

    runs = result["runs"]
    names = [r["engine"] for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].bar(names, [r["batches_per_s"] for r in runs], color="#4C72B0")
    axes[0].set_ylabel("mini-batches / s")
    axes[0].set_title("training throughput")
    ev = [r["eval"]["seconds"] if r["eval"] else 0.0 for r in runs]
    axes[1].bar(names, ev, color="#DD8452")
    axes[1].set_ylabel("seconds")
    axes[1].set_title("evaluation time")
    env = result["env"]
    fig.suptitle(f"{env['device_name']} - {_config_brief(result['config'])}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_write(path, "wb") as f:   # a file object: savefig needs the format named
            fig.savefig(f, format=_plot_format(path), dpi=110)
    finally:
        plt.close(fig)
    return path


def _plot_format(path) -> str:
    """The image format of a --plot path, from its extension (png without one); ConfigError
    when matplotlib cannot write it."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from .errors import ConfigError

    fmt = Path(path).suffix[1:].lower() or "png"
    supported = FigureCanvasAgg.get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(f"--plot {path}: cannot draw a .{fmt} file (formats: "
                          f"{', '.join(sorted(supported))})")
    return fmt


# ------------------------------------------------------------------------ CLI
def _parse_synthetic(text: Optional[str]) -> Dict[str, Any]:
    from .config import parse_param_string
    from .errors import ConfigError
    from .synthetic import check_synthetic_params, synthetic_events

    if not text:
        return {}
    allowed = dict(inspect.signature(synthetic_events).parameters)
    allowed["test_fraction"] = None
    out: Dict[str, Any] = {}
    for key, value in parse_param_string(text).items():
        if key not in allowed:
            raise ConfigError(f"--synthetic: unknown key {key!r} (known: {', '.join(allowed)})")
        try:
            num = float(value)
        except ValueError:
            raise ConfigError(f"--synthetic: {key}={value!r} is not a number") from None
        out[key] = int(num) if num.is_integer() and key not in ("test_fraction", "zipf",
                                                                "p_follow", "mean_length") else num
    check_synthetic_params(where="--synthetic", **out)
    return out


def _split_positionals(values: List[str]) -> Tuple[str, Optional[str]]:
    from .errors import ConfigError

    values = list(values)
    target = "train"
    if values and values[0] in ("train",):
        target = values.pop(0)
    if len(values) > 1:
        raise ConfigError(f"bench: expected at most one data path (got {values})")
    return target, (values[0] if values else None)


#: untimed steps before the clock starts: far more than any warm-up needs (the sample store is
#: sized by them, so an absurd value would be reported as a sample_store_size problem)
MAX_WARMUP_STEPS = 1_000_000


def cmd_bench(args) -> int:
    import torch

    from .config import GRU4RecConfig, parse_param_string
    from .errors import ConfigError
    from .estimator import resolve_device
    from .evaluate import check_eval_batch_size

    _target, data_path = _split_positionals(args.what)
    ps_params = parse_param_string(args.params) if args.params else {}
    ps_epochs = (GRU4RecConfig.from_dict({"n_epochs": ps_params["n_epochs"]},
                                         where="-ps").n_epochs
                 if "n_epochs" in ps_params else None)
    if args.epochs is None:
        # n_epochs in -ps counts like --epochs (a preset's 10 epochs do not: bench times 1)
        args.epochs = ps_epochs or 1
    elif ps_epochs is not None and ps_epochs != args.epochs:
        raise ConfigError(f"bench: --epochs {args.epochs} and n_epochs={ps_epochs} in -ps "
                          "disagree")
    require_positive(args.epochs, "--epochs")
    require_positive(args.max_steps, "--max-steps")
    # Output destinations are checked before the benchmark, not after it.
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path == "":
            raise ConfigError(f"{option}: the path is empty")
        if path is not None:
            check_writable(path, [p for p in (data_path, args.test) if p])
    if args.plot:
        _plot_format(args.plot)
    check_eval_batch_size(args.eval_batch_size)
    if not 0 <= args.warmup_steps <= MAX_WARMUP_STEPS:
        raise ConfigError(f"--warmup-steps must be in [0, {MAX_WARMUP_STEPS}] "
                          f"(got {args.warmup_steps})")
    if args.threads:
        torch.set_num_threads(args.threads)
    params: Dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    params.update(ps_params)
    params["n_epochs"] = args.epochs
    config = GRU4RecConfig.from_dict(params, where="bench parameters")
    device = resolve_device(args.device)

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr)

    if data_path is not None and args.synthetic:
        raise ConfigError("--synthetic sizes the built-in data; it cannot go with a DATA path")
    t0 = time.perf_counter()
    if data_path is None:
        if args.test:
            raise ConfigError("--test needs a DATA path (the synthetic data brings its own test)")
        from .synthetic import synthetic_split
        train, test = synthetic_split(**_parse_synthetic(args.synthetic))
        train.source = "synthetic"
        test.source = "synthetic (test split)"
    else:
        from .data import read_sessions, require_evaluable, require_trainable
        read_kw = data_options(args)
        train = read_sessions(data_path, **read_kw)
        require_trainable(train, config.min_lanes)
        test = read_sessions(args.test, item_map=train, **read_kw) if args.test else None
        if test is not None:
            require_evaluable(test)
    log(f"bench: train {train.n_events:,} events / {train.n_sessions:,} sessions / "
        f"{train.n_items:,} items" + (f"; test {test.n_events:,} events" if test else "")
        + f" (read in {time.perf_counter() - t0:.1f} s)")

    result = run_bench(train, test, config, device, engine=args.engine, epochs=args.epochs,
                       max_steps=args.max_steps, warmup_steps=args.warmup_steps,
                       compare_reference=args.compare_reference,
                       eval_batch_size=args.eval_batch_size, progress=not args.quiet,
                       label=args.label, preset=args.preset, log=log,
                       command=_command_line())
    # The files first (their paths were checked before the run), then the table: a closed or
    # full stdout must not lose the numbers measured; if a file still fails to write, the
    # table is printed before the error.
    try:
        if args.json:
            write_json_atomic(args.json, result)
            log(f"bench: wrote {args.json}")
        if args.plot:
            plot_result(result, args.plot)
            log(f"bench: wrote {args.plot}")
    except Exception:
        print(format_table(result), flush=True)
        raise
    print(format_table(result), flush=True)
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """Positionals may follow options (`bench train --preset rsc15 DATA`): plain argparse takes
    all positionals at their first occurrence and would reject the later DATA."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def register_cli(subparsers) -> None:
    b = subparsers.add_parser(
        "bench", help="training throughput (mini-batches/s, events/s) and evaluation time",
        description="End-to-end benchmark: `fastgru4rec bench [train] [DATA]`. Without DATA the "
                    "built-in synthetic dataset is used.")
    b.add_argument("what", nargs="*", metavar="[train] [DATA]",
                   help="what to time (train, the default) and the training events file "
                        "(default: built-in synthetic data)")
    b.add_argument("--test", help="test events evaluated after training (real data)")
    b.add_argument("--preset", choices=sorted(PRESETS),
                   help="the authors' best hyperparameters for a dataset (their published "
                        "settings)")
    b.add_argument("-ps", "--parameter-string", dest="params",
                   help="parameters as k=v,k=v (override the preset)")
    b.add_argument("--epochs", type=int, default=None,
                   help="epochs timed (default: n_epochs of -ps if given there, else 1; a "
                        "preset's n_epochs is not used)")
    b.add_argument("--max-steps", type=int, default=None, help="cut each epoch at N steps")
    b.add_argument("--warmup-steps", type=int, default=20,
                   help="steps on a throw-away model before timing (default 20)")
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    b.add_argument("--engine", default="auto", choices=["auto", "reference", "fast"],
                   help="training loop (auto: the fast one when present)")
    b.add_argument("--compare-reference", action="store_true",
                   help="also time the reference loop in the same run and report the speed-up")
    b.add_argument("--eval-batch-size", type=int, default=512)
    add_data_options(b)
    b.add_argument("--synthetic", metavar="k=v,...",
                   help="synthetic data size, e.g. n_sessions=2000,n_items=300 (no DATA only)")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    b.add_argument("--label", help="a name stored in the JSON")
    b.add_argument("--json", metavar="OUT.json", help="write the results as JSON (atomically)")
    b.add_argument("--plot", metavar="OUT.png", help="draw a chart (needs matplotlib; the format "
                   "follows the extension: png, svg, pdf, ...; png without one)")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)
    b.__class__ = _IntermixedParser


# ------------------------------------------------------------------------ pytest-benchmark ratios
def benchmark_ratios(benchmarks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Ratios inside each pytest-benchmark group, from one run's results.

    benchmarks: dicts as in pytest-benchmark's JSON (group, name, extra_info, stats.median).
    In a group, the baselines are the benchmarks whose ``extra_info["baseline"]`` is truthy
    (a label string or True); when none is marked, those whose name contains "reference".
    Every other benchmark of the group gets one row per baseline:
    {group, name, baseline, median_s, baseline_median_s, speedup} with speedup =
    baseline median / median (> 1: faster than the baseline).
    """
    groups: Dict[Any, List[Dict[str, Any]]] = {}
    for b in benchmarks:
        groups.setdefault(b.get("group"), []).append(b)
    rows: List[Dict[str, Any]] = []
    for group, members in groups.items():
        if len(members) < 2:
            continue
        base = [b for b in members if (b.get("extra_info") or {}).get("baseline")]
        if not base:
            base = [b for b in members if "reference" in str(b.get("name", "")).lower()]
        for b in members:
            if b in base:
                continue
            med = ((b.get("stats") or {}).get("median"))
            for ref in base:
                ref_med = (ref.get("stats") or {}).get("median")
                if not med or not ref_med:
                    continue
                rows.append({"group": group, "name": b.get("name"),
                             "baseline": ref.get("name"), "median_s": med,
                             "baseline_median_s": ref_med, "speedup": ref_med / med})
    return rows
