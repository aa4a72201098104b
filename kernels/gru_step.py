"""Fused GRU step (REFERENCE §3): forward in one launch, backward in two.

Forward (one launch): the input projection (x·W_ihᵀ + b_ih with the rows of x optionally
gathered by ``idx`` and dropped out in the kernel, or the rows of a precomputed/one-hot table
(n, 3H) gathered by ``idx``), the recurrent product, the gates, the reset of restarting lanes
(h := 0 where reset), dropout of the output (seeded, counter-based hash) -> h' and the saved
gates (b, 4H) fp32.

Backward: launch 1 (per row block) computes the gate gradients dg (b, 4H), dh and the input
gradient (dx rows (b, E), or the rows of the table (b, 3H)); launch 2 reduces over the batch
for dW_ih, dW_hh, db_ih, db_hh.

Variants: "cell" (torch.nn.GRUCell) and "original" (Theano GRU4Rec, reset gate applied to h
before the recurrent product, no bias_hh). The original variant needs r over all H columns
before its candidate product, so its kernels own whole rows (grid over row blocks) and run in
phases separated by a CTA barrier; the cell variant tiles rows × columns.

Gate order in every 3H block: [r, z, n]. Saved gates: cell [r, z, n, h·W_hnᵀ + b_hn];
original [r, z, c, r ⊙ h]. Gate gradients dg: cell [dr̂, dẑ, dn̂, d(h·W_hn+b_hn)] (pre-activation);
original [dr̂, dẑ, dĉ, dh's fp32 partial sums (the backward's scratch)].

Dropout keep mask of element (row, col) of an (rows, ncols) tensor:
    key  = mix32(mix32(seed & 0x7fffffff) ^ salt)
    keep = (mix32(uint32(row·ncols + col) ^ key) >> 8) >= round(p · 2^24)
with mix32 below; ``fastgru4rec.ops.gru.dropout_keep_mask`` computes the same bits in torch.

Interpreter rules (DESIGN.md): no block pointers, no libdevice (tanh = 2σ(2x) − 1), loads are
cast to fp32 (bf16 arithmetic is wrong in the interpreter), dot precision is a parameter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import contracts, launch

_MASK31 = 0x7FFFFFFF


def dropout_salt(stream: int, which: int) -> int:
    """The 31-bit salt of a dropout stream (which: 0 = input, 1 = output)."""
    return ((2 * int(stream) + int(which) + 1) * 0x2545F491) & _MASK31


def dropout_threshold(p: float) -> int:
    return int(round(float(p) * (1 << 24)))


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x5F356495
    x = x ^ (x >> 16)
    return x


@triton.jit
def _keep(seed_ptr, salt, o_r, o_c, ncols, thr):
    """(R, C) bool keep mask for rows o_r (R,) and columns o_c (C,) of an (·, ncols) tensor."""
    # salt and thr are int32 (or constexpr when Triton specialises a 1): they promote to
    # uint32 against the uint32 tensors, no explicit cast (a constexpr has no .to)
    s = (tl.load(seed_ptr) & 0x7FFFFFFF).to(tl.uint32)
    key = _mix32(_mix32(s) ^ salt)
    c = (o_r[:, None] * ncols + o_c[None, :]).to(tl.uint32)
    return (_mix32(c ^ key) >> 8) >= thr


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _load_h(h_ptr, reset_ptr, o_m, m_m, o_c, m_c, H, HAS_RESET: tl.constexpr):
    """h[o_m, o_c] in fp32 with restarting lanes zeroed."""
    b_h = tl.load(h_ptr + o_m[:, None] * H + o_c[None, :], mask=m_m[:, None] & m_c[None, :],
                  other=0.0).to(tl.float32)
    if HAS_RESET:
        rst = tl.load(reset_ptr + o_m, mask=m_m, other=0)
        b_h = tl.where((rst == 0)[:, None], b_h, 0.0)
    return b_h


@triton.jit
def _load_x(x_ptr, xrow, o_m, m_m, o_k, m_k, E, seed_ptr, salt_in, thr_in, scale_in,
            DROP_IN: tl.constexpr):
    """The (dropped-out) input rows x[xrow, o_k] in fp32."""
    b_x = tl.load(x_ptr + xrow[:, None] * E + o_k[None, :], mask=m_m[:, None] & m_k[None, :],
                  other=0.0).to(tl.float32)
    if DROP_IN:
        keep = _keep(seed_ptr, salt_in, o_m, o_k, E, thr_in)
        b_x = tl.where(keep, b_x * scale_in, 0.0)
    return b_x


@triton.jit
def _xw_gate(x_ptr, xrow, wih_ptr, gate, o_m, m_m, o_n, m_n, H, E,
             seed_ptr, salt_in, thr_in, scale_in, DROP_IN: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """x[o_m] · W_ih[gate·H + o_n]ᵀ  (BM, BN)."""
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, E, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < E
        b_x = _load_x(x_ptr, xrow, o_m, m_m, o_k, m_k, E, seed_ptr, salt_in, thr_in, scale_in,
                      DROP_IN)
        b_w = tl.load(wih_ptr + (gate * H + o_n[None, :]) * E + o_k[:, None],
                      mask=m_k[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(b_x, b_w, input_precision=PREC)
    return acc


@triton.jit
def _gi_gate(x_ptr, xrow, wih_ptr, bih_ptr, gate, o_m, m_m, o_n, m_n, H, E,
             seed_ptr, salt_in, thr_in, scale_in,
             PROJ: tl.constexpr, HAS_BIH: tl.constexpr, DROP_IN: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """The input projection of one gate, gi[o_m, gate·H + o_n] (BM, BN) in fp32."""
    if PROJ:
        acc = _xw_gate(x_ptr, xrow, wih_ptr, gate, o_m, m_m, o_n, m_n, H, E,
                       seed_ptr, salt_in, thr_in, scale_in, DROP_IN, BM, BN, BK, PREC)
    else:
        acc = tl.load(x_ptr + xrow[:, None] * (3 * H) + gate * H + o_n[None, :],
                      mask=m_m[:, None] & m_n[None, :], other=0.0).to(tl.float32)
    if HAS_BIH:
        acc += tl.load(bih_ptr + gate * H + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _hw_gate(a_ptr, reset_ptr, whh_ptr, gate, o_m, m_m, o_n, m_n, H, stride_a,
             HAS_RESET: tl.constexpr, CG: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """a[o_m, :H] · W_hh[gate·H + o_n]ᵀ (BM, BN); a has row stride stride_a (h, or r ⊙ h in
    the save buffer, read with .cg since this program wrote it)."""
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, H, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < H
        p_a = a_ptr + o_m[:, None] * stride_a + o_k[None, :]
        m_a = m_m[:, None] & m_k[None, :]
        if CG:
            b_a = tl.load(p_a, mask=m_a, other=0.0, cache_modifier=".cg").to(tl.float32)
        else:
            b_a = tl.load(p_a, mask=m_a, other=0.0).to(tl.float32)
        if HAS_RESET:
            rst = tl.load(reset_ptr + o_m, mask=m_m, other=0)
            b_a = tl.where((rst == 0)[:, None], b_a, 0.0)
        b_w = tl.load(whh_ptr + (gate * H + o_n[None, :]) * H + o_k[:, None],
                      mask=m_k[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(b_a, b_w, input_precision=PREC)
    return acc


@triton.jit
def _dg_w(dg_ptr, col0, w_ptr, row0, o_m, m_m, o_n, m_n, H, ncols_w,
          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """dg[o_m, col0 : col0 + H] · W[row0 : row0 + H, o_n]  (BM, BN); dg (b, 4H) fp32 was
    written by this program (read with .cg)."""
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, H, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < H
        b_g = tl.load(dg_ptr + o_m[:, None] * (4 * H) + col0 + o_k[None, :],
                      mask=m_m[:, None] & m_k[None, :], other=0.0, cache_modifier=".cg")
        b_w = tl.load(w_ptr + (row0 + o_k[:, None]) * ncols_w + o_n[None, :],
                      mask=m_k[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(b_g, b_w, input_precision=PREC)
    return acc


@triton.jit
def _dout(dout_ptr, o_m, m_m, o_n, m_n, H, seed_ptr, salt_out, thr_out, scale_out,
          DROP_OUT: tl.constexpr):
    """The gradient of h' (before the output dropout)."""
    d = tl.load(dout_ptr + o_m[:, None] * H + o_n[None, :], mask=m_m[:, None] & m_n[None, :],
                other=0.0).to(tl.float32)
    if DROP_OUT:
        keep = _keep(seed_ptr, salt_out, o_m, o_n, H, thr_out)
        d = tl.where(keep, d * scale_out, 0.0)
    return d


