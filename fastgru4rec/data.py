"""Reading session data (REFERENCE.md §1) into a compact, session-grouped form.

The input is a set of events (session id, item id, time). `read_sessions` turns it into a
`SessionData`: the events grouped by session (CSR layout: `offsets` + `items`), sessions ordered
by the time of their first event, events ordered by time inside a session, item ids mapped to
dense indices 0..n_items-1.

Everything is vectorised (pyarrow for parsing / hashing, numpy for sorting) so that the full
RSC15 training set (~30M events) is read in seconds: there is no Python loop per event or per
session.

Ids are kept as strings: RSC15 ids look numeric but need not fit int32, and "007" must stay
"007". Bad input raises `DataError` with a one-line message naming the source and, where it
applies, the row (1-based data row, header not counted) and the column.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from .errors import DataError, one_line

__all__ = ["SessionData", "read_events", "read_sessions", "require_trainable",
           "require_evaluable"]

# Extension (lower case) -> format. Text formats map to their default separator.
_TEXT_SEPARATORS = {".tsv": "\t", ".txt": "\t", ".dat": "\t", ".csv": ","}
_PARQUET_EXTENSIONS = (".parquet", ".pq")
# Compression suffixes pyarrow decompresses on the fly (for text formats).
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
# The first bytes of files that are not text, for a message that says so (instead of a header
# of binary garbage): (magic, what the file looks like).
_MAGIC = ((b"\x1f\x8b", "a gzip-compressed file"), (b"PK\x03\x04", "a zip archive"),
          # bzip2: "BZh", the block size digit, then the block magic (pi's digits): ten bytes,
          # as "BZh1" alone is a possible column name
          *((b"BZh%d1AY&SY" % level, "a bzip2-compressed file") for level in range(1, 10)),
          (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"), (b"\xfd7zXZ\x00", "an xz-compressed file"),
          (b"\x04\x22\x4d\x18", "an lz4-compressed file"))
# Parquet's "PAR1" is plain text too: a file is taken for Parquet only when it also ends with it
_PARQUET_MAGIC = b"PAR1"


# --------------------------------------------------------------------------------------------
# SessionData
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)  # eq=False: comparing numpy arrays with == is not a bool
class SessionData:
    """Events grouped by session (CSR layout).

    Session s is `items[offsets[s]:offsets[s+1]]` (times likewise). Sessions are ordered by the
    time of their first event (ties: first appearance in the input); inside a session events
    are ordered by time (ties: input order).
    """

    offsets: np.ndarray      # int64 (n_sessions+1,), offsets[0] = 0, offsets[-1] = n_events
    items: np.ndarray        # int64 (n_events,), dense item indices 0..n_items-1
    times: np.ndarray        # float64 (n_events,)
    session_ids: np.ndarray  # object (n_sessions,) of str: original session ids
    item_ids: np.ndarray     # object (n_items,) of str: dense index -> original item id
    supports: np.ndarray     # int64 (n_items,): TRAINING events per item
    n_unknown_events: int = 0   # events dropped because their item is not in the item map
    source: str = "<data>"      # file path or "<DataFrame>", for error messages
    _item_index: Optional[dict] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        # Normalise dtypes (no copy when already right) and check that the pieces fit together,
        # so that a hand-built SessionData fails here and not deep inside training.
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        self.times = np.asarray(self.times, dtype=np.float64)
        self.session_ids = _as_object_str(self.session_ids)
        self.item_ids = _as_object_str(self.item_ids)
        self.supports = np.asarray(self.supports, dtype=np.int64)
        # Arrays viewed from arrow buffers are read-only; torch.from_numpy warns on those.
        for attr in ("offsets", "items", "times", "supports"):
            if not getattr(self, attr).flags.writeable:
                setattr(self, attr, getattr(self, attr).copy())
        n_events, n_items = len(self.items), len(self.item_ids)
        problems = []
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0 \
                or self.offsets[-1] != n_events or np.any(np.diff(self.offsets) < 0):
            problems.append("offsets must start at 0, be non-decreasing and end at n_events")
        elif len(self.session_ids) != len(self.offsets) - 1:
            problems.append("session_ids must have n_sessions = len(offsets)-1 entries")
        if len(self.times) != n_events:
            problems.append("times and items must have the same length")
        if len(self.supports) != n_items:
            problems.append("supports and item_ids must have the same length")
        if n_events and (self.items.min() < 0 or self.items.max() >= n_items):
            problems.append("items must be in 0..n_items-1")
        if problems:
            raise DataError(f"{self.source}: inconsistent SessionData: " + "; ".join(problems))

    # --- sizes -------------------------------------------------------------------------------
    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def session_lengths(self) -> np.ndarray:
        """int64 (n_sessions,)"""
        return np.diff(self.offsets)

    @property
    def start_times(self) -> np.ndarray:
        """float64 (n_sessions,): time of each session's first event."""
        return self.times[self.offsets[:-1]]

    def item_index(self) -> dict:
        """{original item id (str): dense index}; built once and cached."""
        if self._item_index is None:
            self._item_index = {item_id: i for i, item_id in enumerate(self.item_ids.tolist())}
        return self._item_index

    def __repr__(self) -> str:
        return (f"SessionData(source={self.source!r}, n_sessions={self.n_sessions}, "
                f"n_events={self.n_events}, n_items={self.n_items}, "
                f"n_unknown_events={self.n_unknown_events})")

    # --- construction helpers ----------------------------------------------------------------
    @classmethod
    def item_map_only(cls, item_ids, supports, source: str = "<item map>") -> "SessionData":
        """An event-less SessionData carrying a training item map and its supports: what a
        trained model keeps to map test data (``read_sessions(path, item_map=...)``)."""
        return cls(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, object),
                   item_ids, supports, source=source)

    @classmethod
    def from_arrays(cls, session_ids, item_ids, times, item_map: "Optional[SessionData]" = None,
                    source: str = "<arrays>") -> "SessionData":
        """Build from three parallel event arrays (any element type; ids are converted to str).

        Same grouping, ordering and mapping rules as `read_sessions`."""
        session_ids = np.asarray(session_ids)
        item_ids = np.asarray(item_ids)
        times = np.asarray(times)
        if not (session_ids.ndim == item_ids.ndim == times.ndim == 1) or \
                not (len(session_ids) == len(item_ids) == len(times)):
            raise DataError(f"{source}: session_ids, item_ids and times must be 1-D arrays "
                            f"of the same length (got shapes {session_ids.shape}, "
                            f"{item_ids.shape}, {times.shape})")
        if len(session_ids) == 0:   # as read_sessions treats a header-only file
            raise DataError(f"{source}: no events (empty arrays)")
        table = pa.table({"session": _numpy_to_arrow(session_ids),
                          "item": _numpy_to_arrow(item_ids),
                          "time": _numpy_to_arrow(times)})
        keys = _Keys("session_ids", "item_ids", "times")
        events = _normalize(table, source, keys, column_names=("session", "item", "time"))
        del table
        try:
            return _group_sessions(events, source, item_map)
        finally:
            del events
            _release_arrow_memory()   # as read_sessions


