"""The paper's baselines (REFERENCE §6): POP, S-POP, Item-KNN and BPR-MF.

Each baseline scores EVERY training item for the current session prefix and is evaluated by the
same code as GRU4Rec (``fastgru4rec.evaluate.evaluate_session_steps`` and
``fastgru4rec.ops.ranking.rank_counts_dense``), so the three tie modes (standard,
conservative, median) behave identically. Ties matter here: items outside a baseline's candidate
list score exactly 0 and tie with each other.

    POP       score(i) = supp_i / (1 + supp_i) for the ``top_n`` most supported items, else 0.
    S-POP     score(i) = (occurrences of i in the session so far) + POP score(i).
    Item-KNN  s(i, j) = cooc(i, j) / ((supp_i + lmbd)^alpha * (supp_j + lmbd)^(1 - alpha)),
              cooc = XᵀX with X the session x item COUNT matrix (an item repeated in a session
              counts each time), s(i, i) = 0; only the ``n_sims`` most similar items of i keep a
              non-zero score. Prediction: the similarity row of the session's last item.
    BPR-MF    session and item factors (uniform ±init_scale), SGD with one uniform negative per
              training event, ``n_iterations`` passes over shuffled events, optional L2. At
              prediction the session vector is the mean of the item factors of the session's
              items so far; score(i) = item factor · session vector. The training session
              factors are only used for training.

supp_i is the number of training EVENTS of item i. Ties at a candidate-list boundary (POP's
top_n, Item-KNN's n_sims) are broken deterministically: the lower item index wins.

Everything is vectorised: fitting uses numpy / scipy.sparse / torch over whole arrays, and
evaluation ranks a batch of session prefixes (one per evaluation lane) at once. BPR-MF scores
every item (lanes capped so that lanes x n_items scores stay under ``MAX_SCORE_ELEMENTS``,
2^24); POP, S-POP and Item-KNN rank each target without the dense scores (``rank_step``: their
scores take few distinct values, counted by binary search or over the lane's own candidates),
so a million-item catalog costs them little more than a small one; the dense scores
(``score_step``) stay their reference, and tests hold the two to the same counts, step by step.

BPR-MF deviation, documented: the authors' code runs one SGD update per event. Here the shuffled
events are processed in mini-batches of ``batch_size`` events (default 128): the gradients of a
mini-batch are computed from the factors at its start and then added (summed, per event, with
the per-event learning rate; duplicates summed). With ~10^5 sessions and 10^4 items a row is
rarely touched twice in one mini-batch, so this is per-event SGD up to a small staleness;
``batch_size=1`` is exact per-event SGD (slow). Measured on rsc15-sample (train_full -> test):
batch_size 1, 16, 128 and 1024 give the same Recall@20 / MRR@20 to 4 decimals (0.3331 / 0.2375)
and the same per-iteration loss to 4 decimals.

API
    POP(top_n=100), SPOP(top_n=100), ItemKNN(n_sims=100, lmbd=20, alpha=0.5),
    BPRMF(n_factors=100, n_iterations=10, learning_rate=0.01, lambda_reg=0.0, init_scale=0.05,
          seed=42, batch_size=128)
    .fit(train, progress=False) -> self;  .evaluate(test, cutoffs, mode, batch_size, progress)
    -> metrics dict;
    .reset_state() / .score_step(inputs, reset, keep) -> scores (b, N)   (session-parallel lanes)
    .rank_step(inputs, targets, reset, keep) -> (n_greater, n_equal) (b,) of each lane's target
    .score_prefix(items) -> scores (N,) of one session prefix (dense item indices)
    BASELINES: {"pop": POP, "spop": SPOP, "itemknn": ItemKNN, "bprmf": BPRMF}
    run_baselines(train, test, names, cutoffs, mode, progress, params) -> {display name: result}
CLI
    fastgru4rec baselines TRAIN TEST [TEST ...] [-m 1 5 10 20] [-e conservative] [--json]
                          [--only pop,spop,itemknn,bprmf] [-p itemknn.n_sims=200 ...]
                          [--gru4rec [rsc15|yoochoose|retailrocket|diginetica|k=v,...]]
"""
from __future__ import annotations

import contextlib
import inspect
import json
import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .bench import PRESETS
from .cli import add_data_options, data_options
from .config import is_integer
from .data import (SessionData, as_session_data, read_sessions, require_evaluable,
                   require_trainable)
from .errors import ConfigError, DataError
from .evaluate import DEFAULT_CUTOFFS, check_eval_batch_size, evaluate_session_steps
from .ops.ranking import RANK_MODES, rank_counts_dense

__all__ = ["POP", "SPOP", "ItemKNN", "BPRMF", "BASELINES", "DISPLAY_NAMES", "run_baselines",
           "register_cli", "run", "make_baseline", "bpr_sgd_step", "cooccurrence", "top_k_per_row", "resolve_names", "MAX_SCORE_ELEMENTS", "GRU4REC_PRESETS"]

MAX_SCORE_ELEMENTS = 1 << 24     # lanes x n_items scores held at once by a dense evaluation
DEFAULT_EVAL_LANES = 128         # lanes per evaluation step (BPR-MF: capped by the above)
DEFAULT_THREADS = 1              # torch threads while fitting / evaluating (see _torch_threads)


