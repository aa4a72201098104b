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


@pytest.mark.parametrize("mode,loss,step", STEP_CASES)
def test_sparse_step_equals_dense_autograd(mode, loss, step):
    """Trainer.train_step (unique rows), FastTrainer.fixed_step (one row per occurrence,
    summed by the sparse update: on the CPU the C++ one) and FastTrainer.fused_step (the
    step of ops.train_step, shared embedding only: its autograd torch form, and its explicit
    backward, the CPU default) against dense autograd."""
    N = 40
    cfg = GRU4RecConfig(layers=(6, 5) if mode != "onehot" else (6,), loss=loss, batch_size=4,
                        n_sample=7, learning_rate=0.1, momentum=0.3, logq=1.0, bpreg=0.5,
                        elu_param=0.5, embedding=8 if mode == "separate" else 0,
                        constrained_embedding=(mode == "shared"))
    model = GRU4RecModel(N, cfg.layers, mode, 8, seed=3).double()
    rng = np.random.default_rng(0)
    supports = rng.integers(1, 20, size=N)
    neg = torch.tensor([5, 9, 5, 1, 30, 9, 2])          # duplicates, and overlaps with targets
    inp, tgt = torch.tensor([1, 2, 2, 7]), torch.tensor([9, 3, 4, 2])
    hidden = [torch.randn(4, H, dtype=torch.float64) for H in cfg.layers]
    ref_model, ref_loss = _dense_reference_step(model, cfg, inp, tgt, neg, hidden, supports)
    if step == "reference":
        trainer = Trainer(model, cfg, supports, torch.device("cpu"))
        trainer.sampler.next = lambda: neg.numpy()
        loss_value, _ = trainer.train_step(inp, tgt, hidden)
    else:
        trainer = FastTrainer(model, cfg, supports, torch.device("cpu"),
                              step="fused" if step.startswith("fused") else "autograd",
                              step_backend="explicit" if step == "fused-explicit" else "torch")
        loss_value, _ = trainer.fixed_step(inp, tgt, torch.ones(4, 1, dtype=torch.float64), neg,
                                           hidden)
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