def _as_object_str(values) -> np.ndarray:
    """Object array of Python str (ids are opaque strings)."""
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if len(arr) and not all(type(v) is str for v in (arr[0], arr[-1])):
        arr = np.array([str(v) for v in arr.tolist()], dtype=object)
    return arr


def _numpy_to_arrow(values: np.ndarray) -> pa.Array:
    if values.dtype == object:
        try:  # the usual case, all str (e.g. SessionData.item_ids[items]): converted in C
            return pa.array(values, type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # mixed types (e.g. ints and strs): str() each, keeping None as missing
            return pa.array([None if v is None else str(v) for v in values.tolist()], type=pa.string())
    if values.dtype.kind in "US":
        return pa.array(values.astype(str).tolist(), type=pa.string())
    return pa.array(values)


# --------------------------------------------------------------------------------------------
# Reading events
# --------------------------------------------------------------------------------------------

@dataclass
class _Keys:
    session: str
    item: str
    time: str

    def hint(self, column: str) -> str:
        return {self.session: "session_key", self.item: "item_key", self.time: "time_key"}[column]


SEPARATOR_RULE = "a single ASCII character other than a newline or '\"'"


def valid_separator(sep) -> bool:
    """A text file's field separator: one ASCII character (pyarrow splits on one byte; a
    non-ASCII character is several in UTF-8), not a line break or the quote character."""
    return isinstance(sep, str) and len(sep) == 1 and sep not in "\r\n\"" and sep.isascii()


def read_events(source, session_key: str = "SessionId", item_key: str = "ItemId",
                time_key: str = "Time", sep: Optional[str] = None) -> pa.Table:
    """Read events into a pyarrow Table with columns session (string), item (string),
    time (float64), in input order.

    source: a path to .tsv/.txt/.dat (tab-separated unless `sep`), .csv (comma), .parquet/.pq,
    optionally compressed (.gz, .bz2, ...; text only); or a pandas DataFrame; or a pyarrow Table.
    Text files need a header row.
    """
    keys = _Keys(session_key, item_key, time_key)
    if len({session_key, item_key, time_key}) < 3:
        # one column cannot be two of them (pyarrow would fail with a KeyError deep inside)
        raise DataError(f"session_key={session_key!r}, item_key={item_key!r} and "
                        f"time_key={time_key!r} must name three different columns")
    if sep is not None and not valid_separator(sep):
        raise DataError(f"separator sep={sep!r}: must be {SEPARATOR_RULE}")
    if isinstance(source, pa.Table):
        return _normalize(_select(source, "<Table>", keys), "<Table>", keys)
    if _is_dataframe(source):
        return _read_dataframe(source, keys)
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"cannot read events from a {type(source).__name__}: "
                        "pass a file path, a pandas DataFrame or a pyarrow Table")
    path = Path(source)
    name = str(source)
    if not os.fspath(source):   # Path("") is the current folder
        raise DataError("an empty file name given for the events")
    if not path.exists():
        raise DataError(f"{name}: file not found")
    if path.is_dir():
        raise DataError(f"{name}: is a directory, not a file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in _PARQUET_EXTENSIONS:
        return _read_parquet(path, name, keys)
    if sep is None:
        if ext not in _TEXT_SEPARATORS:
            raise DataError(
                f"{name}: cannot tell the format from the extension {ext or '(none)'!r}; "
                "accepted: .tsv/.txt/.dat (tab-separated), .csv (comma-separated), "
                ".parquet/.pq (optionally .gz/.bz2 for text), or give the separator (sep=, "
                "or --sep on the command line)")
        sep = _TEXT_SEPARATORS[ext]
    return _read_text(path, name, keys, sep)


def _is_dataframe(obj) -> bool:
    try:
        import pandas as pd
    except ImportError:  # pandas is optional (the test extra): no DataFrame can be given
        return False
    return isinstance(obj, pd.DataFrame)


def _missing_columns_error(name: str, keys: _Keys, found: list, sep: Optional[str]) -> DataError:
    """sep: the separator a text file was split with (None for DataFrame/Table/Parquet)."""
    wanted = [keys.session, keys.item, keys.time]
    missing = [c for c in wanted if c not in found]
    which = "column" if len(missing) == 1 else "columns"
    head = f"{name}: missing {which} {', '.join(repr(c) for c in missing)}"
    if sep is not None and len(found) == 1:
        # A single column almost always means the separator is wrong (e.g. a comma-separated
        # file read as tab-separated).
        return DataError(f"{head}: the header is a single column {found[0][:60]!r} when split "
                         f"on {sep!r}; check the separator (sep=, or --sep on the command line)")
    shown = _show_columns(found) if found else "(none)"
    msg = f"{head} (columns found: {shown}); set " + ", ".join(
        f"{keys.hint(c)}= (--{keys.hint(c).replace('_', '-')})" for c in missing)
    if sep is not None and len(missing) == len(wanted) and any(_is_number(c) for c in found):
        msg += " (text files need a header row)"   # the first line looks like data
    return DataError(msg)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _show_columns(names: list, limit: int = 10) -> str:
    """Column names for a message: the first ``limit`` (then the count), each cut to 60
    characters, plain where that is unambiguous and repr() where a name has invisible or
    misleading characters ("Item\\rId" must not pass for ItemId)."""
    shown = []
    for c in names[:limit]:
        c = str(c)
        short = c[:60]
        plain = short != "" and short.isprintable() and short == short.strip() and "," not in short
        shown.append((short if plain else repr(short)) + ("..." if len(c) > 60 else ""))
    if len(names) > limit:
        shown.append(f"... ({len(names):,} columns)")
    return ", ".join(shown)


def _check_columns(name: str, keys: _Keys, found: list, sep: Optional[str]) -> None:
    """Raise DataError unless each key column is present exactly once."""
    if any(c not in found for c in (keys.session, keys.item, keys.time)):
        raise _missing_columns_error(name, keys, found, sep)
    for c in (keys.session, keys.item, keys.time):
        if found.count(c) > 1:   # which one would be meant is a guess
            raise DataError(f"{name}: column {c!r} appears {found.count(c)} times in the header")


def _select(table: pa.Table, name: str, keys: _Keys) -> pa.Table:
    """Keep the three key columns (in the order session, item, time)."""
    _check_columns(name, keys, table.column_names, None)
    if table.num_rows == 0:
        raise DataError(f"{name}: no events (empty table)")
    return table.select([keys.session, keys.item, keys.time])


def _read_dataframe(df, keys: _Keys) -> pa.Table:
    name = "<DataFrame>"
    _check_columns(name, keys, list(df.columns), None)
    if len(df) == 0:
        raise DataError(f"{name}: no events (empty table)")
    arrays = []
    for col in (keys.session, keys.item, keys.time):
        series = df[col]
        if series.dtype == object:
            # Object columns may mix types (ints and strs): nulls first, then str.
            null = series.isna().to_numpy()
            if null.any():
                row = int(np.flatnonzero(null)[0]) + 1
                raise DataError(f"{name}: row {row}, column {col!r}: missing value")
            try:
                values = series.astype(str).to_numpy(dtype=object)
                arrays.append(pa.array(values, type=pa.string()))
            except UnicodeEncodeError:
                # a string that is not valid Unicode (a lone surrogate) cannot be stored as UTF-8
                raw = [str(v) for v in series.to_numpy(dtype=object).tolist()]
                row = next(i for i, v in enumerate(raw) if not _utf8_encodable(v)) + 1
                raise DataError(f"{name}: row {row}, column {col!r}: not valid Unicode text "
                                f"({raw[row - 1]!r})") from None
        else:
            arrays.append(pa.array(series))
    # column labels need not be strings in pandas (header=None gives 0, 1, 2); Arrow's must
    str_keys = _Keys(str(keys.session), str(keys.item), str(keys.time))
    table = pa.Table.from_arrays(arrays, names=[str_keys.session, str_keys.item, str_keys.time])
    return _normalize(table, name, str_keys)


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _read_parquet(path: Path, name: str, keys: _Keys) -> pa.Table:
    import pyarrow.parquet as pq
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{name}: cannot read as Parquet: {one_line(e)}") from None
    _check_columns(name, keys, list(schema.names), None)
    try:
        table = pq.read_table(path, columns=[keys.session, keys.item, keys.time])
    except (pa.ArrowException, OSError) as e:   # a corrupt or truncated body
        raise DataError(f"{name}: cannot read as Parquet: {one_line(e)}") from None
    if table.num_rows == 0:
        raise DataError(f"{name}: no events (no rows)")
    return _normalize(table, name, keys)


def _check_text(path: Path, name: str, start: bytes) -> None:
    """Raise DataError if a text file is not text: compressed without a compression suffix or
    holding NUL bytes in its first KB. ``start``: its first bytes as read (pyarrow decompresses
    by suffix only, so without one they are the raw bytes)."""
    if not path.name.lower().endswith(_COMPRESSION_SUFFIXES):
        for magic, what in _MAGIC:
            if start.startswith(magic):
                raise DataError(f"{name}: looks like {what}, not text")
        if start.startswith(_PARQUET_MAGIC):
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - 4))
                    tail = f.read(4)
            except OSError as e:
                raise DataError(f"{name}: cannot read: {one_line(e)}") from None
            if tail == _PARQUET_MAGIC:
                raise DataError(f"{name}: looks like a Parquet file (name it .parquet), not text")
    if b"\0" in start[:1024]:
        raise DataError(f"{name}: looks like a binary file (NUL bytes), not UTF-8 text")


