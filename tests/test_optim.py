"""Sparse Adagrad with momentum against a dense computation on the touched rows, and against
the authors' golden optimizer steps."""
import numpy as np
import pytest
import torch

from fastgru4rec import native
from fastgru4rec.ops.optim import adagrad_momentum_dense, adagrad_momentum_rows

from golden import golden


def dense_reference(P, acc, vel, G, lr, mu):
    """Dense float64 numpy Adagrad-momentum on the whole table (rows with zero gradient and
    zero velocity do not move; that is what 'sparse' must equal on touched rows)."""
    acc = acc + G * G
    vel = mu * vel - lr * G / np.sqrt(acc + 1e-6)
    return P + vel, acc, vel


BACKENDS = ["torch", "native"] if native.available() else ["torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_sparse_rows_equal_dense_on_touched_rows(mu, backend):
    rng = np.random.default_rng(1)
    N, D, lr = 12, 4, 0.05
    P = rng.normal(size=(N, D))
    acc = np.zeros((N, D))
    vel = np.zeros((N, D))
    T, A = torch.tensor(P), torch.zeros(N, D, dtype=torch.float64)
    V = torch.zeros(N, D, dtype=torch.float64) if mu > 0 else None
    for step in range(4):
        idx = rng.integers(0, N, size=7)                  # with duplicates
        per_event = rng.normal(size=(7, D))
        G = np.zeros((N, D))
        np.add.at(G, idx, per_event)                      # duplicates summed before squaring
        touched = np.unique(idx)
        P_new, acc_new, vel_new = dense_reference(P, acc, vel, G, lr, mu)
        # sparse semantics: untouched rows keep value, accumulator AND velocity
        P[touched], acc[touched], vel[touched] = P_new[touched], acc_new[touched], vel_new[touched]
        rows = torch.tensor(touched)
        adagrad_momentum_rows(T, rows, torch.tensor(G[touched]), A, V, lr, mu, backend=backend)
        np.testing.assert_allclose(T.numpy(), P, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(A.numpy(), acc, rtol=1e-12)
        if V is not None:
            np.testing.assert_allclose(V.numpy(), vel, rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(not native.available(), reason="the native extension did not load")
@pytest.mark.parametrize("mu", [0.0, 0.4])
@pytest.mark.parametrize("shape", [(300, 100), (50,), (20, 3, 5)])
def test_native_rows_equal_torch_rows_float32(mu, shape):
    """The C++ pass against the torch form in float32, item-table sized rows and a bias vector;
    rows not listed stay bit-identical."""
    g = torch.Generator().manual_seed(len(shape) * 10 + int(mu * 10))
    N = shape[0]
    rows = torch.randperm(N, generator=g)[: N // 2]
    out = {}
    for backend in ("torch", "native"):
        T = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        A = torch.rand(shape, generator=torch.Generator().manual_seed(2))
        V = torch.randn(shape, generator=torch.Generator().manual_seed(3)) if mu else None
        for k in range(3):
            G = torch.randn((len(rows),) + shape[1:], generator=torch.Generator().manual_seed(k))
            adagrad_momentum_rows(T, rows, G, A, V, 0.2, mu, backend=backend)
        out[backend] = (T, A, V)
    for a, b in zip(out["native"], out["torch"]):
        if b is not None:
            assert ((a - b).norm() / b.norm()).item() < 1e-6
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[rows] = False
    start = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["native"][0][untouched], start[untouched])


def test_dense_step_formula():
    p = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g = torch.tensor([0.5, 2.0], dtype=torch.float64)
    acc, vel = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    adagrad_momentum_dense(p, g, acc, vel, lr=0.1, momentum=0.5)
    # by hand: acc = g²; v = -0.1 * g / sqrt(g² + 1e-6); p += v
    expect_v = [-0.1 * 0.5 / (0.25 + 1e-6) ** 0.5, -0.1 * 2.0 / (4.0 + 1e-6) ** 0.5]
    assert vel.tolist() == pytest.approx(expect_v, rel=1e-14)
    assert p.tolist() == pytest.approx([1.0 + expect_v[0], -2.0 + expect_v[1]], rel=1e-14)
    adagrad_momentum_dense(p, g, acc, vel, lr=0.1, momentum=0.5)
    v2 = [0.5 * expect_v[0] - 0.1 * 0.5 / (0.5 + 1e-6) ** 0.5,
          0.5 * expect_v[1] - 0.1 * 2.0 / (8.0 + 1e-6) ** 0.5]
    assert vel.tolist() == pytest.approx(v2, rel=1e-14)


def test_matches_authors_golden_optimizer():
    o = golden()["optimizer"]
    T = torch.tensor(o["table_init"], dtype=torch.float64)
    W = torch.tensor(o["dense_init"], dtype=torch.float64)
    accT, velT = torch.zeros_like(T), torch.zeros_like(T)
    accW, velW = torch.zeros_like(W), torch.zeros_like(W)
    for step, st in enumerate(o["steps"]):
        rows, inverse = torch.unique(torch.tensor(st["indices"]), return_inverse=True)
        leaf = T.index_select(0, rows).requires_grad_()
        W_leaf = W.clone().requires_grad_()
        x = leaf[inverse]
        loss = ((x @ W_leaf) ** 2).sum() + (step + 1) * x.sum()
        loss.backward()
        adagrad_momentum_rows(T, rows, leaf.grad, accT, velT, 0.1, 0.3)
        adagrad_momentum_dense(W, W_leaf.grad, accW, velW, 0.1, 0.3)
        assert torch.allclose(T, torch.tensor(st["table_after"], dtype=torch.float64), atol=1e-13)
        assert torch.allclose(W, torch.tensor(st["dense_after"], dtype=torch.float64), atol=1e-13)


def test_auto_backend_takes_strided_tables_through_torch():
    """The C++ pass needs contiguous rows: a strided table (a view) goes to the torch form."""
    base = torch.randn(6, 8, dtype=torch.float64)
    want, start = base.clone(), base.clone()
    acc1, acc2 = torch.zeros(6, 4, dtype=torch.float64), torch.zeros(6, 4, dtype=torch.float64)
    g = torch.randn(2, 4, dtype=torch.float64)
    rows = torch.tensor([0, 3])
    adagrad_momentum_rows(base[:, ::2], rows, g, acc1, None, 0.1, 0.0, backend="auto")
    adagrad_momentum_rows(want[:, ::2], rows, g, acc2, None, 0.1, 0.0, backend="torch")
    assert torch.equal(base, want) and torch.equal(acc1, acc2)
    assert not torch.equal(base[0, ::2], start[0, ::2])          # the view's rows moved
    assert torch.equal(base[:, 1::2], start[:, 1::2])              # the columns between, not


def test_momentum_without_velocity_is_an_error_on_the_torch_backend():
    """The torch reference (no native extension needed): momentum > 0 with no velocity tensor
    is a ValueError naming the update, for rows, scatter (and its bias) and the dense list;
    nothing is written."""
    from fastgru4rec.ops.optim import (adagrad_momentum_list, adagrad_momentum_rows,
                                       adagrad_momentum_scatter)
    T, A, V = torch.randn(6, 3), torch.rand(6, 3), torch.zeros(6, 3)
    bT, bA = torch.randn(6), torch.rand(6)
    start = [t.clone() for t in (T, A, bT, bA)]
    ids, grad = torch.tensor([1, 4, 1]), torch.randn(3, 3)
    with pytest.raises(ValueError, match="adagrad_momentum_scatter: momentum=0.3 needs"):
        adagrad_momentum_scatter(T, ids, grad, A, None, 0.1, 0.3, backend="torch")
    with pytest.raises(ValueError, match=r"\(bias\): momentum=0.3 needs"):
        adagrad_momentum_scatter(T, ids, grad, A, V, 0.1, 0.3, backend="torch",
                                 bias=(bT, torch.randn(2), bA, None, 1))
    with pytest.raises(ValueError, match="adagrad_momentum_rows: momentum=0.3 needs"):
        adagrad_momentum_rows(T, torch.tensor([0, 2]), grad[:2], A, None, 0.1, 0.3,
                              backend="torch")
    with pytest.raises(ValueError, match="adagrad_momentum_list: momentum=0.3 needs"):
        adagrad_momentum_list([T], [torch.ones(6, 3)], [A], None, 0.1, 0.3, backend="torch")
    for got, want in zip((T, A, bT, bA), start):
        assert torch.equal(got, want)
