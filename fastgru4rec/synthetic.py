"""A seeded synthetic session dataset with realistic structure, for the demo and for tests.

- item popularity follows a power law (Zipf, exponent ``zipf``),
- each item has a few successors (drawn by popularity); a session moves to one of its current
  item's successors with probability ``p_follow``, otherwise jumps to a popular item,
- session lengths are 2 + Geometric, mean about ``mean_length``,
- sessions start 60 s apart and events are 10 s apart; the last ``test_fraction`` of sessions
  (by time) is the test set, mapped with the training items.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .data import SessionData


def synthetic_events(n_items: int = 3000, n_sessions: int = 40000, mean_length: float = 4.0,
                     zipf: float = 1.1, n_successors: int = 4, p_follow: float = 0.75,
                     seed: int = 7) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(session_ids, item_ids, times) event arrays, item ids as strings 'i<k>'."""
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
