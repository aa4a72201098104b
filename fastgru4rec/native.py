"""The C++ extension ``fastgru4rec._native`` (csrc/) and thin Python wrappers over it.

If the extension did not build or does not load, :func:`available` is False, one
``RuntimeWarning`` says why (once per process), and callers with backend "auto" fall back to
the pure-Python reference (fastgru4rec/batching.py, fastgru4rec/sampling.py).

Environment: ``FASTGRU4REC_NATIVE_PATH`` loads the extension from that file instead (CI uses it
for the AddressSanitizer build); ``FASTGRU4REC_NO_NATIVE=1`` acts as if it did not build.

Public API
    available() -> bool
    load_error() -> Optional[BaseException]
    epoch_schedule(offsets, items, batch_size, min_lanes=1, order=None, n_items=None) -> EpochSchedule
    ScheduleStream(offsets, items, batch_size, min_lanes=1, chunk_steps=64, n_slots=3,
                   buffers=None, order=None, n_items=None)   iterate -> EpochSchedule chunks
    stream_buffers(chunk_steps, lanes, n_slots=3, empty=numpy.empty) -> list of slot dicts
    AliasSampler(supports, alpha, seed=42, n_threads=None)    .draw(out) / .sample(n)
    adagrad_momentum_rows(table, acc, vel, rows, grad, lr, momentum, eps)   in place, numpy
    adagrad_momentum_scatter(table, acc, vel, ids, grad, lr, momentum, eps, bias=None)
                                                the same, ids repeat; bias: a second table
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Callable, List, Optional

import numpy as np

from .batching import EpochSchedule
from .errors import ConfigError, DataError

ABI_VERSION = 4

_module = None
_error: Optional[BaseException] = None
_tried = False


def _load():
    """The extension module, or None (with one warning) when it cannot be loaded."""
    global _module, _error, _tried
    if _tried:
        return _module
    _tried = True
    try:
        if os.environ.get("FASTGRU4REC_NO_NATIVE", "") not in ("", "0"):
            raise ImportError("disabled by FASTGRU4REC_NO_NATIVE")
        path = os.environ.get("FASTGRU4REC_NATIVE_PATH")
        if path:
            spec = importlib.util.spec_from_file_location("fastgru4rec._native", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"FASTGRU4REC_NATIVE_PATH={path!r} is not a loadable extension")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module("fastgru4rec._native")
        if getattr(mod, "abi_version", None) != ABI_VERSION:
            raise ImportError(f"stale extension (abi_version {getattr(mod, 'abi_version', None)}, "
                              f"expected {ABI_VERSION}): rebuild it")
        _module = mod
    except Exception as e:  # ImportError, OSError (bad .so), anything a broken build raises
        _error = e
        here = os.path.dirname(os.path.abspath(__file__))
        warnings.warn(
            f"fastgru4rec: the native extension is unavailable ({type(e).__name__}: {e}); using the "
            f"pure-Python batcher and sampler, which are much slower. The package was imported "
            f"from {here}: reinstall it (`pip install --force-reinstall --no-deps fastgru4rec`), "
            "or in a source checkout build it with `pip install --no-deps -e .` (a C++17 "
            "compiler and CMake are needed; from outside the checkout, Python imports the "
            "installed package instead).", RuntimeWarning, stacklevel=3)
    return _module


def available() -> bool:
    """True when the C++ extension is loaded."""
    return _load() is not None


def load_error() -> Optional[BaseException]:
    """Why the extension is unavailable (None when it loaded or was not tried yet)."""
    return _error


def _require():
    mod = _load()
    if mod is None:
        raise RuntimeError(f"the native extension is unavailable: {_error}")
    return mod


def _int_array(a, name: str, dtypes=(np.int64,)) -> np.ndarray:
    """a as a C-contiguous array of one of `dtypes` (the first when a conversion is needed);
    only integer input is accepted (a float array would be silently truncated)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise DataError(f"{name} must be an integer array (got dtype {a.dtype})")
    if a.dtype not in [np.dtype(d) for d in dtypes]:
        a = a.astype(dtypes[0])   # uint64 beyond int64 wraps negative: caught as out of range
    return np.ascontiguousarray(a)


def _schedule_args(offsets, items, order, n_items):
    offsets = _int_array(offsets, "session offsets")
    items = _int_array(items, "session items", (np.int64, np.int32))
    if order is not None:
        order = _int_array(order, "session order")
    return offsets, items, order, -1 if n_items is None else int(n_items)


