"""Tests of fastgru4rec.preprocess on a small hand-made clicks file.

The data (days d0..d5 from 2014-04-01T00:00:00Z = 1396310400; item letters below are mapped to
numeric RSC15-like ids) and what each step must do, worked out by hand, with
min_item_support=2:

  S1  [A]                              length 1 -> dropped in step 1
  S2  [A, B, B]          d0            A then has 1 event (S1 is gone) -> A dropped -> [B, B]
  S3  [C, R]             d0            R has 1 event -> dropped -> S3 = [C] -> dropped in step 3
  S4  [C, B, D]          d1            train
  S5  [D, E]             d3            train
  S6  [B, C]             d4+500..d4+2000   ends after tmax-1day -> test (starts before it)
  S7  [E, B]             d4+900..d4+950    ends before tmax-1day -> train
  S8  [F, B, D]          d5                test; F is not in train -> [B, D]
  S9  [F, B]             d5                test; F dropped -> [B] -> dropped
  S10 [E, E]             d5 (+.123 ms)     test
  S11 [G, G, B]          d4+100..d4+300    train (G: 2 events, kept by the filter)

tmax = d5+1000 (S8), so test = sessions ending at or after d4+1000.
train_full = S2, S4, S5, S7, S11; test = S6, S8, S10.
Inside train_full, tmax = d4+950 (S7): train_valid = sessions ending >= d3+950 = S7, S11;
S11 then loses G (not in train_tr) and is left with 1 event -> dropped. train_tr = S2, S4, S5.
C keeps 1 event in train_full (S3 gone): items are not re-filtered after step 3.
"""
import argparse
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fastgru4rec.errors import ConfigError, DataError
from fastgru4rec.preprocess import format_stats, preprocess_rsc15, register_cli

T0 = 1396310400  # 2014-04-01T00:00:00Z
D = 86400
ITEM = {k: str(214500000 + n) for n, k in enumerate("ABCDEFGR")}

# (session, item letter, seconds after T0), in FILE order: sessions interleaved on purpose.
CLICKS = [
    (1, "A", 0),
    (2, "A", 10), (3, "C", 100),
    (2, "B", 20), (2, "B", 30),
    (3, "R", 110),
    (4, "C", D), (4, "B", D + 5), (4, "D", D + 9),
    (5, "D", 3 * D), (5, "E", 3 * D + 10),
    (11, "G", 4 * D + 100), (11, "G", 4 * D + 200),
    (6, "B", 4 * D + 500),
    (11, "B", 4 * D + 300),
    (7, "E", 4 * D + 900), (7, "B", 4 * D + 950),
    (6, "C", 4 * D + 2000),
    (8, "F", 5 * D), (9, "F", 5 * D + 100), (9, "B", 5 * D + 200),
    (10, "E", 5 * D + 300.123), (10, "E", 5 * D + 400),
    (8, "B", 5 * D + 500), (8, "D", 5 * D + 1000),
]

# Which (session, item) events each output keeps, in file order.
EXPECTED = {
    "train_full": {2: "BB", 4: "CBD", 5: "DE", 7: "EB", 11: "GGB"},
    "test": {6: "BC", 8: "BD", 10: "EE"},
    "train_tr": {2: "BB", 4: "CBD", 5: "DE"},
    "train_valid": {7: "EB"},
}
EXPECTED_COUNTS = {
    "input": {"events": 25, "sessions": 11, "items": 8},
    "filtered": {"events": 21, "sessions": 9, "items": 6},
    "train_full": {"events": 12, "sessions": 5, "items": 5},
    "test": {"events": 6, "sessions": 3, "items": 4},
    "train_tr": {"events": 7, "sessions": 3, "items": 4},
    "train_valid": {"events": 2, "sessions": 1, "items": 2},
}


