"""Each loss and its gradient against a float64 hand computation (plain Python loops over
rows and columns, gradients by central differences of that computation), and against the
authors' golden values."""
import math

import numpy as np
import pytest
import torch

from fastgru4rec.ops.scoring import logq_column_correction, logq_columns, sampled_loss_reference

from golden import golden


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def elu(x, a):
    return x if x > 0 else a * (math.exp(x) - 1.0)


def hand_loss(R, loss, lq=None, logq=0.0, bpreg=0.0, elu_param=0.0):
    """REFERENCE §4 written out literally; R a list of rows (b x C), positive of row i is i."""
    b, C = len(R), len(R[0])
    total = 0.0
    for i in range(b):
        r = list(R[i])
        if loss == "cross-entropy":
            if logq > 0:
                r = [r[j] - logq * lq[j] for j in range(C)]
            m = max(r)
            z = sum(math.exp(v - m) for v in r)
            total += -math.log(math.exp(r[i] - m) / z + 1e-24)
            continue
        if loss in ("bpr-max", "top1-max") and elu_param > 0:
            r = [elu(v, elu_param) for v in r]
        neg = [j for j in range(C) if j != i]
        if loss in ("bpr-max", "top1-max"):
            m = max(r[j] for j in neg)
            z = sum(math.exp(r[j] - m) for j in neg)
            s = {j: math.exp(r[j] - m) / z for j in neg}
            if loss == "bpr-max":
                total += -math.log(sum(s[j] * sig(r[i] - r[j]) for j in neg) + 1e-24) \
                    + bpreg * sum(s[j] * r[j] ** 2 for j in neg)
            else:
                total += sum(s[j] * (sig(r[j] - r[i]) + sig(r[j] ** 2)) for j in neg)
        elif loss == "top1":
            total += (sum(sig(r[j] - r[i]) + sig(r[j] ** 2) for j in neg) + 0.5) / C
        elif loss == "bpr":
            total += -sum(math.log(sig(r[i] - r[j])) for j in range(C)) / C
    return total


def hand_grad(R, loss, h=1e-6, **kw):
    G = [[0.0] * len(R[0]) for _ in R]
    for i in range(len(R)):
        for j in range(len(R[0])):
            up = [row[:] for row in R]
            dn = [row[:] for row in R]
            up[i][j] += h
            dn[i][j] -= h
            G[i][j] = (hand_loss(up, loss, **kw) - hand_loss(dn, loss, **kw)) / (2 * h)
    return G


CASES = [
    ("cross-entropy", dict()),
    ("cross-entropy", dict(logq=1.0)),
    ("cross-entropy", dict(logq=0.5)),
    ("bpr-max", dict(bpreg=0.0, elu_param=0.0)),
    ("bpr-max", dict(bpreg=1.5, elu_param=0.5)),
    ("top1-max", dict(elu_param=0.0)),
    ("top1-max", dict(elu_param=1.0)),
    ("top1", dict()),
    ("bpr", dict()),
]


@pytest.mark.parametrize("loss,kw", CASES)
@pytest.mark.parametrize("b,n_sample", [(1, 4), (3, 0), (4, 5)])
def test_loss_and_gradient_match_hand_computation(loss, kw, b, n_sample):
    rng = np.random.default_rng(b * 100 + n_sample)
    C = b + n_sample
    R = rng.normal(scale=1.5, size=(b, C))
    Y = rng.integers(0, 6, size=C)                      # duplicate ids inside Y on purpose
    supports = rng.integers(1, 50, size=6).astype(np.float64)
    alpha = 0.4
    lq = np.log(supports[Y])
    lq[b:] *= alpha                                     # q = support^alpha for sample columns
    kw = dict(kw)
    R_t = torch.tensor(R, requires_grad=True)
    lq_t = logq_column_correction(torch.log(torch.tensor(supports)[torch.tensor(Y)]), b, alpha)
    assert torch.allclose(lq_t, torch.tensor(lq))
    log_support = torch.log(torch.tensor(supports))
    assert torch.allclose(logq_columns(log_support, torch.tensor(Y), b, alpha), torch.tensor(lq))
    assert torch.equal(log_support, torch.log(torch.tensor(supports)))   # not written
    got = sampled_loss_reference(R_t, loss, logq_per_column=lq_t, **kw)
    got.backward()
    want = hand_loss(R.tolist(), loss, lq=lq.tolist(), **kw)
    assert got.dtype == torch.float64
    assert abs(got.item() - want) <= 1e-10 * max(1.0, abs(want))
    G = np.array(hand_grad(R.tolist(), loss, lq=lq.tolist(), **kw))
    assert np.abs(R_t.grad.numpy() - G).max() <= 1e-6 * max(1.0, np.abs(G).max())


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_losses_match_authors_golden(loss):
    g = golden()["losses"]
    b = g["b"]
    R = torch.tensor(g["scores"], dtype=torch.float64, requires_grad=True)
    Y = torch.tensor(g["Y"])
    supports = torch.tensor(g["supports"], dtype=torch.float64)
    if loss == "cross-entropy":
        kw = dict(logq=g["logq"], logq_per_column=logq_column_correction(
            torch.log(supports[Y]), b, g["sample_alpha"]))
    else:
        kw = dict(elu_param=g["elu_param"], bpreg=g["bpreg"])
    value = sampled_loss_reference(R, loss, **kw)
    value.backward()
    ref = g["results"][loss]
    assert value.item() == pytest.approx(ref["loss_sum_over_rows"], rel=1e-12)
    assert torch.allclose(R.grad, torch.tensor(ref["grad_wrt_scores"], dtype=torch.float64),
                          rtol=1e-9, atol=1e-12)


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown loss 'xe'"):
        sampled_loss_reference(torch.zeros(2, 3), "xe")
