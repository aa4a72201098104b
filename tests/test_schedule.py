"""The session-parallel schedule (REFERENCE §2) against the authors' golden schedule and
hand-worked examples."""

import numpy as np
import pytest

from fastgru4rec.batching import session_parallel_schedule
from fastgru4rec.data import read_sessions
from fastgru4rec.errors import DataError

from golden import golden


def _steps(sched, names=None):
    out = []
    for st in sched.steps():
        name = (lambda i: names[i]) if names is not None else int
        out.append(dict(input=[name(i) for i in st.inputs], target=[name(i) for i in st.targets],
                        reset=st.reset.tolist(), keep=None if st.keep is None else st.keep.tolist()))
    return out


def _csr(sessions):
    """list of item lists -> (offsets, items)"""
    offsets = np.cumsum([0] + [len(s) for s in sessions])
    return offsets, np.array([i for s in sessions for i in s], dtype=np.int64)


@pytest.mark.parametrize("key,min_lanes", [("schedule_batch3_nsample0", 2),
                                           ("schedule_batch3_with_samples", 1)])
def test_matches_authors_golden_schedule(tmp_path, key, min_lanes):
    g = golden()
    path = tmp_path / "events.tsv"
    path.write_text(g["schedule_batch3_nsample0"]["events_tsv"])
    data = read_sessions(path)
    sched = session_parallel_schedule(data.offsets, data.items, 3, min_lanes)
    got = _steps(sched, data.item_ids)
    assert [dict(input=s["input"], target=s["target"]) for s in got] == g[key]["steps"]
    # Resets: all lanes at step 0; then the refilled lanes of each golden refill point.
    expect_reset = [[1, 1, 1]] + [[0] * len(s["input"]) for s in g[key]["steps"][1:]]
    for r in g[key]["refills"]:
        t = r["after_step"]
        if t < len(expect_reset):
            # finished lanes that are kept got a new session; the others were dropped
            for lane in set(r["finished_lanes"]) & set(r["kept_lanes"]):
                expect_reset[t][r["kept_lanes"].index(lane)] = 1
    assert [s["reset"] for s in got] == expect_reset


def test_hand_worked_refill_reset_shrink():
    # Sessions (already time-ordered): A=[0,1,2,3] B=[4,5] C=[6] (length 1) D=[7,8,9] E=[1,2]
    offsets, items = _csr([[0, 1, 2, 3], [4, 5], [6], [7, 8, 9], [1, 2]])
    sched = session_parallel_schedule(offsets, items, batch_size=2, min_lanes=1)
    # lanes: A, B.  step0: 0->1, 4->5.  B ends; C has no step, D refills lane 1 (reset).
    # step1: 1->2, 7->8.  step2: 2->3, 8->9. A and D end together: E refills lane 0; lane 1
    # has nothing left and is dropped (keep lane 0). step3: 1->2 on the single lane.
    assert _steps(sched) == [
        dict(input=[0, 4], target=[1, 5], reset=[1, 1], keep=None),
        dict(input=[1, 7], target=[2, 8], reset=[0, 1], keep=None),
        dict(input=[2, 8], target=[3, 9], reset=[0, 0], keep=None),
        dict(input=[1], target=[2], reset=[1], keep=[0]),
    ]
    assert sched.n_events == 7 == int((np.diff(offsets) - 1).clip(0).sum())


def test_n_sample_zero_stops_below_two_lanes():
    offsets, items = _csr([[0, 1, 2, 3, 4], [5, 6]])
    full = session_parallel_schedule(offsets, items, 2, min_lanes=1)
    stop = session_parallel_schedule(offsets, items, 2, min_lanes=2)
    assert full.n_steps == 4 and stop.n_steps == 1
    assert _steps(stop) == [dict(input=[0, 5], target=[1, 6], reset=[1, 1], keep=None)]


def test_shrink_keeps_lane_order_and_composes():
    # Three lanes; lanes 0 and 2 end at the same time with no session left, then lane 1 goes on.
    offsets, items = _csr([[0, 1], [2, 3, 4, 5], [6, 7]])
    sched = session_parallel_schedule(offsets, items, 3)
    steps = _steps(sched)
    assert steps[0] == dict(input=[0, 2, 6], target=[1, 3, 7], reset=[1, 1, 1], keep=None)
    assert steps[1] == dict(input=[3], target=[4], reset=[0], keep=[1])
    assert steps[2] == dict(input=[4], target=[5], reset=[0], keep=None)


