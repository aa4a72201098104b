"""Tests of fastgru4rec.data: grouping, ordering, id handling, item maps, and error messages."""
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from fastgru4rec.data import SessionData, read_events, read_sessions, require_trainable
from fastgru4rec.errors import DataError

from conftest import shared_path

BIG = "12345678901234567890"  # does not fit int64 either

# (SessionId, ItemId, Time) in file order. Hand-worked expectations:
#   session first times: b 1.0, a 3.0, c 1.0, d 0.5  -> order d, b, c (tie with b: b appears
#   first), a.  Inside a: both events at 3.0 -> file order x, y.  Inside b: y (1.0), 007 (5.0).
#   Item map (first appearance): 007, x, y, BIG, z.
ROWS = [
    ("b", "007", "5.0"),
    ("a", "x", "3"),
    ("b", "y", "1.0"),
    ("a", "y", "3.0"),
    ("c", "x", "1"),
    ("c", BIG, "2.25"),
    ("d", "z", "0.5"),
]


def write_text(path, rows, sep="\t", header=("SessionId", "ItemId", "Time")):
    lines = [sep.join(header)] if header is not None else []
    lines += [sep.join(r) for r in rows]
    Path(path).write_text("\n".join(lines) + "\n")
    return path


def check_example(d: SessionData):
    assert d.n_sessions == 4 and d.n_events == 7 and d.n_items == 5
    assert list(d.session_ids) == ["d", "b", "c", "a"]
    assert list(d.item_ids) == ["007", "x", "y", BIG, "z"]
    assert d.offsets.tolist() == [0, 1, 3, 5, 7]
    assert d.session_lengths.tolist() == [1, 2, 2, 2]
    assert [d.item_ids[i] for i in d.items] == ["z", "y", "007", "x", BIG, "x", "y"]
    assert d.times.tolist() == [0.5, 1.0, 5.0, 1.0, 2.25, 3.0, 3.0]
    assert d.start_times.tolist() == [0.5, 1.0, 1.0, 3.0]
    assert d.supports.tolist() == [1, 2, 2, 1, 1]
    assert d.n_unknown_events == 0
    assert d.offsets.dtype == np.int64 and d.items.dtype == np.int64
    assert d.times.dtype == np.float64 and d.supports.dtype == np.int64
    assert d.session_ids.dtype == object and d.item_ids.dtype == object
    assert all(type(s) is str for s in d.item_ids) and all(type(s) is str for s in d.session_ids)
    assert d.item_index() == {"007": 0, "x": 1, "y": 2, BIG: 3, "z": 4}
    assert d.item_index() is d.item_index()  # cached


def same(d1: SessionData, d2: SessionData):
    for attr in ("offsets", "items", "times", "supports"):
        np.testing.assert_array_equal(getattr(d1, attr), getattr(d2, attr), err_msg=attr)
    assert list(d1.session_ids) == list(d2.session_ids)
    assert list(d1.item_ids) == list(d2.item_ids)
    assert d1.n_unknown_events == d2.n_unknown_events


# --------------------------------------------------------------------------------------------
# grouping and ordering
# --------------------------------------------------------------------------------------------

def test_tsv_ordering_and_ids(tmp_path):
    p = write_text(tmp_path / "train.tsv", ROWS)
    d = read_sessions(p)
    check_example(d)
    assert d.source == str(p)
    require_trainable(d)


def test_all_sources_identical(tmp_path):
    ref = read_sessions(write_text(tmp_path / "train.tsv", ROWS))
    same(ref, read_sessions(write_text(tmp_path / "train.csv", ROWS, sep=",")))
    same(ref, read_sessions(write_text(tmp_path / "train.txt", ROWS, sep=";"), sep=";"))
    df = pd.DataFrame(ROWS, columns=["SessionId", "ItemId", "Time"]).astype({"Time": float})
    same(ref, read_sessions(df))
    same(ref, read_sessions(pa.Table.from_pandas(df, preserve_index=False)))
    df.to_parquet(tmp_path / "train.parquet", index=False)
    same(ref, read_sessions(tmp_path / "train.parquet"))
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "train.pq")
    same(ref, read_sessions(str(tmp_path / "train.pq")))
    s, i, t = zip(*ROWS)
    same(ref, SessionData.from_arrays(list(s), np.array(i), np.array(t, dtype=float)))
    # gzip-compressed text
    import gzip
    with gzip.open(tmp_path / "train.tsv.gz", "wt") as f:
        f.write((tmp_path / "train.tsv").read_text())
    same(ref, read_sessions(tmp_path / "train.tsv.gz"))


