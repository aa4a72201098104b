"""The C++ extension's contracts that the other native tests left open (found by a mutation
audit of csrc/: each test fails on a planted bug that all other tests let through): the
sampler's documented counter-based stream (by an independent Python-int computation), seeds
that are not shifted copies of each other, the thread count kept; the row updates' shape checks
(nothing written on a refusal); int32 items checked against the catalog; the schedule stream
(never an empty chunk, a held chunk never overwritten, its own copy of temporary offsets,
consistent wait statistics)."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from fastgru4rec import native
from fastgru4rec.errors import DataError

from conftest import subprocess_env

# the whole module is about the extension: skipped without it, unless it is required
if not native.available():
    if os.environ.get("FASTGRU4REC_REQUIRE_NATIVE", "") not in ("", "0"):
        raise RuntimeError(f"native extension required but unavailable: {native.load_error()}")
    pytest.skip(f"native extension unavailable: {native.load_error()}", allow_module_level=True)

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**63 + 5])
@pytest.mark.parametrize("N", [1, 8, 1024])
def test_sampler_draws_follow_documented_counter_rng(seed, N):
    # all supports equal and N a power of two: every column is whole (p_j == 1 exactly), so
    # draw c == floor(x_c * N / 2^64), x_c = mix64(mix64(seed) + (c + 1) * GAMMA)  (sampler.hpp)
    key = mix64(seed)
    want = [((mix64((key + (c + 1) * GAMMA) & M64) * N) >> 64) for c in range(2000)]
    s = native.AliasSampler(np.ones(N), 1.0, seed=seed, n_threads=1)
    np.testing.assert_array_equal(s.sample(2000), want)
    s.position = 1500
    np.testing.assert_array_equal(s.sample(10), want[1500:1510])


def test_neighbouring_seeds_are_not_shifted_copies():
    sup = np.ones(1 << 16)
    a = native.AliasSampler(sup, 1.0, seed=1).sample(10_000)
    b = native.AliasSampler(sup, 1.0, seed=2).sample(10_000)
    for lag in range(1, 50):
        assert np.mean(a[lag:] == b[:-lag]) < 0.01 and np.mean(b[lag:] == a[:-lag]) < 0.01, lag


def test_sampler_reports_the_thread_count_asked_for():
    for t in (1, 2, 5):
        assert native.AliasSampler(np.ones(4), 1.0, n_threads=t).n_threads == t


def test_rows_reject_a_velocity_of_another_shape():
    T, A, V = (np.zeros((5, 3), np.float64) for _ in range(3))
    G = np.ones((2, 3))
    for bad in (V[:4], np.zeros((5, 2))):
        with pytest.raises(DataError, match="vel must have the table's shape"):
            native.adagrad_momentum_rows(T, A, bad, np.array([0, 4]), G, 0.1, 0.5, 1e-6)
        with pytest.raises(DataError, match="vel must have the table's shape"):
            native.adagrad_momentum_scatter(T, A, bad, np.array([0, 4]), G, 0.1, 0.5, 1e-6)
    assert not T.any() and not A.any()


def test_rows_reject_a_gradient_of_another_row_width():
    T, A = np.zeros((5, 3)), np.zeros((5, 3))
    for G in (np.ones((2, 4)), np.ones((2, 2))):
        with pytest.raises(DataError, match="grad must have one row of the table's shape"):
            native.adagrad_momentum_rows(T, A, None, np.array([0, 1]), G, 0.1, 0.0, 1e-6)
        with pytest.raises(DataError, match="grad must have one row of the table's shape"):
            native.adagrad_momentum_scatter(T, A, None, np.array([0, 1]), G, 0.1, 0.0, 1e-6)
    assert not T.any() and not A.any()


@pytest.mark.parametrize("which", [0, 1, 2])
def test_rows_reject_read_only_tables(which):
    arrs = [np.zeros((5, 3)) for _ in range(3)]
    arrs[which].setflags(write=False)
    with pytest.raises(DataError, match="must be writable"):
        native.adagrad_momentum_rows(arrs[0], arrs[1], arrs[2], np.array([1]), np.ones((1, 3)),
                                     0.1, 0.5, 1e-6)
    assert not any(a.any() for a in arrs)


def test_int32_items_are_checked_against_n_items():
    off = np.array([0, 2, 5, 6], np.int64)
    for dt in (np.int64, np.int32):
        items = np.array([1, 2, 3, 4, 5, 6], dt)
        with pytest.raises(DataError, match=r"out of range at event 5: 6 not in \[0, 6\)"):
            native.epoch_schedule(off, items, 2, n_items=6)
        with pytest.raises(DataError, match=r"out of range at event 5"):
            native.ScheduleStream(off, items, 2, n_items=6)


def test_stream_never_hands_out_an_empty_chunk():
    off = np.arange(0, 4 * 12 + 1, 4, dtype=np.int64)        # 12 sessions of 4: 3 steps each
    items = np.arange(48, dtype=np.int64) % 7
    for chunk in (1, 3, 9):
        with native.ScheduleStream(off, items, 4, 1, chunk_steps=chunk, n_slots=2) as s:
            widths = [len(c.width) for c in s]
        assert all(w > 0 for w in widths), (chunk, widths)
        assert sum(widths) == 9


def test_stream_outlives_temporary_offsets(tmp_path):
    # the wrapper converts int32 offsets to a temporary int64 array; large (mmap'd, returned
    # to the OS when freed): the producer thread must read its own copy, never the temporary.
    code = textwrap.dedent("""
        import gc, numpy as np
        from fastgru4rec import native
        from fastgru4rec.batching import session_parallel_schedule
        S = 300_000
        off = (np.arange(S + 1, dtype=np.int64) * 3).astype(np.int32)
        items = (np.arange(3 * S) % 1000).astype(np.int64)
        s = native.ScheduleStream(off, items, 64, 1, chunk_steps=2, n_slots=1)
        gc.collect()
        junk = [np.full(S + 1, -7, np.int64) for _ in range(4)]   # reuse the freed memory
        got = np.concatenate([c.inputs.copy() for c in s])
        want = session_parallel_schedule(off.astype(np.int64), items, 64, 1).inputs
        assert np.array_equal(got, want), "stream read freed offsets"
        print("ok")
    """)
    # the child imports this process's fastgru4rec (and extension), not a source tree in cwd
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, (r.returncode, r.stdout[-500:], r.stderr[-1500:])


def _random_sessions(seed: int, n_sessions: int, max_length: int):
    """(offsets int64 (S+1,), items int64 (n,)): sessions of 2 .. max_length - 1 events over
    1,000 items."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, max_length, n_sessions)
    off = np.zeros(n_sessions + 1, np.int64)
    np.cumsum(lengths, out=off[1:])
    return off, rng.integers(0, 1000, off[-1])


