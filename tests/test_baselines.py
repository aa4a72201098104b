"""Baselines (REFERENCE §6) on a hand-made dataset whose scores and ranks are worked out by hand.

Training sessions (items a..e get dense indices 0..4 by first appearance):

    S1: a b a c      S2: b c      S3: a b d      S4: e

    supports (training events): a 3, b 3, c 2, d 1, e 1

Test sessions (each later event is a target, scored against all 5 items):

    T1: a c b        T2: d d e     T3: e a       T4: c d        -> 6 evaluation points

Ranks from (g, q) = (#items scoring > target, #items scoring == target, target included):
standard g + 1, conservative g + q, median g + (q - 1)/2 + 1.
"""
import argparse
import json

import numpy as np
import pytest
import torch

from fastgru4rec.baselines import (BASELINES, BPRMF, POP, SPOP, ItemKNN, bpr_sgd_step,
                                   cooccurrence, format_table, make_baseline,
                                   parse_baseline_params, register_cli, resolve_names,
                                   run, run_baselines, top_k_per_row)
from fastgru4rec.data import SessionData
from fastgru4rec.errors import ConfigError, DataError

A, B, C, D, E = range(5)
TRAIN = [("S1", "abac"), ("S2", "bc"), ("S3", "abd"), ("S4", "e")]
TEST = [("T1", "acb"), ("T2", "dde"), ("T3", "ea"), ("T4", "cd")]


def _data(sessions, item_map=None, t0=0):
    sid, iid, tt = [], [], []
    t = t0
    for s, items in sessions:
        for it in items:
            sid.append(s)
            iid.append(it)
            tt.append(float(t))
            t += 1
    return SessionData.from_arrays(np.array(sid), np.array(iid), np.array(tt), item_map=item_map)


@pytest.fixture(scope="module")
def train():
    d = _data(TRAIN)
    assert list(d.item_ids) == ["a", "b", "c", "d", "e"]
    assert list(d.supports) == [3, 3, 2, 1, 1]
    return d


@pytest.fixture(scope="module")
def test(train):
    return _data(TEST, item_map=train, t0=100)


def _metrics(ranks, cutoffs=(1, 2, 3, 5)):
    """Recall@K / MRR@K from a list of hand-computed ranks."""
    r = np.asarray(ranks, dtype=float)
    return ({k: float(np.mean(r <= k)) for k in cutoffs},
            {k: float(np.mean(np.where(r <= k, 1.0 / r, 0.0))) for k in cutoffs})


def _check(model, test, ranks_by_mode):
    for mode, ranks in ranks_by_mode.items():
        want_recall, want_mrr = _metrics(ranks)
        for lanes in (1, 2, 3, 64):     # 2 and 3 lanes exercise the keep / reset bookkeeping
            res = model.evaluate(test, cutoffs=(1, 2, 3, 5), mode=mode, batch_size=lanes)
            assert res["n_events"] == 6
            assert res["mode"] == mode
            for k in (1, 2, 3, 5):
                assert res["recall"][k] == pytest.approx(want_recall[k], abs=1e-12), (mode, lanes, k)
                assert res["mrr"][k] == pytest.approx(want_mrr[k], abs=1e-12), (mode, lanes, k)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_test_data_without_an_evaluation_point_is_refused(train, name):
    # a 1-event session, and one left with 1 event once its unknown item is dropped: no point
    # to evaluate, so no metric (0.0 would read as a result), as GRU4Rec.evaluate refuses it
    nothing = _data([("T1", "a"), ("T2", "bz")], item_map=train, t0=100)
    model = BASELINES[name]().fit(train)
    with pytest.raises(DataError, match="no evaluation points"):
        model.evaluate(nothing)


# ------------------------------------------------------------------------------------- POP
def test_pop_scores(train):
    # supp/(1+supp): a 3/4, b 3/4, c 2/3, d 1/2, e 1/2
    np.testing.assert_allclose(POP().fit(train).score_prefix([E]), [.75, .75, 2 / 3, .5, .5])
    # top_n=1: a and b tie on support; the lower index (a) is kept
    np.testing.assert_allclose(POP(top_n=1).fit(train).score_prefix([A]), [.75, 0, 0, 0, 0])
    # top_n=4: d and e tie; d (lower index) is kept
    np.testing.assert_allclose(POP(top_n=4).fit(train).score_prefix([A]),
                               [.75, .75, 2 / 3, .5, 0])