def test_read_events_table(tmp_path):
    t = read_events(write_text(tmp_path / "e.tsv", ROWS))
    assert t.column_names == ["session", "item", "time"]
    assert t.schema.field("session").type == pa.string()
    assert t.schema.field("item").type == pa.string()
    assert t.schema.field("time").type == pa.float64()
    assert t.column("item").to_pylist() == [r[1] for r in ROWS]  # file order kept


def test_custom_keys_and_extra_columns(tmp_path):
    rows = [(r[0], "cat", r[2], r[1]) for r in ROWS]
    p = write_text(tmp_path / "x.tsv", rows, header=("sess", "Category", "ts", "item"))
    check_example(read_sessions(p, session_key="sess", item_key="item", time_key="ts"))


def test_numeric_looking_ids_stay_strings(tmp_path):
    # Leading zeros are kept; ids beyond int32/int64 are kept exactly.
    rows = [("0001", "007", "1"), ("0001", "7", "2"), ("1", "9999999999999", "3"), ("1", "007", "4")]
    d = read_sessions(write_text(tmp_path / "ids.csv", rows, sep=","))
    assert list(d.session_ids) == ["0001", "1"]
    assert list(d.item_ids) == ["007", "7", "9999999999999"]
    assert d.supports.tolist() == [2, 1, 1]
    # Integer columns (DataFrame / Parquet) are converted to their decimal strings.
    df = pd.DataFrame({"SessionId": np.array([11272202, 11272202], dtype=np.int64),
                       "ItemId": np.array([2147483648123, 214568124], dtype=np.int64),
                       "Time": [1.0, 2.0]})
    d = read_sessions(df)
    assert list(d.item_ids) == ["2147483648123", "214568124"] and list(d.session_ids) == ["11272202"]
    df.to_parquet(tmp_path / "ints.parquet", index=False)
    same(d, read_sessions(tmp_path / "ints.parquet"))


def test_unsorted_file_and_ties():
    # Sessions interleaved and out of time order in the file; equal times keep file order.
    s = ["s1", "s2", "s1", "s2", "s3", "s1", "s3"]
    i = ["a", "b", "c", "d", "e", "f", "g"]
    t = [10, 2, 5, 2, 2, 5, 1]
    d = SessionData.from_arrays(s, i, t)
    # first times: s1 5, s2 2, s3 1 -> s3, s2, s1
    assert list(d.session_ids) == ["s3", "s2", "s1"]
    assert [d.item_ids[k] for k in d.items] == ["g", "e", "b", "d", "c", "f", "a"]
    assert d.times.tolist() == [1, 2, 2, 2, 5, 5, 10]


def reference_grouping(s, i, t):
    """Plain-Python version of the ordering rules, to compare against."""
    events = {}
    for pos, (ss, ii, tt) in enumerate(zip(s, i, t)):
        events.setdefault(ss, []).append((tt, pos, ii))
    sessions = sorted(events, key=lambda k: (min(e[0] for e in events[k]), events[k][0][1]))
    return [(k, [(e[2], e[0]) for e in sorted(events[k])]) for k in sessions]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 8), st.integers(0, 5)),
                min_size=1, max_size=40))
def test_grouping_matches_reference(rows):
    s = [f"s{r[0]}" for r in rows]
    i = [f"i{r[1]}" for r in rows]
    t = [float(r[2]) for r in rows]
    d = SessionData.from_arrays(s, i, t)
    got = [(d.session_ids[k], [(d.item_ids[d.items[e]], d.times[e])
                               for e in range(d.offsets[k], d.offsets[k + 1])])
           for k in range(d.n_sessions)]
    assert got == reference_grouping(s, i, t)
    assert list(d.item_ids) == list(dict.fromkeys(i))
    assert d.supports.tolist() == [i.count(x) for x in d.item_ids]


# --------------------------------------------------------------------------------------------
# mapping with a training item map
# --------------------------------------------------------------------------------------------

