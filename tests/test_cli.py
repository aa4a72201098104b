"""Tests of the ``fastgru4rec`` command: in-process through cli.main and as a real subprocess.

Bad input must end with exit status 2 and ONE stderr line
``fastgru4rec <command>: error: ...`` that names the problem, never a traceback."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastgru4rec.cli import main
from fastgru4rec.config import GRU4RecConfig

from conftest import assert_cli_error, one_torch_thread, run_cli, subprocess_env

# tiny and fast; n_epochs=2 so that the epoch list is checked
PS = "layers=16,batch_size=16,n_sample=8,sample_store_size=4096,n_epochs=2,learning_rate=0.1"


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


def _env():
    env = subprocess_env(OMP_NUM_THREADS="1")  # tiny models; see conftest.one_torch_thread
    env.pop("PYTHONWARNINGS", None)
    return env


def _popen(*args, cwd, extra_env=None):
    return subprocess.Popen([sys.executable, "-m", "fastgru4rec", *map(str, args)], cwd=str(cwd),
                            env={**_env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(*args, cwd, timeout=120):
    p = _popen(*args, cwd=cwd)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


# ---------------------------------------------------------------------------- data files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """train.tsv / test.tsv (synthetic), and a model trained on them in-process."""
    from conftest import data_to_rows, write_tsv
    from fastgru4rec.synthetic import synthetic_split

    d = tmp_path_factory.mktemp("cli")
    train, test = synthetic_split(n_items=60, n_sessions=200, seed=5)
    paths = {"dir": d,
             "train": write_tsv(d / "train.tsv", data_to_rows(train)),
             "test": write_tsv(d / "test.tsv", data_to_rows(test)),
             "model": d / "model.pt"}
    with one_torch_thread():
        rc = main(["train", str(paths["train"]), "-ps", PS, "-s", str(paths["model"]), "-q"])
    assert rc == 0
    paths["item_ids"] = list(train.item_ids)
    return paths


# ---------------------------------------------------------------------------- end to end
def test_train_end_to_end_subprocess(files, tmp_path):
    model = tmp_path / "sub" / "m.pt"
    rc, out, err = _run("train", files["train"], "-t", files["test"], "-ps", PS, "-s", model,
                        "--json", "-m", "1", "5", "10", cwd=tmp_path)
    assert "Traceback" not in err
    assert rc == 0, err
    res = json.loads(out)  # stdout is exactly one JSON document
    r = res["results"][str(files["test"])]
    assert set(r["recall"]) == set(r["mrr"]) == {"1", "5", "10"}
    for k in ("1", "5", "10"):
        assert 0 <= r["mrr"][k] <= r["recall"][k] <= 1
    assert r["recall"]["1"] == pytest.approx(r["mrr"]["1"])
    assert r["recall"]["1"] <= r["recall"]["5"] <= r["recall"]["10"]
    assert r["recall"]["10"] > 10 / len(files["item_ids"])  # better than random
    assert r["n_events"] > 0 and r["mode"] == "conservative"
    assert res["config"] == GRU4RecConfig.from_dict(
        dict(kv.split("=") for kv in PS.split(","))).to_dict()
    assert [e["epoch"] for e in res["epochs"]] == [1, 2]
    assert res["model"] == str(model) and model.is_file()
    # the saved file gives the same evaluation in another process (this one)
    rc, out2, err2 = call_main("evaluate", model, files["test"], "--json", "-m", "1", "5", "10")
    assert rc == 0, err2
    r2 = json.loads(out2)["results"][str(files["test"])]
    assert r2["recall"] == pytest.approx(r["recall"], rel=1e-9)
    assert r2["mrr"] == pytest.approx(r["mrr"], rel=1e-9)
    assert r2["n_events"] == r["n_events"]


def call_main(*args):
    """main() with stdout/stderr captured by redirecting sys.stdout/sys.stderr (for tests that
    do not take capsys)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def test_train_in_process_json_and_tables(files, capsys, tmp_path):
    rc, out, err = run_cli(capsys, "train", files["train"], "-t", files["test"], files["test"],
                        "-ps", PS, "--json", "-m", "2", "7")
    assert rc == 0, err
    res = json.loads(out)
    assert list(res["results"]) == [str(files["test"])]  # the same file twice: one entry
    r = res["results"][str(files["test"])]
    assert set(r["recall"]) == {"2", "7"}
    assert "model" not in res
    assert err == ""  # --json: no progress or log lines
    # without --json: a table on stdout, the log on stderr
    rc, out, err = run_cli(capsys, "train", files["train"], "-t", files["test"], "-ps", PS, "-m", "3")
    assert rc == 0
    assert "Recall" in out and "MRR" in out and "@3" in out
    assert "epoch   1" in err and "epoch   2" in err


