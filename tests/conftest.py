"""Shared fixtures of the test suite.

- ``tiny_tsv``: a factory writing a small session file (customary GRU4Rec TSV format) to tmp_path.
- ``synthetic_tsv``: a factory writing a seeded synthetic train/test pair (fastgru4rec.synthetic).
- ``one_torch_thread``: a context manager, for module-scoped autouse fixtures of model tests;
  the ``single_torch_thread`` fixture applies it to a module (``pytestmark``).
- ``shared_data``: the real-data folder (../shared/data or $FASTGRU4REC_DATA), skipped if absent;
  ``shared_file`` gives one file in it, skipped if that file is absent (``shared_path(*parts)``:
  the same as a plain function, for module-scoped fixtures).
- ``missing_data(reason)``: how every test reading ../shared (data, golden outputs) gives up when
  it is absent: a skip, or a failure when FASTGRU4REC_REQUIRE_DATA=1 (CI, where ../shared is
  beside the clone: a missing file there is an error, not a silent skip).
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pytest

# Kernel tests run in Triton's CPU interpreter where there is no GPU. Triton reads the variable
# when a kernel is decorated (when a kernels/ module is imported), so it is set here, before
# any test module imports one.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

HEADER = ("SessionId", "ItemId", "Time")


def subprocess_env(**extra) -> dict:
    """Environment for a child ``python -m fastgru4rec``: it imports the same fastgru4rec as
    this process (the installed package, or a source checkout on PYTHONPATH), so the child
    has the same native extension."""
    import fastgru4rec

    env = dict(os.environ)
    where = str(Path(fastgru4rec.__file__).resolve().parents[1])
    env["PYTHONPATH"] = where + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def benchmarks_script(name: str):
    """The module of benchmarks/<name>.py (benchmarks/ is not a package), imported by path
    once per process."""
    import importlib.util
    import sys

    key = f"_benchmarks_{name}"
    if key not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def shared_data_dir() -> Path:
    """Where the real data lives: $FASTGRU4REC_DATA, else <repo>/../shared/data."""
    env = os.environ.get("FASTGRU4REC_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one intra-op thread, then restore the previous count.

    The test models are tiny: a second OpenMP thread buys nothing, and on a loaded 2-core
    machine the threads' barriers made a 1-epoch toy fit take seconds instead of ~0.05 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_torch_thread():
    """one_torch_thread for a whole module: ``pytestmark = pytest.mark.usefixtures(
    "single_torch_thread")``."""
    with one_torch_thread():
        yield


def write_tsv(path: Path, rows: Iterable[Sequence], header: Optional[Sequence[str]] = HEADER,
              sep: str = "\t") -> Path:
    """Write rows (tuples of values, str()-ed) with an optional header line."""
    lines = [sep.join(header)] if header is not None else []
    lines += [sep.join(str(v) for v in row) for row in rows]
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def sessions_to_rows(sessions):
    """{session id: [item, item, ...]} -> rows (session, item, time), sessions 100 s apart,
    events 1 s apart, in dict order."""
    rows = []
    for s, (sid, items) in enumerate(sessions.items()):
        for j, item in enumerate(items):
            rows.append((sid, item, 100 * s + j))
    return rows


def data_to_rows(data):
    """SessionData -> rows (session id, original item id, time) in its session order."""
    rows = []
    for s in range(data.n_sessions):
        lo, hi = data.offsets[s], data.offsets[s + 1]
        for e in range(lo, hi):
            rows.append((data.session_ids[s], data.item_ids[data.items[e]], repr(float(data.times[e]))))
    return rows


@pytest.fixture
def tiny_tsv(tmp_path):
    """tiny_tsv(rows or {session: [items]}, name="data.tsv", header=HEADER, sep="\\t") -> Path.

    rows: tuples (session, item, time); a dict of item lists is turned into rows with
    increasing times. Raw text can be given with ``text=`` instead (written as is)."""

    def make(rows=None, name: str = "data.tsv", header: Optional[Sequence[str]] = HEADER,
             sep: str = "\t", text: Optional[str] = None) -> Path:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
            return path
        if isinstance(rows, dict):
            rows = sessions_to_rows(rows)
        return write_tsv(path, rows or [], header=header, sep=sep)

    return make


@pytest.fixture
def synthetic_tsv(tmp_path):
    """synthetic_tsv(n_items=60, n_sessions=200, seed=7) -> (train.tsv, test.tsv) paths,
    written from fastgru4rec.synthetic.synthetic_split (test keeps its unknown items out,
    as synthetic_split maps test with the training items)."""
    from fastgru4rec.synthetic import synthetic_split

    def make(n_items: int = 60, n_sessions: int = 200, seed: int = 7, prefix: str = ""):
        train, test = synthetic_split(n_items=n_items, n_sessions=n_sessions, seed=seed)
        return (write_tsv(tmp_path / f"{prefix}train.tsv", data_to_rows(train)),
                write_tsv(tmp_path / f"{prefix}test.tsv", data_to_rows(test)))

    return make


def missing_data(reason: str):
    """Give up on a test whose ../shared input is absent: skip with the reason, or fail with it
    (one line, no traceback) when FASTGRU4REC_REQUIRE_DATA=1."""
    if os.environ.get("FASTGRU4REC_REQUIRE_DATA", "") not in ("", "0"):
        pytest.fail(f"real data required (FASTGRU4REC_REQUIRE_DATA=1) but unavailable: {reason}",
                    pytrace=False)
    pytest.skip(reason)


def _shared_root() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        missing_data(f"real data not found at {root} (set FASTGRU4REC_DATA to its folder)")
    return root


def shared_path(*parts: str) -> Path:
    """shared_path("rsc15-sample", "test.tsv") -> Path in the real-data folder; skips (or fails,
    see missing_data) when the folder or the file is absent."""
    path = _shared_root().joinpath(*parts)
    if not path.exists():
        missing_data(f"real data file {path} not found (set FASTGRU4REC_DATA)")
    return path


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder; the test is skipped (with the reason) when it is absent."""
    return _shared_root()