def test_pop_ranks(train, test):
    # scores a .75  b .75  c .667  d .5  e .5 (whatever the session)
    # T1 a->c (g2,q1) -> 3/3/3 ; c->b (g0,q2) -> std 1, cons 2, med 1.5
    # T2 d->d (g3,q2) -> std 4, cons 5, med 4.5 ; d->e same
    # T3 e->a (g0,q2) -> 1/2/1.5 ; T4 c->d (g3,q2) -> 4/5/4.5
    _check(POP().fit(train), test, {
        "standard": [3, 1, 4, 4, 1, 4],
        "conservative": [3, 2, 5, 5, 2, 5],
        "median": [3, 1.5, 4.5, 4.5, 1.5, 4.5]})


def test_pop_top_n_ties_outside_list(train, test):
    # top_n=2: a .75, b .75, everything else 0
    # T1 a->c: c=0 (g2: a,b; q3: c,d,e) -> std 3, cons 5, med 4 ; c->b (g0,q2) -> 1/2/1.5
    # T2 d->d, d->e: like c -> 3/5/4 ; T3 e->a (g0,q2) -> 1/2/1.5 ; T4 c->d -> 3/5/4
    _check(POP(top_n=2).fit(train), test, {
        "standard": [3, 1, 3, 3, 1, 3],
        "conservative": [5, 2, 5, 5, 2, 5],
        "median": [4, 1.5, 4, 4, 1.5, 4]})


# ------------------------------------------------------------------------------------ S-POP
def test_spop_scores(train):
    m = SPOP().fit(train)
    # prefix a c a: counts a 2, c 1 -> a 2.75, b .75, c 1.667, d .5, e .5
    np.testing.assert_allclose(m.score_prefix([A, C, A]), [2.75, .75, 1 + 2 / 3, .5, .5])
    # top_n=1 (only a popular): prefix d d -> a .75, d 2
    np.testing.assert_allclose(SPOP(top_n=1).fit(train).score_prefix([D, D]), [.75, 0, 0, 2, 0])


def test_spop_ranks(train, test):
    # T1 [a]: a 1.75 b .75 c .667 d .5 e .5; target c (g2,q1) -> 3
    #    [a c]: a 1.75 c 1.667 b .75 ...; target b (g2,q1) -> 3
    # T2 [d]: d 1.5 top; target d (g0,q1) -> 1
    #    [d d]: d 2.5 a .75 b .75 c .667 e .5; target e (g4,q1) -> 5
    # T3 [e]: e 1.5 a .75 b .75 ...; target a (g1,q2) -> std 2, cons 3, med 2.5
    # T4 [c]: c 1.667 a .75 b .75 d .5 e .5; target d (g3,q2) -> std 4, cons 5, med 4.5
    _check(SPOP().fit(train), test, {
        "standard": [3, 3, 1, 5, 2, 4],
        "conservative": [3, 3, 1, 5, 3, 5],
        "median": [3, 3, 1, 5, 2.5, 4.5]})


def test_spop_top_n_ties(train, test):
    # top_n=2: POP part a .75, b .75, others 0
    # T1 [a]: a 1.75 b .75, c 0 (g2; q3: c,d,e) -> std 3, cons 5, med 4
    #    [a c]: a 1.75 c 1 b .75; target b (g2,q1) -> 3
    # T2 [d]: d 1; target d -> 1 ; [d d]: d 2 a .75 b .75, e 0 (g3; q2: c,e) -> 4/5/4.5
    # T3 [e]: e 1 a .75 b .75; target a (g1,q2) -> 2/3/2.5
    # T4 [c]: c 1 a .75 b .75 d 0 e 0; target d (g3,q2) -> 4/5/4.5
    _check(SPOP(top_n=2).fit(train), test, {
        "standard": [3, 3, 1, 4, 2, 4],
        "conservative": [5, 3, 1, 5, 3, 5],
        "median": [4, 3, 1, 4.5, 2.5, 4.5]})


# --------------------------------------------------------------------------------- Item-KNN
def test_cooccurrence_counts_repeats(train):
    # X (session x item counts): S1 a2 b1 c1 ; S2 b1 c1 ; S3 a1 b1 d1 ; S4 e1
    # cooc = XᵀX off-diagonal: ab = 2*1 + 1*1 = 3, ac = 2, ad = 1, bc = 1 + 1 = 2, bd = 1
    want = np.zeros((5, 5), dtype=np.int64)
    for i, j, v in [(A, B, 3), (A, C, 2), (A, D, 1), (B, C, 2), (B, D, 1)]:
        want[i, j] = want[j, i] = v
    np.testing.assert_array_equal(cooccurrence(train).toarray(), want)


