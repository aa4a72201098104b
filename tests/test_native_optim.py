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
def test_scatter_op_native_equals_torch_reference_with_bias(mu, monkeypatch):
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
    out, calls = {}, []
    real = native.adagrad_momentum_scatter
    monkeypatch.setattr(native, "adagrad_momentum_scatter",
                        lambda *a, bias=None: calls.append((a[0].shape, bias[0].shape))
                        or real(*a, bias=bias))
    monkeypatch.delenv("FASTGRU4REC_BACKEND", raising=False)
    for backend in ("torch", "native", "auto"):
        T, A, V, bT, bA, bV = (t.clone() for t in start)
        adagrad_momentum_scatter(T, ids, grad, A, V, 0.05, mu, backend=backend,
                                 bias=(bT, b_grad, bA, bV, offset))
        out[backend] = (T, A, V, bT, bA, bV)
    # native and auto each made one C++ call with both tables; torch none
    assert calls == [((N, H), (N,)), ((N, H), (N,))]
    for backend in ("native", "auto"):
        for got, want in zip(out[backend], out["torch"]):
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    assert not torch.equal(out["native"][3], start[3])        # the bias was updated


def _scatter_args(seed, dtype=torch.float64, b_dtype=None):
    g = torch.Generator().manual_seed(seed)
    N, H, L, offset = 40, 3, 30, 10
    ids = torch.randint(0, N, (L,), generator=g)
    table = [torch.randn(N, H, generator=g, dtype=dtype), torch.rand(N, H, generator=g,
             dtype=dtype), torch.randn(N, H, generator=g, dtype=dtype)]
    b_dtype = b_dtype or dtype
    bias = [torch.randn(N, generator=g, dtype=b_dtype), torch.rand(N, generator=g,
            dtype=b_dtype), torch.randn(N, generator=g, dtype=b_dtype)]
    grad = torch.randn(L, H, generator=g, dtype=dtype)
    b_grad = torch.randn(L - offset, generator=g, dtype=b_dtype)
    return ids, table, grad, bias, b_grad, offset


def test_reference_env_makes_auto_skip_the_native_update(monkeypatch):
    """FASTGRU4REC_BACKEND=torch: "auto" runs the torch reference (the C++ pass is never
    called) for both the scatter and the unique-row update, with the reference's results."""
    def refuse(*a):
        raise AssertionError("native called under FASTGRU4REC_BACKEND=torch")
    monkeypatch.setattr(native, "adagrad_momentum_scatter", refuse)
    monkeypatch.setattr(native, "adagrad_momentum_rows", refuse)
    monkeypatch.setenv("FASTGRU4REC_BACKEND", "torch")
    ids, (T, A, V), grad, (bT, bA, bV), b_grad, offset = _scatter_args(1)
    want = [t.clone() for t in (T, A, V, bT, bA, bV)]
    adagrad_momentum_scatter(want[0], ids, grad, want[1], want[2], 0.1, 0.5, backend="torch",
                             bias=(want[3], b_grad, want[4], want[5], offset))
    adagrad_momentum_scatter(T, ids, grad, A, V, 0.1, 0.5, bias=(bT, b_grad, bA, bV, offset))
    for got, w in zip((T, A, V, bT, bA, bV), want):
        assert torch.equal(got, w)
    rows = torch.tensor([3, 0, 7])
    want = [t.clone() for t in (T, A, V)]
    adagrad_momentum_rows(want[0], rows, grad[:3], want[1], want[2], 0.1, 0.5, backend="torch")
    adagrad_momentum_rows(T, rows, grad[:3], A, V, 0.1, 0.5)
    assert all(torch.equal(got, w) for got, w in zip((T, A, V), want))


