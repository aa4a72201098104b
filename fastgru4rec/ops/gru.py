"""One GRU step (REFERENCE §3), plain-torch reference.

Shapes: b lanes, H hidden units; ``gi`` is the input projection x·W_ihᵀ + b_ih (b, 3H) with
gate blocks in the order [r, z, n] (torch.nn.GRUCell's order); ``h`` is (b, H);
``weight_hh`` is (3H, H).

Two entry points, each with backend "torch" | "triton" | "auto" (auto: triton for CUDA tensors):
- ``gru_step(gi, h, weight_hh, bias_hh, variant)``: the step from a precomputed projection;
- ``gru_step_fused(x, h, weight_ih, bias_ih, weight_hh, bias_hh, variant, idx=, reset=,
  dropout_in=, dropout_out=, seed=, stream=)``: projection (or embedding lookup / one-hot row
  gather), lane resets, step and dropout in one op (kernels/gru_step.py), with its plain-torch
  reference ``gru_step_fused_reference`` (same dropout bits, see ``dropout_keep_mask``).
The triton path is registered as the custom op ``torch.ops.fastgru4rec.gru_step_fwd``
(backward: ``gru_step_bwd``), so torch.compile traces it without a graph break; an eager call
runs the same kernels through a torch.autograd.Function instead (_GRUStepFunction), without the
custom op's dispatch (see there).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .backend import load_contracts, load_kernels, resolve_backend

_contracts = load_contracts()


def gru_step_reference(gi: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
                       bias_hh: Optional[torch.Tensor], variant: str) -> torch.Tensor:
    """h' for one step.

    cell (torch.nn.GRUCell):  r = σ(gi_r + h W_hr + b_hr), z = σ(gi_z + h W_hz + b_hz),
                              n = tanh(gi_n + r ⊙ (h W_hn + b_hn)),  h' = (1 - z) ⊙ n + z ⊙ h
    original (Theano GRU4Rec): r = σ(gi_r + h W_hr), z = σ(gi_z + h W_hz),
                              c = tanh(gi_c + (r ⊙ h) W_hc),        h' = (1 - z) ⊙ h + z ⊙ c
    (the original form has a single bias per gate, folded into gi; bias_hh must be None.)
    """
    _contracts.check_step_shapes(gi, h, None, None, weight_hh, bias_hh, None, None)
    return _gru_step_torch(gi, h, weight_hh, bias_hh, variant)


def _gru_step_torch(gi, h, weight_hh, bias_hh, variant: str) -> torch.Tensor:
    """gru_step_reference's arithmetic, its arguments already checked."""
    H = h.shape[1]
    if variant == "cell":
        gh = torch.nn.functional.linear(h, weight_hh, bias_hh)          # (b, 3H)
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        return n + z * (h - n)
    if variant == "original":
        if bias_hh is not None:
            raise ValueError("the original GRU variant has no bias_hh")
        rz = torch.sigmoid(gi[:, :2 * H] + h @ weight_hh[:2 * H].t())   # (b, 2H)
        r, z = rz[:, :H], rz[:, H:]
        c = torch.tanh(gi[:, 2 * H:] + (r * h) @ weight_hh[2 * H:].t())
        return h + z * (c - h)
    raise ValueError(f"unknown GRU variant {variant!r} (original, cell)")


def gru_step(gi, h, weight_hh, bias_hh, variant: str, backend: str = "auto"):
    """h' (b, H) from the input projection gi (b, 3H) and h (b, H) (see gru_step_reference).

    backend: "torch" (the reference), "triton" (the fused kernel, gi as projection rows),
    "auto" (triton for CUDA tensors when triton is installed, torch otherwise).
    """
    if _resolve_backend(backend, h) == "torch":
        return gru_step_reference(gi, h, weight_hh, bias_hh, variant)
    # seed as a device tensor (no dropout here, its value is unused): no host-to-device copy,
    # so a CUDA graph can capture the step
    return gru_step_fused(gi, h, None, None, weight_hh, bias_hh, variant, backend="triton",
                          seed=torch.zeros(1, dtype=torch.int64, device=h.device))


