"""The C++ negative sampler (csrc/sampler.cpp): alias table over supports ** alpha, drawn with
a counter-based RNG. Same draws for the same seed whatever the thread count; a chi-square test
against the target distribution; SampleStore's backends; bad arguments. Also the pure-Python
reference (fastgru4rec.sampling: sampling_cdf, draw_negatives; the fallback without the
extension) against a CDF computed here from supports ** alpha, and its draws' frequencies.

The native tests are skipped when the extension is not built, unless
FASTGRU4REC_REQUIRE_NATIVE=1; the Python reference's tests always run.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from fastgru4rec import native
from fastgru4rec.sampling import SampleStore, draw_negatives, sampling_cdf

if not native.available():
    if os.environ.get("FASTGRU4REC_REQUIRE_NATIVE", "") not in ("", "0"):
        raise RuntimeError(f"native extension required but unavailable: {native.load_error()}")
needs_native = pytest.mark.skipif(not native.available(),
                                  reason=f"native extension unavailable: {native.load_error()}")

_native = native._load()


def supports_of(n, seed=0, zeros=0):
    rng = np.random.default_rng(seed)
    s = rng.zipf(1.6, n).astype(np.float64)   # heavy-tailed, like item popularity
    s[rng.choice(n, zeros, replace=False)] = 0
    return s


def target(supports, alpha):
    w = np.asarray(supports, np.float64) ** alpha
    return w / w.sum()


@needs_native
@pytest.mark.parametrize("n_items", [1, 7, 5000])
def test_same_draws_whatever_the_thread_count(n_items):
    sup = supports_of(n_items)
    n = 3 * 65536 + 17   # large enough to be split over threads
    ref = native.AliasSampler(sup, 0.75, seed=11, n_threads=1).sample(n)
    for t in (2, 3, 8):
        np.testing.assert_array_equal(native.AliasSampler(sup, 0.75, seed=11, n_threads=t).sample(n), ref)
    assert ref.min() >= 0 and ref.max() < n_items


@needs_native
def test_draws_continue_across_calls_and_position():
    sup = supports_of(300)
    whole = native.AliasSampler(sup, 1.0, seed=5, n_threads=2).sample(200_000)
    s = native.AliasSampler(sup, 1.0, seed=5, n_threads=2)
    parts = [s.sample(70_000), s.sample(0), s.draw(np.empty((3, 43_333), np.int64)).ravel(), s.sample(1)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert s.position == 200_000
    s.position = 1234   # resume anywhere
    np.testing.assert_array_equal(s.sample(1000), whole[1234:2234])
    s32 = native.AliasSampler(sup, 1.0, seed=5)
    np.testing.assert_array_equal(s32.draw(np.empty(5000, np.int32)), whole[:5000])


@needs_native
def test_seeds_differ():
    sup = supports_of(1000)
    a = native.AliasSampler(sup, 0.5, seed=1).sample(10_000)
    b = native.AliasSampler(sup, 0.5, seed=2).sample(10_000)
    assert np.mean(a == b) < 0.2


@needs_native
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_table_is_the_target_distribution(alpha):
    sup = supports_of(2000, zeros=100)
    np.testing.assert_allclose(native.AliasSampler(sup, alpha).probabilities(), target(sup, alpha),
                               rtol=1e-9, atol=1e-15)


@needs_native
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_chi_square(alpha):
    """Draw counts against n * p_j. Fixed seed, so the outcome is deterministic; p > 1e-3."""
    from scipy import stats
    sup = supports_of(200, seed=3, zeros=5 if alpha > 0 else 0)
    p = target(sup, alpha)
    n = 2_000_000
    counts = np.bincount(native.AliasSampler(sup, alpha, seed=9, n_threads=2).sample(n),
                         minlength=len(sup))
    assert counts[p == 0].sum() == 0, "a zero-weight item was drawn"
    live = p > 0
    chi2 = float((((counts[live] - n * p[live]) ** 2) / (n * p[live])).sum())
    pval = stats.chi2.sf(chi2, live.sum() - 1)
    assert pval > 1e-3, (chi2, pval)


@needs_native
def test_zero_support_items_never_drawn():
    sup = np.array([0, 5, 0, 0, 1, 0, 0, 0], np.float64)
    draws = native.AliasSampler(sup, 1.0, seed=3).sample(300_000)
    assert set(np.unique(draws)) == {1, 4}
    # alpha = 0: 0 ** 0 = 1, as numpy (and the reference CDF) have it: uniform over all.
    np.testing.assert_allclose(native.AliasSampler(sup, 0.0).probabilities(), 1 / 8)


@needs_native
def test_sample_store_native_and_python():
    sup = supports_of(500)
    nat = SampleStore(sup, 0.5, 64, 1000, seed=3)          # default: auto -> native
    assert nat.backend == "native" and nat.n_rows == 15
    rows = [nat.next().copy() for _ in range(40)]          # crosses two refills
    assert all(r.shape == (64,) and r.dtype == np.int64 for r in rows)
    flat = native.AliasSampler(sup, 0.5, seed=3).sample(15 * 64 * 3)
    np.testing.assert_array_equal(np.concatenate(rows), flat[:40 * 64])
    same = SampleStore(sup, 0.5, 64, 1000, seed=3, backend="native", n_threads=1)
    np.testing.assert_array_equal(same.next(), rows[0])
    # The python backend is the reference: numpy's generator over the CDF.
    py = SampleStore(sup, 0.5, 64, 1000, seed=3, backend="python")
    want = draw_negatives(sampling_cdf(sup, 0.5), 15 * 64, np.random.default_rng(3))
    np.testing.assert_array_equal(py.next(), want[:64])
    with pytest.raises(ValueError, match="unknown sampler backend"):
        SampleStore(sup, 0.5, 64, 1000, backend="gpu")


# ---------------------------------------------------------------- the Python reference sampler
# Used whenever the extension is missing (SampleStore backend "python"), so checked on its own:
# against a CDF written out here, one item at a time, from supports ** alpha.

def literal_cdf(supports, alpha):
    """p_j ∝ supports_j ** alpha as a running sum of Python floats divided by the total."""
    weights = [float(s) ** alpha for s in supports]   # Python: 0.0 ** 0.0 == 1.0, as numpy
    total = math.fsum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w
        cdf.append(acc / total)
    return np.array(cdf, np.float64), np.array(weights, np.float64) / total


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 1.0, 2.0])
@pytest.mark.parametrize("zeros", [0, 40])
def test_reference_cdf_is_supports_to_the_alpha(alpha, zeros):
    sup = supports_of(500, seed=4, zeros=zeros)
    want, _ = literal_cdf(sup, alpha)
    got = sampling_cdf(sup, alpha)
    assert got.dtype == np.float64 and got.shape == (500,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[-1] == 1.0


def test_reference_cdf_small_by_hand():
    # supports (4, 0, 1, 9) ** 0.5 = (2, 0, 1, 3), total 6.
    np.testing.assert_allclose(sampling_cdf(np.array([4, 0, 1, 9]), 0.5),
                               [2 / 6, 2 / 6, 3 / 6, 1.0], rtol=1e-15)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.5])
def test_reference_draw_frequencies(alpha):
    """Counts of draw_negatives(sampling_cdf(...)) against n * (supports ** alpha, normalised):
    chi-square over the cells expected >= 5 times (the rest pooled), fixed seed, so the outcome
    is deterministic. alpha misused (supports * alpha, supports ** (1 / alpha), ...) moves a
    heavy-tailed distribution by far more than the bound."""
    from scipy import stats
    sup = supports_of(200, seed=3, zeros=0 if alpha == 0 else 5)
    _, p = literal_cdf(sup, alpha)
    n = 1_000_000
    draws = draw_negatives(sampling_cdf(sup, alpha), n, np.random.default_rng(9))
    assert draws.dtype == np.int64 and draws.shape == (n,)
    assert draws.min() >= 0 and draws.max() < len(sup)
    counts = np.bincount(draws, minlength=len(sup))
    assert counts[p == 0].sum() == 0, "a zero-weight item was drawn"
    expected = n * p
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    pval = stats.chi2.sf(chi2, len(exp) - 1)
    assert pval > 1e-3, (chi2, pval)
    # and the largest frequency error of those cells, in binomial standard deviations
    z = np.abs(counts[big] - expected[big]) / np.sqrt(expected[big] * (1 - p[big]))
    assert z.max() < 6, z.max()


def test_reference_store_draws_the_same_distribution():
    # SampleStore's python backend is this sampler: rows of the seeded draws, in order.
    sup = supports_of(50, seed=5)
    store = SampleStore(sup, 0.5, 8, 80, seed=3, backend="python")
    assert store.backend == "python"
    rows = np.stack([store.next().copy() for _ in range(25)])   # crosses two refills
    cdf, _ = literal_cdf(sup, 0.5)
    rng = np.random.default_rng(3)
    want = np.concatenate([np.searchsorted(cdf, rng.random(80), side="right") for _ in range(3)])
    np.testing.assert_array_equal(rows.ravel(), np.minimum(want, 49)[:200])


@needs_native
@pytest.mark.parametrize("supports, alpha, match", [
    (np.ones(5), float("nan"), "sample_alpha must be a finite non-negative number"),
    (np.ones(5), -0.5, "sample_alpha must be a finite non-negative number"),
    (np.ones(5), float("inf"), "sample_alpha must be a finite non-negative number"),
    (np.array([1.0, -2.0]), 1.0, "finite non-negative counts .item 1"),
    (np.array([1.0, np.nan]), 1.0, "finite non-negative counts .item 1"),
    (np.zeros(0), 1.0, "non-empty"),
    (np.zeros(4), 1.0, "sum to zero"),
    (np.full(4, 1e300), 2.0, "overflows"),
])
def test_bad_sampler_arguments(supports, alpha, match):
    with pytest.raises(ValueError, match=match):
        native.AliasSampler(supports, alpha)
    with pytest.raises(ValueError, match=match):
        _native.AliasSampler(supports, alpha, 1, 1)


@needs_native
def test_bad_sampler_buffers_and_counts():
    s = native.AliasSampler(np.ones(10), 1.0)
    with pytest.raises(ValueError, match="n_sample must be >= 0"):
        s.sample(-1)
    with pytest.raises(ValueError, match="sample buffer must be a numpy int64 array .got dtype=float64"):
        s.draw(np.empty(10))
    with pytest.raises(ValueError, match="sample buffer must be a numpy int64 array .got dtype=uint8"):
        s.draw(np.empty(10, np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        s.draw(np.empty((10, 4), np.int64)[:, 1])
    ro = np.empty(10, np.int64)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        s.draw(ro)
    with pytest.raises(ValueError, match="must be a numpy float64 array"):
        _native.AliasSampler(np.ones(3, np.int64), 1.0, 1, 1)
    with pytest.raises(ValueError, match="non-negative integer"):
        native.AliasSampler(np.ones(3), 1.0, seed=-1)
    with pytest.raises(ValueError, match="n_sample must be positive"):
        SampleStore(np.ones(3), 1.0, -1, 100)
    with pytest.raises(ValueError, match="sample_alpha"):
        SampleStore(np.ones(3), float("nan"), 4, 100)
    assert s.position == 0   # nothing was drawn by the failed calls