@contextlib.contextmanager
def _torch_threads(n: Optional[int]):
    """Run with n torch intra-op threads (None: leave as is), restoring the setting after.

    The baselines' work is many small or memory-bound ops (BPR-MF: ~10^4 mini-batches of
    128 x 100; evaluation: compares over a lanes x N score matrix); on a busy machine the
    OpenMP synchronisation of several threads costs far more than it gives (measured 4-10x
    slower with 2 threads on a loaded 2-core box), so one thread is the default."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_int(name: str, value, minimum: int) -> int:
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"parameter {name}={value!r}: must be an integer >= {minimum}")
    return int(value)


def _check_float(name: str, value, minimum: float = 0.0, maximum: float = float("inf")) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"parameter {name}={value!r}: must be a number") from None
    if isinstance(value, bool) or not np.isfinite(v) or v < minimum or v > maximum:
        raise ConfigError(f"parameter {name}={value!r}: must be a number in [{minimum}, {maximum}]")
    return v


def _event_sessions(data: SessionData) -> np.ndarray:
    """int64 (n_events,): the session index of each event."""
    return np.repeat(np.arange(data.n_sessions, dtype=np.int64), data.session_lengths)


# ============================================================================================
# Base class: item map, evaluation, one-prefix scoring
# ============================================================================================

class _Baseline:
    name = "baseline"

    def __init__(self):
        self.n_items: Optional[int] = None
        self.item_ids: Optional[np.ndarray] = None
        self.supports: Optional[np.ndarray] = None   # int64 (N,): training events per item
        self._train_map: Optional[SessionData] = None
        self.fit_seconds: Optional[float] = None
        self.num_threads: Optional[int] = DEFAULT_THREADS   # torch threads in fit / evaluate

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> Dict:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ------------------------------------------------------------------ fit
    def fit(self, train, progress: bool = False, **read_kw) -> "_Baseline":
        """Fit on training events (a SessionData, a TSV/CSV/Parquet path or a DataFrame).
        progress: progress bars on stderr for the long fits (Item-KNN's phases, BPR-MF's
        iterations: tens of seconds each on a million-item catalog)."""
        t0 = time.perf_counter()
        train = as_session_data(train, **read_kw)
        if train.n_events == 0 or train.n_items == 0:
            raise DataError(f"{train.source}: no training events")
        self.n_items = train.n_items
        self.item_ids = train.item_ids
        # supports counted from the events themselves (equal to train.supports for data read
        # without an item map; correct also for data mapped with another catalog)
        self.supports = np.bincount(train.items, minlength=train.n_items).astype(np.int64)
        self._train_map = None
        with _torch_threads(self.num_threads):
            self._fit(train, bool(progress))
        self.reset_state()
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _fit(self, train: SessionData, progress: bool = False):
        raise NotImplementedError

    def _require_fitted(self):
        if self.n_items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")

    def item_map(self) -> SessionData:
        """An event-less SessionData carrying the training item map (for read_sessions)."""
        self._require_fitted()
        if self._train_map is None:
            self._train_map = SessionData.item_map_only(self.item_ids, self.supports,
                                                        f"<{self.name} item map>")
        return self._train_map

    # ------------------------------------------------------------------ scoring
    def reset_state(self):
        """Forget all per-lane state (the next score_step starts fresh lanes)."""

    def score_step(self, inputs: torch.Tensor, reset: torch.Tensor,
                   keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One session-parallel step. inputs int64 (b,): each lane's current item; reset bool
        (b,): lanes starting a new session; keep int64 (b,) or None: lanes of the previous step
        that carry on, in order (applied first, then reset). Returns scores (b, N) of all
        items for each lane's prefix (the prefix includes inputs)."""
        raise NotImplementedError

    def score_prefix(self, items: Sequence[int]) -> np.ndarray:
        """Scores (N,) of all items after the session prefix `items` (dense item indices,
        oldest first), through the same score_step path as the evaluation."""
        self._require_fitted()
        items = [int(i) for i in items]
        if not items:
            raise ValueError("score_prefix needs at least one item")
        if min(items) < 0 or max(items) >= self.n_items:
            raise DataError(f"score_prefix: item indices must be in 0..{self.n_items - 1}")
        self.reset_state()
        scores = None
        for t, item in enumerate(items):
            scores = self.score_step(torch.tensor([item]), torch.tensor([t == 0]), None)
        self.reset_state()
        return scores[0].cpu().numpy().copy()

    #: evaluation holds a (lanes, N) score block (rank_step is the dense default)
    dense_ranks = True

    def rank_step(self, inputs: torch.Tensor, targets: torch.Tensor, reset: torch.Tensor,
                  keep: Optional[torch.Tensor] = None):
        """score_step's step, then each lane's target ranked among the scores: (n_greater,
        n_equal) int64 (b,). The reference for the baselines that rank without the dense
        (b, N) scores (POP, S-POP, Item-KNN: their scores are a few distinct values, found in
        O(b log N)); tests hold each fast form to it, step by step."""
        return rank_counts_dense(self.score_step(inputs, reset, keep), targets)

    # ------------------------------------------------------------------ evaluation
    def eval_lanes(self, batch_size: Optional[int] = None) -> int:
        """Evaluation lanes: batch_size (default 128), capped so that lanes x N <= 2^24 when
        the ranks come from dense scores."""
        self._require_fitted()
        cap = max(1, MAX_SCORE_ELEMENTS // max(self.n_items, 1)) if self.dense_ranks else None
        want = DEFAULT_EVAL_LANES if batch_size is None else _check_int("batch_size", batch_size, 1)
        return max(1, want if cap is None else min(want, cap))

    @torch.no_grad()
    def evaluate(self, test, cutoffs: Sequence[int] = DEFAULT_CUTOFFS, mode: str = "conservative",
                 batch_size: Optional[int] = None, progress: bool = False, **read_kw) -> Dict:
        """Recall@K and MRR@K, full ranking over all training items (REFERENCE §5). Returns
        {"recall": {K: v}, "mrr": {K: v}, "n_events": evaluation points, "mode": mode,
        "n_unknown_events": test events dropped for items unknown to the training data}."""
        self._require_fitted()
        if mode not in RANK_MODES:
            raise ConfigError(f"unknown evaluation mode {mode!r} (choose from {', '.join(RANK_MODES)})")
        test = as_session_data(test, item_map=self.item_map(), **read_kw)
        if test.n_items != self.n_items:
            raise DataError(f"{test.source}: mapped with a catalog of {test.n_items} items but "
                            f"{self.name} was fitted on {self.n_items}")

        try:
            with _torch_threads(self.num_threads):
                res = evaluate_session_steps(self.rank_step, test, cutoffs, mode,
                                             self.eval_lanes(batch_size), progress,
                                             self.reset_state)
        finally:
            self.reset_state()
        res["n_unknown_events"] = int(test.n_unknown_events)
        return res


# ============================================================================================
# POP and S-POP
# ============================================================================================

def _pop_scores(supports: np.ndarray, top_n: int) -> np.ndarray:
    """float64 (N,): supp/(1+supp) for the top_n most supported items (supp > 0; ties: lower
    index first), 0 elsewhere."""
    order = np.lexsort((np.arange(len(supports)), -supports))[:top_n]
    order = order[supports[order] > 0]
    pop = np.zeros(len(supports), dtype=np.float64)
    s = supports[order].astype(np.float64)
    pop[order] = s / (1.0 + s)
    return pop


class POP(_Baseline):
    """Popularity: supp/(1+supp) for the top_n most supported training items, 0 for the rest."""
    name = "POP"

    def __init__(self, top_n: int = 100):
        super().__init__()
        self.top_n = _check_int("top_n", top_n, 1)

    dense_ranks = False

    def _fit(self, train, progress=False):
        self.pop = torch.from_numpy(_pop_scores(self.supports, self.top_n))   # (N,) float64
        self._pop_sorted = torch.sort(self.pop).values

    def score_step(self, inputs, reset, keep=None):
        return self.pop.unsqueeze(0).expand(inputs.shape[0], -1)

    def _pop_counts(self, values: torch.Tensor):
        """(#items with pop > v, #items with pop == v) for each v of values (float64 (b,)):
        two binary searches in the sorted scores."""
        above_or_equal = torch.searchsorted(self._pop_sorted, values, side="left")
        above = torch.searchsorted(self._pop_sorted, values, side="right")
        return self.n_items - above, above - above_or_equal

    def rank_step(self, inputs, targets, reset, keep=None):
        """The same counts as the dense scores give (every lane scores pop): O(b log N)."""
        return self._pop_counts(self.pop[targets])


class SPOP(POP):
    """Session popularity: occurrences of the item in the session so far + its POP score."""
    name = "S-POP"

    def _fit(self, train, progress=False):
        super()._fit(train, progress)
        self._pop_list = self.pop.tolist()      # per-item lookups in rank_step's lane loop
        self._counts: Optional[torch.Tensor] = None
        self._seen: list = []

    def reset_state(self):
        self._counts = None     # float64 (b, N): occurrences per lane (score_step)
        self._seen = []         # per lane {item: occurrences} (rank_step)

    def rank_step(self, inputs, targets, reset, keep=None):
        """The dense scores' counts without them. A seen item scores its count (>= 1) + pop
        (< 1), above every unseen item (pop alone): a seen target competes with the lane's
        seen items only; an unseen one loses to all of them and to the items whose pop is
        higher, less those among the seen (counted already). Python per lane over the
        session's distinct items; binary searches for the catalog."""
        # lane state as score_step keeps it: fresh lanes on the first step (keep and reset
        # then have nothing to act on), else the kept lanes first, then the resets
        if not self._seen:
            seen = [{} for _ in range(inputs.shape[0])]
        else:
            # copies, as score_step's index_select: a lane kept twice must not share its dict
            seen = ([dict(self._seen[k]) for k in keep.tolist()] if keep is not None
                    else self._seen)
            for lane in torch.nonzero(reset).flatten().tolist():
                seen[lane] = {}
        for lane, item in enumerate(inputs.tolist()):
            seen[lane][item] = seen[lane].get(item, 0) + 1
        self._seen = seen
        pop = self._pop_list
        t_list = targets.tolist()
        all_greater, all_equal = self._pop_counts(self.pop[targets])
        n_greater, n_equal = [], []
        for lane, t in enumerate(t_list):
            counts = seen[lane]
            c_t = counts.get(t, 0)
            s_t = c_t + pop[t]                  # the dense path's float64 sum, in Python's
            if c_t:
                scores = [c + pop[i] for i, c in counts.items()]
                n_greater.append(sum(s > s_t for s in scores))
                n_equal.append(sum(s == s_t for s in scores))
            else:
                seen_pops = [pop[i] for i in counts]
                n_greater.append(len(counts) + int(all_greater[lane])
                                 - sum(p > s_t for p in seen_pops))
                n_equal.append(int(all_equal[lane]) - sum(p == s_t for p in seen_pops))
        return torch.tensor(n_greater, dtype=torch.int64), torch.tensor(n_equal, dtype=torch.int64)

    def score_step(self, inputs, reset, keep=None):
        b = inputs.shape[0]
        counts = self._counts
        if counts is None:
            counts = torch.zeros(b, self.n_items, dtype=torch.float64)
        else:
            if keep is not None:
                counts = counts.index_select(0, keep)
            if bool(reset.any()):
                counts[reset] = 0.0
        counts[torch.arange(b), inputs] += 1.0
        self._counts = counts
        return counts + self.pop


# ============================================================================================
# Item-KNN
# ============================================================================================

def cooccurrence(data: SessionData, n_items: Optional[int] = None):
    """scipy CSR (N, N) int64: cooc = XᵀX with X the session x item COUNT matrix, diagonal
    removed (an item repeated in a session counts each time)."""
    import scipy.sparse as sp

    n_items = data.n_items if n_items is None else n_items
    ones = np.ones(data.n_events, dtype=np.int64)
    X = sp.csr_matrix((ones, (_event_sessions(data), data.items)),
                      shape=(data.n_sessions, n_items))      # duplicates are summed
    X.sum_duplicates()
    C = (X.T.tocsr() @ X).tocoo()
    off = C.row != C.col
    return sp.csr_matrix((C.data[off], (C.row[off], C.col[off])), shape=(n_items, n_items))


def top_k_per_row(M, k: int):
    """Keep the k largest values of each row of a scipy sparse matrix (ties: lower column
    first), vectorised: one lexsort over all non-zeros. Returns a CSR matrix, each row's
    entries ordered by decreasing value."""
    import scipy.sparse as sp

    C = M.tocoo()
    order = np.lexsort((C.col, -C.data, C.row))
    row, col, val = C.row[order], C.col[order], C.data[order]
    counts = np.bincount(row, minlength=M.shape[0])
    starts = np.zeros(M.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    rank = np.arange(len(row), dtype=np.int64) - starts[row]
    sel = rank < k
    row, col, val = row[sel], col[sel], val[sel]
    indptr = np.zeros(M.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=M.shape[0]), out=indptr[1:])
    return sp.csr_matrix((val, col, indptr), shape=M.shape)


class ItemKNN(_Baseline):
    """Item-to-item similarity of the session's last item (co-occurrence in training sessions).

    s(i, j) = cooc(i, j) / ((supp_i + lmbd)^alpha * (supp_j + lmbd)^(1 - alpha)), s(i, i) = 0,
    only the n_sims most similar items of i non-zero.
    """
    name = "Item-KNN"

    def __init__(self, n_sims: int = 100, lmbd: float = 20.0, alpha: float = 0.5):
        super().__init__()
        self.n_sims = _check_int("n_sims", n_sims, 1)
        self.lmbd = _check_float("lmbd", lmbd, 0.0)
        self.alpha = _check_float("alpha", alpha, 0.0, 1.0)

    def _fit(self, train, progress=False):
        from tqdm.auto import tqdm

        # three phases, ~39 s in all on 2M items / 12M events: a bar naming the current one
        with tqdm(total=3, desc="Item-KNN", unit="phase", disable=not progress, leave=False,
                  postfix="co-occurrence") as bar:
            C = cooccurrence(train, self.n_items).tocoo()
            bar.set_postfix_str("similarities", refresh=False)
            bar.update()
            supp = self.supports.astype(np.float64)
            den_row = (supp + self.lmbd) ** self.alpha
            den_col = (supp + self.lmbd) ** (1.0 - self.alpha)
            with np.errstate(divide="ignore", invalid="ignore"):   # lmbd = 0 with supp = 0: no cooc
                sim = C.data.astype(np.float64) / den_row[C.row] / den_col[C.col]
            C.data = sim
            del sim
            bar.set_postfix_str(f"top {self.n_sims} per item", refresh=False)
            bar.update()
            self.sims = top_k_per_row(C, self.n_sims)            # CSR (N, N) float64
            del C
            bar.update()
        # the CSR arrays as tensors: a step gathers its lanes' rows from them (a padded
        # (N, K) copy of the lists was 12x the CSR's memory on a million-item catalog). Views,
        # not copies (scipy's int32 indices index torch tensors as well as int64 ones): the
        # copies were 0.66 GB beside the CSR's 0.49 GB on 2M items
        S = self.sims
        self._indptr = torch.from_numpy(S.indptr)
        self._indices = torch.from_numpy(S.indices)
        self._data = torch.from_numpy(S.data.astype(np.float64, copy=False))

    dense_ranks = False

    def _rows(self, inputs: torch.Tensor):
        """The similarity rows of the lanes' items, padded to the longest one: (idx int64,
        val float64, valid bool), each (b, K). Padding is (the row's own item, 0.0, False):
        item i scores 0 in its own row anyway (s(i, i) = 0), so a scatter of it is a no-op."""
        start = self._indptr[inputs]
        length = self._indptr[inputs + 1] - start
        K = max(1, int(length.max()) if inputs.numel() else 1)
        col = torch.arange(K)
        valid = col.unsqueeze(0) < length.unsqueeze(1)
        pos = (start.unsqueeze(1) + col).masked_fill(~valid, 0)
        if self._indices.numel() == 0:     # no co-occurrence at all: every row empty
            return inputs.unsqueeze(1).expand(-1, K), torch.zeros(len(inputs), K,
                                                                   dtype=torch.float64), valid
        idx = torch.where(valid, self._indices[pos], inputs.unsqueeze(1))
        val = torch.where(valid, self._data[pos], torch.zeros((), dtype=torch.float64))
        return idx, val, valid

    def score_step(self, inputs, reset, keep=None):
        b = inputs.shape[0]
        idx, val, _ = self._rows(inputs)
        return torch.zeros(b, self.n_items, dtype=torch.float64).scatter_(1, idx, val)

    def rank_step(self, inputs, targets, reset, keep=None):
        """The dense scores' counts from the lane's row alone: its K entries plus N - (their
        number) zeros (the items outside the row, the lane's own item included)."""
        idx, val, valid = self._rows(inputs)
        hit = valid & (idx == targets.unsqueeze(1))            # at most one per lane
        s_t = (val * hit).sum(1, keepdim=True)                 # 0.0 when t is not in the row
        n_zeros = self.n_items - valid.sum(1)
        n_greater = (valid & (val > s_t)).sum(1) + torch.where(s_t.squeeze(1) < 0, n_zeros, 0)
        n_equal = (valid & (val == s_t)).sum(1) + torch.where(s_t.squeeze(1) == 0, n_zeros, 0)
        return n_greater, n_equal


# ============================================================================================
# BPR-MF
# ============================================================================================

def bpr_sgd_step(U: torch.Tensor, I: torch.Tensor, u: torch.Tensor, p: torch.Tensor,
                 n: torch.Tensor, lr: float, lam: float = 0.0) -> torch.Tensor:
    """One mini-batch of BPR SGD, in place. For each event k (session u_k, positive p_k,
    negative n_k), from the factors at the start of the mini-batch:
        x = U_u·(I_p - I_n),  c = 1 - σ(x)
        U_u += lr (c (I_p - I_n) - lam U_u)
        I_p += lr (c U_u - lam I_p)
        I_n += lr (-c U_u - lam I_n)
    Updates of a row used several times are summed. Returns x (the score differences)."""
    uF, iF1, iF2 = U[u], I[p], I[n]
    diff = iF1 - iF2
    x = (uF * diff).sum(1)
    c = torch.sigmoid(-x).unsqueeze(1)          # 1 - σ(x)
    cu = c * uF
    if lam:
        U.index_add_(0, u, diff.mul_(c).sub_(uF, alpha=lam), alpha=lr)
        I.index_add_(0, p, cu - lam * iF1, alpha=lr)
        I.index_add_(0, n, cu.neg_().sub_(iF2, alpha=lam), alpha=lr)
    else:
        U.index_add_(0, u, diff.mul_(c), alpha=lr)
        I.index_add_(0, p, cu, alpha=lr)
        I.index_add_(0, n, cu, alpha=-lr)
    return x


class BPRMF(_Baseline):
    """BPR matrix factorisation of the session x item matrix; a test session is represented by
    the mean of its items' factors.

    Training: for each shuffled training event (session s, item p) and a uniformly drawn item n,
    x = U_s·(I_p - I_n), c = 1 - σ(x), and (learning rate lr, L2 lambda_reg)
        U_s += lr (c (I_p - I_n) - λ U_s),  I_p += lr (c U_s - λ I_p),  I_n += lr (-c U_s - λ I_n).
    Mini-batches of `batch_size` events replace per-event SGD (see the module docstring).
    """
    name = "BPR-MF"

    def __init__(self, n_factors: int = 100, n_iterations: int = 10, learning_rate: float = 0.01,
                 lambda_reg: float = 0.0, init_scale: float = 0.05, seed: int = 42,
                 batch_size: int = 128):
        super().__init__()
        self.n_factors = _check_int("n_factors", n_factors, 1)
        self.n_iterations = _check_int("n_iterations", n_iterations, 0)
        self.learning_rate = _check_float("learning_rate", learning_rate, 0.0)
        self.lambda_reg = _check_float("lambda_reg", lambda_reg, 0.0)
        self.init_scale = _check_float("init_scale", init_scale, 0.0)
        self.seed = _check_int("seed", seed, 0)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.losses = []

    def _fit(self, train, progress=False):
        from tqdm.auto import tqdm

        g = torch.Generator().manual_seed(self.seed)
        F, N, S = self.n_factors, self.n_items, train.n_sessions
        a = self.init_scale
        U = (torch.rand(S, F, generator=g, dtype=torch.float32) * 2 - 1) * a
        I = (torch.rand(N, F, generator=g, dtype=torch.float32) * 2 - 1) * a
        ses = torch.from_numpy(_event_sessions(train))
        itm = torch.from_numpy(train.items)
        n_ev, M = train.n_events, self.batch_size
        lr, lam = self.learning_rate, self.lambda_reg
        self.losses = []
        for it in range(self.n_iterations):
            perm = torch.randperm(n_ev, generator=g)
            neg_all = torch.randint(N, (n_ev,), generator=g)
            ses_all, pos_all = ses[perm], itm[perm]
            total = 0.0
            # one bar per iteration (~33 s each on 12M events), as the GRU4Rec epochs
            with tqdm(total=n_ev, desc=f"BPR-MF iteration {it + 1}/{self.n_iterations}",
                      unit="ev", disable=not progress, leave=False, mininterval=0.5) as bar:
                for lo in range(0, n_ev, M):
                    x = bpr_sgd_step(U, I, ses_all[lo:lo + M], pos_all[lo:lo + M],
                                     neg_all[lo:lo + M], lr, lam)
                    total += float(torch.nn.functional.logsigmoid(x).sum())
                    bar.update(x.shape[0])
            self.losses.append(-total / max(n_ev, 1))
        self.item_factors = I             # (N, F) float32
        self.session_factors = U          # (S, F): training sessions only, not used to predict
        self._sum = None

    def reset_state(self):
        self._sum = None        # (b, F) sum of the lanes' item factors so far
        self._cnt = None        # (b,) number of items so far

    def score_step(self, inputs, reset, keep=None):
        b = inputs.shape[0]
        if self._sum is None:
            s = torch.zeros(b, self.n_factors, dtype=self.item_factors.dtype)
            n = torch.zeros(b, dtype=self.item_factors.dtype)
        else:
            s, n = self._sum, self._cnt
            if keep is not None:
                s, n = s.index_select(0, keep), n.index_select(0, keep)
            if bool(reset.any()):
                s[reset] = 0.0
                n[reset] = 0.0
        s = s + self.item_factors[inputs]
        n = n + 1.0
        self._sum, self._cnt = s, n
        return (s / n.unsqueeze(1)) @ self.item_factors.t()


# ============================================================================================
# Running several baselines
# ============================================================================================

BASELINES = {"pop": POP, "spop": SPOP, "itemknn": ItemKNN, "bprmf": BPRMF}
DISPLAY_NAMES = {"pop": "POP", "spop": "S-POP", "itemknn": "Item-KNN", "bprmf": "BPR-MF"}
_ALIASES = {"s-pop": "spop", "item-knn": "itemknn", "knn": "itemknn", "bpr-mf": "bprmf",
            "bpr": "bprmf", "bprmf": "bprmf"}

# GRU4Rec rows for the comparison table: the authors' published best parameters, bench's
# presets (one copy of them) with the papers' 10 epochs
GRU4REC_PRESETS = {name: {**preset, "n_epochs": 10} for name, preset in PRESETS.items()}


def resolve_names(names) -> list:
    """'pop,itemknn' / ['POP', 'Item-KNN'] / None (all) -> canonical keys, in BASELINES order."""
    if names is None:
        return list(BASELINES)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    keys = []
    for n in names:
        k = str(n).strip().lower()
        k = _ALIASES.get(k, k)
        if k not in BASELINES:
            raise ConfigError(f"unknown baseline {n!r} (choose from {', '.join(BASELINES)})")
        if k not in keys:
            keys.append(k)
    if not keys:
        raise ConfigError("no baseline selected")
    return keys


def make_baseline(name: str, **params) -> _Baseline:
    key = resolve_names([name])[0]
    cls = BASELINES[key]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {DISPLAY_NAMES[key]} "
                          f"(choose from {', '.join(allowed)})")
    return cls(**params)