def test_itemknn_similarities(train):
    # lambda 20, alpha .5: s(i,j) = cooc / (sqrt(supp_i + 20) sqrt(supp_j + 20)),
    # supp + 20: a 23, b 23, c 22, d 21
    s = ItemKNN().fit(train).sims.toarray()
    want = np.zeros((5, 5))
    for i, j, v in [(A, B, 3), (A, C, 2), (A, D, 1), (B, C, 2), (B, D, 1)]:
        for x, y in ((i, j), (j, i)):
            want[x, y] = v / np.sqrt([23, 23, 22, 21][x]) / np.sqrt([23, 23, 22, 21][y])
    np.testing.assert_allclose(s, want, rtol=1e-14)
    assert s[A, B] == pytest.approx(3 / 23) and s[C, A] == s[C, B]    # a tie in row c
    # alpha = 1, lambda = 0: s(i,j) = cooc/supp_i (asymmetric): row a: b 1, c 2/3, d 1/3
    s1 = ItemKNN(lmbd=0, alpha=1).fit(train).sims.toarray()
    np.testing.assert_allclose(s1[A], [0, 1, 2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(s1[C], [1, 1, 0, 0, 0])                # 2/2, 2/2
    # alpha = 0, lambda = 0: s(i,j) = cooc/supp_j: row c: a 2/3, b 2/3 ; row d: a 1/3, b 1/3
    s0 = ItemKNN(lmbd=0, alpha=0).fit(train).sims.toarray()
    np.testing.assert_allclose(s0[C], [2 / 3, 2 / 3, 0, 0, 0])
    np.testing.assert_allclose(s0[D], [1 / 3, 1 / 3, 0, 0, 0])
    # n_sims = 1: row a keeps b; row c ties a/b -> a (lower index); row e empty
    s_1 = ItemKNN(n_sims=1).fit(train).sims.toarray()
    assert (s_1 > 0).sum(axis=1).tolist() == [1, 1, 1, 1, 0]
    assert s_1[A, B] > 0 and s_1[C, A] > 0 and s_1[D, A] > 0 and s_1[B, A] > 0


def test_itemknn_scores_are_last_items_row(train):
    m = ItemKNN().fit(train)
    s = m.sims.toarray()
    np.testing.assert_array_equal(m.score_prefix([D, E, A]), s[A])
    np.testing.assert_array_equal(m.score_prefix([E]), np.zeros(5))


def test_itemknn_ranks(train, test):
    # rows (lambda 20, alpha .5): a: b .130, c .0889, d .0455 ; c: a .0889 = b .0889
    #                             d: a .0455 = b .0455 ; e: nothing
    # T1 [a] target c (g1: b; q1) -> 2 ; [c] target b (g0; q2: a,b) -> std 1, cons 2, med 1.5
    # T2 [d] target d = 0 (g2: a,b; q3: c,d,e) -> std 3, cons 5, med 4 ; [d] target e -> same
    # T3 [e] all zero: target a (g0, q5) -> std 1, cons 5, med 3
    # T4 [c] target d = 0 (g2, q3) -> 3/5/4
    _check(ItemKNN().fit(train), test, {
        "standard": [2, 1, 3, 3, 1, 3],
        "conservative": [2, 2, 5, 5, 5, 5],
        "median": [2, 1.5, 4, 4, 3, 4]})


def test_itemknn_n_sims_cut(train, test):
    # n_sims = 1: row a: b ; row c: a (tie with b broken by index) ; row d: a ; row e: nothing
    # T1 [a] target c = 0 (g1: b; q4) -> std 2, cons 5, med 3.5
    #    [c] target b = 0 (g1: a; q4) -> 2/5/3.5
    # T2 [d] target d (g1: a; q4) -> 2/5/3.5, twice ; T3 [e] target a (g0, q5) -> 1/5/3
    # T4 [c] target d (g1, q4) -> 2/5/3.5
    _check(ItemKNN(n_sims=1).fit(train), test, {
        "standard": [2, 2, 2, 2, 1, 2],
        "conservative": [5, 5, 5, 5, 5, 5],
        "median": [3.5, 3.5, 3.5, 3.5, 3, 3.5]})


def test_top_k_per_row_matches_brute_force():
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    dense = rng.integers(0, 4, size=(30, 40)).astype(float) * (rng.random((30, 40)) < 0.5)
    M = sp.csr_matrix(dense)
    for k in (1, 3, 7, 100):
        got = top_k_per_row(M, k).toarray()
        for i in range(30):
            nz = np.flatnonzero(dense[i])
            order = sorted(nz, key=lambda j: (-dense[i, j], j))[:k]
            want = np.zeros(40)
            want[order] = dense[i, order]
            np.testing.assert_array_equal(got[i], want)


def test_cooccurrence_matches_brute_force():
    rng = np.random.default_rng(1)
    sessions = [(f"s{i}", "".join(rng.choice(list("abcdefg"), size=rng.integers(1, 8))))
                for i in range(40)]
    d = _data(sessions)
    want = np.zeros((d.n_items, d.n_items), dtype=np.int64)
    for s in range(d.n_sessions):
        items = d.items[d.offsets[s]:d.offsets[s + 1]]
        for x in items:
            for y in items:
                want[x, y] += 1
    np.fill_diagonal(want, 0)
    np.testing.assert_array_equal(cooccurrence(d).toarray(), want)


# ----------------------------------------------------------------------------------- BPR-MF
def test_bpr_sgd_step_by_hand():
    # U_s = [1, 0], I_p = [.5, 0], I_n = [0, 1]: x = .5, c = 1 - σ(.5) = σ(-.5)
    U = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    I = torch.tensor([[0.5, 0.0], [0.0, 1.0]], dtype=torch.float64)
    x = bpr_sgd_step(U, I, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), lr=0.1)
    c = 1 / (1 + np.exp(0.5))
    assert float(x[0]) == pytest.approx(0.5)
    np.testing.assert_allclose(U.numpy(), [[1 + .1 * c * .5, -.1 * c]])      # lr c (I_p - I_n)
    np.testing.assert_allclose(I.numpy(), [[.5 + .1 * c, 0], [-.1 * c, 1]])   # ±lr c U_s
    # with L2 (lam = .5): U_s += lr (c diff - lam U_s) etc.
    U = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    I = torch.tensor([[0.5, 0.0], [0.0, 1.0]], dtype=torch.float64)
    bpr_sgd_step(U, I, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), lr=0.1, lam=0.5)
    np.testing.assert_allclose(U.numpy(), [[1 + .1 * (c * .5 - .5), .1 * (-c)]])
    np.testing.assert_allclose(I.numpy(), [[.5 + .1 * (c - .25), 0], [-.1 * c, 1 - .05]])
    # the same row used twice in a mini-batch: the two updates are summed
    U = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    I = torch.tensor([[0.5, 0.0], [0.0, 1.0]], dtype=torch.float64)
    bpr_sgd_step(U, I, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([1, 1]), lr=0.1)
    np.testing.assert_allclose(U.numpy(), [[1 + .1 * c, -.2 * c]])


