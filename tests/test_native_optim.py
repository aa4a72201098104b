"""The C++ sparse Adagrad-momentum row updates (csrc/optim.hpp through
fastgru4rec.native.adagrad_momentum_rows, and adagrad_momentum_scatter for repeated ids)
against a float64 numpy computation written from REFERENCE §4, and their argument checks. Also run under ASan + UBSan (tests/native_sanitize.sh).
Skipped when the extension is not built, unless FASTGRU4REC_REQUIRE_NATIVE=1."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fastgru4rec import native
from fastgru4rec.errors import DataError
from fastgru4rec.ops.optim import adagrad_momentum_rows, adagrad_momentum_scatter

if not native.available():
    if os.environ.get("FASTGRU4REC_REQUIRE_NATIVE", "") not in ("", "0"):
        raise RuntimeError(f"native extension required but unavailable: {native.load_error()}")
    pytest.skip(f"native extension unavailable: {native.load_error()}", allow_module_level=True)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("mu", [0.0, 0.25])
@pytest.mark.parametrize("shape", [(40, 7), (30,), (9, 2, 3), (1, 1)])
def test_native_rows_equal_numpy_formula(dtype, rtol, mu, shape):
    rng = np.random.default_rng(abs(hash((shape, mu))) % 1000)
    N = shape[0]
    rows = rng.permutation(N)[: max(1, N // 3)]
    P = rng.normal(size=shape).astype(dtype)
    A = rng.random(size=shape).astype(dtype)
    V = rng.normal(size=shape).astype(dtype)
    G = rng.normal(size=(len(rows),) + shape[1:]).astype(dtype)
    want_p, want_a, want_v = (x.astype(np.float64).copy() for x in (P, A, V))
    g = G.astype(np.float64)
    want_a[rows] += g * g
    step = g / np.sqrt(want_a[rows] + 1e-6)
    if mu > 0:
        want_v[rows] = mu * want_v[rows] - 0.1 * step
        want_p[rows] += want_v[rows]
    else:
        want_p[rows] -= 0.1 * step
    native.adagrad_momentum_rows(P, A, V if mu > 0 else None, rows.astype(np.int64), G, 0.1,
                                 mu, 1e-6)
    np.testing.assert_allclose(P, want_p, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(A, want_a, rtol=rtol)
    np.testing.assert_allclose(V, want_v, rtol=rtol, atol=rtol)


def test_native_rows_reject_bad_arguments():
    T, A = np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32)
    G = np.ones((2, 3), np.float32)
    with pytest.raises(DataError, match="row id 5 is out of range"):
        native.adagrad_momentum_rows(T, A, None, np.array([0, 5]), G, 0.1, 0.0, 1e-6)
    with pytest.raises(DataError, match="grad must have one row"):
        native.adagrad_momentum_rows(T, A, None, np.array([0, 1, 2]), G, 0.1, 0.0, 1e-6)
    with pytest.raises(DataError, match="acc must have the table's shape"):
        native.adagrad_momentum_rows(T, A[:4], None, np.array([0, 1]), G, 0.1, 0.0, 1e-6)
    with pytest.raises(DataError, match="float32 or float64"):
        native.adagrad_momentum_rows(T.astype(np.int32), A, None, np.array([0, 1]), G, 0.1,
                                     0.0, 1e-6)
    with pytest.raises(DataError, match="acc must be a numpy float32"):
        native.adagrad_momentum_rows(T, A.astype(np.float64), None, np.array([0, 1]), G, 0.1,
                                     0.0, 1e-6)
    with pytest.raises(ValueError, match="backend"):
        adagrad_momentum_rows(torch.zeros(3), torch.tensor([0]), torch.ones(1), torch.zeros(3),
                              None, 0.1, 0.0, backend="fortran")
    assert T.sum() == 0 and A.sum() == 0     # nothing written by a rejected call


def _numpy_scatter_update(P, A, V, ids, G, lr, mu, eps=1e-6):
    """REFERENCE §4 for repeated ids, in float64 numpy: sum each id's gradient rows, then
    update each touched row once."""
    P, A, V = (x.astype(np.float64).copy() for x in (P, A, V))
    touched = np.unique(ids)
    g = np.zeros((len(touched),) + P.shape[1:])
    np.add.at(g, np.searchsorted(touched, ids), G.astype(np.float64))
    A[touched] += g * g
    step = g / np.sqrt(A[touched] + eps)
    if mu > 0:
        V[touched] = mu * V[touched] - lr * step
        P[touched] += V[touched]
    else:
        P[touched] -= lr * step
    return P, A, V


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 5e-6)])
@pytest.mark.parametrize("mu", [0.0, 0.25])
@pytest.mark.parametrize("N,L,width", [(50, 200, 7), (1000, 2112, 16), (3, 40, 1), (8, 1, 5),
                                       (10 ** 6, 300, 4)])
def test_native_scatter_equals_numpy_sum_then_update(dtype, rtol, mu, N, L, width):
    """Heavy repeats (200 draws of 50 ids; 40 of 3), a repeat-free call, ids far apart in a
    million-row table: the hash must find every id's row and sum into it."""
    rng = np.random.default_rng(N + L + width)
    shape = (N, width) if width > 1 else (N,)
    ids = rng.integers(0, N, size=L).astype(np.int64)
    if N == 10 ** 6:
        ids[::3] = ids[0]                        # one id repeated among scattered ones
    P, A, V = (rng.normal(size=shape).astype(dtype), rng.random(size=shape).astype(dtype),
               rng.normal(size=shape).astype(dtype))
    G = rng.normal(size=(L,) + shape[1:]).astype(dtype)
    want = _numpy_scatter_update(P, A, V, ids, G, 0.1, mu)
    untouched = np.setdiff1d(np.arange(N), ids)[:1000]
    before = P[untouched].copy()
    native.adagrad_momentum_scatter(P, A, V if mu > 0 else None, ids, G, 0.1, mu, 1e-6)
    np.testing.assert_allclose(P, want[0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(A, want[1], rtol=rtol, atol=rtol)
    if mu > 0:
        np.testing.assert_allclose(V, want[2], rtol=rtol, atol=rtol)
    assert np.array_equal(P[untouched], before)


@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_scatter_op_native_equals_torch_reference_with_bias(mu):
    """ops.optim.adagrad_momentum_scatter: the native backend (the CPU default) against the
    torch reference (sort, sums by run), the item table and its bias at ids[offset:]."""
    g = torch.Generator().manual_seed(3)
    N, H, L, offset = 300, 6, 500, 32
    ids = torch.randint(0, N, (L,), generator=g)
    grad = torch.randn(L, H, generator=g, dtype=torch.float64)
    b_grad = torch.randn(L - offset, generator=g, dtype=torch.float64)
    start = [torch.randn(N, H, generator=g, dtype=torch.float64),
             torch.rand(N, H, generator=g, dtype=torch.float64),
             torch.randn(N, H, generator=g, dtype=torch.float64),
             torch.randn(N, generator=g, dtype=torch.float64),
             torch.rand(N, generator=g, dtype=torch.float64),
             torch.randn(N, generator=g, dtype=torch.float64)]
    out = {}
    for backend in ("torch", "native", "auto"):
        T, A, V, bT, bA, bV = (t.clone() for t in start)
        adagrad_momentum_scatter(T, ids, grad, A, V, 0.05, mu, backend=backend,
                                 bias=(bT, b_grad, bA, bV, offset))
        out[backend] = (T, A, V, bT, bA, bV)
    for backend in ("native", "auto"):
        for got, want in zip(out[backend], out["torch"]):
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    assert not torch.equal(out["native"][3], start[3])        # the bias was updated


def test_native_scatter_rejects_bad_arguments():
    T, A = np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32)
    G = np.ones((2, 3), np.float32)
    with pytest.raises(DataError, match="adagrad_momentum_scatter: row id -1 is out of range"):
        native.adagrad_momentum_scatter(T, A, None, np.array([0, -1]), G, 0.1, 0.0, 1e-6)
    with pytest.raises(DataError, match="grad must have one row"):
        native.adagrad_momentum_scatter(T, A, None, np.array([0, 0, 0]), G, 0.1, 0.0, 1e-6)
    with pytest.raises(ValueError, match="backend"):
        adagrad_momentum_scatter(torch.zeros(3), torch.tensor([0]), torch.ones(1), torch.zeros(3),
                                 None, 0.1, 0.0, backend="fortran")
    assert T.sum() == 0 and A.sum() == 0     # nothing written by a rejected call
    # an empty step: nothing to do
    native.adagrad_momentum_scatter(T, A, None, np.zeros(0, np.int64), np.zeros((0, 3), np.float32),
                                    0.1, 0.0, 1e-6)
    assert T.sum() == 0