def epoch_schedule(offsets, items, batch_size: int, min_lanes: int = 1, order=None,
                   n_items: Optional[int] = None) -> EpochSchedule:
    """One epoch's session-parallel schedule (REFERENCE §2), computed in C++ (GIL released).

    offsets: int (S+1,) CSR offsets into items; items: int (n_events,) item indices;
    order: None or int (S,) permutation, session k of the epoch being session order[k]
    (None: the sessions in array order, i.e. already sorted by start time);
    n_items: when given, every item must be < n_items. Equal element for element to
    batching.session_parallel_schedule(offsets, items, batch_size, min_lanes) when order is None.
    Raises DataError (a ValueError) on bad arguments.
    """
    mod = _require()
    args = _schedule_args(offsets, items, order, n_items)
    try:
        width, step_offsets, inputs, targets, reset, keep_offsets, keep = mod.epoch_schedule(
            args[0], args[1], int(batch_size), int(min_lanes), args[2], args[3])
    except ValueError as e:
        raise DataError(str(e)) from None
    return EpochSchedule(width=width, step_offsets=step_offsets, inputs=inputs, targets=targets,
                         reset=reset, keep_offsets=keep_offsets, keep=keep)


_SLOT_DTYPES = {"inputs": np.int32, "targets": np.int32, "reset": np.uint8, "width": np.int32,
                "step_offsets": np.int64, "keep_offsets": np.int64, "keep": np.int32}


def stream_buffers(chunk_steps: int, lanes: int, n_slots: int = 3,
                   empty: Callable = np.empty) -> List[dict]:
    """Buffers for a ScheduleStream: n_slots dicts of 1-d arrays made by empty(n, dtype).

    Sizes per slot: inputs/targets/reset and keep chunk_steps*lanes, width chunk_steps,
    step_offsets/keep_offsets chunk_steps+1, i.e. 13 bytes per lane-step plus 20 per step.
    For pinned host memory pass ``empty=pinned_empty`` (torch tensors; the stream writes
    into them through their shared-memory numpy views).
    """
    sizes = {"inputs": chunk_steps * lanes, "targets": chunk_steps * lanes,
             "reset": chunk_steps * lanes, "width": chunk_steps,
             "step_offsets": chunk_steps + 1, "keep_offsets": chunk_steps + 1,
             "keep": chunk_steps * max(lanes, 1)}
    return [{k: empty(sizes[k], _SLOT_DTYPES[k]) for k in _SLOT_DTYPES} for _ in range(n_slots)]


def pinned_empty(n: int, dtype) -> "torch.Tensor":  # noqa: F821
    """A 1-d torch tensor of n entries in pinned host memory (plain host memory without CUDA)."""
    import torch
    return torch.empty(int(n), dtype=getattr(torch, np.dtype(dtype).name),
                       pin_memory=torch.cuda.is_available())


def _as_numpy(buf):
    """A numpy view of buf: numpy arrays as they are, torch CPU tensors (pinned ones included)
    through .numpy(), which shares their memory."""
    if isinstance(buf, np.ndarray):
        return buf
    if hasattr(buf, "numpy") and hasattr(buf, "is_cuda"):
        if buf.is_cuda:
            raise ValueError("stream buffers must be host memory (a CUDA tensor was given)")
        return buf.numpy()
    return buf   # the extension reports what is wrong with it


