"""The gradients of one sampled training step of the shared-embedding model with an explicit
backward: the fast engine's GPU step (REFERENCE §3-4).

A step with b lanes and the item ids Y = [targets ; samples] (C,):
    x_0 = W[inp]                       (the shared embedding: rows of the output table W)
    h_l = GRU_l(x_l, h_l(prev))        reset lanes restart from 0; dropout on x_0 (p_embed) and
                                       on every h_l (p_hidden), carried as the state
    R   = h_L · W[Y]ᵀ + bias[Y];  loss = Σ_lanes loss(R) / B
Gradients: every GRU parameter (dense), and one row per OCCURRENCE for the item table (the b
input rows, then the C columns) and the bias (the C columns); the optimizer sums repeats.

backend "triton": no autograd; per layer the fused forward kernel (embedding gather, input
projection, reset, gates, both dropouts in one launch), the fused sampled score + loss +
gradients (4 launches), per layer the fused backward (2 launches). backend "torch": the same
function by plain autograd over the references (gru_step_fused_reference, sampled_loss_reference):
the oracle the kernels are tested against. Dropout masks in both: the counter-based hash of
(seed, layer, row, column) (ops.gru.dropout_keep_mask), so a device seed tensor advanced per step
keeps the step capturable in a CUDA graph. (The eager reference loop draws its dropout with a
torch.Generator instead: same distribution, other masks.)
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from .backend import load_kernels, resolve_backend
from .gru import gru_step_fused_reference
from .scoring import fused_sampled_loss_and_grads, logq_columns, sampled_loss_reference


class StepGrads(NamedTuple):
    """loss: 0-d (already / B). new_hidden: list of (b, H_l) (after dropout, detached).
    dense: one gradient per tensor of ``dense_params`` (same order). item_ids (b + C,) with
    item_grads (b + C, H); bias_ids (C,) with bias_grads (C,)."""
    loss: torch.Tensor
    new_hidden: List[torch.Tensor]
    dense: List[torch.Tensor]
    item_ids: torch.Tensor
    item_grads: torch.Tensor
    bias_ids: torch.Tensor
    bias_grads: torch.Tensor


def dense_params(layers: Sequence[torch.nn.Module]) -> List[torch.Tensor]:
    """The GRU parameters in StepGrads.dense's order: per layer weight_ih, bias_ih, weight_hh,
    then bias_hh when the layer has one ("cell")."""
    out = []
    for layer in layers:
        out += [layer.weight_ih, layer.bias_ih, layer.weight_hh]
        if layer.bias_hh is not None:
            out.append(layer.bias_hh)
    return out


def shared_step_grads(W: torch.Tensor, bias: torch.Tensor, layers, inp: torch.Tensor,
                      Y: torch.Tensor, hidden: List[torch.Tensor], reset: torch.Tensor,
                      seed: torch.Tensor, *, loss: str, batch_size: int,
                      dropout_embed: float, dropout_hidden: float,
                      logq_per_column: Optional[torch.Tensor] = None, logq: float = 0.0,
                      bpreg: float = 0.0, elu_param: float = 0.0, backend: str = "auto",
                      precision: Optional[str] = None,
                      item_ids: Optional[torch.Tensor] = None,
                      log_support: Optional[torch.Tensor] = None,
                      sample_alpha: float = 1.0) -> StepGrads:
    """The step's loss, new hidden state and gradients (see the module docstring).

    W (N, H_L) item table = input embedding, bias (N,); layers: GRULayer modules (weight_ih
    (3H_l, E_l), ...); inp / Y int64 (b,) / (C,) with Y[:b] the targets; hidden list of (b, H_l);
    reset bool (b,) lanes starting a new session; seed int64 (1,) device tensor.
    logq_per_column (C,): log q_j for cross-entropy with logq > 0, or log_support (N,) with
    sample_alpha: the same as ops.scoring.logq_columns(log_support, Y, b, sample_alpha) (on
    Triton gathered inside the loss kernel: two launches fewer). precision: the Triton dots'
    ("ieee", "tf32", "tf32x3"; None: ieee for the GRU, tf32 for the scoring, as the ops).
    item_ids: optional [inp; Y] (b + C,) when inp and Y are its views (saves a concatenation)."""
    if item_ids is None:
        item_ids = torch.cat([inp, Y])
    if resolve_backend(backend, W, "training step") == "torch":
        if log_support is not None and logq_per_column is None and logq > 0:
            logq_per_column = logq_columns(log_support, Y, inp.shape[0], sample_alpha)
        return _step_torch(W, bias, layers, inp, Y, item_ids, hidden, reset, seed, loss,
                           batch_size, dropout_embed, dropout_hidden, logq_per_column, logq,
                           bpreg, elu_param)
    K = load_kernels("gru_step")
    C = Y.shape[0]
    gru_precision = precision or "ieee"   # as ops.gru; the scoring's None means tf32
    xs, saves, outs = [], [], []
    x, idx = W.detach(), inp
    for l, layer in enumerate(layers):
        p_in = dropout_embed if l == 0 else 0.0
        out, save = K.gru_fwd(x, hidden[l], layer.weight_ih.detach(), layer.bias_ih.detach(),
                              layer.weight_hh.detach(),
                              layer.bias_hh.detach() if layer.bias_hh is not None else None,
                              idx, reset, seed, layer.variant, p_in, dropout_hidden, l,
                              gru_precision)
        xs.append((x, idx))
        saves.append(save)
        outs.append(out)
        x, idx = out, None
    # one gradient row per occurrence, [inputs; columns], written in place by the kernels: the
    # columns' by the scoring (plain stores), the inputs' by the first layer's backward
    b = inp.shape[0]
    item_grads = load_kernels("launch").new_output((b + C, W.shape[1]), torch.float32,
                                                   W.device)   # NaN in tests: all rows written
    g = fused_sampled_loss_and_grads(x, W.detach(), bias.detach(), Y, loss,
                                     logq_per_column=logq_per_column, logq=logq, bpreg=bpreg,
                                     elu_param=elu_param, scale=1.0 / batch_size,
                                     per_column=True, d_rows_out=item_grads[b:],
                                     log_support=log_support, sample_alpha=sample_alpha,
                                     backend="triton", precision=precision)
    d = g.dh
    dense: List[List[torch.Tensor]] = []
    for l in reversed(range(len(layers))):
        layer = layers[l]
        x_l, idx_l = xs[l]
        p_in = dropout_embed if l == 0 else 0.0
        into = item_grads[:b] if l == 0 and x_l.dtype == torch.float32 else None
        dx, _, dwih, dbih, dwhh, dbhh = K.gru_bwd(
            d, x_l, hidden[l], layer.weight_ih.detach(), layer.weight_hh.detach(), idx_l, reset,
            seed, saves[l], layer.variant, True, layer.bias_hh is not None, p_in,
            dropout_hidden, l, gru_precision, dx_out=into)
        if l == 0 and into is None:      # a bf16 / fp16 table: its row gradients in fp32
            item_grads[:b].copy_(dx)
        dense.append([dwih, dbih, dwhh] + ([dbhh] if layer.bias_hh is not None else []))
        d = dx
    dense_flat = [t for per_layer in reversed(dense) for t in per_layer]
    return StepGrads(g.loss, outs, dense_flat, item_ids, item_grads, Y, g.d_bias_rows)


def _step_torch(W, bias, layers, inp, Y, item_ids, hidden, reset, seed, loss, batch_size,
                dropout_embed, dropout_hidden, logq_per_column, logq, bpreg,
                elu_param) -> StepGrads:
    b = inp.shape[0]
    params = dense_params(layers)
    rows = W.detach().index_select(0, item_ids).requires_grad_()
    b_rows = bias.detach().index_select(0, Y).requires_grad_()
    with torch.enable_grad():
        x = rows[:b]
        new_hidden = []
        for l, layer in enumerate(layers):
            x = gru_step_fused_reference(x, hidden[l], layer.weight_ih, layer.bias_ih,
                                         layer.weight_hh, layer.bias_hh, layer.variant,
                                         reset=reset, dropout_in=dropout_embed if l == 0 else 0.0,
                                         dropout_out=dropout_hidden, seed=seed, stream=l)
            new_hidden.append(x)
        R = torch.addmm(b_rows, x, rows[b:].t())
        value = sampled_loss_reference(R, loss, logq_per_column=logq_per_column, logq=logq,
                                       bpreg=bpreg, elu_param=elu_param) / batch_size
        grads = torch.autograd.grad(value, params + [rows, b_rows])
    n = len(params)
    return StepGrads(value.detach(), [h.detach() for h in new_hidden], list(grads[:n]),
                     item_ids, grads[n], Y, grads[n + 1])
