"""The argument contracts of the launch functions, in plain torch (this module never imports
triton).

A kernel reads raw pointers with sizes taken from one argument, so an argument of another shape
or an id vector of another length or dtype would be read past its end: the launch functions
refuse them here. The ops' plain-torch references (fastgru4rec.ops) apply the same checks, so
that both backends accept and refuse the same arguments, with the same one-line messages
(plain torch would instead broadcast a short tensor into a silently wrong result, or fail
deep inside with a message naming none of the arguments). Metadata only: no value is read, so
nothing here synchronises with a GPU.
"""
from __future__ import annotations

import torch


def index_vector(name: str, ids: torch.Tensor, n=None) -> torch.Tensor:
    """ids as a contiguous (n,) integer vector (int32 or int64; a kernel takes ids * stride in
    int64; n None: of any length). A float or bool vector would be read as other ids (no
    error), a narrower or unsigned one overflows in the kernel, one of another length is read
    past its end. Values are not range-checked (that would synchronise with the host every
    call): out-of-range ids read or write outside the tables, as in a CUDA gather."""
    if ids.dim() != 1 or (n is not None and ids.shape[0] != n) \
            or ids.dtype not in (torch.int32, torch.int64):
        of = "" if n is None else f" of {n} ids"
        raise ValueError(f"{name} must be an int32 or int64 vector{of} (got {ids.dtype}, "
                         f"shape {tuple(ids.shape)})")
    return ids.contiguous()


def check_reset_flags(reset: torch.Tensor, n: int) -> None:
    """reset: (n,) bool or integer flags (nonzero: the lane restarts)."""
    if reset.dtype.is_floating_point or reset.dtype.is_complex or tuple(reset.shape) != (n,):
        raise ValueError(f"reset must be a ({n},) bool or integer tensor "
                         f"(got {reset.dtype}, shape {tuple(reset.shape)})")


def check_step_shapes(x, h, weight_ih, bias_ih, weight_hh, bias_hh, idx, reset) -> None:
    """The GRU step's shapes: h (b, H); weight_hh (3H, H); x (n, E) with weight_ih (3H, E), or
    the projection rows x (n, 3H) with weight_ih None; n = b unless idx (b,) picks rows of x;
    biases (3H,) or None; reset (b,) flags or None."""
    if h.dim() != 2:
        raise ValueError(f"h must be (b, H) (got shape {tuple(h.shape)})")
    B, H = h.shape
    want = {"weight_hh": (weight_hh, (3 * H, H))}
    if weight_ih is not None:
        E = weight_ih.shape[-1]
        want["weight_ih"] = (weight_ih, (3 * H, E))
    else:
        E = 3 * H
    for name, t in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if t is not None:
            want[name] = (t, (3 * H,))
    if reset is not None:
        check_reset_flags(reset, B)
    if idx is not None:
        index_vector("idx", idx, B)
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for h of shape {(B, H)} "
                             f"(got {tuple(t.shape)})")
    if x.dim() != 2 or x.shape[1] != E or (idx is None and x.shape[0] != B):
        rows = "n" if idx is not None else str(B)
        raise ValueError(f"x must have shape ({rows}, {E}) (got {tuple(x.shape)})")


def check_rows_update(what: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                      acc: torch.Tensor, vel) -> None:
    """A row update (``what``: the op, for the messages) of table (N, ...): rows (u,) int ids,
    grad (u, ...) one gradient row per id, acc and vel (or None) shaped like the table."""
    index_vector(f"{what}: the row ids", rows)
    want = (rows.shape[0], *table.shape[1:])
    if tuple(grad.shape) != want:
        raise ValueError(f"{what}: grad must have one row per row id, shape {want} (got "
                         f"{tuple(grad.shape)})")
    for name, t in (("acc", acc), ("vel", vel)):
        if t is not None and t.shape != table.shape:
            raise ValueError(f"{what}: {name} must have the table's shape {tuple(table.shape)} "
                             f"(got {tuple(t.shape)})")


def check_logq_per_column(logq_per_column, n_columns: int) -> None:
    """Cross-entropy with logq > 0: log q of each of the n_columns score columns."""
    if logq_per_column is None:
        raise ValueError("cross-entropy with logq > 0 needs logq_per_column or log_support")
    if tuple(logq_per_column.shape) != (n_columns,):
        raise ValueError(f"logq_per_column must have shape ({n_columns},) (got "
                         f"{tuple(logq_per_column.shape)})")


def check_dropout_probability(p, name: str = "dropout probability") -> float:
    """p as a float in [0, 1) (1 would divide by zero in the 1 / (1 - p) rescaling)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return p


def check_sampled_columns(n_lanes: int, n_columns: int, loss: str) -> None:
    """Scores (b, C) of a sampled loss: lane i's positive is column i, so C >= b; the *-max
    losses weight the negatives by a softmax over them, so they need one (C >= 2)."""
    if n_columns < n_lanes:   # the diagonal would be cut short (a silent loss over C lanes)
        raise ValueError(f"scores have {n_columns} columns for {n_lanes} lanes: lane i's "
                         f"positive is column i")
    if loss.endswith("-max") and n_lanes and n_columns < 2:
        raise ValueError(f"{loss} needs a negative column (scores have {n_columns} column for "
                         f"{n_lanes} lane: use two lanes or sampled negatives)")


def check_catalog_grad_buffers(d_weight_out, d_bias_out) -> None:
    """The full-catalog gradients are accumulated into both buffers or returned fresh: one
    buffer alone would leave the other gradient where the caller does not look for it."""
    if (d_weight_out is None) != (d_bias_out is None):
        raise ValueError("d_weight_out and d_bias_out go together: give both or neither")


def check_score_inputs(h, weight, bias, bias_per_item: bool = True) -> None:
    """Scores h (b, H) · weight (·, H)ᵀ + bias: the two must agree on H, and bias is a vector
    with one entry per weight row when bias_per_item (the catalog ops; the sampled losses'
    bias may be its own table, indexed by column). A short bias would broadcast on plain
    torch into wrong scores, and the kernels would read past it."""
    if h.dim() != 2 or weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"h (b, H) and item_weight (N, H) must agree on H (got shapes "
                         f"{tuple(h.shape)} and {tuple(weight.shape)})")
    if bias.dim() != 1 or (bias_per_item and bias.shape[0] != weight.shape[0]):
        raise ValueError("item_bias must be a vector" +
                         (f" of shape ({weight.shape[0]},)" if bias_per_item else "") +
                         f" (got shape {tuple(bias.shape)})")