class ScheduleStream:
    """The epoch's schedule written chunk by chunk by a background C++ thread, ahead of the
    consumer, into a ring of n_slots caller-visible buffers (memory bounded by the chunk size).

    Iterating yields each chunk as an EpochSchedule of views into the slot's buffers
    (step_offsets / keep_offsets relative to the chunk). A chunk's slot is handed back to the
    producer when the next chunk is requested, so finish with a chunk (including any
    asynchronous copy out of pinned memory) before asking for the next one. Low level:
    acquire() -> (chunk, slot) or None, release(slot).

    buffers: None (numpy buffers are allocated) or a list of slot dicts as made by
    stream_buffers(); numpy arrays or torch CPU tensors (e.g. pinned) of the right dtypes.
    """

    def __init__(self, offsets, items, batch_size: int, min_lanes: int = 1,
                 chunk_steps: int = 64, n_slots: int = 3, buffers: Optional[List[dict]] = None,
                 order=None, n_items: Optional[int] = None):
        mod = _require()
        offsets, items, order, n_items = _schedule_args(offsets, items, order, n_items)
        if int(batch_size) <= 0:
            raise DataError(f"batch_size must be positive (got {batch_size})")
        if int(chunk_steps) <= 0:
            raise DataError(f"chunk_steps must be positive (got {chunk_steps})")
        if buffers is None:
            if int(n_slots) <= 0:
                raise DataError(f"n_slots must be positive (got {n_slots})")
            lanes = min(int(batch_size), max(int(offsets.shape[0]) - 1, 0))
            buffers = stream_buffers(int(chunk_steps), lanes, int(n_slots))
        if not isinstance(buffers, (list, tuple)):
            raise DataError("buffers must be a list of slot dicts (see stream_buffers)")
        self._bufs = [{k: _as_numpy(v) for k, v in b.items()} if isinstance(b, dict) else b
                      for b in buffers]
        try:
            self._s = mod.ScheduleStream(offsets, items, int(batch_size), int(min_lanes),
                                         int(chunk_steps), list(self._bufs), order, n_items)
        except ValueError as e:
            raise DataError(str(e)) from None
        self._held: Optional[int] = None

    @property
    def lanes(self) -> int:
        return self._s.lanes

    def acquire(self):
        """(chunk EpochSchedule, slot) of the next chunk, blocking until it is written;
        None at the end of the epoch. Release the slot when done with the chunk."""
        r = self._s.acquire()
        if r is None:
            return None
        slot, n_steps, n_events, n_keep = r
        b = self._bufs[slot]
        chunk = EpochSchedule(width=b["width"][:n_steps], step_offsets=b["step_offsets"][:n_steps + 1],
                              inputs=b["inputs"][:n_events], targets=b["targets"][:n_events],
                              reset=b["reset"][:n_events],
                              keep_offsets=b["keep_offsets"][:n_steps + 1], keep=b["keep"][:n_keep])
        return chunk, slot

    def release(self, slot: int) -> None:
        self._s.release(int(slot))

    def __iter__(self):
        try:
            while True:
                if self._held is not None:
                    self.release(self._held)
                    self._held = None
                r = self.acquire()
                if r is None:
                    return
                chunk, self._held = r
                yield chunk
        finally:
            if self._held is not None:
                held, self._held = self._held, None
                try:
                    self.release(held)
                except ValueError:   # the stream was closed meanwhile
                    pass

    def stats(self) -> dict:
        """chunks, waits, waits_after_first, wait_seconds (first chunk excluded),
        first_wait_seconds: how long the consumer was blocked in acquire()."""
        return self._s.stats()

    def close(self) -> None:
        """Stops the producer thread (also done when the object is collected)."""
        self._s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AliasSampler:
    """Negative sampler of p_j ∝ supports_j ** alpha (REFERENCE §4), C++ alias table.

    Draw number c of the sampler's life is a function of (seed, c) only (counter-based RNG),
    so the ids do not depend on n_threads (None: all cores). ``position`` is the number of
    draws made so far (settable, to resume a stream of draws).
    """

    def __init__(self, supports, alpha: float, seed: int = 42, n_threads: Optional[int] = None):
        mod = _require()
        supports = np.ascontiguousarray(np.asarray(supports, dtype=np.float64))
        seed = int(seed)
        if seed < 0:
            raise ConfigError(f"seed must be a non-negative integer (got {seed})")
        try:
            self._s = mod.AliasSampler(supports, float(alpha), seed % (1 << 64),
                                       0 if n_threads is None else int(n_threads))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def draw(self, out: np.ndarray) -> np.ndarray:
        """Fills out (int64 or int32, C-contiguous, any shape) with the next out.size draws."""
        self._s.draw(out)
        return out

    def sample(self, n: int) -> np.ndarray:
        """The next n draws, int64 (n,)."""
        return self._s.sample(int(n))

    def probabilities(self) -> np.ndarray:
        """float64 (N,): the distribution the alias table draws from."""
        return np.asarray(self._s.probabilities())

    @property
    def position(self) -> int:
        return self._s.position

    @position.setter
    def position(self, value: int) -> None:
        self._s.position = int(value)

    @property
    def n_items(self) -> int:
        return self._s.n_items

    @property
    def n_threads(self) -> int:
        return self._s.n_threads


def adagrad_momentum_rows(table: np.ndarray, acc: np.ndarray, vel: Optional[np.ndarray],
                          rows: np.ndarray, grad: np.ndarray, lr: float, momentum: float,
                          eps: float) -> None:
    """Sparse Adagrad with momentum on the unique ``rows`` of ``table`` in place, one C++ pass
    per row (csrc/optim.hpp): acc += g²; v = momentum·v - lr·g/sqrt(acc + eps); table += v
    (vel None: table -= lr·g/sqrt(acc + eps)). float32/float64 C-contiguous arrays; table, acc,
    vel of one shape (N, ...); rows int64 (U,) in [0, N); grad (U, ...). Raises DataError."""
    mod = _require()
    try:
        mod.adagrad_momentum_rows(table, acc, vel, rows, grad, float(lr), float(momentum),
                                  float(eps))
    except ValueError as e:
        raise DataError(f"adagrad_momentum_rows: {e}") from None


def adagrad_momentum_scatter(table: np.ndarray, acc: np.ndarray, vel: Optional[np.ndarray],
                             ids: np.ndarray, grad: np.ndarray, lr: float, momentum: float,
                             eps: float, bias: Optional[tuple] = None) -> None:
    """adagrad_momentum_rows for ``ids`` that may repeat: grad (L, ...) one row per occurrence;
    the rows of equal ids are summed (occurrence order, a hash: no sort), then each touched row
    is updated once (csrc/optim.hpp). Same arrays as adagrad_momentum_rows.

    bias: None or (bias_table, bias_acc, bias_vel or None, bias_ids, bias_grad), a second table
    (its own dtype; the training step's item bias at its columns) updated the same way in the
    same call. Every array of both tables is checked before either is written. Raises
    DataError (naming the bias's arrays "bias ...")."""
    mod = _require()
    try:
        mod.adagrad_momentum_scatter(table, acc, vel, ids, grad, float(lr), float(momentum),
                                     float(eps), bias)
    except ValueError as e:
        raise DataError(f"adagrad_momentum_scatter: {e}") from None