def run_baselines(train, test, names=None, cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
                  mode: str = "conservative", progress: bool = False,
                  params: Optional[Dict[str, Dict]] = None, batch_size: Optional[int] = None,
                  **read_kw) -> Dict[str, Dict]:
    """Fit each selected baseline on train and evaluate it on test.

    train / test: SessionData or paths (test is mapped with the training item map).
    names: None (all four), 'pop,itemknn' or a list; params: {key: {param: value}}.
    Returns {display name ("POP", "S-POP", "Item-KNN", "BPR-MF"): evaluation result dict with
    extra keys "fit_seconds" and "eval_seconds"}."""
    keys = resolve_names(names)
    params = dict(params or {})
    for k in list(params):
        if resolve_names([k])[0] not in keys:
            raise ConfigError(f"parameters given for baseline {k!r}, which is not selected")
    params = {resolve_names([k])[0]: v for k, v in params.items()}
    models = {k: make_baseline(k, **params.get(k, {})) for k in keys}   # check params first
    train = as_session_data(train, **read_kw)
    test = as_session_data(test, item_map=train, **read_kw)
    out = {}
    for k in keys:
        # taken out of the dict: a fitted model (Item-KNN's similarities, BPR-MF's factors)
        # is freed once its results are in, not kept to the end beside the next ones
        model = models.pop(k)
        model.fit(train, progress=progress)
        t0 = time.perf_counter()
        res = model.evaluate(test, cutoffs, mode, batch_size, progress)
        res["fit_seconds"] = model.fit_seconds
        res["eval_seconds"] = time.perf_counter() - t0
        out[DISPLAY_NAMES[k]] = res
        del model
    return out