def _read_header(path: Path, name: str, sep: str) -> Optional[list]:
    """Column names of a text file's first line; None for an empty file. Raises DataError for
    a file that is not text."""
    try:
        # pyarrow streams have no readline: read blocks until the first newline.
        first = b""
        with pa.input_stream(str(path), compression="detect") as f:
            while b"\n" not in first and len(first) < (1 << 20):
                block = f.read(1 << 16)
                if not block:
                    break
                first += block
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{name}: cannot read: {one_line(e)}") from None
    _check_text(path, name, first)
    first = first.split(b"\n", 1)[0]
    line = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not line.strip():
        return None
    return line.split(sep)


#: files at least this large are parsed by pyarrow's multi-threaded reader
THREADED_READ_BYTES = 64 << 20


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_text(path: Path, name: str, keys: _Keys, sep: str) -> pa.Table:
    header = _read_header(path, name, sep)
    if header is None:
        raise DataError(f"{name}: no events (empty file)")
    # The customary tab-separated format never quotes; quoting stays off for it (unless the
    # header itself is quoted) so that a stray '"' inside an id cannot swallow the rest of the
    # file. CSV keeps the usual double-quote quoting.
    quoted = sep == "," or any(c.startswith('"') for c in header)
    header = [c.strip('"') if quoted else c for c in header]
    _check_columns(name, keys, header, sep)

    invalid_rows = []  # first malformed line (wrong number of fields), reported below

    def on_invalid_row(row):
        invalid_rows.append(row)
        return "skip"

    # pyarrow's multi-threaded CSV reader is worth it only for large files, and a threaded read
    # that fails (a bad value) can leave work on Arrow's thread pool that aborts the process at
    # exit ("terminate called without an active exception", apache/arrow#34314; seen here on
    # about 1 in 25 bad-input runs): small files are read on one thread.
    threads = _file_size(path) >= THREADED_READ_BYTES

    def read(time_type, use_threads=threads):
        invalid_rows.clear()
        return pa_csv.read_csv(
            str(path),
            read_options=pa_csv.ReadOptions(use_threads=use_threads),
            parse_options=pa_csv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False,
                                              invalid_row_handler=on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                include_columns=[keys.session, keys.item, keys.time],
                column_types={keys.session: pa.string(), keys.item: pa.string(), keys.time: time_type},
                strings_can_be_null=False),
        )

    try:
        # Fast path: let the multi-threaded reader parse the times as doubles.
        table = read(pa.float64())
    except pa.ArrowInvalid as e:
        # A time that is not a number (or another conversion problem): read the times as
        # text so that _normalize can name the bad row and value. One thread: only the
        # single-threaded reader knows row numbers (error path only).
        try:
            table = read(pa.string(), use_threads=False)
        except pa.ArrowInvalid as e2:
            raise DataError(_csv_error(name, header, e2)) from None
        _normalize(table, name, keys)  # raises with the row if a time is bad
        raise DataError(_csv_error(name, header, e)) from None
    except OSError as e:
        raise DataError(f"{name}: cannot read: {one_line(e)}") from None
    if invalid_rows:
        row = invalid_rows[0]
        if row.number is None:  # the multi-threaded reader does not know line numbers
            read(pa.string(), use_threads=False)
            row = invalid_rows[0] if invalid_rows else row
        where = f"row {row.number - 1}" if row.number is not None else "a row"
        raise DataError(f"{name}: {where} has {row.actual_columns} fields, expected "
                        f"{row.expected_columns} (separator {sep!r}): {row.text[:80]!r}")
    if table.num_rows == 0:
        raise DataError(f"{name}: no events (empty file: only a header line)")
    time = table.column(keys.time)
    if not pc.all(pc.fill_null(pc.is_finite(time), False)).as_py():
        # The float parser turns "", "nan", "NA", ... into null/NaN: re-read the times as
        # text to quote the bad value as written (error path only).
        _normalize(read(pa.string()), name, keys)
    return _normalize(table, name, keys)


