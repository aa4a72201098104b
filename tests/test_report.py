"""benchmarks/report.py on hand-made result files: which floors a row gets, the caveats and
provenance of the Performance section, files it does not draw, its errors, its formatting.
(tests/test_bench.py runs it on a real `fastgru4rec bench` result.)"""
from __future__ import annotations

import json
import sys

import pytest

from fastgru4rec.cli import main as cli_main

from conftest import benchmarks_script

TINY = ["--synthetic", "n_sessions=150,n_items=40", "--max-steps", "6", "--warmup-steps", "2",
        "-ps", "n_sample=16,batch_size=8,layers=16,sample_store_size=4096", "-q"]

CPU_ENV = {"device": "cpu", "device_name": "AMD EPYC", "cpu": "AMD EPYC", "cpu_count": 2,
           "torch_threads": 1, "torch": "2.13.0+cpu", "triton": "3.9.0", "numpy": "2.4.6",
           "python": "3.11.7", "native_extension": True,
           "git": {"commit": "96e2a0d41296", "dirty": False}}
GPU_ENV = dict(CPU_ENV, device="cuda", device_name="NVIDIA H200", driver="570.1",
               cuda_runtime="12.8", git={"commit": "abcdef012345", "dirty": True})
CEILINGS = {"device": "NVIDIA H200", "matmul_n": 8192, "copy_bytes": 1, "copy_gb_s": 3000.0,
            "matmul_fp32_tflop_s": 50.0}


def train_doc(label, env, **extra):
    """A `fastgru4rec bench train` result with the fields the report reads."""
    run = {"engine": "fast", "batches_per_s": 500.0, "events_per_s": 15000.0,
           "ms_per_step": 2.0, "epoch_seconds": 5.0, "eval": None, "n_steps": 100}
    return {"schema": "fastgru4rec-bench/1", "kind": "train", "label": label,
            "created": "2026-11-29T10:50:26+00:00", "max_steps": None,
            "config": {"batch_size": 32, "layers": [100], "n_sample": 2048,
                       "loss": "cross-entropy"},
            "data": {"train": {"source": "train_full.tsv", "n_events": 1000}},
            "env": env, "runs": [run], "engine": "fast", "speedup_vs_reference": None,
            **extra}


def pytest_benchmark_doc(rounds=1, iqr=0.0):
    return {"machine_info": {"fastgru4rec_env": dict(CPU_ENV, git={"commit": "1f5a7b40a017",
                                                                    "dirty": True})},
            "commit_info": {"id": "1f5a7b40a017928b", "dirty": True},
            "datetime": "2026-11-29T12:21:55.787457+00:00",
            "benchmarks": [{"name": "test_once", "group": "g", "extra_info": {},
                            "stats": {"median": 0.5, "iqr": iqr, "rounds": rounds}}]}


