"""The C++ session batcher (csrc/schedule.hpp, csrc/stream.cpp) against the Python reference
(fastgru4rec.batching.session_parallel_schedule, the oracle): identity, the chunked stream,
memory per event, bad arguments, and the fallback when the extension is missing.

Skipped when the extension is not built, unless FASTGRU4REC_REQUIRE_NATIVE=1 (CI, sanitizers).
FASTGRU4REC_HYPOTHESIS_EXAMPLES caps the hypothesis examples (the sanitizer run lowers it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastgru4rec import native
from fastgru4rec.batching import build_schedule, session_parallel_schedule

if not native.available():
    if os.environ.get("FASTGRU4REC_REQUIRE_NATIVE", "") not in ("", "0"):
        raise RuntimeError(f"native extension required but unavailable: {native.load_error()}")
    pytest.skip(f"native extension unavailable: {native.load_error()}", allow_module_level=True)

_native = native._load()
EXAMPLES = int(os.environ.get("FASTGRU4REC_HYPOTHESIS_EXAMPLES", "150"))
FIELDS = ("width", "step_offsets", "inputs", "targets", "reset", "keep_offsets", "keep")


def assert_same(got, want):
    for f in FIELDS:
        g, w = getattr(got, f), getattr(want, f)
        assert g.dtype == w.dtype, f"{f}: dtype {g.dtype} != {w.dtype}"
        np.testing.assert_array_equal(g, w, err_msg=f)


def csr(lengths, n_items=1000, seed=0, dtype=np.int64):
    """offsets int64 (S+1,), items (sum lengths,) random ids in [0, n_items)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    items = np.random.default_rng(seed).integers(0, n_items, offsets[-1]).astype(dtype)
    return offsets, items


def load(path):
    """SessionData arrays (offsets, items) of a session file, sessions by first time."""
    from fastgru4rec.data import read_sessions
    d = read_sessions(path)
    return d.offsets, d.items


# ---------------------------------------------------------------- identity with the reference

@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 50), min_size=0, max_size=120),
       batch=st.integers(1, 512), min_lanes=st.sampled_from([1, 2]),
       int32=st.booleans(), seed=st.integers(0, 2**16))
def test_identity_random(lengths, batch, min_lanes, int32, seed):
    # Covers fewer sessions than lanes (batch up to 512 > 120 sessions) and n_sample 0
    # (min_lanes=2: stop once fewer than 2 lanes remain).
    offsets, items = csr(lengths, seed=seed, dtype=np.int32 if int32 else np.int64)
    assert_same(native.epoch_schedule(offsets, items, batch, min_lanes),
                session_parallel_schedule(offsets, items, batch, min_lanes))


@settings(max_examples=EXAMPLES, deadline=None)
@given(lengths=st.lists(st.integers(0, 4), min_size=0, max_size=60),
       batch=st.integers(1, 40), min_lanes=st.integers(0, 3))
def test_identity_short_and_empty_sessions(lengths, batch, min_lanes):
    # Sessions of length 0 and 1 give nothing and make lanes refill several times in a row.
    offsets, items = csr(lengths)
    assert_same(native.epoch_schedule(offsets, items, batch, min_lanes),
                session_parallel_schedule(offsets, items, batch, min_lanes))


def test_identity_wide_batch_many_finishers():
    # Many lanes finishing at once (the branch-free ordering path of pop_finished).
    rng = np.random.default_rng(3)
    offsets, items = csr(rng.choice([2, 3], size=5000), seed=3)
    for batch in (64, 512, 4096):
        for min_lanes in (1, 2):
            assert_same(native.epoch_schedule(offsets, items, batch, min_lanes),
                        session_parallel_schedule(offsets, items, batch, min_lanes))


def test_identity_long_sessions_beyond_ring():
    # Sessions longer than the bucket ring (2^16 steps) share buckets; fin tells them apart.
    offsets, items = csr([70_000, 3, 140_000, 2, 5, 66_000], seed=5)
    for batch in (1, 2, 3, 8):
        assert_same(native.epoch_schedule(offsets, items, batch, 1),
                    session_parallel_schedule(offsets, items, batch, 1))


@pytest.mark.parametrize("name", ["train_full.tsv", "test.tsv"])
@pytest.mark.parametrize("batch", [1, 32, 100, 512])
@pytest.mark.parametrize("min_lanes", [1, 2])
def test_identity_rsc15_sample(shared_file, name, batch, min_lanes):
    # test.tsv with min_lanes=1 is the evaluation schedule: the same native code.
    offsets, items = load(shared_file("rsc15-sample", name))
    assert_same(native.epoch_schedule(offsets, items, batch, min_lanes),
                session_parallel_schedule(offsets, items, batch, min_lanes))


