"""Triton kernels for GRU4Rec scoring (REFERENCE §4): fused sampled scores + losses + gradients,
and the full-catalog cross-entropy (an online softmax: each row's running max m and
z = Σ exp(s - m), kept apart; gradients recomputed tile by tile).

Notation: b rows (lanes), H hidden, C score columns, N catalog items. Block sizes: BM rows,
BN columns (items), BK the reduction chunk. Variables: o_ offsets, m_ masks, b_ blocks, p_ pointers.

Sampled path (small: C = b + n_sample <= a few thousand), four launches:
  1. ``_sampled_scores_kernel``   R (b, C) = h · W[col]ᵀ + bias[col]   (W rows gathered in-kernel)
  2. ``_sampled_loss_kernel``     per-row loss and dR (b, C), two streaming passes over columns
                                  (log q per column given, or gathered from the item's log
                                  support: the training step's form)
  3. ``_rows_matmul_kernel``      dh (b, H) = dR · W[col]
  4. ``_cols_scatter_kernel``     d_rows[inv[j]] += (dRᵀ · h)[j], d_bias[binv[j]] += Σ_i dR[i, j]
                                  (atomics into the U unique rows: never an N × H gradient), or
                                  per column (d_rows[j] = ..., plain stores: the fast engine,
                                  whose optimizer sums repeated ids)
Full catalog (n_sample = "all"): ``_ce_full_fwd_kernel`` (partial max / sum-exp / target score per
split of the catalog), ``_ce_full_dh_kernel`` (recompute tiles, dh by atomics over splits),
``_ce_full_dw_kernel`` (recompute transposed tiles, each program owns its item tile's dW,
which it stores, adds to a buffer, or applies as the tile's Adagrad-momentum update: the
training step's form, which never holds an N × H gradient).

Interpreter rules (DESIGN.md): fp32 arithmetic only, no libdevice (σ, log-sigmoid and ELU are
written with exp/log), a single configuration, no block pointers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import contracts, launch
from .optim import _adagrad_momentum_apply

# loss codes (constexpr)
CE, BPR_MAX, TOP1_MAX, TOP1, BPR = 0, 1, 2, 3, 4
LOSS_CODES = {"cross-entropy": CE, "bpr-max": BPR_MAX, "top1-max": TOP1_MAX, "top1": TOP1, "bpr": BPR}
PRECISIONS = ("ieee", "tf32", "tf32x3")
_EPS = 1e-24
# finite running-max start: exp(m_old - m_new) never sees inf - inf. A global read inside a
# @triton.jit function must be a tl.constexpr (the GPU compiler rejects a plain float; the
# interpreter does not: benchmarks/compile_check.py found it).
_NEG_INIT = tl.constexpr(-1e30)
# what _ce_full_dw_kernel does with its item tile's gradient (constexpr, same reason)
_DW_STORE, _DW_ACCUM, _DW_ADAGRAD = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


# ----------------------------------------------------------------------------- helpers



def resolve_precision(precision) -> str:
    """tl.dot input precision for fp32 operands: "ieee" (exact fp32), "tf32" (the GPU default),
    "tf32x3" (≈ fp32 accuracy on tensor cores). None -> "tf32"."""
    p = "tf32" if precision is None else precision
    if p not in PRECISIONS:
        raise ValueError(f"unknown dot precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    return p


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, launch.next_pow2(int(x)))


def catalog_inputs(h, weight, bias, bias_per_item: bool = True):
    """(h, weight, bias) as the catalog kernels read them, checked: h (b, H) and weight (·, H)
    with unit stride along H, bias a contiguous vector (one entry per weight row when
    bias_per_item; the sampled path's bias may be its own table). The kernels address raw
    pointers with H from h and row strides from weight: a transposed or strided table was read
    as if laid out by rows (wrong scores, no error). A strided weight or bias is copied (a full
    copy of the table per call: pass contiguous tables). Metadata checks only, no device sync;
    any float dtype is read and computed in fp32."""
    contracts.check_score_inputs(h, weight, bias, bias_per_item)
    h = h if h.stride(1) == 1 else h.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    return h, weight, bias.contiguous()


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _elu(x, alpha):
    return tl.where(x > 0, x, alpha * (tl.exp(tl.minimum(x, 0.0)) - 1.0))


@triton.jit
def _score_tile(p_h, p_w, p_bias, o_m, m_m, ids, m_n, H, stride_h, stride_w,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """(BM, BN) tile of h[o_m] · W[ids]ᵀ + bias[ids] in fp32. Every kernel that needs a score
    goes through this one function, so equal (row block, item tile) give bit-equal scores."""
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    w_rows = ids.to(tl.int64) * stride_w   # item row × stride passes 2^31 on large catalogs
    for k0 in range(0, H, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < H
        b_h = tl.load(p_h + o_m[:, None] * stride_h + o_k[None, :],
                      mask=m_m[:, None] & m_k[None, :], other=0.0).to(tl.float32)
        b_wt = tl.load(p_w + w_rows[None, :] + o_k[:, None],
                       mask=m_k[:, None] & m_n[None, :], other=0.0).to(tl.float32)   # (BK, BN)
        acc = tl.dot(b_h, b_wt, acc, input_precision=PREC)
    b_b = tl.load(p_bias + ids, mask=m_n, other=0.0).to(tl.float32)
    return acc + b_b[None, :]


# ----------------------------------------------------------------------------- sampled path

@triton.jit
def _sampled_scores_kernel(p_h, p_w, p_bias, p_wcol, p_bcol, p_r, b, C, H, stride_h, stride_w,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    # column blocks on grid axis 0 (up to 2^31 - 1; axis 1 stops at 65,535: 4.2M columns)
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    o_m = pid_m * BM + tl.arange(0, BM)
    o_n = pid_n * BN + tl.arange(0, BN)
    m_m, m_n = o_m < b, o_n < C
    ids = tl.load(p_wcol + o_n, mask=m_n, other=0)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, H, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < H
        b_h = tl.load(p_h + o_m[:, None] * stride_h + o_k[None, :],
                      mask=m_m[:, None] & m_k[None, :], other=0.0).to(tl.float32)
        b_wt = tl.load(p_w + ids.to(tl.int64)[None, :] * stride_w + o_k[:, None],
                       mask=m_k[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(b_h, b_wt, acc, input_precision=PREC)
    bids = tl.load(p_bcol + o_n, mask=m_n, other=0)
    acc += tl.load(p_bias + bids, mask=m_n, other=0.0).to(tl.float32)[None, :]
    tl.store(p_r + o_m.to(tl.int64)[:, None] * C + o_n[None, :], acc, mask=m_m[:, None] & m_n[None, :])


@triton.jit
def _col_logq(p_lq, p_ycol, cols, mask, b, sample_alpha, LQ_GATHER: tl.constexpr):
    """log q of columns ``cols``: p_lq[cols] (per column), or with LQ_GATHER the item's log
    support p_lq[Y[cols]] times sample_alpha for the sample columns (cols >= b), as
    ops.scoring.logq_columns computes it (the same fp32 product)."""
    if LQ_GATHER:
        ids = tl.load(p_ycol + cols, mask=mask, other=0)
        v = tl.load(p_lq + ids, mask=mask, other=0.0)
        return tl.where(cols >= b, v * sample_alpha, v)
    else:
        return tl.load(p_lq + cols, mask=mask, other=0.0)


@triton.jit
def _sampled_loss_kernel(p_r, p_dr, p_lq, p_ycol, p_loss, b, C, logq, sample_alpha, bpreg,
                         elu_alpha, scale,
                         LOSS: tl.constexpr, HAS_LQ: tl.constexpr, LQ_GATHER: tl.constexpr,
                         USE_ELU: tl.constexpr, GRAD: tl.constexpr, BM: tl.constexpr,
                         BN: tl.constexpr):
    """Rows [pid·BM, pid·BM + BM) of R (b, C), positive of row i at column i. Pass 1 streams the
    columns with an online max (softmax losses) and accumulates the loss's sums; pass 2 writes
    dR = scale · ∂loss/∂R. Per-row loss × scale goes to p_loss (the step's loss / B needs no
    extra launch)."""
    pid = tl.program_id(0)
    o_m = pid * BM + tl.arange(0, BM)
    m_m = o_m < b
    r_pos = tl.load(p_r + o_m.to(tl.int64) * C + o_m, mask=m_m, other=0.0)
    if HAS_LQ:
        r_pos = r_pos - logq * _col_logq(p_lq, p_ycol, o_m, m_m, b, sample_alpha, LQ_GATHER)
    u_pos = r_pos
    if USE_ELU:
        u_pos = _elu(r_pos, elu_alpha)
    m_run = tl.full((BM,), _NEG_INIT, dtype=tl.float32)
    z = tl.zeros((BM,), dtype=tl.float32)
    a1 = tl.zeros((BM,), dtype=tl.float32)
    a2 = tl.zeros((BM,), dtype=tl.float32)
    a3 = tl.zeros((BM,), dtype=tl.float32)
    for c0 in range(0, C, BN):
        o_n = c0 + tl.arange(0, BN)
        m_n = o_n < C
        msk = m_m[:, None] & m_n[None, :]
        neg = msk & (o_n[None, :] != o_m[:, None])
        x = tl.load(p_r + o_m.to(tl.int64)[:, None] * C + o_n[None, :], mask=msk, other=0.0)
        if LOSS == 0:   # cross-entropy, softmax over all columns
            if HAS_LQ:
                x = x - logq * _col_logq(p_lq, p_ycol, o_n, m_n, b, sample_alpha,
                                         LQ_GATHER)[None, :]
            xm = tl.where(msk, x, float("-inf"))
            m_new = tl.maximum(m_run, tl.max(xm, axis=1))
            # z sums the negatives only; the positive's exp(r_pos - m) is added after the loop.
            # A confident row has z = 1 + small terms: summed into the 1 in fp32 they lose their
            # low bits, and 1 - p_t (the loss and the positive's gradient) with them.
            e = tl.where(neg, tl.exp(xm - m_new[:, None]), 0.0)
            z = z * tl.exp(m_run - m_new) + tl.sum(e, axis=1)
            m_run = m_new
        elif LOSS == 1 or LOSS == 2:   # bpr-max / top1-max, softmax over the negatives
            u = x
            if USE_ELU:
                u = _elu(x, elu_alpha)
            um = tl.where(neg, u, float("-inf"))
            m_new = tl.maximum(m_run, tl.max(um, axis=1))
            alpha = tl.exp(m_run - m_new)
            e = tl.exp(um - m_new[:, None])
            z = z * alpha + tl.sum(e, axis=1)
            if LOSS == 1:
                sg = _sigmoid(u_pos[:, None] - u)
                a1 = a1 * alpha + tl.sum(e * sg, axis=1)
                a2 = a2 * alpha + tl.sum(e * u * u, axis=1)
                a3 = a3 * alpha + tl.sum(e * sg * (1.0 - sg), axis=1)
            else:
                sd = _sigmoid(u - u_pos[:, None])
                a1 = a1 * alpha + tl.sum(e * (sd + _sigmoid(u * u)), axis=1)
                a3 = a3 * alpha + tl.sum(e * sd * (1.0 - sd), axis=1)
            m_run = m_new
        elif LOSS == 3:   # top1
            sd = _sigmoid(x - r_pos[:, None])
            a1 += tl.sum(tl.where(neg, sd + _sigmoid(x * x), 0.0), axis=1)
            a3 += tl.sum(tl.where(neg, sd * (1.0 - sd), 0.0), axis=1)
        else:             # bpr: log σ(d) = min(d, 0) - log(1 + exp(-|d|))
            d = r_pos[:, None] - x
            ls = tl.minimum(d, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(d)))
            a1 += tl.sum(tl.where(msk, ls, 0.0), axis=1)
            a3 += tl.sum(tl.where(neg, _sigmoid(-d), 0.0), axis=1)

    Cf = C * 1.0
    if LOSS == 0:
        e_pos = tl.exp(r_pos - m_run)
        z_neg = z
        z = z_neg + e_pos
    z = tl.where(m_m, z, 1.0)   # padding rows: keep them finite
    if LOSS == 0:
        p_t = e_pos / z
        row_loss = -tl.log(p_t + 1e-24)
        coef = p_t / (p_t + 1e-24)
        g_pos = -coef * (z_neg / z)          # coef · (p_t - 1) without the cancellation
    elif LOSS == 1:
        S = a1 / z
        Q = a2 / z
        row_loss = -tl.log(S + 1e-24) + bpreg * Q
        g_pos = -(a3 / z) / (S + 1e-24)
    elif LOSS == 2:
        L = a1 / z
        row_loss = L
        g_pos = -(a3 / z)
    elif LOSS == 3:
        row_loss = (a1 + 0.5) / Cf
        g_pos = -a3 / Cf
    else:
        row_loss = -a1 / Cf
        g_pos = -a3 / Cf
    if USE_ELU:
        g_pos = g_pos * tl.where(r_pos > 0, 1.0, u_pos + elu_alpha)
    tl.store(p_loss + o_m, row_loss * scale, mask=m_m)

    if GRAD:
        for c0 in range(0, C, BN):
            o_n = c0 + tl.arange(0, BN)
            m_n = o_n < C
            msk = m_m[:, None] & m_n[None, :]
            is_pos = o_n[None, :] == o_m[:, None]
            x = tl.load(p_r + o_m.to(tl.int64)[:, None] * C + o_n[None, :], mask=msk, other=0.0)
            if LOSS == 0:
                if HAS_LQ:
                    x = x - logq * _col_logq(p_lq, p_ycol, o_n, m_n, b, sample_alpha,
                                             LQ_GATHER)[None, :]
                g = coef[:, None] * tl.exp(x - m_run[:, None]) / z[:, None]
                g = tl.where(is_pos, g_pos[:, None], g)
            elif LOSS == 1 or LOSS == 2:
                u = x
                if USE_ELU:
                    u = _elu(x, elu_alpha)
                s = tl.exp(u - m_run[:, None]) / z[:, None]
                if LOSS == 1:
                    sg = _sigmoid(u_pos[:, None] - u)
                    g = (-(s * (sg * sg - S[:, None])) / (S[:, None] + 1e-24)
                         + bpreg * s * (2.0 * u + u * u - Q[:, None]))
                else:
                    sd = _sigmoid(u - u_pos[:, None])
                    sq = _sigmoid(u * u)
                    g = s * (sd + sq - L[:, None] + sd * (1.0 - sd) + 2.0 * u * sq * (1.0 - sq))
                if USE_ELU:
                    g = g * tl.where(x > 0, 1.0, u + elu_alpha)
                g = tl.where(is_pos, g_pos[:, None], g)
            elif LOSS == 3:
                sd = _sigmoid(x - r_pos[:, None])
                sq = _sigmoid(x * x)
                g = (sd * (1.0 - sd) + 2.0 * x * sq * (1.0 - sq)) / Cf
                g = tl.where(is_pos, g_pos[:, None], g)
            else:
                g = _sigmoid(x - r_pos[:, None]) / Cf
                g = tl.where(is_pos, g_pos[:, None], g)
            tl.store(p_dr + o_m.to(tl.int64)[:, None] * C + o_n[None, :], g * scale, mask=msk)


@triton.jit
def _rows_matmul_kernel(p_dr, p_w, p_wcol, p_dh, b, C, H, stride_w,
                        BM: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """dh (b, H) = dR (b, C) · W[col] (C, H)."""
    pid_m, pid_h = tl.program_id(0), tl.program_id(1)
    o_m = pid_m * BM + tl.arange(0, BM)
    o_h = pid_h * BH + tl.arange(0, BH)
    m_m, m_h = o_m < b, o_h < H
    acc = tl.zeros((BM, BH), dtype=tl.float32)
    for c0 in range(0, C, BK):
        o_c = c0 + tl.arange(0, BK)
        m_c = o_c < C
        ids = tl.load(p_wcol + o_c, mask=m_c, other=0)
        b_dr = tl.load(p_dr + o_m.to(tl.int64)[:, None] * C + o_c[None, :], mask=m_m[:, None] & m_c[None, :], other=0.0)
        b_w = tl.load(p_w + ids.to(tl.int64)[:, None] * stride_w + o_h[None, :],
                      mask=m_c[:, None] & m_h[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(b_dr, b_w, acc, input_precision=PREC)
    tl.store(p_dh + o_m[:, None] * H + o_h[None, :], acc, mask=m_m[:, None] & m_h[None, :])


@triton.jit
def _cols_scatter_kernel(p_dr, p_h, p_winv, p_binv, p_drows, p_dbias, b, C, H, stride_h,
                         BN: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                         PER_COLUMN: tl.constexpr):
    """d_rows[winv[j]] += Σ_i dR[i, j] h[i] and d_bias[binv[j]] += Σ_i dR[i, j] (atomics:
    duplicate ids in Y add up). PER_COLUMN: d_rows[j] = ..., d_bias[j] = ... (one row per
    column, each written by exactly one program: plain stores, outputs need no zeroing).
    dRᵀ is loaded transposed, never transposed in registers."""
    pid_n, pid_h = tl.program_id(0), tl.program_id(1)
    o_n = pid_n * BN + tl.arange(0, BN)
    o_h = pid_h * BH + tl.arange(0, BH)
    m_n, m_h = o_n < C, o_h < H
    acc = tl.zeros((BN, BH), dtype=tl.float32)
    acc_b = tl.zeros((BN,), dtype=tl.float32)
    for r0 in range(0, b, BK):
        o_r = r0 + tl.arange(0, BK)
        m_r = o_r < b
        b_drt = tl.load(p_dr + o_r.to(tl.int64)[None, :] * C + o_n[:, None], mask=m_n[:, None] & m_r[None, :], other=0.0)
        b_h = tl.load(p_h + o_r[:, None] * stride_h + o_h[None, :],
                      mask=m_r[:, None] & m_h[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(b_drt, b_h, acc, input_precision=PREC)
        acc_b += tl.sum(b_drt, axis=1)
    m_bias = m_n & ((o_n * 0 + pid_h) == 0)        # the bias once: by the pid_h == 0 programs
    if PER_COLUMN:
        rows = o_n.to(tl.int64)
        tl.store(p_drows + rows[:, None] * H + o_h[None, :], acc, mask=m_n[:, None] & m_h[None, :])
        tl.store(p_dbias + rows, acc_b, mask=m_bias)
    else:
        winv = tl.load(p_winv + o_n, mask=m_n, other=0).to(tl.int64)
        tl.atomic_add(p_drows + winv[:, None] * H + o_h[None, :], acc,
                      mask=m_n[:, None] & m_h[None, :])
        binv = tl.load(p_binv + o_n, mask=m_n, other=0)
        tl.atomic_add(p_dbias + binv, acc_b, mask=m_bias)


def sampled_loss_fused(h, weight, bias, w_col, b_col, loss, *, logq_per_column=None, logq=0.0,
                       bpreg=0.0, elu_param=0.0, scale=1.0, grads=True, w_scatter=None,
                       n_w_rows=0, b_scatter=None, n_b_rows=0, per_column=False,
                       d_rows_out=None, log_support=None, sample_alpha=1.0, precision=None):
    """Launch the sampled path.

    h (b, H); weight (Tw, H) and bias (Tb,) tables; w_col / b_col int64 (C,) the table row of
    each column (column j scores weight[w_col[j]]·h + bias[b_col[j]]); loss one of LOSS_CODES.
    With grads: w_scatter / b_scatter int64 (C,) map column j to a row of the (n_w_rows, H) /
    (n_b_rows,) gradient outputs (duplicates are summed). per_column: instead, one gradient
    row per column (d_rows (C, H), d_bias (C,); w_scatter / b_scatter unused), written in place
    of d_rows_out (fp32 (C, H), contiguous) when given. log_support (Tw,) fp32 with
    sample_alpha: instead of logq_per_column, log q of column j = log_support[w_col[j]], times
    sample_alpha for j >= b (gathered inside the loss kernel).
    Returns (scale · loss_sum (0-d fp32), R (b, C), dh, d_rows, d_bias) — the last three are
    ``scale``·gradients of the summed loss, or None without grads.
    """
    prec = resolve_precision(precision)
    h, weight, bias = catalog_inputs(h, weight, bias, bias_per_item=False)
    b, H = h.shape
    C = w_col.shape[0]
    contracts.check_sampled_columns(b, C, loss)
    w_col = contracts.index_vector("w_col", w_col, C)
    b_col = contracts.index_vector("b_col", b_col, C)
    dev = h.device
    code = LOSS_CODES[loss]
    launch.require_cuda("the triton sampled loss", h, weight)
    big_blocks = launch.interpreter_blocks()
    HP = _pow2(H)
    R = launch.new_output((b, C), torch.float32, dev)
    # interpreter: its tl.dot is a non-BLAS numpy loop, cost ∝ padded M·N·K: blocks that pad little
    if big_blocks:
        BM, BN, BK = min(64, _pow2(b)), min(128, _pow2(C)), min(64, HP)
    else:
        BM, BN, BK = 64, 64, 32
    _sampled_scores_kernel[(launch.cdiv(C, BN), launch.cdiv(b, BM))](
        h, weight, bias, w_col, b_col, R, b, C, H, h.stride(0), weight.stride(0),
        BM=BM, BN=BN, BK=BK, PREC=prec)
    rows_loss = launch.new_output((b,), torch.float32, dev)
    dR = launch.new_output((b, C), torch.float32, dev) if grads else R
    has_lq = code == CE and logq > 0
    lq_gather = has_lq and log_support is not None
    if lq_gather:
        if tuple(log_support.shape) != (weight.shape[0],):
            raise ValueError(f"log_support must have one entry per item ({weight.shape[0]},) "
                             f"(got {tuple(log_support.shape)})")
        lq = log_support.to(device=dev, dtype=torch.float32).contiguous()
    elif has_lq:
        contracts.check_logq_per_column(logq_per_column, C)
        lq = logq_per_column.to(device=dev, dtype=torch.float32).contiguous()
    else:
        lq = R   # unused
    use_elu = code in (BPR_MAX, TOP1_MAX) and elu_param > 0
    LBM = min(16, _pow2(b, 1)) if big_blocks else 4
    LBN = min(1024, _pow2(C)) if big_blocks else 512
    _sampled_loss_kernel[(launch.cdiv(b, LBM),)](
        R, dR, lq, w_col, rows_loss, b, C, float(logq), float(sample_alpha), float(bpreg),
        float(elu_param), float(scale), LOSS=code, HAS_LQ=has_lq, LQ_GATHER=lq_gather,
        USE_ELU=use_elu, GRAD=grads, BM=LBM, BN=LBN)
    loss_sum = rows_loss.sum()
    if not grads:
        return loss_sum, R, None, None, None
    dh = launch.new_output((b, H), torch.float32, dev)
    if big_blocks:
        BM, BH, BK = min(64, _pow2(b)), min(64, HP), min(128, _pow2(C))
    else:
        # one program per (row block, 32 columns of H) walks all C columns: with b 32 and H 100
        # only 4 programs run, so each takes deep steps over C (BK 128: 17 steps at C 2080, not
        # 65) and no padded rows (BM 32 for b <= 32). Shared: (BM + BH) · BK · 4 B per stage.
        BM, BH, BK = (32 if b <= 32 else 64), 32, 128
    _rows_matmul_kernel[(launch.cdiv(b, BM), launch.cdiv(H, BH))](
        dR, weight, w_col, dh, b, C, H, weight.stride(0), BM=BM, BH=BH, BK=BK, PREC=prec)
    if per_column:   # every row written once by the kernel: no zeroing
        if d_rows_out is not None and (d_rows_out.shape != (C, H) or not d_rows_out.is_contiguous()
                                       or d_rows_out.dtype != torch.float32):
            raise ValueError(f"d_rows_out must be a contiguous fp32 ({C}, {H}) tensor")
        d_rows = (d_rows_out if d_rows_out is not None
                  else launch.new_output((C, H), torch.float32, dev))
        d_bias = launch.new_output((C,), torch.float32, dev)
        w_scatter = b_scatter = w_col      # unused
    else:
        if w_scatter is None or b_scatter is None:
            raise ValueError("the sampled loss's gradients need w_scatter and b_scatter "
                             "(or per_column=True)")
        w_scatter = contracts.index_vector("w_scatter", w_scatter, C)
        b_scatter = contracts.index_vector("b_scatter", b_scatter, C)
        d_rows = torch.zeros((n_w_rows, H), dtype=torch.float32, device=dev)
        d_bias = torch.zeros((n_b_rows,), dtype=torch.float32, device=dev)
    if big_blocks:
        BN, BH, BK = min(128, _pow2(C)), min(64, HP), min(64, _pow2(b))
    else:
        BN, BH, BK = 64, 64, 32
    _cols_scatter_kernel[(launch.cdiv(C, BN), launch.cdiv(H, BH))](
        dR, h, w_scatter, b_scatter, d_rows, d_bias, b, C, H, h.stride(0),
        BN=BN, BH=BH, BK=BK, PREC=prec, PER_COLUMN=per_column)
    return loss_sum, R, dh, d_rows, d_bias


# ----------------------------------------------------------------------------- full catalog

def _split_plan(n_row_blocks: int, N: int, BN: int, device: torch.device):
    """Items per split (a multiple of BN) so that row blocks × splits fill the GPU."""
    n_tiles = launch.cdiv(N, BN)
    if launch.interpreter_blocks():
        target = 2
    else:
        target = max(1, (4 * launch.sm_count(device)) // max(n_row_blocks, 1))
    splits = max(1, min(n_tiles, target))
    tiles_per = launch.cdiv(n_tiles, splits)
    return tiles_per * BN, launch.cdiv(n_tiles, tiles_per)


@triton.jit
def _ce_full_fwd_kernel(p_h, p_w, p_bias, p_tgt, p_pm, p_pz, p_pt, b, N, H, stride_h, stride_w,
                        items_per_split,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    pid_m, pid_s = tl.program_id(0), tl.program_id(1)
    o_m = pid_m * BM + tl.arange(0, BM)
    m_m = o_m < b
    tgt = tl.load(p_tgt + o_m, mask=m_m, other=-1)
    m_run = tl.full((BM,), _NEG_INIT, dtype=tl.float32)
    z = tl.zeros((BM,), dtype=tl.float32)
    t_score = tl.zeros((BM,), dtype=tl.float32)
    lo = pid_s * items_per_split
    hi = tl.minimum(lo + items_per_split, N)
    for n0 in range(lo, hi, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < hi
        s = _score_tile(p_h, p_w, p_bias, o_m, m_m, o_n, m_n, H, stride_h, stride_w, BM, BN, BK, PREC)
        sm = tl.where(m_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_run, tl.max(sm, axis=1))
        z = z * tl.exp(m_run - m_new) + tl.sum(tl.exp(sm - m_new[:, None]), axis=1)
        m_run = m_new
        t_score += tl.sum(tl.where(o_n[None, :] == tgt[:, None], s, 0.0), axis=1)
    tl.store(p_pm + pid_s * b + o_m, m_run, mask=m_m)
    tl.store(p_pz + pid_s * b + o_m, z, mask=m_m)
    tl.store(p_pt + pid_s * b + o_m, t_score, mask=m_m)


@triton.jit
def _ce_full_dh_kernel(p_h, p_w, p_bias, p_tgt, p_m, p_invz, p_coef, p_dh, b, N, H, stride_h,
                       stride_w, items_per_split,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HP: tl.constexpr,
                       PREC: tl.constexpr):
    """dh += dR · W over this program's split, dR = coef·(softmax - onehot) recomputed per tile,
    softmax = exp(s - m) / z with each row's max score m and z = Σ exp(s - m) (1/z passed)."""
    pid_m, pid_s = tl.program_id(0), tl.program_id(1)
    o_m = pid_m * BM + tl.arange(0, BM)
    m_m = o_m < b
    o_h = tl.arange(0, HP)
    m_h = o_h < H
    tgt = tl.load(p_tgt + o_m, mask=m_m, other=-1)
    m_row = tl.load(p_m + o_m, mask=m_m, other=0.0)
    inv_z = tl.load(p_invz + o_m, mask=m_m, other=0.0)
    coef = tl.load(p_coef + o_m, mask=m_m, other=0.0)
    acc = tl.zeros((BM, HP), dtype=tl.float32)
    lo = pid_s * items_per_split
    hi = tl.minimum(lo + items_per_split, N)
    for n0 in range(lo, hi, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < hi
        s = _score_tile(p_h, p_w, p_bias, o_m, m_m, o_n, m_n, H, stride_h, stride_w, BM, BN, BK, PREC)
        g = tl.exp(s - m_row[:, None]) * inv_z[:, None] - tl.where(o_n[None, :] == tgt[:, None],
                                                                   1.0, 0.0)
        g = tl.where(m_m[:, None] & m_n[None, :], g * coef[:, None], 0.0)
        b_w = tl.load(p_w + o_n.to(tl.int64)[:, None] * stride_w + o_h[None, :],
                      mask=m_n[:, None] & m_h[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(g, b_w, acc, input_precision=PREC)
    tl.atomic_add(p_dh + o_m[:, None] * H + o_h[None, :], acc, mask=m_m[:, None] & m_h[None, :])


@triton.jit
def _ce_full_dw_kernel(p_h, p_w, p_bias, p_tgt, p_m, p_invz, p_coef, p_dw, p_db,
                       p_wacc, p_wvel, p_bacc, p_bvel, p_slot, p_extra, n_extra, lr, momentum,
                       eps, b, N, H, stride_h, stride_w, OUT: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
                       HAS_EXTRA: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HP: tl.constexpr,
                       PREC: tl.constexpr):
    """dW[tile] = Σ_rows dRᵀ · h and db[tile] = Σ_rows dR for one item tile (owned: no atomics).
    Scores are computed transposed (items × rows) so no matmul result is transposed.

    OUT: _DW_STORE writes dW / db; _DW_ACCUM adds them to p_dw / p_db; _DW_ADAGRAD applies
    them as the Adagrad-momentum update of the table p_w (N, H) and bias p_bias in place, with
    their accumulators p_wacc / p_bacc and velocities p_wvel / p_bvel (HAS_MOMENTUM), so no
    N × H gradient is ever stored. In-place is race-free: a program reads and writes only its
    own tile's rows of p_w, and the dh kernel (which reads every row) has run before.
    HAS_EXTRA (with _DW_ADAGRAD): item n's gradient row also gets p_extra[p_slot[n]] (H,)
    when p_slot[n] < n_extra: the shared embedding's input-row gradients, summed per item,
    added before the update (Adagrad squares the whole gradient)."""
    pid_n = tl.program_id(0)
    o_n = pid_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    n64 = o_n.to(tl.int64)   # item row × stride passes 2^31 on large catalogs
    o_h = tl.arange(0, HP)
    m_h = o_h < H
    b_bias = tl.load(p_bias + o_n, mask=m_n, other=0.0).to(tl.float32)
    acc = tl.zeros((BN, HP), dtype=tl.float32)
    acc_b = tl.zeros((BN,), dtype=tl.float32)
    for r0 in range(0, b, BM):
        o_r = r0 + tl.arange(0, BM)
        m_r = o_r < b
        st = tl.zeros((BN, BM), dtype=tl.float32)
        for k0 in range(0, H, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < H
            b_w = tl.load(p_w + n64[:, None] * stride_w + o_k[None, :],
                          mask=m_n[:, None] & m_k[None, :], other=0.0).to(tl.float32)
            b_ht = tl.load(p_h + o_r[None, :] * stride_h + o_k[:, None],
                           mask=m_k[:, None] & m_r[None, :], other=0.0).to(tl.float32)
            st = tl.dot(b_w, b_ht, st, input_precision=PREC)
        st += b_bias[:, None]
        tgt = tl.load(p_tgt + o_r, mask=m_r, other=-1)
        m_row = tl.load(p_m + o_r, mask=m_r, other=0.0)
        inv_z = tl.load(p_invz + o_r, mask=m_r, other=0.0)
        coef = tl.load(p_coef + o_r, mask=m_r, other=0.0)
        g = tl.exp(st - m_row[None, :]) * inv_z[None, :] - tl.where(o_n[:, None] == tgt[None, :],
                                                                    1.0, 0.0)
        g = tl.where(m_n[:, None] & m_r[None, :], g * coef[None, :], 0.0)
        b_h = tl.load(p_h + o_r[:, None] * stride_h + o_h[None, :],
                      mask=m_r[:, None] & m_h[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(g, b_h, acc, input_precision=PREC)
        acc_b += tl.sum(g, axis=1)
    m_out = m_n[:, None] & m_h[None, :]
    if OUT == _DW_ADAGRAD:
        if HAS_EXTRA:
            slot = tl.load(p_slot + o_n, mask=m_n, other=0)
            has = m_n & (slot < n_extra)
            acc += tl.load(p_extra + slot.to(tl.int64)[:, None] * H + o_h[None, :],
                           mask=has[:, None] & m_h[None, :], other=0.0)
        # the table, its accumulator and velocity: contiguous (N, H) (checked at launch)
        _adagrad_momentum_apply(p_w, p_wacc, p_wvel, n64[:, None] * H + o_h[None, :], m_out,
                                acc, lr, momentum, eps, HAS_MOMENTUM)
        _adagrad_momentum_apply(p_bias, p_bacc, p_bvel, o_n, m_n, acc_b, lr, momentum, eps,
                                HAS_MOMENTUM)
    else:
        p_out = p_dw + n64[:, None] * H + o_h[None, :]
        if OUT == _DW_ACCUM:
            acc += tl.load(p_out, mask=m_out, other=0.0)
            acc_b += tl.load(p_db + o_n, mask=m_n, other=0.0)
        tl.store(p_out, acc, mask=m_out)
        tl.store(p_db + o_n, acc_b, mask=m_n)



#: The full-catalog kernels' GPU tiles replaced, by kernel: "fwd" -> (BM rows, BN items, BK,
#: num_warps), "dh" -> (BM rows, BN items, BK, num_warps), "dw" -> (BM rows, BN items, BK,
#: num_warps); an entry is used as given (also in the interpreter). Empty in normal use: the
#: defaults are in full_ce_forward / full_ce_dh / _launch_full_ce_dw. benchmarks/sweep_tiles.py
#: sets it to time other tiles on a GPU (the first H200 run: 22.4 ms at N 1M, b 512, H 256 in
#: tf32, about 59 TFLOP/s of the 402 the device's tf32 matmul reaches).
FULL_CE_TILES: dict = {}


def _full_ce_tiles(kernel: str, default):
    return FULL_CE_TILES.get(kernel, default)


class FullCEStats(NamedTuple):
    """What the full-catalog gradient kernels need from the forward (all (b,) fp32): each
    row's max score m, 1 / Σ exp(s - m), and coef = scale · p_t / (p_t + 1e-24) (the factor of
    the row's gradient dR = coef · (softmax - onehot))."""
    m: torch.Tensor
    inv_z: torch.Tensor
    coef: torch.Tensor


def full_ce_forward(h, weight, bias, targets, *, scale=1.0, precision=None):
    """The full-catalog cross-entropy's forward: (loss_sum (unscaled, 0-d fp32), FullCEStats).
    h, weight, bias as catalog_inputs returns them; targets checked (b,)."""
    prec = resolve_precision(precision)
    b, H = h.shape
    N = weight.shape[0]
    dev = h.device
    launch.require_cuda("the triton full-catalog cross-entropy", h, weight)
    if _pow2(H) > 1024:
        # the dh / dW kernels hold (rows, HP) fp32 tiles in shared memory: 32 x 2048 x 4 B is
        # past sm_90's 227 KB (compile_check.py checks H 1024, b 512)
        raise ValueError(f"the full-catalog cross-entropy kernels take hidden sizes up to 1024 "
                         f"(got {H}); use sampled negatives (n_sample > 0) or backend='torch'")
    BM, BN, BK, warps = _full_ce_tiles(
        "fwd", (min(32, _pow2(b)), 128, _full_ce_k_block(H), 4) if launch.interpreter_blocks()
        else (64, 128, _full_ce_k_block(H), 4))
    n_rb = launch.cdiv(b, BM)
    per_split, S = _split_plan(n_rb, N, BN, dev)
    pm = launch.new_output((S, b), torch.float32, dev)
    pz = launch.new_output((S, b), torch.float32, dev)
    pt = launch.new_output((S, b), torch.float32, dev)
    _ce_full_fwd_kernel[(n_rb, S)](h, weight, bias, targets, pm, pz, pt, b, N, H, h.stride(0),
                                   weight.stride(0), per_split, BM=BM, BN=BN, BK=BK, PREC=prec,
                                   num_warps=warps)
    # softmax = exp(s - m) / z with m each row's max over the splits: no log-sum-exp, whose
    # rounding (an ulp of a value as large as the scores) would be a relative error on every
    # probability (4e-2 at scores ~1000)
    m = pm.max(dim=0).values                              # (b,)
    z = (pz * torch.exp(pm - m)).sum(0)                   # (b,) Σ exp(s - m) >= 1
    inv_z = 1.0 / z
    p_t = torch.exp(pt.sum(0) - m) * inv_z
    loss_sum = (-torch.log(p_t + _EPS)).sum()
    return loss_sum, FullCEStats(m, inv_z, (p_t / (p_t + _EPS)) * scale)


def _full_ce_k_block(H: int) -> int:
    return min(64, _pow2(H)) if launch.interpreter_blocks() else 32


def full_ce_dh(h, weight, bias, targets, stats: FullCEStats, *, precision=None):
    """dh (b, H) fp32 of scale · the full-catalog cross-entropy (scale folded into stats)."""
    prec = resolve_precision(precision)
    b, H = h.shape
    N = weight.shape[0]
    HP = _pow2(H)
    dh = torch.zeros((b, H), dtype=torch.float32, device=h.device)
    if launch.interpreter_blocks():
        default = min(32, _pow2(b)), 128, _full_ce_k_block(H), 4
    else:
        # the (dBN, HP) fp32 item tile of the dot sits in shared memory: 64 x 1024 x 4 B is
        # 256 KB at 512 < H <= 1024, past sm_90's 227 KB (found compiling at H 1024). H <= 256:
        # 128-item tiles, the fastest of benchmarks/sweep_tiles.py's candidates on an H200
        # (N 1M, b 512, H 256, tf32: 7.99 ms against 10.47 for the 64-item tiles before);
        # not in ieee, where that tile spills ~900 B a thread (compile_check.py, sm_90)
        wide = HP <= 256 and prec != "ieee"
        default = ((32, 128) if wide else (32, 64) if HP <= 256 else (16, 64) if HP <= 512
                   else (16, 32)) + (_full_ce_k_block(H), 8)
    dBM, dBN, dBK, warps = _full_ce_tiles("dh", default)
    per_split, S = _split_plan(launch.cdiv(b, dBM), N, dBN, h.device)
    _ce_full_dh_kernel[(launch.cdiv(b, dBM), S)](
        h, weight, bias, targets, stats.m, stats.inv_z, stats.coef, dh, b, N, H, h.stride(0),
        weight.stride(0), per_split,
        BM=dBM, BN=dBN, BK=dBK, HP=HP, PREC=prec, num_warps=warps)
    return dh


def _launch_full_ce_dw(h, weight, bias, targets, stats: FullCEStats, out: int, dw, db,
                       adagrad=None, extra=None, precision=None):
    """_ce_full_dw_kernel over the catalog's item tiles (see its OUT modes). adagrad: (w_acc,
    w_vel, b_acc, b_vel, lr, momentum, eps) with the velocities None without momentum; extra:
    (slot (N,) int32, rows (n_extra, H) fp32)."""
    prec = resolve_precision(precision)
    b, H = h.shape
    N = weight.shape[0]
    HP = _pow2(H)
    w_acc, w_vel, b_acc, b_vel, lr, momentum, eps = adagrad or (dw, None, db, None, 0.0, 0.0,
                                                                 0.0)
    has_momentum = w_vel is not None
    slot, rows = extra if extra is not None else (targets, dw)
    if launch.interpreter_blocks():
        default = min(32, _pow2(b)), 128, _full_ce_k_block(H), 4
    else:
        # H <= 256: 64-row blocks, the fastest of sweep_tiles.py's candidates on an H200 (N 1M,
        # b 512, H 256, tf32: 7.25 ms against 9.72 for 32-row blocks before)
        default = (64 if HP <= 256 else 32), (32 if HP <= 256 else 16), _full_ce_k_block(H), 8
    wBM, wBN, wBK, warps = _full_ce_tiles("dw", default)
    _ce_full_dw_kernel[(launch.cdiv(N, wBN),)](
        h, weight, bias, targets, stats.m, stats.inv_z, stats.coef, dw, db,
        w_acc, w_vel if has_momentum else w_acc, b_acc, b_vel if has_momentum else b_acc,
        slot, rows, rows.shape[0], float(lr), float(momentum), float(eps),
        b, N, H, h.stride(0), weight.stride(0), OUT=out, HAS_MOMENTUM=has_momentum,
        HAS_EXTRA=extra is not None, BM=wBM, BN=wBN, BK=wBK, HP=HP, PREC=prec,
        num_warps=warps)


def full_ce_fused(h, weight, bias, targets, *, scale=1.0, grads=True, d_weight_out=None,
                  d_bias_out=None, precision=None):
    """Full-catalog cross-entropy Σ_i -log(softmax(h_i·Wᵀ + bias)[t_i] + 1e-24) without the
    (b, N) score matrix. Returns (loss_sum, dh, d_weight (N, H), d_bias (N,)) with the gradients
    scaled by ``scale`` (None without grads). d_weight_out / d_bias_out (fp32, contiguous): add
    the gradients into these buffers instead of allocating (e.g. an optimizer's grad buffer)."""
    h, weight, bias = catalog_inputs(h, weight, bias)
    b, H = h.shape
    N = weight.shape[0]
    targets = contracts.index_vector("targets", targets, b)
    contracts.check_catalog_grad_buffers(d_weight_out, d_bias_out)
    for name, t, shape in (("d_weight_out", d_weight_out, (N, H)), ("d_bias_out", d_bias_out, (N,))):
        if t is not None and (tuple(t.shape) != shape or t.dtype != torch.float32
                              or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous fp32 {shape} tensor (got "
                             f"{t.dtype}, shape {tuple(t.shape)}, strides {t.stride()})")
    loss_sum, stats = full_ce_forward(h, weight, bias, targets, scale=scale, precision=precision)
    if not grads:
        return loss_sum, None, None, None
    dh = full_ce_dh(h, weight, bias, targets, stats, precision=precision)
    accum = d_weight_out is not None
    dW = d_weight_out if accum else launch.new_output((N, H), torch.float32, h.device)
    db = d_bias_out if accum else launch.new_output((N,), torch.float32, h.device)
    _launch_full_ce_dw(h, weight, bias, targets, stats, _DW_ACCUM if accum else _DW_STORE, dW, db,
                       precision=precision)
    return loss_sum, dh, dW, db


def full_ce_adagrad_update(h, weight, bias, targets, stats: FullCEStats, w_acc, w_vel, b_acc,
                           b_vel, lr, momentum, eps, *, extra_ids=None, extra_rows=None,
                           precision=None):
    """The Adagrad-momentum update (REFERENCE §4) of the item table weight (N, H) and bias (N,)
    IN PLACE by the full-catalog cross-entropy's gradient (stats from full_ce_forward with the
    same h, weight, bias, targets; run full_ce_dh first: it reads the table before the update),
    without storing that N × H gradient: each item tile's gradient is recomputed and applied
    where it is made. extra_ids (L,) / extra_rows (L, H): further gradient rows of the table
    (repeats allowed, summed), added before the update (the shared embedding's input rows).
    w_vel / b_vel: None without momentum; eps: the optimizer's (ops.optim.EPS). Tables and
    states: contiguous, same dtype as made by the optimizer; no host sync."""
    h, _, _ = catalog_inputs(h, weight, bias)
    N, H = weight.shape
    for name, t, shape in (("weight", weight, (N, H)), ("w_acc", w_acc, (N, H)),
                           ("w_vel", w_vel, (N, H)), ("bias", bias, (N,)), ("b_acc", b_acc, (N,)),
                           ("b_vel", b_vel, (N,))):
        if t is not None and (tuple(t.shape) != shape or not t.is_contiguous()
                              or t.device != h.device):
            raise ValueError(f"full-catalog update: {name} must be a contiguous {shape} tensor "
                             f"on {h.device} (got shape {tuple(t.shape)}, strides {t.stride()}, "
                             f"{t.device})")
    if (w_vel is None) != (b_vel is None) or (w_vel is None) != (float(momentum) == 0.0):
        raise ValueError("full-catalog update: pass both velocities with momentum > 0, neither "
                         "without")
    extra = None
    if extra_ids is not None:
        L = extra_ids.shape[0]
        extra_ids = contracts.index_vector("extra_ids", extra_ids, L)
        if tuple(extra_rows.shape) != (L, H):
            raise ValueError(f"extra_rows must be ({L}, {H}) (got {tuple(extra_rows.shape)})")
        # each item's first position among the extra ids (L where absent), and the rows summed
        # at that position: fixed shapes, no sync (torch.unique would sync)
        ids64 = extra_ids.long()
        slot = torch.full((N,), L, dtype=torch.int32, device=h.device)
        slot.scatter_reduce_(0, ids64, torch.arange(L, dtype=torch.int32, device=h.device),
                             reduce="amin")
        summed = torch.zeros((L, H), dtype=torch.float32, device=h.device)
        summed.index_add_(0, slot[ids64].long(), extra_rows.float())
        extra = (slot, summed)
    _launch_full_ce_dw(h, weight, bias, targets, stats, _DW_ADAGRAD, weight, bias,
                       adagrad=(w_acc, w_vel, b_acc, b_vel, lr, momentum, eps), extra=extra,
                       precision=precision)
