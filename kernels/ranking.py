"""Triton kernels for full-catalog ranking (REFERENCE §5) and top-k.

Rank counts, two launches, O(b) extra memory (plus a (splits, b) partial-count buffer):
  1. ``_rank_target_kernel``  each row's target score, taken from the very tile (same row block,
                              same item tile, same ``_score_tile`` code and block sizes) that the
                              counting pass computes, so the target is bit-equal to "itself".
  2. ``_rank_count_kernel``   streams item tiles per (row block, catalog split), counting
                              scores > and == the target.
Top-k: ``_topk_tile_kernel`` keeps the best min(k, BN) of each item tile per row, as int64 keys
(order-preserving score bits << 32 | (2³²-1 - index)), so sorting keys descending orders by score
and then by the LOWER index; the launcher merges the candidates with torch.topk on the keys.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import contracts, launch
from .scoring import _pow2, _score_tile, _split_plan, catalog_inputs, resolve_precision


def _blocks(b: int, H: int):
    if launch.interpreter_blocks():
        return min(32, _pow2(b)), 256, min(64, _pow2(H))   # little padding: see kernels/scoring.py
    return 64, 128, 32


@triton.jit
def _rank_target_kernel(p_h, p_w, p_bias, p_tgt, p_ts, b, N, H, stride_h, stride_w,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    pid_m, r = tl.program_id(0), tl.program_id(1)
    row = pid_m * BM + r
    if row < b:
        t = tl.load(p_tgt + row)
        o_m = pid_m * BM + tl.arange(0, BM)
        m_m = o_m < b
        o_n = (t // BN) * BN + tl.arange(0, BN)
        m_n = o_n < N
        s = _score_tile(p_h, p_w, p_bias, o_m, m_m, o_n, m_n, H, stride_h, stride_w, BM, BN, BK, PREC)
        v = tl.sum(tl.sum(tl.where((o_m[:, None] == row) & (o_n[None, :] == t), s, 0.0), axis=1), axis=0)
        tl.store(p_ts + row, v)


@triton.jit
def _rank_count_kernel(p_h, p_w, p_bias, p_ts, p_gt, p_eq, b, N, H, stride_h, stride_w,
                       items_per_split,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    pid_m, pid_s = tl.program_id(0), tl.program_id(1)
    o_m = pid_m * BM + tl.arange(0, BM)
    m_m = o_m < b
    ts = tl.load(p_ts + o_m, mask=m_m, other=0.0)
    n_gt = tl.zeros((BM,), dtype=tl.int32)
    n_eq = tl.zeros((BM,), dtype=tl.int32)
    lo = pid_s * items_per_split
    hi = tl.minimum(lo + items_per_split, N)
    for n0 in range(lo, hi, BN):
        o_n = n0 + tl.arange(0, BN)
        m_n = o_n < N
        s = _score_tile(p_h, p_w, p_bias, o_m, m_m, o_n, m_n, H, stride_h, stride_w, BM, BN, BK, PREC)
        ok = m_n[None, :] & (o_n[None, :] < hi)
        n_gt += tl.sum(tl.where(ok & (s > ts[:, None]), 1, 0), axis=1)
        n_eq += tl.sum(tl.where(ok & (s == ts[:, None]), 1, 0), axis=1)
    tl.store(p_gt + pid_s * b + o_m, n_gt, mask=m_m)
    tl.store(p_eq + pid_s * b + o_m, n_eq, mask=m_m)


def rank_counts_fused(h, weight, bias, targets, *, precision=None):
    """(n_greater, n_equal) int64 (b,) of each row's target among all N scores h·Wᵀ + bias."""
    prec = resolve_precision(precision)
    h, weight, bias = catalog_inputs(h, weight, bias)
    b, H = h.shape
    N = weight.shape[0]
    dev = h.device
    launch.require_cuda("the triton rank", h, weight)
    targets = contracts.index_vector("targets", targets, b)
    BM, BN, BK = _blocks(b, H)
    n_rb = launch.cdiv(b, BM)
    ts = launch.new_output((b,), torch.float32, dev)
    _rank_target_kernel[(n_rb, BM)](h, weight, bias, targets, ts, b, N, H, h.stride(0),
                                    weight.stride(0), BM=BM, BN=BN, BK=BK, PREC=prec)
    per_split, S = _split_plan(n_rb, N, BN, dev)
    gt = launch.new_output((S, b), torch.int32, dev)
    eq = launch.new_output((S, b), torch.int32, dev)
    _rank_count_kernel[(n_rb, S)](h, weight, bias, ts, gt, eq, b, N, H, h.stride(0),
                                  weight.stride(0), per_split, BM=BM, BN=BN, BK=BK, PREC=prec)
    return gt.sum(0, dtype=torch.int64), eq.sum(0, dtype=torch.int64)


_MAX_KEYS = 1 << 26   # candidate keys (int64) held at once: 512 MB; also keeps offsets in int32


