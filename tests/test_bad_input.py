"""Bad input, end to end: every case of the bad-input audit ends with exit status 2 and ONE
stderr line ``fastgru4rec <command>: error: ...`` naming what is wrong and where (never a
traceback), or, through the API, one DataError/ConfigError line. Outputs are checked before
the long work, and written atomically."""
from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastgru4rec import GRU4Rec
from fastgru4rec.cli import EXIT_BROKEN_PIPE, main
from fastgru4rec.config import GRU4RecConfig, read_param_file
from fastgru4rec.data import SessionData, read_events, read_sessions
from fastgru4rec.errors import ConfigError, DataError
from fastgru4rec.fileio import WriteError, atomic_write, check_writable

from conftest import (assert_cli_error, data_to_rows, one_torch_thread, run_cli,
                      subprocess_env, write_tsv)

ROOT = Path(__file__).resolve().parents[1]
PS = "layers=8,batch_size=8,n_sample=8,sample_store_size=4096,n_epochs=1"
SYNTH = "n_sessions=150,n_items=40"


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


def api_error(exc_type, func, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as ei:
        func(*args, **kwargs)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small train/test files, a test file whose sessions have one event each, and a model."""
    d = tmp_path_factory.mktemp("bad_input")
    rows = [(f"s{s}", f"i{(s * 7 + j) % 13}", 100 * s + j) for s in range(40) for j in range(4)]
    paths = {"dir": d,
             "train": write_tsv(d / "train.tsv", rows),
             "test": write_tsv(d / "test.tsv", rows[:40]),
             "single": write_tsv(d / "single.tsv", [(f"t{s}", f"i{s % 13}", s) for s in range(9)]),
             "model": d / "model.pt"}
    with one_torch_thread():
        assert main(["train", str(paths["train"]), "-ps", PS, "-s", str(paths["model"]), "-q"]) == 0
    return paths


def _fail_if_called(*args, **kwargs):
    raise AssertionError("the long work started although an argument was bad")


# ================================================================ A. no more tracebacks
@pytest.mark.parametrize("argv_tail", [["--session-key", "ItemId"], ["--item-key", "Time"]])
def test_keys_naming_the_same_column(files, capsys, argv_tail):
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", PS, "-q", *argv_tail), "train",
                 "three different columns", *argv_tail[1:])
    assert_cli_error(run_cli(capsys, "evaluate", files["model"], files["test"], *argv_tail), "evaluate",
                 "three different columns")
    assert_cli_error(run_cli(capsys, "baselines", files["train"], files["test"], "--only", "pop", "-q",
                     *argv_tail), "baselines", "three different columns")


def test_keys_naming_the_same_column_api(files):
    msg = api_error(DataError, read_sessions, files["train"], session_key="ItemId")
    assert "session_key='ItemId'" in msg and "three different columns" in msg
    df = pd.DataFrame({"SessionId": ["a"], "ItemId": ["x"], "Time": [1.0]})
    api_error(DataError, read_sessions, df, time_key="ItemId")


def test_key_column_twice_in_the_header(tmp_path):
    p = tmp_path / "dup.tsv"
    p.write_text("SessionId\tItemId\tTime\tTime\n1\t2\t1\t1\n1\t3\t2\t2\n")
    assert "column 'Time' appears 2 times" in api_error(DataError, read_sessions, p)
    table = pa.table([pa.array(["a"]), pa.array(["x"]), pa.array([1.0]), pa.array([2.0])],
                     names=["SessionId", "ItemId", "Time", "Time"])
    assert "column 'Time' appears 2 times" in api_error(DataError, read_events, table)


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 7.11 PiB for an array with shape (488281250000, 2048)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 6976000000000000 bytes."),
])
def test_out_of_memory_is_a_one_line_error(files, capsys, monkeypatch, error):
    # Real allocation failures depend on the machine (overcommit): raised where numpy / torch
    # raise them, inside training.
    def fit(*args, **kwargs):
        raise error

    monkeypatch.setattr(GRU4Rec, "fit", fit)
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", PS, "-q"), "train", "out of memory")


@pytest.mark.parametrize("param, name", [
    ("layers=1000000000000", "layers"),
    ("sample_store_size=1000000000000000", "sample_store_size"),
    ("n_sample=100000000000000", "n_sample"),
    ("embedding=10000000000,constrained_embedding=False", "embedding"),
    ("batch_size=1000000000000", "batch_size"),
])
def test_sizes_that_cannot_fit_are_rejected_naming_the_parameter(files, capsys, monkeypatch,
                                                                 param, name):
    monkeypatch.setattr(GRU4Rec, "fit", _fail_if_called)
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", f"{PS},{param}", "-q"), "train",
                 f"parameter {name}=", "parameter string")


def test_deeply_nested_python_param_file(files, capsys, tmp_path):
    p = tmp_path / "deep.py"
    p.write_text("gru4rec_params = " + "-" * 100000 + "1\n")
    assert "deep.py" in api_error(ConfigError, read_param_file, p)
    assert_cli_error(run_cli(capsys, "train", files["train"], "-pf", p, "-q"), "train", str(p))
    q = tmp_path / "deep.json"
    q.write_text("[" * 100000 + "]" * 100000)
    assert "deep.json" in api_error(ConfigError, read_param_file, q)


def test_empty_arrays_and_empty_synthetic_split(capsys):
    assert "no events" in api_error(DataError, SessionData.from_arrays, [], [], [])
    assert_cli_error(run_cli(capsys, "bench", "--synthetic", "test_fraction=1", "-q"), "bench",
                 "--synthetic", "test_fraction=")


@pytest.mark.parametrize("spec, name", [
    ("n_sessions=1e12", "n_sessions"), ("n_sessions=0", "n_sessions"),
    ("n_sessions=-5", "n_sessions"), ("n_items=0", "n_items"), ("zipf=nan", "zipf"),
    ("test_fraction=2", "test_fraction"), ("n_sessions=1.5", "n_sessions"),
    ("p_follow=-1", "p_follow"), ("seed=-1", "seed"),
])
def test_synthetic_parameters_out_of_range(capsys, spec, name):
    assert_cli_error(run_cli(capsys, "bench", "--synthetic", spec, "-q"), "bench", "--synthetic",
                 f"parameter {name}=")


def test_synthetic_api_checks_its_parameters():
    from fastgru4rec.synthetic import synthetic_split

    assert "n_items" in api_error(ConfigError, synthetic_split, n_items=0)
    assert "test_fraction" in api_error(ConfigError, synthetic_split, test_fraction=0.0)
    assert "zipf" in api_error(ConfigError, synthetic_split, zipf=float("inf"))
    # values the generator handles stay allowed: lengths are capped at 50 and at least 2
    for kw in (dict(mean_length=60), dict(mean_length=1.5), dict(zipf=-0.5)):
        train, _ = synthetic_split(n_sessions=200, n_items=30, **kw)
        lengths = train.session_lengths
        assert lengths.min() >= 1 and lengths.max() <= 50 and train.n_events > 0


# ================================================================ B. outputs checked first
def test_save_model_to_a_directory_fails_before_training(files, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(GRU4Rec, "fit", _fail_if_called)
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", PS, "-s", tmp_path, "-q"), "train",
                 f"cannot write {tmp_path}", "directory")
    assert not list(tmp_path.parent.glob(".*.tmp"))
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", PS, "-s",
                     files["train"] / "m.pt", "-q"), "train",
                 f"cannot write {files['train'] / 'm.pt'}", f"{files['train']} is not a directory")
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", PS, "-s", "", "-q"), "train",
                 "-s/--save-model", "empty")


def test_save_model_creates_missing_folders(files, capsys, tmp_path):
    target = tmp_path / "new" / "sub" / "m.pt"
    rc, _, err = run_cli(capsys, "train", files["train"], "-ps", PS, "-s", target, "-q")
    assert rc == 0, err
    assert target.is_file() and not list(target.parent.glob(".*.tmp"))


def test_atomic_write_errors_name_the_destination(tmp_path):
    with pytest.raises(WriteError) as ei, atomic_write(tmp_path) as f:
        f.write(b"x")
    assert str(ei.value) == f"cannot write {tmp_path}: is a directory (give a file name)"
    assert not list(tmp_path.parent.glob(".*.tmp")), "temporary file outside the destination's folder"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match=f"{blocker} is not a directory"):
        check_writable(blocker / "out.json")
    assert isinstance(ei.value, OSError)   # callers catching OSError still do


@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt(),
                                   OSError(28, "No space left on device")],
                         ids=["exception", "interrupt", "disk-full"])
def test_atomic_write_failing_midway_keeps_the_old_file_and_no_temporary(tmp_path, error):
    # the writer raises after writing part of the new content: the destination keeps its
    # old bytes, no temporary file is left, and an OSError names the destination
    path = tmp_path / "out.bin"
    path.write_bytes(b"old content")
    with pytest.raises(type(error)) as ei, atomic_write(path) as f:
        f.write(b"new, partly written")
        assert list(tmp_path.glob(".out.bin.*.tmp"))        # the write goes to a temporary
        raise error
    assert path.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    if isinstance(error, OSError):
        assert isinstance(ei.value, WriteError)
        assert str(ei.value).startswith(f"cannot write {path}: No space left on device")


def test_bench_output_paths_checked_before_the_benchmark(capsys, monkeypatch, tmp_path):
    from fastgru4rec import bench

    monkeypatch.setattr(bench, "run_bench", _fail_if_called)
    assert_cli_error(run_cli(capsys, "bench", "--synthetic", SYNTH, "--json", tmp_path, "-q"), "bench",
                 f"cannot write {tmp_path}")
    assert_cli_error(run_cli(capsys, "bench", "--synthetic", SYNTH, "--json", "", "-q"), "bench",
                 "--json", "empty")


def test_bench_prints_the_table_before_writing_json(capsys, monkeypatch, tmp_path):
    from fastgru4rec import bench

    def failing_write(path, obj):
        raise WriteError(28, "No space left on device", str(path))

    monkeypatch.setattr(bench, "write_json_atomic", failing_write)
    out_json = tmp_path / "out.json"
    rc, out, err = run_cli(capsys, "bench", "--synthetic", SYNTH, "--max-steps", "2",
                       "--warmup-steps", "0", "-ps", PS, "--json", out_json, "-q")
    assert_cli_error((rc, out, err), "bench", f"cannot write {out_json}", "No space left",
                 out_empty=False)
    assert "events/s" in out and "mb/s" in out   # the numbers measured are not lost


def test_bench_and_preprocess_take_the_column_options_their_errors_name(capsys, tmp_path):
    # other column names: the error names --session-key & co, and the commands take them
    from fastgru4rec.synthetic import synthetic_split

    train, _ = synthetic_split(n_items=40, n_sessions=120, seed=3)
    path = tmp_path / "events.txt"
    rows = [f"{s};{i};{t}" for s, i, t in data_to_rows(train)]
    path.write_text("sid;iid;ts\n" + "\n".join(rows) + "\n")
    assert_cli_error(run_cli(capsys, "bench", "train", path, "--sep", ";", "--max-steps", "2",
                             "-q"), "bench", "missing columns", "(--session-key)")
    rc, out, err = run_cli(capsys, "bench", "train", path, "--sep", ";", "--session-key", "sid",
                           "--item-key", "iid", "--time-key", "ts", "--max-steps", "2",
                           "--warmup-steps", "0", "-ps", PS, "-q")
    assert rc == 0, err
    assert f"{train.n_events:,} events" in out
    tsv = tmp_path / "events.tsv"
    tsv.write_text(path.read_text().replace(";", "\t"))
    line = assert_cli_error(run_cli(capsys, "preprocess", "rsc15", tsv, tmp_path / "out",
                                    "--quiet"), "preprocess", "missing columns", "(--time-key)")
    assert "need a header row" not in line   # it has one
    tsv.write_text("\n".join(tsv.read_text().splitlines()[1:]) + "\n")   # it has none
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", tsv, tmp_path / "out", "--quiet"),
                     "preprocess", "missing columns", "(text files need a header row)")


def test_data_review_messages(capsys, tmp_path):
    # a header without its line break: no events, not pyarrow's "Empty CSV file or block"
    header_only = tmp_path / "h.tsv"
    header_only.write_text("SessionId\tItemId\tTime")
    assert_cli_error(run_cli(capsys, "train", header_only), "train",
                     "h.tsv: no events (empty file: only a header line)")
    # --sep '\t' as a shell passes it (two characters) is the tab it means
    events = tmp_path / "e.events"   # an extension that tells no format
    events.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"s{i // 3}\t{i % 5}\t{i}\n" for i in range(60)))
    rc, out, err = run_cli(capsys, "train", events, "--sep", "\\t", "-ps", PS, "-q")
    assert rc == 0, err
    assert_cli_error(run_cli(capsys, "train", events, "-ps", PS), "train",
                     "cannot tell the format", "--sep on the command line")
    # clicks without a time zone: the line, and what is missing
    clicks = tmp_path / "clicks.dat"
    clicks.write_text("1,2014-04-07T10:51:09.277Z,214,0\n1,2014-04-07T10:52:09.277,215,0\n")
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", clicks, tmp_path / "o", "--quiet"),
                     "preprocess", "line 2: timestamp '2014-04-07T10:52:09.277' has no time zone")


def test_bench_plot_is_written_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    from fastgru4rec import bench

    result = {"runs": [{"engine": "reference", "batches_per_s": 10.0, "eval": None}],
              "env": {"device_name": "cpu"}, "config": GRU4RecConfig().to_dict()}
    png = tmp_path / "p.png"
    bench.plot_result(result, png)
    assert png.read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ConfigError, match="xyz"):
        bench._plot_format(tmp_path / "p.xyz")


def test_preprocess_outdir_checked_before_reading(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    clicks = tmp_path / "clicks.dat"
    clicks.write_text("1,2014-04-07T10:51:09.277Z,214,0\n")
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", clicks, blocker / "out", "--quiet"),
                 "preprocess", "cannot write", f"{blocker} is not a directory")


# ================================================================ C. messages
def test_binary_and_compressed_files_are_named_as_such(capsys, tmp_path):
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.tsv"
    garbage.write_bytes(b"Sess\0ion\t" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    line = assert_cli_error(run_cli(capsys, "train", garbage, "-q"), "train", str(garbage),
                        "binary file")
    assert len(line) < 200 and line.isprintable()
    packed = tmp_path / "packed.tsv"   # gzip data without the .gz suffix
    packed.write_bytes(gzip.compress(b"SessionId\tItemId\tTime\n1\t2\t3\n"))
    assert_cli_error(run_cli(capsys, "train", packed, "-q"), "train", str(packed), "gzip-compressed")
    import bz2
    bzipped = tmp_path / "bzipped.tsv"
    bzipped.write_bytes(bz2.compress(b"SessionId\tItemId\tTime\n1\t2\t3\n"))
    assert_cli_error(run_cli(capsys, "train", bzipped, "-q"), "train", str(bzipped), "bzip2-compressed")
    parquet = tmp_path / "table.tsv"   # a Parquet file under a text name
    pq.write_table(pa.table({"SessionId": [1], "ItemId": [2], "Time": [3.0]}), parquet)
    assert_cli_error(run_cli(capsys, "train", parquet, "-q"), "train", str(parquet), "Parquet file")


@pytest.mark.parametrize("first", ["PAR1", "BZh1", "PK"])
def test_text_whose_header_starts_like_a_magic_number_is_read(tmp_path, first):
    # "PAR1" and "BZh1" are printable: plain text may start with them
    path = tmp_path / "events.tsv"
    path.write_text(f"{first}\tSessionId\tItemId\tTime\n0\t1\ta\t1\n0\t1\tb\t2\n")
    data = read_sessions(path)
    assert (data.n_events, data.n_sessions, data.n_items) == (2, 1, 2)


def test_wide_and_odd_headers_are_shown_short_and_unambiguous(capsys, tmp_path):
    wide = tmp_path / "wide.tsv"
    wide.write_text("\t".join(f"col{i}" for i in range(100_000)) + "\n" +
                    "\t".join("1" for _ in range(100_000)) + "\n")
    line = assert_cli_error(run_cli(capsys, "train", wide, "-q"), "train", str(wide), "(100,000 columns)")
    assert len(line) < 600
    cr = tmp_path / "cr.tsv"
    cr.write_bytes(b"SessionId\tItem\rId\tTime\n1\t2\t3\n")
    assert_cli_error(run_cli(capsys, "train", cr, "-q"), "train", str(cr), "'Item\\rId'")


@pytest.mark.parametrize("sep", ["::", "", "§"])   # § is 2 bytes in UTF-8: pyarrow splits on 1
def test_separator_must_be_one_character(files, capsys, sep):
    assert_cli_error(run_cli(capsys, "train", files["train"], "--sep", sep, "-q"), "train", "--sep",
                 repr(sep))
    assert "sep=" in api_error(DataError, read_sessions, files["train"], sep=sep)


def test_an_empty_file_name_is_not_the_current_folder(capsys):
    assert "an empty file name" in api_error(DataError, read_events, "")
    assert_cli_error(run_cli(capsys, "train", "", "-q"), "train", "an empty file name")


def test_corrupt_parquet_names_the_file(capsys, tmp_path):
    p = tmp_path / "corrupt.parquet"
    pq.write_table(pa.table({"SessionId": [str(i // 3) for i in range(3000)],
                             "ItemId": [f"item{i}" for i in range(3000)],
                             "Time": np.arange(3000, dtype=np.float64)}), p,
                   compression="snappy")
    raw = bytearray(p.read_bytes())
    raw[8:2000] = b"\xff" * 1992   # the column chunks, not the footer
    p.write_bytes(bytes(raw))
    assert_cli_error(run_cli(capsys, "train", p, "-q"), "train", str(p), "cannot read as Parquet")


def test_datetime_ns_times_are_read_in_order(tmp_path):
    base = 1411462780513000011   # nanoseconds: not a whole number of microseconds
    df = pd.DataFrame({
        "SessionId": ["a", "a", "a", "b"],
        "ItemId": ["late", "early", "middle", "x"],
        "Time": pd.to_datetime([base + 2_000_000_000, base, base + 1_000_000_000, base - 10**9],
                               unit="ns"),
    })
    assert str(df["Time"].dtype) == "datetime64[ns]"
    p = tmp_path / "dt.parquet"
    df.to_parquet(p, index=False)
    for source in (df, p):
        data = read_sessions(source)
        assert list(data.session_ids) == ["b", "a"]   # b starts a second earlier
        a = data.items[data.offsets[1]:data.offsets[2]]
        assert [data.item_ids[i] for i in a] == ["early", "middle", "late"]
        assert data.times[data.offsets[1]] == pytest.approx(base / 1e9, abs=1e-6)
    # plain integer times beyond 2^53 (e.g. nanoseconds in an int64 column) are read too
    ints = df.assign(Time=df["Time"].astype("int64"))
    assert read_sessions(ints).n_events == 4


def test_invalid_utf8_names_row_and_column(capsys, tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_bytes(b"SessionId\tItemId\tTime\n1\tab\t1\n1\t\xff\xfe\t2\n")
    assert_cli_error(run_cli(capsys, "train", p, "-q"), "train", f"{p}: row 2, column 'ItemId'",
                 "invalid UTF-8")


@pytest.mark.parametrize("seed", ["-2", "99999999999999999999999"])
def test_seed_out_of_range_names_the_value_given(files, capsys, seed):
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", f"{PS},seed={seed}", "-q"), "train",
                 f"parameter seed={seed}:")


def test_demo_seed_out_of_range(capsys, monkeypatch):
    from fastgru4rec import synthetic

    monkeypatch.setattr(synthetic, "synthetic_split", _fail_if_called)
    assert_cli_error(run_cli(capsys, "demo", "--seed", "-1", "-q"), "demo", "seed=-1")


def test_param_file_value_errors_name_the_file(files, capsys, tmp_path):
    p = tmp_path / "null.json"
    p.write_text('{"loss": null}')
    assert_cli_error(run_cli(capsys, "train", files["train"], "-pf", p, "-q"), "train", str(p), "loss")
    q = tmp_path / "range.json"
    q.write_text('{"batch_size": 0}')
    assert_cli_error(run_cli(capsys, "train", files["train"], "-pf", q, "-q"), "train", str(q),
                 "batch_size")
    nul = tmp_path / "nul.py"
    nul.write_bytes(b"gru4rec_params = {}\0\n")
    line = assert_cli_error(run_cli(capsys, "train", files["train"], "-pf", nul, "-q"), "train",
                        str(nul), "NUL")
    assert "None" not in line


def test_fractional_layer_sizes_are_rejected():
    for layers in ([1.5], "100/1.5", [True]):
        assert "layers" in api_error(ConfigError, GRU4Rec, layers=layers)
        assert "layers" in api_error(ConfigError, GRU4RecConfig, layers=layers)
    assert GRU4RecConfig(layers=[100.0, np.int64(50)]).layers == (100, 50)


# ================================================================ D. no evaluation points
def test_evaluate_without_evaluation_points(files, capsys):
    assert_cli_error(run_cli(capsys, "evaluate", files["model"], files["test"], files["single"]),
                 "evaluate", str(files["single"]), "no evaluation points", "fewer than 2")


def test_train_test_file_without_evaluation_points_fails_before_training(files, capsys,
                                                                        monkeypatch):
    monkeypatch.setattr(GRU4Rec, "fit", _fail_if_called)
    assert_cli_error(run_cli(capsys, "train", files["train"], "-t", files["single"], "-ps", PS, "-q"),
                 "train", str(files["single"]), "no evaluation points")


def test_baselines_test_file_without_evaluation_points(files, capsys):
    assert_cli_error(run_cli(capsys, "baselines", files["train"], files["single"], "--only", "pop", "-q"),
                 "baselines", str(files["single"]), "no evaluation points")


def test_cli_load_with_a_bad_device_names_the_option(files, capsys):
    line = assert_cli_error(run_cli(capsys, "evaluate", files["model"], files["test"], "--device", "foo"),
                        "evaluate", "device='foo'", "not a torch device")
    assert "inconsistent" not in line

# ================================================================ E. docs and code agree
def test_threads_zero_leaves_torch_alone(files, capsys):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)   # not the default 1 of baselines, so that a change shows
    try:
        rc, out, err = run_cli(capsys, "baselines", files["train"], files["test"], "--only", "pop",
                           "--threads", "0", "--json")
        assert torch.get_num_threads() == 2
        rc1, _, err1 = run_cli(capsys, "baselines", files["train"], files["test"], "--only", "pop",
                           "--json")
        assert rc1 == 0, err1
        assert torch.get_num_threads() == 1   # baselines' documented default
    finally:
        torch.set_num_threads(before)
    assert rc == 0, err
    assert "POP" in json.loads(out)["results"][str(files["test"])]
    assert_cli_error(run_cli(capsys, "baselines", files["train"], files["test"], "--only", "pop",
                     "--threads", "-1", "-q"), "baselines", "--threads")


def test_readme_param_files_exist():
    readme = (ROOT / "README.md").read_text()
    paths = re.findall(r"-pf (\S+)", readme)
    assert paths
    for path in paths:
        assert (ROOT / path).is_file(), path


# ================================================================ F. minor
def test_broken_pipe_is_quiet(files, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "fastgru4rec", "evaluate", str(files["model"]),
                          str(files["test"]), "--json"], cwd=str(tmp_path),
                         env=subprocess_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()   # the reader is gone before anything is written (`| head -0`)
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert rc == EXIT_BROKEN_PIPE == 141, err
    assert "Traceback" not in err and "Broken pipe" not in err and "Exception ignored" not in err


def test_training_divergence_exits_2(files, capsys, monkeypatch):
    from fastgru4rec.train import TrainingDiverged

    def fit(*args, **kwargs):
        raise TrainingDiverged("loss became nan in epoch 1 (step 3); lower learning_rate or "
                               "check the data")

    monkeypatch.setattr(GRU4Rec, "fit", fit)
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", PS, "-q"), "train", "loss became nan")


def test_evaluate_shows_progress_unless_json_or_quiet(files, capsys, monkeypatch):
    seen = []
    original = GRU4Rec.evaluate

    def evaluate(self, *args, **kwargs):
        seen.append(kwargs.get("progress"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GRU4Rec, "evaluate", evaluate)
    for extra, expected in ((["--json"], False), (["-q"], False), ([], True)):
        rc, _, err = run_cli(capsys, "evaluate", files["model"], files["test"], *extra)
        assert rc == 0, err
        assert seen.pop() is expected


def _clicks(path: Path, sessions):
    """yoochoose-clicks.dat lines: sessions = [(session id, day, [items])], events 60 s apart."""
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2014, 4, 1, tzinfo=timezone.utc)
    lines = []
    for sid, day, items in sessions:
        for j, item in enumerate(items):
            t = t0 + timedelta(days=day, seconds=60 * j)
            lines.append(f"{sid},{t.strftime('%Y-%m-%dT%H:%M:%S')}.000Z,{item},0")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_preprocess_empty_validation_split_warns(capsys, tmp_path):
    # train_full spans less than a day: its last-day split leaves train_tr / train_valid empty
    clicks = _clicks(tmp_path / "clicks.dat",
                     [(1, 0, "ABAB"), (2, 0, "BABA"), (3, 3, "ABAB")])
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "preprocess", "rsc15", clicks, out, "--min-item-support", "1",
                          "--quiet")
    assert rc == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgru4rec preprocess: warning: "), err
    assert "train_valid.tsv" in lines[0] and "test.tsv are complete" in lines[0]
    assert (out / "train_valid.tsv").read_text() == "SessionId\tItemId\tTime\n"
    assert len((out / "test.tsv").read_text().splitlines()) == 5


def test_preprocess_empty_test_is_an_error(capsys, tmp_path):
    # the last day's only session has items unknown to training: no test session is left
    clicks = _clicks(tmp_path / "clicks.dat",
                     [(1, 0, "ABAB"), (2, 1, "BABA"), (3, 3, "CDCD")])
    out = tmp_path / "out"
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", clicks, out, "--min-item-support", "1",
                     "--quiet"), "preprocess", str(clicks), "no test session")
    assert not out.exists()


# ================================================================ D. outputs never destroy data
def test_outputs_never_replace_special_files_or_inputs(files, capsys, monkeypatch, tmp_path):
    """Only regular files are replaced: a device, a FIFO, a path ending in a separator are
    refused; an output that is one of the command's inputs (the training file, a test file) is
    refused; all before training."""
    import os

    monkeypatch.setattr(GRU4Rec, "fit", _fail_if_called)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, fragment in ((fifo, "not a regular file"),
                             (Path("/dev/null"), "not a regular file"),
                             (f"{tmp_path}/newdir/", "ends in a path separator")):
        assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", PS, "-s", target, "-q"),
                         "train", f"cannot write {target}", fragment)
    assert fifo.is_fifo() and Path("/dev/null").is_char_device()
    assert not (tmp_path / "newdir").exists()
    copy = tmp_path / "train_copy.tsv"
    copy.write_bytes(files["train"].read_bytes())
    for argv in (["train", copy, "-ps", PS, "-s", copy, "-q"],
                 ["train", files["train"], "-t", copy, "-ps", PS, "-s", copy, "-q"]):
        assert_cli_error(run_cli(capsys, *argv), "train", f"cannot write {copy}",
                         "is an input of this command")
    assert copy.read_bytes() == files["train"].read_bytes()


def test_symlinked_output_is_written_through(files, capsys, tmp_path):
    target = tmp_path / "real" / "model.pt"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    rc, _, err = run_cli(capsys, "train", files["train"], "-ps", PS, "-s", link, "-q")
    assert rc == 0, err
    assert link.is_symlink() and os_readlink(link) == target
    assert target.read_bytes() != b"old" and GRU4Rec.load(link).model is not None


def os_readlink(path: Path) -> Path:
    import os
    return Path(os.readlink(path))


def test_a_folder_where_no_file_can_be_created_is_found_before_the_work(monkeypatch, tmp_path):
    """check_writable probes by creating (and removing) a file: a folder that passes
    os.access but refuses files (as /proc does, even to root) is refused up front."""
    import builtins

    real_open = builtins.open

    def refusing_open(path, mode="r", *a, **k):
        if ".fastgru4rec-probe." in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'm.pt'}: cannot create a "
                                         f"file in {tmp_path}"):
        check_writable(tmp_path / "m.pt")
    monkeypatch.setattr(builtins, "open", real_open)
    assert check_writable(tmp_path / "m.pt") == tmp_path / "m.pt"
    assert list(tmp_path.iterdir()) == []        # the probe is removed


def test_preprocess_checks_every_output_and_its_input_before_reading(capsys, monkeypatch,
                                                                     tmp_path):
    from fastgru4rec import preprocess

    monkeypatch.setattr(preprocess, "_read_clicks", _fail_if_called)
    clicks = tmp_path / "clicks.dat"
    clicks.write_text("1,2014-04-07T10:51:09.277Z,214,0\n")
    out = tmp_path / "out"
    (out / "train_tr.tsv").mkdir(parents=True)       # the third output is a folder
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", clicks, out, "--quiet"),
                     "preprocess", f"cannot write {out / 'train_tr.tsv'}", "is a directory")
    assert sorted(p.name for p in out.iterdir()) == ["train_tr.tsv"]   # nothing written
    inside = tmp_path / "data"
    inside.mkdir()
    same = inside / "train_full.tsv"                  # the input where an output goes
    same.write_text(clicks.read_text())
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", same, inside, "--quiet"),
                     "preprocess", f"cannot write {same}", "is an input of this command")
    assert same.read_text() == clicks.read_text()


def test_bench_writes_its_files_even_when_stdout_fails(capsys, monkeypatch, tmp_path):
    from fastgru4rec import bench

    def full_stdout(result):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench, "format_table", full_stdout)
    out_json = tmp_path / "out.json"
    rc, out, err = run_cli(capsys, "bench", "--synthetic", SYNTH, "--max-steps", "2",
                           "--warmup-steps", "0", "-ps", PS, "--json", out_json, "-q")
    assert rc == 2 and "No space left" in err
    assert json.loads(out_json.read_text())["runs"]      # the numbers measured are kept


def test_bench_epochs_synthetic_and_data_conflicts(files, capsys):
    assert_cli_error(run_cli(capsys, "bench", files["train"], "--synthetic", SYNTH, "-q"), "bench",
                     "--synthetic", "DATA")
    assert_cli_error(run_cli(capsys, "bench", "--synthetic", SYNTH, "--epochs", "2", "-ps", PS,
                             "-q"), "bench", "--epochs 2", "n_epochs=1", "disagree")
    assert_cli_error(run_cli(capsys, "bench", "--synthetic", SYNTH, "--warmup-steps",
                             "100000000000000000000", "-q"), "bench", "--warmup-steps must be in")


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_eval_batch_size_beyond_the_limit_is_named_up_front(files, capsys, monkeypatch, command):
    monkeypatch.setattr(GRU4Rec, "fit", _fail_if_called)
    monkeypatch.setattr(GRU4Rec, "evaluate", _fail_if_called)
    first = [files["model"]] if command == "evaluate" else [files["train"], "-ps", PS, "-t"]
    for size in ("2147483648", "99999999999999999999"):
        assert_cli_error(run_cli(capsys, command, *first, files["test"], "--eval-batch-size", size,
                                 "-q"), command,
                     "--eval-batch-size must be an integer in [1, ", size)


def test_closed_stdout_is_not_a_crash(files, monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)       # what Python gives a process run with `>&-`
    assert main(["recommend", str(files["model"]), "i1", "-k", "3"]) == 0


def test_baselines_gru4rec_arguments_checked_before_the_baselines(files, capsys, monkeypatch):
    from fastgru4rec import baselines

    monkeypatch.setattr(baselines.POP, "fit", _fail_if_called)
    assert_cli_error(run_cli(capsys, "baselines", files["train"], files["test"], "--only", "pop",
                             "--gru4rec", PS, "--device", "bogus", "-q"),
                     "baselines", "device='bogus'")
    assert_cli_error(run_cli(capsys, "baselines", files["single"], files["test"], "--only", "pop",
                             "--gru4rec", PS, "-q"), "baselines", "2 or more events")


def test_param_files_json_by_content_and_a_byte_order_mark(tmp_path):
    txt = tmp_path / "params.txt"
    txt.write_text(json.dumps({"layers": [16], "loss": "bpr-max"}))
    assert read_param_file(txt) == {"layers": [16], "loss": "bpr-max"}
    py = tmp_path / "params.py"
    py.write_text("\ufeffgru4rec_params = {'layers': [16]}\n", encoding="utf-8")
    assert read_param_file(py) == {"layers": [16]}


def test_a_folder_is_named_as_such_not_as_missing(files, tmp_path):
    assert "is a directory, not a model file" in api_error(DataError, GRU4Rec.load, tmp_path)
    assert "is a directory, not a parameter file" in api_error(ConfigError, read_param_file,
                                                               tmp_path)


def test_model_with_wrong_shapes_says_what_is_wrong(files, tmp_path):
    import torch

    payload = torch.load(files["model"], weights_only=True)
    payload["state_dict"]["gru.0.weight_hh"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    msg = api_error(DataError, GRU4Rec.load, bad)
    assert "inconsistent model file" in msg and "gru.0.weight_hh" in msg and "size mismatch" in msg


def test_huge_thread_counts_and_overlong_names_are_one_line_errors(files, capsys, monkeypatch,
                                                                  tmp_path):
    monkeypatch.setattr(GRU4Rec, "fit", _fail_if_called)
    assert_cli_error(run_cli(capsys, "evaluate", files["model"], files["test"], "--threads",
                             "99999999999999999999"), "evaluate", "--threads must be in [1, ")
    long = tmp_path / ("a" * 300 + ".pt")
    assert_cli_error(run_cli(capsys, "train", files["train"], "-ps", PS, "-s", long, "-q"),
                     "train", "cannot write", "name too long")


def test_missing_column_names_the_command_line_option(files, capsys, tmp_path):
    p = write_tsv(tmp_path / "t.tsv", [("s", "i", 1)], header=("SessionId", "ItemId", "Stamp"))
    assert_cli_error(run_cli(capsys, "train", p, "-ps", PS, "-q"), "train",
                     "missing column 'Time'", "time_key= (--time-key)")


def test_demo_and_preprocess_name_their_options(capsys, tmp_path):
    assert_cli_error(run_cli(capsys, "demo", "--epochs", "0"), "demo", "--epochs must be positive")
    clicks = tmp_path / "clicks.dat"
    clicks.write_text("1,2014-04-07T10:51:09.277Z,214,0\n")
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", clicks, tmp_path / "o",
                             "--min-item-support", "0", "--quiet"), "preprocess",
                     "--min-item-support must be an integer >= 1")


def test_preprocess_names_the_line_of_a_bad_timestamp(capsys, tmp_path):
    clicks = tmp_path / "clicks.dat"
    clicks.write_text("1,2014-04-07T10:51:09.277Z,214,0\n1,2014-04-07T10:52:09.277Z,215,0\n"
                      "2,notatime,216,0\n")
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", clicks, tmp_path / "o", "--quiet"),
                     "preprocess", "line 3: timestamp 'notatime' is not ISO 8601")
    clicks.write_text("1,2014-04-07T10:51:09.277Z,214,0\n1,2014-04-07T10:52:09.277Z,215\n")
    assert_cli_error(run_cli(capsys, "preprocess", "rsc15", clicks, tmp_path / "o", "--quiet"),
                     "preprocess", "line 2: 3 comma-separated fields, expected 4")