def test_fewer_sessions_than_lanes_and_every_event_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 8, size=37)
    sessions = [list(rng.integers(0, 50, size=n)) for n in lengths]
    offsets, items = _csr(sessions)
    for B in (1, 5, 64):
        sched = session_parallel_schedule(offsets, items, B)
        # every (input, target) pair of every session appears exactly once
        pairs = sorted(zip(sched.inputs.tolist(), sched.targets.tolist()))
        expect = sorted((s[k], s[k + 1]) for s in sessions for k in range(len(s) - 1))
        assert pairs == expect
        assert sched.width.max() <= min(B, len(sessions))


def test_bad_arguments():
    offsets, items = _csr([[0, 1]])
    with pytest.raises(DataError, match="batch_size"):
        session_parallel_schedule(offsets, items, 0)
    with pytest.raises(DataError, match="non-decreasing"):
        session_parallel_schedule(np.array([0, 2, 1, 2]), items, 2)


def _authors_style_steps(path, batch_size, stop_below_two):
    """An independent re-implementation of the authors' session-parallel iterator (REFERENCE §2)
    straight from the raw file with pandas: sessions by first-event time, events by time inside
    a session; each round runs min(remaining)-1 steps, then refills the finished lanes in lane
    order with the next sessions and drops the lanes that cannot be refilled (n_sample = 0:
    stop once fewer than 2 lanes are left). Returns [(input ids, target ids)] per step."""
    import pandas as pd
    raw = pd.read_csv(path, sep="\t", dtype={"ItemId": str}).sort_values(
        ["SessionId", "Time"], kind="mergesort")
    sizes = raw.groupby("SessionId", sort=True).size().to_numpy()
    off = np.concatenate([[0], np.cumsum(sizes)])
    order = np.argsort(raw.groupby("SessionId", sort=True)["Time"].min().to_numpy(),
                       kind="mergesort")
    items = raw["ItemId"].to_numpy()
    lanes = np.arange(min(batch_size, len(order)))
    next_session = len(lanes)
    start, end = off[order[lanes]], off[order[lanes] + 1]
    steps = []
    while True:
        minlen = int((end - start).min())
        for i in range(minlen - 1):
            steps.append((tuple(items[start + i]), tuple(items[start + i + 1])))
        start = start + minlen - 1
        finished = end - start <= 1
        new = np.full(len(lanes), -1)
        idx = np.flatnonzero(finished)
        n_new = min(len(idx), len(order) - next_session)
        new[idx[:n_new]] = order[next_session:next_session + n_new]
        next_session += n_new
        valid = ~finished | (new >= 0)
        start[new >= 0], end[new >= 0] = off[new[new >= 0]], off[new[new >= 0] + 1]
        lanes, start, end = lanes[valid], start[valid], end[valid]
        if len(lanes) == 0 or (stop_below_two and len(lanes) < 2):
            return steps


@pytest.mark.parametrize("backend", ["python", "native"])
@pytest.mark.parametrize("min_lanes", [1, 2])
def test_whole_epoch_on_real_data_matches_an_authors_style_iterator(backend, min_lanes):
    """Every step of an epoch of rsc15-sample (99,943 events, batch 32), lane by lane, equals
    the independent iterator above: session order, refill order, shrinking, the n_sample = 0
    stop."""
    from conftest import shared_path
    from fastgru4rec import native
    from fastgru4rec.batching import build_schedule
    if backend == "native" and not native.available():
        pytest.skip("native extension not built")
    path = shared_path("rsc15-sample", "train_full.tsv")
    data = read_sessions(path)
    sched = build_schedule(data.offsets, data.items, 32, min_lanes, backend=backend)
    ids = np.asarray(data.item_ids)
    so = sched.step_offsets
    got = [(tuple(ids[sched.inputs[so[t]:so[t + 1]]]), tuple(ids[sched.targets[so[t]:so[t + 1]]]))
           for t in range(sched.n_steps)]
    want = _authors_style_steps(path, 32, stop_below_two=min_lanes == 2)
    assert len(got) == len(want)
    assert got == want