def _csv_error(name: str, header: list, e: Exception) -> str:
    """pyarrow's "In CSV column #1: Row #3: CSV conversion error to string: invalid UTF8 data"
    (0-based column, 1-based line) in this library's form "NAME: row 2, column 'ItemId': ..."
    (1-based data row, header not counted)."""
    text = one_line(e)
    if "Empty CSV file" in text:    # a header line without its line break, and nothing more
        return f"{name}: no events (empty file: only a header line)"
    m = re.match(r"In CSV column #(\d+):(?: Row #(\d+):)? (?:CSV conversion error to \w+: )?(.*)",
                 text)
    if not m or int(m.group(1)) >= len(header):
        return f"{name}: {text}"
    column, line, what = int(m.group(1)), m.group(2), m.group(3)
    if what == "invalid UTF8 data":
        what = "invalid UTF-8 text"
    where = f"row {int(line) - 1}, " if line else ""
    return f"{name}: {where}column {header[column]!r}: {what}"


def _first_true(mask) -> int:
    """Index of the first True in a boolean arrow array (which has at least one)."""
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))[0])


def _normalize(table: pa.Table, name: str, keys: _Keys, column_names=None) -> pa.Table:
    """Table with the three key columns (any types) -> session: string, item: string,
    time: float64, with nulls, empty ids and non-finite times rejected (row named)."""
    s_col, i_col, t_col = column_names or (keys.session, keys.item, keys.time)
    session = _id_column(table.column(s_col), name, keys.session)
    item = _id_column(table.column(i_col), name, keys.item)
    time = _time_column(table.column(t_col), name, keys.time)
    return pa.table({"session": session, "item": item, "time": time})