def test_stream_wait_statistics_are_consistent():
    off, items = _random_sessions(0, 200_000, 30)
    with native.ScheduleStream(off, items, 512, 1, chunk_steps=256, n_slots=1) as s:
        n = sum(1 for _ in s)
        st = s.stats()
    assert st["chunks"] == n
    first = st["waits"] - st["waits_after_first"]
    assert first in (0, 1)
    assert (st["first_wait_seconds"] > 0) == (first == 1), st
    assert (st["wait_seconds"] > 0) == (st["waits_after_first"] > 0), st
    # one slot: after every release the producer must refill it before the next acquire
    assert st["waits_after_first"] >= 1, st


def test_stream_never_overwrites_a_held_chunk():
    # Big chunks (the producer needs milliseconds per slot) so the consumer holds chunk 0 while
    # the producer is still writing slot 1; then the producer must wait for slot 0's release.
    from fastgru4rec.batching import session_parallel_schedule
    off, items = _random_sessions(1, 60_000, 40)
    lanes, C = 256, 512
    ref = session_parallel_schedule(off, items, lanes, 1)
    e1 = ref.step_offsets[C]
    for n_slots in (1, 2, 3):
        with native.ScheduleStream(off, items, lanes, 1, chunk_steps=C, n_slots=n_slots) as s:
            chunk, slot = s.acquire()
            time.sleep(0.3)   # the producer fills every other slot meanwhile
            np.testing.assert_array_equal(chunk.inputs, ref.inputs[:e1])
            np.testing.assert_array_equal(chunk.targets, ref.targets[:e1])
            np.testing.assert_array_equal(chunk.width, ref.width[:C])
            s.release(slot)


@pytest.mark.parametrize("lengths", [[], [1], [1, 0, 1], [0]])
def test_stream_of_an_empty_epoch_yields_no_chunk(lengths):
    off = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=off[1:])
    items = np.zeros(int(off[-1]), np.int64)
    with native.ScheduleStream(off, items, 4, 1, chunk_steps=3, n_slots=2) as s:
        chunks = list(s)
        assert chunks == [] and s.stats()["chunks"] == 0
