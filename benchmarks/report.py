#!/usr/bin/env python3
"""Turn benchmark results into markdown tables and PNG charts.

    python benchmarks/report.py render FILE.json [...] [--md OUT.md] [--png OUT.png]
        a markdown table per kind of result (``fastgru4rec bench`` JSON, pytest-benchmark JSON,
        gpu_check ceilings), printed, and written with --md; a chart with --png (matplotlib).
    python benchmarks/report.py performance [--results DIR] [--out FILE.md]
        regenerate benchmarks/results/PERFORMANCE.md (+ performance.png beside it) from the
        committed results in that folder: the README's "Performance" section is this file.
        Another --results folder or an --out file writes only that file and its chart.
    python benchmarks/report.py summary --raw DIR --out DIR
        used by gpu_check.sh: summary.md, summary.json (+ summary.png) and summary.txt (the short
        table the script prints last) from the raw outputs of one GPU check.

Only the standard library is needed (matplotlib for charts, skipped with a note when absent).
Ratios inside a pytest-benchmark group come from the same run (see benchmarks/conftest.py).
A file that is not a JSON object, or a --results folder that does not exist, ends the command
with one line on stderr naming it, exit status 2.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastgru4rec.bench import benchmark_ratios, write_json_atomic  # noqa: E402
from fastgru4rec.fileio import atomic_write  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------------ reading
class ReportError(Exception):
    """A results file or folder the report cannot use: main prints it as one line, exit 2."""


def load(path) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def read_result(path) -> Dict[str, Any]:
    """One results file, which must be a JSON object; else ReportError naming the file and what
    is wrong (a traceback from json or from kind_of would not say which file)."""
    try:
        doc = load(path)
    except OSError as e:
        raise ReportError(f"{path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:            # json.JSONDecodeError, or bytes that are not UTF-8
        raise ReportError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        what = "an array" if isinstance(doc, list) else f"a {type(doc).__name__}"
        raise ReportError(f"{path}: {what} in JSON, not a results file (a JSON object)")
    return doc


def read_results(paths: List[str]) -> List[Tuple[str, Dict[str, Any]]]:
    return [(Path(p).stem, read_result(p)) for p in paths]


def kind_of(doc: Dict[str, Any]) -> str:
    if str(doc.get("schema", "")).startswith("fastgru4rec-bench"):
        return "train"
    if str(doc.get("schema", "")).startswith("fastgru4rec-gpu-check"):
        return "summary"
    if "benchmarks" in doc and "machine_info" in doc:
        return "pytest-benchmark"
    if "copy_gb_s" in doc:
        return "ceilings"
    if isinstance(doc.get("engines"), list) and all("top_ops" in e for e in doc["engines"]):
        return "profile"
    if doc.get("kind") == "tile-sweep":
        return "tile-sweep"
    return "unknown"


# kinds read but drawn by no table here: said out loud, so a copied file is never silently lost
NOT_DRAWN = {
    "summary": "gpu_check's summary.json: copy the raw files it was made from instead, "
               "see benchmarks/README.md",
    "profile": "a benchmarks/profile_step.py profile: gpu_check's summary.md shows it",
    "tile-sweep": "a benchmarks/sweep_tiles.py sweep: gpu_check's summary.md shows it",
}


def tiles_text(tiles) -> str:
    """A tile as benchmarks/sweep_tiles.py's rows give it: (BM, BN, BK, num_warps)."""
    return "BM={} BN={} BK={} warps={}".format(*tiles)


def tile_sweep_best(doc: Dict[str, Any]) -> List[Dict[str, Any]]:
    """benchmarks/sweep_tiles.py output: per kernel, the fastest candidate that ran and agreed
    with the default (relative difference <= 1e-4), with the default's time."""
    out = []
    for kernel in dict.fromkeys(r["kernel"] for r in doc.get("rows", [])):
        rows = [r for r in doc["rows"] if r["kernel"] == kernel]
        ok = [r for r in rows if not r.get("error") and r.get("ms") is not None
              and (r.get("rel_diff") or 0.0) <= 1e-4]
        default = next((r for r in rows if r.get("default")), None)
        if ok:
            best = min(ok, key=lambda r: r["ms"])
            out.append(dict(kernel=kernel, tiles=best["tiles"], ms=best["ms"],
                            default_ms=default.get("ms") if default else None))
    return out