@triton.jit
def _topk_tile_kernel(p_h, p_w, p_bias, p_cand, b, N, H, stride_h, stride_w, KT, n_cand,
                      n_row_blocks,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ALL: tl.constexpr,
                      PREC: tl.constexpr):
    # one flat grid axis of n_row_blocks × item tiles: CUDA caps grid axes y and z at 65,535,
    # fewer than the item tiles of a 4.2M catalog at BN 64. Row blocks vary fastest, so the
    # programs running together read the same (BN, H) item tile (from L2).
    pid = tl.program_id(0)
    pid_m, pid_n = pid % n_row_blocks, pid // n_row_blocks
    o_m = pid_m * BM + tl.arange(0, BM)
    m_m = o_m < b
    o_n = pid_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    s = _score_tile(p_h, p_w, p_bias, o_m, m_m, o_n, m_n, H, stride_h, stride_w, BM, BN, BK, PREC)
    s = tl.where(s == 0.0, 0.0, s)                      # -0.0 ties with +0.0
    bits = s.to(tl.int32, bitcast=True)
    # every NaN as the one positive quiet NaN: above +inf, tied among themselves (by index),
    # as a descending torch.sort orders them (a sign-bit NaN, e.g. inf + -inf on x86, would
    # otherwise sort last)
    bits = tl.where(s != s, 0x7FC00000, bits)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = (ordered.to(tl.int64) << 32) + (4294967295 - o_n.to(tl.int64))[None, :]
    key = tl.where(m_n[None, :], key, -9223372036854775807 - 1)
    base = p_cand + o_m[:, None] * n_cand + pid_n * KT
    if ALL:
        tl.store(base + tl.arange(0, BN)[None, :], key, mask=m_m[:, None] & (tl.arange(0, BN)[None, :] < KT))
    else:
        for i in range(0, KT):
            best = tl.max(key, axis=1)
            tl.store(p_cand + o_m * n_cand + pid_n * KT + i, best, mask=m_m)
            key = tl.where(key == best[:, None], -9223372036854775807 - 1, key)


def _decode_keys(keys: torch.Tensor):
    idx = 4294967295 - (keys & 0xFFFFFFFF)
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.view(torch.float32), idx


def topk_fused(h, weight, bias, k: int, *, precision=None):
    """(values fp32 (b, k), indices int64 (b, k)) of the k best items per row, best first, ties
    to the lower index. k <= N.

    Each program scores a (BM, BN) tile and keeps its KT = min(k, BN) best keys (KT passes of a
    row max; when KT >= BN all its keys); torch.topk merges the candidates. Rows are done in
    chunks of at most _MAX_KEYS candidate keys (many rows × a large catalog).
    GPU tiles: BN 512 for k <= 64 (shared memory: the pipelined (BK, BN) fp32 W tile and the
    (BM, BN) int64 keys must fit sm_90's 227 KB; 1024 does not, benchmarks/compile_check.py);
    for larger k, KT passes cost more than keeping every score, so BN = 64 <= k."""
    prec = resolve_precision(precision)
    h, weight, bias = catalog_inputs(h, weight, bias)
    b, H = h.shape
    N = weight.shape[0]
    if not 0 < k <= N:
        raise ValueError(f"k must be in 1..{N} (got {k})")
    launch.require_cuda("the triton top-k", h, weight)
    if b == 0:
        return (torch.empty((0, k), dtype=torch.float32, device=h.device),
                torch.empty((0, k), dtype=torch.int64, device=h.device))
    BM, BN, BK = _blocks(b, H)
    if not launch.interpreter_blocks():
        BM, BN = 16, (512 if k <= 64 else 64)
    n_tiles = launch.cdiv(N, BN)
    KT = min(k, BN)
    n_cand = n_tiles * KT
    rows_per_chunk = max(1, _MAX_KEYS // n_cand)
    values, indices = [], []
    for r0 in range(0, b, rows_per_chunk):
        hc = h[r0:r0 + rows_per_chunk]
        bc = hc.shape[0]
        cand = launch.new_output((bc, n_cand), torch.int64, h.device)
        n_rb = launch.cdiv(bc, BM)
        _topk_tile_kernel[(n_rb * n_tiles,)](     # n_rb · n_tiles <= max(2^26, n_tiles) < 2^31
            hc, weight, bias, cand, bc, N, H, hc.stride(0), weight.stride(0), KT, n_cand, n_rb,
            BM=BM, BN=BN, BK=BK, ALL=KT >= BN, PREC=prec,
            num_warps=4 if launch.interpreter_blocks() else 8)
        v, i = _decode_keys(torch.topk(cand, k, dim=1, sorted=True).values)
        values.append(v)
        indices.append(i)
    if len(values) == 1:
        return values[0], indices[0]
    return torch.cat(values), torch.cat(indices)