def _id_column(col: pa.ChunkedArray, name: str, key: str) -> pa.ChunkedArray:
    """Any id column -> string; null or empty ids are errors."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_floating(t):
        # pandas turns int columns with NaN into floats; 12345678901.0 must read "12345678901"
        # and not "1.2345678901e+10".
        if col.null_count == 0 and not pc.any(pc.is_nan(col)).as_py() and \
                pc.all(pc.equal(pc.floor(col), col)).as_py():
            col, t = col.cast(pa.int64()), pa.int64()
    if not pa.types.is_string(t):
        try:
            col = col.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{name}: column {key!r} has type {t}, which cannot be read as ids") from None
    if col.null_count:
        row = _first_true(pc.is_null(col)) + 1
        raise DataError(f"{name}: row {row}, column {key!r}: missing value")
    empty = pc.equal(pc.utf8_length(col), 0)
    if pc.any(empty).as_py():
        row = _first_true(empty) + 1
        raise DataError(f"{name}: row {row}, column {key!r}: empty value")
    return col


def _time_column(col: pa.ChunkedArray, name: str, key: str) -> pa.ChunkedArray:
    """Any time column -> float64 seconds; the first bad value is reported with its row."""
    t = col.type
    text = None  # the original strings, to quote a bad value as written
    if pa.types.is_timestamp(t):
        # datetime columns (e.g. from pandas): seconds since the epoch (UTC). The count of the
        # column's own unit is divided once: casting to another unit first fails for
        # nanoseconds ("would lose data"). safe=False: counts above 2^53 (any ns time) become
        # the nearest float64, about 0.2 us apart at today's times.
        per_second = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        col = pc.divide(col.cast(pa.int64()).cast(pa.float64(), safe=False), per_second)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        col = col.cast(pa.float64(), safe=False)   # integers above 2^53: the nearest float64
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col
        try:
            col = col.cast(pa.float64())
        except pa.ArrowInvalid:
            row = _first_unparsable(col.combine_chunks() if col.num_chunks > 1 else col.chunk(0))
            value = text[row].as_py()
            shown = "empty value" if value == "" else repr(value)
            raise DataError(f"{name}: row {row + 1}, column {key!r}: {shown} is not a number") from None
    else:
        raise DataError(f"{name}: column {key!r} has type {t}; expected numbers (seconds)")
    bad = pc.invert(pc.fill_null(pc.is_finite(col), False))  # null, NaN or +-inf
    if pc.any(bad).as_py():
        row = _first_true(bad)
        if text is not None:
            value = repr(text[row].as_py())
        elif col[row].as_py() is None:
            value = "missing value"
        else:
            value = repr(str(col[row].as_py()))
        if value == "''":
            value = "empty value"
        raise DataError(f"{name}: row {row + 1}, column {key!r}: {value} is not a number")
    return col


def _first_unparsable(arr: pa.Array) -> int:
    """Index of the first string that pyarrow cannot cast to float64 (there is one).

    Bisection: cast the left half; if it parses the bad value is in the right half. About
    2*len(arr) values are cast in total, all vectorised."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            arr.slice(lo, mid - lo).cast(pa.float64())
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


