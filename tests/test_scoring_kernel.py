"""Fused Triton scoring (kernels/scoring.py through fastgru4rec.ops.scoring) against the float64
plain-torch references: every sampled loss (value, dh, touched-row and bias gradients, with
duplicate ids in Y), the autograd wrapper, and the full-catalog cross-entropy.

Runs on a GPU, or on CPU in Triton's interpreter: TRITON_INTERPRET=1 must be set before the
kernels are imported (Triton reads it when a kernel is decorated), so CI sets it for the run.
"""

import numpy as np
import pytest
import torch

from conftest import kernel_test_setup

_, DEV = kernel_test_setup("scoring")

from fastgru4rec.config import LOSSES  # noqa: E402
from fastgru4rec.ops.scoring import (full_catalog_cross_entropy,  # noqa: E402
                                     full_catalog_cross_entropy_and_grads,
                                     full_catalog_cross_entropy_reference, fused_sampled_loss,
                                     fused_sampled_loss_and_grads,
                                     fused_sampled_loss_and_grads_reference,
                                     logq_column_correction, resolve_backend)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # interpreter exp overflow → σ = 0


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a).all(), "non-finite (unwritten?) output"
    # floor: gradients that cancel to ~0 (e.g. two lanes with the same positive and nothing
    # else) are judged by absolute error against fp32 rounding of O(0.1) terms
    return float((a - b).norm() / b.norm().clamp_min(1e-3))