def test_mapping_with_training_map(tmp_path):
    train = read_sessions(write_text(tmp_path / "train.tsv", ROWS))
    test_rows = [
        ("t1", "x", "10"), ("t1", "unknown1", "11"), ("t1", BIG, "12"),
        ("t2", "nope", "5"), ("t2", "nope", "6"),          # all unknown: the session vanishes
        ("t3", "007", "7"), ("t3", "new", "8"),              # shrinks to 1 event, still kept
    ]
    test = read_sessions(write_text(tmp_path / "test.tsv", test_rows), item_map=train)
    assert test.n_unknown_events == 4
    assert test.n_events == 3
    assert list(test.session_ids) == ["t3", "t1"]            # by first (known) event time
    assert [test.item_ids[k] for k in test.items] == ["007", "x", BIG]
    assert test.items.tolist() == [0, 1, 3]                   # the training indices
    assert list(test.item_ids) == list(train.item_ids)
    np.testing.assert_array_equal(test.supports, train.supports)
    assert test.session_lengths.tolist() == [1, 2]


def test_no_known_item(tmp_path):
    train = read_sessions(write_text(tmp_path / "train.tsv", ROWS))
    p = write_text(tmp_path / "test.tsv", [("t", "q", "1"), ("t", "r", "2"), ("u", "q", "3")])
    with pytest.raises(DataError) as e:
        read_sessions(p, item_map=train)
    msg = str(e.value)
    assert msg.startswith(str(p) + ":")
    assert "none of its items is in the training item map (0 of 3 events known)" in msg


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