def tile_sweep_md(doc: Dict[str, Any]) -> List[str]:
    rows = [[r["kernel"], tiles_text(r["tiles"]) + (" (default)" if r.get("default") else ""),
             fmt_num(r.get("ms"), 2), "-" if r.get("rel_diff") is None else f"{r['rel_diff']:.1e}",
             r.get("error") or ""] for r in doc.get("rows", [])]
    return [f"b {doc.get('b')}, H {doc.get('H')}, N {doc.get('N')}, {doc.get('precision')}", "",
            md_table(["kernel", "tiles", "ms", "diff vs default", "error"], rows, "llrrl"), ""]


def profile_md(doc: Dict[str, Any], top: int = 10) -> List[str]:
    """benchmarks/profile_step.py output: per engine, launches per step and the top ops."""
    md = []
    for e in doc["engines"]:
        md += [f"{e['engine']}: {e['ms_per_step_profiled']:.3f} ms/step under the profiler, "
               f"device launches per step: {e.get('device_launches_per_step')}", ""]
        rows = [[o["op"], f"{o['calls_per_step']:.1f}", f"{o['self_cpu_us_per_step']:.1f}",
                 f"{o['self_device_us_per_step']:.1f}"] for o in e["top_ops"][:top]]
        md += [md_table(["op", "calls/step", "host µs/step", "device µs/step"], rows, "lrrr"),
               ""]
    return md