# ----------------------------------------------------------------------------- forward
@triton.jit
def _gru_fwd_cell_kernel(
        x_ptr, idx_ptr, wih_ptr, bih_ptr, h_ptr, whh_ptr, bhh_ptr, reset_ptr, seed_ptr,
        out_ptr, save_ptr,
        B, H, E, salt_in, thr_in, scale_in, salt_out, thr_out, scale_out,
        PROJ: tl.constexpr, HAS_IDX: tl.constexpr, HAS_BIH: tl.constexpr,
        HAS_BHH: tl.constexpr, HAS_RESET: tl.constexpr, DROP_IN: tl.constexpr,
        DROP_OUT: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    o_m = pid_m * BM + tl.arange(0, BM)
    m_m = o_m < B
    o_n = pid_n * BN + tl.arange(0, BN)
    m_n = o_n < H
    if HAS_IDX:
        xrow = tl.load(idx_ptr + o_m, mask=m_m, other=0).to(tl.int64)
    else:
        xrow = o_m.to(tl.int64)

    a_r = _gi_gate(x_ptr, xrow, wih_ptr, bih_ptr, 0, o_m, m_m, o_n, m_n, H, E, seed_ptr, salt_in,
                   thr_in, scale_in, PROJ, HAS_BIH, DROP_IN, BM, BN, BK, PREC)
    a_z = _gi_gate(x_ptr, xrow, wih_ptr, bih_ptr, 1, o_m, m_m, o_n, m_n, H, E, seed_ptr, salt_in,
                   thr_in, scale_in, PROJ, HAS_BIH, DROP_IN, BM, BN, BK, PREC)
    a_in = _gi_gate(x_ptr, xrow, wih_ptr, bih_ptr, 2, o_m, m_m, o_n, m_n, H, E, seed_ptr, salt_in,
                    thr_in, scale_in, PROJ, HAS_BIH, DROP_IN, BM, BN, BK, PREC)
    a_r += _hw_gate(h_ptr, reset_ptr, whh_ptr, 0, o_m, m_m, o_n, m_n, H, H, HAS_RESET, False,
                    BM, BN, BK, PREC)
    a_z += _hw_gate(h_ptr, reset_ptr, whh_ptr, 1, o_m, m_m, o_n, m_n, H, H, HAS_RESET, False,
                    BM, BN, BK, PREC)
    a_hn = _hw_gate(h_ptr, reset_ptr, whh_ptr, 2, o_m, m_m, o_n, m_n, H, H, HAS_RESET, False,
                    BM, BN, BK, PREC)
    if HAS_BHH:
        a_r += tl.load(bhh_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
        a_z += tl.load(bhh_ptr + H + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
        a_hn += tl.load(bhh_ptr + 2 * H + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    r = _sigmoid(a_r)
    z = _sigmoid(a_z)
    n = _tanh(a_in + r * a_hn)
    b_h = _load_h(h_ptr, reset_ptr, o_m, m_m, o_n, m_n, H, HAS_RESET)
    hn = n + z * (b_h - n)
    if DROP_OUT:
        keep = _keep(seed_ptr, salt_out, o_m, o_n, H, thr_out)
        hn = tl.where(keep, hn * scale_out, 0.0)
    m_mn = m_m[:, None] & m_n[None, :]
    tl.store(out_ptr + o_m[:, None] * H + o_n[None, :], hn, mask=m_mn)
    p_s = save_ptr + o_m[:, None] * (4 * H) + o_n[None, :]
    tl.store(p_s, r, mask=m_mn)
    tl.store(p_s + H, z, mask=m_mn)
    tl.store(p_s + 2 * H, n, mask=m_mn)
    tl.store(p_s + 3 * H, a_hn, mask=m_mn)


@triton.jit
def _gru_fwd_original_kernel(
        x_ptr, idx_ptr, wih_ptr, bih_ptr, h_ptr, whh_ptr, bhh_ptr, reset_ptr, seed_ptr,
        out_ptr, save_ptr,
        B, H, E, salt_in, thr_in, scale_in, salt_out, thr_out, scale_out,
        PROJ: tl.constexpr, HAS_IDX: tl.constexpr, HAS_BIH: tl.constexpr,
        HAS_BHH: tl.constexpr, HAS_RESET: tl.constexpr, DROP_IN: tl.constexpr,
        DROP_OUT: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    o_m = pid_m * BM + tl.arange(0, BM)
    m_m = o_m < B
    if HAS_IDX:
        xrow = tl.load(idx_ptr + o_m, mask=m_m, other=0).to(tl.int64)
    else:
        xrow = o_m.to(tl.int64)
    # phase 1: r, z and r ⊙ h for every column block of this row block
    for n0 in range(0, H, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < H
        a_r = _gi_gate(x_ptr, xrow, wih_ptr, bih_ptr, 0, o_m, m_m, o_n, m_n, H, E, seed_ptr,
                       salt_in, thr_in, scale_in, PROJ, HAS_BIH, DROP_IN, BM, BN, BK, PREC)
        a_z = _gi_gate(x_ptr, xrow, wih_ptr, bih_ptr, 1, o_m, m_m, o_n, m_n, H, E, seed_ptr,
                       salt_in, thr_in, scale_in, PROJ, HAS_BIH, DROP_IN, BM, BN, BK, PREC)
        a_r += _hw_gate(h_ptr, reset_ptr, whh_ptr, 0, o_m, m_m, o_n, m_n, H, H, HAS_RESET, False,
                        BM, BN, BK, PREC)
        a_z += _hw_gate(h_ptr, reset_ptr, whh_ptr, 1, o_m, m_m, o_n, m_n, H, H, HAS_RESET, False,
                        BM, BN, BK, PREC)
        r = _sigmoid(a_r)
        z = _sigmoid(a_z)
        b_h = _load_h(h_ptr, reset_ptr, o_m, m_m, o_n, m_n, H, HAS_RESET)
        m_mn = m_m[:, None] & m_n[None, :]
        p_s = save_ptr + o_m[:, None] * (4 * H) + o_n[None, :]
        tl.store(p_s, r, mask=m_mn)
        tl.store(p_s + H, z, mask=m_mn)
        tl.store(p_s + 3 * H, r * b_h, mask=m_mn)
    tl.debug_barrier()
    # phase 2: c = tanh(gi_c + (r ⊙ h) W_hcᵀ), h' = h + z (c − h)
    for n0 in range(0, H, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < H
        a_c = _gi_gate(x_ptr, xrow, wih_ptr, bih_ptr, 2, o_m, m_m, o_n, m_n, H, E, seed_ptr,
                       salt_in, thr_in, scale_in, PROJ, HAS_BIH, DROP_IN, BM, BN, BK, PREC)
        a_c += _hw_gate(save_ptr + 3 * H, reset_ptr, whh_ptr, 2, o_m, m_m, o_n, m_n, H, 4 * H,
                        False, True, BM, BN, BK, PREC)
        c = _tanh(a_c)
        m_mn = m_m[:, None] & m_n[None, :]
        p_s = save_ptr + o_m[:, None] * (4 * H) + o_n[None, :]
        z = tl.load(p_s + H, mask=m_mn, other=0.0, cache_modifier=".cg")
        b_h = _load_h(h_ptr, reset_ptr, o_m, m_m, o_n, m_n, H, HAS_RESET)
        hn = b_h + z * (c - b_h)
        if DROP_OUT:
            keep = _keep(seed_ptr, salt_out, o_m, o_n, H, thr_out)
            hn = tl.where(keep, hn * scale_out, 0.0)
        tl.store(out_ptr + o_m[:, None] * H + o_n[None, :], hn, mask=m_mn)
        tl.store(p_s + 2 * H, c, mask=m_mn)


# ----------------------------------------------------------------------------- backward 1
@triton.jit
def _cell_dg(dout_ptr, save_ptr, h_ptr, reset_ptr, seed_ptr, o_m, m_m, o_k, m_k, H,
             salt_out, thr_out, scale_out, HAS_RESET: tl.constexpr, DROP_OUT: tl.constexpr):
    """Cell gate gradients of columns o_k: (dr̂, dẑ, dn̂, d(hW_hn + b_hn), dh through z)."""
    d = _dout(dout_ptr, o_m, m_m, o_k, m_k, H, seed_ptr, salt_out, thr_out, scale_out, DROP_OUT)
    p_s = save_ptr + o_m[:, None] * (4 * H) + o_k[None, :]
    m_mk = m_m[:, None] & m_k[None, :]
    r = tl.load(p_s, mask=m_mk, other=0.0)
    z = tl.load(p_s + H, mask=m_mk, other=0.0)
    n = tl.load(p_s + 2 * H, mask=m_mk, other=0.0)
    ghn = tl.load(p_s + 3 * H, mask=m_mk, other=0.0)
    b_h = _load_h(h_ptr, reset_ptr, o_m, m_m, o_k, m_k, H, HAS_RESET)
    dan = d * (1.0 - z) * (1.0 - n * n)
    daz = d * (b_h - n) * z * (1.0 - z)
    dar = dan * ghn * r * (1.0 - r)
    dghn = dan * r
    return dar, daz, dan, dghn, d * z


@triton.jit
def _gru_bwd_cell_kernel(
        dout_ptr, x_ptr, idx_ptr, wih_ptr, h_ptr, whh_ptr, reset_ptr, seed_ptr, save_ptr,
        dg_ptr, dh_ptr, dx_ptr,
        B, H, E, salt_in, thr_in, scale_in, salt_out, thr_out, scale_out,
        PROJ: tl.constexpr, HAS_RESET: tl.constexpr, DROP_IN: tl.constexpr,
        DROP_OUT: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Grid (row blocks, column blocks of max(H, E)). Each program writes dg and dh of its
    (rows, columns < H) and dx of its (rows, columns < E); the gate gradients of the other
    columns it needs for the products are recomputed (elementwise, cheap) instead of read."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    o_m = pid_m * BM + tl.arange(0, BM)
    m_m = o_m < B
    o_n = pid_n * BN + tl.arange(0, BN)
    m_nh = o_n < H
    dar, daz, dan, dghn, acc_h = _cell_dg(dout_ptr, save_ptr, h_ptr, reset_ptr, seed_ptr, o_m,
                                          m_m, o_n, m_nh, H, salt_out, thr_out, scale_out,
                                          HAS_RESET, DROP_OUT)
    m_mn = m_m[:, None] & m_nh[None, :]
    p_g = dg_ptr + o_m[:, None] * (4 * H) + o_n[None, :]
    tl.store(p_g, dar, mask=m_mn)
    tl.store(p_g + H, daz, mask=m_mn)
    tl.store(p_g + 2 * H, dan, mask=m_mn)
    tl.store(p_g + 3 * H, dghn, mask=m_mn)
    if not PROJ:
        # the input is the projection itself: its gradient is dgi = [dr̂, dẑ, dn̂]
        p_x = dx_ptr + o_m[:, None] * (3 * H) + o_n[None, :]
        tl.store(p_x, dar, mask=m_mn)
        tl.store(p_x + H, daz, mask=m_mn)
        tl.store(p_x + 2 * H, dan, mask=m_mn)
    m_ne = o_n < E
    acc_x = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, H, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < H
        kar, kaz, kan, kghn, _unused = _cell_dg(dout_ptr, save_ptr, h_ptr, reset_ptr, seed_ptr,
                                                o_m, m_m, o_k, m_k, H, salt_out, thr_out,
                                                scale_out, HAS_RESET, DROP_OUT)
        p_w = whh_ptr + o_k[:, None] * H + o_n[None, :]
        m_w = m_k[:, None] & m_nh[None, :]
        acc_h += tl.dot(kar, tl.load(p_w, mask=m_w, other=0.0).to(tl.float32),
                        input_precision=PREC)
        acc_h += tl.dot(kaz, tl.load(p_w + H * H, mask=m_w, other=0.0).to(tl.float32),
                        input_precision=PREC)
        acc_h += tl.dot(kghn, tl.load(p_w + 2 * H * H, mask=m_w, other=0.0).to(tl.float32),
                        input_precision=PREC)
        if PROJ:
            p_v = wih_ptr + o_k[:, None] * E + o_n[None, :]
            m_v = m_k[:, None] & m_ne[None, :]
            acc_x += tl.dot(kar, tl.load(p_v, mask=m_v, other=0.0).to(tl.float32),
                            input_precision=PREC)
            acc_x += tl.dot(kaz, tl.load(p_v + H * E, mask=m_v, other=0.0).to(tl.float32),
                            input_precision=PREC)
            acc_x += tl.dot(kan, tl.load(p_v + 2 * H * E, mask=m_v, other=0.0).to(tl.float32),
                            input_precision=PREC)
    if HAS_RESET:
        rst = tl.load(reset_ptr + o_m, mask=m_m, other=0)
        acc_h = tl.where((rst == 0)[:, None], acc_h, 0.0)
    tl.store(dh_ptr + o_m[:, None] * H + o_n[None, :], acc_h, mask=m_mn)
    if PROJ:
        if DROP_IN:
            keep = _keep(seed_ptr, salt_in, o_m, o_n, E, thr_in)
            acc_x = tl.where(keep, acc_x * scale_in, 0.0)
        tl.store(dx_ptr + o_m[:, None] * E + o_n[None, :], acc_x,
                 mask=m_m[:, None] & m_ne[None, :])


@triton.jit
def _gru_bwd_original_kernel(
        dout_ptr, x_ptr, idx_ptr, wih_ptr, h_ptr, whh_ptr, reset_ptr, seed_ptr, save_ptr,
        dg_ptr, dh_ptr, dx_ptr,
        B, H, E, salt_in, thr_in, scale_in, salt_out, thr_out, scale_out,
        PROJ: tl.constexpr, HAS_RESET: tl.constexpr, DROP_IN: tl.constexpr,
        DROP_OUT: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Grid (row blocks,). Three phases over the column blocks of this row block:
    1) dẑ, dĉ and dh through z;  2) d(r⊙h) = dĉ W_hc, dr̂, dh through r⊙h;
    3) dh += [dr̂, dẑ] W_hrz, reset, and the input gradient."""
    pid_m = tl.program_id(0)
    o_m = pid_m * BM + tl.arange(0, BM)
    m_m = o_m < B
    for n0 in range(0, H, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < H
        m_mn = m_m[:, None] & m_n[None, :]
        d = _dout(dout_ptr, o_m, m_m, o_n, m_n, H, seed_ptr, salt_out, thr_out, scale_out,
                  DROP_OUT)
        p_s = save_ptr + o_m[:, None] * (4 * H) + o_n[None, :]
        z = tl.load(p_s + H, mask=m_mn, other=0.0)
        c = tl.load(p_s + 2 * H, mask=m_mn, other=0.0)
        b_h = _load_h(h_ptr, reset_ptr, o_m, m_m, o_n, m_n, H, HAS_RESET)
        p_g = dg_ptr + o_m[:, None] * (4 * H) + o_n[None, :]
        tl.store(p_g + H, d * (c - b_h) * z * (1.0 - z), mask=m_mn)
        tl.store(p_g + 2 * H, d * z * (1.0 - c * c), mask=m_mn)
        # dh is summed over the three phases in dg's 4th block (fp32; this variant's weight
        # gradients do not read it) and stored in h's dtype once, in phase 3: a bf16 dh
        # buffer rounded the partial sums twice more
        tl.store(p_g + 3 * H, d * (1.0 - z), mask=m_mn)
    tl.debug_barrier()
    for n0 in range(0, H, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < H
        m_mn = m_m[:, None] & m_n[None, :]
        drh = _dg_w(dg_ptr, 2 * H, whh_ptr, 2 * H, o_m, m_m, o_n, m_n, H, H, BM, BN, BK, PREC)
        r = tl.load(save_ptr + o_m[:, None] * (4 * H) + o_n[None, :], mask=m_mn, other=0.0)
        b_h = _load_h(h_ptr, reset_ptr, o_m, m_m, o_n, m_n, H, HAS_RESET)
        tl.store(dg_ptr + o_m[:, None] * (4 * H) + o_n[None, :], drh * b_h * r * (1.0 - r),
                 mask=m_mn)
        p_dh = dg_ptr + o_m[:, None] * (4 * H) + 3 * H + o_n[None, :]
        dh = tl.load(p_dh, mask=m_mn, other=0.0, cache_modifier=".cg")
        tl.store(p_dh, dh + drh * r, mask=m_mn)
    tl.debug_barrier()
    if HAS_RESET:
        rst = tl.load(reset_ptr + o_m, mask=m_m, other=0)
    for n0 in range(0, H, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < H
        m_mn = m_m[:, None] & m_n[None, :]
        dh = tl.load(dg_ptr + o_m[:, None] * (4 * H) + 3 * H + o_n[None, :], mask=m_mn,
                     other=0.0, cache_modifier=".cg")
        dh += _dg_w(dg_ptr, 0, whh_ptr, 0, o_m, m_m, o_n, m_n, H, H, BM, BN, BK, PREC)
        dh += _dg_w(dg_ptr, H, whh_ptr, H, o_m, m_m, o_n, m_n, H, H, BM, BN, BK, PREC)
        if HAS_RESET:
            dh = tl.where((rst == 0)[:, None], dh, 0.0)
        tl.store(dh_ptr + o_m[:, None] * H + o_n[None, :], dh, mask=m_mn)
        if not PROJ:
            p_g = dg_ptr + o_m[:, None] * (4 * H) + o_n[None, :]
            p_x = dx_ptr + o_m[:, None] * (3 * H) + o_n[None, :]
            tl.store(p_x, tl.load(p_g, mask=m_mn, other=0.0, cache_modifier=".cg"), mask=m_mn)
            tl.store(p_x + H, tl.load(p_g + H, mask=m_mn, other=0.0, cache_modifier=".cg"),
                     mask=m_mn)
            tl.store(p_x + 2 * H, tl.load(p_g + 2 * H, mask=m_mn, other=0.0, cache_modifier=".cg"),
                     mask=m_mn)
    if PROJ:
        for e0 in range(0, E, BN):
            o_e = e0 + tl.arange(0, BN)
            m_e = o_e < E
            acc = _dg_w(dg_ptr, 0, wih_ptr, 0, o_m, m_m, o_e, m_e, H, E, BM, BN, BK, PREC)
            acc += _dg_w(dg_ptr, H, wih_ptr, H, o_m, m_m, o_e, m_e, H, E, BM, BN, BK, PREC)
            acc += _dg_w(dg_ptr, 2 * H, wih_ptr, 2 * H, o_m, m_m, o_e, m_e, H, E, BM, BN, BK, PREC)
            if DROP_IN:
                keep = _keep(seed_ptr, salt_in, o_m, o_e, E, thr_in)
                acc = tl.where(keep, acc * scale_in, 0.0)
            tl.store(dx_ptr + o_m[:, None] * E + o_e[None, :], acc,
                     mask=m_m[:, None] & m_e[None, :])


# ----------------------------------------------------------------------------- backward 2
@triton.jit
def _gru_bwd_weights_kernel(
        x_ptr, idx_ptr, h_ptr, reset_ptr, seed_ptr, save_ptr, dg_ptr,
        dwih_ptr, dbih_ptr, dwhh_ptr, dbhh_ptr,
        B, H, E, n_hh, salt_in, thr_in, scale_in,
        CELL: tl.constexpr, PROJ: tl.constexpr, HAS_IDX: tl.constexpr, HAS_BIH: tl.constexpr,
        HAS_BHH: tl.constexpr, HAS_RESET: tl.constexpr, DROP_IN: tl.constexpr,
        BI: tl.constexpr, BJ: tl.constexpr, BB: tl.constexpr, PREC: tl.constexpr):
    """Grid (row blocks of 3H, column blocks of H then of E). dW_hh = dghᵀ · [h | r⊙h],
    dW_ih = dgiᵀ · x_dropped, biases = column sums (by the first column block)."""
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    o_i = pid_i * BI + tl.arange(0, BI)
    m_i = o_i < 3 * H
    if CELL:
        col_h = tl.where(o_i >= 2 * H, o_i + H, o_i)   # dgh_n lives in dg's 4th block
    else:
        col_h = o_i
    if pid_j < n_hh:
        o_j = pid_j * BJ + tl.arange(0, BJ)
        m_j = o_j < H
        acc = tl.zeros((BI, BJ), dtype=tl.float32)
        for b0 in range(0, B, BB):
            o_b = b0 + tl.arange(0, BB)
            m_b = o_b < B
            m_ib = m_i[:, None] & m_b[None, :]
            b_g = tl.load(dg_ptr + o_b[None, :] * (4 * H) + col_h[:, None], mask=m_ib, other=0.0)
            b_h = _load_h(h_ptr, reset_ptr, o_b, m_b, o_j, m_j, H, HAS_RESET)
            if CELL:
                acc += tl.dot(b_g, b_h, input_precision=PREC)
            else:
                b_rh = tl.load(save_ptr + o_b[:, None] * (4 * H) + 3 * H + o_j[None, :],
                               mask=m_b[:, None] & m_j[None, :], other=0.0)
                is_c = (o_i >= 2 * H)[:, None]
                acc += tl.dot(tl.where(is_c, 0.0, b_g), b_h, input_precision=PREC)
                acc += tl.dot(tl.where(is_c, b_g, 0.0), b_rh, input_precision=PREC)
        tl.store(dwhh_ptr + o_i[:, None] * H + o_j[None, :], acc, mask=m_i[:, None] & m_j[None, :])
        if pid_j == 0:
            s_h = tl.zeros((BI,), dtype=tl.float32)
            s_i = tl.zeros((BI,), dtype=tl.float32)
            for b0 in range(0, B, BB):
                o_b = b0 + tl.arange(0, BB)
                m_ib = m_i[:, None] & (o_b < B)[None, :]
                s_h += tl.sum(tl.load(dg_ptr + o_b[None, :] * (4 * H) + col_h[:, None], mask=m_ib,
                                      other=0.0), axis=1)
                s_i += tl.sum(tl.load(dg_ptr + o_b[None, :] * (4 * H) + o_i[:, None], mask=m_ib,
                                      other=0.0), axis=1)
            if HAS_BHH:
                tl.store(dbhh_ptr + o_i, s_h, mask=m_i)
            if HAS_BIH:
                tl.store(dbih_ptr + o_i, s_i, mask=m_i)
    else:
        if PROJ:
            o_j = (pid_j - n_hh) * BJ + tl.arange(0, BJ)
            m_j = o_j < E
            acc = tl.zeros((BI, BJ), dtype=tl.float32)
            for b0 in range(0, B, BB):
                o_b = b0 + tl.arange(0, BB)
                m_b = o_b < B
                if HAS_IDX:
                    xrow = tl.load(idx_ptr + o_b, mask=m_b, other=0).to(tl.int64)
                else:
                    xrow = o_b.to(tl.int64)
                b_g = tl.load(dg_ptr + o_b[None, :] * (4 * H) + o_i[:, None],
                              mask=m_i[:, None] & m_b[None, :], other=0.0)
                b_x = _load_x(x_ptr, xrow, o_b, m_b, o_j, m_j, E, seed_ptr, salt_in, thr_in,
                              scale_in, DROP_IN)
                acc += tl.dot(b_g, b_x, input_precision=PREC)
            tl.store(dwih_ptr + o_i[:, None] * E + o_j[None, :], acc,
                     mask=m_i[:, None] & m_j[None, :])


# ----------------------------------------------------------------------------- launchers
def _np2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, launch.next_pow2(max(int(n), 1))))


def _blocks(B: int, H: int, E: int, variant: str):
    """(BM, BN, BK, num_warps) of the step kernels. The interpreter pays per program and per
    op, not per flop: large blocks there. GPU: small blocks for parallelism (the step is
    latency bound). BK 16 and BN 32: with BK 32 / BN 64 ptxas gave the cell backward at H 100
    with ieee dots (the training default) 32 registers and ~9 KB of spills per thread, and
    most step kernels 255 registers plus spills; at 16 / 32 none of the sizes the GPU check
    runs spills more than 56 bytes (benchmarks/compile_check.py, sm_90, Triton 3.6 and 3.9).
    Not yet timed on a GPU."""
    if launch.interpreter_blocks():
        return _np2(B, 16, 512), _np2(H, 16, 512), _np2(max(H, E), 16, 128), 4
    if variant == "original":
        return 16, _np2(H, 16, 32), 16, 4
    return _np2(B, 16, 32), _np2(H, 16, 32), 16, 4


def _dropout_args(p: float, stream: int, which: int):
    p = contracts.check_dropout_probability(p)
    return dropout_salt(stream, which), dropout_threshold(p), 1.0 / (1.0 - p), p > 0.0


def _reset_arg(reset: torch.Tensor) -> torch.Tensor:
    """The (b,) reset flags as the kernels read them (nonzero: the lane restarts; checked by
    contracts.check_step_shapes): bool as uint8, integer flags as they are (e.g. a view into
    the engine's int64 step row); a strided view is copied (the kernels read element i at
    offset i)."""
    reset = reset.contiguous()
    return reset.view(torch.uint8) if reset.dtype == torch.bool else reset


def _dummy(ref: torch.Tensor) -> torch.Tensor:
    return torch.empty(1, dtype=torch.float32, device=ref.device)


def gru_fwd(x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset, seed, variant: str,
            dropout_in: float, dropout_out: float, stream: int, precision: str):
    """Launch the fused forward. Shapes: x (n, E) with weight_ih (3H, E), or x (n, 3H) the
    projection rows with weight_ih None; idx (b,) int rows of x (None: n = b); h (b, H);
    weight_hh (3H, H); biases (3H,) or None; reset (b,) bool or integer flags or None; seed
    int64 (1,).
    Returns (h' after output dropout (b, H) in h's dtype, saved gates (b, 4H) fp32)."""
    launch.require_cuda("the triton GRU step", x, h)
    contracts.check_step_shapes(x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset)
    B, H = h.shape
    proj = weight_ih is not None
    E = weight_ih.shape[1] if proj else 3 * H
    x, h, weight_hh = x.contiguous(), h.contiguous(), weight_hh.contiguous()
    idx = idx.contiguous() if idx is not None else None
    bias_ih = bias_ih.contiguous() if bias_ih is not None else None
    bias_hh = bias_hh.contiguous() if bias_hh is not None else None
    out = launch.poisoned(torch.empty_like(h))
    save = launch.poisoned(torch.empty(B, 4 * H, dtype=torch.float32, device=h.device))
    if B == 0:
        return out, save
    salt_in, thr_in, scale_in, drop_in = _dropout_args(dropout_in, stream, 0)
    salt_out, thr_out, scale_out, drop_out = _dropout_args(dropout_out, stream, 1)
    drop_in = drop_in and proj
    d = _dummy(h)
    BM, BN, BK, nw = _blocks(B, H, E, variant)
    args = (x, idx if idx is not None else d, weight_ih.contiguous() if proj else d,
            bias_ih if bias_ih is not None else d, h, weight_hh,
            bias_hh if bias_hh is not None else d,
            _reset_arg(reset) if reset is not None else d, seed, out, save,
            B, H, E, salt_in, thr_in, scale_in, salt_out, thr_out, scale_out)
    meta = dict(PROJ=proj, HAS_IDX=idx is not None, HAS_BIH=bias_ih is not None,
                HAS_BHH=bias_hh is not None, HAS_RESET=reset is not None, DROP_IN=drop_in,
                DROP_OUT=drop_out, BM=BM, BN=BN, BK=BK, PREC=precision, num_warps=nw)
    if variant == "cell":
        _gru_fwd_cell_kernel[(launch.cdiv(B, BM), launch.cdiv(H, BN))](*args, **meta)
    else:
        _gru_fwd_original_kernel[(launch.cdiv(B, BM),)](*args, **meta)
    return out, save


def gru_bwd(dout, x, h, weight_ih, weight_hh, idx, reset, seed, save, variant: str,
            has_bias_ih: bool, has_bias_hh: bool, dropout_in: float, dropout_out: float,
            stream: int, precision: str, dx_out=None):
    """Launch the backward (two launches). Returns (dx_rows, dh, dweight_ih, dbias_ih,
    dweight_hh, dbias_hh): dx_rows (b, E) or (b, 3H) are the gradients of the rows x[idx] (the
    caller scatters them into the table), written into dx_out (contiguous, x's dtype) when
    given; absent parameters give None."""
    contracts.check_step_shapes(x, h, weight_ih, None, weight_hh, None, idx, reset)
    B, H = h.shape
    proj = weight_ih is not None
    E = weight_ih.shape[1] if proj else 3 * H
    if dout.shape != h.shape or save.shape != (B, 4 * H):
        raise ValueError(f"dout must be {(B, H)} and save {(B, 4 * H)} (got "
                         f"{tuple(dout.shape)}, {tuple(save.shape)})")
    dout, x, h, save = dout.contiguous(), x.contiguous(), h.contiguous(), save.contiguous()
    idx = idx.contiguous() if idx is not None else None
    weight_hh = weight_hh.contiguous()
    weight_ih = weight_ih.contiguous() if proj else None
    dg = launch.poisoned(torch.empty(B, 4 * H, dtype=torch.float32, device=h.device))
    dh = launch.poisoned(torch.empty_like(h))
    if dx_out is not None:
        if dx_out.shape != (B, E) or dx_out.dtype != x.dtype or not dx_out.is_contiguous():
            raise ValueError(f"dx_out must be a contiguous {x.dtype} ({B}, {E}) tensor")
        dx = dx_out
    else:
        dx = launch.poisoned(torch.empty(B, E, dtype=x.dtype, device=x.device))
    wdt = weight_hh.dtype
    dwhh = launch.poisoned(torch.empty_like(weight_hh))
    dwih = launch.poisoned(torch.empty_like(weight_ih)) if proj else None
    dbih = launch.poisoned(torch.empty(3 * H, dtype=wdt, device=h.device)) if has_bias_ih else None
    dbhh = launch.poisoned(torch.empty(3 * H, dtype=wdt, device=h.device)) if has_bias_hh else None
    if B == 0:
        for t in (dwhh, dwih, dbih, dbhh):
            if t is not None:
                t.zero_()
        return dx, dh, dwih, dbih, dwhh, dbhh
    salt_in, thr_in, scale_in, drop_in = _dropout_args(dropout_in, stream, 0)
    salt_out, thr_out, scale_out, drop_out = _dropout_args(dropout_out, stream, 1)
    drop_in = drop_in and proj
    d = _dummy(h)
    idx_a = idx if idx is not None else d
    reset_a = _reset_arg(reset) if reset is not None else d
    BM, BN, BK, nw = _blocks(B, H, E, variant)
    args = (dout, x, idx_a, weight_ih if proj else d, h, weight_hh, reset_a, seed, save,
            dg, dh, dx, B, H, E, salt_in, thr_in, scale_in, salt_out, thr_out, scale_out)
    meta = dict(PROJ=proj, HAS_RESET=reset is not None, DROP_IN=drop_in, DROP_OUT=drop_out,
                BM=BM, BN=BN, BK=BK, PREC=precision, num_warps=nw)
    if variant == "cell":
        grid = (launch.cdiv(B, BM), launch.cdiv(max(H, E) if proj else H, BN))
        _gru_bwd_cell_kernel[grid](*args, **meta)
    else:
        _gru_bwd_original_kernel[(launch.cdiv(B, BM),)](*args, **meta)
    if launch.interpreter_blocks():
        BI, BJ, BB = _np2(3 * H, 16, 512), _np2(max(H, E), 16, 512), _np2(B, 16, 512)
    else:
        BI, BJ, BB = 32, 64, 16   # no spills at ieee either (64, 64, 32: up to 500 B)
    n_hh = launch.cdiv(H, BJ)
    n_ih = launch.cdiv(E, BJ) if proj else 0
    _gru_bwd_weights_kernel[(launch.cdiv(3 * H, BI), n_hh + n_ih)](
        x, idx_a, h, reset_a, seed, save, dg,
        dwih if proj else d, dbih if dbih is not None else d, dwhh,
        dbhh if dbhh is not None else d,
        B, H, E, n_hh, salt_in, thr_in, scale_in,
        CELL=variant == "cell", PROJ=proj, HAS_IDX=idx is not None, HAS_BIH=has_bias_ih,
        HAS_BHH=has_bias_hh, HAS_RESET=reset is not None, DROP_IN=drop_in,
        BI=BI, BJ=BJ, BB=BB, PREC=precision, num_warps=4)
    return dx, dh, dwih, dbih, dwhh, dbhh