def test_train_warns_in_one_line_of_a_parameter_without_effect(files, capsys):
    rc, out, err = run_cli(capsys, "train", files["train"], "-ps",
                           PS + ",n_epochs=1,loss=bpr-max,logq=1", "-q")
    assert rc == 0, err
    assert err.splitlines() == ["fastgru4rec train: warning: logq=1 has no effect with "
                                "loss=bpr-max (the logQ correction is for cross-entropy only)"]


def test_train_takes_the_authors_run_py_command_line(files, capsys, tmp_path):
    # `python run.py PATH ...` of the authors, with `fastgru4rec train` in its place
    model = tmp_path / "m.pt"
    ps = PS.replace(",sample_store_size=4096", "")
    assert ps != PS
    rc, out, err = run_cli(capsys, "train", files["train"], "--parameter_string", ps,
                           "-t", files["test"], "-m", "20", "--eval_type", "standard",
                           "-ss", "1000", "-sk", "SessionId", "--item_key=ItemId", "-tk",
                           "Time", "-d", "cpu", "--save_model", model, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["config"]["sample_store_size"] == 1000
    assert list(res["results"][str(files["test"])]["recall"]) == ["20"]
    assert res["results"][str(files["test"])]["mode"] == "standard" and model.is_file()
    # run.py's options for what other commands do here: refused with the way to do it
    for option, hint in (("-l", "fastgru4rec evaluate MODEL TEST"),
                         ("--primary_metric=recall", "every metric is printed"),
                         ("-g", "this command is fastgru4rec's")):
        assert_cli_error(run_cli(capsys, "train", files["train"], option, "-ps", PS), "train",
                         "the authors' run.py option", hint)
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ss", "5", "-ps", PS), "train",
                     "give it once")
    # run.py's -l is a switch: `-l MODEL -t TEST` is its whole command line
    assert_cli_error(run_cli(capsys, "train", "-l", model, "-t", files["test"]), "train",
                     "fastgru4rec evaluate MODEL TEST")
    # the underscore spellings are not argparse aliases: abbreviations stay unambiguous
    rc, _, err = run_cli(capsys, "train", files["train"], "-ps", PS + ",n_epochs=1", "--save",
                         tmp_path / "abbrev.pt", "-q")
    assert rc == 0 and (tmp_path / "abbrev.pt").is_file(), err


def test_evaluate_and_recommend_from_saved_model(files, capsys):
    rc, out, err = run_cli(capsys, "evaluate", files["model"], files["test"], "--json", "-m", "1", "20",
                        "-e", "standard")
    assert rc == 0, err
    res = json.loads(out)
    r = res["results"][str(files["test"])]
    assert set(r["recall"]) == {"1", "20"} and r["mode"] == "standard"
    assert (res["model"], res["n_items"], res["cutoffs"], res["mode"]) == (
        str(files["model"]), len(files["item_ids"]), [1, 20], "standard")

    from fastgru4rec import GRU4Rec

    ids = files["item_ids"]
    expected = GRU4Rec.load(files["model"]).recommend([ids[0], ids[1]], k=3)
    rc, out, err = run_cli(capsys, "recommend", files["model"], ids[0], ids[1], "-k", "3")
    assert rc == 0, err
    assert out.splitlines() == expected
    rc, out, err = run_cli(capsys, "recommend", files["model"], ids[0], "unknown-item", ids[1],
                        "-k", "3", "--json")
    assert rc == 0, err
    # the unknown item is skipped, and said to be: in the JSON and on stderr
    assert json.loads(out) == {"session": [ids[0], ids[1]], "unknown_items": ["unknown-item"],
                               "recommendations": expected}
    assert "1 item(s) unknown to the model skipped: unknown-item" in err
    rc, out, err = run_cli(capsys, "recommend", files["model"], ids[0], "-k", "5", "--exclude-seen")
    assert rc == 0 and len(out.splitlines()) == 5 and ids[0] not in out.splitlines()


