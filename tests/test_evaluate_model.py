"""evaluate_model (REFERENCE §5) against a naive float64 loop written here: each test session
from a zero state, its events fed one at a time, the hidden state carried inside the session,
every later event ranked against ALL items by hand (numpy), the three tie modes.

The session-parallel evaluation (lanes that end, are refilled and shrink) must give the same
ranks; a state lost between steps, a missed reset or a lane mix-up changes them because the
model's recurrent weights are large (the next scores depend strongly on the history).
"""
import numpy as np
import pytest
import torch

from fastgru4rec.data import SessionData
from fastgru4rec.errors import DataError
from fastgru4rec.evaluate import evaluate_model
from fastgru4rec.nn import GRU4RecModel

N_ITEMS, H = 23, 8
CUTOFFS = (1, 2, 5, 10)


def _model(mode):
    torch.manual_seed(5)
    model = GRU4RecModel(N_ITEMS, layers=(H, 6), embedding_mode=mode,
                         embedding_dim=5 if mode == "separate" else 0, seed=3).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 1.5 if "weight_hh" in name else 0.7)
        # planted exact ties with the targets' scores: three pairs of identical items
        for a, b in [(1, 2), (7, 11), (15, 16)]:
            model.item_weight[b] = model.item_weight[a]
            model.item_bias[b] = model.item_bias[a]
    return model


def _test_data(rng):
    lengths = [1, 2, 5, 3, 9, 1, 4, 2, 7, 6, 3]       # length-1 sessions give no evaluation point
    sess, items, times = [], [], []
    for s, n in enumerate(lengths):
        sess += [f"s{s}"] * n
        items += rng.integers(0, N_ITEMS, n).tolist()
        times += [float(s)] * n
    # item ids "0".."22" in index order: the map is the identity
    item_map = SessionData.item_map_only([str(i) for i in range(N_ITEMS)], np.ones(N_ITEMS))
    return SessionData.from_arrays(np.array(sess), np.array(items).astype(str), np.array(times),
                                   item_map=item_map), lengths


def _naive_ranks(model, data, mode):
    """Ranks of every evaluation point, session by session, one event at a time."""
    W = model.item_weight.detach().numpy()
    bias = model.item_bias.detach().numpy()
    ranks = []
    for s in range(data.n_sessions):
        events = data.items[data.offsets[s]:data.offsets[s + 1]]
        hidden = [torch.zeros(1, h, dtype=torch.float64) for h in model.layers]
        for t in range(len(events) - 1):
            with torch.no_grad():
                h_last, hidden = model(torch.tensor([events[t]]), hidden)
            scores = W @ h_last[0].numpy() + bias
            target = scores[events[t + 1]]
            greater = int((scores > target).sum())
            equal = int((scores == target).sum()) - 1          # the other items tied with it
            ranks.append({"standard": greater + 1, "conservative": greater + equal + 1,
                          "median": greater + 0.5 * equal + 1}[mode])
    return np.array(ranks, dtype=np.float64)


@pytest.mark.parametrize("embedding_mode", ["shared", "separate", "onehot"])
@pytest.mark.parametrize("mode", ["standard", "conservative", "median"])
@pytest.mark.parametrize("batch_size", [1, 3, 512])
@pytest.mark.parametrize("max_score_elements", [1 << 24, 7],
                         ids=["one-tile", "item-tiles"])   # 7: tiles of 7 // lanes items
def test_evaluate_model_equals_the_naive_session_loop(embedding_mode, mode, batch_size,
                                                       max_score_elements):
    # item tiles: the planted ties fall in different tiles, every target's score is read from
    # its own tile, the counts summed over tiles
    data, lengths = _test_data(np.random.default_rng(11))
    model = _model(embedding_mode)
    ranks = _naive_ranks(model, data, mode)
    assert len(ranks) == sum(n - 1 for n in lengths)
    got = evaluate_model(model, data, CUTOFFS, mode, batch_size=batch_size,
                         max_score_elements=max_score_elements)
    assert got["n_events"] == len(ranks)
    for k in CUTOFFS:
        inside = ranks <= k
        assert got["recall"][k] == pytest.approx(inside.mean(), abs=1e-12), (k, "recall")
        assert got["mrr"][k] == pytest.approx(np.where(inside, 1 / ranks, 0).mean(), abs=1e-12), \
            (k, "mrr")