def make_case(seed, b, n_sample, H, N=None, scale_h=1.0):
    g = torch.Generator().manual_seed(seed)
    N = N or max(8, (b + n_sample) // 2)           # a small catalog: many duplicates in Y
    h = torch.randn(b, H, generator=g, dtype=torch.float64) * scale_h
    W = torch.randn(N, H, generator=g, dtype=torch.float64) / H ** 0.5
    bias = torch.randn(N, generator=g, dtype=torch.float64) * 0.1
    tgt = torch.randint(0, N, (b,), generator=g)
    neg = torch.randint(0, N, (n_sample,), generator=g)
    if n_sample:
        neg[: min(n_sample, b)] = tgt[: min(n_sample, b)]   # samples equal to positives
    Y = torch.cat([tgt, neg])
    if Y.numel() >= 2:
        Y[-1] = Y[0]                                   # at least one duplicate id in Y
    support = torch.randint(1, 50, (N,), generator=g).double()
    lq = logq_column_correction(torch.log(support)[Y], b, 0.75)
    return h, W, bias, Y, lq


LOSS_KW = {
    "cross-entropy": [dict(), dict(logq=1.0)],
    "bpr-max": [dict(), dict(bpreg=1.5, elu_param=0.5)],
    "top1-max": [dict(), dict(elu_param=1.0)],
    "top1": [dict()],
    "bpr": [dict()],
}

# (b, n_sample, H): small edge cases for every loss and option ...
CASES = [(1, 5, 16), (2, 0, 16), (5, 0, 24), (64, 17, 100), (33, 300, 40)]
# ... and random draws from b 1..256, n_sample 0..3000, H 16..512, each for two losses (all five
# covered) with the loss's full options (the interpreter is slow: few large calls).
_rng = np.random.default_rng(2024)
RANDOM = [((int(_rng.integers(1, 257)), int(_rng.integers(0, 3001)), int(_rng.integers(16, 513))),
           pair) for pair in (("cross-entropy", "bpr-max"), ("top1-max", "top1"), ("bpr",))]


def check_sampled(h, W, bias, Y, lq, loss, kw, scale=0.37, tol=2e-5):
    b = h.shape[0]
    kwd = dict(kw)
    if kwd.get("logq"):
        kwd["logq_per_column"] = lq
    ref = fused_sampled_loss_and_grads_reference(h, W, bias, Y, loss, scale=scale, **kwd)
    if kwd.get("logq"):
        kwd["logq_per_column"] = lq.float().to(DEV)
    out = fused_sampled_loss_and_grads(h.float().to(DEV), W.float().to(DEV),
                                       bias.float().to(DEV), Y.to(DEV), loss, scale=scale,
                                       backend="triton", precision="ieee", **kwd)
    assert torch.equal(out.rows.cpu(), ref.rows)
    assert abs(float(out.loss) - float(ref.loss)) <= tol * abs(float(ref.loss)) + 1e-6 * b
    assert rel(out.dh, ref.dh) < tol
    assert rel(out.d_rows, ref.d_rows) < tol
    assert rel(out.d_bias_rows, ref.d_bias_rows) < tol


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b%d-n%d-H%d" % c)
@pytest.mark.parametrize("loss", LOSSES)
def test_sampled_losses_and_grads(case, loss):
    b, n_sample, H = case
    if b + n_sample < 2 and loss in ("bpr-max", "top1-max"):
        pytest.skip("no negatives")
    h, W, bias, Y, lq = make_case(b * 7 + n_sample * 3 + H + LOSSES.index(loss), b, n_sample, H)
    assert Y.numel() < 2 or Y.unique().numel() < Y.numel()   # duplicates really present
    for kw in LOSS_KW[loss]:
        check_sampled(h, W, bias, Y, lq, loss, kw)


@pytest.mark.parametrize("case,losses", RANDOM, ids=lambda c: "b%d-n%d-H%d" % c if len(c) == 3 else "-".join(c))
def test_sampled_random_sizes(case, losses):
    b, n_sample, H = case
    h, W, bias, Y, lq = make_case(sum(case), b, n_sample, H)
    for loss in losses:
        check_sampled(h, W, bias, Y, lq, loss, LOSS_KW[loss][-1])


def test_largest_sizes():
    """b 256, n_sample 3000, H 512: the top of the ranges."""
    h, W, bias, Y, lq = make_case(3, 256, 3000, 512, N=2000)
    check_sampled(h, W, bias, Y, lq, "cross-entropy", dict(logq=1.0))


def test_large_scores_stay_finite():
    """Scores in the hundreds: online max / σ / log σ must not overflow."""
    h, W, bias, Y, lq = make_case(5, 9, 40, 32, scale_h=60.0)
    for loss in LOSSES:
        check_sampled(h, W, bias, Y, lq, loss, LOSS_KW[loss][-1], tol=1e-4)


def test_given_rows_and_separate_bias_rows():
    """The training step's own unique ids (a superset of Y) and a separate bias index."""
    h, W, bias, Y, lq = make_case(11, 6, 30, 16)
    extra = torch.tensor([0, 1, 2, W.shape[0] - 1])
    w_idx, w_inv = torch.unique(torch.cat([extra, Y]), return_inverse=True)
    rows = (w_idx, w_inv[extra.numel():])
    bias_rows = torch.unique(Y, return_inverse=True)
    ref = fused_sampled_loss_and_grads_reference(h, W, bias, Y, "bpr-max", bpreg=0.5,
                                                 rows=rows, bias_rows=bias_rows)
    out = fused_sampled_loss_and_grads(h.float().to(DEV), W.float().to(DEV),
                                       bias.float().to(DEV), Y.to(DEV), "bpr-max", bpreg=0.5,
                                       rows=tuple(r.to(DEV) for r in rows),
                                       bias_rows=tuple(r.to(DEV) for r in bias_rows),
                                       backend="triton", precision="ieee")
    assert out.d_rows.shape == (w_idx.numel(), 16) and out.d_bias_rows.shape == (bias_rows[0].numel(),)
    assert rel(out.d_rows, ref.d_rows) < 2e-5 and rel(out.d_bias_rows, ref.d_bias_rows) < 2e-5
    # direct check against dense autograd over the full tables
    Wd, bd, hd = W.clone().requires_grad_(), bias.clone().requires_grad_(), h.clone().requires_grad_()
    from fastgru4rec.ops.scoring import sampled_loss_reference, sampled_scores
    l = sampled_loss_reference(sampled_scores(hd, Wd[Y], bd[Y]), "bpr-max", bpreg=0.5)
    l.backward()
    assert rel(out.d_rows, Wd.grad[w_idx]) < 2e-5 and rel(out.dh, hd.grad) < 2e-5


def test_logq_gathered_in_the_loss_kernel():
    """log_support + sample_alpha (the training step's form): the loss kernel gathers log q of
    each column itself; same loss and gradients as the per-column logq_columns input."""
    from fastgru4rec.ops.scoring import logq_columns
    h, W, bias, Y, _ = make_case(31, 20, 90, 24)
    log_support = torch.rand(W.shape[0], generator=torch.Generator().manual_seed(2),
                             dtype=torch.float64) * 5
    # log q by hand: log support of each column, times alpha past the b = 20 in-batch columns
    lq = log_support[Y].clone()
    lq[20:] *= 0.3
    assert torch.equal(lq, logq_columns(log_support, Y, 20, 0.3))
    ref = fused_sampled_loss_and_grads_reference(
        h, W, bias, Y, "cross-entropy", logq=1.0, scale=0.5, logq_per_column=lq)
    out = fused_sampled_loss_and_grads(h.float().to(DEV), W.float().to(DEV),
                                       bias.float().to(DEV), Y.to(DEV), "cross-entropy",
                                       logq=1.0, scale=0.5, log_support=log_support.float().to(DEV),
                                       sample_alpha=0.3, backend="triton", precision="ieee")
    assert abs(float(out.loss) - float(ref.loss)) <= 2e-5 * abs(float(ref.loss))
    assert rel(out.dh, ref.dh) < 2e-5 and rel(out.d_rows, ref.d_rows) < 2e-5
    assert rel(out.d_bias_rows, ref.d_bias_rows) < 2e-5
    # the torch backend takes the same log_support form (float64, so to rounding)
    torch_out = fused_sampled_loss_and_grads(h, W, bias, Y, "cross-entropy", logq=1.0, scale=0.5,
                                             log_support=log_support, sample_alpha=0.3,
                                             backend="torch")
    assert float(torch_out.loss) == pytest.approx(float(ref.loss), rel=1e-12)
    assert rel(torch_out.dh, ref.dh) < 1e-12 and rel(torch_out.d_rows, ref.d_rows) < 1e-12
    # and it matters: without log q the loss differs
    plain = fused_sampled_loss_and_grads_reference(h, W, bias, Y, "cross-entropy", scale=0.5)
    assert abs(float(plain.loss) - float(ref.loss)) > 1e-3 * abs(float(ref.loss))


@pytest.mark.parametrize("loss", LOSSES)
def test_per_column_gradients_written_in_place(loss):
    """per_column (the fast engine's form): one gradient row per column of Y, duplicates NOT
    summed, stored (not accumulated) into a caller's buffer: every row of a NaN-filled buffer
    is written, and summing the rows by id gives the unique-row reference."""
    h, W, bias, Y, lq = make_case(21 + LOSSES.index(loss), 33, 70, 40)
    assert Y.unique().numel() < Y.numel()
    kw = dict(LOSS_KW[loss][-1])
    if kw.get("logq"):
        kw["logq_per_column"] = lq
    ref = fused_sampled_loss_and_grads_reference(h, W, bias, Y, loss, scale=0.37, **kw)
    ref_col = fused_sampled_loss_and_grads(h, W, bias, Y, loss, scale=0.37, per_column=True,
                                           backend="torch", **kw)
    if kw.get("logq"):
        kw["logq_per_column"] = lq.float().to(DEV)
    buf = torch.full((Y.numel() + 3, 40), float("nan"), device=DEV)
    out = fused_sampled_loss_and_grads(h.float().to(DEV), W.float().to(DEV),
                                       bias.float().to(DEV), Y.to(DEV), loss, scale=0.37,
                                       per_column=True, d_rows_out=buf[3:], backend="triton",
                                       precision="ieee", **kw)
    assert out.d_rows.data_ptr() == buf[3:].data_ptr() and torch.isnan(buf[:3]).all()
    assert torch.equal(out.rows.cpu(), Y) and torch.equal(out.bias_rows.cpu(), Y)
    assert torch.isfinite(out.d_rows).all() and torch.isfinite(out.d_bias_rows).all()
    assert abs(float(out.loss) - float(ref.loss)) <= 2e-5 * abs(float(ref.loss)) + 1e-6
    assert rel(out.d_rows, ref_col.d_rows) < 2e-5 and rel(out.d_bias_rows, ref_col.d_bias_rows) < 2e-5
    _, inv = torch.unique(Y, return_inverse=True)
    summed = torch.zeros_like(ref.d_rows).index_add_(0, inv, out.d_rows.cpu().double())
    summed_b = torch.zeros_like(ref.d_bias_rows).index_add_(0, inv, out.d_bias_rows.cpu().double())
    assert rel(summed, ref.d_rows) < 2e-5 and rel(summed_b, ref.d_bias_rows) < 2e-5


def test_no_grads_and_bf16_tables():
    h, W, bias, Y, lq = make_case(13, 8, 50, 32)
    out = fused_sampled_loss_and_grads(h.float().to(DEV), W.float().to(DEV),
                                       bias.float().to(DEV), Y.to(DEV), "top1", grads=False,
                                       backend="triton", precision="ieee")
    assert out.dh is None and out.d_rows is None
    ref = fused_sampled_loss_and_grads_reference(h, W, bias, Y, "top1", grads=False)
    assert abs(float(out.loss) - float(ref.loss)) < 1e-5 * abs(float(ref.loss))
    # bf16 storage: loaded as bf16, computed in fp32 (reference on the rounded values)
    hb, Wb, bb = h.bfloat16(), W.bfloat16(), bias.bfloat16()
    out = fused_sampled_loss_and_grads(hb.to(DEV), Wb.to(DEV), bb.to(DEV), Y.to(DEV),
                                       "cross-entropy", backend="triton", precision="ieee")
    ref = fused_sampled_loss_and_grads_reference(hb.double(), Wb.double(), bb.double(), Y,
                                                 "cross-entropy")
    assert rel(out.dh, ref.dh) < 1e-5 and rel(out.d_rows, ref.d_rows) < 1e-5


def test_autograd_wrapper_on_gathered_rows():
    """fused_sampled_loss with gathered unique rows as leaves (the training step's layout)."""
    h, W, bias, Y, lq = make_case(17, 10, 60, 24)
    idx, inv = torch.unique(Y, return_inverse=True)
    grads = {}
    for backend, dt, dev in (("torch", torch.float64, "cpu"), ("triton", torch.float32, DEV)):
        hh = h.detach().clone().to(dev, dt).requires_grad_()
        rows = W[idx].detach().clone().to(dev, dt).requires_grad_()
        brows = bias[idx].detach().clone().to(dev, dt).requires_grad_()
        out = fused_sampled_loss(hh, rows, brows, inv.to(dev), "bpr-max", bpreg=0.3,
                                 elu_param=0.5, backend=backend, precision="ieee")
        (out * 0.25).backward()
        grads[backend] = (out.detach(), hh.grad, rows.grad, brows.grad)
    for a, r in zip(grads["triton"], grads["torch"]):
        assert rel(a.reshape(-1), r.reshape(-1)) < 2e-5


@pytest.mark.parametrize("b,N,H", [(1, 70, 16), (37, 700, 100), (70, 1300, 48)])
def test_full_catalog_cross_entropy(b, N, H):
    g = torch.Generator().manual_seed(b)
    h = torch.randn(b, H, generator=g, dtype=torch.float64)
    W = torch.randn(N, H, generator=g, dtype=torch.float64) / H ** 0.5
    bias = torch.randn(N, generator=g, dtype=torch.float64) * 0.1
    t = torch.randint(0, N, (b,), generator=g)
    ref = full_catalog_cross_entropy_and_grads(h, W, bias, t, scale=0.5, backend="torch")
    hf, Wf, bf, td = h.float().to(DEV), W.float().to(DEV), bias.float().to(DEV), t.to(DEV)
    out = full_catalog_cross_entropy_and_grads(hf, Wf, bf, td, scale=0.5, backend="triton",
                                               precision="ieee")
    assert abs(float(out[0]) - float(ref[0])) < 2e-5 * abs(float(ref[0]))
    for a, r in zip(out[1:], ref[1:]):
        assert rel(a, r) < 2e-5
    # accumulate into given buffers
    dW0, db0 = torch.randn(N, H, generator=g).float(), torch.randn(N, generator=g).float()
    dW, db = dW0.clone().to(DEV), db0.clone().to(DEV)
    full_catalog_cross_entropy_and_grads(hf, Wf, bf, td, scale=0.5, d_weight_out=dW,
                                         d_bias_out=db, backend="triton", precision="ieee")
    assert rel(dW.cpu() - dW0, ref[2]) < 2e-5 and rel(db.cpu() - db0, ref[3]) < 2e-5
    # autograd wrapper
    hh, WW, bb = (x.float().to(DEV).requires_grad_() for x in (h, W, bias))
    (full_catalog_cross_entropy(hh, WW, bb, td, backend="triton", precision="ieee")
     * 0.5).backward()
    assert rel(hh.grad, ref[1]) < 2e-5 and rel(WW.grad, ref[2]) < 2e-5 and rel(bb.grad, ref[3]) < 2e-5
    assert abs(float(full_catalog_cross_entropy_reference(h, W, bias, t)) - 2 * float(ref[0])) < 1e-9


def _tile_candidates():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep_tiles.py"
    spec = importlib.util.spec_from_file_location("sweep_tiles", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [(kernel, tiles) for kernel, cands in mod.CANDIDATES.items() for tiles in cands]


@pytest.mark.parametrize("kernel,tiles", _tile_candidates(),
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_full_catalog_tile_candidates_compute_the_loss_and_gradients(kernel, tiles):
    # every tile benchmarks/sweep_tiles.py times on a GPU (kernels/scoring.py's FULL_CE_TILES)
    # computes the float64 reference's loss and gradients: b, N, H not multiples of any block
    from fastgru4rec.ops.backend import load_kernels
    tile_table = load_kernels("scoring").FULL_CE_TILES
    b, N, H = 45, 333, 40
    g = torch.Generator().manual_seed(11)
    h = torch.randn(b, H, generator=g, dtype=torch.float64)
    W = torch.randn(N, H, generator=g, dtype=torch.float64) / H ** 0.5
    bias = torch.randn(N, generator=g, dtype=torch.float64) * 0.1
    t = torch.randint(0, N, (b,), generator=g)
    ref = full_catalog_cross_entropy_and_grads(h, W, bias, t, backend="torch")
    tile_table[kernel] = tiles
    try:
        out = full_catalog_cross_entropy_and_grads(h.float().to(DEV), W.float().to(DEV),
                                                   bias.float().to(DEV), t.to(DEV),
                                                   backend="triton", precision="ieee")
    finally:
        tile_table.pop(kernel, None)
    assert abs(float(out[0]) - float(ref[0])) < 2e-5 * abs(float(ref[0]))
    for a, r in zip(out[1:], ref[1:]):
        assert rel(a, r) < 2e-5


@pytest.mark.parametrize("top", [10.0, 1000.0])
def test_full_catalog_cross_entropy_of_a_confident_model_with_large_scores(top):
    # the target scores `top`, every other item 12 lower: p_t ~ 0.9987 whatever `top` (a
    # softmax does not see a shift of all scores). The kernel's accuracy must not depend on
    # the shift beyond what fp32 scores themselves lose (a score ~1000 keeps ~6e-5 absolute,
    # the bias gradients' 1 - p_t ~ 6.5e-4 then 2e-2 relative, in torch's fp32 as in the
    # kernel): forming log-sum-exp (~ top) and then exp(s - lse) turned ulp(1000) into a
    # relative error of 4e-2 on the loss and every gradient. Yardstick: plain torch in fp32.
    b, N, H = 2, 200, 16
    g = torch.Generator().manual_seed(0)
    h = torch.randn(b, H, generator=g, dtype=torch.float64).float().double()
    W = (torch.randn(N, H, generator=g, dtype=torch.float64) * 0.01).float().double()
    t = torch.tensor([77, 5])
    bias = torch.full((N,), top - 12.0, dtype=torch.float64)
    bias[t] = top
    ref = full_catalog_cross_entropy_and_grads(h, W, bias, t, backend="torch")
    fp32 = full_catalog_cross_entropy_and_grads(h.float(), W.float(), bias.float(), t,
                                                backend="torch")
    out = full_catalog_cross_entropy_and_grads(h.float().to(DEV), W.float().to(DEV),
                                               bias.float().to(DEV), t.to(DEV),
                                               backend="triton", precision="ieee")
    err = lambda x: abs(float(x) - float(ref[0])) / float(ref[0])
    assert err(out[0]) < 2 * err(fp32[0]) + 1e-6
    for a, a32, r in zip(out[1:], fp32[1:], ref[1:]):
        assert rel(a, r) < 2 * rel(a32, r) + 1e-6


class _LargestTensor:
    """Records the largest tensor any torch op returns inside the block (a dispatch mode: every
    allocation of torch code, the launch functions' included)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        record = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(t, torch.Tensor) and not func._schema.is_mutable:
                        record.numel = max(record.numel, t.numel())
                return out

        self.numel, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def _full_catalog_adagrad_float64(h, W, bias, t, scale, extra_ids, extra_rows, states, lr, mu):
    """float64 by hand (REFERENCE §4): the dense gradient of scale · Σ_i -log softmax(h_i·Wᵀ +
    b)[t_i] (p_t / (p_t + 1e-24) ~ 1), plus the extra rows, then acc += g²,
    v = μ·v - lr·g / sqrt(acc + 1e-6), p += v (μ = 0: p -= lr·g / sqrt(..))."""
    R = h @ W.t() + bias
    dR = torch.softmax(R, dim=1)
    dR[torch.arange(len(t)), t] -= 1.0
    dR *= scale
    grads = [dR.t() @ h, dR.sum(0)]
    if extra_ids is not None:
        grads[0] = grads[0].index_add(0, extra_ids, extra_rows)
    out = []
    for p, g, (acc, vel) in zip((W, bias), grads, states):
        acc = acc + g * g
        step = g / torch.sqrt(acc + 1e-6)
        vel = vel * mu - lr * step if mu > 0 else None
        out.append((p + vel if mu > 0 else p - lr * step, acc, vel))
    return out


@pytest.mark.parametrize("b,N,H,mu,extra", [(5, 70, 16, 0.3, True), (37, 300, 100, 0.0, True),
                                            (20, 260, 48, 0.2, False)])
def test_full_catalog_adagrad_update_without_the_dense_gradient(b, N, H, mu, extra):
    """n_sample="all"'s training step: loss and dh, then the item table's and bias's
    Adagrad-momentum update in place with the input rows' gradient (repeated ids) added, each
    item tile's gradient applied where the dW kernel makes it; both backends against float64."""
    from fastgru4rec.ops.scoring import full_catalog_adagrad_update, full_catalog_forward
    g = torch.Generator().manual_seed(b + N)
    h = torch.randn(b, H, generator=g, dtype=torch.float64)
    W = torch.randn(N, H, generator=g, dtype=torch.float64) / H ** 0.5
    bias = torch.randn(N, generator=g, dtype=torch.float64) * 0.1
    t = torch.randint(0, N, (b,), generator=g)
    ids = torch.cat([t[:2], torch.randint(0, N, (b,), generator=g)]) if extra else None
    rows = torch.randn(len(ids), H, generator=g, dtype=torch.float64) * 0.01 if extra else None
    # an optimizer some steps in: accumulators > 0, velocities of both signs
    states = [(torch.rand_like(x, dtype=torch.float64) * 0.1,
               torch.randn_like(x, dtype=torch.float64) * 1e-3) for x in (W, bias)]
    if mu == 0:
        states = [(acc, torch.zeros_like(acc)) for acc, _ in states]
    want = _full_catalog_adagrad_float64(h, W, bias, t, 0.25, ids, rows, states, 0.07, mu)
    ref_loss = float(full_catalog_cross_entropy_reference(h, W, bias, t)) * 0.25
    for backend, dtype in (("torch", torch.float64), ("triton", torch.float32)):
        to = lambda x: None if x is None else x.to(DEV, dtype, copy=True)
        Wk, bk = to(W), to(bias)
        st = [(to(a), to(v) if mu > 0 else None) for a, v in states]
        fwd = full_catalog_forward(to(h), Wk, bk, t.to(DEV), scale=0.25, backend=backend,
                                   precision="ieee")
        assert abs(float(fwd.loss) - ref_loss) < 2e-6 * ref_loss
        with _LargestTensor() as largest:
            full_catalog_adagrad_update(fwd, Wk, bk, st[0], st[1], 0.07, mu,
                                        extra_ids=None if ids is None else ids.to(DEV),
                                        extra_rows=to(rows))
        if backend == "triton":          # no (N, H) gradient made: the largest new tensor
            assert largest.numel < N * H, largest.numel     # is the (L, H) extra rows' sum
        tol = 1e-12 if backend == "torch" else 2e-5
        for (p, acc, vel), got_p, p0, (got_acc, got_vel) in zip(want, (Wk, bk), (W, bias), st):
            # the update itself (p - p0), relative: every entry moves
            assert rel(got_p.double().cpu() - p0, p - p0) < tol, backend
            assert rel(got_acc, acc) < tol, backend
            if mu > 0:
                assert rel(got_vel, vel) < tol, backend


def test_sampled_cross_entropy_of_confident_rows_as_accurate_as_fp32_torch():
    # 30 rows sets: the target scores 10..1000, every other column 12 lower (p_t ~ 0.9987).
    # Summing the negatives' small exp terms into the positive's 1 lost their low bits in fp32:
    # loss errors up to 2.8e-4 and bias gradients 2.2e-4 (median), about torch fp32's; summed
    # apart they are below it. Yardstick: the plain-torch reference in fp32, same inputs.
    import statistics
    errs = {"kernel": [], "torch fp32": []}
    grad_errs = {"kernel": [], "torch fp32": []}
    for seed in range(30):
        b, N, H = 1 + seed % 3, 200, 16
        g = torch.Generator().manual_seed(seed)
        W = (torch.randn(N, H, generator=g, dtype=torch.float64) * 0.01).float().double()
        h = torch.randn(b, H, generator=g, dtype=torch.float64).float().double()
        tg = torch.randperm(N, generator=g)[:b].tolist()
        Y = torch.cat([torch.tensor(tg), torch.tensor([i for i in range(N) if i not in tg])])
        top = float(torch.randint(10, 1000, (1,), generator=g))
        bias = torch.full((N,), top - 12.0, dtype=torch.float64)
        bias[Y[:b]] = top
        ref = fused_sampled_loss_and_grads_reference(h, W, bias, Y, "cross-entropy")
        outs = {"torch fp32": fused_sampled_loss_and_grads_reference(
                    h.float(), W.float(), bias.float(), Y, "cross-entropy"),
                "kernel": fused_sampled_loss_and_grads(
                    h.float().to(DEV), W.float().to(DEV), bias.float().to(DEV), Y.to(DEV),
                    "cross-entropy", backend="triton", precision="ieee")}
        for name, out in outs.items():
            errs[name].append(abs(float(out.loss) - float(ref.loss)) / float(ref.loss))
            grad_errs[name].append(rel(out.d_bias_rows, ref.d_bias_rows))
    # the interpreter's exp and division are exact (numpy); a GPU's exp is the fast
    # approximate one (a few ulp), so there the kernel is held to twice torch's error
    slack = 1.0 if DEV == "cpu" else 2.0
    assert max(errs["kernel"]) < slack * max(errs["torch fp32"]), errs
    assert (statistics.median(grad_errs["kernel"])
            < slack * statistics.median(grad_errs["torch fp32"]))


def test_strided_tables_and_mismatched_sizes():
    # the kernels address raw pointers: a transposed table or a strided bias is read as the
    # same values (copied), a size that disagrees is a ValueError, not a read past the end
    b, n_sample, H, N = 5, 7, 16, 30
    g = torch.Generator().manual_seed(4)
    h = torch.randn(b, H, generator=g)
    Wt = torch.randn(H, N, generator=g) / 4
    bias2 = torch.randn(N, 2, generator=g)
    W, bias = Wt.t(), bias2[:, 0]
    assert W.stride(1) != 1 and bias.stride(0) != 1
    Y = torch.randint(0, N, (b + n_sample,), generator=g)
    t = Y[:b]
    dense = [x.contiguous().to(DEV) for x in (h, W, bias)]
    strided = [h.to(DEV), Wt.to(DEV).t(), bias2.to(DEV)[:, 0]]
    for loss in ("cross-entropy", "bpr-max"):
        want = fused_sampled_loss_and_grads(*dense, Y.to(DEV), loss, backend="triton",
                                            precision="ieee")
        got = fused_sampled_loss_and_grads(*strided, Y.to(DEV), loss, backend="triton",
                                           precision="ieee")
        # (atomics sum repeated ids / catalog splits in any order on a GPU: last-bit tolerance;
        # the misread table was off by O(1))
        for x, y in ((got.loss, want.loss), (got.dh, want.dh), (got.d_rows, want.d_rows),
                     (got.d_bias_rows, want.d_bias_rows)):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    want = full_catalog_cross_entropy_and_grads(*dense, t.to(DEV), backend="triton",
                                                precision="ieee")
    got = full_catalog_cross_entropy_and_grads(*strided, t.to(DEV), backend="triton",
                                               precision="ieee")
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    h_, W_, b_ = dense
    with pytest.raises(ValueError, match="agree on H"):
        fused_sampled_loss_and_grads(torch.cat([h_, h_[:, :2]], 1), W_, b_, Y.to(DEV),
                                     "cross-entropy", backend="triton")
    with pytest.raises(ValueError, match="item_bias"):
        full_catalog_cross_entropy_and_grads(h_, W_, b_[:-1], t.to(DEV), backend="triton")
    with pytest.raises(ValueError, match="targets"):
        full_catalog_cross_entropy_and_grads(h_, W_, b_, t[:-1].to(DEV), backend="triton")
    with pytest.raises(ValueError, match="d_weight_out"):
        full_catalog_cross_entropy_and_grads(h_, W_, b_, t.to(DEV), backend="triton",
                                             d_weight_out=torch.zeros(H, N, device=DEV).t(),
                                             d_bias_out=torch.zeros(N, device=DEV))
    for backend in ("torch", "triton"):   # fewer columns than lanes: no positive for some
        with pytest.raises(ValueError, match="lanes"):
            fused_sampled_loss_and_grads(h_, W_, b_, Y[:b - 1].to(DEV), "top1", backend=backend)
    Yd = Y.to(DEV)
    uniq, inv = torch.unique(Yd, return_inverse=True)
    with pytest.raises(ValueError, match="w_scatter must be an int32 or int64 vector of 12 ids"):
        fused_sampled_loss_and_grads(h_, W_, b_, Yd, "cross-entropy", rows=(uniq, inv[:2]),
                                     backend="triton")
    with pytest.raises(ValueError, match="logq_per_column"):
        fused_sampled_loss_and_grads(h_, W_, b_, Y.to(DEV), "cross-entropy", logq=1.0,
                                     logq_per_column=torch.zeros(3, device=DEV), backend="triton")


def test_dispatch_and_errors():
    x = torch.zeros(2, 3)
    assert resolve_backend("auto", x) == "torch"
    assert resolve_backend("triton", x) == "triton"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", x)
    h, W, bias, Y, lq = make_case(1, 3, 4, 16)
    on_dev = [x.float().to(DEV) for x in (h, W, bias)] + [Y.to(DEV)]
    with pytest.raises(ValueError, match="unknown loss"):
        fused_sampled_loss_and_grads(*on_dev, "hinge", backend="triton")
    with pytest.raises(ValueError, match="precision"):
        fused_sampled_loss_and_grads(*on_dev, "bpr", backend="triton", precision="fp64")
    # auto on CPU tensors = the reference, bit for bit
    a = fused_sampled_loss_and_grads(h, W, bias, Y, "top1")
    r = fused_sampled_loss_and_grads_reference(h, W, bias, Y, "top1")
    assert torch.equal(a.dh, r.dh) and torch.equal(a.d_rows, r.d_rows)


# An item table whose rows lie 2^30 elements apart: row 2 starts at element 2^31, past int32.
# The pages between rows are never touched (torch.empty), so it costs ~no memory; the table is
# fp16 to halve the address space it reserves (4 GiB). Run in a child process: an int32
# row offset reads a wild address and segfaults there (it did before the kernels used int64).
_FAR_ROWS = r"""
import sys, torch
from fastgru4rec.ops.ranking import rank_counts, rank_counts_from_scores, topk_scores, topk_scores_reference
from fastgru4rec.ops.scoring import full_catalog_cross_entropy_and_grads, fused_sampled_loss_and_grads, fused_sampled_loss_and_grads_reference
dev, H, S = sys.argv[1], 16, 1 << 30
try:
    store = torch.empty(2 * S + H, dtype=torch.float16, device=dev)
except (RuntimeError, MemoryError) as e:
    print("SKIP cannot reserve the far table:", str(e).splitlines()[0]); sys.exit(0)
W = store.as_strided((3, H), (S, 1))
g = torch.Generator().manual_seed(0)
W.copy_(torch.randn(3, H, generator=g).half())
Wd = W.double().cpu()
bias = torch.randn(3, generator=g).to(dev)
h = torch.randn(4, H, generator=g).to(dev)
t = torch.tensor([0, 1, 2, 2], device=dev)
scores = h.double().cpu() @ Wd.t() + bias.double().cpu()
got = rank_counts(h, W, bias, t, backend="triton", precision="ieee")
ref = rank_counts_from_scores(scores, t.cpu())
assert all(torch.equal(a.cpu(), b) for a, b in zip(got, ref)), (got, ref)
v, i = topk_scores(h, W, bias, 3, backend="triton", precision="ieee")
assert torch.equal(i.cpu(), scores.argsort(dim=1, descending=True)), (i, scores)
l, dh, dW, db = full_catalog_cross_entropy_and_grads(h, W, bias, t, backend="triton", precision="ieee")
lr, dhr, dWr, dbr = full_catalog_cross_entropy_and_grads(h.double().cpu(), Wd, bias.double().cpu(), t.cpu(), backend="torch")
for a, b in ((l, lr), (dh, dhr), (dW, dWr), (db, dbr)):
    assert (a.double().cpu() - b).abs().max() <= 1e-5 * b.abs().max(), (a, b)
Y = torch.tensor([2, 0, 1, 2, 1, 2], device=dev)      # 4 targets, 2 samples
f = fused_sampled_loss_and_grads(h, W, bias, Y, "cross-entropy", backend="triton", precision="ieee")
r = fused_sampled_loss_and_grads_reference(h.double().cpu(), Wd, bias.double().cpu(), Y.cpu(), "cross-entropy")
for a, b in ((f.loss, r.loss), (f.dh, r.dh), (f.d_rows, r.d_rows)):
    assert (a.double().cpu() - b).abs().max() <= 1e-5 * b.abs().max(), (a, b)
# int32 column ids: id * row stride must still be formed in int64
f32 = fused_sampled_loss_and_grads(h, W, bias, Y.int(), "cross-entropy", backend="triton", precision="ieee")
for a, b in ((f32.loss, r.loss), (f32.dh, r.dh), (f32.d_rows, r.d_rows)):
    assert (a.double().cpu() - b).abs().max() <= 1e-5 * b.abs().max(), (a, b)
print("OK")
"""


def test_item_rows_past_2_31_elements_in_every_catalog_kernel():
    import subprocess
    import sys

    from conftest import subprocess_env
    proc = subprocess.run([sys.executable, "-c", _FAR_ROWS, DEV], env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if "SKIP" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0 and "OK" in proc.stdout, f"rc {proc.returncode}: {out[-3000:]}"