@pytest.fixture
def shared_file(shared_data):
    """shared_file("rsc15-sample", "test.tsv") -> Path; skips when that file is absent."""
    return shared_path


def kernel_test_setup(kernels_name: str):
    """For a Triton kernel test module: skip the whole module unless CUDA is there or
    TRITON_INTERPRET=1 was set at process start (this conftest sets it without CUDA); returns
    (the kernels' launch module, the device its tests use: "cuda", or "cpu" when interpreting)."""
    import os

    import pytest
    import torch

    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 set at process start",
                    allow_module_level=True)
    pytest.importorskip("triton")
    from fastgru4rec.ops.backend import load_kernels

    kernels = load_kernels(kernels_name)
    launch = load_kernels("launch")
    problem = launch.interpreter_problem()
    if problem is not None:
        pytest.skip(problem, allow_module_level=True)
    on_cpu = launch.interpreting()
    return kernels, ("cuda" if torch.cuda.is_available() and not on_cpu else "cpu")


# ------------------------------------------------------------------ the CLI in-process
def run_cli(capsys, *args):
    """fastgru4rec.cli.main(args) in this process: (exit status, stdout, stderr)."""
    from fastgru4rec.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_error_lines(err: str):
    """stderr lines less warnings: the CLI's one-line ``fastgru4rec CMD: warning: ...`` (e.g.
    the native-extension warning of a run that got as far as training, or a parameter without
    effect), and Python's two-line form (a warning line and its source line after it) for any
    warning raised outside the command. They are not part of the error report."""
    keep, skip_next = [], False
    for line in err.splitlines():
        if skip_next:
            skip_next = False
            continue
        if "Warning:" in line and ".py:" in line:
            skip_next = True
            continue
        if re.match(r"fastgru4rec [\w-]+: warning: ", line):
            continue
        keep.append(line)
    return keep


def assert_cli_error(result, command, *fragments, out_empty=True):
    """result = (rc, out, err): exit 2, no traceback, one stderr line
    ``fastgru4rec <command>: error: ...`` holding each of ``fragments``; returns that line."""
    rc, out, err = result
    assert "Traceback" not in err
    assert rc == 2, (rc, err)
    lines = cli_error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastgru4rec {command}: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    if out_empty:
        assert out == ""
    return lines[0]