def test_bpr_batch_size_one_is_per_event_sgd(train):
    """batch_size=1 reproduces the authors' per-event SGD loop (same random draws)."""
    m = BPRMF(n_factors=3, n_iterations=2, learning_rate=0.1, lambda_reg=0.01, seed=3,
              batch_size=1).fit(train)
    g = torch.Generator().manual_seed(3)
    U = (torch.rand(train.n_sessions, 3, generator=g) * 2 - 1) * 0.05
    I = (torch.rand(5, 3, generator=g) * 2 - 1) * 0.05
    ses = np.repeat(np.arange(train.n_sessions), train.session_lengths)
    U, I = U.double().numpy(), I.double().numpy()
    for _ in range(2):
        perm = torch.randperm(train.n_events, generator=g).numpy()
        neg = torch.randint(5, (train.n_events,), generator=g).numpy()
        for e, n in zip(perm, neg):
            u, p = ses[e], train.items[e]
            uF, i1, i2 = U[u].copy(), I[p].copy(), I[n].copy()
            c = 1 - 1 / (1 + np.exp(-uF @ (i1 - i2)))
            U[u] += 0.1 * (c * (i1 - i2) - 0.01 * uF)
            I[p] += 0.1 * (c * uF - 0.01 * i1)
            I[n] += 0.1 * (-c * uF - 0.01 * i2)
    np.testing.assert_allclose(m.item_factors.numpy(), I, atol=1e-6)
    np.testing.assert_allclose(m.session_factors.numpy(), U, atol=1e-6)