def test_session_order():
    rng = np.random.default_rng(1)
    offsets, items = csr(rng.integers(1, 9, 300), seed=1)
    order = rng.permutation(300)
    # The reference on the sessions laid out in that order.
    parts = [items[offsets[s]:offsets[s + 1]] for s in order]
    offsets2 = np.zeros(301, np.int64)
    np.cumsum([len(p) for p in parts], out=offsets2[1:])
    want = session_parallel_schedule(offsets2, np.concatenate(parts), 16, 2)
    assert_same(native.epoch_schedule(offsets, items, 16, 2, order=order), want)


def test_build_schedule_backends():
    offsets, items = csr([3, 1, 5, 2, 7, 4, 2], seed=2)
    ref = build_schedule(offsets, items, 3, 2, backend="python")
    assert_same(build_schedule(offsets, items, 3, 2, backend="native"), ref)
    assert_same(build_schedule(offsets, items, 3, 2), ref)   # auto: native here
    with pytest.raises(ValueError, match="unknown schedule backend"):
        build_schedule(offsets, items, 3, 2, backend="cuda")


def another_thread_ran_during(calls, make_call):
    """Whether a second Python thread, released just before, got to run Python code during one
    of `calls` calls of make_call() (stopping at the first call during which it did).

    The switch interval is set far beyond the test's length, so the interpreter never forces
    the running thread to hand over the GIL: the other thread can run only while this one
    releases the GIL itself. No clock is read, so a loaded machine changes nothing."""
    go, ran = threading.Event(), threading.Event()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e6)
    th = threading.Thread(target=lambda: (go.wait(), ran.set()), daemon=True)
    try:
        th.start()      # the thread blocks in go.wait() (releasing the GIL), or gets there later
        go.set()        # from here on it needs the GIL to run
        for _ in range(calls):
            make_call()
            if ran.is_set():
                break
        return ran.is_set()
    finally:
        sys.setswitchinterval(old)
        go.set()
        th.join()


@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(), reason="no GIL")
def test_epoch_schedule_releases_gil():
    # The raw extension on prepared arrays: nothing but the C++ call can release the GIL (numpy
    # work in the wrapper may release it on its own). The control holds the GIL in C for as
    # many calls and the other thread never runs: the method tells the two apart.
    offsets, items = csr(np.full(20_000, 5), seed=4)
    assert not another_thread_ran_during(50, lambda: sum(range(20_000)))
    assert another_thread_ran_during(
        2000, lambda: _native.epoch_schedule(offsets, items, 1, 1, None, -1))


# ---------------------------------------------------------------- memory

@pytest.mark.parametrize("batch", [8, 32, 48, 512])
def test_bytes_per_event(shared_file, batch):
    offsets, items = load(shared_file("rsc15-sample", "train_full.tsv"))
    s = native.epoch_schedule(offsets, items, batch, 2)
    nbytes = sum(getattr(s, f).nbytes for f in FIELDS)
    assert nbytes / s.n_events <= 13, f"{nbytes / s.n_events:.2f} bytes per event"


def test_stream_memory_is_bounded_by_chunk():
    # The stream's buffers depend on chunk_steps and lanes only, never on the epoch's length.
    for n_sessions in (100, 10_000):
        offsets, items = csr(np.full(n_sessions, 6), seed=0)
        s = native.ScheduleStream(offsets, items, 32, 2, chunk_steps=16, n_slots=2)
        total = sum(a.nbytes for slot in s._bufs for a in slot.values())
        assert total == 2 * (16 * 32 * (4 + 4 + 1 + 4) + 16 * 4 + 2 * 17 * 8)
        s.close()


# ---------------------------------------------------------------- chunked stream

def collect(stream):
    """Concatenation of a stream's chunks as an EpochSchedule-like dict (offsets rebuilt)."""
    chunks = [{f: getattr(c, f).copy() for f in FIELDS} for c in stream]
    for c in chunks:
        assert c["step_offsets"][0] == 0 and c["keep_offsets"][0] == 0
        assert c["step_offsets"][-1] == c["inputs"].shape[0]
        assert c["keep_offsets"][-1] == c["keep"].shape[0]
    cat = lambda f, dt: np.concatenate([c[f] for c in chunks]) if chunks else np.zeros(0, dt)
    width = cat("width", np.int32)
    keep_counts = np.concatenate([np.diff(c["keep_offsets"]) for c in chunks]) if chunks else np.zeros(0)
    return dict(width=width, inputs=cat("inputs", np.int32), targets=cat("targets", np.int32),
                reset=cat("reset", np.uint8), keep=cat("keep", np.int32), keep_counts=keep_counts,
                n_chunks=len(chunks), max_chunk_steps=max((len(c["width"]) for c in chunks), default=0))


