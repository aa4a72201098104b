"""Next-item evaluation with full ranking (REFERENCE §5).

Every test session starts from a zero state; its first event is only a query and each later
event a target, ranked against ALL training items. Test sessions run session-parallel on
``batch_size`` lanes (the same schedule as training, without the n_sample = 0 stop).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from .batching import build_schedule
from .config import MAX_BATCH_SIZE, is_integer
from .data import SessionData, require_evaluable
from .errors import ConfigError, DataError
from .ops.ranking import RANK_MODES, rank_counts, ranks_from_counts

#: the most evaluation lanes (sessions evaluated side by side), as for training's batch_size
MAX_EVAL_LANES = MAX_BATCH_SIZE


def check_eval_batch_size(n: int, option: str = "--eval-batch-size") -> None:
    """ConfigError (a ValueError) naming ``option`` unless 1 <= n <= MAX_EVAL_LANES; the
    commands call it before their long work, evaluation itself again. A float or bool is
    refused (2.5 lanes would fail inside the evaluation, True would mean 1)."""
    if not is_integer(n) or not 0 < n <= MAX_EVAL_LANES:
        raise ConfigError(f"{option} must be an integer in [1, {MAX_EVAL_LANES}] (got {n!r})")


DEFAULT_CUTOFFS = (1, 5, 10, 20)


class MetricAccumulator:
    """Sums Recall@K and MRR@K over evaluation points."""

    def __init__(self, cutoffs: Sequence[int], mode: str):
        cutoffs = tuple(cutoffs)
        if not cutoffs or any(not is_integer(k) or k <= 0 for k in cutoffs):
            raise ValueError(f"cut-offs must be positive integers (got {list(cutoffs)})")
        cutoffs = tuple(int(k) for k in cutoffs)
        if mode not in RANK_MODES:
            raise ValueError(f"unknown evaluation mode {mode!r} (choose from {', '.join(RANK_MODES)})")
        self.cutoffs, self.mode = cutoffs, mode
        self.hits = np.zeros(len(cutoffs))
        self.rr = np.zeros(len(cutoffs))
        self.n = 0

    def add_counts(self, n_greater: torch.Tensor, n_equal: torch.Tensor):
        ranks = ranks_from_counts(n_greater, n_equal, self.mode).cpu().numpy()
        for j, k in enumerate(self.cutoffs):
            inside = ranks <= k
            self.hits[j] += inside.sum()
            self.rr[j] += np.where(inside, 1.0 / ranks, 0.0).sum()
        self.n += ranks.shape[0]

    def result(self) -> Dict:
        n = max(self.n, 1)
        return {"recall": {k: float(self.hits[j] / n) for j, k in enumerate(self.cutoffs)},
                "mrr": {k: float(self.rr[j] / n) for j, k in enumerate(self.cutoffs)},
                "n_events": int(self.n), "mode": self.mode}


def evaluate_session_steps(step_counts: Callable, test: SessionData, cutoffs: Sequence[int],
                           mode: str, batch_size: int, progress: bool = False,
                           reset_state: Optional[Callable] = None) -> Dict:
    """Drive the session-parallel test schedule and accumulate metrics.

    step_counts(inputs (b,), targets (b,), reset bool (b,), keep int64 (b,) or None)
    -> (n_greater, n_equal) for the b lanes; it keeps whatever per-lane state it needs.
    """
    from tqdm.auto import tqdm

    check_eval_batch_size(batch_size, "evaluation batch_size")
    acc = MetricAccumulator(cutoffs, mode)
    require_evaluable(test)   # every caller: no evaluation point would give metrics of 0
    sched = build_schedule(test.offsets, test.items, batch_size, min_lanes=1)
    inputs = torch.from_numpy(sched.inputs.astype(np.int64))
    targets = torch.from_numpy(sched.targets.astype(np.int64))
    reset = torch.from_numpy(sched.reset.astype(np.bool_))
    keep = torch.from_numpy(sched.keep.astype(np.int64))
    if reset_state is not None:
        reset_state()
    for t in tqdm(range(sched.n_steps), desc="evaluate", unit="step", disable=not progress,
                  leave=False, mininterval=0.5):
        lo, hi = sched.step_offsets[t], sched.step_offsets[t + 1]
        k0, k1 = sched.keep_offsets[t], sched.keep_offsets[t + 1]
        ng, ne = step_counts(inputs[lo:hi], targets[lo:hi], reset[lo:hi],
                             keep[k0:k1] if k1 > k0 else None)
        acc.add_counts(ng, ne)
    return acc.result()


@torch.no_grad()
def evaluate_model(model, test: SessionData, cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
                   mode: str = "conservative", batch_size: int = 512, device=None,
                   progress: bool = False, max_score_elements: int = 1 << 24) -> Dict:
    """Recall@K / MRR@K of a GRU4RecModel on test data mapped with its training item map."""
    if test.n_items != model.n_items:
        raise DataError(f"{test.source}: mapped with a catalog of {test.n_items} items but the "
                        f"model has {model.n_items}; read it with the training item map")
    device = device or model.item_weight.device
    was_training = model.training
    model.eval()
    state = {}

    def reset_state():
        state["hidden"] = model.init_hidden(min(batch_size, max(test.n_sessions, 1)), device)

    def step_counts(inp, tgt, reset, keep):
        hidden = state["hidden"]
        if keep is not None:
            hidden = [h.index_select(0, keep.to(device)) for h in hidden]
        if bool(reset.any()):
            # set, not multiplied by 0: a new session starts from zeros even after a state
            # that overflowed to inf/NaN (NaN * 0 is NaN)
            m = reset.to(device).unsqueeze(1)                   # (b, 1) bool
            hidden = [h.masked_fill(m, 0.0) for h in hidden]
        h_last, hidden = model(inp.to(device), hidden)
        state["hidden"] = hidden
        # streaming rank over item tiles: plain torch on CPU, the Triton kernel on CUDA
        return rank_counts(h_last, model.item_weight, model.item_bias, tgt.to(device),
                           max_elements=max_score_elements)

    try:
        return evaluate_session_steps(step_counts, test, cutoffs, mode, batch_size, progress,
                                      reset_state)
    finally:
        model.train(was_training)
