"""The C++ sparse Adagrad-momentum row update (csrc/optim.hpp through
fastgru4rec.native.adagrad_momentum_rows) against a float64 numpy computation written from
REFERENCE §4, and its argument checks. Also run under ASan + UBSan (tests/native_sanitize.sh).
Skipped when the extension is not built, unless FASTGRU4REC_REQUIRE_NATIVE=1."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fastgru4rec import native
from fastgru4rec.errors import DataError
from fastgru4rec.ops.optim import adagrad_momentum_rows

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