@pytest.mark.parametrize("kind", ["python", "json"])
def test_param_files(files, capsys, tmp_path, kind):
    if kind == "python":
        pf = tmp_path / "params.py"
        pf.write_text("from collections import OrderedDict\n"
                      "gru4rec_params = OrderedDict([('loss', 'bpr-max'), ('layers', [12]), "
                      "('batch_size', 8), ('n_sample', 4), ('sample_store_size', 1000), "
                      "('n_epochs', 1), ('constrained_embedding', False), ('embedding', 6), "
                      "('bpreg', 1.5)])\n")
        expect = dict(loss="bpr-max", layers=[12], batch_size=8, embedding=6, bpreg=1.5,
                      constrained_embedding=False)
    else:
        pf = tmp_path / "params.json"
        pf.write_text(json.dumps({"loss": "top1-max", "layers": [10, 6], "batch_size": 8,
                                  "n_sample": 0, "n_epochs": 1, "constrained_embedding": False}))
        expect = dict(loss="top1-max", layers=[10, 6], n_sample=0, constrained_embedding=False,
                      embedding=0)
    model = tmp_path / "m.pt"
    rc, out, err = run_cli(capsys, "train", files["train"], "-pf", pf, "-t", files["test"], "-s", model,
                        "--json")
    assert rc == 0, err
    res = json.loads(out)
    for k, v in expect.items():
        assert res["config"][k] == v, k
    assert len(res["epochs"]) == 1
    from fastgru4rec import GRU4Rec

    assert GRU4Rec.load(model).config.to_dict() == res["config"]


# ---------------------------------------------------------------------------- bad input
def _bad_files(d: Path):
    from conftest import write_tsv

    f = {}
    f["missing_col"] = write_tsv(d / "missing_col.tsv", [("a", "x", 1)],
                                 header=("SessionId", "ItemId", "Timestamp"))
    f["bad_time"] = write_tsv(d / "bad_time.tsv", [("a", "x", 1), ("a", "y", "noon"), ("b", "x", 3)])
    f["empty"] = d / "empty.tsv"
    f["empty"].write_text("")
    f["header_only"] = write_tsv(d / "header_only.tsv", [])
    f["singletons"] = write_tsv(d / "singletons.tsv", [("a", "x", 1), ("b", "y", 2), ("c", "x", 3)])
    f["unknown_items"] = write_tsv(d / "unknown.tsv", [("t1", "never", 1), ("t1", "seen", 2)])
    return f


@pytest.fixture(scope="module")
def bad(files):
    return _bad_files(files["dir"])


@pytest.mark.parametrize("case", [
    "missing_file", "missing_col", "bad_time", "empty", "header_only", "singletons",
    "unknown_test", "unknown_loss", "batch_zero", "batch_negative", "layers_zero",
    "layers_negative", "unknown_key", "bad_type", "ps_and_pf", "pf_missing", "pf_not_literal",
    "bad_device",
])
def test_train_bad_input(files, bad, capsys, case, tmp_path):
    tr = files["train"]
    model = tmp_path / "never.pt"
    args, frags = {
        "missing_file": (["train", tmp_path / "nope.tsv"], ["nope.tsv", "not found"]),
        "missing_col": (["train", bad["missing_col"]], ["missing column", "'Time'"]),
        "bad_time": (["train", bad["bad_time"]], ["row 2", "'Time'", "'noon'", "not a number"]),
        "empty": (["train", bad["empty"]], ["empty.tsv", "no events"]),
        "header_only": (["train", bad["header_only"]], ["header_only.tsv", "no events"]),
        "singletons": (["train", bad["singletons"], "-ps", PS], ["2 or more events"]),
        "unknown_test": (["train", tr, "-t", bad["unknown_items"], "-ps", PS],
                         ["unknown.tsv", "none of its items"]),
        "unknown_loss": (["train", tr, "-ps", "loss=hinge"], ["loss", "'hinge'", "unknown loss"]),
        "batch_zero": (["train", tr, "-ps", "batch_size=0"], ["batch_size"]),
        "batch_negative": (["train", tr, "-ps", "batch_size=-8"], ["batch_size"]),
        "layers_zero": (["train", tr, "-ps", "layers=0"], ["layers"]),
        "layers_negative": (["train", tr, "-ps", "layers=100/-1"], ["layers"]),
        "unknown_key": (["train", tr, "-ps", "loss=bpr,hidden_size=3"], ["'hidden_size'"]),
        "bad_type": (["train", tr, "-ps", "n_epochs=two"], ["n_epochs"]),
        "ps_and_pf": (["train", tr, "-ps", "loss=bpr", "-pf", bad["empty"]], ["-ps", "-pf", "not both"]),
        "pf_missing": (["train", tr, "-pf", tmp_path / "p.py"], ["p.py", "not found"]),
        "pf_not_literal": (["train", tr, "-pf", "NOTLIT"], ["literal"]),
        "bad_device": (["train", tr, "-ps", PS, "--device", "warp-drive"], ["device"]),
    }[case]
    if case == "pf_not_literal":
        p = tmp_path / "nl.py"
        p.write_text("gru4rec_params = dict(loss=input())\n")
        args = [p if a == "NOTLIT" else a for a in args]
    # -q: the informational "train: N events ..." line would precede the error otherwise
    rc, out, err = run_cli(capsys, *args, "-s", model, "-q")
    assert_cli_error((rc, out, err), "train", *frags)
    assert not model.exists()  # failed before training/saving


