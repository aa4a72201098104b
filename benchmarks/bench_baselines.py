"""Baseline benchmarks (REFERENCE §6) on real data (skipped when ../shared/data is absent).

Targets from the baselines issue, on 2 CPU cores (absolute times, with no baseline measured in
the same run: reported in the output and extra_info, never asserted):
- Item-KNN fit + evaluate on yoochoose1_64 (train -> test, full ranking): < 60 s;
- BPR-MF's 10 iterations on yoochoose1_64 train: < 2 minutes.
Also: the other baselines' fit + evaluate, and every baseline on rsc15-sample (train_full -> test).
The accuracy (Recall@20 / MRR@20, conservative) goes into extra_info.
And, on a synthetic catalog of about 250,000 items (no real data needed): the evaluation of POP,
S-POP and Item-KNN through their rank_step against their dense scores, a ratio of the same run
(groups baselines-evaluate-*-large-catalog; the metrics of the two must agree).

Run:  python -m pytest benchmarks/bench_baselines.py -q
The data is found under Path(__file__).resolve().parents[2]/"shared"/"data" or $FASTGRU4REC_DATA.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fastgru4rec.baselines import BPRMF, make_baseline

ITEMKNN_LIMIT_S = 60.0
BPRMF_LIMIT_S = 120.0


def _data_dir() -> Path:
    env = os.environ.get("FASTGRU4REC_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _load(name: str, train_file: str):
    from fastgru4rec.data import read_sessions

    root = _data_dir() / name
    tr, te = root / train_file, root / "test.tsv"
    if not (tr.exists() and te.exists()):
        pytest.skip(f"real data {tr} / {te} not found (set FASTGRU4REC_DATA)")
    train = read_sessions(tr)
    return train, read_sessions(te, item_map=train)


@pytest.fixture(scope="module")
def yoochoose():
    return _load("yoochoose1_64", "train.tsv")


@pytest.fixture(scope="module")
def rsc15():
    return _load("rsc15-sample", "train_full.tsv")


def _fit_evaluate(name, train, test, **params):
    m = make_baseline(name, **params)
    t0 = time.perf_counter()
    m.fit(train)
    t1 = time.perf_counter()
    res = m.evaluate(test, cutoffs=(20,), mode="conservative")
    res["fit_seconds"], res["eval_seconds"] = t1 - t0, time.perf_counter() - t1
    return res


def _record(benchmark, data, res):
    benchmark.extra_info.update(data=data, n_points=res["n_events"],
                                recall20=res["recall"][20], mrr20=res["mrr"][20],
                                fit_seconds=res["fit_seconds"], eval_seconds=res["eval_seconds"])


@pytest.mark.benchmark(group="baselines-yoochoose1_64")
def test_itemknn_fit_evaluate_yoochoose(benchmark, yoochoose):
    train, test = yoochoose
    res = benchmark.pedantic(lambda: _fit_evaluate("itemknn", train, test), rounds=1,
                             iterations=1)
    _record(benchmark, "yoochoose1_64", res)
    seconds = res["fit_seconds"] + res["eval_seconds"]
    benchmark.extra_info.update(issue_target_seconds=ITEMKNN_LIMIT_S)
    print(f"\n[baselines] Item-KNN fit+evaluate {seconds:.1f} s (issue target < {ITEMKNN_LIMIT_S:.0f} s;"
          " reported, not asserted)")


@pytest.mark.benchmark(group="baselines-yoochoose1_64")
def test_bprmf_fit_yoochoose(benchmark, yoochoose):
    train, _ = yoochoose
    t = {}

    def fit():
        t0 = time.perf_counter()
        m = BPRMF(n_iterations=10).fit(train)
        t["s"] = time.perf_counter() - t0
        return m

    m = benchmark.pedantic(fit, rounds=1, iterations=1)
    benchmark.extra_info.update(data="yoochoose1_64", n_events=train.n_events,
                                iterations=m.n_iterations, batch_size=m.batch_size,
                                events_per_s=train.n_events * m.n_iterations / t["s"],
                                final_loss=m.losses[-1], issue_target_seconds=BPRMF_LIMIT_S)
    print(f"\n[baselines] BPR-MF 10 iterations {t['s']:.1f} s (issue target < {BPRMF_LIMIT_S:.0f} s;"
          " reported, not asserted)")


@pytest.mark.parametrize("name", ["pop", "spop"])
@pytest.mark.benchmark(group="baselines-yoochoose1_64")
def test_popularity_fit_evaluate_yoochoose(benchmark, yoochoose, name):
    train, test = yoochoose
    res = benchmark.pedantic(lambda: _fit_evaluate(name, train, test), rounds=1, iterations=1)
    _record(benchmark, "yoochoose1_64", res)


@pytest.mark.parametrize("name", ["pop", "spop", "itemknn", "bprmf"])
@pytest.mark.benchmark(group="baselines-rsc15-sample")
def test_fit_evaluate_rsc15(benchmark, rsc15, name):
    train, test = rsc15
    res = benchmark.pedantic(lambda: _fit_evaluate(name, train, test), rounds=1, iterations=1)
    _record(benchmark, "rsc15-sample", res)


# ------------------------------------------------------------------ ranking a large catalog
@pytest.fixture(scope="module")
def large_catalog():
    """A synthetic catalog of about 250,000 training items and the first 300 test sessions."""
    from fastgru4rec.data import SessionData
    from fastgru4rec.synthetic import synthetic_split

    train, test = synthetic_split(n_items=400_000, n_sessions=150_000, zipf=0.5, seed=1)
    S = 300
    end = int(test.offsets[S])
    return train, SessionData(test.offsets[:S + 1], test.items[:end], test.times[:end],
                              test.session_ids[:S], test.item_ids, test.supports)


@pytest.mark.parametrize("name", ["pop", "spop", "itemknn"])
@pytest.mark.parametrize("path", ["dense-scores", "rank-step"])
def test_evaluate_large_catalog(benchmark, large_catalog, name, path):
    """Evaluation of POP, S-POP and Item-KNN: their rank_step (no (lanes, N) scores, all lanes)
    against the dense scores they are tested against (base rank_step, lanes capped at
    2^24 / N), the same model and test sessions in the same run; the metrics must agree."""
    from fastgru4rec.baselines import _Baseline

    train, test = large_catalog
    benchmark.group = f"baselines-evaluate-{name}-large-catalog"
    model = make_baseline(name).fit(train)
    if path == "dense-scores":
        benchmark.extra_info["baseline"] = "dense scores"
        model.rank_step = lambda *a: _Baseline.rank_step(model, *a)
        model.dense_ranks = True
    res = benchmark.pedantic(lambda: model.evaluate(test, cutoffs=(20,)), rounds=1,
                             iterations=1)
    benchmark.extra_info.update(n_items=model.n_items, n_points=res["n_events"],
                                lanes=model.eval_lanes(), recall20=res["recall"][20],
                                mrr20=res["mrr"][20])
    _LARGE_RESULTS.setdefault(name, []).append(res)
    if len(_LARGE_RESULTS[name]) == 2:         # both paths measured: the same metrics
        a, b = _LARGE_RESULTS[name]
        assert a["n_events"] == b["n_events"]
        assert a["recall"][20] == pytest.approx(b["recall"][20], abs=1e-12)
        assert a["mrr"][20] == pytest.approx(b["mrr"][20], abs=1e-12)


_LARGE_RESULTS: dict = {}