# ============================================================================ fused step
# The fused step: input projection (or gathered projection rows), reset of restarting lanes,
# recurrent product, gates and output dropout in one op. The torch reference below and the
# Triton kernels (kernels/gru_step.py) share the counter-based dropout mask, so both backends
# give the same result for the same seed.

_M32 = 0xFFFFFFFF
_M31 = 0x7FFFFFFF
PRECISIONS = ("ieee", "tf32", "tf32x3")


def _mix32(x):
    """The kernels' 32-bit mixer, on int64 tensors holding uint32 values (no overflow:
    x < 2^32 times a constant < 2^31)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5F356495) & _M32
    return x ^ (x >> 16)


def dropout_salt(stream: int, which: int) -> int:
    """Salt of a dropout stream: ``stream`` (e.g. the layer index), which 0 = input, 1 = output."""
    return ((2 * int(stream) + int(which) + 1) * 0x2545F491) & _M31


def dropout_keep_mask(seed, n_rows: int, n_cols: int, p: float, stream: int = 0, which: int = 1,
                      device=None) -> torch.Tensor:
    """The (n_rows, n_cols) bool keep mask of the fused step's dropout (bit-identical to the
    kernels'): element (i, j) is kept iff (mix32(uint32(i·n_cols + j) ^ key) >> 8) >=
    round(p·2^24), key = mix32(mix32(seed & 0x7fffffff) ^ salt(stream, which)).
    seed: int or int64 tensor with one element (stays on its device: no host sync)."""
    if isinstance(seed, torch.Tensor):
        device = seed.device if device is None else device
        s = seed.reshape(()).to(device=device, dtype=torch.int64) & _M31
    else:
        s = torch.tensor(int(seed) & _M31, dtype=torch.int64, device=device)
    key = _mix32(_mix32(s) ^ dropout_salt(stream, which))
    c = (torch.arange(n_rows, dtype=torch.int64, device=device)[:, None] * n_cols
         + torch.arange(n_cols, dtype=torch.int64, device=device)[None, :]) & _M32
    thr = int(round(float(p) * (1 << 24)))
    return (_mix32(c ^ key) >> 8) >= thr


def _dropout_hash(x: torch.Tensor, p: float, seed, stream: int, which: int) -> torch.Tensor:
    if p <= 0:
        return x
    keep = dropout_keep_mask(seed, x.shape[0], x.shape[1], p, stream, which, device=x.device)
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


def _check_args(variant: str, bias_hh, dropout_in: float, dropout_out: float):
    if variant not in ("cell", "original"):
        raise ValueError(f"unknown GRU variant {variant!r} (original, cell)")
    if variant == "original" and bias_hh is not None:
        raise ValueError("the original GRU variant has no bias_hh")
    for p in (dropout_in, dropout_out):
        check_dropout_probability(p)


#: p as a float in [0, 1), else ValueError (the kernels' check; GRU4RecModel.step's too)
check_dropout_probability = _contracts.check_dropout_probability


def gru_step_fused_reference(x: torch.Tensor, h: torch.Tensor, weight_ih: Optional[torch.Tensor],
                             bias_ih: Optional[torch.Tensor], weight_hh: torch.Tensor,
                             bias_hh: Optional[torch.Tensor], variant: str, *,
                             idx: Optional[torch.Tensor] = None,
                             reset: Optional[torch.Tensor] = None, dropout_in: float = 0.0,
                             dropout_out: float = 0.0, seed=0, stream: int = 0) -> torch.Tensor:
    """Plain-torch reference of :func:`gru_step_fused` (same arguments, autograd by torch)."""
    _check_args(variant, bias_hh, dropout_in, dropout_out)
    _contracts.check_step_shapes(x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset)
    return _gru_step_fused_torch(x, h, weight_ih, bias_ih, weight_hh, bias_hh, variant, idx,
                                 reset, dropout_in, dropout_out, seed, stream)


def _gru_step_fused_torch(x, h, weight_ih, bias_ih, weight_hh, bias_hh, variant, idx, reset,
                          dropout_in, dropout_out, seed, stream) -> torch.Tensor:
    """gru_step_fused_reference's arithmetic, its arguments already checked."""
    rows = x if idx is None else x.index_select(0, idx)
    if weight_ih is None:
        gi = rows if bias_ih is None else rows + bias_ih
    else:
        gi = torch.nn.functional.linear(_dropout_hash(rows, dropout_in, seed, stream, 0),
                                        weight_ih, bias_ih)
    if reset is not None:
        h = h.masked_fill(reset.to(torch.bool)[:, None], 0.0)
    h_new = _gru_step_torch(gi, h, weight_hh, bias_hh, variant)
    return _dropout_hash(h_new, dropout_out, seed, stream, 1)