# ============================================================================================
# CLI: fastgru4rec baselines TRAIN TEST ...
# ============================================================================================

def format_table(rows: Dict[str, Dict], cutoffs: Sequence[int], timings: bool = True) -> str:
    """One row per model; columns Recall@K, MRR@K (and fit / eval seconds when present)."""
    name_w = max([len("model")] + [len(n) for n in rows])
    cols = [f"Recall@{k}" for k in cutoffs] + [f"MRR@{k}" for k in cutoffs]
    w = max(9, max(len(c) for c in cols))
    show_t = timings and any("fit_seconds" in r for r in rows.values())
    head = f"{'model':<{name_w}}  " + " ".join(f"{c:>{w}}" for c in cols)
    if show_t:
        head += f" {'fit s':>8} {'eval s':>8}"
    lines = [head, "-" * len(head)]
    for name, res in rows.items():
        vals = [res["recall"][k] for k in cutoffs] + [res["mrr"][k] for k in cutoffs]
        line = f"{name:<{name_w}}  " + " ".join(f"{v:>{w}.4f}" for v in vals)
        if show_t:
            f_s, e_s = res.get("fit_seconds"), res.get("eval_seconds")
            line += f" {f_s:>8.1f}" if f_s is not None else f" {'':>8}"
            line += f" {e_s:>8.1f}" if e_s is not None else f" {'':>8}"
        lines.append(line)
    return "\n".join(lines)


