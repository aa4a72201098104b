"""Sampled scoring and the GRU4Rec losses (REFERENCE §4), plain-torch reference.

A step with b active lanes scores C = b + n_sample columns
    Y = [targets of the b lanes ; n_sample extra items shared by the step]
    R = h · W[Y]ᵀ + bias[Y]                                  (b, C)
Lane i's positive is column i; every other column is a negative for it (nothing is masked,
even a negative equal to the positive). Every loss returns the SUM over lanes; the caller
divides by the configured batch size B.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..config import LOSSES
from .backend import load_contracts, load_kernels, resolve_backend
from .optim import EPS as ADAGRAD_EPS, adagrad_momentum_dense

_EPS = 1e-24
_contracts = load_contracts()


def sampled_scores(h: torch.Tensor, item_rows: torch.Tensor, item_bias: torch.Tensor) -> torch.Tensor:
    """R (b, C) = h (b, H) · item_rows (C, H)ᵀ + item_bias (C,)."""
    return torch.addmm(item_bias, h, item_rows.t())


def logq_column_correction(log_support_y: torch.Tensor, b: int, sample_alpha: float) -> torch.Tensor:
    """log q_j per column (C,): log support for the b in-batch columns, alpha·log support for
    the extra-sample columns (q = support^alpha, raw counts)."""
    lq = log_support_y.clone()
    lq[b:] *= sample_alpha
    return lq


def logq_columns(log_support: torch.Tensor, Y: torch.Tensor, b: int,
                 sample_alpha: float) -> torch.Tensor:
    """logq_column_correction(log_support[Y], b, sample_alpha) for the log supports of all
    items (N,) and the step's column ids Y (C,): a gather, then the sample columns scaled in
    place (two launches; the training steps' form, no copy)."""
    lq = log_support.index_select(0, Y)
    lq[b:].mul_(sample_alpha)
    return lq


def _softmax_negatives(R: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """Softmax of each row over its negatives only (the positive column gets weight 0)."""
    e = torch.exp(R - R.max(dim=1, keepdim=True).values) * (1.0 - pos_mask)
    return e / e.sum(dim=1, keepdim=True)


def positive_mask(b: int, C: int, like: torch.Tensor) -> torch.Tensor:
    """(b, C) float mask with ones at (i, i): lane i's positive column."""
    m = torch.zeros(b, C, dtype=like.dtype, device=like.device)
    m[:, :b].fill_diagonal_(1.0)
    return m


def sampled_loss_reference(R: torch.Tensor, loss: str, *, logq_per_column: Optional[torch.Tensor] = None,
                           logq: float = 0.0, bpreg: float = 0.0, elu_param: float = 0.0
                           ) -> torch.Tensor:
    """Sum over lanes of the per-lane loss for scores R (b, C), positives on the diagonal.

    logq_per_column: (C,) log q_j (see logq_column_correction), used by cross-entropy when
    logq > 0.
    """
    b, C = R.shape
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    _contracts.check_sampled_columns(b, C, loss)
    if loss == "cross-entropy":
        if logq > 0:
            _contracts.check_logq_per_column(logq_per_column, C)
            R = R - logq * logq_per_column
        p = torch.softmax(R, dim=1)
        return -torch.log(p[:, :b].diagonal() + _EPS).sum()
    if loss in ("bpr-max", "top1-max") and elu_param > 0:
        R = F.elu(R, alpha=elu_param)
    r_pos = R[:, :b].diagonal().unsqueeze(1)                   # (b, 1)
    if loss in ("bpr-max", "top1-max"):
        pos_mask = positive_mask(b, C, R)                      # only the *-max losses need it
    if loss == "bpr-max":
        s = _softmax_negatives(R, pos_mask)
        return (-torch.log((s * torch.sigmoid(r_pos - R)).sum(dim=1) + _EPS)
                + bpreg * (s * R * R).sum(dim=1)).sum()
    if loss == "top1-max":
        s = _softmax_negatives(R, pos_mask)
        return (s * (torch.sigmoid(R - r_pos) + torch.sigmoid(R * R))).sum()
    if loss == "top1":
        # mean over all C columns, with the positive's own regulariser σ(r_i²) removed
        per_col = torch.sigmoid(R - r_pos) + torch.sigmoid(R * R)
        return (per_col.sum(dim=1) - torch.sigmoid(r_pos.squeeze(1) ** 2)).sum() / C
    # bpr (ICLR 2016): the mean over all C columns of -log σ(r_i - r_j)
    return -F.logsigmoid(r_pos - R).sum() / C


# ============================================================================ fused paths
#
# backend: "torch" (the references below), "triton" (kernels/scoring.py), "auto" (triton for
# CUDA tensors, torch otherwise). precision: tl.dot input precision of the Triton path
# ("ieee", "tf32", "tf32x3"; None = "tf32"), ignored by torch.

def _kernels_scoring():
    return load_kernels("scoring")


class SampledLossGrads(NamedTuple):
    """loss: 0-d, scale · Σ lanes. dh (b, H). rows (U,) item ids; d_rows (U, H) and
    bias_rows (V,), d_bias_rows (V,): gradients of ``loss`` for item_weight[rows] and
    item_bias[bias_rows] (duplicates within Y summed). Gradients are None without grads."""
    loss: torch.Tensor
    dh: Optional[torch.Tensor]
    rows: torch.Tensor
    d_rows: Optional[torch.Tensor]
    bias_rows: torch.Tensor
    d_bias_rows: Optional[torch.Tensor]


def _unique_rows(Y, rows):
    if rows is None:
        return torch.unique(Y, return_inverse=True)
    idx, inv = rows
    return idx, inv


def fused_sampled_loss_and_grads_reference(h, item_weight, item_bias, Y, loss, *,
                                           logq_per_column=None, logq=0.0, bpreg=0.0,
                                           elu_param=0.0, scale=1.0, rows=None, bias_rows=None,
                                           grads=True) -> SampledLossGrads:
    """Plain-torch version of fused_sampled_loss_and_grads (built on sampled_loss_reference),
    computed in the inputs' dtype."""
    w_idx, w_inv = _unique_rows(Y, rows)
    b_idx, b_inv = _unique_rows(Y, bias_rows) if bias_rows is not None else (w_idx, w_inv)
    hh = h.detach().requires_grad_(grads)
    y_rows = item_weight.detach().index_select(0, Y).requires_grad_(grads)
    y_bias = item_bias.detach().index_select(0, Y).requires_grad_(grads)
    with torch.enable_grad():
        R = sampled_scores(hh, y_rows, y_bias)
        value = sampled_loss_reference(R, loss, logq_per_column=logq_per_column, logq=logq,
                                       bpreg=bpreg, elu_param=elu_param) * scale
        if not grads:
            return SampledLossGrads(value.detach(), None, w_idx, None, b_idx, None)
        dh, dy, dyb = torch.autograd.grad(value, (hh, y_rows, y_bias))
    d_rows = torch.zeros(w_idx.shape[0], h.shape[1], dtype=dy.dtype, device=dy.device)
    d_rows.index_add_(0, w_inv, dy)
    d_bias = torch.zeros(b_idx.shape[0], dtype=dyb.dtype, device=dyb.device)
    d_bias.index_add_(0, b_inv, dyb)
    return SampledLossGrads(value.detach(), dh, w_idx, d_rows, b_idx, d_bias)


def fused_sampled_loss_and_grads(h, item_weight, item_bias, Y, loss, *, logq_per_column=None,
                                 logq=0.0, bpreg=0.0, elu_param=0.0, scale=1.0, rows=None,
                                 bias_rows=None, grads=True, per_column=False, d_rows_out=None,
                                 log_support=None, sample_alpha=1.0,
                                 backend: str = "auto", precision=None) -> SampledLossGrads:
    """Scores R = h (b, H) · item_weight[Y]ᵀ + item_bias[Y] (Y int64 (C,) = [targets; samples],
    positives on the diagonal), the summed loss (× scale, e.g. 1/batch_size) and its gradients
    for h and for the touched rows of the item tables only (no autograd, no N × H tensor).

    rows / bias_rows: optional (row_ids (U,), inverse (C,)) with row_ids[inverse] == Y, e.g. the
    unique ids the training step already gathered (they may contain extra ids: their gradient
    is 0); default torch.unique(Y). bias_rows defaults to rows.
    per_column: one gradient row per column instead (rows = bias_rows = Y, duplicates not
    summed: for a caller whose optimizer sums them, e.g. the fast engine), written into
    d_rows_out (fp32 (C, H)) when given; on Triton with plain stores (nothing to zero).
    log_support (N,) with sample_alpha: instead of logq_per_column, the columns' log q as
    logq_columns(log_support, Y, b, sample_alpha) (on Triton gathered by the loss kernel).
    The Triton path computes in fp32 (h and the tables may be fp16/bf16); returns fp32.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    Y = _contracts.index_vector("Y", Y)
    if resolve_backend(backend, h) == "torch":
        _contracts.check_score_inputs(h, item_weight, item_bias, bias_per_item=False)
        if log_support is not None and logq_per_column is None:
            logq_per_column = logq_columns(log_support, Y, h.shape[0], sample_alpha)
        if per_column:
            rows = bias_rows = (Y, torch.arange(Y.shape[0], device=Y.device))
        g = fused_sampled_loss_and_grads_reference(
            h, item_weight, item_bias, Y, loss, logq_per_column=logq_per_column, logq=logq,
            bpreg=bpreg, elu_param=elu_param, scale=scale, rows=rows, bias_rows=bias_rows,
            grads=grads)
        if per_column and d_rows_out is not None and grads:
            g = g._replace(d_rows=d_rows_out.copy_(g.d_rows))
        return g
    Y = Y.contiguous()
    if per_column:
        w_idx, b_idx = Y, Y
        scatter = dict(per_column=True, d_rows_out=d_rows_out)
    else:
        w_idx, w_inv = _unique_rows(Y, rows)
        b_idx, b_inv = (_unique_rows(Y, bias_rows) if bias_rows is not None
                        else (w_idx, w_inv))
        scatter = dict(w_scatter=w_inv.contiguous(), n_w_rows=w_idx.shape[0],
                       b_scatter=b_inv.contiguous(), n_b_rows=b_idx.shape[0])
    value, _, dh, d_rows, d_bias = _kernels_scoring().sampled_loss_fused(
        h.detach(), item_weight.detach(), item_bias.detach(), Y, Y, loss,
        logq_per_column=logq_per_column, logq=logq, bpreg=bpreg, elu_param=elu_param,
        scale=scale, grads=grads, precision=precision,
        log_support=log_support if logq_per_column is None else None,
        sample_alpha=sample_alpha, **scatter)
    return SampledLossGrads(value, dh, w_idx, d_rows, b_idx, d_bias)


class _FusedSampledLoss(torch.autograd.Function):
    """Liger pattern: the gradients are computed in the forward (fused) and scaled by the
    incoming gradient in the backward."""

    @staticmethod
    def forward(ctx, h, weight, bias, w_col, b_col, loss, lq, logq, bpreg, elu_param, precision):
        need = any(ctx.needs_input_grad[:3])
        value, _, dh, d_w, d_b = _kernels_scoring().sampled_loss_fused(
            h.detach(), weight.detach(), bias.detach(), w_col, b_col, loss,
            logq_per_column=lq, logq=logq, bpreg=bpreg, elu_param=elu_param, grads=need,
            w_scatter=w_col, n_w_rows=weight.shape[0], b_scatter=b_col, n_b_rows=bias.shape[0],
            precision=precision)
        if need:
            ctx.save_for_backward(dh, d_w, d_b)
            ctx.dtypes = (h.dtype, weight.dtype, bias.dtype)
        return value.to(h.dtype)

    @staticmethod
    def backward(ctx, g):
        dh, d_w, d_b = ctx.saved_tensors
        g = g.float()
        out = [None] * 11
        for i, (t, dt) in enumerate(zip((dh, d_w, d_b), ctx.dtypes)):
            if ctx.needs_input_grad[i]:
                out[i] = (t * g).to(dt)
        return tuple(out)


def fused_sampled_loss(h, item_weight, item_bias, Y, loss, *, logq_per_column=None, logq=0.0,
                       bpreg=0.0, elu_param=0.0, bias_index=None, backend: str = "auto",
                       precision=None) -> torch.Tensor:
    """Differentiable Σ-over-lanes sampled loss of R = h · item_weight[Y]ᵀ + item_bias[Y']
    (Y' = bias_index if given, else Y). Gradients flow to h, item_weight and item_bias; to keep
    them sparse pass gathered rows as the tables (e.g. item_weight = W[unique ids] as a leaf and
    Y = the inverse indices), as the training step does: the table gradient has the table's
    shape."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    Y = _contracts.index_vector("Y", Y)
    b_col = Y if bias_index is None else _contracts.index_vector(
        "bias_index", bias_index, Y.shape[0])                  # one bias id per column of Y
    if resolve_backend(backend, h) == "torch":
        _contracts.check_score_inputs(h, item_weight, item_bias, bias_per_item=False)
        R = sampled_scores(h, item_weight.index_select(0, Y), item_bias.index_select(0, b_col))
        return sampled_loss_reference(R, loss, logq_per_column=logq_per_column, logq=logq,
                                      bpreg=bpreg, elu_param=elu_param)
    return _FusedSampledLoss.apply(h, item_weight, item_bias, Y.contiguous(), b_col.contiguous(),
                                   loss, logq_per_column, float(logq), float(bpreg),
                                   float(elu_param), precision)


# ---------------------------------------------------------------- full catalog (n_sample="all")

def full_catalog_cross_entropy_reference(h, item_weight, item_bias, targets) -> torch.Tensor:
    """Σ_i -log(softmax(h_i · Wᵀ + bias)[t_i] + 1e-24): cross-entropy over the whole catalog
    (§4's cross-entropy with Y = all items, no logq). Materialises (b, N)."""
    _contracts.check_score_inputs(h, item_weight, item_bias)
    targets = _contracts.index_vector("targets", targets, h.shape[0]).long()
    R = torch.addmm(item_bias, h, item_weight.t())
    p = torch.softmax(R, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return -torch.log(p + _EPS).sum()


def full_catalog_cross_entropy_and_grads(h, item_weight, item_bias, targets, *, scale=1.0,
                                         grads=True, d_weight_out=None, d_bias_out=None,
                                         backend: str = "auto", precision=None):
    """(loss, dh, d_weight (N, H), d_bias (N,)) of scale · full_catalog_cross_entropy. The
    Triton path never holds the (b, N) scores (an online softmax over item tiles, tiles
    recomputed for the gradients). d_weight_out / d_bias_out (fp32, both or neither): accumulate
    into these instead (returned)."""
    _contracts.check_catalog_grad_buffers(d_weight_out, d_bias_out)
    if resolve_backend(backend, h) == "torch":
        hh = h.detach().requires_grad_(grads)
        W = item_weight.detach().requires_grad_(grads)
        bb = item_bias.detach().requires_grad_(grads)
        with torch.enable_grad():
            value = full_catalog_cross_entropy_reference(hh, W, bb, targets) * scale
            if not grads:
                return value.detach(), None, None, None
            dh, dW, db = torch.autograd.grad(value, (hh, W, bb))
        if d_weight_out is not None:
            dW = d_weight_out.add_(dW)
            db = d_bias_out.add_(db)
        return value.detach(), dh, dW, db
    value, dh, dW, db = _kernels_scoring().full_ce_fused(
        h.detach(), item_weight.detach(), item_bias.detach(), targets, scale=scale, grads=grads,
        d_weight_out=d_weight_out, d_bias_out=d_bias_out, precision=precision)
    return value * scale, dh, dW, db


class _FullCatalogCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, precision):
        ctx.save_for_backward(h, weight, bias, targets)
        ctx.precision = precision
        value, *_ = _kernels_scoring().full_ce_fused(h.detach(), weight.detach(), bias.detach(),
                                                     targets, grads=False, precision=precision)
        return value.to(h.dtype)

    @staticmethod
    def backward(ctx, g):
        h, weight, bias, targets = ctx.saved_tensors
        # gradients recomputed tile by tile; g (a 0-d tensor) is folded in afterwards
        _, dh, dW, db = _kernels_scoring().full_ce_fused(h.detach(), weight.detach(),
                                                         bias.detach(), targets,
                                                         precision=ctx.precision)
        g = g.float()
        return ((dh * g).to(h.dtype) if ctx.needs_input_grad[0] else None,
                (dW.mul_(g)).to(weight.dtype) if ctx.needs_input_grad[1] else None,
                (db.mul_(g)).to(bias.dtype) if ctx.needs_input_grad[2] else None, None, None)


def full_catalog_cross_entropy(h, item_weight, item_bias, targets, *, backend: str = "auto",
                               precision=None) -> torch.Tensor:
    """Differentiable full-catalog cross-entropy (sum over rows); see the reference above."""
    if resolve_backend(backend, h) == "torch":
        return full_catalog_cross_entropy_reference(h, item_weight, item_bias, targets)
    return _FullCatalogCE.apply(h, item_weight, item_bias, targets.contiguous(), precision)


# ------------------------------------------- full catalog, training: loss + dh, then the update

class FullCatalogForward(NamedTuple):
    """full_catalog_forward's result: loss (0-d, scale · Σ cross-entropy), dh (b, H) fp32, and
    what full_catalog_adagrad_update needs (torch: the dense (dW, db); triton: the kernels'
    per-row softmax statistics: O(b), the N × H gradient is never held)."""
    loss: torch.Tensor
    dh: torch.Tensor
    backend: str
    saved: tuple


def full_catalog_forward(h, item_weight, item_bias, targets, *, scale=1.0,
                         backend: str = "auto", precision=None) -> FullCatalogForward:
    """The first half of a training step with n_sample = "all": the loss and dh (to backpropagate
    through the GRU) of scale · full_catalog_cross_entropy. The item table's gradient is applied
    by full_catalog_adagrad_update afterwards, once the rest of the step's gradient for the
    table (the shared embedding's input rows) is known."""
    if resolve_backend(backend, h) == "torch":
        value, dh, dW, db = full_catalog_cross_entropy_and_grads(
            h, item_weight, item_bias, targets, scale=scale, backend="torch")
        return FullCatalogForward(value, dh, "torch", (dW, db))
    k = _kernels_scoring()
    h, W, bias = k.catalog_inputs(h.detach(), item_weight.detach(), item_bias.detach())
    targets = _contracts.index_vector("targets", targets, h.shape[0])
    value, stats = k.full_ce_forward(h, W, bias, targets, scale=scale, precision=precision)
    dh = k.full_ce_dh(h, W, bias, targets, stats, precision=precision)
    return FullCatalogForward(value * scale, dh, "triton", (h, targets, stats, precision))


@torch.no_grad()
def full_catalog_adagrad_update(fwd: FullCatalogForward, item_weight, item_bias, w_state,
                                b_state, lr: float, momentum: float, extra_ids=None,
                                extra_rows=None) -> None:
    """The Adagrad-momentum update (REFERENCE §4, dense: every item is scored) of item_weight
    (N, H) and item_bias (N,) in place by the gradient of the loss full_catalog_forward made
    (from these same, not yet updated, tables), plus extra_rows (L, H) at extra_ids (L,)
    (repeats summed) when given. w_state / b_state: (accumulator, velocity or None). The
    backend is the forward's: torch applies the dense gradient it holds; triton recomputes each
    item tile's gradient and updates the tile where it is made (no N × H gradient)."""
    (w_acc, w_vel), (b_acc, b_vel) = w_state, b_state
    if fwd.backend == "torch":
        dW, db = fwd.saved
        if extra_ids is not None:
            # in place: dW is this step's own fresh gradient (a copy would be another N x H)
            dW.index_add_(0, extra_ids, extra_rows.to(dW.dtype))
        adagrad_momentum_dense(item_weight, dW, w_acc, w_vel, lr, momentum)
        adagrad_momentum_dense(item_bias, db, b_acc, b_vel, lr, momentum)
        return
    h, targets, stats, precision = fwd.saved
    _kernels_scoring().full_ce_adagrad_update(
        h, item_weight, item_bias, targets, stats, w_acc, w_vel, b_acc, b_vel, lr, momentum,
        ADAGRAD_EPS, extra_ids=extra_ids, extra_rows=extra_rows, precision=precision)