def test_the_history_matters_on_this_data():
    """Guard for the test above: ranks from a state-less model (zero state at every event)
    differ from the naive loop's, so a lost state cannot pass it."""
    data, _ = _test_data(np.random.default_rng(11))
    model = _model("shared")
    stateful = _naive_ranks(model, data, "standard")
    W, bias = model.item_weight.detach().numpy(), model.item_bias.detach().numpy()
    stateless = []
    for s in range(data.n_sessions):
        events = data.items[data.offsets[s]:data.offsets[s + 1]]
        for t in range(len(events) - 1):
            with torch.no_grad():
                h_last, _ = model(torch.tensor([events[t]]))
            scores = W @ h_last[0].numpy() + bias
            stateless.append(int((scores > scores[events[t + 1]]).sum()) + 1)
    assert np.mean(np.array(stateless) != stateful) > 0.3


def test_a_new_session_starts_from_zeros_after_a_state_that_became_nan():
    # A lane's state that overflowed (inf/NaN) must not reach the next session run in that
    # lane: every session starts from zeros, so the metrics cannot depend on how sessions
    # share lanes (batch 1: all in one lane; 512: each in its own). NaN * 0 is NaN: a reset
    # by multiplication failed this.
    data, _ = _test_data(np.random.default_rng(11))
    model = _model("shared")
    poison = int(data.items[data.offsets[1]])      # session s1's input item (s1 has 2 events)
    forward = model.forward

    def forward_with_nan(items, hidden=None):
        h_last, hidden = forward(items, hidden)
        bad = (items == poison).unsqueeze(1)
        hidden = [h.masked_fill(bad, float("nan")) for h in hidden]
        return hidden[-1], hidden

    model.forward = forward_with_nan
    results = [evaluate_model(model, data, CUTOFFS, "conservative", batch_size=b)
               for b in (1, 3, 512)]
    assert results[0] == results[1] == results[2]


def test_test_data_without_an_evaluation_point_is_refused():
    # length-1 sessions only: no metric is defined (0.0 would read as a result)
    item_map = SessionData.item_map_only([str(i) for i in range(N_ITEMS)], np.ones(N_ITEMS))
    data = SessionData.from_arrays(np.array(["a", "b"]), np.array(["1", "2"]),
                                   np.array([0.0, 1.0]), item_map=item_map)
    with pytest.raises(DataError, match="no evaluation points"):
        evaluate_model(_model("shared"), data, CUTOFFS)


def test_default_mode_is_conservative():
    # A model whose scores are its item biases (item_weight = 0: score = h . 0 + bias, exact):
    # bias 1 for items 3 and 4, 0 for the 21 others. One test session 0, 3, 4, 5 gives three
    # targets, by hand (g = #items scoring higher, q = #items tied with the target, itself
    # included): 3: g 0, q 2; 4: g 0, q 2; 5: g 2, q 21.
    #   conservative (g + q): 2, 2, 23    standard (g + 1): 1, 1, 3
    # evaluate_model without a mode must give the conservative metrics.
    model = _model("shared")
    with torch.no_grad():
        model.item_weight.zero_()
        model.item_bias.zero_()
        model.item_bias[3] = model.item_bias[4] = 1.0
    item_map = SessionData.item_map_only([str(i) for i in range(N_ITEMS)], np.ones(N_ITEMS))
    data = SessionData.from_arrays(np.array(["s"] * 4), np.array(["0", "3", "4", "5"]),
                                   np.arange(4.0), item_map=item_map)
    got = evaluate_model(model, data, CUTOFFS)
    assert got["mode"] == "conservative" and got["n_events"] == 3
    assert got["recall"] == pytest.approx({1: 0.0, 2: 2 / 3, 5: 2 / 3, 10: 2 / 3}, abs=1e-12)
    assert got["mrr"] == pytest.approx({1: 0.0, 2: 1 / 3, 5: 1 / 3, 10: 1 / 3}, abs=1e-12)
    # the same data in standard mode differs (ranks 1, 1, 3): the ties decide
    std = evaluate_model(model, data, CUTOFFS, "standard")
    assert std["recall"] == pytest.approx({1: 2 / 3, 2: 2 / 3, 5: 1.0, 10: 1.0}, abs=1e-12)