def _parse_value(text: str, default):
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_baseline_params(items: Sequence[str]) -> Dict[str, Dict]:
    """['itemknn.n_sims=200', 'bprmf.n_factors=50,bprmf.n_iterations=5'] ->
    {'itemknn': {'n_sims': 200}, 'bprmf': {'n_factors': 50, 'n_iterations': 5}}."""
    out: Dict[str, Dict] = {}
    for item in items or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part or "." not in part.split("=", 1)[0]:
                raise ConfigError(f"baseline parameter {part!r} is not of the form "
                                  "baseline.key=value (e.g. itemknn.n_sims=200)")
            lhs, value = part.split("=", 1)
            name, key = lhs.split(".", 1)
            bkey = resolve_names([name])[0]
            cls = BASELINES[bkey]
            sig = inspect.signature(cls.__init__).parameters
            key = key.strip()
            if key not in sig or key == "self":
                raise ConfigError(f"unknown parameter {key!r} for {DISPLAY_NAMES[bkey]} "
                                  f"(choose from {', '.join(p for p in sig if p != 'self')})")
            try:
                out.setdefault(bkey, {})[key] = _parse_value(value.strip(), sig[key].default)
            except ValueError:
                raise ConfigError(f"baseline parameter {part!r}: {value.strip()!r} is not a "
                                  f"valid {type(sig[key].default).__name__}") from None
    return out


