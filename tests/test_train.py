"""The training loop: its sparse-row step equals a dense autograd step on the touched rows,
and its hidden-state bookkeeping (reset, shrink) follows the schedule."""
import copy

import numpy as np
import pytest
import torch

from fastgru4rec.config import GRU4RecConfig
from fastgru4rec.data import SessionData
from fastgru4rec.engine import FastTrainer
from fastgru4rec.nn import GRU4RecModel
from fastgru4rec.ops.scoring import logq_column_correction, sampled_loss_reference
from fastgru4rec.train import Trainer


def _dense_reference_step(model, cfg, inp, tgt, neg, hidden, supports):
    """One step with dense autograd gradients; Adagrad-momentum applied to every dense
    parameter and to the touched rows of the item tables (float64 model, no dropout)."""
    model = copy.deepcopy(model)
    Y = torch.cat([tgt, neg])
    table = getattr(model, model.input_table_name)
    h_last, _ = model.step(table[inp], hidden)
    R = h_last @ model.item_weight[Y].t() + model.item_bias[Y]
    lq = logq_column_correction(torch.log(torch.tensor(supports, dtype=R.dtype))[Y], len(tgt),
                                cfg.sample_alpha)
    loss = sampled_loss_reference(R, cfg.loss, logq_per_column=lq, logq=cfg.logq,
                                  bpreg=cfg.bpreg, elu_param=cfg.elu_param) / cfg.batch_size
    loss.backward()
    touched = {"item_weight": torch.unique(torch.cat([inp, Y]) if model.embedding_mode == "shared" else Y),
               "item_bias": torch.unique(Y), "embedding": torch.unique(inp),
               "input_table": torch.unique(inp)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = p.grad
            acc = g * g
            step = -cfg.learning_rate * g / torch.sqrt(acc + 1e-6)   # first step: v = -lr g/sqrt
            if name in touched:
                rows = touched[name]
                p[rows] += step[rows]
            else:
                p += step
    return model, loss.item()


STEP_CASES = [(mode, loss, step)
              for mode, loss in [("shared", "cross-entropy"), ("separate", "bpr-max"),
                                 ("onehot", "top1-max"), ("shared", "bpr")]
              for step in ["reference", "fixed-shape", "fused", "fused-explicit"]
              if not step.startswith("fused") or mode == "shared"]   # fused: shared only


@pytest.mark.parametrize("lanes", [4, 3])   # full width, and the shrinking tail (b < B = 4)
@pytest.mark.parametrize("mode,loss,step", STEP_CASES)
def test_sparse_step_equals_dense_autograd(mode, loss, step, lanes):
    """Trainer.train_step (unique rows), FastTrainer.fixed_step (one row per occurrence,
    summed by the sparse update: on the CPU the C++ one) and FastTrainer.fused_step (the
    step of ops.train_step, shared embedding only: its autograd torch form, and its explicit
    backward, the CPU default) against dense autograd. On a narrowed step (b < B lanes) the
    loss is still divided by B, and logQ's in-batch columns are the b targets."""
    N = 40
    cfg = GRU4RecConfig(layers=(6, 5) if mode != "onehot" else (6,), loss=loss, batch_size=4,
                        n_sample=7, learning_rate=0.1, momentum=0.3, logq=1.0, bpreg=0.5,
                        elu_param=0.5, embedding=8 if mode == "separate" else 0,
                        constrained_embedding=(mode == "shared"))
    model = GRU4RecModel(N, cfg.layers, mode, 8, seed=3).double()
    rng = np.random.default_rng(0)
    supports = rng.integers(1, 20, size=N)
    # duplicates, and overlaps with targets; the first (column b) has support > 1, so that its
    # logQ correction (alpha · log support as a sample, log support in the batch) matters
    neg = torch.tensor([9, 5, 5, 1, 30, 9, 2])
    inp, tgt = torch.tensor([1, 2, 2, 7])[:lanes], torch.tensor([9, 3, 4, 2])[:lanes]
    hidden = [torch.randn(lanes, H, dtype=torch.float64) for H in cfg.layers]
    ref_model, ref_loss = _dense_reference_step(model, cfg, inp, tgt, neg, hidden, supports)
    if step == "reference":
        trainer = Trainer(model, cfg, supports, torch.device("cpu"))
        trainer.sampler.next = lambda: neg.numpy()
        loss_value, _ = trainer.train_step(inp, tgt, hidden)
    else:
        trainer = FastTrainer(model, cfg, supports, torch.device("cpu"),
                              step="fused" if step.startswith("fused") else "autograd",
                              step_backend="explicit" if step == "fused-explicit" else "torch")
        loss_value, _ = trainer.fixed_step(inp, tgt, torch.ones(lanes, 1, dtype=torch.float64),
                                           neg, hidden)
    assert loss_value.item() == pytest.approx(ref_loss, rel=1e-12)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), name


