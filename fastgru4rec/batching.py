"""Session-parallel mini-batches (REFERENCE §2): the pure-numpy reference schedule.

B lanes each hold one session and a cursor. At every step lane i feeds the item at its cursor
and the next item of its session is the target. A lane whose session has no next item takes
the next unused session (its hidden state is zeroed first); when sessions run out such lanes
are dropped and the batch shrinks. The bookkeeping runs only at refill points: with m the
smallest number of steps any lane has left, m steps are emitted at once.

The whole epoch is produced as flat arrays (the same format the native batcher emits):

    width        int32 (n_steps,)      active lanes b_t of step t
    step_offsets int64 (n_steps + 1,)  step t's lanes are [step_offsets[t], step_offsets[t+1])
    inputs       int32 (sum b_t,)      input item of each lane, step-major
    targets      int32 (sum b_t,)      target item (next item of the same session)
    reset        uint8 (sum b_t,)      1: zero this lane's hidden state before the step
                                        (a new session; every lane of step 0)
    keep_offsets int64 (n_steps + 1,)  step t's keep list is keep[keep_offsets[t]:keep_offsets[t+1]]
    keep         int32 (...)           only for steps narrower than the step before: lane j of
                                        step t continues lane keep[j] of step t-1 (order kept)

The hidden state of step t is therefore: h = h[keep_t] if step t shrank; h[reset_t] = 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import numpy as np

from .errors import DataError


@dataclass
class EpochSchedule:
    width: np.ndarray
    step_offsets: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray
    reset: np.ndarray
    keep_offsets: np.ndarray
    keep: np.ndarray

    @property
    def n_steps(self) -> int:
        return int(self.width.shape[0])

    @property
    def n_events(self) -> int:
        """Training events (input/target pairs) in the epoch."""
        return int(self.inputs.shape[0])

    def step(self, t: int) -> "Step":
        lo, hi = self.step_offsets[t], self.step_offsets[t + 1]
        k0, k1 = self.keep_offsets[t], self.keep_offsets[t + 1]
        return Step(self.inputs[lo:hi], self.targets[lo:hi], self.reset[lo:hi],
                    self.keep[k0:k1] if k1 > k0 else None)

    def steps(self) -> Iterator["Step"]:
        for t in range(self.n_steps):
            yield self.step(t)


class Step(NamedTuple):
    inputs: np.ndarray            # (b,) item indices
    targets: np.ndarray           # (b,)
    reset: np.ndarray             # (b,) uint8
    keep: Optional[np.ndarray]    # (b,) lanes of the previous step that carry on, or None


def check_session_arrays(offsets: np.ndarray, items: np.ndarray, n_items: Optional[int] = None):
    """Validate CSR session arrays; raises DataError with what is wrong."""
    offsets = np.asarray(offsets)
    items = np.asarray(items)
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise DataError("session offsets must be a 1-d array of n_sessions + 1 entries")
    if offsets[0] != 0 or offsets[-1] != items.shape[0]:
        raise DataError(
            f"session offsets must start at 0 and end at n_events={items.shape[0]} "
            f"(got {offsets[0]} .. {offsets[-1]})")
    if offsets.shape[0] > 1 and np.any(np.diff(offsets) < 0):
        raise DataError(f"session offsets must be non-decreasing (first bad index "
                        f"{int(np.argmax(np.diff(offsets) < 0)) + 1})")
    if n_items is not None and items.size and (items.min() < 0 or items.max() >= n_items):
        raise DataError(f"item index out of range [0, {n_items}) in session items")


def session_parallel_schedule(offsets: np.ndarray, items: np.ndarray, batch_size: int,
                              min_lanes: int = 1) -> EpochSchedule:
    """One epoch's schedule over sessions in the given order (REFERENCE §2).

    offsets: int (S+1,) CSR offsets; items: int (n_events,) item indices.
    batch_size: B lanes. min_lanes: the epoch stops as soon as fewer lanes than this remain
    after a refill (2 when n_sample = 0: in-batch negatives need a second lane).
    """
    if int(batch_size) <= 0:
        raise DataError(f"batch_size must be positive (got {batch_size})")
    check_session_arrays(offsets, items)
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items)
    n_sessions = offsets.shape[0] - 1

    widths, inputs, targets, resets = [], [], [], []
    keep_steps, keeps = [], []          # (step index, keep lanes) for steps that shrank

    n_lanes = min(int(batch_size), n_sessions)
    start = offsets[:n_lanes].copy()    # cursor of each lane: absolute index into items
    end = offsets[1:n_lanes + 1].copy()  # end of each lane's session
    next_session = n_lanes
    reset = np.ones(n_lanes, dtype=np.uint8)  # zero state at the start of the epoch
    pending_keep = None
    n_steps = 0
    while n_lanes >= min_lanes and n_lanes > 0:
        m = int((end - start).min()) - 1     # steps every lane can still take
        if m > 0:
            pos = start[None, :] + np.arange(m)[:, None]        # (m, b)
            inputs.append(items[pos].ravel())
            targets.append(items[pos + 1].ravel())
            r = np.zeros((m, n_lanes), dtype=np.uint8)
            r[0] = reset
            resets.append(r.ravel())
            widths.append(np.full(m, n_lanes, dtype=np.int32))
            if pending_keep is not None:
                keep_steps.append(n_steps)
                keeps.append(pending_keep)
                pending_keep = None
            n_steps += m
            start += m
            reset = np.zeros(n_lanes, dtype=np.uint8)
        # Lanes whose session has no next item take the next sessions, in lane order.
        finished = np.flatnonzero(end - start <= 1)
        n_refill = min(finished.shape[0], n_sessions - next_session)
        refill = finished[:n_refill]
        new = np.arange(next_session, next_session + n_refill)
        start[refill] = offsets[new]
        end[refill] = offsets[new + 1]
        reset[refill] = 1
        next_session += n_refill
        dropped = finished[n_refill:]
        if dropped.shape[0]:
            kept = np.setdiff1d(np.arange(n_lanes), dropped)   # sorted: lane order is kept
            start, end, reset = start[kept], end[kept], reset[kept]
            # Compose with a shrink not yet attached to a step (several in a row).
            pending_keep = kept if pending_keep is None else pending_keep[kept]
            n_lanes = kept.shape[0]

    width = np.concatenate(widths) if widths else np.zeros(0, np.int32)
    step_offsets = np.zeros(width.shape[0] + 1, dtype=np.int64)
    np.cumsum(width, out=step_offsets[1:])
    keep_offsets = np.zeros(width.shape[0] + 1, dtype=np.int64)
    for t, k in zip(keep_steps, keeps):
        keep_offsets[t + 1] = k.shape[0]
    np.cumsum(keep_offsets, out=keep_offsets)
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return EpochSchedule(width=width, step_offsets=step_offsets,
                         inputs=cat(inputs, np.int32), targets=cat(targets, np.int32),
                         reset=cat(resets, np.uint8), keep_offsets=keep_offsets,
                         keep=cat(keeps, np.int32))


def build_schedule(offsets: np.ndarray, items: np.ndarray, batch_size: int, min_lanes: int = 1,
                   backend: str = "auto") -> EpochSchedule:
    """The epoch schedule from the chosen backend: "python" (the reference above), "native"
    (the C++ batcher) or "auto" (native when the extension loads, else python)."""
    if backend not in ("auto", "python", "native"):
        raise ValueError(f"unknown schedule backend {backend!r} (auto, python, native)")
    if backend != "python":
        from . import native   # imported here: native imports this module
        if backend == "native" or native.available():
            return native.epoch_schedule(offsets, items, batch_size, min_lanes)
    return session_parallel_schedule(offsets, items, batch_size, min_lanes)