# ------------------------------------------------------------------------ formatting
def md_table(head: List[str], rows: List[List[Any]], align: Optional[str] = None) -> str:
    align = align or ("l" + "r" * (len(head) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_num(x: Optional[float], digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_date(text: Any) -> str:
    """An ISO time as "2026-11-29 10:50 UTC" (fastgru4rec bench's "created", pytest-benchmark's
    "datetime"); the text as it is when it does not parse."""
    try:
        t = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if t.tzinfo is None:
        return t.strftime("%Y-%m-%d %H:%M")
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def config_brief(cfg: Dict[str, Any]) -> str:
    layers = "/".join(str(x) for x in cfg.get("layers", []))
    return f"B{cfg.get('batch_size')} H{layers} S{cfg.get('n_sample')} {cfg.get('loss')}"


def env_line(env: Dict[str, Any]) -> str:
    parts = [str(env.get("device_name") or env.get("device"))]
    if env.get("driver"):
        parts.append(f"driver {env['driver']}")
    if env.get("cuda_runtime"):
        parts.append(f"CUDA {env['cuda_runtime']}")
    parts.append(f"torch {env.get('torch')}")
    parts.append(f"triton {env.get('triton')}")
    parts.append(f"numpy {env.get('numpy')}")
    parts.append(f"Python {env.get('python')}")
    threads = env.get("torch_threads")
    parts.append(f"{env.get('cpu_count')} CPUs ({env.get('cpu')}), "
                 f"{threads} torch thread{'' if threads == 1 else 's'}")
    parts.append("native extension " + ("built" if env.get("native_extension") else "absent"))
    if env.get("loadavg"):
        parts.append(f"load average {env['loadavg'][0]} (1 min, when recorded)")
    return "; ".join(parts)


def provenance(doc: Dict[str, Any]) -> str:
    """When and at which commit a results file was measured, and the command that made it when
    recorded: fastgru4rec bench keeps them in env.git, "created" and "command", pytest-benchmark
    in machine_info's fastgru4rec_env (else its commit_info) and "datetime"."""
    fenv = (doc.get("machine_info") or {}).get("fastgru4rec_env") or {}
    git = (doc.get("env") or {}).get("git") or fenv.get("git")
    if not git and doc.get("commit_info"):
        git = {"commit": doc["commit_info"].get("id"), "dirty": doc["commit_info"].get("dirty")}
    parts = []
    if git and git.get("commit"):
        # a dirty tree: the numbers are of uncommitted code, the commit alone does not rebuild it
        parts.append(f"commit {str(git['commit'])[:7]}" + (" (dirty tree)" if git.get("dirty")
                                                            else ""))
    when = doc.get("created") or doc.get("datetime")
    if when:
        parts.append(fmt_date(when))
    text = ", ".join(parts) or "no commit or date recorded"
    if isinstance(doc.get("command"), list) and doc["command"]:
        text += f"; `{shlex.join(str(a) for a in doc['command'])}`"
    return text


# ------------------------------------------------------------------------ floors
def step_floor(cfg: Dict[str, Any], ceilings: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """The hardware floor of one training step (METHOD.md: operations over the matmul rate,
    fewest bytes over the copy bandwidth; the larger one). Shared embedding assumed."""
    if not ceilings or not ceilings.get("copy_gb_s") or not ceilings.get("matmul_fp32_tflop_s"):
        return None
    b, S = int(cfg["batch_size"]), int(cfg["n_sample"])
    layers = [int(h) for h in cfg["layers"]]
    C = b + S
    H_out = layers[-1]
    flops_fwd, dense_params, h_in = 0.0, 0, H_out
    for H in layers:
        flops_fwd += 2 * b * (h_in + H) * 3 * H
        dense_params += 3 * H * (h_in + H) + 6 * H
        h_in = H
    flops_fwd += 2 * b * C * H_out
    flops = 3 * flops_fwd                                    # forward + backward (~2x)
    rows = min(C + b, 10 ** 9)
    nbytes = 4 * (C * H_out + b * H_out                     # gathered rows
                  + 3 * 2 * rows * (H_out + 1)               # rows of W, acc, vel (+ bias): r+w
                  + 3 * 2 * dense_params)                    # dense params, acc, vel: r+w
    t_flop = flops / (ceilings["matmul_fp32_tflop_s"] * 1e12)
    t_byte = nbytes / (ceilings["copy_gb_s"] * 1e9)
    return {"flops": flops, "bytes": nbytes, "t_flop_s": t_flop, "t_byte_s": t_byte,
            "floor_s": max(t_flop, t_byte), "bound": "arithmetic" if t_flop > t_byte else "memory"}


# ------------------------------------------------------------------------ tables
def ceilings_of(env: Dict[str, Any], ceilings: List[Dict[str, Any]]) -> Optional[Dict]:
    """The ceilings measured on the device a run used (their "device" is the run's device_name):
    another device's rates (a GPU's for a CPU run) give no floor for it. The first such file
    when there are several."""
    return next((c for c in ceilings if c.get("device") == env.get("device_name")), None)


def train_rows(docs: List[Tuple[str, Dict[str, Any]]], ceilings: List[Dict[str, Any]] = (),
               any_device: bool = False):
    """Rows of the training table; with a floor and a gap for the rows whose device has
    ceilings, "-" for the others. any_device: the first ceilings hold for every row (gpu_check's
    summary: one machine measured them all; in its CPU simulation the ceilings say "cpu")."""
    ceilings = list(ceilings)
    if any_device:
        matched = [ceilings[0] if ceilings else None for _ in docs]
    else:
        matched = [ceilings_of(d["env"], ceilings) for _, d in docs]
    with_floor = any(c is not None for c in matched)
    head = ["run", "device", "config", "data", "engine", "mb/s", "events/s", "ms/step",
            "epoch s", "eval s", "R@20 / MRR@20", "speed-up vs ref."]
    if with_floor:
        head += ["floor µs/step", "gap"]
    rows = []
    for (name, d), c in zip(docs, matched):
        tr = (d.get("data") or {}).get("train") or {}
        for r in d["runs"]:
            sp = d.get("speedup_vs_reference") if r["engine"] == d.get("engine") else None
            row = [d.get("label") or name, d["env"].get("device_name"), config_brief(d["config"]),
                   f"{Path(str(tr.get('source', '?'))).name} ({tr.get('n_events', 0):,} ev)"
                   + (f", {r['n_steps']} steps" if d.get("max_steps") else ""),
                   r["engine"], fmt_num(r["batches_per_s"]), fmt_num(r["events_per_s"]),
                   f"{r['ms_per_step']:.2f}", f"{r['epoch_seconds']:.1f}",
                   f"{r['eval']['seconds']:.2f}" if r.get("eval") else "-",
                   _recall_mrr(r.get("eval")),
                   f"x{sp['train']:.2f}" if sp else "-"]
            if with_floor:
                fl = step_floor(d["config"], c) if c else None
                row += [f"{fl['floor_s'] * 1e6:.1f} ({fl['bound']})" if fl else "-",
                        f"x{r['ms_per_step'] * 1e-3 / fl['floor_s']:.0f}" if fl else "-"]
            rows.append(row)
    return head, rows


def _recall_mrr(ev: Optional[Dict[str, Any]], k: str = "20") -> str:
    if not ev or k not in (ev.get("recall") or {}):
        return "-"
    return f"{ev['recall'][k]:.4f} / {ev['mrr'][k]:.4f}"


def baseline_label(bench: Optional[Dict[str, Any]], name: str) -> str:
    """What a speed-up is against: the baseline's own label (its extra_info["baseline"] when a
    string), else its test name without the test_ prefix, parameters included (a bare parameter
    such as "13133" would not say which implementation was the baseline)."""
    label = ((bench or {}).get("extra_info") or {}).get("baseline")
    return label if isinstance(label, str) else name.removeprefix("test_")


def bench_rows(doc: Dict[str, Any]):
    """pytest-benchmark JSON -> rows (group, name, median, IQR, rounds, speed-up)."""
    benches = doc.get("benchmarks", [])
    ratios = doc.get("ratios")
    if ratios is None:
        ratios = benchmark_ratios(benches)
    by_name = {b.get("name"): b for b in benches}
    speed: Dict[str, List[str]] = {}
    for r in ratios:
        speed.setdefault(r["name"], []).append(
            f"x{r['speedup']:.2f} vs {baseline_label(by_name.get(r['baseline']), r['baseline'])}")
    head = ["group", "benchmark", "median", "IQR", "rounds", "speed-up (same run)"]
    rows = []
    sizes: Dict[Any, int] = {}
    for b in benches:
        sizes[b.get("group")] = sizes.get(b.get("group"), 0) + 1
    for b in sorted(benches, key=lambda b: (str(b.get("group")), b.get("name", ""))):
        st = b.get("stats") or {}
        is_base = bool((b.get("extra_info") or {}).get("baseline")) and sizes[b.get("group")] > 1
        # one round has no spread: its IQR of 0 would read as a perfectly steady timing
        one_round = isinstance(st.get("rounds"), int) and st["rounds"] < 2
        rows.append([b.get("group") or "-", b.get("name"), fmt_time(st.get("median")),
                     "-" if one_round else fmt_time(st.get("iqr")), st.get("rounds", "-"),
                     "; ".join(speed.get(b.get("name"), [])) or ("baseline" if is_base else "-")])
    return head, rows


def ceilings_table(c: Dict[str, Any]) -> str:
    rows = [["device-to-device copy", f"{c['copy_gb_s']:.0f} GB/s (read + write)"]]
    for k in ("fp32", "tf32", "bf16"):
        if c.get(f"matmul_{k}_tflop_s"):
            n = c.get("matmul_n", 8192)   # files before matmul_n: the GPU size, 8192
            rows.append([f"matmul {k} ({n}³)", f"{c[f'matmul_{k}_tflop_s']:.1f} TFLOP/s"])
    # the device named: the floors use a ceilings file only for runs on that device
    where = f" on {c['device']}" if c.get("device") else ""
    return md_table([f"ceiling (measured{where})", "value"], rows, "lr")


def render(docs: List[Tuple[str, Dict[str, Any]]]
           ) -> Tuple[str, List[Tuple[str, Dict]], List[Tuple[str, Dict]]]:
    """docs: (name, JSON object) pairs, as read_results gives them."""
    trains = [(n, d) for n, d in docs if kind_of(d) == "train"]
    pbs = [(n, d) for n, d in docs if kind_of(d) == "pytest-benchmark"]
    ceilings = [d for _, d in docs if kind_of(d) == "ceilings"]
    out: List[str] = []
    for c in ceilings:
        out += [ceilings_table(c), ""]
    if trains:
        head, rows = train_rows(trains, ceilings)
        out += ["End-to-end training (`fastgru4rec bench train`):", "", md_table(head, rows, "lll"
                + "l" + "l" + "r" * (len(head) - 5)), "",
                "(data: the file's rows (ev); events/s counts training pairs, an item and the "
                "next one, so a file of E rows in S sessions trains E − S events an epoch; "
                "speed-up: training mini-batches/s over the reference loop's, same run.)", ""]
    for name, d in pbs:
        head, rows = bench_rows(d)
        out += [f"Micro-benchmarks ({name}):", "", md_table(head, rows, "llrrrl"), ""]
    not_drawn = [f"{n} ({NOT_DRAWN[kind_of(d)]})" for n, d in docs if kind_of(d) in NOT_DRAWN]
    if not_drawn:
        out += [f"(not drawn here: {'; '.join(not_drawn)})", ""]
    unknown = [n for n, d in docs if kind_of(d) == "unknown"]
    if unknown:
        out += [f"(not a known result format: {', '.join(unknown)})", ""]
    return "\n".join(out).rstrip() + "\n", trains, pbs


# ------------------------------------------------------------------------ charts
def chart(trains: List[Tuple[str, Dict]], pbs: List[Tuple[str, Dict]], path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print("report: matplotlib not installed, no chart drawn", file=sys.stderr)
        return None
    panels = []
    if trains:
        labels, values = [], []
        for name, d in trains:
            for r in d["runs"]:
                labels.append(f"{d.get('label') or name}\n{r['engine']}, "
                              f"{config_brief(d['config'])}")
                values.append(r["batches_per_s"])
        panels.append(("training throughput (mini-batches/s)", labels, values))
    ratio_rows = [r for _, d in pbs for r in (d.get("ratios") or benchmark_ratios(
        d.get("benchmarks", [])))]
    if ratio_rows:
        panels.append(("speed-up over the group's baseline (same run)",
                       [f"{r['group']}\n{r['name']}" for r in ratio_rows],
                       [r["speedup"] for r in ratio_rows]))
    if not panels:
        return None
    height = sum(0.45 * len(p[1]) + 1.0 for p in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, max(2.5, height)), squeeze=False)
    for ax, (title, labels, values) in zip(axes[:, 0], panels):
        if "speed-up" in title:
            # ratios span x1.3 to x160: on a linear axis the small ones vanish. On a log axis
            # equal factors get equal lengths; the bars start at x1 (a slow-down points left)
            ax.set_xscale("log")
            ax.barh(range(len(values)), [v - 1 for v in values], left=1, color="#4C72B0")
            ax.set_xlim(min(values + [1.0]) / 1.5, max(values + [1.0]) * 2.5)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"x{x:g}"))
            ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        else:
            ax.barh(range(len(values)), values, color="#4C72B0")
        ax.set_yticks(range(len(values)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.1f}", va="center", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ PERFORMANCE.md
CPU_NOTE = ("these are CPU numbers (on the CPU the fast engine runs the explicit-backward fused "
            "step in plain torch ops, the reference loop its autograd step, both with the C++ "
            "batcher, sampler and sparse optimizer), measured on a shared 2-core machine whose "
            "other jobs make them noisy (compare ratios measured in the same run, not absolute "
            "numbers across runs).")
GPU_NOTE = ("GPU rows: from `benchmarks/gpu_check.sh` on a lent GPU (ceilings included), one run "
            "each; on CUDA the fast engine captures its CUDA graph at the start of every epoch, "
            "inside the clock as in real training, so a short `--max-steps` window (the steps "
            "in the data column) understates its steady-state rate.")
REPRODUCE = ("`fastgru4rec bench train --preset rsc15 TRAIN --test TEST --threads N "
             "--compare-reference --label NAME --json benchmarks/results/NAME.json`, `python -m "
             "pytest benchmarks --benchmark-json benchmarks/results/NAME.json`")


def performance(results: Path, out: Optional[Path] = None,
                readme: Optional[Path] = None) -> Path:
    """Regenerate results/PERFORMANCE.md (and performance.png beside it) from the committed
    results (or ``out`` from other results); ``readme``: also put the section into that
    README (the command does for the committed results only)."""
    if not Path(results).is_dir():
        # never a page saying "no results" for a mistyped folder (nor the folder made for it)
        raise ReportError(f"{results}: no such folder (--results names the folder of result "
                          "JSON files)")
    out = out or results / "PERFORMANCE.md"
    paths = sorted(p for p in glob.glob(str(results / "*.json")))
    docs = read_results(paths)
    md, trains, pbs = render(docs) if docs else ("", [], [])
    envs = {}
    # one line per distinct setting (a 1-thread and a 2-thread run are two), none dropped
    def env_key(e):
        return e.get("device_name"), e.get("torch"), e.get("torch_threads")
    for name, d in trains:
        envs.setdefault(env_key(d["env"]), d["env"])
    for name, d in pbs:
        e = (d.get("machine_info") or {}).get("fastgru4rec_env")
        if e:
            envs.setdefault(env_key(e), e)
    lines = ["## Performance", "",
             "<!-- generated by `python benchmarks/report.py performance` from "
             "benchmarks/results/*.json; do not edit by hand -->", ""]
    if not paths:
        lines += ["No results committed yet.", ""]
    else:
        lines += ["Measured on:", ""]
        lines += [f"- {env_line(e)}" for e in envs.values()] + [""]
        drawn = [(n, d) for n, d in docs if kind_of(d) in ("train", "pytest-benchmark",
                                                           "ceilings")]
        if drawn:
            lines += ["Results files (commit measured, date; the command when recorded):", ""]
            lines += [f"- `{n}.json`: {provenance(d)}" for n, d in drawn] + [""]
        # a caveat per kind of device: GPU rows beside them do not make CPU numbers less noisy
        on_cpu = any(e.get("device") == "cpu" for e in envs.values())
        on_gpu = any(e.get("device") != "cpu" for e in envs.values())
        if on_cpu and not on_gpu:
            lines += [f"No GPU results yet: {CPU_NOTE} GPU results come from "
                      "`benchmarks/gpu_check.sh` on a lent GPU.", ""]
        elif on_cpu:
            lines += [f"CPU rows: {CPU_NOTE}", ""]
        if on_gpu:
            lines += [GPU_NOTE, ""]
        lines += [md]
        png = chart(trains, pbs, out.parent / "performance.png")
        if png:
            # the README (repository root) links into benchmarks/results/; another --out file
            # links the chart beside it
            link = f"benchmarks/results/{png.name}" if readme is not None else png.name
            lines += [f"![performance]({link})", ""]
        # the commands files record (fastgru4rec bench's "command") are listed above; the
        # generic ones stand for the files without one (pytest-benchmark records none)
        measured = trains + pbs
        recorded = [n for n, d in measured if d.get("command")]
        if not recorded:
            lines += [f"Reproduce: {REPRODUCE}, then `python benchmarks/report.py "
                      "performance`.", ""]
        else:
            others = "" if len(recorded) == len(measured) else f"; the others: {REPRODUCE}"
            lines += [f"Reproduce: the command beside each file above{others}, then "
                      "`python benchmarks/report.py performance`.", ""]
    text = "\n".join(lines)
    _write_text_atomic(out, text)
    if readme is not None:
        splice_readme(readme, text)
    return out


README_BEGIN = "<!-- PERFORMANCE:BEGIN -->"
README_END = "<!-- PERFORMANCE:END -->"


def splice_readme(readme: Path, text: str) -> bool:
    """Put the Performance section into the README between its two markers (the README is
    never edited by hand there). Returns False when the README has no markers."""
    body = readme.read_text()
    if README_BEGIN not in body or README_END not in body:
        return False
    head, rest = body.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    # the README's own heading levels: the section sits under "## Results"
    section = text.replace("## Performance", "### Performance", 1)
    _write_text_atomic(readme, f"{head}{README_BEGIN}\n{section}\n{README_END}{tail}")
    return True


def _write_text_atomic(path, text: str) -> None:
    # fastgru4rec imports from the source tree too (ROOT on sys.path above), installed or not
    with atomic_write(path, "w") as f:
        f.write(text)


# ------------------------------------------------------------------------ gpu_check summary
def _read_steps(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for line in lines[1:]:
        parts = line.split("\t")
        parts += [""] * (4 - len(parts))
        rows.append(dict(step=parts[0], status=parts[1], seconds=parts[2], detail=parts[3]))
    return rows


def _read_junit(path: Path) -> Optional[Dict[str, int]]:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in tot:
            tot[k] += int(s.get(k, 0))
    tot["passed"] = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    return tot


def _read_junits(paths: List[Path]) -> Optional[Dict[str, int]]:
    """The totals of several JUnit files (gpu_check runs one pytest process per test file)."""
    parts = [t for t in (_read_junit(p) for p in paths) if t is not None]
    if not parts:
        return None
    return {k: sum(t[k] for t in parts) for k in parts[0]}


def summary(raw: Path, out: Path) -> Dict[str, Any]:
    steps = _read_steps(raw / "steps.tsv")
    env = load(raw / "env.json") if (raw / "env.json").is_file() else {}
    ceilings = load(raw / "ceilings.json") if (raw / "ceilings.json").is_file() else None
    tests = _read_junits(sorted(raw.glob("tests*.xml")))
    json_paths = sorted(str(p) for p in raw.glob("*.json")
                        if p.name not in ("env.json", "ceilings.json"))
    docs = []
    for p in json_paths:
        try:
            docs.append((Path(p).stem, load(p)))
        except (OSError, json.JSONDecodeError):
            pass
    trains = [(n, d) for n, d in docs if kind_of(d) == "train"]
    pbs = [(n, d) for n, d in docs if kind_of(d) == "pytest-benchmark"]

    md = ["# GPU check", ""]
    if env:
        md += [f"Device: {env_line(env)}", ""]
    md += [md_table(["step", "status", "seconds", "detail"],
                    [[s["step"], s["status"], s["seconds"], s["detail"]] for s in steps], "llrl"),
           ""]
    if tests:
        md += [f"Tests on the GPU: {tests['passed']} passed, {tests['failures']} failed, "
               f"{tests['errors']} errors, {tests['skipped']} skipped.", ""]
    if ceilings:
        md += [ceilings_table(ceilings), ""]
    if trains:
        head, rows = train_rows(trains, [ceilings] if ceilings else [], any_device=True)
        md += ["## End-to-end training", "", md_table(head, rows, "lllll" + "r" * (len(head) - 5)),
               ""]
    for name, d in pbs:
        head, rows = bench_rows(d)
        md += [f"## {name}", "", md_table(head, rows, "llrrrl"), ""]
    for name, d in docs:
        if kind_of(d) == "profile":
            md += ["## Where a step's time goes (benchmarks/profile_step.py)", ""] + profile_md(d)
        if kind_of(d) == "tile-sweep":
            md += ["## Full-catalog cross-entropy tiles (benchmarks/sweep_tiles.py)", ""] \
                + tile_sweep_md(d)
    png = chart(trains, pbs, out / "summary.png")
    if png:
        md += ["![summary](summary.png)", ""]

    result = {
        "schema": "fastgru4rec-gpu-check/1",
        "env": env, "steps": steps, "tests": tests, "ceilings": ceilings,
        "train": {n: d for n, d in trains},
        "benchmarks": {n: {"benchmarks": [{k: b.get(k) for k in ("group", "name", "extra_info")}
                                          | {"median_s": (b.get("stats") or {}).get("median"),
                                             "iqr_s": (b.get("stats") or {}).get("iqr"),
                                             "rounds": (b.get("stats") or {}).get("rounds")}
                                          for b in d.get("benchmarks", [])],
                           "ratios": d.get("ratios") or benchmark_ratios(d.get("benchmarks", []))}
                       for n, d in pbs},
        "missing": [s["step"] for s in steps if s["status"] == "missing"],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", result)
    _write_text_atomic(out / "summary.md", "\n".join(md))

    # the short table printed last
    short = [f"GPU check on {env.get('device_name', '?')} (driver {env.get('driver', '?')}, "
             f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')})"]
    w = max([len(s["step"]) for s in steps] + [4])
    for s in steps:
        short.append(f"  {s['step']:<{w}}  {s['status']:<8} {s['seconds']:>4}s  {s['detail']}")
    if tests:
        short.append(f"  tests: {tests['passed']} passed, {tests['failures']} failed, "
                     f"{tests['errors']} errors, {tests['skipped']} skipped")
    if ceilings:
        short.append(f"  ceilings: copy {ceilings['copy_gb_s']:.0f} GB/s, fp32 "
                     f"{ceilings.get('matmul_fp32_tflop_s', 0):.1f}, tf32 "
                     f"{ceilings.get('matmul_tf32_tflop_s', 0):.1f}, bf16 "
                     f"{ceilings.get('matmul_bf16_tflop_s', 0):.1f} TFLOP/s")
    for name, d in trains:
        for r in d["runs"]:
            fl = step_floor(d["config"], ceilings) if ceilings else None
            short.append(f"  train {config_brief(d['config']):<30} {r['engine']:<9} "
                         f"{r['batches_per_s']:>8.1f} mb/s {r['events_per_s']:>10,.0f} ev/s "
                         f"{r['ms_per_step']:>7.3f} ms/step"
                         + (f" (floor {fl['floor_s'] * 1e6:.1f} µs)" if fl else "")
                         + (f" eval {r['eval']['seconds']:.2f} s" if r.get("eval") else ""))
        if d.get("speedup_vs_reference"):
            short.append(f"    speed-up vs reference: x{d['speedup_vs_reference']['train']:.2f}")
    for name, d in docs:
        if kind_of(d) == "tile-sweep":
            for r in tile_sweep_best(d):
                vs = f" (x{r['default_ms'] / r['ms']:.2f} the default)" if r["default_ms"] else ""
                short.append(f"  full-CE tiles {r['kernel']}: fastest {tiles_text(r['tiles'])} "
                             f"{r['ms']:.2f} ms{vs}")
    for name, d in pbs:
        for r in d.get("ratios") or benchmark_ratios(d.get("benchmarks", [])):
            short.append(f"  {r['group']}: {r['name']} x{r['speedup']:.2f} vs {r['baseline']}")
    _write_text_atomic(out / "summary.txt", "\n".join(short) + "\n")
    return result


# ------------------------------------------------------------------------ CLI
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="markdown tables (and a chart) from result JSON files")
    r.add_argument("files", nargs="+")
    r.add_argument("--md", help="also write the markdown here")
    r.add_argument("--png", help="draw a chart here (matplotlib)")
    f = sub.add_parser("performance", help="regenerate results/PERFORMANCE.md")
    f.add_argument("--results", default=str(RESULTS_DIR))
    f.add_argument("--out", default=None)
    s = sub.add_parser("summary", help="gpu_check.sh's summary")
    s.add_argument("--raw", required=True)
    s.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        return _run(args)
    except ReportError as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.cmd == "render":
        missing = [x for x in args.files if not Path(x).is_file()]
        if missing:
            print(f"report.py: no such file: {', '.join(missing)}", file=sys.stderr)
            return 2
        md, trains, pbs = render(read_results(args.files))
        print(md, end="")
        if args.md:
            _write_text_atomic(args.md, md)
        if args.png:
            chart(trains, pbs, args.png)
        return 0
    if args.cmd == "performance":
        results = Path(args.results)
        # the README shows the committed results: other results (or another --out) leave it
        committed = args.out is None and results.resolve() == RESULTS_DIR.resolve()
        readme = RESULTS_DIR.parents[1] / "README.md" if committed else None
        path = performance(results, Path(args.out) if args.out else None,
                           readme if readme is not None and readme.is_file() else None)
        print(f"wrote {path}")
        return 0
    summary(Path(args.raw), Path(args.out))
    print((Path(args.out) / "summary.txt").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