def test_bpr_init_and_learning(train):
    m = BPRMF(n_factors=4, n_iterations=0, init_scale=0.05).fit(train)
    f = m.item_factors.numpy()
    assert f.shape == (5, 4) and np.all(np.abs(f) <= 0.05) and np.abs(f).max() > 0
    again = BPRMF(n_factors=4, n_iterations=0, init_scale=0.05).fit(train)
    np.testing.assert_array_equal(again.item_factors.numpy(), f)           # seeded
    m = BPRMF(n_factors=8, n_iterations=60, learning_rate=0.2, batch_size=4).fit(train)
    assert m.losses[-1] < m.losses[0] < 0.7


def _bpr_by_hand(train):
    m = BPRMF(n_factors=2, n_iterations=0).fit(train)
    m.item_factors = torch.tensor([[1, 0], [0, 1], [1, 1], [-1, 0], [0, 0]], dtype=torch.float32)
    return m


def test_bpr_scores_mean_of_session_items(train):
    m = _bpr_by_hand(train)
    # [a c]: session vector (a + c)/2 = [1, .5] -> a 1, b .5, c 1.5, d -1, e 0
    np.testing.assert_allclose(m.score_prefix([A, C]), [1, .5, 1.5, -1, 0])
    # [d d b]: mean [-2/3, 1/3] -> a -2/3, b 1/3, c -1/3, d 2/3, e 0
    np.testing.assert_allclose(m.score_prefix([D, D, B]), [-2 / 3, 1 / 3, -1 / 3, 2 / 3, 0],
                               rtol=1e-6)


def test_bpr_ranks(train, test):
    # factors a [1,0], b [0,1], c [1,1], d [-1,0], e [0,0]
    # T1 [a] vec [1,0]: a 1 b 0 c 1 d -1 e 0; target c (g0, q2) -> 1/2/1.5
    #    [a c] vec [1,.5]: a 1 b .5 c 1.5 d -1 e 0; target b (g2, q1) -> 3
    # T2 [d] vec [-1,0]: a -1 b 0 c -1 d 1 e 0; target d (g0,q1) -> 1
    #    [d d] same; target e = 0 (g1: d; q2: b,e) -> 2/3/2.5
    # T3 [e] vec 0: all 0; target a (g0,q5) -> 1/5/3
    # T4 [c] vec [1,1]: a 1 b 1 c 2 d -1 e 0; target d (g4,q1) -> 5
    _check(_bpr_by_hand(train), test, {
        "standard": [1, 3, 1, 2, 1, 5],
        "conservative": [2, 3, 1, 3, 5, 5],
        "median": [1.5, 3, 1, 2.5, 3, 5]})


# ------------------------------------------------------------------------ API and the CLI
def test_run_baselines_and_names(train, test):
    res = run_baselines(train, test, names="pop,itemknn", cutoffs=(1, 5), mode="conservative",
                        params={"itemknn": {"n_sims": 1}})
    assert list(res) == ["POP", "Item-KNN"]
    assert res["Item-KNN"]["recall"][5] == 1.0 and res["Item-KNN"]["mrr"][1] == 0.0
    assert res["POP"]["n_events"] == 6 and "fit_seconds" in res["POP"]
    assert resolve_names(None) == list(BASELINES) == ["pop", "spop", "itemknn", "bprmf"]
    assert resolve_names(["S-POP", "Item-KNN", "BPR-MF"]) == ["spop", "itemknn", "bprmf"]
    with pytest.raises(ConfigError):
        resolve_names("pop,foo")
    with pytest.raises(ConfigError):
        make_baseline("itemknn", k=3)
    with pytest.raises(ConfigError):
        ItemKNN(alpha=2)
    with pytest.raises(ConfigError):
        POP(top_n=0)
    with pytest.raises(ConfigError):
        run_baselines(train, test, names="pop", params={"bprmf": {"n_factors": 3}})
    assert parse_baseline_params(["itemknn.n_sims=5,bprmf.learning_rate=0.1"]) == \
        {"itemknn": {"n_sims": 5}, "bprmf": {"learning_rate": 0.1}}
    for bad in (["n_sims=5"], ["itemknn.nsims=5"], ["itemknn.n_sims=x"]):
        with pytest.raises(ConfigError):
            parse_baseline_params(bad)
    with pytest.raises(RuntimeError):
        POP().evaluate(test)
    table = format_table(res, [1, 5])
    assert "Recall@5" in table and "Item-KNN" in table


