"""Preparing public data sets in the customary GRU4Rec format.

`preprocess_rsc15` follows the recipe the GRU4Rec papers use for RSC15 (YooChoose clicks,
RecSys Challenge 2015):

1. drop sessions of length 1;
2. drop items with fewer than `min_item_support` (5) events;
3. drop sessions shorter than 2 (again, after step 2);
4. test = sessions whose LAST event is in the last day (session max time >= global max time
   - 86400 s); train_full = the other sessions;
5. test events restricted to items present in train_full, then test sessions shorter than 2
   dropped;
6. steps 4-5 applied to train_full give train_tr / train_valid.

Outputs are tab-separated with the header `SessionId	ItemId	Time` (Time in unix seconds, 3
decimals), rows in input order, each written atomically (temp file in the same folder, then
os.replace) so that an interrupted run never leaves a half-written file behind.

Everything is vectorised (numpy/pyarrow): the full 33M-click file is processed in well under a
minute plus reading time. pandas is not needed.
"""
from __future__ import annotations

import datetime as _dt
import sys
import time as _time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from .cli import add_data_options, data_options
from .config import is_integer
from .data import (_PARQUET_EXTENSIONS, _dictionary_codes, _Keys, _normalize, _read_header,
                   read_events)
from .errors import ConfigError, DataError, one_line
from .fileio import atomic_write, check_writable

__all__ = ["preprocess_rsc15", "register_cli", "run", "format_stats"]

DAY = 86400.0
#: the largest |Time| taken as Unix seconds (1e11 s is the year 5138): larger values are
#: milliseconds or nanoseconds, for which the split's days of 86,400 would be minutes or less
MAX_SECONDS = 1e11
OUTPUTS = ("train_full", "test", "train_tr", "train_valid")
# yoochoose-clicks.dat: no header, comma-separated.
_CLICKS_COLUMNS = ["SessionId", "Timestamp", "ItemId", "Category"]


