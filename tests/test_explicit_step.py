"""The CPU's fast training step: ops.train_step.shared_step_grads with backend "explicit" (the
GRU and cross-entropy backward written out in plain torch ops, no autograd graph) against its
autograd form, backend "torch" (autograd over gru_step_fused_reference and
sampled_loss_reference), itself held to dense autograd in tests/test_train.py. Same hashed
dropout masks in both, so the results agree to rounding."""
from __future__ import annotations

import itertools

import pytest
import torch

from fastgru4rec.nn import GRULayer
from fastgru4rec.ops.scoring import LOSSES
from fastgru4rec.ops.train_step import shared_step_grads

CASES = [
    # loss, variant, layer sizes (the last = the item table's width), b, n_sample, dropouts
    (loss, variant, layers, b, n_sample, p_embed, p_hidden)
    for (loss, variant), (layers, b, n_sample, p_embed, p_hidden) in itertools.product(
        itertools.product(LOSSES, ["cell", "original"]),
        [((16,), 1, 5, 0.0, 0.0),            # one lane (a lane needs a negative: samples)
         ((24, 37), 7, 0, 0.25, 0.4),        # two layers, not powers of two, in-batch only
         ((12, 9, 20), 33, 100, 0.0, 0.3)])  # three layers
]


def _setup(variant, layers, b, n_sample, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    N, H = 60, layers[-1]
    W = torch.randn(N, H, generator=g, dtype=dtype) * 0.5
    bias = torch.randn(N, generator=g, dtype=dtype) * 0.1
    gru, width = [], H                    # shared embedding: layer 0 reads the item table rows
    for size in layers:
        layer = GRULayer(width, size, variant=variant, dtype=dtype)
        for p in layer.parameters():
            p.data.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.3)
        gru.append(layer)
        width = size
    inp = torch.randint(0, N, (b,), generator=g)
    Y = torch.cat([torch.randint(0, N, (b,), generator=g),
                   torch.randint(0, N, (n_sample,), generator=g)])
    Y[-1] = Y[0]                          # a sample equal to a target: repeated column ids
    inp[0] = Y[0]                         # an input equal to a column
    hidden = [torch.randn(b, size, generator=g, dtype=dtype) for size in layers]
    reset = torch.rand(b, generator=g) < 0.4
    lq = torch.randn(Y.shape[0], generator=g, dtype=dtype)
    return W, bias, gru, inp, Y, hidden, reset, lq


def _rel(x, y):
    return ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("loss,variant,layers,b,n_sample,p_embed,p_hidden", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_explicit_step_equals_autograd_form(loss, variant, layers, b, n_sample, p_embed,
                                            p_hidden, dtype, tol):
    W, bias, gru, inp, Y, hidden, reset, lq = _setup(variant, layers, b, n_sample, dtype,
                                                     seed=len(layers) * 100 + b)
    kw = dict(loss=loss, batch_size=b + 3, dropout_embed=p_embed, dropout_hidden=p_hidden,
              logq_per_column=lq, logq=0.7, bpreg=0.3, elu_param=0.5)
    seed = torch.tensor([12345])
    want = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, seed, backend="torch", **kw)
    got = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, seed, backend="explicit", **kw)
    assert _rel(got.loss, want.loss) < tol
    for h_got, h_want in zip(got.new_hidden, want.new_hidden, strict=True):
        assert _rel(h_got, h_want) < tol
    assert len(got.dense) == len(want.dense)
    for i, (d_got, d_want) in enumerate(zip(got.dense, want.dense)):
        assert d_got.shape == d_want.shape and _rel(d_got, d_want) < tol, i
    assert torch.equal(got.item_ids, want.item_ids) and torch.equal(got.bias_ids, want.bias_ids)
    assert _rel(got.item_grads, want.item_grads) < tol
    assert _rel(got.bias_grads, want.bias_grads) < tol
    assert not any(t.requires_grad for t in [got.loss, got.item_grads, *got.dense])


def test_explicit_step_is_the_cpu_default_and_uses_the_dropout_seed(monkeypatch):
    """backend "auto" on CPU tensors is the explicit step; another seed draws other masks."""
    monkeypatch.delenv("FASTGRU4REC_BACKEND", raising=False)
    W, bias, gru, inp, Y, hidden, reset, lq = _setup("cell", (16,), 5, 20, torch.float64, 1)
    kw = dict(loss="cross-entropy", batch_size=5, dropout_embed=0.0, dropout_hidden=0.5,
              logq_per_column=lq, logq=1.0)
    auto = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, torch.tensor([7]), **kw)
    explicit = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, torch.tensor([7]),
                                 backend="explicit", **kw)
    other = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, torch.tensor([8]),
                              backend="explicit", **kw)
    assert torch.equal(auto.item_grads, explicit.item_grads)
    assert not torch.equal(other.new_hidden[0], explicit.new_hidden[0])
    # the reset lanes started from zeros: their state does not depend on the old one
    hidden2 = [h + 1.0 for h in hidden]
    again = shared_step_grads(W, bias, gru, inp, Y, hidden2, reset, torch.tensor([7]),
                              backend="explicit", **kw)
    assert torch.equal(again.new_hidden[0][reset], explicit.new_hidden[0][reset])
    assert not torch.equal(again.new_hidden[0][~reset], explicit.new_hidden[0][~reset])