class _RecordingTrainer(Trainer):
    """Replaces the step: the new state is the old state + 1, so a lane's state counts the
    steps its session has taken since its reset."""

    def train_step(self, inp, tgt, hidden, neg=None):
        self.seen.append((inp.clone(), hidden[0][:, 0].clone()))
        return torch.zeros(()), [h + 1 for h in hidden]


def test_epoch_resets_and_shrinks_hidden_state_as_scheduled():
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 7, size=23)
    # item id encodes (position in session): the state seen with an input must equal it
    sids = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.concatenate([np.arange(n) for n in lengths])
    data = SessionData.from_arrays(sids, pos, np.arange(len(sids), dtype=float))
    cfg = GRU4RecConfig(layers=(3,), batch_size=5, n_sample=4)
    model = GRU4RecModel(data.n_items, (3,), "shared")
    trainer = _RecordingTrainer(model, cfg, data.supports, torch.device("cpu"))
    trainer.seen = []
    stats = trainer.train_epoch(data, progress=False)
    assert stats.n_events == int((lengths - 1).clip(0).sum())
    positions = data.item_ids.astype(int)
    for inp, state in trainer.seen:
        assert state.tolist() == positions[inp.numpy()].astype(float).tolist()
    assert len(trainer.seen[-1][0]) < 5   # the batch shrank at the end


@pytest.mark.parametrize("trainer_cls", [Trainer, FastTrainer])
def test_fit_trains_the_epochs_asked_for(trainer_cls):
    # n_epochs=0 trains none (it trained the configuration's n_epochs); None: the configuration's
    data = SessionData.from_arrays(np.repeat(np.arange(30), 3), np.arange(90) % 11,
                                   np.arange(90, dtype=float))
    cfg = GRU4RecConfig(layers=(4,), batch_size=4, n_sample=3, n_epochs=2)
    model = GRU4RecModel(data.n_items, (4,), "shared")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = trainer_cls(model, cfg, data.supports, torch.device("cpu"))
    assert trainer.fit(data, n_epochs=0, progress=False) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s.epoch for s in trainer.fit(data, progress=False)] == [1, 2]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="n_epochs must be a non-negative integer"):
            trainer.fit(data, n_epochs=bad, progress=False)


@pytest.mark.parametrize("trainer_cls", [Trainer, FastTrainer])
def test_fit_max_steps_is_a_budget_over_all_epochs(trainer_cls):
    # a trial run: max_steps counts steps across epochs; the epoch it ends in is cut short and
    # the later ones are not begun
    data = SessionData.from_arrays(np.repeat(np.arange(30), 3), np.arange(90) % 11,
                                   np.arange(90, dtype=float))
    cfg = GRU4RecConfig(layers=(4,), batch_size=4, n_sample=3, n_epochs=3)

    def fresh():
        torch.manual_seed(0)
        model = GRU4RecModel(data.n_items, (4,), "shared")
        return model, trainer_cls(model, cfg, data.supports, torch.device("cpu"))

    model, trainer = fresh()
    (whole,) = trainer.fit(data, n_epochs=1, progress=False)
    full_state = {k: v.clone() for k, v in model.state_dict().items()}
    S = whole.n_steps
    assert whole.n_events == 60 and S > 5
    # exactly one epoch's steps: the same training as n_epochs=1, nothing of epoch 2
    model, trainer = fresh()
    assert [(s.epoch, s.n_steps) for s in trainer.fit(data, progress=False, max_steps=S)] \
        == [(1, S)]
    assert all(torch.equal(full_state[k], v) for k, v in model.state_dict().items())
    # S + 5: epoch 2 cut after 5 steps (each step here trains at most 4 lanes, one event each)
    model, trainer = fresh()
    hist = trainer.fit(data, progress=False, max_steps=S + 5)
    assert [(s.epoch, s.n_steps) for s in hist] == [(1, S), (2, 5)]
    assert 5 <= hist[1].n_events <= 20
    assert not all(torch.equal(full_state[k], v) for k, v in model.state_dict().items())
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="max_steps must be a positive integer"):
            trainer.fit(data, progress=False, max_steps=bad)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("trainer_cls", [Trainer, FastTrainer])
def test_trainers_draw_negatives_by_support_to_the_alpha(trainer_cls, alpha):
    # the trainers hand the training supports and sample_alpha to their sample store: the
    # store's distribution and its draws against support^alpha computed here (float64)
    supports = np.array([1, 50, 3, 200, 7, 2, 12, 90, 1, 30])
    cfg = GRU4RecConfig(layers=(4,), batch_size=4, n_sample=100, sample_alpha=alpha,
                        sample_store_size=200_000)
    model = GRU4RecModel(len(supports), (4,), "shared")
    trainer = trainer_cls(model, cfg, supports, torch.device("cpu"))
    weights = supports.astype(np.float64) ** alpha
    expected = weights / weights.sum()
    assert np.allclose(np.diff(np.r_[0.0, trainer.sampler.cdf]), expected, rtol=1e-9, atol=1e-12)
    draws = trainer.sampler.next_rows(2000).ravel()                # 200,000 ids
    counts = np.bincount(draws, minlength=len(supports))
    chi2 = ((counts - len(draws) * expected) ** 2 / (len(draws) * expected)).sum()
    assert chi2 < 50, (chi2, counts)   # 9 degrees of freedom: P(chi2 > 50) < 1e-6