def assert_stream_equals(got, want):
    np.testing.assert_array_equal(got["width"], want.width)
    np.testing.assert_array_equal(got["inputs"], want.inputs)
    np.testing.assert_array_equal(got["targets"], want.targets)
    np.testing.assert_array_equal(got["reset"], want.reset)
    np.testing.assert_array_equal(got["keep"], want.keep)
    np.testing.assert_array_equal(got["keep_counts"], np.diff(want.keep_offsets))


@settings(max_examples=EXAMPLES, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=0, max_size=80),
       batch=st.integers(1, 100), min_lanes=st.sampled_from([1, 2]),
       chunk_steps=st.integers(1, 9), n_slots=st.integers(1, 3))
def test_stream_equals_epoch(lengths, batch, min_lanes, chunk_steps, n_slots):
    offsets, items = csr(lengths)
    want = session_parallel_schedule(offsets, items, batch, min_lanes)
    with native.ScheduleStream(offsets, items, batch, min_lanes, chunk_steps=chunk_steps,
                               n_slots=n_slots) as s:
        got = collect(s)
    assert_stream_equals(got, want)
    assert got["max_chunk_steps"] <= chunk_steps
    assert got["n_chunks"] >= -(-want.n_steps // chunk_steps)


def test_stream_rsc15_small_keep_buffer(shared_file):
    # A keep buffer of one shrink step (lanes entries): chunks end early rather than overflow.
    offsets, items = load(shared_file("rsc15-sample", "train_full.tsv"))
    lanes = 64
    bufs = native.stream_buffers(5, lanes, n_slots=2)
    for b in bufs:
        b["keep"] = np.empty(lanes, np.int32)
    with native.ScheduleStream(offsets, items, lanes, 2, chunk_steps=5, buffers=bufs) as s:
        got = collect(s)
    assert_stream_equals(got, session_parallel_schedule(offsets, items, lanes, 2))


def test_stream_acquire_release_protocol():
    offsets, items = csr([4] * 10)
    s = native.ScheduleStream(offsets, items, 3, 1, chunk_steps=2, n_slots=2)
    first, slot0 = s.acquire()
    second, slot1 = s.acquire()
    assert (slot0, slot1) == (0, 1)
    with pytest.raises(ValueError, match="every buffer slot is held"):
        s.acquire()
    s.release(slot0)
    with pytest.raises(ValueError, match="is not held"):
        s.release(slot0)
    with pytest.raises(ValueError, match="out of range"):
        s.release(7)
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.acquire()
    s.close()   # idempotent


def test_stream_abandoned_midway():
    # Dropping a stream with its producer blocked on a full ring must not hang or crash.
    offsets, items = csr([5] * 2000)
    for _ in range(20):
        s = native.ScheduleStream(offsets, items, 8, 1, chunk_steps=3, n_slots=2)
        it = iter(s)
        next(it)
        del it, s


def test_stream_runs_ahead_of_the_consumer():
    """While the consumer holds the first chunk and asks for nothing, the producer thread
    writes every other slot in full, in order (chunk k of the reference schedule into slot k).

    Checked on the slots' buffers (filled with -1 first) while stats() still counts one chunk
    handed out; then the rest of the epoch must match. The timing claim (a 50 µs step never
    waits) is a benchmark: benchmarks/bench_batcher.py::test_stream_keeps_up_with_50us_steps."""
    offsets, items = csr(np.full(3000, 6), seed=8)
    lanes, C, n_slots = 32, 16, 5
    ref = session_parallel_schedule(offsets, items, lanes, 2)
    assert ref.n_steps > C * (n_slots + 1)   # more chunks than slots: the producer must stop
    bufs = native.stream_buffers(C, lanes, n_slots=n_slots)
    for b in bufs:
        for a in b.values():
            a.fill(-1 if a.dtype != np.uint8 else 255)

    def want(k):
        lo, hi = k * C, (k + 1) * C
        e0, e1 = ref.step_offsets[lo], ref.step_offsets[hi]
        return dict(width=ref.width[lo:hi], step_offsets=ref.step_offsets[lo:hi + 1] - e0,
                    inputs=ref.inputs[e0:e1], targets=ref.targets[e0:e1], reset=ref.reset[e0:e1])

    def written(slot, k):
        return all(np.array_equal(bufs[slot][f][:len(w)], w) for f, w in want(k).items())

    with native.ScheduleStream(offsets, items, lanes, 2, chunk_steps=C, buffers=bufs) as s:
        first, slot = s.acquire()
        assert slot == 0 and first.n_steps == C
        # Hang guard only (the producer needs milliseconds): a producer that waits for the
        # consumer never writes the slots, and fails here.
        deadline = time.monotonic() + 120
        while not all(written(k, k) for k in range(1, n_slots)):
            assert time.monotonic() < deadline, "the producer did not fill the free slots"
            time.sleep(0.002)
        assert s.stats()["chunks"] == 1
        s.release(slot)
        got = collect(s)
    keep_counts = np.diff(ref.keep_offsets)[C:]
    np.testing.assert_array_equal(got["width"], ref.width[C:])
    np.testing.assert_array_equal(got["inputs"], ref.inputs[ref.step_offsets[C]:])
    np.testing.assert_array_equal(got["targets"], ref.targets[ref.step_offsets[C]:])
    np.testing.assert_array_equal(got["reset"], ref.reset[ref.step_offsets[C]:])
    np.testing.assert_array_equal(got["keep"], ref.keep[ref.keep_offsets[C]:])
    np.testing.assert_array_equal(got["keep_counts"], keep_counts)


def test_stream_into_torch_tensors():
    torch = pytest.importorskip("torch")
    offsets, items = csr([3, 5, 2, 6, 4, 2, 8], seed=6)
    bufs = native.stream_buffers(4, 3, n_slots=2, empty=native.pinned_empty)
    assert isinstance(bufs[0]["inputs"], torch.Tensor)
    with native.ScheduleStream(offsets, items, 3, 2, chunk_steps=4, buffers=bufs) as s:
        got = collect(s)
    assert_stream_equals(got, session_parallel_schedule(offsets, items, 3, 2))


# ---------------------------------------------------------------- bad arguments

GOOD_OFF = np.array([0, 2, 5, 6], np.int64)
GOOD_ITEMS = np.array([1, 2, 3, 4, 5, 6], np.int64)


@pytest.mark.parametrize("offsets, items, kwargs, match", [
    (GOOD_OFF, np.array([1, 2, -3, 4, 5, 6]), {}, "item index out of range at event 2"),
    (GOOD_OFF, np.array([1, 2, 3, 4, 5, 2**31]), {}, "item index out of range at event 5"),
    (GOOD_OFF, GOOD_ITEMS, {"n_items": 6}, r"out of range at event 5: 6 not in \[0, 6\)"),
    (GOOD_OFF, np.array([1, 2, 3, 4, 5, 2**64 - 1], np.uint64), {}, "out of range"),
    (np.array([0, 3, 2, 6]), GOOD_ITEMS, {}, "non-decreasing .first bad index 2"),
    (np.array([1, 2, 5, 6]), GOOD_ITEMS, {}, "start at 0 and end at n_events=6"),
    (np.array([0, 2, 5]), GOOD_ITEMS, {}, "end at n_events=6"),
    (np.array([], np.int64), GOOD_ITEMS, {}, "n_sessions \\+ 1 >= 1"),
    (GOOD_OFF.astype(float), GOOD_ITEMS, {}, "offsets must be an integer array"),
    (GOOD_OFF, GOOD_ITEMS.astype(np.float32), {}, "items must be an integer array"),
    (GOOD_OFF, GOOD_ITEMS, {"batch_size": 0}, "batch_size must be positive"),
    (GOOD_OFF, GOOD_ITEMS, {"batch_size": -4}, "batch_size must be positive"),
    (GOOD_OFF, GOOD_ITEMS, {"batch_size": 2**40}, "batch_size must fit int32"),
    (GOOD_OFF, GOOD_ITEMS, {"min_lanes": -1}, "min_lanes must be >= 0"),
    (GOOD_OFF, GOOD_ITEMS, {"order": np.array([0, 1])}, "order must hold n_sessions=3"),
    (GOOD_OFF, GOOD_ITEMS, {"order": np.array([0, 1, 1])}, "not a permutation"),
    (GOOD_OFF, GOOD_ITEMS, {"order": np.array([0, 1, 3])}, "not a session index"),
])
def test_bad_schedule_arguments(offsets, items, kwargs, match):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        native.epoch_schedule(offsets, items, **kwargs)
    if "order" not in kwargs and "n_items" not in kwargs and items.dtype.kind in "iu" \
            and offsets.dtype.kind in "iu":
        with pytest.raises(ValueError, match=match):
            native.ScheduleStream(offsets, items, **kwargs)


@pytest.mark.parametrize("offsets, items, match", [
    (GOOD_OFF.astype(np.int32), GOOD_ITEMS, "session offsets must be a numpy int64 array"),
    (GOOD_OFF, GOOD_ITEMS.astype(np.int16), "session items must be a numpy int32 or int64 array"),
    (GOOD_OFF, GOOD_ITEMS.astype(float), "session items must be a numpy int32 or int64 array"),
    ([0, 2, 5, 6], GOOD_ITEMS, "must be a numpy int64 array .got type list"),
    (GOOD_OFF.reshape(2, 2), GOOD_ITEMS, "must be 1-d"),
    (np.arange(8, dtype=np.int64)[::2], GOOD_ITEMS[:6], "C-contiguous"),
])
def test_bad_buffers_raw_extension(offsets, items, match):
    # The extension itself checks dtypes and layouts (the Python wrapper converts first).
    with pytest.raises(ValueError, match=match):
        _native.epoch_schedule(offsets, items, 2)


def stream_args(**over):
    bufs = native.stream_buffers(4, 2, n_slots=2)
    args = dict(offsets=GOOD_OFF, items=GOOD_ITEMS, batch_size=2, min_lanes=1, chunk_steps=4,
                slots=bufs)
    args.update(over)
    return args


@pytest.mark.parametrize("mutate, match", [
    (lambda b: b[0].update(inputs=np.empty(8, np.int64)), "'inputs' must be a numpy int32 array"),
    (lambda b: b[0].update(reset=np.empty(8, np.int32)), "'reset' must be a numpy uint8 array"),
    (lambda b: b[1].update(targets=np.empty(7, np.int32)), "buffer 'targets' holds 7 entries"),
    (lambda b: b[0].update(step_offsets=np.empty(4, np.int64)), "'step_offsets' holds 4 entries"),
    (lambda b: b[0].update(keep=np.empty(1, np.int32)), "'keep' holds 1 entries"),
    (lambda b: b[0].pop("width"), "lacks the buffer 'width'"),
    (lambda b: b[0].update(inputs=np.empty(16, np.int32)[::2]), "C-contiguous"),
    (lambda b: b[0]["keep_offsets"].setflags(write=False), "must be writable"),
    (lambda b: b.__setitem__(0, "not a dict"), "must be a dict"),
])
def test_bad_stream_buffers(mutate, match):
    args = stream_args()
    mutate(args["slots"])
    with pytest.raises(ValueError, match=match):
        _native.ScheduleStream(**args)


def test_bad_stream_arguments():
    with pytest.raises(ValueError, match="chunk_steps must be"):
        _native.ScheduleStream(**stream_args(chunk_steps=0))
    with pytest.raises(ValueError, match="at least one buffer slot"):
        _native.ScheduleStream(**stream_args(slots=[]))
    with pytest.raises(ValueError, match="chunk_steps must be positive"):
        native.ScheduleStream(GOOD_OFF, GOOD_ITEMS, 2, chunk_steps=-1)
    bufs = native.stream_buffers(4, 2, n_slots=1)
    bufs[0]["inputs"] = [0] * 8
    with pytest.raises(ValueError, match="'inputs' must be a numpy int32 array .got type list"):
        native.ScheduleStream(GOOD_OFF, GOOD_ITEMS, 2, chunk_steps=4, buffers=bufs)


# ---------------------------------------------------------------- fallback without the extension

def test_fallback_without_extension():
    code = r"""
import warnings, numpy as np
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as w:
    from fastgru4rec import native
    from fastgru4rec.batching import build_schedule, session_parallel_schedule
    from fastgru4rec.sampling import SampleStore
    off = np.array([0, 2, 5, 6]); items = np.array([1, 2, 3, 4, 5, 6])
    a = build_schedule(off, items, 2)
    b = build_schedule(off, items, 2, backend="auto")
    assert not native.available() and not native.available()
    store = SampleStore(np.array([1.0, 2.0, 3.0]), 1.0, 4, 100, 1)
    assert store.backend == "python", store.backend
    try:
        build_schedule(off, items, 2, backend="native")
        raise SystemExit("backend='native' did not raise")
    except RuntimeError as e:
        assert "unavailable" in str(e)
msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
assert len(msgs) == 1, msgs
assert "native extension is unavailable" in msgs[0], msgs
print("ok")
"""
    env = dict(os.environ, FASTGRU4REC_NO_NATIVE="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