# --------------------------------------------------------------------------------------------
# Grouping into sessions
# --------------------------------------------------------------------------------------------

def read_sessions(source, item_map: Optional[SessionData] = None, session_key: str = "SessionId",
                  item_key: str = "ItemId", time_key: str = "Time",
                  sep: Optional[str] = None) -> SessionData:
    """Read events and group them into sessions.

    Without item_map the item map is built from this data (dense index = order of first
    appearance) and supports are counted from it. With item_map (the training SessionData),
    items are mapped with its map, events of unknown items are dropped (counted in
    n_unknown_events) and supports are the training data's."""
    events = read_events(source, session_key=session_key, item_key=item_key,
                         time_key=time_key, sep=sep)
    name = _source_name(source)
    try:
        return _group_sessions(events, name, item_map)
    finally:
        # the parsed table and pyarrow's intermediates are freed by now, but pyarrow's pool
        # (mimalloc / jemalloc) keeps their pages: 0.7 GiB of RSS after a 12M-event file
        # (1.45 -> 0.76 GiB once handed back). Every read goes through pyarrow.
        del events
        _release_arrow_memory()


def _release_arrow_memory() -> None:
    """Hand pyarrow's unused pool memory back to the OS (a no-op where the pool cannot)."""
    try:
        pa.default_memory_pool().release_unused()
    except (AttributeError, NotImplementedError, pa.ArrowException):   # older pyarrow
        pass


