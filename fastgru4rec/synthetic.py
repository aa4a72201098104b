"""A seeded synthetic session dataset with realistic structure, for the demo and for tests.

- item popularity follows a power law (Zipf, exponent ``zipf``),
- each item has a few successors (drawn by popularity); a session moves to one of its current
  item's successors with probability ``p_follow``, otherwise jumps to a popular item,
- session lengths are 2 + Geometric, mean about ``mean_length``,
- sessions start 60 s apart and events are 10 s apart; the last ``test_fraction`` of sessions
  (by time) is the test set, mapped with the training items.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .data import SessionData
from .errors import ConfigError

# Sizes above these cannot be generated in any memory (10^9 sessions are > 2*10^9 events, each
# with string ids); larger values would only fail deep inside numpy (or overflow its sizes).
MAX_ITEMS = 10 ** 9
MAX_SESSIONS = 10 ** 9


def check_synthetic_params(where: str = "synthetic data", **params) -> None:
    """Raise ConfigError, naming the parameter, for a value synthetic_events / synthetic_split
    cannot use. Only the parameters given are checked."""
    def bad(key, why):
        raise ConfigError(f"{where}: parameter {key}={params[key]!r}: {why}")

    for key, least, most in (("n_items", 1, MAX_ITEMS), ("n_sessions", 1, MAX_SESSIONS),
                             ("n_successors", 1, 10 ** 6), ("seed", 0, (1 << 63) - 1)):
        if key in params:
            v = params[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                bad(key, "must be an integer")
            if not least <= v <= most:
                bad(key, f"must be an integer in [{least}, {most:,}]")
    # mean_length and zipf: any finite number works (lengths are 2 + a geometric draw capped at
    # 50, so a mean below 2 gives length-2 sessions; a negative zipf favours high item ids)
    for key, least, most, closed in (("mean_length", -math.inf, math.inf, True),
                                     ("zipf", -math.inf, math.inf, True),
                                     ("p_follow", 0.0, 1.0, True),
                                     ("test_fraction", 0.0, 1.0, False)):
        if key in params:
            v = params[key]
            try:
                v = float(v)
            except (TypeError, ValueError):
                bad(key, "must be a number")
            inside = least <= v <= most if closed else least < v < most
            if isinstance(params[key], bool) or not math.isfinite(v) or not inside:
                if not math.isfinite(least):
                    bad(key, "must be a finite number")
                bad(key, f"must be a number in {'[' if closed else '('}{least:g}, {most:g}"
                         f"{']' if closed else ')'}")


def synthetic_events(n_items: int = 3000, n_sessions: int = 40000, mean_length: float = 4.0,
                     zipf: float = 1.1, n_successors: int = 4, p_follow: float = 0.75,
                     seed: int = 7) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(session_ids, item_ids, times) event arrays, item ids as strings 'i<k>'."""
    check_synthetic_params(n_items=n_items, n_sessions=n_sessions, mean_length=mean_length,
                           zipf=zipf, n_successors=n_successors, p_follow=p_follow, seed=seed)
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity /= popularity.sum()
    successors = rng.choice(n_items, size=(n_items, n_successors), p=popularity)
    succ_weights = rng.dirichlet(np.ones(n_successors) * 0.7, size=n_items)   # (N, n_succ)
    succ_cdf = np.cumsum(succ_weights, axis=1)

    lengths = 2 + rng.geometric(1.0 / max(mean_length - 1.0, 1.0), size=n_sessions) - 1
    lengths = np.minimum(lengths, 50)
    n_events = int(lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.empty(n_events, dtype=np.int64)
    # Walk all sessions in parallel, one position at a time (vectorised over sessions).
    current = rng.choice(n_items, size=n_sessions, p=popularity)
    items[offsets[:-1]] = current
    for pos in range(1, int(lengths.max())):
        alive = np.flatnonzero(lengths > pos)
        cur = current[alive]
        follow = rng.random(alive.shape[0]) < p_follow
        pick = (rng.random(alive.shape[0])[:, None] > succ_cdf[cur]).sum(axis=1)
        pick = np.minimum(pick, n_successors - 1)
        jump = rng.choice(n_items, size=alive.shape[0], p=popularity)
        nxt = np.where(follow, successors[cur, pick], jump)
        items[offsets[alive] + pos] = nxt
        current[alive] = nxt

    session_of = np.repeat(np.arange(n_sessions), lengths)
    within = np.arange(n_events) - np.repeat(offsets[:-1], lengths)
    times = session_of * 60.0 + within * 10.0
    session_ids = np.char.add("s", session_of.astype(str))
    item_ids = np.char.add("i", items.astype(str))
    return session_ids, item_ids, times


def synthetic_split(test_fraction: float = 0.1, **kwargs) -> Tuple[SessionData, SessionData]:
    """(train, test) SessionData; test is mapped with the training item map."""
    check_synthetic_params(test_fraction=test_fraction)
    session_ids, item_ids, times = synthetic_events(**kwargs)
    cut = np.quantile(times, 1.0 - test_fraction)
    # sessions are contiguous and time-ordered in the generated arrays: a session belongs to
    # test when it starts after the cut
    starts = np.r_[True, session_ids[1:] != session_ids[:-1]]
    first_time = np.maximum.accumulate(np.where(starts, times, -np.inf))
    is_test = first_time >= cut
    train = SessionData.from_arrays(session_ids[~is_test], item_ids[~is_test], times[~is_test],
                                    source="<synthetic train>")
    test = SessionData.from_arrays(session_ids[is_test], item_ids[is_test], times[is_test],
                                   item_map=train, source="<synthetic test>")
    return train, test