def iso(seconds_after_t0: float) -> str:
    dt = datetime.fromtimestamp(T0 + seconds_after_t0, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def write_dat(path: Path) -> Path:
    # yoochoose-clicks.dat: no header, SessionId,Timestamp,ItemId,Category
    path.write_text("".join(f"{s},{iso(t)},{ITEM[i]},0\n" for s, i, t in CLICKS))
    return path


def write_tsv(path: Path) -> Path:
    lines = ["SessionId\tItemId\tTime"] + [f"{s}\t{ITEM[i]}\t{T0 + t:.3f}" for s, i, t in CLICKS]
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_lines(name: str):
    """The rows of CLICKS that output `name` keeps, formatted as written."""
    keep = {s: list(items) for s, items in EXPECTED[name].items()}
    lines = ["SessionId\tItemId\tTime"]
    for s, i, t in CLICKS:
        if keep.get(s) and keep[s][0] == i:
            keep[s].pop(0)
            lines.append(f"{s}\t{ITEM[i]}\t{T0 + t:.3f}")
    assert all(not v for v in keep.values())
    return lines


@pytest.mark.parametrize("fmt", ["dat", "tsv"])
def test_hand_made_split(tmp_path, fmt):
    src = write_dat(tmp_path / "clicks.dat") if fmt == "dat" else write_tsv(tmp_path / "clicks.tsv")
    out = tmp_path / "out"
    stats = preprocess_rsc15(src, out, min_item_support=2, progress=False)
    assert stats == EXPECTED_COUNTS
    for name in EXPECTED:
        text = (out / f"{name}.tsv").read_text()
        assert text.endswith("\n")
        assert text.splitlines() == expected_lines(name), name
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.tsv" for n in EXPECTED)  # no temp files left


def test_output_written_in_chunks_is_the_same(tmp_path, monkeypatch):
    # the writer joins at most _WRITE_ROWS rows at a time: chunks of 3 rows, the same bytes
    import fastgru4rec.preprocess as P

    monkeypatch.setattr(P, "_WRITE_ROWS", 3)
    out = tmp_path / "out"
    preprocess_rsc15(write_tsv(tmp_path / "clicks.tsv"), out, min_item_support=2, progress=False)
    for name in EXPECTED:
        assert (out / f"{name}.tsv").read_text().splitlines() == expected_lines(name), name


def test_outputs_readable_and_timestamps(tmp_path):
    from fastgru4rec.data import read_sessions
    out = tmp_path / "out"
    preprocess_rsc15(write_dat(tmp_path / "clicks.dat"), out, min_item_support=2, progress=False)
    train = read_sessions(out / "train_full.tsv")
    test = read_sessions(out / "test.tsv", item_map=train)
    assert test.n_unknown_events == 0
    assert (test.n_sessions, test.n_events) == (3, 6)
    # ISO timestamps (UTC) -> unix seconds, millisecond precision kept
    assert (out / "test.tsv").read_text().count(f"{T0 + 5 * D + 300.123:.3f}") == 1
    assert float(f"{T0 + 5 * D + 300.123:.3f}") in test.times.tolist()


def test_default_support_leaves_no_training_data(tmp_path):
    # With min_item_support=5 only B survives; only S2 [B, B] is left, it lies in the last day
    # of the data, so nothing is left for training.
    with pytest.raises(DataError) as e:
        preprocess_rsc15(write_dat(tmp_path / "clicks.dat"), tmp_path / "out", progress=False)
    assert "clicks.dat" in str(e.value) and "nothing is left for training" in str(e.value)


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        preprocess_rsc15(tmp_path / "nope.dat", tmp_path / "out", progress=False)
    bad = tmp_path / "bad.dat"
    bad.write_text("1,yesterday,214,0\n")
    with pytest.raises(DataError, match="bad.dat"):
        preprocess_rsc15(bad, tmp_path / "out", progress=False)
    with pytest.raises(ConfigError):
        preprocess_rsc15(bad, tmp_path / "out", min_item_support=0, progress=False)


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fastgru4rec")
    register_cli(parser.add_subparsers(dest="command"))
    src = write_dat(tmp_path / "clicks.dat")
    args = parser.parse_args(["preprocess", "rsc15", str(src), str(tmp_path / "out"),
                              "--min-item-support", "2", "--quiet"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == format_stats(EXPECTED_COUNTS).strip()
    assert "train_valid" in printed and (tmp_path / "out" / "train_tr.tsv").exists()


def test_parquet_input_and_column_names(tmp_path):
    # the same events as a Parquet file with other column names: the same outputs, byte for byte
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sid": [str(s) for s, _, _ in CLICKS],
                             "iid": [ITEM[i] for _, i, _ in CLICKS],
                             "ts": [float(T0 + t) for _, _, t in CLICKS]}),
                   tmp_path / "clicks.parquet")
    stats = preprocess_rsc15(tmp_path / "clicks.parquet", tmp_path / "out", min_item_support=2,
                             progress=False, session_key="sid", item_key="iid", time_key="ts")
    assert stats == EXPECTED_COUNTS
    for name in EXPECTED:
        assert (tmp_path / "out" / f"{name}.tsv").read_text().splitlines() == expected_lines(name)


def test_ids_are_written_as_they_are(tmp_path):
    # ids are opaque strings: a '"', spaces, a leading zero or non-ASCII text come back as read;
    # the output never quotes (the TSV reader reads quotes literally)
    from fastgru4rec.data import read_sessions

    odd = {"A": 'x"1', "B": "0 7", "C": "élan", "D": '"q"', "E": "e", "F": "f", "G": "g",
           "R": "r"}
    src = tmp_path / "odd.tsv"
    src.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"s{s}\t{odd[i]}\t{T0 + t:.3f}\n" for s, i, t in CLICKS), encoding="utf-8")
    preprocess_rsc15(src, tmp_path / "out", min_item_support=2, progress=False)
    lines = (tmp_path / "out" / "train_full.tsv").read_text(encoding="utf-8").splitlines()
    want = [line.split("\t") for line in expected_lines("train_full")[1:]]
    back = {v: k for k, v in ITEM.items()}
    assert [line.split("\t") for line in lines[1:]] == [
        [f"s{s}", odd[back[i]], t] for s, i, t in want]
    train = read_sessions(tmp_path / "out" / "train_full.tsv")
    assert set(train.item_ids) == {odd[k] for k in "BCDEG"}