def _kernels():
    return load_kernels("gru_step")


def _resolve_backend(backend: str, like: torch.Tensor) -> str:
    return resolve_backend(backend, like, "GRU step")


#: int seeds as device tensors, made once: a fresh torch.tensor on CUDA is a host-to-device copy
#: (synchronous from pageable memory) in every call; the kernels only read the seed
_SEED_TENSORS: dict = {}


def _seed_tensor(seed, device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    key = (torch.device(device), int(seed))
    t = _SEED_TENSORS.get(key)
    if t is None:
        if len(_SEED_TENSORS) >= 64:          # e.g. a caller passing a new int every step
            _SEED_TENSORS.clear()
        t = _SEED_TENSORS[key] = torch.tensor([key[1]], dtype=torch.int64, device=device)
    return t


@torch.library.custom_op("fastgru4rec::gru_step_fwd", mutates_args=())
def _gru_step_fwd_op(x: torch.Tensor, h: torch.Tensor, weight_ih: Optional[torch.Tensor],
                     bias_ih: Optional[torch.Tensor], weight_hh: torch.Tensor,
                     bias_hh: Optional[torch.Tensor], idx: Optional[torch.Tensor],
                     reset: Optional[torch.Tensor], seed: torch.Tensor, variant: str,
                     dropout_in: float, dropout_out: float, stream: int,
                     precision: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return _kernels().gru_fwd(x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset, seed,
                              variant, dropout_in, dropout_out, stream, precision)


@_gru_step_fwd_op.register_fake
def _(x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset, seed, variant, dropout_in,
      dropout_out, stream, precision):
    B, H = h.shape
    return h.new_empty(B, H), h.new_empty(B, 4 * H, dtype=torch.float32)


@torch.library.custom_op("fastgru4rec::gru_step_bwd", mutates_args=())
def _gru_step_bwd_op(dout: torch.Tensor, x: torch.Tensor, h: torch.Tensor,
                     weight_ih: Optional[torch.Tensor], weight_hh: torch.Tensor,
                     idx: Optional[torch.Tensor], reset: Optional[torch.Tensor],
                     seed: torch.Tensor, save: torch.Tensor, variant: str, has_bias_ih: bool,
                     has_bias_hh: bool, dropout_in: float, dropout_out: float, stream: int,
                     precision: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dh, dwih, dbih, dwhh, dbhh = _gru_step_grads(
        dout, x, h, weight_ih, weight_hh, idx, reset, seed, save, variant, has_bias_ih,
        has_bias_hh, dropout_in, dropout_out, stream, precision)
    return (dx, dh, dwih if dwih is not None else h.new_empty(0),
            dbih if dbih is not None else h.new_empty(0), dwhh,
            dbhh if dbhh is not None else h.new_empty(0))


def _gru_step_grads(dout, x, h, weight_ih, weight_hh, idx, reset, seed, save, variant,
                    has_bias_ih, has_bias_hh, dropout_in, dropout_out, stream, precision):
    """The backward kernels: (dx, dh, dweight_ih, dbias_ih, dweight_hh, dbias_hh), None for an
    absent parameter; with idx, dx is the dense gradient of the table the rows came from."""
    dx, dh, dwih, dbih, dwhh, dbhh = _kernels().gru_bwd(
        dout, x, h, weight_ih, weight_hh, idx, reset, seed, save, variant, has_bias_ih,
        has_bias_hh, dropout_in, dropout_out, stream, precision)
    if idx is not None:   # rows -> the (dense) gradient of the table they were gathered from
        dx = torch.zeros_like(x).index_add_(0, idx, dx.to(x.dtype))
    return dx, dh, dwih, dbih, dwhh, dbhh


@_gru_step_bwd_op.register_fake
def _(dout, x, h, weight_ih, weight_hh, idx, reset, seed, save, variant, has_bias_ih,
      has_bias_hh, dropout_in, dropout_out, stream, precision):
    H3 = weight_hh.shape[0]
    return (torch.empty_like(x), torch.empty_like(h),
            torch.empty_like(weight_ih) if weight_ih is not None else h.new_empty(0),
            weight_hh.new_empty(H3) if has_bias_ih else h.new_empty(0),
            torch.empty_like(weight_hh),
            weight_hh.new_empty(H3) if has_bias_hh else h.new_empty(0))


def _gru_step_setup_context(ctx, inputs, output):
    (x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset, seed, variant, dropout_in,
     dropout_out, stream, precision) = inputs
    ctx.save_for_backward(x, h, weight_ih, weight_hh, idx, reset, seed, output[1])
    # the saved gates (output[1]) never get a gradient: no zero-filled one per backward
    ctx.set_materialize_grads(False)
    ctx.meta = (variant, bias_ih is not None, bias_hh is not None, dropout_in, dropout_out,
                stream, precision)


def _saved_step_grads(ctx, d_out, grads):
    """What _gru_step_setup_context saved, through ``grads`` (the backward custom op, or
    _gru_step_grads in an eager call): (dx, dh, dweight_ih, dbias_ih, dweight_hh, dbias_hh),
    None for an absent parameter."""
    x, h, weight_ih, weight_hh, idx, reset, seed, save = ctx.saved_tensors
    variant, has_bih, has_bhh, dropout_in, dropout_out, stream, precision = ctx.meta
    if d_out is None:
        d_out = torch.zeros_like(h)
    dx, dh, dwih, dbih, dwhh, dbhh = grads(
        d_out, x, h, weight_ih, weight_hh, idx, reset, seed, save, variant, has_bih, has_bhh,
        dropout_in, dropout_out, stream, precision)
    return (dx, dh, dwih if weight_ih is not None else None, dbih if has_bih else None, dwhh,
            dbhh if has_bhh else None)


def _gru_step_backward(ctx, d_out, d_save):
    return _saved_step_grads(ctx, d_out, _gru_step_bwd_op) + (None,) * 8


torch.library.register_autograd("fastgru4rec::gru_step_fwd", _gru_step_backward,
                                setup_context=_gru_step_setup_context)


class _GRUStepFunction(torch.autograd.Function):
    """The custom op's forward and backward for eager calls: the same kernels, the same saved
    tensors, without torch.library's dispatch. That dispatch (its argument handling and
    autograd wrapper) took about 165 µs of a 350 µs forward + backward's host time on a 2-core
    CPU, more than the kernels' own host code (~100 µs); the first H200 run had the eager fused
    step at 1.1-1.5 ms against torch.nn.GRUCell's 0.4-0.9 ms, all of it host time at those sizes.
    Under torch.compile the custom op is used (gru_step_fused), which Dynamo traces."""

    @staticmethod
    def forward(ctx, x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset, seed, variant,
                dropout_in, dropout_out, stream, precision):
        inputs = (x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset, seed, variant,
                  dropout_in, dropout_out, stream, precision)
        out, save = _kernels().gru_fwd(*inputs)
        _gru_step_setup_context(ctx, inputs, (out, save))
        return out

    @staticmethod
    def backward(ctx, d_out):
        if torch.is_grad_enabled() and d_out is not None and d_out.requires_grad:
            # create_graph=True through the step: the kernels give first derivatives only. An
            # error here, as the custom op gives, rather than gradients whose own dependence
            # on the inputs is silently dropped (once_differentiable raises only if a later
            # backward happens to reach its node)
            raise RuntimeError("the fused GRU step (backend 'triton') has no second derivative: "
                               "use backend='torch' for create_graph=True")
        return _saved_step_grads(ctx, d_out, _gru_step_grads) + (None,) * 8


def gru_step_fused(x: torch.Tensor, h: torch.Tensor, weight_ih: Optional[torch.Tensor],
                   bias_ih: Optional[torch.Tensor], weight_hh: torch.Tensor,
                   bias_hh: Optional[torch.Tensor], variant: str, *,
                   idx: Optional[torch.Tensor] = None, reset: Optional[torch.Tensor] = None,
                   dropout_in: float = 0.0, dropout_out: float = 0.0, seed=0, stream: int = 0,
                   backend: str = "auto", precision: str = "ieee") -> torch.Tensor:
    """One fused GRU layer step; returns h' after output dropout (b, H) (what is carried as the
    next state and fed to the next layer).

    x: the input rows (n, E) with weight_ih (3H, E), bias_ih (3H,) or None; or, with
       weight_ih None, the input projection rows (n, 3H) (one-hot mode: the (N, 3H) table)
       to which bias_ih (3H,) is added.
    idx: optional int64 (b,) rows of x to use (the embedding lookup fused into the step; the
       gradient of x is then dense (n, ·), rows scattered). Without idx, n = b.
    h: (b, H); weight_hh (3H, H); bias_hh (3H,) ("cell") or None (required None in "original").
    reset: optional bool or integer (b,): lanes whose session restarts (nonzero), their h is
       taken as 0.
    dropout_in: inverted dropout on the input rows x (not on projection rows);
    dropout_out: on h'. Masks come from the counter-based hash of (seed, stream, row, col)
       (:func:`dropout_keep_mask`); seed is an int or an int64 tensor of one element (pass a
       device tensor to avoid a host-to-device copy and to capture the step in a CUDA graph);
       stream tells layers apart (use the layer index).
    backend: "torch" (plain-torch reference), "triton" (fused kernels, CUDA tensors or
       TRITON_INTERPRET=1), "auto" (triton for CUDA tensors, torch otherwise).
    precision: tl.dot input precision of the triton path: "ieee" (fp32, default), "tf32",
       "tf32x3". bf16 weights/activations are accepted (fp32 accumulation; gates saved fp32).
    """
    _check_args(variant, bias_hh, dropout_in, dropout_out)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    # before reset is converted below: the same arguments refused on both backends
    _contracts.check_step_shapes(x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset)
    if _resolve_backend(backend, h) == "torch":
        return _gru_step_fused_torch(x, h, weight_ih, bias_ih, weight_hh, bias_hh, variant, idx,
                                     reset, dropout_in, dropout_out, seed, stream)
    if reset is not None and reset.dtype != torch.bool:
        reset = reset != 0
    args = (x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset,
            _seed_tensor(seed, h.device), variant, float(dropout_in), float(dropout_out),
            int(stream), precision)
    if torch.compiler.is_compiling():
        return torch.ops.fastgru4rec.gru_step_fwd(*args)[0]
    return _GRUStepFunction.apply(*args)
