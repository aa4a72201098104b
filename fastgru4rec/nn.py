"""nn.Modules of GRU4Rec: the GRU layer and the full model (REFERENCE §3).

The model is usable on its own in a user's PyTorch code:

    model = GRU4RecModel(n_items=N, layers=(100,), embedding_mode="shared")
    hidden = model.init_hidden(batch)                 # list of (batch, H_l) zeros
    h_last, hidden = model(item_idx, hidden)          # one step; item_idx: int64 (batch,)
    scores = model.score(h_last)                      # (batch, N) scores over the catalog
    scores_y = model.score(h_last, item_idx=Y)        # (batch, len(Y)) scores of chosen items

Training with sparse row updates (the trainer) feeds gathered rows through ``step``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import is_integer
from .ops.gru import check_dropout_probability, gru_step
from .ops.scoring import sampled_scores

EMBEDDING_MODES = ("shared", "separate", "onehot")


def glorot_blocks_(weight: torch.Tensor, n_blocks: int, generator: Optional[torch.Generator],
                   block_dim: int = 0) -> torch.Tensor:
    """Glorot-uniform init of each gate's block separately: a block of shape (a, c) gets
    U(±sqrt(6 / (a + c))). Blocks are split along ``block_dim``; generator None: torch's
    global generator."""
    with torch.no_grad():
        for block in weight.chunk(n_blocks, dim=block_dim):
            bound = math.sqrt(6.0 / (block.shape[0] + block.shape[1]))
            block.uniform_(-bound, bound, generator=generator)
    return weight


def _glorot_blocks_via_cpu(weight: torch.Tensor, n_blocks: int,
                           generator: Optional[torch.Generator]) -> torch.Tensor:
    """glorot_blocks_ for a parameter on any device: the seeded generator is a CPU one, so a
    weight elsewhere (GRULayer(..., device="cuda")) is drawn on the CPU and copied over; the
    values are those of the same layer built on the CPU."""
    if weight.device.type == "cpu":
        return glorot_blocks_(weight, n_blocks, generator)
    with torch.no_grad():
        return weight.copy_(glorot_blocks_(torch.empty(weight.shape, dtype=weight.dtype),
                                           n_blocks, generator))


def _size(owner: str, name: str, value) -> int:
    """A size given as an integer (a Python or numpy int; not a bool or a float, which int()
    would truncate: 4.5 units are a mistake, not 4)."""
    if not is_integer(value):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    return int(value)


class GRULayer(nn.Module):
    """One GRU layer, a drop-in for torch.nn.GRUCell in the "cell" variant: the same
    constructor (input_size, hidden_size, bias=True, device=None, dtype=None), the same
    parameter names and shapes (weight_ih (3H, in), weight_hh (3H, H), bias_ih (3H),
    bias_hh (3H); so ``load_state_dict`` from an nn.GRUCell works) and the same call forms
    (``layer(input, hx=None)``: batched (b, in) or unbatched (in,) input, hx None or of the
    input's batch form). Outputs and gradients equal nn.GRUCell's (tests/test_gru.py).

    The parameters are registered in nn.GRUCell's order (weight_ih, weight_hh, bias_ih,
    bias_hh), so transfers by name (state_dict) and by position (parameters_to_vector, an
    optimizer's state_dict) both work. The difference to know: the initialisation is
    GRU4Rec's Glorot-uniform per gate block, not nn.GRUCell's U(±1/sqrt(H)).

    Keyword-only: ``variant`` "cell" (torch.nn.GRUCell's form) or "original" (the Theano form:
    the reset gate applied to h before the recurrent product, a single bias per gate in
    bias_ih and no bias_hh); ``generator`` seeds the initialisation (None: torch's global
    generator, so torch.manual_seed governs it, as for nn.GRUCell). With input_size=None the
    layer has no weight_ih: its input projection comes from elsewhere (the one-hot first layer
    gathers rows of an (N, 3H) table).
    """

    def __init__(self, input_size: Optional[int], hidden_size: int, bias: bool = True,
                 device=None, dtype=None, *, variant: str = "cell",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if variant not in ("cell", "original"):
            raise ValueError(f"unknown GRU variant {variant!r} (original, cell)")
        if not (isinstance(bias, (bool, np.bool_)) or (type(bias) is int and bias in (0, 1))):
            # (nn.GRUCell takes 0 / 1 too; a string here is a variant given by position)
            raise TypeError(f"GRULayer: bias must be True or False, got {bias!r} "
                            "(the variant is the keyword argument variant=)")
        bias = bool(bias)
        hidden_size = _size("GRULayer", "hidden_size", hidden_size)
        if input_size is not None:
            input_size = _size("GRULayer", "input_size", input_size)
        if hidden_size <= 0 or (input_size is not None and input_size <= 0):
            raise ValueError(f"GRULayer: sizes must be positive, got input_size={input_size}, "
                             f"hidden_size={hidden_size}")
        self.input_size, self.hidden_size, self.variant = input_size, hidden_size, variant
        self.bias = bias
        H, like = self.hidden_size, dict(device=device, dtype=dtype)
        # registered in nn.GRUCell's order (weight_ih, weight_hh, bias_ih, bias_hh): code that
        # pairs parameters by position (parameters_to_vector, an optimizer's state) sees the
        # same list as with an nn.GRUCell
        if input_size is not None:
            self.weight_ih = nn.Parameter(torch.empty(3 * H, int(input_size), **like))
        else:
            self.register_parameter("weight_ih", None)
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H, **like))
        if input_size is not None and bias:
            self.bias_ih = nn.Parameter(torch.zeros(3 * H, **like))
        else:
            self.register_parameter("bias_ih", None)
        if variant == "cell" and bias:
            self.bias_hh = nn.Parameter(torch.zeros(3 * H, **like))
        else:
            self.register_parameter("bias_hh", None)
        self.reset_parameters(generator)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s if self.variant == "cell" else s + f", variant={self.variant!r}"

    def reset_parameters(self, generator: Optional[torch.Generator] = None):
        """Glorot-uniform gate blocks, zero biases; generator None: torch's global one."""
        if self.weight_ih is not None:
            _glorot_blocks_via_cpu(self.weight_ih, 3, generator)
            if self.bias_ih is not None:
                nn.init.zeros_(self.bias_ih)
        _glorot_blocks_via_cpu(self.weight_hh, 3, generator)
        if self.bias_hh is not None:
            nn.init.zeros_(self.bias_hh)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Input projection gi = x W_ihᵀ + b_ih: (b, in) -> (b, 3H)."""
        return torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def step(self, gi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h' (b, H) from the input projection gi (b, 3H) and the state h (b, H)."""
        return gru_step(gi, h, self.weight_hh, self.bias_hh, self.variant)

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """nn.GRUCell's call form (same argument names): input (b, in) and hx (b, H) or None
        -> h' (b, H); unbatched input (in,) and hx (H,) or None -> h' (H,)."""
        x, h = input, hx
        if self.weight_ih is None:
            raise RuntimeError("GRULayer(input_size=None) has no input projection: call "
                               "step(gi, h) with gi (b, 3H)")
        if x.dim() not in (1, 2):
            raise ValueError(f"GRULayer: expected input of shape (batch, {self.input_size}) or "
                             f"({self.input_size},), got {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"GRULayer: input has {x.shape[-1]} features, expected "
                             f"input_size={self.input_size}")
        unbatched = x.dim() == 1
        want = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
        if h is None:
            h = x.new_zeros(want)
        elif tuple(h.shape) != want:
            raise ValueError(f"GRULayer: hidden state of shape {tuple(h.shape)} for input of "
                             f"shape {tuple(x.shape)}, expected {want}")
        if unbatched:
            return self.step(self.project(x.unsqueeze(0)), h.unsqueeze(0)).squeeze(0)
        return self.step(self.project(x), h)


class GRU4RecModel(nn.Module):
    """GRU4Rec: input embedding, stacked GRU layers, scores against the item table.

    n_items: N. layers: hidden sizes. embedding_mode: "shared" (the output table ``item_weight``
    (N, H_last) is also the input embedding), "separate" (own ``embedding`` (N, E)), or "onehot"
    (``input_table`` (N, 3·H_0) rows are the first layer's input projection).
    variants: GRU variant per layer ("cell"/"original"). Dropout is applied by the caller
    through ``dropout`` arguments so the model itself is deterministic. initialize=False: the
    item-indexed tables are left uninitialised (for load_state_dict to fill). seed: the
    initialisation's own generator (torch.manual_seed does not change it: the same seed gives
    the same model wherever it is built). embedding_dim: the separate mode's E (the other modes
    ignore it: shared rows are layers[-1] wide, one-hot has no embedding).
    """

    def __init__(self, n_items: int, layers: Sequence[int] = (100,), embedding_mode: str = "shared",
                 embedding_dim: int = 0, variants: Optional[Sequence[str]] = None, seed: int = 42,
                 initialize: bool = True):
        super().__init__()
        if embedding_mode not in EMBEDDING_MODES:
            raise ValueError(f"unknown embedding mode {embedding_mode!r} ({', '.join(EMBEDDING_MODES)})")
        n_items = _size("GRU4RecModel", "n_items", n_items)
        if n_items < 1:
            raise ValueError(f"GRU4RecModel: n_items must be at least 1, got {n_items}")
        embedding_dim = _size("GRU4RecModel", "embedding_dim",
                              0 if embedding_dim is None else embedding_dim)
        if embedding_dim < 0:
            raise ValueError(f"GRU4RecModel: embedding_dim must be >= 0, got {embedding_dim}")
        if embedding_mode == "separate" and embedding_dim <= 0:
            raise ValueError("the separate embedding mode needs embedding_dim > 0")
        if is_integer(layers):
            layers = (layers,)          # one layer's size, as the estimator's layers=100
        layers = tuple(_size("GRU4RecModel", "layers", h) for h in layers)
        if not layers:
            raise ValueError("GRU4RecModel: layers must hold at least one hidden size")
        if min(layers) <= 0:
            raise ValueError(f"GRU4RecModel: every hidden size in layers must be positive, got "
                             f"{list(layers)}")
        if variants is None:
            variants = ["original" if (l == 0 and embedding_mode == "onehot") else "cell"
                        for l in range(len(layers))]
        elif len(variants) != len(layers):
            raise ValueError(f"GRU4RecModel: {len(variants)} variants for {len(layers)} layers "
                             f"(one per layer)")
        self.n_items, self.layers, self.embedding_mode = n_items, layers, embedding_mode
        self.embedding_dim = embedding_dim if embedding_mode == "separate" else 0
        g = torch.Generator().manual_seed(int(seed))
        N, H_last = self.n_items, layers[-1]
        # initialize=False leaves the item tables as allocated (torch.empty), for a state_dict
        # about to be loaded: their random init is most of a large catalog's load time
        table_init = glorot_blocks_ if initialize else (lambda t, *args: t)

        self.item_weight = nn.Parameter(table_init(torch.empty(N, H_last), 1, g))
        self.item_bias = nn.Parameter(torch.zeros(N) if initialize else torch.empty(N))
        if embedding_mode == "separate":
            self.embedding = nn.Parameter(table_init(torch.empty(N, embedding_dim), 1, g))
            in_size = embedding_dim
        elif embedding_mode == "shared":
            in_size = H_last
        else:
            # One-hot input: x·W_x is a row gather of an (N, 3H) table, one block per gate.
            self.input_table = nn.Parameter(table_init(torch.empty(N, 3 * layers[0]), 3, g, 1))
            self.input_bias = nn.Parameter(torch.zeros(3 * layers[0]))
            in_size = None
        gru = []
        for l, H in enumerate(layers):
            gru.append(GRULayer(in_size, H, variant=variants[l], generator=g))
            in_size = H
        self.gru = nn.ModuleList(gru)

    def extra_repr(self) -> str:
        s = f"n_items={self.n_items}, layers={self.layers}, embedding_mode={self.embedding_mode!r}"
        return s + (f", embedding_dim={self.embedding_dim}" if self.embedding_dim else "")

    # -------------------------------------------------------------- tables
    def sparse_tables(self) -> List[str]:
        """Names of the item-indexed parameters (updated sparsely by the trainer)."""
        names = ["item_weight", "item_bias"]
        if self.embedding_mode == "separate":
            names.append("embedding")
        elif self.embedding_mode == "onehot":
            names.append("input_table")
        return names

    @property
    def input_table_name(self) -> str:
        """The table whose rows are the input of a step."""
        return {"shared": "item_weight", "separate": "embedding", "onehot": "input_table"}[
            self.embedding_mode]

    def init_hidden(self, batch: int, device=None) -> List[torch.Tensor]:
        device = device or self.item_weight.device
        return [torch.zeros(batch, H, device=device, dtype=self.item_weight.dtype)
                for H in self.layers]

    # -------------------------------------------------------------- one step
    def step(self, input_rows: torch.Tensor, hidden: List[torch.Tensor],
             dropout_embed: float = 0.0, dropout_hidden: float = 0.0,
             generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """One step from gathered input rows (b, E) (b, 3H_0 for one-hot).

        Returns (h_last (b, H_last), new hidden list). Dropout (inverted, seeded by
        ``generator``) is applied to the embedding rows and to each layer's output; the
        dropped-out output is what is carried as the next state (REFERENCE §3).
        """
        width = getattr(self, self.input_table_name).shape[1]
        if input_rows.dim() != 2 or input_rows.shape[1] != width:
            raise ValueError(f"GRU4RecModel: input_rows must be (b, {width}) rows of "
                             f"{self.input_table_name} (got shape {tuple(input_rows.shape)})")
        b = input_rows.shape[0]
        if len(hidden) != len(self.gru):
            raise ValueError(f"GRU4RecModel: hidden holds {len(hidden)} tensors for "
                             f"{len(self.gru)} layers (use init_hidden)")
        dtype = self.item_weight.dtype
        for l, (h, size) in enumerate(zip(hidden, self.layers)):
            if tuple(h.shape) != (b, size):
                raise ValueError(f"GRU4RecModel: hidden[{l}] has shape {tuple(h.shape)}, "
                                 f"expected ({b}, {size}) for a batch of {b}")
            if h.dtype != dtype:
                raise ValueError(f"GRU4RecModel: hidden[{l}] is {h.dtype}, the model's "
                                 f"parameters {dtype} (use init_hidden)")
        check_dropout_probability(dropout_embed, "GRU4RecModel.step: dropout_embed")
        check_dropout_probability(dropout_hidden, "GRU4RecModel.step: dropout_hidden")
        new_hidden = []
        if self.embedding_mode == "onehot":
            gi = input_rows + self.input_bias
            # one-hot: no embedding to drop; the first layer's output gets dropout_p_hidden
            x = None
        else:
            x = _dropout(input_rows, dropout_embed, generator)
        for l, layer in enumerate(self.gru):
            if x is not None:
                gi = layer.project(x)
            h = _dropout(layer.step(gi, hidden[l]), dropout_hidden, generator)
            new_hidden.append(h)
            x = h
        return x, new_hidden

    def forward(self, item_idx: torch.Tensor, hidden: Optional[List[torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """One step without dropout: item_idx int64 (b,) -> (h_last (b, H_last), new hidden).
        (Dropout only through ``step``'s arguments: train()/eval() do not change this module.)"""
        if item_idx.dim() != 1:
            raise ValueError(f"GRU4RecModel: item_idx must be 1-d (batch,), got shape "
                             f"{tuple(item_idx.shape)}")
        if hidden is None:
            hidden = self.init_hidden(item_idx.shape[0], item_idx.device)
        rows = getattr(self, self.input_table_name).index_select(0, item_idx)
        return self.step(rows, hidden)

    def encode(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The last step's output h_last (b, H_last) of b item sequences at once, no dropout:
        what stepping each sequence alone from a zero state gives, up to float rounding (a
        batch's products round differently from one row's). items int64 (b, L) holds
        lane i's sequence right-aligned, items[i, L - lengths[i]:]; the entries before it are
        any valid ids (their steps run, but the lane's state stays zero until its sequence
        starts). lengths int64 (b,), each in 1..L. Sort sequences by length before batching
        them to waste few steps."""
        if items.dim() != 2 or lengths.shape != (items.shape[0],):
            raise ValueError(f"GRU4RecModel.encode: items (b, L) and lengths (b,) expected "
                             f"(got {tuple(items.shape)} and {tuple(lengths.shape)})")
        if items.dtype.is_floating_point or lengths.dtype.is_floating_point:
            raise ValueError(f"GRU4RecModel.encode: items and lengths must be integer tensors "
                             f"(got {items.dtype} and {lengths.dtype})")
        b, L = items.shape
        if b and not bool(((lengths >= 1) & (lengths <= L)).all()):
            raise ValueError(f"GRU4RecModel.encode: lengths must be in 1..{L}")
        start = (L - lengths).unsqueeze(1)                    # (b, 1) first step of each lane
        hidden = self.init_hidden(b, items.device)
        for t in range(L):
            _, new_hidden = self(items[:, t], hidden)
            hidden = [torch.where(start <= t, new, old) for new, old in zip(new_hidden, hidden)]
        return hidden[-1]     # every lane is active at t = L - 1: the last layer's output

    def score(self, h_last: torch.Tensor, item_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores (b, n) of h_last (b, H) against the items item_idx (n,) or all N items."""
        H = self.item_weight.shape[1]
        if h_last.dim() != 2 or h_last.shape[1] != H:
            raise ValueError(f"GRU4RecModel.score: h_last must be (b, {H}) (got shape "
                             f"{tuple(h_last.shape)})")
        if item_idx is None:
            return sampled_scores(h_last, self.item_weight, self.item_bias)
        return sampled_scores(h_last, self.item_weight.index_select(0, item_idx),
                              self.item_bias.index_select(0, item_idx))


def _dropout(x: torch.Tensor, p: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Inverted dropout with an explicit generator (so a seeded fit repeats exactly)."""
    if p <= 0:
        return x
    keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
    return x * keep * (1.0 / (1.0 - p))