DROPOUT_STEPS = ["reference", "fixed-shape", "fused", "fused-explicit", "all-reference",
                 "all-fixed-shape"]


@pytest.mark.parametrize("p_embed, p_hidden", [(0.0, 0.5), (0.5, 0.0)])
@pytest.mark.parametrize("step", DROPOUT_STEPS)
def test_each_dropout_rate_drops_its_own_tensor(step, p_embed, p_hidden):
    # dropout_p_hidden drops the layer's output, which is carried as the next state: about that
    # share of the new state's entries are exactly 0. dropout_p_embed drops the input rows: the
    # same share of an input-only row's entries get no gradient, so (momentum 0) do not move.
    # Swapping the two rates anywhere on the way to the step fails one of the two cases.
    # (n_sample="all" moves every row of the item table: there the input rows are a separate
    # embedding's, which only the inputs update.)
    b, H, N = 64, 32, 400
    full = step.startswith("all-")
    cfg = GRU4RecConfig(layers=(H,), batch_size=b, n_sample="all" if full else 50,
                        logq=0.0, learning_rate=0.1, momentum=0.0, dropout_p_embed=p_embed,
                        dropout_p_hidden=p_hidden, constrained_embedding=not full,
                        embedding=24 if full else 0)
    model = GRU4RecModel(N, (H,), "separate" if full else "shared", 24, seed=2)
    in_table = model.embedding if full else model.item_weight
    before = in_table.detach().clone()
    inp, tgt = torch.arange(0, b), torch.arange(100, 100 + b)   # inputs: rows 0..63, only inputs
    neg = None if full else torch.arange(200, 250)
    hidden = [torch.randn(b, H, generator=torch.Generator().manual_seed(0))]
    supports = np.ones(N, dtype=np.int64)
    if step in ("reference", "all-reference"):
        trainer = Trainer(model, cfg, supports, torch.device("cpu"))
        _, new_hidden = trainer.train_step(inp, tgt, hidden, neg)
    else:
        kind = dict(step="fused", step_backend="explicit" if step == "fused-explicit" else "torch") \
            if step.startswith("fused") else dict(step="autograd")
        trainer = FastTrainer(model, cfg, supports, torch.device("cpu"), **kind)
        _, new_hidden = trainer.fixed_step(inp, tgt, torch.ones(b, 1), neg, hidden)
    zero_state = (new_hidden[0] == 0).double().mean().item()
    unmoved = (in_table.detach()[:b] == before[:b]).double().mean().item()
    if p_hidden:
        assert 0.4 < zero_state < 0.6 and unmoved == 0.0, (zero_state, unmoved)
    else:
        assert zero_state == 0.0 and 0.4 < unmoved < 0.6, (zero_state, unmoved)


@pytest.mark.parametrize("trainer_cls", [Trainer, FastTrainer])
def test_epoch_loss_is_the_mean_loss_per_event(trainer_cls):
    # EpochStats.loss: every lane's loss summed over the epoch, over its events. Steps return
    # their lanes' loss / B (checked against dense autograd above), so it is
    # sum(step loss * B) / events, with narrowed tail steps and resets in play.
    lengths = [2, 5, 3, 2, 7, 4, 2, 3, 6, 2, 3, 4, 3]                # 46 events
    data = SessionData.from_arrays(np.repeat(np.arange(13), lengths), np.arange(46) % 9,
                                   np.arange(46, dtype=float))
    cfg = GRU4RecConfig(layers=(5,), batch_size=4, n_sample=6, n_epochs=1)
    model = GRU4RecModel(data.n_items, (5,), "shared")
    trainer = trainer_cls(model, cfg, data.supports, torch.device("cpu"))
    seen = []
    real = trainer.lanes_step

    def spy(ep, t, hidden, neg=None):
        loss, new_hidden = real(ep, t, hidden, neg)
        seen.append((loss.item(), len(new_hidden[0])))
        return loss, new_hidden

    trainer.lanes_step = spy
    stats = trainer.train_epoch(data, progress=False)
    n_events = 46 - 13                         # one prediction per event after a session's first
    assert stats.n_events == n_events == sum(lanes for _, lanes in seen)
    assert stats.n_steps == len(seen) and min(lanes for _, lanes in seen) < 4   # a narrowed tail
    assert stats.loss == pytest.approx(sum(loss for loss, _ in seen) * 4 / n_events, rel=1e-12)