def test_reference_env_makes_auto_the_autograd_form(monkeypatch):
    """FASTGRU4REC_BACKEND=torch: "auto" runs the autograd oracle, not the explicit step (the
    escape hatch covers the CPU fast path too); unset, "auto" runs the explicit step."""
    from fastgru4rec.ops import train_step
    calls = []
    for name in ("_step_torch", "_step_explicit"):
        real = getattr(train_step, name)
        monkeypatch.setattr(train_step, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    W, bias, gru, inp, Y, hidden, reset, lq = _setup("cell", (8,), 3, 4, torch.float64, 4)
    kw = dict(loss="bpr-max", batch_size=3, dropout_embed=0.0, dropout_hidden=0.0, bpreg=0.5)
    monkeypatch.delenv("FASTGRU4REC_BACKEND", raising=False)
    unset = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, torch.tensor([1]), **kw)
    monkeypatch.setenv("FASTGRU4REC_BACKEND", "torch")
    forced = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, torch.tensor([1]), **kw)
    explicit = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, torch.tensor([1]),
                                 backend="explicit", **kw)
    assert calls == ["_step_explicit", "_step_torch", "_step_explicit"]
    assert _rel(forced.item_grads, unset.item_grads) < 1e-12
    assert torch.equal(explicit.item_grads, unset.item_grads)


def test_one_lane_without_negatives_has_zero_cross_entropy_and_gradient():
    """b = 1 and no samples: the only column is the target, softmax = 1, loss 0 and every
    gradient 0, on the explicit step as on the autograd form."""
    W, bias, gru, inp, Y, hidden, reset, lq = _setup("original", (8,), 1, 0, torch.float64, 5)
    Y = Y[:1]
    kw = dict(loss="cross-entropy", batch_size=1, dropout_embed=0.0, dropout_hidden=0.0)
    for backend in ("explicit", "torch"):
        got = shared_step_grads(W, bias, gru, inp, Y, hidden, reset, torch.tensor([1]),
                                backend=backend, **kw)
        assert got.loss.abs().item() < 1e-15, backend
        assert got.item_grads.abs().max().item() < 1e-15, backend
        assert got.bias_grads.abs().max().item() < 1e-15, backend
        assert all(d.abs().max().item() < 1e-15 for d in got.dense), backend


def test_explicit_step_rejects_unknown_backend():
    W, bias, gru, inp, Y, hidden, reset, lq = _setup("cell", (8,), 2, 3, torch.float32, 2)
    with pytest.raises(ValueError, match="backend 'fortran' is unknown"):
        shared_step_grads(W, bias, gru, inp, Y, hidden, reset, torch.tensor([1]),
                          loss="bpr", batch_size=2, dropout_embed=0.0, dropout_hidden=0.0,
                          backend="fortran")


@pytest.mark.parametrize("loss", LOSSES)
def test_written_out_loss_gradient_equals_autograd_even_when_the_positive_underflows(loss):
    """_loss_and_dR against autograd of sampled_loss_reference on (b, C) scores, with one lane
    whose positive scores 1000 below its negatives: its softmax probability underflows to 0,
    so cross-entropy's -log(p + 1e-24) is flat there (zero gradient), which the written-out
    form must reproduce rather than use softmax - onehot."""
    from fastgru4rec.ops.scoring import sampled_loss_reference
    from fastgru4rec.ops.train_step import _loss_and_dR

    g = torch.Generator().manual_seed(4)
    b, C = 6, 40
    R = torch.randn(b, C, generator=g, dtype=torch.float64)
    R[2, 2] = -1000.0
    lq = torch.randn(C, generator=g, dtype=torch.float64)
    kw = dict(logq_per_column=lq, logq=0.5, bpreg=0.3, elu_param=0.5)
    leaf = R.clone().requires_grad_()
    want = sampled_loss_reference(leaf, loss, **kw) * 0.125
    (want_dR,) = torch.autograd.grad(want, leaf)
    value, dR = _loss_and_dR(R.clone(), loss, 0.125, lq, 0.5, 0.3, 0.5)
    assert torch.isfinite(value) and value.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(dR, want_dR, rtol=1e-12, atol=1e-15)
    if loss == "cross-entropy":
        assert torch.all(dR[2] == 0)