def test_test_mapped_with_other_catalog_is_remapped(train, test):
    other = _data([("x", "edcba")])           # another item order
    test_other = _data(TEST, item_map=other, t0=100)
    a = POP().fit(train).evaluate(test, cutoffs=(1, 3))
    b = POP().fit(train).evaluate(test_other, cutoffs=(1, 3))
    assert a["recall"] == b["recall"] and a["mrr"] == b["mrr"]


def _parser():
    p = argparse.ArgumentParser(prog="fastgru4rec")
    register_cli(p.add_subparsers(dest="command"))
    return p


def _write(path, sessions, t0=0):
    lines, t = ["SessionId\tItemId\tTime"], t0
    for s, items in sessions:
        for it in items:
            lines.append(f"{s}\t{it}\t{t}")
            t += 1
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_cli_json_and_table(tmp_path, capsys):
    tr = _write(tmp_path / "train.tsv", TRAIN)
    te = _write(tmp_path / "test.tsv", TEST + [("T5", "az")], t0=100)   # z: unknown, dropped
    args = _parser().parse_args(["baselines", tr, te, "-m", "1", "5", "--json",
                                 "--only", "pop,itemknn", "-p", "itemknn.n_sims=1"])
    assert run(args) == 0
    out = json.loads(capsys.readouterr().out)
    r = out["results"][te]
    assert set(r) == {"POP", "Item-KNN"}
    # POP conservative ranks [3, 2, 5, 5, 2, 5]: Recall@1 0, Recall@5 1
    assert r["POP"]["recall"]["5"] == 1.0 and r["POP"]["recall"]["1"] == 0.0
    assert r["POP"]["n_unknown_events"] == 1 and r["POP"]["n_events"] == 6
    assert out["params"]["Item-KNN"]["n_sims"] == 1
    args = _parser().parse_args(["baselines", tr, te, "-e", "standard", "-q"])
    assert run(args) == 0
    text = capsys.readouterr().out
    for name in ("POP", "S-POP", "Item-KNN", "BPR-MF", "Recall@20", "MRR@20"):
        assert name in text


def test_cli_bad_input(tmp_path):
    tr = _write(tmp_path / "train.tsv", TRAIN)
    te = _write(tmp_path / "test.tsv", TEST)
    for argv, err in ((["baselines", tr, te, "--only", "knn2"], ConfigError),
                      (["baselines", tr, te, "-p", "pop.top_n=abc"], ConfigError),
                      (["baselines", tr, te, "-m", "0"], ConfigError),
                      (["baselines", tr, te, "--only", "pop", "-p", "bprmf.seed=1"], ConfigError),
                      (["baselines", str(tmp_path / "missing.tsv"), te], DataError)):
        with pytest.raises(err) as e:
            run(_parser().parse_args(argv))
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------ ranks without dense scores
@pytest.mark.parametrize("make", [lambda: POP(top_n=7), lambda: SPOP(top_n=7),
                                  lambda: SPOP(top_n=1000), lambda: ItemKNN(n_sims=5),
                                  lambda: ItemKNN(n_sims=1000)],
                         ids=["pop", "spop", "spop-all-popular", "itemknn", "itemknn-all-sims"])
@pytest.mark.parametrize("lanes", [1, 3, 64])
def test_fast_ranks_equal_the_dense_scores_counts_step_by_step(make, lanes):
    """POP, S-POP and Item-KNN rank without the (b, N) scores (rank_step); the oracle is the
    base class's rank_step (score_step's dense scores, then rank_counts_dense), run on the same
    steps with its own state. A small catalog with many equal supports and short candidate
    lists: ties at every score, zeros included; repeated items in sessions (S-POP counts)."""
    from fastgru4rec.baselines import _Baseline
    from fastgru4rec.evaluate import evaluate_session_steps
    from fastgru4rec.synthetic import synthetic_split

    train, test = synthetic_split(n_items=60, n_sessions=400, seed=3)
    model = make().fit(train)
    assert not model.dense_ranks
    steps = []

    def both(inp, tgt, reset, keep):
        fast = model.rank_step(inp, tgt, reset, keep)
        dense = _Baseline.rank_step(model, inp, tgt, reset, keep)
        steps.append(len(inp))
        for got, want in zip(fast, dense):
            assert got.dtype == torch.int64 and torch.equal(got, want), (inp, tgt)
        return fast

    model.reset_state()
    evaluate_session_steps(both, test, (1, 5, 20), "conservative", lanes, False,
                           model.reset_state)
    assert sum(steps) == test.n_events - test.n_sessions