def test_momentum_without_velocity_is_an_error_on_every_backend():
    ids, (T, A, V), grad, (bT, bA, bV), b_grad, offset = _scatter_args(2)
    for backend in ("torch", "native", "auto"):
        with pytest.raises(ValueError, match="momentum=0.5 needs a velocity"):
            adagrad_momentum_scatter(T, ids, grad, A, None, 0.1, 0.5, backend=backend)
        with pytest.raises(ValueError, match=r"\(bias\): momentum=0.5 needs a velocity"):
            adagrad_momentum_scatter(T, ids, grad, A, V, 0.1, 0.5, backend=backend,
                                     bias=(bT, b_grad, bA, None, offset))
        with pytest.raises(ValueError, match="adagrad_momentum_rows: momentum=0.5 needs"):
            adagrad_momentum_rows(T, torch.tensor([1, 2]), grad[:2], A, None, 0.1, 0.5,
                                  backend=backend)
    _, start, _, b_start, _, _ = _scatter_args(2)
    for got, want in zip((T, A, V, bT, bA, bV), start + b_start):
        assert torch.equal(got, want)                                 # nothing written


def test_native_scatter_checks_the_bias_tensors_before_writing(monkeypatch):
    """The native pass takes one dtype per table and checks the bias's tensors too, before
    writing anything: a float64 bias gradient beside a float32 bias makes "native" refuse with
    a ValueError (nothing written) and "auto" fall back to the torch reference for both. A
    float32 bias beside a float64 table is fine (each table is consistent)."""
    monkeypatch.delenv("FASTGRU4REC_BACKEND", raising=False)
    ids, table, grad, bias, b_grad, offset = _scatter_args(3, b_dtype=torch.float32)
    b_grad64 = b_grad.double()
    start = [t.clone() for t in table + bias]
    T, A, V = table
    bT, bA, bV = bias
    with pytest.raises(ValueError, match="native.*mixed dtypes torch.float32 and torch.float64"):
        adagrad_momentum_scatter(T, ids, grad, A, V, 0.1, 0.5, backend="native",
                                 bias=(bT, b_grad64, bA, bV, offset))
    assert all(torch.equal(a, b) for a, b in zip(table + bias, start))
    calls = []
    real = native.adagrad_momentum_scatter
    monkeypatch.setattr(native, "adagrad_momentum_scatter",
                        lambda *a, bias=None: calls.append((a[0].dtype, bias[0].dtype))
                        or real(*a, bias=bias))
    for bias_grad in (b_grad64, b_grad):
        for t, s in zip(table + bias, start):
            t.copy_(s)
        want = [t.clone() for t in start]
        adagrad_momentum_scatter(want[0], ids, grad, want[1], want[2], 0.1, 0.5,
                                 backend="torch", bias=(want[3], bias_grad, want[4], want[5],
                                                        offset))
        adagrad_momentum_scatter(T, ids, grad, A, V, 0.1, 0.5,
                                 bias=(bT, bias_grad, bA, bV, offset))
        if bias_grad is b_grad64:     # auto fell back: the reference itself
            assert calls == []
            assert all(torch.equal(a, b) for a, b in zip(table + bias, want))
        else:                         # auto ran native on both: the reference's values
            assert calls == [(np.float64, np.float32)]
            for a, b in zip(table + bias, want):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # a non-contiguous velocity: the same refusal
    with pytest.raises(ValueError, match="non-contiguous"):
        adagrad_momentum_scatter(T, ids, grad, A, torch.randn(3, 40, dtype=torch.float64).T,
                                 0.1, 0.5, backend="native")