def _gru4rec_params(spec: str) -> Dict:
    from .config import GRU4RecConfig, parse_param_string

    spec = (spec or "").strip()
    if spec.lower() in GRU4REC_PRESETS:
        return dict(GRU4REC_PRESETS[spec.lower()])
    params = parse_param_string(spec) if spec else dict(GRU4REC_PRESETS["rsc15"])
    GRU4RecConfig.from_dict(params, where="--gru4rec parameters")
    return params


def register_cli(subparsers) -> None:
    """Add the `baselines` subcommand to the fastgru4rec parser."""
    p = subparsers.add_parser(
        "baselines", help="evaluate POP, S-POP, Item-KNN and BPR-MF (optionally beside GRU4Rec)",
        description="Fit the paper's baselines on TRAIN and evaluate them on each TEST file with "
                    "GRU4Rec's full-ranking protocol (Hidasi et al., ICLR 2016).")
    p.add_argument("train", help="training events (.tsv/.csv/.parquet)")
    p.add_argument("test", nargs="+", help="test events, mapped with the training item map")
    p.add_argument("-m", "--measure", dest="cutoffs", type=int, nargs="+", default=[1, 5, 10, 20],
                   metavar="K", help="cut-offs for Recall@K and MRR@K (default: 1 5 10 20)")
    p.add_argument("-e", "--eval-type", dest="mode", default="conservative",
                   choices=list(RANK_MODES), help="how ties are ranked (default: conservative)")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated subset of pop,spop,itemknn,bprmf (default: all)")
    p.add_argument("-p", "--param", dest="bparams", action="append", default=[],
                   metavar="NAME.KEY=VALUE",
                   help="baseline parameter, e.g. itemknn.n_sims=200 or bprmf.n_factors=50 "
                        "(repeatable; comma-separated lists allowed)")
    p.add_argument("--gru4rec", nargs="?", const="rsc15", default=None, metavar="PARAMS",
                   help="also train and evaluate GRU4Rec: a preset (rsc15, yoochoose, "
                        "retailrocket, diginetica: the authors' best parameters) or a "
                        "parameter string k=v,k=v (default preset: rsc15)")
    p.add_argument("--device", default="cpu", help="device for GRU4Rec (cpu, cuda, auto)")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="evaluation lanes (default: the baselines 128, for BPR-MF capped so "
                        "lanes x items <= 2^24; GRU4Rec 512)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch threads for the whole command, the baselines and --gru4rec "
                        "(default 1; 0: leave torch's setting)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("-q", "--quiet", action="store_true")
    add_data_options(p)
    p.set_defaults(func=run)


