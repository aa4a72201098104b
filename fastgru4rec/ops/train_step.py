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
gradients (4 launches), per layer the fused backward (2 launches). backend "explicit": the same
explicit backward in plain torch ops (the CPU's fast step: no autograd graph, one gather of the
b + C rows, the GRU and cross-entropy gradients written out; the other losses' dR by autograd
over the (b, C) scores alone). backend "torch": the same function by plain autograd over the
references (gru_step_fused_reference, sampled_loss_reference): the oracle the other two are
tested against. "auto": triton for CUDA tensors, explicit otherwise (torch when
FASTGRU4REC_BACKEND=torch). Dropout masks in all three: the counter-based hash of (seed, layer,
row, column) (ops.gru.dropout_keep_mask), so a device seed tensor advanced per step keeps the
step capturable in a CUDA graph. (The eager reference loop draws its dropout with a
torch.Generator instead: same distribution, other masks.)
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from .backend import load_kernels, reference_forced, resolve_backend
from .gru import gru_step_fused_reference
from .gru import dropout_keep_mask
from .scoring import (_EPS, fused_sampled_loss_and_grads, logq_columns,
                      sampled_loss_reference)


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
    """The GRU parameters in StepGrads.dense's order, the layers' own (nn.GRUCell's): per layer
    weight_ih, weight_hh, bias_ih, then bias_hh when the layer has one ("cell")."""
    out = []
    for layer in layers:
        out += [layer.weight_ih, layer.weight_hh, layer.bias_ih]
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
    backend: "auto" | "triton" | "explicit" | "torch" (the module docstring).

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
    if backend == "explicit":
        path = "explicit"
    else:
        path = resolve_backend(backend, W, "training step")
        if backend == "auto" and path == "torch" and not reference_forced():
            path = "explicit"   # the CPU fast form; FASTGRU4REC_BACKEND=torch keeps autograd
    if path != "triton":
        if log_support is not None and logq_per_column is None and logq > 0:
            logq_per_column = logq_columns(log_support, Y, inp.shape[0], sample_alpha)
        step = _step_explicit if path == "explicit" else _step_torch
        return step(W, bias, layers, inp, Y, item_ids, hidden, reset, seed, loss, batch_size,
                    dropout_embed, dropout_hidden, logq_per_column, logq, bpreg, elu_param)
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
        dense.append([dwih, dwhh, dbih] + ([dbhh] if layer.bias_hh is not None else []))
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


def _scaled_keep(seed, n_rows: int, n_cols: int, p: float, stream: int, which: int,
                 like: torch.Tensor) -> Optional[torch.Tensor]:
    """The dropout multiplier keep / (1 - p) (n_rows, n_cols) of ops.gru's hashed masks (the
    same masks as the torch and triton paths), or None without dropout."""
    if p <= 0:
        return None
    keep = dropout_keep_mask(seed, n_rows, n_cols, p, stream, which, device=like.device)
    return keep.to(like.dtype).mul_(1.0 / (1.0 - p))


def _loss_and_dR(R: torch.Tensor, loss: str, scale: float, logq_per_column, logq: float,
                 bpreg: float, elu_param: float):
    """(value (0-d), dR (b, C)) of scale · sampled_loss_reference(R). Cross-entropy written out
    (R may be overwritten): with P = softmax(R - logq·lq) and p_i = P[i, i], the loss
    -log(p_i + eps) has dR[i, j] = w_i (P[i, j] - [i = j]), w_i = p_i / (p_i + eps). The other
    losses: autograd over R alone (a graph of a few (b, C) ops)."""
    b = R.shape[0]
    if loss == "cross-entropy":
        if logq > 0:
            R.sub_(logq_per_column, alpha=logq)
        P = torch.softmax(R, dim=1)
        p_pos = P[:, :b].diagonal().clone()                       # (b,)
        value = -torch.log(p_pos + _EPS).sum() * scale
        w = p_pos / (p_pos + _EPS) * scale
        P.mul_(w[:, None])
        P[:, :b].diagonal().sub_(w)
        return value, P
    R = R.requires_grad_()
    with torch.enable_grad():
        value = sampled_loss_reference(R, loss, logq_per_column=logq_per_column, logq=logq,
                                       bpreg=bpreg, elu_param=elu_param) * scale
        (dR,) = torch.autograd.grad(value, R)
    return value.detach(), dR