def test_spop_lanes_kept_twice_do_not_share_their_counts(train):
    """keep may name a lane twice (rank_step is public): each copy counts on its own, as
    score_step's index_select copies."""
    from fastgru4rec.baselines import _Baseline
    fast, dense = SPOP().fit(train), SPOP().fit(train)

    def step(inp, tgt, reset, keep=None):
        args = (torch.tensor(inp), torch.tensor(tgt), torch.tensor(reset),
                None if keep is None else torch.tensor(keep))
        got = fast.rank_step(*args)
        want = _Baseline.rank_step(dense, *args)
        assert [g.tolist() for g in got] == [w.tolist() for w in want]
    step([A], [B], [True])
    step([C, C], [A, C], [False, False], keep=[0, 0])      # lane 0 carried on twice
    step([A, B], [C, C], [False, False])                    # each copy saw only its own C


def test_sparse_rankers_take_all_lanes_on_a_large_catalog(train):
    """The lane cap (lanes x N <= 2^24) is for the dense scores only."""
    for model in (POP().fit(train), ItemKNN().fit(train), BPRMF(n_iterations=1).fit(train)):
        model.n_items = 1 << 21                      # as if the catalog had 2M items
        assert model.eval_lanes(128) == (8 if model.dense_ranks else 128)


# ------------------------------------------------------------- progress and memory (large catalogs)
def test_long_fits_show_progress_only_when_asked(train, capsys):
    """Item-KNN's phases and BPR-MF's iterations take tens of seconds each on a 2M-item
    catalog: a tqdm bar on stderr with progress=True (the API's and the CLI's flag), none
    without."""
    ItemKNN().fit(train, progress=True)
    BPRMF(n_iterations=2).fit(train, progress=True)
    err = capsys.readouterr().err
    assert "Item-KNN" in err and "co-occurrence" in err
    assert "BPR-MF iteration 1/2" in err and "BPR-MF iteration 2/2" in err
    ItemKNN().fit(train)
    BPRMF(n_iterations=2).fit(train, progress=False)
    assert capsys.readouterr().err == ""
    # progress does not change the fit
    a, b = BPRMF(n_iterations=2).fit(train), BPRMF(n_iterations=2).fit(train, progress=True)
    assert a.losses == b.losses and torch.equal(a.item_factors, b.item_factors)


def test_run_baselines_and_the_cli_pass_progress_to_fit(train, test, tmp_path, capsys):
    run_baselines(train, test, names="itemknn,bprmf", params={"bprmf": {"n_iterations": 1}},
                  progress=True)
    err = capsys.readouterr().err
    assert "co-occurrence" in err and "BPR-MF iteration 1/1" in err
    run_baselines(train, test, names="itemknn,bprmf", params={"bprmf": {"n_iterations": 1}})
    assert capsys.readouterr().err == ""
    tr = _write(tmp_path / "train.tsv", TRAIN)
    te = _write(tmp_path / "test.tsv", TEST, t0=100)
    argv = ["baselines", tr, te, "--only", "itemknn,bprmf", "-p", "bprmf.n_iterations=1"]
    assert run(_parser().parse_args(argv)) == 0
    err = capsys.readouterr().err
    assert "co-occurrence" in err and "BPR-MF iteration 1/1" in err
    for quiet in (["-q"], ["--json"]):
        assert run(_parser().parse_args(argv + quiet)) == 0
        assert "BPR-MF iteration" not in capsys.readouterr().err


def _track_models(monkeypatch):
    """Weak references to every model make_baseline builds, and for each fit, whether the
    models fitted before it were already freed (no garbage collection asked: refcounts)."""
    import weakref

    import fastgru4rec.baselines as bl
    refs, freed_before_fit = [], []
    real_make, real_fit = bl.make_baseline, bl._Baseline.fit

    def make(name, **params):
        model = real_make(name, **params)
        refs.append(weakref.ref(model))
        return model

    def fit(self, *a, **kw):
        i = next(j for j, r in enumerate(refs) if r() is self)
        freed_before_fit.append([r() is None for r in refs[:i]])
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(bl, "make_baseline", make)
    monkeypatch.setattr(bl._Baseline, "fit", fit)
    return refs, freed_before_fit