def test_native_scatter_sums_strided_ids():
    """Multiples of Fibonacci numbers (6765, 10946): a bare multiplicative (Fibonacci) hash maps
    them onto few slots, 47-74 probes an id, where the mixed hash takes ~0.2. Probing finds the
    right slot with any hash, so this checks correctness on that pattern (every id its own row,
    sums as numpy), not the probe count."""
    rng = np.random.default_rng(9)
    N, width = 2 ** 21, 2
    ids = np.concatenate([np.arange(1, 155) * 6765, np.arange(1, 155) * 10946,
                          np.arange(1, 155) * 6765]).astype(np.int64)   # the first run repeated
    P, A, V = (rng.normal(size=(N, width)), rng.random(size=(N, width)),
               rng.normal(size=(N, width)))
    G = rng.normal(size=(ids.shape[0], width))
    want = _numpy_scatter_update(P, A, V, ids, G, 0.1, 0.5)
    native.adagrad_momentum_scatter(P, A, V, ids, G, 0.1, 0.5, 1e-6)
    np.testing.assert_allclose(P, want[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(V, want[2], rtol=1e-13, atol=1e-13)


def test_native_scatter_checks_shapes_and_ids_of_both_tables_before_writing():
    """A bias acc of the wrong length, a bias too short for its ids, a 2-d bias grad: each a
    ValueError naming the bias, raised before the item table is written (both tables go to one
    C++ call that checks both before it writes either)."""
    ids, table, grad, bias, b_grad, offset = _scatter_args(4)
    start = [t.clone() for t in table + bias]
    T, A, V = table
    bT, bA, bV = bias
    bad = [((bT, b_grad, torch.zeros(bA.shape[0] + 1, dtype=bA.dtype), bV, offset),
            "bias acc must have the table's shape"),
           ((bT[:5], b_grad, bA[:5], bV[:5], offset), r"bias row id \d+ is out of range \[0, 5\)"),
           ((bT, b_grad[:, None], bA, bV, offset), "bias grad must have one row")]
    for backend in ("native", "auto"):
        for b_args, message in bad:
            with pytest.raises(ValueError, match=message):
                adagrad_momentum_scatter(T, ids, grad, A, V, 0.1, 0.5, backend=backend,
                                         bias=b_args)
            for got, want in zip(table + bias, start):
                assert torch.equal(got, want)
    with pytest.raises(ValueError, match="adagrad_momentum_scatter: grad must have one row"):
        adagrad_momentum_scatter(T, ids, grad[:-1], A, V, 0.1, 0.5, backend="native")


def test_native_scatter_rejects_bad_arguments():
    T, A = np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32)
    G = np.ones((2, 3), np.float32)
    with pytest.raises(DataError, match="adagrad_momentum_scatter: row id -1 is out of range"):
        native.adagrad_momentum_scatter(T, A, None, np.array([0, -1]), G, 0.1, 0.0, 1e-6)
    with pytest.raises(DataError, match="grad must have one row"):
        native.adagrad_momentum_scatter(T, A, None, np.array([0, 0, 0]), G, 0.1, 0.0, 1e-6)
    with pytest.raises(DataError, match="grad must have one row of the table's shape"):
        # as many numbers as two rows hold, in another shape
        native.adagrad_momentum_scatter(T, A, None, np.array([0, 1]), np.ones((2, 3, 1), np.float32),
                                        0.1, 0.0, 1e-6)
    bT, bA = np.zeros(5, np.float64), np.zeros(5, np.float64)
    with pytest.raises(DataError, match=r"bias must be None or a tuple \(table, acc, vel, ids, grad\)"):
        native.adagrad_momentum_scatter(T, A, None, np.array([0, 1]), G[:2], 0.1, 0.0, 1e-6,
                                        bias=(bT, bA, None, np.array([1])))
    with pytest.raises(DataError, match=r"bias row id 5 is out of range \[0, 5\)"):
        native.adagrad_momentum_scatter(T, A, None, np.array([0, 1]), G[:2], 0.1, 0.0, 1e-6,
                                        bias=(bT, bA, None, np.array([5]), np.ones(1)))
    with pytest.raises(ValueError, match="backend"):
        adagrad_momentum_scatter(torch.zeros(3), torch.tensor([0]), torch.ones(1), torch.zeros(3),
                                 None, 0.1, 0.0, backend="fortran")
    # nothing written by a rejected call (the item table neither, when only the bias was bad)
    assert T.sum() == 0 and A.sum() == 0 and bT.sum() == 0 and bA.sum() == 0
    # an empty step: nothing to do
    native.adagrad_momentum_scatter(T, A, None, np.zeros(0, np.int64), np.zeros((0, 3), np.float32),
                                    0.1, 0.0, 1e-6)
    assert T.sum() == 0