def test_evaluate_and_recommend_bad_input(files, bad, capsys, tmp_path):
    rc, out, err = run_cli(capsys, "evaluate", tmp_path / "none.pt", files["test"])
    assert_cli_error((rc, out, err), "evaluate", "none.pt", "not found")
    rc, out, err = run_cli(capsys, "evaluate", files["model"], bad["unknown_items"])
    assert_cli_error((rc, out, err), "evaluate", "none of its items")
    rc, out, err = run_cli(capsys, "evaluate", files["model"], bad["bad_time"])
    assert_cli_error((rc, out, err), "evaluate", "row 2", "'Time'")
    not_model = tmp_path / "not_model.pt"
    not_model.write_text("hello")
    rc, out, err = run_cli(capsys, "evaluate", not_model, files["test"])
    assert_cli_error((rc, out, err), "evaluate", "not_model.pt")
    rc, out, err = run_cli(capsys, "recommend", files["model"], "nope1", "nope2")
    assert_cli_error((rc, out, err), "recommend", "known")
    rc, out, err = run_cli(capsys, "recommend", files["model"], files["item_ids"][0], "-k", "0")
    assert_cli_error((rc, out, err), "recommend", "k must be a positive integer")


def test_argparse_errors_exit_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["train"])  # the TRAIN argument is missing
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("fastgru4rec train: error:")
    with pytest.raises(SystemExit) as ei:
        main(["frobnicate"])
    assert ei.value.code == 2


def test_bad_input_subprocess(files, bad, tmp_path):
    """Real processes (started together to save time): exit 2, one line, no traceback."""
    cases = [
        (["train", tmp_path / "missing.tsv"], "train", ["missing.tsv", "not found"]),
        (["train", bad["bad_time"], "-ps", PS], "train", ["row 2", "'Time'", "'noon'"]),
        (["train", files["train"], "-ps", "loss=hinge"], "train", ["loss", "'hinge'"]),
    ]
    procs = [_popen(*args, cwd=tmp_path) for args, _, _ in cases]
    t_end = time.monotonic() + 180
    for p, (args, command, frags) in zip(procs, cases):
        out, err = p.communicate(timeout=max(1, t_end - time.monotonic()))
        assert_cli_error((p.returncode, out, err), command, *frags)


# ---------------------------------------------------------------------------- demo
def test_demo_one_epoch_json(capsys):
    rc, out, err = run_cli(capsys, "demo", "--epochs", "1", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["params"]["n_epochs"] == 1
    g = res["results"]["GRU4Rec"]
    assert set(g["recall"]) == {"1", "5", "10", "20"}
    assert g["n_events"] > 1000
    # the synthetic data has strong sequential structure: far above a random ranking
    assert g["recall"]["20"] > 0.3 and g["mrr"]["20"] > 0.1
    if "POP" in res["results"]:
        assert g["recall"]["20"] > res["results"]["POP"]["recall"]["20"]


# ---------------------------------------------------------------------------- info, --version
def test_version_and_info(capsys, monkeypatch):
    import torch

    import fastgru4rec
    from fastgru4rec import native

    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out == f"fastgru4rec {fastgru4rec.__version__}\n"

    monkeypatch.setenv("FASTGRU4REC_BACKEND", "torch")   # forces the reference on CUDA too
    rc, out, err = run_cli(capsys, "info", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert (info["fastgru4rec"], info["torch"]) == (fastgru4rec.__version__, torch.__version__)
    assert info["native_extension"] == native.available()
    assert (info["native_extension_error"] is None) == native.available()
    assert len(info["cuda_devices"]) == (torch.cuda.device_count()
                                         if torch.cuda.is_available() else 0)
    assert info["ops_backend"] == {"cpu": "torch", "cuda": "torch"}
    assert info["settings"]["FASTGRU4REC_BACKEND"] == "torch"
    rc, out, _ = run_cli(capsys, "info")
    assert rc == 0 and out.startswith(f"fastgru4rec {fastgru4rec.__version__} (python ")
    assert "FASTGRU4REC_BACKEND=torch" in out.splitlines()
    monkeypatch.delenv("FASTGRU4REC_BACKEND")
    info = json.loads(run_cli(capsys, "info", "--json")[1])
    assert info["ops_backend"]["cuda"] == ("triton" if info["triton"] else "torch")


def test_info_names_why_the_native_extension_is_off(tmp_path):
    """A real process (the extension is loaded once per process): the reason, no warning."""
    p = _popen("info", cwd=tmp_path, extra_env={"FASTGRU4REC_NO_NATIVE": "1"})
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "native extension: unavailable" in out and "FASTGRU4REC_NO_NATIVE" in out
    assert "Warning" not in err