def _step_explicit(W, bias, layers, inp, Y, item_ids, hidden, reset, seed, loss, batch_size,
                   dropout_embed, dropout_hidden, logq_per_column, logq, bpreg,
                   elu_param) -> StepGrads:
    """_step_torch's result with the backward written out (module docstring), no autograd
    graph over the GRU or the scoring. Shapes: b lanes, C columns, H_l units of layer l."""
    b, C = inp.shape[0], Y.shape[0]
    reset_rows = reset.to(torch.bool)[:, None]
    with torch.no_grad():
        rows = W.detach().index_select(0, item_ids)          # (b + C, H_L): inputs, columns
        x, cols = rows[:b], rows[b:]
        saved, new_hidden = [], []
        for l, layer in enumerate(layers):
            H = layer.weight_hh.shape[1]
            Wih, bih = layer.weight_ih.detach(), layer.bias_ih
            Whh, bhh = layer.weight_hh.detach(), layer.bias_hh
            keep_in = _scaled_keep(seed, b, x.shape[1], dropout_embed if l == 0 else 0.0, l, 0,
                                   x)
            x_in = x * keep_in if keep_in is not None else x                # (b, E_l)
            h = hidden[l].masked_fill(reset_rows, 0.0)                       # (b, H)
            gi = (torch.addmm(bih.detach(), x_in, Wih.t()) if bih is not None
                  else torch.mm(x_in, Wih.t()))                              # (b, 3H)
            if layer.variant == "cell":
                gh = (torch.addmm(bhh.detach(), h, Whh.t()) if bhh is not None
                      else torch.mm(h, Whh.t()))                             # (b, 3H)
                rz = torch.sigmoid(gi[:, :2 * H] + gh[:, :2 * H])
                r, z = rz[:, :H], rz[:, H:]
                mixed = gh[:, 2 * H:]                                        # h W_hn + b_hn
                n = torch.tanh(torch.addcmul(gi[:, 2 * H:], r, mixed))
                h_new = n + z * (h - n)
            else:                                                            # "original"
                rz = torch.sigmoid(torch.addmm(gi[:, :2 * H], h, Whh[:2 * H].t()))
                r, z = rz[:, :H], rz[:, H:]
                mixed = r * h                                                # r ⊙ h
                n = torch.tanh(torch.addmm(gi[:, 2 * H:], mixed, Whh[2 * H:].t()))   # c
                h_new = h + z * (n - h)
            keep_out = _scaled_keep(seed, b, H, dropout_hidden, l, 1, h_new)
            out = h_new * keep_out if keep_out is not None else h_new
            saved.append((x_in, keep_in, h, r, z, n, mixed, keep_out))
            new_hidden.append(out)
            x = out

        R = torch.addmm(bias.detach().index_select(0, Y), x, cols.t())      # (b, C)
        value, dR = _loss_and_dR(R, loss, 1.0 / batch_size, logq_per_column, logq, bpreg,
                                 elu_param)
        item_grads = torch.empty(b + C, W.shape[1], dtype=W.dtype, device=W.device)
        torch.mm(dR.t(), x, out=item_grads[b:])                              # columns' rows
        bias_grads = dR.sum(0)
        d = torch.mm(dR, cols)                                               # d h_L (b, H_L)

        dense: List[List[torch.Tensor]] = []
        for l in reversed(range(len(layers))):
            layer = layers[l]
            x_in, keep_in, h, r, z, n, mixed, keep_out = saved[l]
            H = h.shape[1]
            Wih, Whh = layer.weight_ih.detach(), layer.weight_hh.detach()
            dh_new = d * keep_out if keep_out is not None else d
            dgi = torch.empty(b, 3 * H, dtype=h.dtype, device=h.device)
            if layer.variant == "cell":
                # h' = n + z (h - n): dn = dh' (1 - z), dz = dh' (h - n); pre-activations
                dpn = torch.mul(dh_new * (1 - z), 1 - n * n, out=dgi[:, 2 * H:])
                torch.mul(dh_new * (h - n), z * (1 - z), out=dgi[:, H:2 * H])
                torch.mul(dpn * mixed, r * (1 - r), out=dgi[:, :H])          # via r ⊙ (h W_hn)
                dgh = dgi.clone()
                dgh[:, 2 * H:].mul_(r)
                dWhh = torch.mm(dgh.t(), h)
                dbhh = dgh.sum(0) if layer.bias_hh is not None else None
            else:
                # h' = h + z (c - h): dz = dh' (c - h), dc = dh' z; c's input has (r ⊙ h) W_hc
                dpc = torch.mul(dh_new * z, 1 - n * n, out=dgi[:, 2 * H:])
                torch.mul(dh_new * (n - h), z * (1 - z), out=dgi[:, H:2 * H])
                d_rh = torch.mm(dpc, Whh[2 * H:])                            # (b, H)
                torch.mul(d_rh * h, r * (1 - r), out=dgi[:, :H])
                dWhh = torch.empty_like(Whh)
                torch.mm(dgi[:, :2 * H].t(), h, out=dWhh[:2 * H])
                torch.mm(dpc.t(), mixed, out=dWhh[2 * H:])
                dbhh = None
            dWih = torch.mm(dgi.t(), x_in)
            per_layer = [dWih, dWhh, dgi.sum(0) if layer.bias_ih is not None else None]
            if layer.bias_hh is not None:
                per_layer.append(dbhh)
            if l == 0:
                dx = torch.mm(dgi, Wih, out=item_grads[:b])                  # inputs' rows
                if keep_in is not None:
                    dx.mul_(keep_in)
            else:
                d = torch.mm(dgi, Wih)
            dense.append(per_layer)
    dense_flat = [t for per_layer in reversed(dense) for t in per_layer]
    return StepGrads(value, new_hidden, dense_flat, item_ids, item_grads, Y, bias_grads)