def _source_name(source) -> str:
    if isinstance(source, pa.Table):
        return "<Table>"
    if _is_dataframe(source):
        return "<DataFrame>"
    return str(source)


def _dictionary_codes(col: pa.ChunkedArray):
    """Dense codes in order of first appearance. Returns (codes int64 (n,), uniques pa.Array)."""
    if col.num_chunks == 0:   # no events: no chunk to take the dictionary from
        return np.zeros(0, dtype=np.int64), pa.array([], type=col.type)
    encoded = pc.dictionary_encode(col)
    # pyarrow encodes all chunks with one shared memo table: every chunk's dictionary is a
    # prefix of the last one, so codes are consistent across chunks.
    dictionary = encoded.chunks[-1].dictionary
    codes = np.concatenate([c.indices.to_numpy() for c in encoded.chunks]).astype(np.int64)
    return codes, dictionary


def _group_sessions(events: pa.Table, name: str, item_map: Optional[SessionData]) -> SessionData:
    n_total = events.num_rows
    n_unknown = 0
    if item_map is not None:
        # index_in: position of each item in the training map, null where unknown.
        value_set = pa.array(item_map.item_ids.tolist(), type=pa.string())
        mapped = pc.index_in(events.column("item"), value_set=value_set)
        known = pc.is_valid(mapped)
        n_known = pc.sum(known.cast(pa.int64())).as_py() or 0
        n_unknown = n_total - n_known
        if n_known == 0:
            raise DataError(f"{name}: none of its items is in the training item map "
                            f"(0 of {n_total} events known)")
        if n_unknown:
            events = events.filter(known)
            mapped = mapped.filter(known)
        items = np.concatenate([c.to_numpy() for c in mapped.chunks]).astype(np.int64)
        item_ids = item_map.item_ids
        supports = item_map.supports
    else:
        items, item_dict = _dictionary_codes(events.column("item"))
        item_ids = item_dict.to_numpy(zero_copy_only=False).astype(object)
        supports = np.bincount(items, minlength=len(item_ids)).astype(np.int64)

    times = events.column("time").to_numpy()                         # float64 (n,)
    codes, session_dict = _dictionary_codes(events.column("session"))  # (n,), first-appearance order
    n_sessions = len(session_dict)

    # 1) Group by session code, time-ordered inside: lexsort is stable, so equal
    #    (session, time) pairs keep input order. The last key is the primary one.
    #    Fast path: files are usually already grouped by session and time-ordered (codes
    #    non-decreasing, times non-decreasing inside a code), then no sort is needed.
    same_session = codes[1:] == codes[:-1]
    presorted = bool(np.all(codes[1:] >= codes[:-1])
                     and np.all(times[1:][same_session] >= times[:-1][same_session]))
    if presorted:
        order = np.arange(len(codes), dtype=np.int64)
    else:
        order = np.lexsort((times, codes))                            # int64 (n,)
    del same_session
    lengths = np.bincount(codes, minlength=n_sessions)                # (S,) by code
    starts = np.zeros(n_sessions + 1, dtype=np.int64)                 # (S+1,) group starts in `order`
    np.cumsum(lengths, out=starts[1:])
    first_times = times[order[starts[:-1]]]                           # (S,) each session's earliest time

    # 2) Order sessions by first-event time; stable, so ties keep first appearance (= code order).
    session_order = np.argsort(first_times, kind="stable")            # (S,) new position -> code

    # 3) Move whole groups to their new positions without a second sort over events:
    #    the k-th event of new session j is order[starts[code_j] + k].
    if presorted and np.all(np.diff(session_order) == 1):
        # Already in final order: no gather (saves two copies of the event arrays).
        session_ids = session_dict.to_numpy(zero_copy_only=False).astype(object)
        return SessionData(offsets=starts, items=items, times=times, session_ids=session_ids,
                           item_ids=item_ids, supports=supports,
                           n_unknown_events=int(n_unknown), source=name)
    new_lengths = lengths[session_order]
    offsets = np.zeros(n_sessions + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=offsets[1:])
    within = np.arange(len(codes), dtype=np.int64) - np.repeat(offsets[:-1], new_lengths)
    gather = order[np.repeat(starts[:-1][session_order], new_lengths) + within]  # (n,)

    session_ids = session_dict.to_numpy(zero_copy_only=False).astype(object)[session_order]
    return SessionData(offsets=offsets, items=items[gather], times=times[gather],
                       session_ids=session_ids, item_ids=item_ids, supports=supports,
                       n_unknown_events=int(n_unknown), source=name)


