"""Negative sampling (REFERENCE §4): item j drawn with probability ∝ support_j ** alpha.

The reference draws by binary search over the cumulative distribution, as the authors do, and
keeps a pre-drawn store of ``store_size`` ids (rows of n_sample ids, one row consumed per
training step, the whole store redrawn when used up).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import ConfigError


def sampling_cdf(supports: np.ndarray, alpha: float) -> np.ndarray:
    """float64 (N,) cumulative distribution of p_j ∝ supports_j ** alpha, last entry exactly 1."""
    supports = np.asarray(supports, dtype=np.float64)
    if not np.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"sample_alpha must be a non-negative number (got {alpha})")
    if supports.ndim != 1 or supports.size == 0 or np.any(supports < 0):
        raise ConfigError("item supports must be a non-empty 1-d array of non-negative counts")
    weights = supports ** alpha
    cdf = np.cumsum(weights)
    if not cdf[-1] > 0:
        raise ConfigError("item supports sum to zero: nothing to sample from")
    cdf /= cdf[-1]
    cdf[-1] = 1.0   # rounding must not leave a gap that a draw of u -> 1 could fall into
    return cdf


def draw_negatives(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n item indices (int64) drawn from the distribution whose CDF is given."""
    u = rng.random(n)
    return np.minimum(np.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1).astype(np.int64)


class SampleStore:
    """Pre-drawn negative samples, consumed one row of n_sample ids per step.

    supports: (N,) training counts; alpha: popularity exponent; store_size: ids drawn at once
    (at least one row). next() returns an int64 numpy array (n_sample,) (a view; do not keep
    it across a refill).

    backend: "python" draws with numpy by binary search over the CDF (the reference);
    "native" fills the store with the C++ alias sampler on n_threads threads (None: all cores;
    the draws do not depend on it, but differ from numpy's); "auto" (default) is native when the
    extension loads, else python.
    """

    def __init__(self, supports: np.ndarray, alpha: float, n_sample: int,
                 store_size: int = 10_000_000, seed: int = 42, backend: str = "auto",
                 n_threads: Optional[int] = None):
        if backend not in ("auto", "python", "native"):
            raise ConfigError(f"unknown sampler backend {backend!r} (auto, python, native)")
        if int(n_sample) <= 0:
            raise ConfigError(f"n_sample must be positive for a sample store (got {n_sample})")
        if int(store_size) <= 0:
            raise ConfigError(f"sample_store_size must be positive (got {store_size})")
        self.cdf = sampling_cdf(supports, alpha)
        self.n_sample = int(n_sample)
        self.n_rows = max(1, int(store_size) // self.n_sample)
        self._sampler = None
        if backend != "python":
            from . import native
            if backend == "native" or native.available():
                self._sampler = native.AliasSampler(supports, alpha, seed, n_threads)
        self.backend = "python" if self._sampler is None else "native"
        self.rng = np.random.default_rng(seed) if self._sampler is None else None
        self._store = None
        self._row = self.n_rows
        #: the random source as it was before the last refill (the native sampler's position, or
        #: numpy's bit-generator state): with _row, all a checkpoint needs to redraw the store
        self._source_at_refill = None

    def _source_state(self):
        return (self._sampler.position if self._sampler is not None
                else self.rng.bit_generator.state)

    def _refill(self):
        self._source_at_refill = self._source_state()
        if self._sampler is not None:
            if self._store is None:   # drawn into in place at every refill
                self._store = np.empty((self.n_rows, self.n_sample), dtype=np.int64)
            self._sampler.draw(self._store)
        else:
            self._store = draw_negatives(self.cdf, self.n_rows * self.n_sample, self.rng).reshape(
                self.n_rows, self.n_sample)
        self._row = 0

    def next(self) -> np.ndarray:
        if self._row >= self.n_rows:
            self._refill()
        row = self._store[self._row]
        self._row += 1
        return row

    def next_rows(self, k: int) -> np.ndarray:
        """The next k rows as one new int64 array (k, n_sample): the same ids, in the same
        order, as k calls of next()."""
        out = np.empty((int(k), self.n_sample), dtype=np.int64)
        done = 0
        while done < k:
            if self._row >= self.n_rows:
                self._refill()
            take = min(k - done, self.n_rows - self._row)
            out[done:done + take] = self._store[self._row:self._row + take]
            self._row += take
            done += take
        return out

    def state_dict(self) -> dict:
        """Where the stream of rows stands, in plain values (no store contents: the store is
        redrawn from the random source's state before its last refill). load_state_dict on a
        store built with the same arguments continues with the same rows."""
        filled = self._store is not None and self._source_at_refill is not None
        return {"backend": self.backend, "n_rows": self.n_rows, "n_sample": self.n_sample,
                "source": self._source_at_refill if filled else self._source_state(),
                "filled": filled, "row": self._row}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream saved by state_dict (ConfigError if it came from a store of
        another backend or shape)."""
        for key in ("backend", "n_rows", "n_sample"):
            if state.get(key) != getattr(self, key):
                raise ConfigError(f"sample store state: {key} {state.get(key)!r} does not match "
                                  f"this store's {getattr(self, key)!r}")
        row = int(state["row"])
        if not 0 <= row <= self.n_rows:
            raise ConfigError(f"sample store state: row {row} outside [0, {self.n_rows}]")
        if self._sampler is not None:
            self._sampler.position = int(state["source"])
        else:
            self.rng.bit_generator.state = state["source"]
        if state["filled"]:
            self._refill()            # the same draws as the saved store
            self._row = row
        else:
            self._store, self._source_at_refill, self._row = None, None, self.n_rows