def write(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (folder / name).write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return folder


def table_row(md, label):
    line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.fixture
def report():
    return benchmarks_script("report")


# ------------------------------------------------------------------------ 1. floors per device
def test_ceilings_give_floors_only_to_rows_of_their_device(report, tmp_path, capsys):
    files = write(tmp_path, {"cpu.json": train_doc("cpu-run", CPU_ENV),
                             "gpu.json": train_doc("gpu-run", GPU_ENV),
                             "h200-ceilings.json": CEILINGS})
    assert report.main(["render", *(str(files / n) for n in
                                    ("cpu.json", "gpu.json", "h200-ceilings.json"))]) == 0
    md = capsys.readouterr().out
    gpu, cpu = table_row(md, "gpu-run"), table_row(md, "cpu-run")
    assert gpu[-2].endswith("(memory)") or gpu[-2].endswith("(arithmetic)")
    assert gpu[-1].startswith("x")
    assert cpu[-2:] == ["-", "-"]          # an H200's rates give no floor for a CPU run
    assert "ceiling (measured on NVIDIA H200)" in md


def test_ceilings_of_another_device_add_no_floor_column(report, tmp_path, capsys):
    files = write(tmp_path, {"cpu.json": train_doc("cpu-run", CPU_ENV),
                             "h200-ceilings.json": CEILINGS})
    assert report.main(["render", str(files / "cpu.json"),
                        str(files / "h200-ceilings.json")]) == 0
    md = capsys.readouterr().out
    assert "floor µs/step" not in md and table_row(md, "cpu-run")[-1] == "-"


# ------------------------------------------------------------------------ 2. caveats, commands
def test_cpu_rows_keep_their_caveat_beside_gpu_rows(report, tmp_path):
    results = write(tmp_path / "results", {"cpu.json": train_doc("cpu-run", CPU_ENV),
                                           "gpu.json": train_doc("gpu-run", GPU_ENV)})
    text = report.performance(results).read_text()
    assert "CPU rows: these are CPU numbers" in text and "shared 2-core machine" in text
    assert "GPU rows: from `benchmarks/gpu_check.sh`" in text
    assert "No GPU results yet" not in text
    # GPU rows alone: no CPU caveat
    (results / "cpu.json").unlink()
    text = report.performance(results).read_text()
    assert "shared 2-core machine" not in text and "GPU rows:" in text


def test_performance_prints_each_files_recorded_command(report, tmp_path):
    cmd = ["fastgru4rec", "bench", "train", "--device", "cuda", "--label", "gpu run",
           "--json", "raw/train.json"]
    results = write(tmp_path / "results", {"gpu.json": train_doc("gpu-run", GPU_ENV,
                                                                 command=cmd)})
    text = report.performance(results).read_text()
    assert ("- `gpu.json`: commit abcdef0 (dirty tree), 2026-11-29 10:50 UTC; "
            "`fastgru4rec bench train --device cuda --label 'gpu run' --json raw/train.json`"
            in text)
    assert "Reproduce: the command beside each file above, then" in text
    # an old file without a command: the generic commands stand for it
    write(results, {"cpu.json": train_doc("cpu-run", CPU_ENV)})
    text = report.performance(results).read_text()
    assert "Reproduce: the command beside each file above; the others: `fastgru4rec bench " \
           "train --preset rsc15 TRAIN" in text


def test_bench_json_records_its_command_line(tmp_path, monkeypatch):
    from fastgru4rec import bench

    out = tmp_path / "out.json"
    argv = ["bench", "train", *TINY, "--json", str(out), "--label", "tiny"]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fastgru4rec", *argv])
    assert cli_main(argv) == 0
    assert json.loads(out.read_text())["command"] == ["fastgru4rec", *argv]
    # inside another program (here pytest) sys.argv is not the bench command's: none recorded
    monkeypatch.setattr(sys, "argv", ["pytest", "tests"])
    assert bench._command_line() is None


# ------------------------------------------------------------------------ 3. provenance
def test_performance_says_when_and_at_which_commit_each_file_was_measured(report, tmp_path):
    old = train_doc("cpu-run", CPU_ENV)
    results = write(tmp_path / "results", {"cpu-a.json": old,
                                           "cpu-benchmarks.json": pytest_benchmark_doc(3, 1e-3)})
    text = report.performance(results).read_text()
    assert "- `cpu-a.json`: commit 96e2a0d, 2026-11-29 10:50 UTC\n" in text
    assert "- `cpu-benchmarks.json`: commit 1f5a7b4 (dirty tree), 2026-11-29 12:21 UTC\n" in text
    # nothing recorded: said so
    bare = dict(old, env={k: v for k, v in CPU_ENV.items() if k != "git"})
    del bare["created"]
    write(results, {"cpu-a.json": bare})
    assert "- `cpu-a.json`: no commit or date recorded\n" in report.performance(results).read_text()


# ------------------------------------------------------------------------ 4. kinds not drawn
def test_files_of_kinds_not_drawn_are_listed(report, tmp_path):
    results = write(tmp_path / "results", {
        "cpu.json": train_doc("cpu-run", CPU_ENV),
        "summary.json": {"schema": "fastgru4rec-gpu-check/1", "env": GPU_ENV},
        "profile_step.json": {"engines": [{"engine": "fast", "top_ops": []}]},
        "env.json": GPU_ENV})
    text = report.performance(results).read_text()
    line = next(x for x in text.splitlines() if x.startswith("(not drawn here:"))
    assert "summary (gpu_check's summary.json" in line and "profile_step (" in line
    assert "(not a known result format: env)" in text


def test_benchmarks_readme_says_which_gpu_check_files_to_copy():
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    readme, script = (bench / "README.md").read_text(), (bench / "gpu_check.sh").read_text()
    # the raw files gpu_check.sh writes that the report draws...
    assert '"$RAW/ceilings.json"' in script and '--json "$RAW/train_' in script
    assert '--benchmark-json="$RAW/$name.json"' in script
    # ...are the ones the README says to copy, and the ones it must not are named
    for name in ("raw/ceilings.json", "raw/train_*.json", "raw/bench_*.json"):
        assert name in readme, name
    not_these = next(p for p in readme.split("\n\n") if p.startswith("Not `summary.json`"))
    assert "`profile_step.json`" in not_these and "`env.json`" in not_these


# ------------------------------------------------------------------------ 5. errors
@pytest.mark.parametrize("content, says", [("not json {", "not JSON"),
                                           ("[1, 2]", "an array in JSON, not a results file"),
                                           ('"text"', "a str in JSON, not a results file")])
def test_render_of_a_bad_file_is_one_line_exit_2(report, tmp_path, capsys, content, says):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert report.main(["render", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and says in err


def test_performance_of_a_bad_file_is_one_line_exit_2(report, tmp_path, capsys):
    results = write(tmp_path / "results", {"cpu.json": train_doc("cpu-run", CPU_ENV),
                                           "broken.json": "{"})
    assert report.main(["performance", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.json: not JSON" in err
    assert not (results / "PERFORMANCE.md").exists()


def test_performance_requires_the_results_folder(report, tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert report.main(["performance", "--results", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{missing}: no such folder" in err
    assert not missing.exists()


# ------------------------------------------------------------------------ 6. presentation
def test_one_round_has_no_iqr(report, tmp_path, capsys):
    files = write(tmp_path, {"once.json": pytest_benchmark_doc(rounds=1, iqr=0.0),
                             "three.json": pytest_benchmark_doc(rounds=3, iqr=2e-6)})
    assert report.main(["render", str(files / "once.json"), str(files / "three.json")]) == 0
    md = capsys.readouterr().out
    rows = [x for x in md.splitlines() if x.startswith("| g | test_once |")]
    assert rows == ["| g | test_once | 500.00 ms | - | 1 | - |",
                    "| g | test_once | 500.00 ms | 2.0 µs | 3 | - |"]


def test_ratio_chart_has_a_log_axis(report, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(self, *args, **kw):
        figures.append(self)
        return save(self, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", keep)
    doc = {"machine_info": {}, "benchmarks": [
        {"name": f"test_{n}", "group": g, "extra_info": {"baseline": "torch"} if base else {},
         "stats": {"median": m, "iqr": 0.0, "rounds": 5}}
        for n, g, m, base in (("a_torch", "a", 1.3, True), ("a_fast", "a", 1.0, False),
                              ("b_torch", "b", 160.0, True), ("b_fast", "b", 1.0, False))]}
    files = write(tmp_path, {"micro.json": doc, "cpu.json": train_doc("cpu-run", CPU_ENV)})
    assert report.main(["render", str(files / "cpu.json"), str(files / "micro.json"),
                        "--png", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()
    throughput, ratios = figures[-1].axes
    assert throughput.get_xscale() == "linear" and ratios.get_xscale() == "log"


# ------------------------------------------------------------------------ 7. speed-up columns
def test_train_rows_show_the_speedup_on_the_fast_row_only(report):
    """A --compare-reference result: fast at 500 mb/s, reference at 200 -> x2.50 beside the
    fast run, "-" beside the reference run (its ratio to itself is not shown)."""
    doc = train_doc("cmp", CPU_ENV, speedup_vs_reference={"train": 2.5})
    ref = dict(doc["runs"][0], engine="reference", batches_per_s=200.0, events_per_s=6000.0,
               ms_per_step=5.0, epoch_seconds=12.5)
    doc["runs"].append(ref)
    head, rows = report.train_rows([("cmp.json", doc)])
    col = head.index("speed-up vs ref.")
    by_engine = {row[head.index("engine")]: row for row in rows}
    assert set(by_engine) == {"fast", "reference"} and len(rows) == 2
    assert by_engine["fast"][col] == "x2.50"
    assert by_engine["reference"][col] == "-"
    # the same in the rendered table
    md = report.render([("cmp.json", doc)])[0]
    lines = [ln for ln in md.splitlines() if ln.startswith("| cmp |")]
    assert len(lines) == 2
    assert lines[0].rstrip().endswith("| x2.50 |") and "| fast |" in lines[0]
    assert lines[1].rstrip().endswith("| - |") and "| reference |" in lines[1]


def test_bench_rows_put_the_ratio_on_the_compared_row_and_mark_baselines(report):
    """pytest-benchmark rows: torch (marked baseline) 4 ms, triton 1 ms -> the triton row reads
    "x4.00 vs torch", the torch row "baseline"; a group whose only member is a marked baseline
    has nothing compared with it: "-"; an unmarked lone benchmark: "-"."""
    def b(name, group, median, baseline=None):
        return {"name": name, "group": group,
                "extra_info": {"baseline": baseline} if baseline else {},
                "stats": {"median": median, "iqr": median / 10, "rounds": 5}}
    doc = {"machine_info": {}, "benchmarks": [
        b("test_x[torch]", "g1", 0.004, baseline="torch"), b("test_x[triton]", "g1", 0.001),
        b("test_alone[torch]", "g2", 0.002, baseline="torch"), b("test_single", "g3", 2e-6)]}
    head, rows = report.bench_rows(doc)
    col = head.index("speed-up (same run)")
    got = {row[1]: row[col] for row in rows}
    assert got == {"test_x[torch]": "baseline", "test_x[triton]": "x4.00 vs torch",
                   "test_alone[torch]": "-", "test_single": "-"}


def test_gpu_check_summary_names_the_fastest_tile_that_agrees(report, tmp_path):
    # benchmarks/sweep_tiles.py rows: the fastest candidate that ran and agreed with the
    # default is named with its ratio; a faster one that disagreed or failed is not
    row = lambda kernel, tiles, ms, diff, default=False, error=None: dict(   # noqa: E731
        kernel=kernel, tiles=tiles, ms=ms, rel_diff=diff, default=default, error=error)
    sweep = {"kind": "tile-sweep", "b": 512, "H": 256, "N": 1000000, "precision": "tf32",
             "rows": [row("fwd", [64, 128, 32, 4], 4.0, 0.0, default=True),
                      row("fwd", [128, 128, 32, 8], 2.0, 3e-7),
                      row("fwd", [64, 256, 32, 8], 1.0, 2e-2),            # wrong: not chosen
                      row("fwd", [128, 64, 32, 4], None, None, error="OutOfResources: x"),
                      row("dw", [32, 32, 32, 8], 9.0, 0.0, default=True),
                      row("dw", [32, 64, 32, 8], 12.0, 0.0)]}
    raw = write(tmp_path / "raw", {"sweep_tiles.json": sweep, "steps.tsv":
                                   "step\tstatus\tseconds\tdetail\nsweep_tiles\tok\t30\trc=0\n"})
    report.summary(raw, tmp_path / "out")
    short = (tmp_path / "out" / "summary.txt").read_text()
    assert "full-CE tiles fwd: fastest BM=128 BN=128 BK=32 warps=8 2.00 ms (x2.00 the default)" \
        in short
    assert "full-CE tiles dw: fastest BM=32 BN=32 BK=32 warps=8 9.00 ms (x1.00 the default)" \
        in short
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| fwd | BM=128 BN=64 BK=32 warps=4 | - | - | OutOfResources: x |" in md
    assert "| fwd | BM=64 BN=128 BK=32 warps=4 (default) | 4.00 | 0.0e+00 |  |" in md