def _jsonable(res: Dict) -> Dict:
    return {k: ({str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v)
            for k, v in res.items()}


def run(args) -> int:
    """Handler of `fastgru4rec baselines`."""
    quiet = bool(args.json or getattr(args, "quiet", False))

    def log(msg):
        if not quiet:
            print(msg, file=sys.stderr)

    cutoffs = [int(k) for k in args.cutoffs]
    if not cutoffs or any(k <= 0 for k in cutoffs):
        raise ConfigError(f"cut-offs must be positive integers (got {cutoffs})")
    if args.eval_batch_size is not None:
        check_eval_batch_size(args.eval_batch_size)
    keys = resolve_names(args.only)
    bparams = parse_baseline_params(args.bparams)
    for k in bparams:
        if k not in keys:
            raise ConfigError(f"parameters given for {DISPLAY_NAMES[k]}, which --only leaves out")
    models = {k: make_baseline(k, **bparams.get(k, {})) for k in keys}
    threads = getattr(args, "threads", DEFAULT_THREADS)
    if threads is not None and threads < 0:
        raise ConfigError(f"--threads must be >= 0 (got {threads})")
    for m in models.values():
        m.num_threads = threads or None
    g_params = _gru4rec_params(args.gru4rec) if args.gru4rec is not None else None
    read_kw = data_options(args)

    g = None
    if g_params is not None:
        from .estimator import GRU4Rec

        g = GRU4Rec(device=args.device, **g_params)   # a bad device: now, not after the baselines

    t0 = time.perf_counter()
    train = read_sessions(args.train, **read_kw)
    log(f"train: {train.n_events:,} events, {train.n_sessions:,} sessions, {train.n_items:,} "
        f"items ({time.perf_counter() - t0:.1f} s)")
    if g is not None:
        require_trainable(train, g.config.min_lanes)
    tests = {str(t): read_sessions(t, item_map=train, **read_kw) for t in args.test}
    for test in tests.values():
        require_evaluable(test)   # else every metric would be a meaningless 0
    results: Dict[str, Dict[str, Dict]] = {t: {} for t in tests}

    # the parameters for --json now: each fitted model is freed once its results are in (as
    # run_baselines; all four kept alive to the end: 5.3 GiB peak vs 4.0 for Item-KNN alone
    # on a 2M-item catalog)
    model_params = {DISPLAY_NAMES[k]: m.get_params() for k, m in models.items()}
    for k in keys:
        model = models.pop(k)
        model.fit(train, progress=not quiet)
        log(f"{model.name}: fitted in {model.fit_seconds:.1f} s")
        for path, test in tests.items():
            t1 = time.perf_counter()
            res = model.evaluate(test, cutoffs, args.mode, args.eval_batch_size,
                                 progress=not quiet)
            res["fit_seconds"] = model.fit_seconds
            res["eval_seconds"] = time.perf_counter() - t1
            results[path][model.name] = res
        del model
    if g is not None:
        t1 = time.perf_counter()
        g.fit(train, progress=not quiet, on_epoch=lambda s: log(
            f"GRU4Rec epoch {s.epoch}: loss {s.loss:.4f} ({s.seconds:.1f} s)"))
        fit_s = time.perf_counter() - t1
        for path, test in tests.items():
            t2 = time.perf_counter()
            res = g.evaluate(test, cutoffs, args.mode, args.eval_batch_size or 512,
                             progress=not quiet)
            res["fit_seconds"] = fit_s
            res["eval_seconds"] = time.perf_counter() - t2
            results[path]["GRU4Rec"] = res

    if args.json:
        out = {"train": str(args.train), "mode": args.mode, "cutoffs": cutoffs,
               "params": model_params,
               "results": {p: {n: _jsonable(r) for n, r in rs.items()}
                           for p, rs in results.items()}}
        if g_params is not None:
            out["params"]["GRU4Rec"] = g_params
        print(json.dumps(out, indent=1))
        return 0
    for path, rows in results.items():
        n_ev = next(iter(rows.values()))["n_events"] if rows else 0
        unk = tests[path].n_unknown_events
        print(f"\n{path}: {n_ev:,} evaluation points, {args.mode} ranking"
              + (f", {unk:,} events of unknown items dropped" if unk else ""))
        print(format_table(rows, cutoffs))
    return 0
