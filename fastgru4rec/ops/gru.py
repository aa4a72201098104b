"""One GRU step (REFERENCE §3), plain-torch reference.

Shapes: b lanes, H hidden units; ``gi`` is the input projection x·W_ihᵀ + b_ih (b, 3H) with
gate blocks in the order [r, z, n] (torch.nn.GRUCell's order); ``h`` is (b, H);
``weight_hh`` is (3H, H).
"""
from __future__ import annotations

from typing import Optional

import torch


def gru_step_reference(gi: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
                       bias_hh: Optional[torch.Tensor], variant: str) -> torch.Tensor:
    """h' for one step.

    cell (torch.nn.GRUCell):  r = σ(gi_r + h W_hr + b_hr), z = σ(gi_z + h W_hz + b_hz),
                              n = tanh(gi_n + r ⊙ (h W_hn + b_hn)),  h' = (1 - z) ⊙ n + z ⊙ h
    original (Theano GRU4Rec): r = σ(gi_r + h W_hr), z = σ(gi_z + h W_hz),
                              c = tanh(gi_c + (r ⊙ h) W_hc),        h' = (1 - z) ⊙ h + z ⊙ c
    (the original form has a single bias per gate, folded into gi; bias_hh must be None.)
    """
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
    """Dispatching entry point; the fused Triton step plugs in here (backend "triton")."""
    if backend not in ("auto", "torch"):
        raise ValueError(f"GRU step backend {backend!r} is not available (torch)")
    return gru_step_reference(gi, h, weight_hh, bias_hh, variant)