def as_session_data(data, item_map: Optional[SessionData] = None, **read_kw) -> SessionData:
    """``data`` as SessionData: a SessionData is returned as it is, or mapped again through its
    original item ids when it was mapped with another item map than ``item_map``; a path,
    DataFrame or Table is read with read_sessions(data, item_map, **read_kw)."""
    if isinstance(data, SessionData):
        if item_map is not None and not same_item_map(data, item_map):
            return SessionData.from_arrays(
                np.repeat(data.session_ids, data.session_lengths), data.item_ids[data.items],
                data.times, item_map=item_map, source=data.source)
        return data
    return read_sessions(data, item_map=item_map, **read_kw)


def training_fingerprint(data: SessionData) -> str:
    """A digest of what training reads of the data: the sessions' boundaries and their item
    indices, in order (times only order them; ids are in the item map). A checkpoint keeps it,
    so that resume refuses other events with the same count and item map. About 1 s per
    100M events."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for array in (data.offsets, data.items):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).data)
    return digest.hexdigest()


def same_item_map(a: SessionData, b: SessionData) -> bool:
    """True when a and b map the same original item ids to the same indices."""
    return a.item_ids is b.item_ids or (
        a.n_items == b.n_items and bool(np.all(a.item_ids == b.item_ids)))


def require_trainable(data: SessionData, min_lanes: int = 1) -> None:
    """Raise DataError unless the data gives a training step: ``min_lanes`` sessions
    (GRU4RecConfig.min_lanes: 2 when the negatives are in-batch only, n_sample = 0) of at least
    2 events running side by side (a single such session then trained nothing, loss 0)."""
    n_long = int(np.count_nonzero(data.session_lengths >= 2)) if data.n_sessions else 0
    if n_long == 0:
        raise DataError(f"{data.source}: no session has 2 or more events; nothing to train on")
    if n_long < min_lanes:
        raise DataError(f"{data.source}: only one session has 2 or more events; with n_sample=0 "
                        f"a step's negatives are the other sessions' targets: nothing to train on")


def require_evaluable(data: SessionData) -> None:
    """Raise DataError unless test data has an evaluation point (a session with 2 or more
    events: each event but the first is predicted). Without one every metric would be a
    meaningless 0."""
    if data.n_sessions == 0 or int(data.session_lengths.max()) < 2:
        known = " known" if data.n_unknown_events else ""
        raise DataError(f"{data.source}: no evaluation points: every test session has fewer "
                        f"than 2{known} events")