def error_of(*args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        read_sessions(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, "messages are one line"
    return msg


def test_missing_file(tmp_path):
    p = tmp_path / "train.tsv"
    assert error_of(p) == f"{p}: file not found"


def test_missing_column(tmp_path):
    p = write_text(tmp_path / "train.tsv", [("1", "2", "3")], header=("SessionId", "ItemId", "Stamp"))
    msg = error_of(p)
    assert msg == (f"{p}: missing column 'Time' (columns found: SessionId, ItemId, Stamp); "
                   "set time_key= (--time-key)")


def test_wrong_separator_hint(tmp_path):
    # A comma-separated file named .tsv: the header is a single column when split on tabs.
    p = write_text(tmp_path / "train.tsv", [("1", "2", "3")], sep=",")
    msg = error_of(p)
    assert str(p) in msg and "missing columns 'SessionId', 'ItemId', 'Time'" in msg
    assert "single column" in msg and "sep=" in msg


@pytest.mark.parametrize("bad, shown", [("abc", "'abc'"), ("", "empty value"), ("nan", "'nan'"),
                                        ("inf", "'inf'"), ("1,5", "'1,5'")])
def test_non_numeric_time(tmp_path, bad, shown):
    rows = [("s", "i", str(k)) for k in range(20)]
    rows[16] = ("s", "i", bad)  # data row 17
    p = write_text(tmp_path / "train.tsv", rows)
    msg = error_of(p)
    assert msg == f"{p}: row 17, column 'Time': {shown} is not a number"


def test_non_numeric_time_dataframe():
    df = pd.DataFrame({"SessionId": ["a", "a"], "ItemId": ["x", "y"], "Time": [1.0, np.nan]})
    assert error_of(df) == "<DataFrame>: row 2, column 'Time': missing value is not a number"
    df = pd.DataFrame({"SessionId": ["a", "a"], "ItemId": ["x", "y"], "Time": ["1", "x2"]})
    assert error_of(df) == "<DataFrame>: row 2, column 'Time': 'x2' is not a number"


def test_empty_file_and_header_only(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text("")
    assert error_of(p) == f"{p}: no events (empty file)"
    p2 = write_text(tmp_path / "header.tsv", [])
    assert error_of(p2).startswith(f"{p2}: no events (empty file")
    df = pd.DataFrame({"SessionId": [], "ItemId": [], "Time": []})
    assert error_of(df).startswith("<DataFrame>: no events")


def test_null_and_empty_ids(tmp_path):
    df = pd.DataFrame({"SessionId": ["a", None, "b"], "ItemId": ["x", "y", "z"], "Time": [1.0, 2, 3]})
    assert error_of(df) == "<DataFrame>: row 2, column 'SessionId': missing value"
    df = pd.DataFrame({"SessionId": ["a", "a", "b"], "ItemId": ["x", "y", np.nan], "Time": [1.0, 2, 3]})
    assert error_of(df) == "<DataFrame>: row 3, column 'ItemId': missing value"
    p = write_text(tmp_path / "train.tsv", [("a", "x", "1"), ("a", "", "2")])
    assert error_of(p) == f"{p}: row 2, column 'ItemId': empty value"
    tbl = pa.table({"SessionId": pa.array([1, None], pa.int64()), "ItemId": ["x", "y"], "Time": [1.0, 2.0]})
    assert error_of(tbl) == "<Table>: row 2, column 'SessionId': missing value"


def test_wrong_number_of_fields(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text("SessionId\tItemId\tTime\na\tx\t1\na\ty\nb\tz\t3\n")
    msg = error_of(p)
    assert msg.startswith(f"{p}: row 2 has 2 fields, expected 3")


def test_unknown_extension(tmp_path):
    p = write_text(tmp_path / "train.json", ROWS)
    msg = error_of(p)
    assert str(p) in msg
    for ext in (".tsv", ".csv", ".parquet", "sep="):
        assert ext in msg
    # With an explicit separator any extension is read as text.
    check_example(read_sessions(p, sep="\t"))


def test_parquet_missing_column(tmp_path):
    p = tmp_path / "t.parquet"
    pd.DataFrame({"SessionId": ["a"], "ItemId": ["x"], "ts": [1.0]}).to_parquet(p, index=False)
    assert error_of(p) == (f"{p}: missing column 'Time' (columns found: SessionId, ItemId, ts); "
                           "set time_key= (--time-key)")


def test_not_a_source():
    with pytest.raises(DataError):
        read_events(12)


def test_require_trainable():
    d = SessionData.from_arrays(["a", "b"], ["x", "y"], [1.0, 2.0], source="<arrays>")
    with pytest.raises(DataError) as e:
        require_trainable(d)
    assert str(e.value) == "<arrays>: no session has 2 or more events; nothing to train on"
    one = SessionData.from_arrays(["a", "a", "b"], ["x", "y", "x"], [1.0, 2.0, 3.0])
    require_trainable(one)
    # in-batch negatives only: a step needs a second session of 2 or more events
    with pytest.raises(DataError, match="only one session has 2 or more events; with n_sample=0"):
        require_trainable(one, min_lanes=2)
    require_trainable(SessionData.from_arrays(["a", "a", "b", "b"], ["x", "y", "x", "y"],
                                              [1.0, 2.0, 3.0, 4.0]), min_lanes=2)


def test_inconsistent_session_data():
    with pytest.raises(DataError):
        SessionData(offsets=[0, 3], items=[0, 1], times=[1.0, 2.0], session_ids=["a"],
                    item_ids=["x", "y"], supports=[1, 1])


# --------------------------------------------------------------------------------------------
# the real RSC15 sample (../shared/data)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsc15_train():
    return read_sessions(shared_path("rsc15-sample", "train_full.tsv"))


def test_rsc15_sample_train_counts(rsc15_train):
    d = rsc15_train
    assert (d.n_events, d.n_sessions, d.n_items) == (99_943, 24_761, 13_133)
    assert d.supports.sum() == d.n_events
    assert np.all(np.diff(d.start_times) >= 0)
    assert d.session_lengths.min() >= 2
    # times are non-decreasing inside every session
    inside = np.ones(d.n_events, dtype=bool)
    inside[d.offsets[:-1]] = False
    assert np.all(np.diff(d.times)[inside[1:]] >= 0)


def test_rsc15_sample_test_mapped(rsc15_train):
    t = read_sessions(shared_path("rsc15-sample", "test.tsv"), item_map=rsc15_train)
    assert (t.n_events, t.n_sessions, t.n_unknown_events) == (7_299, 1_703, 0)
    assert len(np.unique(t.items)) == 2_875
    assert t.n_items == rsc15_train.n_items


def test_dataframe_string_that_is_not_unicode_is_named():
    """A Python string holding a lone surrogate cannot become UTF-8 (Arrow's strings): a
    DataError naming the row and column, not pyarrow's UnicodeEncodeError."""
    df = pd.DataFrame({"SessionId": ["a", "a", "b", "b"],
                       "ItemId": pd.Series(["x", "y\ud800", "x", "y"], dtype=object),
                       "Time": [1, 2, 3, 4]})
    with pytest.raises(DataError, match=r"row 2, column 'ItemId': not valid Unicode text"):
        read_sessions(df)


def test_reads_hand_pyarrows_unused_memory_back(tmp_path, monkeypatch):
    """pyarrow's pool keeps the pages of the freed table and intermediates (0.7 GiB of RSS
    after a 12M-event file): every read ends by handing them back (release_unused), once."""
    calls = []
    real_pool = pa.default_memory_pool()

    class CountingPool:
        def release_unused(self):
            calls.append(1)
            real_pool.release_unused()

    monkeypatch.setattr(pa, "default_memory_pool", lambda: CountingPool())
    tsv = write_text(tmp_path / "ev.tsv", ROWS)
    parquet = tmp_path / "ev.parquet"
    pq.write_table(read_events(tsv), parquet)
    df = pd.DataFrame(ROWS, columns=["SessionId", "ItemId", "Time"])
    df["Time"] = df["Time"].astype(float)
    train = read_sessions(tsv)
    assert len(calls) == 1
    read_sessions(parquet, session_key="session", item_key="item", time_key="time")
    read_sessions(df, item_map=train)
    SessionData.from_arrays(np.array(["s", "s"]), np.array(["x", "y"]), np.array([1.0, 2.0]))
    assert len(calls) == 4
    with pytest.raises(DataError):      # a failed grouping hands the memory back too
        read_sessions(df.assign(ItemId="unknown"), item_map=train)
    assert len(calls) == 5

    class OldPool:                      # a pool without release_unused: reads still work
        pass

    monkeypatch.setattr(pa, "default_memory_pool", lambda: OldPool())
    assert read_sessions(tsv).n_events == len(ROWS)


# Datetime times, by hand: 2014-04-01T00:00:00 UTC is 1396310400 unix seconds (16161 days of
# 86400 s since 1970-01-01); fractions as written; one day later adds 86400.
_T0_2014 = 1396310400.0
_DATETIMES = {
    "s": (["2014-04-01T00:00:00", "2014-04-01T00:00:02", "2014-04-02T00:00:01"],
          [_T0_2014, _T0_2014 + 2, _T0_2014 + 86400 + 1]),
    "ms": (["2014-04-01T00:00:00", "2014-04-01T00:00:01.500", "2014-04-02T00:00:00.250"],
           [_T0_2014, _T0_2014 + 1.5, _T0_2014 + 86400.25]),
    "us": (["2014-04-01T00:00:00", "2014-04-01T00:00:01.500000", "2014-04-02T00:00:00.250000"],
           [_T0_2014, _T0_2014 + 1.5, _T0_2014 + 86400.25]),
    "ns": (["2014-04-01T00:00:00", "2014-04-01T00:00:01.500000000",
            "2014-04-02T00:00:00.250000000"],
           [_T0_2014, _T0_2014 + 1.5, _T0_2014 + 86400.25]),
}


@pytest.mark.parametrize("unit", sorted(_DATETIMES))
@pytest.mark.parametrize("kind", ["dataframe", "table"])
def test_datetime_times_are_unix_seconds(unit, kind):
    text, seconds = _DATETIMES[unit]
    stamps = np.array(text, dtype=f"datetime64[{unit}]")
    if kind == "dataframe":
        source = pd.DataFrame({"SessionId": ["s"] * 3, "ItemId": ["i", "j", "k"], "Time": stamps})
        assert str(source["Time"].dtype) == f"datetime64[{unit}]"
    else:
        source = pa.table({"SessionId": ["s"] * 3, "ItemId": ["i", "j", "k"],
                           "Time": pa.array(stamps, type=pa.timestamp(unit))})
    # ns counts pass 2^53: the nearest float64 (about 0.2 us apart here)
    events = read_events(source)
    assert events.column("time").to_pylist() == pytest.approx(seconds, rel=0, abs=1e-6)
    d = read_sessions(source)
    assert d.times.tolist() == pytest.approx(seconds, rel=0, abs=1e-6)