def _log(progress: bool, t0: float, msg: str) -> None:
    if progress:
        print(f"[preprocess {(_time.perf_counter() - t0):6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _read_clicks(path: Path, name: str, keys: Optional[dict] = None) -> pa.Table:
    """Read either yoochoose-clicks.dat (no header, comma-separated, ISO-8601 timestamps), a
    tab-separated file with a header, or a Parquet file; keys: read_events' column names for
    the last two (default SessionId/ItemId/Time). Returns the table of read_events: session
    (string), item (string), time (float64 unix seconds), in file order."""
    keys = keys or {}
    if not path.exists():
        raise DataError(f"{name}: file not found")
    if path.suffix.lower() in _PARQUET_EXTENSIONS:   # (without one: "name it .parquet")
        return read_events(path, **keys)
    header = _read_header(path, name, "\t")
    if header is None:
        raise DataError(f"{name}: no events (empty file)")
    if len(header) > 1:
        # A tab in the first line: the GRU4Rec format with a header (read_events checks it).
        return read_events(path, sep="\t", **keys)

    # The RSC15 clicks format. Timestamps like 2014-04-07T10:51:09.277Z are parsed by the CSV
    # reader itself into timestamp[ms, UTC] (vectorised, multi-threaded).
    try:
        table = pa_csv.read_csv(
            str(path),
            read_options=pa_csv.ReadOptions(column_names=_CLICKS_COLUMNS),
            parse_options=pa_csv.ParseOptions(delimiter=","),
            convert_options=pa_csv.ConvertOptions(
                include_columns=["SessionId", "Timestamp", "ItemId"],
                column_types={"SessionId": pa.string(), "ItemId": pa.string(),
                              "Timestamp": pa.timestamp("ms", tz="UTC"), "Category": pa.string()},
                strings_can_be_null=False),
        )
    except pa.ArrowInvalid as e:
        where = _first_bad_clicks_line(path)   # the error path only: the reader names no line
        raise DataError(f"{name}: {where + ': ' if where else ''}not in the yoochoose-clicks "
                        f"format (SessionId,Timestamp,ItemId,Category without header) nor "
                        f"tab-separated with a SessionId/ItemId/Time header: "
                        f"{one_line(e)}") from None
    if table.num_rows == 0:
        raise DataError(f"{name}: no events (empty file)")
    ms = table.column("Timestamp").cast(pa.int64())  # ms since the epoch (UTC)
    seconds = pc.divide(ms.cast(pa.float64()), 1000.0)
    events = pa.table({"SessionId": table.column("SessionId"), "ItemId": table.column("ItemId"),
                       "Timestamp": seconds})
    # Same empty-id checks (and column names in messages) as any other source.
    return _normalize(events, name, _Keys("SessionId", "ItemId", "Timestamp"))


def _first_bad_clicks_line(path: Path) -> Optional[str]:
    """"line N: what is wrong" for the first clicks line the CSV reader would refuse (not four
    fields, or a timestamp that is not ISO 8601), or None. A plain scan, run only after the
    fast reader failed, to say where (about 20 s for the 33M lines of the full file)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\r\n").split(",")
            if fields == [""]:
                continue   # a blank line (the reader skips them)
            if len(fields) != 4:
                return f"line {lineno}: {len(fields)} comma-separated fields, expected 4"
            try:
                stamp = _dt.datetime.fromisoformat(fields[1].replace("Z", "+00:00"))
            except ValueError:
                return f"line {lineno}: timestamp {fields[1][:40]!r} is not ISO 8601"
            if stamp.tzinfo is None:   # the reader needs a zone, as the original file has (Z)
                return (f"line {lineno}: timestamp {fields[1][:40]!r} has no time zone (the "
                        "clicks file's are UTC, written with a Z)")
    return None


# --------------------------------------------------------------------------------------------
# Filtering and splitting (boolean masks over the events, file order kept)
# --------------------------------------------------------------------------------------------

class _Events:
    """Events as dense codes: session s_codes (n,), item i_codes (n,), times (n,) float64."""

    def __init__(self, table: pa.Table):
        self.s_codes, self.s_dict = _dictionary_codes(table.column("session"))
        self.i_codes, self.i_dict = _dictionary_codes(table.column("item"))
        self.times = table.column("time").to_numpy()
        self.n_sessions = len(self.s_dict)
        self.n_items = len(self.i_dict)

    def session_lengths(self, mask: np.ndarray) -> np.ndarray:
        """(n_sessions,) events per session among the masked events."""
        return np.bincount(self.s_codes[mask], minlength=self.n_sessions)

    def counts(self, mask: np.ndarray) -> dict:
        return {"events": int(np.count_nonzero(mask)),
                "sessions": int(np.count_nonzero(self.session_lengths(mask))),
                "items": int(np.count_nonzero(np.bincount(self.i_codes[mask], minlength=self.n_items)))}

    def split_last_day(self, mask: np.ndarray):
        """Split the masked events: test = sessions whose last event is in the last day, with
        items restricted to the train part and sessions shorter than 2 dropped.
        Returns (train_mask, test_mask), both (n,) bool."""
        times = self.times[mask]
        tmax = times.max()
        session_max = np.full(self.n_sessions, -np.inf)
        np.maximum.at(session_max, self.s_codes[mask], times)          # (n_sessions,)
        in_test = session_max >= tmax - DAY                              # (n_sessions,)
        train = mask & ~in_test[self.s_codes]
        test = mask & in_test[self.s_codes]
        train_items = np.zeros(self.n_items, dtype=bool)
        train_items[self.i_codes[train]] = True
        test &= train_items[self.i_codes]
        test &= self.session_lengths(test)[self.s_codes] >= 2
        return train, test


def _check_ids(ev: _Events, name: str) -> None:
    """Ids with a tab or a line break (possible in the comma-separated clicks file) cannot be
    written to the tab-separated outputs, which never quote: refused before any work."""
    for what, ids in (("session", ev.s_dict), ("item", ev.i_dict)):
        bad = pc.match_substring_regex(ids, r"[\t\r\n]")
        if pc.any(bad).as_py():
            first = ids.filter(bad)[0].as_py()
            raise DataError(f"{name}: {what} id {first!r} holds a tab or a line break, which the "
                            "tab-separated outputs cannot hold")


def _check_seconds(times: np.ndarray, name: str) -> None:
    """The split works in days of 86,400: times must be seconds (REFERENCE: Time in seconds)."""
    largest = float(np.abs(times).max()) if len(times) else 0.0
    if largest > MAX_SECONDS:
        raise DataError(f"{name}: |Time| reaches {largest:.4g}, beyond Unix seconds (1e11 s is the "
                        "year 5138): milliseconds or nanoseconds? The split works in days of "
                        "86,400 s: give the times in seconds")


def _filter(ev: _Events, min_item_support: int) -> np.ndarray:
    """The customary RSC15 filtering; returns the (n,) mask of kept events."""
    keep = ev.session_lengths(slice(None))[ev.s_codes] > 1
    supports = np.bincount(ev.i_codes[keep], minlength=ev.n_items)
    keep &= supports[ev.i_codes] >= min_item_support
    keep &= ev.session_lengths(keep)[ev.s_codes] >= 2
    return keep


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _format_times(times: np.ndarray) -> pa.Array:
    """float64 seconds -> strings with exactly 3 decimals ("1396867869.277"), vectorised.

    Works on integer milliseconds so that no float formatting (and its rounding surprises) is
    involved: -1.5 s -> "-1.500". |times| <= MAX_SECONDS (checked on reading), so the
    milliseconds fit int64."""
    ms = np.round(times * 1000.0).astype(np.int64)
    neg = ms < 0
    ms = np.abs(ms)
    whole = pa.array(ms // 1000).cast(pa.string())
    frac = pc.utf8_lpad(pa.array(ms % 1000).cast(pa.string()), width=3, padding="0")
    sign = pa.array(np.where(neg, "-", ""), type=pa.string())
    return pc.binary_join_element_wise(sign, whole, pa.scalar("."), frac, "")


#: rows joined into text per write: bounded memory, and a chunk's text stays far below the
#: 2 GiB a string array can hold
_WRITE_ROWS = 1 << 20


def _write_tsv(ev: _Events, mask: np.ndarray, path: Path) -> None:
    """The masked events as `SessionId<TAB>ItemId<TAB>Time` lines, ids written as they are
    (the format never quotes: an id with a '"' is read back as the same id; tabs and line
    breaks were refused on reading, _check_ids)."""
    idx = np.flatnonzero(mask)
    # large_string throughout (int64 offsets): a chunk's text may pass 2 GiB with long ids
    text = lambda a: a.cast(pa.large_string())          # noqa: E731
    large = lambda t: pa.scalar(t, pa.large_string())   # noqa: E731
    with atomic_write(path) as f:
        f.write(b"SessionId\tItemId\tTime\n")
        for start in range(0, len(idx), _WRITE_ROWS):
            rows = idx[start:start + _WRITE_ROWS]
            time_eol = pc.binary_join_element_wise(text(_format_times(ev.times[rows])),
                                                   large("\n"), large(""))
            lines = pc.binary_join_element_wise(
                text(ev.s_dict.take(pa.array(ev.s_codes[rows]))),
                text(ev.i_dict.take(pa.array(ev.i_codes[rows]))), time_eol, large("\t"))
            # the lines are contiguous in the string array's data buffer: write it as one
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64,
                                    count=len(lines) + 1, offset=8 * lines.offset)
            f.write(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def preprocess_rsc15(clicks_path, out_dir, *, min_item_support: int = 5, progress: bool = True,
                     session_key: str = "SessionId", item_key: str = "ItemId",
                     time_key: str = "Time") -> dict:
    """Preprocess yoochoose-clicks.dat (or events in a tab-separated file with a header or in
    a Parquet file, their columns named by session_key / item_key / time_key, Time in
    seconds) into out_dir/{train_full,test,train_tr,train_valid}.tsv.

    Returns {"input": counts, "filtered": counts, "train_full": counts, "test": counts,
    "train_tr": counts, "train_valid": counts} with counts = {"events", "sessions", "items"}.

    An empty train_full or test is a DataError (nothing is written). The validation pair
    train_tr / train_valid can be empty (train_full spans a day or less): the files are still
    written, header only, so that no stale file of an earlier run is left beside the others;
    the counts say so (the command prints a warning).
    """
    if not is_integer(min_item_support) or min_item_support < 1:
        raise ConfigError(f"min_item_support must be an integer >= 1, got {min_item_support!r}")
    t0 = _time.perf_counter()
    path, name = Path(clicks_path), str(clicks_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    for key in OUTPUTS:   # every output, before reading, not after; none may be the input
        check_writable(out / f"{key}.tsv", [path])

    ev = _Events(_read_clicks(path, name, dict(session_key=session_key, item_key=item_key,
                                               time_key=time_key)))
    _check_ids(ev, name)
    _check_seconds(ev.times, name)
    everything = np.ones(len(ev.s_codes), dtype=bool)
    stats = {"input": ev.counts(everything)}
    _log(progress, t0, f"read {stats['input']['events']:,} events from {name}")

    keep = _filter(ev, int(min_item_support))
    stats["filtered"] = ev.counts(keep)
    if not keep.any():
        raise DataError(f"{name}: no session is left after filtering (sessions >= 2 events, "
                        f"items >= {min_item_support} events)")
    _log(progress, t0, f"filtered: {stats['filtered']['events']:,} events")

    train_full, test = ev.split_last_day(keep)
    if not train_full.any():
        raise DataError(f"{name}: every session ends in the last day of the data; "
                        "nothing is left for training")
    if not test.any():
        # the evaluation half of the main pair: an empty test.tsv is of no use
        raise DataError(f"{name}: no test session is left (sessions ending in the last day "
                        "with 2 or more events of training items); nothing to evaluate on")
    train_tr, train_valid = ev.split_last_day(train_full)
    masks = {"train_full": train_full, "test": test, "train_tr": train_tr, "train_valid": train_valid}

    out.mkdir(parents=True, exist_ok=True)
    for key in OUTPUTS:
        stats[key] = ev.counts(masks[key])
        _write_tsv(ev, masks[key], out / f"{key}.tsv")
        _log(progress, t0, f"wrote {out / (key + '.tsv')} ({stats[key]['events']:,} events)")
    return stats


def format_stats(stats: dict) -> str:
    """A small text table of the counts returned by preprocess_rsc15."""
    rows = [("", "events", "sessions", "items")]
    for key, c in stats.items():
        rows.append((key, f"{c['events']:,}", f"{c['sessions']:,}", f"{c['items']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(r[0].ljust(widths[0]) + "".join("  " + v.rjust(w) for v, w in zip(r[1:], widths[1:]))
                     for r in rows)


def run(args) -> int:
    """Handler of `preprocess rsc15 CLICKS OUTDIR [--min-item-support N] [--quiet]`."""
    if args.min_item_support < 1:   # named as the option, not as the API's keyword
        raise ConfigError(f"--min-item-support must be an integer >= 1 (got "
                          f"{args.min_item_support})")
    stats = preprocess_rsc15(args.clicks, args.outdir, min_item_support=args.min_item_support,
                             progress=not args.quiet, **data_options(args))
    print(format_stats(stats))
    # The main pair (train_full, test) is usable; say plainly when the validation pair is not
    # (not silenced by --quiet, which is about progress).
    empty = [f"{key}.tsv" for key in ("train_tr", "train_valid") if stats[key]["events"] == 0]
    if empty:
        print(f"fastgru4rec preprocess: warning: {' and '.join(empty)} "
              f"{'holds' if len(empty) == 1 else 'hold'} no events (splitting "
              "train_full at its last day left nothing there); train_full.tsv and test.tsv are "
              "complete", file=sys.stderr)
    return 0


def register_cli(subparsers):
    """Add the `preprocess` subcommand (with the dataset `rsc15`) to an argparse subparsers
    object. The handler is stored as `func` (args.func(args) -> exit code)."""
    parser = subparsers.add_parser("preprocess", help="prepare a public data set in the GRU4Rec format",
                                   description="Prepare a public data set in the GRU4Rec format.")
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    rsc15 = datasets.add_parser(
        "rsc15", help="RecSys Challenge 2015 (yoochoose-clicks.dat)",
        description="Split yoochoose-clicks.dat the customary GRU4Rec way into OUTDIR/"
                    "{train_full,test,train_tr,train_valid}.tsv (test: sessions ending in the "
                    "last day; train_valid: the last day of train_full).")
    rsc15.add_argument("clicks", metavar="CLICKS",
                       help="yoochoose-clicks.dat, or events in a .tsv with a header or a "
                            ".parquet (columns: see the key options)")
    rsc15.add_argument("outdir", metavar="OUTDIR", help="output folder (created if needed)")
    rsc15.add_argument("--min-item-support", type=int, default=5, metavar="N",
                       help="drop items with fewer than N events (default 5)")
    rsc15.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    add_data_options(rsc15, sep=False)
    rsc15.set_defaults(func=run)
    return parser