def test_run_baselines_frees_each_model_once_its_results_are_in(train, test, monkeypatch):
    """All four fitted models alive together: 5.3 GiB peak vs 4.0 for Item-KNN alone on a
    2M-item catalog. Each is freed before the next one is fitted; results unchanged."""
    want = run_baselines(train, test, cutoffs=(1, 5), params={"bprmf": {"n_iterations": 2}})
    refs, freed = _track_models(monkeypatch)
    got = run_baselines(train, test, cutoffs=(1, 5), params={"bprmf": {"n_iterations": 2}})
    assert len(refs) == 4
    assert freed == [[], [True], [True, True], [True, True, True]]
    assert all(r() is None for r in refs)
    for name in want:
        for key in ("recall", "mrr", "n_events", "n_unknown_events"):
            assert got[name][key] == want[name][key], (name, key)


def test_cli_frees_each_model_once_its_results_are_in(tmp_path, monkeypatch, capsys):
    tr = _write(tmp_path / "train.tsv", TRAIN)
    te1 = _write(tmp_path / "test1.tsv", TEST, t0=100)
    te2 = _write(tmp_path / "test2.tsv", TEST[:2], t0=100)
    refs, freed = _track_models(monkeypatch)
    args = _parser().parse_args(["baselines", tr, te1, te2, "--json", "-p",
                                 "itemknn.n_sims=2,bprmf.n_factors=3,bprmf.n_iterations=1"])
    assert run(args) == 0
    assert freed == [[], [True], [True, True], [True, True, True]]
    out = json.loads(capsys.readouterr().out)
    # the parameters are still reported, each test file still has all four rows
    assert out["params"]["Item-KNN"]["n_sims"] == 2 and out["params"]["BPR-MF"]["n_factors"] == 3
    assert out["params"]["POP"] == {"top_n": 100}
    assert all(set(r) == {"POP", "S-POP", "Item-KNN", "BPR-MF"} for r in out["results"].values())


def test_itemknn_tensors_share_the_similarity_matrix_memory(train):
    """One copy of the similarity lists: the rank step's tensors are views of the CSR arrays
    (the copies cost 0.66 GB beside the CSR's 0.49 GB on a 2M-item catalog)."""
    m = ItemKNN().fit(train)
    S = m.sims
    for t, a in ((m._indptr, S.indptr), (m._indices, S.indices), (m._data, S.data)):
        assert np.shares_memory(t.numpy(), a)
    assert m._data.dtype == torch.float64


def test_evaluate_default_mode_is_conservative(train, test):
    # POP's ranks (test_pop_ranks, by hand) with ties: conservative [3, 2, 5, 5, 2, 5],
    # standard [3, 1, 4, 4, 1, 4]. evaluate() without a mode must give the conservative ones.
    res = POP().fit(train).evaluate(test, cutoffs=(1, 2, 3, 5))
    assert res["mode"] == "conservative"
    want_recall, want_mrr = _metrics([3, 2, 5, 5, 2, 5])
    std_recall, std_mrr = _metrics([3, 1, 4, 4, 1, 4])
    assert (want_recall, want_mrr) != (std_recall, std_mrr)   # the two modes differ here
    for k in (1, 2, 3, 5):
        assert res["recall"][k] == pytest.approx(want_recall[k], abs=1e-12), k
        assert res["mrr"][k] == pytest.approx(want_mrr[k], abs=1e-12), k
    # by hand: recall@2 = 2/6 (the two rank-2 points), mrr@2 = (1/2 + 1/2) / 6
    assert res["recall"][2] == pytest.approx(1 / 3) and res["mrr"][2] == pytest.approx(1 / 6)


def test_supports_are_counted_from_the_training_events_not_the_item_map(train):
    # Training data mapped with another, larger catalog (train's: a..e, supports 3 3 2 1 1):
    # its SessionData.supports are train's, but the baseline must count its own events.
    #   X: c c    Y: d c d    -> a 0, b 0, c 3, d 2, e 0 (by hand)
    other = _data([("X", "cc"), ("Y", "dcd")], item_map=train)
    assert list(other.supports) == [3, 3, 2, 1, 1]       # the map's, not these events'
    pop = POP().fit(other)
    assert pop.supports.tolist() == [0, 0, 3, 2, 0]
    # POP: supp/(1+supp) for supported items, 0 for the rest
    np.testing.assert_allclose(pop.score_prefix([C]), [0, 0, 3 / 4, 2 / 3, 0])
    assert pop.item_map().supports.tolist() == [0, 0, 3, 2, 0]
