"""The benchmark tooling: `fastgru4rec bench`, benchmarks/gpu_check.sh, benchmarks/report.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgru4rec.bench import benchmark_ratios
from fastgru4rec.cli import main

from conftest import benchmarks_script, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic", "n_sessions=150,n_items=40", "--max-steps", "6", "--warmup-steps", "2",
        "-ps", "n_sample=16,batch_size=8,layers=16,sample_store_size=4096", "-q"]


def _env():
    return subprocess_env()


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out.json"
    assert main(["bench", "train", *TINY, "--json", str(out), "--label", "tiny"]) == 0
    return out


def test_bench_train_writes_json_with_the_fields(bench_json, capsys):
    d = json.loads(bench_json.read_text())
    assert d["schema"].startswith("fastgru4rec-bench/") and d["kind"] == "train"
    for key in ("batches_per_s", "events_per_s", "epoch_seconds", "eval_seconds"):
        assert isinstance(d[key], float) and d[key] > 0, key
    run = d["runs"][0]
    assert run["engine"] == "fast" and run["n_steps"] == 6      # auto prefers the fast engine
    assert run["graph"] == "eager"                              # no CUDA graph on the CPU
    assert run["n_events"] == sum(e["n_events"] for e in run["epochs"]) > 0
    assert run["eval"]["n_points"] > 0 and set(run["eval"]["recall"]) == {"1", "5", "10", "20"}
    assert d["config"]["batch_size"] == 8 and d["config"]["layers"] == [16]
    assert d["data"]["train"]["source"] == "synthetic" and d["data"]["test"]["n_events"] > 0
    env = d["env"]
    for key in ("device", "device_name", "torch", "numpy", "triton", "cpu_count", "driver"):
        assert key in env
    assert env["device"] == "cpu" and env["cpu_count"] >= 1
    assert d["label"] == "tiny"
    assert not list(bench_json.parent.glob(".*.tmp")), "temporary file left behind"


def test_tail_warmup_only_for_runs_that_reach_narrow_steps():
    # the CUDA warm-up's tail epoch compiles the narrow steps' kernels: a trial run cut before
    # the first narrow (or compacted) step skips it. The first such step found by hand here.
    from fastgru4rec import bench
    from fastgru4rec.config import GRU4RecConfig
    from fastgru4rec.engine import FastTrainer
    from fastgru4rec.synthetic import synthetic_split
    train, _ = synthetic_split(n_sessions=300, n_items=40, seed=3)
    cfg = GRU4RecConfig(layers=[8], batch_size=8, n_sample=4, sample_store_size=400)
    tr = bench._make_trainer(FastTrainer, bench._build_model(cfg, train.n_items, "cpu"), cfg,
                             train.supports, torch.device("cpu"))
    sched = tr.schedule(train)
    first = next(t for t in range(sched.n_steps)
                 if sched.step_offsets[t + 1] - sched.step_offsets[t] != 8
                 or sched.keep_offsets[t + 1] > sched.keep_offsets[t])
    assert 0 < first < sched.n_steps
    assert not bench.reaches_narrow_steps(tr, train, first)        # steps 0 .. first - 1
    assert bench.reaches_narrow_steps(tr, train, first + 1)
    assert bench.reaches_narrow_steps(tr, train, None)
    assert bench.reaches_narrow_steps(tr, train, 10 * sched.n_steps)   # later epochs too


@pytest.mark.parametrize("warmup_steps", [0, 3])
def test_bench_warmup_seconds_is_the_warmup_alone(monkeypatch, warmup_steps):
    # the first model built is the warm-up's throw-away one (when there is a warm-up): a
    # planted 0.3 s in building it lands in warmup_seconds, not in setup_seconds
    import time

    from fastgru4rec import bench
    from fastgru4rec.config import GRU4RecConfig
    from fastgru4rec.synthetic import synthetic_split
    train, _ = synthetic_split(n_sessions=200, n_items=30, seed=4)
    built = []
    real = bench._build_model

    def slow_first(*a, **kw):
        if not built:
            time.sleep(0.3)
        built.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(bench, "_build_model", slow_first)
    cfg = GRU4RecConfig(layers=[8], batch_size=8, n_sample=4, sample_store_size=400)
    out = bench.measure_training(train, None, cfg, torch.device("cpu"), "reference", max_steps=3,
                                 warmup_steps=warmup_steps)
    assert out["warmup_steps"] == warmup_steps
    if warmup_steps:
        assert out["warmup_seconds"] >= 0.3 and out["setup_seconds"] < 0.3
    else:
        assert out["warmup_seconds"] < 0.3 <= out["setup_seconds"]


@pytest.mark.parametrize("warmup_steps", [0, 3])
def test_bench_evaluation_is_warmed_up_on_the_first_sessions(monkeypatch, warmup_steps):
    # the timed evaluation covers the whole test set; with warm-up steps on, an untimed one on
    # the first eval-batch-size sessions runs before it (first-use costs out of the clock)
    import fastgru4rec.evaluate as ev
    from fastgru4rec import bench
    from fastgru4rec.config import GRU4RecConfig
    from fastgru4rec.synthetic import synthetic_split
    train, test = synthetic_split(n_sessions=300, n_items=40, seed=3)
    seen = []
    real = ev.evaluate_model
    monkeypatch.setattr(ev, "evaluate_model",
                        lambda model, data, *a, **kw: seen.append(data) or real(model, data, *a, **kw))
    cfg = GRU4RecConfig(layers=[8], batch_size=8, n_sample=4, sample_store_size=400)
    out = bench.measure_training(train, test, cfg, torch.device("cpu"), "reference", max_steps=4,
                                 warmup_steps=warmup_steps, eval_batch_size=7)
    assert seen[-1] is test and out["eval"]["n_points"] == test.n_events - test.n_sessions
    if warmup_steps:
        head = seen[0]
        assert len(seen) == 2 and head.n_sessions == 7
        assert head.items.tolist() == test.items[:test.offsets[7]].tolist()
    else:
        assert len(seen) == 1
    with pytest.raises(ValueError, match="eval_batch_size must be an integer in"):
        bench.measure_training(train, test, cfg, torch.device("cpu"), "reference", max_steps=4,
                               warmup_steps=warmup_steps, eval_batch_size=-3)


def test_bench_without_target_is_train_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", *TINY, "--json", str(out), "--compare-reference"]) == 0
    text = capsys.readouterr().out
    assert "mb/s" in text and "events/s" in text and "reference" in text
    d = json.loads(out.read_text())
    assert d["kind"] == "train" and d["epochs"] == 1
    assert [r["engine"] for r in d["runs"]] == ["fast", "reference"]
    # training only: both engines evaluate with the same code, a ratio of theirs is noise
    assert set(d["speedup_vs_reference"]) == {"train"} and d["speedup_vs_reference"]["train"] > 0
    # same seed, same data: the CPU fast engine runs the reference step, so the same losses
    assert d["runs"][0]["final_loss"] == pytest.approx(d["runs"][1]["final_loss"], rel=1e-6)
    # --engine reference with --compare-reference: one run, and the note says why
    assert main(["bench", *TINY, "--json", str(out), "--compare-reference", "--engine",
                 "reference", "-q"]) == 0
    d = json.loads(out.read_text())
    assert [r["engine"] for r in d["runs"]] == ["reference"]
    assert any("the reference engine is the one timed" in n for n in d["notes"])


def test_bench_preset_and_real_file(tmp_path, synthetic_tsv):
    train, test = synthetic_tsv(n_items=30, n_sessions=80)
    out = tmp_path / "r.json"
    # options before the data path too (argparse alone would reject the late positional)
    assert main(["bench", "train", "--preset", "rsc15", "--test", str(test), str(train),
                 "-ps", "n_sample=16,layers=8,sample_store_size=2048", "--max-steps", "3",
                 "--warmup-steps", "0", "-q", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["preset"] == "rsc15"
    cfg = d["config"]
    assert (cfg["batch_size"], cfg["learning_rate"], cfg["momentum"], cfg["logq"]) == \
        (32, 0.2, 0.2, 1.0)
    assert cfg["dropout_p_hidden"] == 0.4 and cfg["layers"] == [8]     # -ps overrides the preset
    assert d["data"]["train"]["source"].endswith("train.tsv")


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "b.png"
    assert main(["bench", *TINY, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_without_matplotlib_fails_before_the_work(monkeypatch, capsys, tmp_path):
    # matplotlib is an optional extra: absent, --plot is refused up front in one line (None in
    # sys.modules makes its import raise ImportError), and nothing is benchmarked or written
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    png = tmp_path / "b.png"
    assert main(["bench", *TINY, "--plot", str(png), "--json", str(tmp_path / "b.json")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("fastgru4rec bench: error:") and "\n" not in err
    assert "--plot needs matplotlib" in err and "fastgru4rec[plot]" in err
    assert "events/s" not in captured.out and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["--max-steps", "0"], ["--epochs", "0"],
                                  ["--synthetic", "bogus=1"], ["-ps", "loss=nope"],
                                  ["--test", "x.tsv"], ["/no/such/file.tsv"]])
def test_bench_bad_input_is_one_line_exit_2(argv, capsys):
    assert main(["bench", *argv, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastgru4rec bench: error:") and "\n" not in err


def test_gpu_check_dry_run_says_no_gpu():
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                       capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("no GPU detected:")
    assert "bench_train.py: present" in r.stdout


def test_gpu_check_without_gpu_exits_0():
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the real check would run")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True,
                       text=True, timeout=120, env=_env())
    assert r.returncode == 0 and "no GPU detected: nvidia-smi not found" in r.stdout


def _pytest_benchmark_doc():
    def b(name, group, median, baseline=None):
        return {"name": name, "group": group,
                "extra_info": {"baseline": baseline} if baseline else {},
                "stats": {"median": median, "iqr": median / 10, "rounds": 5}}
    return {"machine_info": {"node": "x"}, "commit_info": {},
            "benchmarks": [b("test_x[torch]", "g1", 0.004, baseline="torch"),
                           b("test_x[triton]", "g1", 0.001), b("test_lonely", "g2", 2e-6)]}


def test_benchmark_ratios():
    rows = benchmark_ratios(_pytest_benchmark_doc()["benchmarks"])
    assert len(rows) == 1
    assert rows[0]["name"] == "test_x[triton]" and rows[0]["baseline"] == "test_x[torch]"
    assert rows[0]["speedup"] == pytest.approx(4.0)
    # without a mark, a benchmark named "reference" is the baseline
    rows = benchmark_ratios([{"name": "step_reference", "group": "g", "stats": {"median": 3.0}},
                             {"name": "step_fast", "group": "g", "stats": {"median": 1.0}}])
    assert [r["speedup"] for r in rows] == [3.0]


def test_report_renders_tables(bench_json, tmp_path):
    pb = tmp_path / "micro.json"
    pb.write_text(json.dumps(_pytest_benchmark_doc()))
    md = tmp_path / "t.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "render",
                        str(bench_json), str(pb), "--md", str(md)],
                       capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "| run | device | config |" in out and "| tiny |" in out and "B8 H16 S16" in out
    assert "| g1 | test_x[triton] | 1.00 ms |" in out and "x4.00 vs torch" in out
    assert "2.0 µs" in out
    assert md.read_text() == out


def test_report_performance_and_summary(bench_json, tmp_path):
    report = benchmarks_script("report")
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(bench_json, results / "cpu-tiny.json")
    path = report.performance(results)
    text = path.read_text()
    assert text.startswith("## Performance") and "torch " in text and "| tiny |" in text
    assert "No GPU results yet" in text

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    shutil.copy(bench_json, raw / "train_tiny.json")
    (raw / "steps.tsv").write_text("step\tstatus\tseconds\tdetail\nenv\tok\t1\trc=0\n"
                                   "bench_gru\tmissing\t0\tbenchmarks/bench_gru.py not present\n")
    (raw / "ceilings.json").write_text(json.dumps(
        {"device": "x", "copy_bytes": 1, "copy_gb_s": 3000.0, "matmul_fp32_tflop_s": 50.0}))
    res = report.summary(raw, out)
    assert res["missing"] == ["bench_gru"]
    assert (out / "summary.md").is_file() and json.loads((out / "summary.json").read_text())
    short = (out / "summary.txt").read_text()
    assert "bench_gru" in short and "missing" in short and "mb/s" in short and "floor" in short


def test_report_performance_splices_the_readme_between_markers(bench_json, tmp_path):
    report = benchmarks_script("report")
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    shutil.copy(bench_json, results / "cpu-tiny.json")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_BEGIN}\nstale\n{report.README_END}\nafter\n")
    report.performance(results)                      # no readme given: left alone
    assert "stale" in readme.read_text()
    report.performance(results, readme=readme)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{report.README_END}\nafter\n")
    inside = text.split(report.README_BEGIN, 1)[1].split(report.README_END, 1)[0]
    assert "stale" not in inside and "### Performance" in inside and "| tiny |" in inside
    # a README without the markers is left alone
    readme.write_text("# no markers\n")
    report.performance(results, readme=readme)
    assert readme.read_text() == "# no markers\n"
    # the command splices the repository's README only for the committed results: other
    # results, or another --out, write that file and its chart alone
    real_readme = ROOT / "README.md"
    before = real_readme.read_bytes()
    assert report.main(["performance", "--results", str(results),
                        "--out", str(tmp_path / "p.md")]) == 0
    assert report.main(["performance", "--results", str(results)]) == 0
    assert real_readme.read_bytes() == before
    assert (tmp_path / "p.md").is_file() and (results / "PERFORMANCE.md").is_file()
    if (tmp_path / "performance.png").is_file():      # matplotlib present: linked beside it
        assert "](performance.png)" in (tmp_path / "p.md").read_text()


def test_parallel_pytest_runs_files_apart_and_the_report_sums_them(tmp_path):
    """benchmarks/parallel_pytest.py (gpu_check's device tests): one pytest process per file,
    a failing file fails the run, 'nothing collected' does not; report.summary adds up the
    per-file JUnit files."""
    tdir, raw = tmp_path / "t", tmp_path / "raw"
    tdir.mkdir()
    (tdir / "test_a.py").write_text("def test_1():\n    assert 1\n\ndef test_2():\n    assert 2\n")
    (tdir / "test_b.py").write_text("def test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2\n")
    (tdir / "test_c.py").write_text("X = 1\n")
    script = str(ROOT / "benchmarks" / "parallel_pytest.py")
    proc = subprocess.run([sys.executable, script, "--junit-dir", str(raw), "--jobs", "2",
                           str(tdir), "--", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("FAILED") and "test_b.py" in ln and "1 failed, 1 passed" in ln
               for ln in lines), lines
    assert any(ln.startswith("ok") and "test_a.py" in ln for ln in lines)
    assert any(ln.startswith("ok") and "test_c.py" in ln and "rc 5" in ln for ln in lines)
    assert "2 of 3 processes passed; failed: " in lines[-1]
    report = benchmarks_script("report")
    totals = report._read_junits(sorted(raw.glob("tests*.xml")))
    assert totals == {"tests": 4, "failures": 1, "errors": 0, "skipped": 0, "passed": 3}

    # --shards 2: test_b's two tests go to two processes, one fails
    sharded = subprocess.run([sys.executable, script, "--junit-dir", str(tmp_path / "raw2"),
                              "--shards", "2", str(tdir / "test_b.py"), "--", "-q"],
                             capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 1, sharded.stdout + sharded.stderr
    assert "1 of 2 processes passed" in sharded.stdout.splitlines()[-1]
    assert report._read_junits(sorted((tmp_path / "raw2").glob("tests*.xml")))["tests"] == 2
    ok = subprocess.run([sys.executable, script, "--junit-dir", str(raw), str(tdir / "test_a.py"),
                         str(tdir / "test_c.py")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, script, "--junit-dir", str(raw), str(tdir / "nope.py")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such test file" in bad.stderr and "Traceback" not in bad.stderr


def test_accuracy_seeds_script_runs_each_seed_as_the_estimator_does(tmp_path, capsys):
    """benchmarks/accuracy_seeds.py: one training per seed, the summary over the runs; each
    run's metrics equal GRU4Rec(seed=s).fit(...).evaluate(...) made directly."""
    import json

    from fastgru4rec import GRU4Rec
    from conftest import write_tsv

    rows = [(f"s{s}", f"i{(s * 7 + j) % 13}", 100 * s + j) for s in range(60) for j in range(4)]
    train = write_tsv(tmp_path / "train.tsv", rows)
    test = write_tsv(tmp_path / "test.tsv", rows[:80])
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"layers": [8], "n_epochs": 1, "n_sample": 4, "batch_size": 8,
                                  "seed": 999}))
    out = tmp_path / "seeds.json"
    script = benchmarks_script("accuracy_seeds")
    assert script.main([str(train), str(test), "-pf", str(params), "-ps", "learning_rate=0.1",
                        "--seeds", "5", "6", "--threads", "0", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [r["seed"] for r in got["runs"]] == [5, 6] and "seed" not in got["params"]
    for run in got["runs"]:
        want = GRU4Rec(layers=[8], n_epochs=1, n_sample=4, batch_size=8, learning_rate=0.1,
                       seed=run["seed"]).fit(train, progress=False).evaluate(test, [1, 20])
        assert run["recall"]["20"] == want["recall"][20] and run["mrr"]["1"] == want["mrr"][1]
    r20 = [r["recall"]["20"] for r in got["runs"]]
    assert got["summary"]["recall@20"]["mean"] == pytest.approx(sum(r20) / 2)
    assert got["summary"]["recall@20"]["max"] == max(r20)
    assert "mean" in capsys.readouterr().out
    prov = got["provenance"]          # what the README's citations of these files rely on
    assert prov["command"][:2] == ["python", "benchmarks/accuracy_seeds.py"]
    assert prov["command"][-2:] == ["--json", str(out)] and prov["created"][:2] == "20"


def test_session_slice_keeps_sessions_and_the_item_map():
    """bench's warm-up slices (the first sessions for evaluation, the last 3B sessions whose
    epoch compiles the shrinking tail's kernel specializations on CUDA)."""
    import numpy as np

    from fastgru4rec.bench import _session_slice
    from fastgru4rec.synthetic import synthetic_split
    train, _ = synthetic_split(n_items=100, n_sessions=300, seed=1)
    n = train.n_sessions
    part = _session_slice(train, n - 20, n + 5)            # past the end: up to the end
    assert part.n_sessions == 20 and part.offsets[0] == 0
    np.testing.assert_array_equal(np.diff(part.offsets), np.diff(train.offsets)[n - 20:])
    np.testing.assert_array_equal(part.items, train.items[train.offsets[n - 20]:])
    np.testing.assert_array_equal(part.session_ids, train.session_ids[n - 20:])
    assert part.n_items == train.n_items and part.supports is train.supports


def _record_evaluations(monkeypatch):
    import fastgru4rec.evaluate as ev
    seen = []
    real = ev.evaluate_model

    def record(model, data, *a, **kw):
        seen.append((data, kw.get("progress", False)))
        return real(model, data, *a, **kw)

    monkeypatch.setattr(ev, "evaluate_model", record)
    return seen


@pytest.mark.parametrize("extra_lanes", [0, 5])
def test_bench_small_test_set_is_not_evaluated_twice(monkeypatch, extra_lanes):
    """A test set of at most eval_batch_size sessions: the warm-up is one full-width step (its
    sessions cut to two events each), not a second evaluation of the whole set (which doubled
    the evaluation time on a 2M-item catalog)."""
    import numpy as np

    from fastgru4rec import bench
    from fastgru4rec.config import GRU4RecConfig
    from fastgru4rec.synthetic import synthetic_split
    train, test = synthetic_split(n_sessions=300, n_items=40, seed=3)
    assert np.diff(test.offsets).max() > 2
    seen = _record_evaluations(monkeypatch)
    cfg = GRU4RecConfig(layers=[8], batch_size=8, n_sample=4, sample_store_size=400)
    out = bench.measure_training(train, test, cfg, torch.device("cpu"), "reference", max_steps=2,
                                 warmup_steps=2, eval_batch_size=test.n_sessions + extra_lanes)
    assert len(seen) == 2 and seen[-1][0] is test
    assert out["eval"]["n_points"] == test.n_events - test.n_sessions
    head = seen[0][0]
    lengths = np.diff(test.offsets)
    assert head.n_sessions == test.n_sessions
    np.testing.assert_array_equal(np.diff(head.offsets), np.minimum(lengths, 2))
    first_two = np.concatenate([test.items[o:o + min(n, 2)]
                                for o, n in zip(test.offsets[:-1], lengths)])
    np.testing.assert_array_equal(head.items, first_two)
    assert head.item_ids is test.item_ids and head.n_items == test.n_items


@pytest.mark.parametrize("progress", [False, True])
def test_bench_timed_evaluation_shows_progress_unless_quiet(monkeypatch, capsys, progress):
    from fastgru4rec import bench
    from fastgru4rec.config import GRU4RecConfig
    from fastgru4rec.synthetic import synthetic_split
    train, test = synthetic_split(n_sessions=300, n_items=40, seed=3)
    seen = _record_evaluations(monkeypatch)
    cfg = GRU4RecConfig(layers=[8], batch_size=8, n_sample=4, sample_store_size=400)
    bench.measure_training(train, test, cfg, torch.device("cpu"), "reference", max_steps=2,
                           warmup_steps=2, eval_batch_size=7, progress=progress)
    assert [p for _, p in seen] == [False, progress]      # the untimed warm-up: no bar
    assert ("evaluate" in capsys.readouterr().err) == progress


@pytest.fixture(scope="module")
def bench_two_epochs_json(tmp_path_factory):
    """A tiny `bench --compare-reference --epochs 2`: two engines, two epochs each."""
    out = tmp_path_factory.mktemp("bench2") / "out.json"
    assert main(["bench", "train", *TINY, "--epochs", "2", "--compare-reference",
                 "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_bench_derived_fields_agree_with_the_raw_epochs(bench_two_epochs_json):
    """Each run's totals and rates rebuilt by hand from its per-epoch records (and the eval's
    seconds and points), and the eval's points from the test split itself."""
    from fastgru4rec.synthetic import synthetic_split

    d = bench_two_epochs_json
    assert d["epochs"] == 2 and [r["engine"] for r in d["runs"]] == ["fast", "reference"]
    _, test = synthetic_split(n_sessions=150, n_items=40)   # the data TINY's --synthetic makes

    def approx(x):
        return pytest.approx(x, rel=1e-9)

    for run in d["runs"]:
        eps = run["epochs"]
        assert [e["epoch"] for e in eps] == [1, 2]
        # each epoch is cut at --max-steps 6, full-width (B=8 lanes, 150 sessions) throughout
        assert [e["n_steps"] for e in eps] == [6, 6] and [e["n_events"] for e in eps] == [48, 48]
        seconds = eps[0]["seconds"] + eps[1]["seconds"]
        assert run["n_steps"] == 12 and run["n_events"] == 96
        assert run["train_seconds"] == approx(seconds)
        assert run["epoch_seconds"] == approx(seconds / 2)
        assert run["batches_per_s"] == approx(12 / seconds)
        assert run["events_per_s"] == approx(96 / seconds)
        assert run["ms_per_step"] == approx(1000.0 * seconds / 12)
        # the loss after training, not the first epoch's (two epochs differ)
        assert eps[0]["loss"] != eps[1]["loss"]
        assert run["final_loss"] == eps[1]["loss"]
        ev = run["eval"]
        assert ev["n_points"] == test.n_events - test.n_sessions
        assert ev["points_per_s"] == approx(ev["n_points"] / ev["seconds"])
    fast, ref = d["runs"]
    # the speed-up is the fast engine's mini-batches/s over the reference's, from raw seconds
    fast_bps = 12 / (fast["epochs"][0]["seconds"] + fast["epochs"][1]["seconds"])
    ref_bps = 12 / (ref["epochs"][0]["seconds"] + ref["epochs"][1]["seconds"])
    assert fast_bps != pytest.approx(ref_bps, rel=1e-6)    # else a swapped ratio reads the same
    assert d["speedup_vs_reference"]["train"] == approx(fast_bps / ref_bps)
    # the flat headline numbers are the primary (fast) run's
    assert d["engine"] == "fast"
    assert d["batches_per_s"] == approx(fast_bps)
    assert d["events_per_s"] == approx(96 / (12 / fast_bps))
    assert d["epoch_seconds"] == approx(6 / fast_bps)
    assert d["eval_seconds"] == fast["eval"]["seconds"]


def test_bench_speedup_is_fast_over_reference_with_known_rates(monkeypatch):
    """run_bench's ratio with the measurements replaced by known ones: the fast engine at
    500 mini-batches/s, the reference at 200 -> x2.5 (not 0.4, not 1)."""
    from fastgru4rec import bench
    from fastgru4rec.config import GRU4RecConfig
    from fastgru4rec.synthetic import synthetic_split

    rates = {"fast": 500.0, "reference": 200.0}

    def fake(train, test, config, device, engine, *a, **kw):
        return {"engine": engine, "batches_per_s": rates[engine], "events_per_s": 1.0,
                "epoch_seconds": 1.0, "eval": None}

    monkeypatch.setattr(bench, "measure_training", fake)
    monkeypatch.setattr(bench, "environment_info", lambda device: {"device": "cpu"})
    train, test = synthetic_split(n_sessions=50, n_items=20)
    cfg = GRU4RecConfig(layers=[8], batch_size=8, n_sample=4)
    out = bench.run_bench(train, test, cfg, "cpu", engine="fast", compare_reference=True)
    assert [r["engine"] for r in out["runs"]] == ["fast", "reference"]
    assert out["speedup_vs_reference"] == {"train": pytest.approx(2.5)}


def test_host_overhead_script_times_both_routes(tmp_path):
    # benchmarks/host_overhead.py (the GRU kernels stubbed; a child process, as it replaces
    # them module-wide): it runs and reports the eager route, the custom op and GRUCell
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"),
                        "--calls", "3", "--repeats", "1", "--batch", "4", "--hidden", "8"],
                       capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("host time of one forward + backward, b 4 H 8")
    for name in ("eager", "custom-op", "grucell"):
        assert any(x.split()[:1] == [name] and float(x.split()[1]) > 0 for x in lines), name
    assert "custom-op / eager: x" in r.stdout