def test_ids_that_the_output_cannot_hold_are_refused_before_writing(tmp_path):
    src = tmp_path / "clicks.dat"
    lines = [f"{s},{iso(t)},{ITEM[i]},0" for s, i, t in CLICKS]
    lines[4] = lines[4].replace(ITEM["B"], "21\t4")        # a tab inside an item id
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"clicks.dat: item id '21\\t4' holds a tab or a line "
                                        r"break"):
        preprocess_rsc15(src, tmp_path / "out", min_item_support=2, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scale, shown", [(1000, "1.397e+12"), (10 ** 9, "1.397e+18")])
def test_times_not_in_seconds_are_refused(tmp_path, scale, shown):
    # milliseconds or nanoseconds: the last-day split (86,400 s) would be minutes or less
    src = tmp_path / "clicks.tsv"
    src.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"{s}\t{ITEM[i]}\t{int((T0 + t) * scale)}\n" for s, i, t in CLICKS))
    with pytest.raises(DataError, match=rf"clicks.tsv: \|Time\| reaches {re.escape(shown)}, beyond Unix "
                                        r"seconds .* give the times in seconds"):
        preprocess_rsc15(src, tmp_path / "out", min_item_support=2, progress=False)


def test_cli_column_options(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fastgru4rec")
    register_cli(parser.add_subparsers(dest="command"))
    src = tmp_path / "clicks.tsv"
    src.write_text(write_tsv(tmp_path / "x.tsv").read_text().replace(
        "SessionId\tItemId\tTime", "session\titem\tts", 1))
    args = parser.parse_args(["preprocess", "rsc15", str(src), str(tmp_path / "out"),
                              "--min-item-support", "2", "--quiet", "--session-key", "session",
                              "--item-key", "item", "--time-key", "ts"])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "test.tsv").read_text().splitlines() == expected_lines("test")


def test_session_ending_exactly_one_day_before_the_last_event_goes_to_test(tmp_path):
    # The rule: test = sessions whose last event time is >= tmax - 86400 (inclusive bound).
    # By hand, with min_item_support=1 (no item is dropped):
    #   s1 [x, y]  0, 10                   ends long before          -> train_full
    #   s2 [x, y]  500, 1000               ends at exactly tmax - D  -> test (the boundary)
    #   s3 [y, x]  999, 999.999            ends 1 ms before tmax - D -> train_full
    #   s4 [x, y]  D + 900, D + 1000       holds tmax = D + 1000     -> test
    rows = [("s1", "x", 0), ("s1", "y", 10), ("s2", "x", 500), ("s2", "y", 1000),
            ("s3", "y", 999), ("s3", "x", 999.999), ("s4", "x", D + 900), ("s4", "y", D + 1000)]
    src = tmp_path / "clicks.tsv"
    src.write_text("SessionId\tItemId\tTime\n"
                   + "".join(f"{s}\t{i}\t{T0 + t:.3f}\n" for s, i, t in rows))
    stats = preprocess_rsc15(src, tmp_path / "out", min_item_support=1, progress=False)
    sessions = {name: [line.split("\t")[0] for line in
                       (tmp_path / "out" / f"{name}.tsv").read_text().splitlines()[1:]]
                for name in ("train_full", "test")}
    assert sessions["test"] == ["s2", "s2", "s4", "s4"]
    assert sessions["train_full"] == ["s1", "s1", "s3", "s3"]
    assert stats["test"] == {"events": 4, "sessions": 2, "items": 2}


def test_times_are_written_rounded_to_the_millisecond_not_truncated(tmp_path):
    # Times given with 3 decimals must be written back as given. 1.005, -1.005 and 1.001 are
    # not exact in binary: times * 1000 is 1004.999..., -1004.999... and 1000.999..., which
    # truncation would write as 1.004, -1.004 and 1.000. Small times (seconds near the epoch)
    # are fine: the split only needs seconds. By hand (min_item_support=1): tmax = 200000.5,
    # tmax - D = 113600.5, so s1 and s2 are train_full and s3 is test.
    rows = [("s1", "x", "-1.005"), ("s1", "y", "1.005"),
            ("s2", "x", "1.001"), ("s2", "y", "2.5"),
            ("s3", "x", "200000.25"), ("s3", "y", "200000.5")]
    src = tmp_path / "clicks.tsv"
    src.write_text("SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{t}\n" for s, i, t in rows))
    preprocess_rsc15(src, tmp_path / "out", min_item_support=1, progress=False)
    assert (tmp_path / "out" / "train_full.tsv").read_text().splitlines() == [
        "SessionId\tItemId\tTime", "s1\tx\t-1.005", "s1\ty\t1.005", "s2\tx\t1.001",
        "s2\ty\t2.500"]
    assert (tmp_path / "out" / "test.tsv").read_text().splitlines() == [
        "SessionId\tItemId\tTime", "s3\tx\t200000.250", "s3\ty\t200000.500"]
