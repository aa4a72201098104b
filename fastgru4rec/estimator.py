"""GRU4Rec: the estimator with the authors' parameter names.

    from fastgru4rec import GRU4Rec
    model = GRU4Rec(layers=[100], loss="cross-entropy", batch_size=32, dropout_p_hidden=0.4,
                    learning_rate=0.2, momentum=0.2, sample_alpha=0.5, n_sample=2048, logq=1.0)
    model.fit("train.tsv")
    model.evaluate("test.tsv", cutoffs=[1, 5, 10, 20], mode="conservative")
    model.recommend(["214853848", "214853182"], k=10)     # top-10 original item ids
    model.recommend_sessions("test.tsv", k=20)             # every session of a file, batched
    model.save("model.pt"); GRU4Rec.load("model.pt")
    model.fit("train.tsv", checkpoint="run.ckpt")       # a checkpoint after every epoch
    GRU4Rec.resume("run.ckpt", "train.tsv")             # continues it exactly

``model.model`` is the GRU4RecModel (an nn.Module) underneath.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .config import GRU4RecConfig, is_integer
from .data import (SessionData, as_session_data, require_evaluable, require_trainable,
                   same_item_map, training_fingerprint)
from .errors import ConfigError, DataError, one_line
from .fileio import atomic_write, check_writable
from .evaluate import (DEFAULT_CUTOFFS, MetricAccumulator, check_eval_batch_size,
                       evaluate_model)
from .nn import GRU4RecModel
from .ops.ranking import topk_scores
from .engine import FastTrainer
from .train import EpochStats, Trainer, check_max_steps

_FORMAT = "fastgru4rec-model"
# 2: item ids as one UTF-8 tensor and offsets (1: a list of strings, which torch.load's
# weights-only unpickler reads at ~5 us an id: 6 s for a 1.2M-item catalog); 1 is still read
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"parameter device={device!r}: not a torch device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"parameter device={device!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"parameter device={device!r}: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "meta":
        raise ConfigError(f"parameter device={device!r}: a meta device holds no values to "
                          f"train or score with")
    try:   # any other backend (mps, xpu, ...) this torch build or machine lacks: say so here,
        torch.empty(0, device=dev)   # not later as a failure of a model file
    except Exception as e:
        raise ConfigError(f"parameter device={device!r}: not usable here "
                          f"({one_line(e, 150)})") from None
    return dev


class GRU4Rec:
    """Session-based recommender (Hidasi et al. 2016, 2018). Parameters: see GRU4RecConfig."""

    def __init__(self, device: Union[str, torch.device] = "cpu", **params):
        self.config = GRU4RecConfig.from_dict(params)
        self.device = resolve_device(device)
        self.model: Optional[GRU4RecModel] = None
        self.item_ids: Optional[np.ndarray] = None
        self.supports: Optional[np.ndarray] = None
        self.history: List[EpochStats] = []
        self._train_map: Optional[SessionData] = None
        self._read_kw: Dict = {}   # fit's column names / separator, evaluate()'s defaults

    def __repr__(self) -> str:
        # the parameters that differ from the defaults, and whether a model is trained
        from dataclasses import fields

        default = GRU4RecConfig()
        changed = [f"{f.name}={getattr(self.config, f.name)!r}" for f in fields(self.config)
                   if getattr(self.config, f.name) != getattr(default, f.name)]
        state = (f"trained on {len(self.item_ids):,} items" if self.model is not None
                 else "not trained")
        return f"GRU4Rec({', '.join(changed + [f'device={str(self.device)!r}'])}) [{state}]"

    def training_memory_bytes(self, n_items: int) -> int:
        """Bytes of the parameters and Adagrad state (accumulator, and velocity with momentum
        > 0) of the model fit() builds for n_items, float32; counted on the meta device
        (nothing allocated). Not counted: the data, activations (small beside a large
        catalog's tables), and with n_sample="all" on the CPU the step's dense N x H gradient
        and (b, N) scores; on CUDA the model is built on the host first (the same bytes of
        host memory, briefly)."""
        with torch.device("meta"):
            model = self.build_model(int(n_items), initialize=False,
                                     device=torch.device("meta"))
        n = sum(p.numel() for p in model.parameters())
        return n * 4 * (2 + (self.config.momentum > 0))

    def _warn_if_memory_short(self, n_items: int) -> None:
        """A model too large for the memory left is killed by the kernel without a message
        (Linux overcommits: the allocation succeeds and the process dies touching the pages):
        say so before building it."""
        need, free = self.training_memory_bytes(n_items), available_memory_bytes(self.device)
        if free is not None and need > free:
            warnings.warn(f"the model and its optimizer state need about {need / 2**30:.1f} GiB "
                          f"({n_items:,} items, layers {list(self.config.layers)}), more than "
                          f"the {free / 2**30:.1f} GiB available on {self.device}: the process "
                          f"may be killed without a message (smaller layers, or more memory)",
                          UserWarning, stacklevel=5)   # the caller of fit (past two decorators)

    # ------------------------------------------------------------------ data
    def _item_map(self) -> SessionData:
        self._require_fitted()
        if self._train_map is None:
            self._train_map = SessionData.item_map_only(self.item_ids, self.supports,
                                                        "<model item map>")
        return self._train_map

    def _require_fitted(self):
        if self.model is None:
            raise RuntimeError("the model is not trained: call fit() or GRU4Rec.load() first")

    # ------------------------------------------------------------------ training
    def build_model(self, n_items: int, initialize: bool = True,
                    device: Optional[torch.device] = None) -> GRU4RecModel:
        """The model of this configuration for n_items, on device (default: the estimator's)."""
        cfg = self.config
        variants = [cfg.layer_variant(l) for l in range(len(cfg.layers))]
        return GRU4RecModel(n_items, cfg.layers, cfg.embedding_mode, cfg.embedding, variants,
                            seed=cfg.seed, initialize=initialize).to(device or self.device)

    # the model is built and trained with autograd even inside a caller's torch.no_grad() or
    # torch.inference_mode() (parameters made in inference mode could never be trained)
    @torch.inference_mode(False)
    @torch.enable_grad()
    def fit(self, data, progress: bool = True, on_epoch=None, schedule_backend: str = "auto",
            engine: str = "auto", checkpoint: Union[str, Path, None] = None,
            validation=None, validation_kw: Optional[Dict] = None,
            max_steps: Optional[int] = None, **read_kw) -> "GRU4Rec":
        """Train on events (a SessionData, a TSV/CSV/Parquet path or a DataFrame). Every call
        trains a new model from scratch (a new item map, the seeded initialisation): it never
        continues an earlier fit or a loaded model (GRU4Rec.resume continues a checkpoint). The
        item map follows the events' order (first appearance), so the same events in another
        row order give another (equally good) model. The item supports (the negative
        sampler's weights, logQ) are counted from these events, also for a SessionData read
        with another item map (whose items without an event here are then in the model,
        with a warning).
        read_kw: session_key / item_key / time_key / sep for files and DataFrames; remembered as
        the defaults of evaluate() (not saved with the model).
        engine: "fast" (fastgru4rec.engine.FastTrainer: with the shared embedding and sampled
        negatives the explicit-backward fused step, hashed dropout masks; CUDA graphs on a GPU;
        otherwise on the CPU the reference step with chunked sampling), "reference"
        (train.Trainer, the eager loop) or "auto" (fast).
        checkpoint: a file written (atomically) after every epoch: a model file (load,
        evaluate and recommend read it) that also holds the optimizer, random-stream and
        epoch state, so that GRU4Rec.resume(checkpoint, data) continues the training exactly
        as if it had not stopped. Checked writable before training starts.
        validation: test data evaluated after every epoch (evaluate() with validation_kw, e.g.
        cutoffs, mode, batch_size), into each epoch's ``stats.metrics`` (the training is
        unchanged by it); read, and checked to have evaluation points, before training.
        max_steps: a trial run (e.g. a first look at the speed and loss on a huge catalog):
        stop after this many mini-batch steps in all; the epoch it ends in is cut short (its
        stats count the steps it ran) and later ones are not trained. Not with checkpoint:
        a cut epoch could not be resumed as if it had not stopped."""
        if engine not in ("auto", "fast", "reference"):
            raise ValueError(f"unknown engine {engine!r} (auto, fast, reference)")
        _check_on_epoch(on_epoch)
        check_max_steps(max_steps)
        if max_steps is not None and checkpoint is not None:
            raise ConfigError("max_steps (a trial run) and checkpoint do not go together: the "
                              "checkpoint of an epoch cut short could not be resumed")
        if checkpoint is not None:
            check_writable(checkpoint, _paths(data, validation))
        for note in self.config.ineffective_parameters():
            warnings.warn(note, UserWarning, stacklevel=4)   # past fit's two decorators
        train = _read_training_data(data, read_kw, "fit")
        require_trainable(train, self.config.min_lanes)
        if self.config.batch_size > train.n_sessions:
            n = train.n_sessions
            warnings.warn(f"batch_size={self.config.batch_size:,} is more than the {n:,} "
                          f"training sessions: only {n:,} lanes run, and each step's loss is "
                          "still divided by batch_size (smaller steps)", UserWarning,
                          stacklevel=4)
        valid = _validation(validation, validation_kw, train, read_kw)
        self._warn_if_memory_short(train.n_items)
        # everything checked and built before the estimator changes: a refused call leaves an
        # earlier fit as it was
        model = self.build_model(train.n_items)
        trainer_cls = Trainer if engine == "reference" else FastTrainer
        trainer = trainer_cls(model, self.config, train.supports, self.device, schedule_backend)
        self._read_kw = dict(read_kw)
        self.item_ids, self.supports = train.item_ids, train.supports
        self._train_map = None
        self.model = model
        self.history = []
        self._train_epochs(trainer, train, progress, on_epoch, checkpoint, valid,
                           max_steps=max_steps)
        return self

    @classmethod
    @torch.inference_mode(False)
    @torch.enable_grad()
    def resume(cls, checkpoint: Union[str, Path], data, device: Union[str, torch.device] = "cpu",
               n_epochs: Optional[int] = None, progress: bool = True, on_epoch=None,
               schedule_backend: str = "auto", engine: str = "auto",
               save_checkpoint: Union[str, Path, None, bool] = True, validation=None,
               validation_kw: Optional[Dict] = None, **read_kw) -> "GRU4Rec":
        """Continue the training saved in ``checkpoint`` (a file written by fit(checkpoint=...))
        on the same training data, on the same kind of device: the remaining epochs give the
        parameters an uninterrupted fit would have given (the same configuration, optimizer
        state, dropout and sampling streams). n_epochs: the total number of epochs (default:
        the configuration's; more extends the training). engine: "auto" (the one that wrote
        the checkpoint) or that same one. save_checkpoint: True (keep writing the checkpoint
        after every epoch), another path, or False / None (write none). validation,
        validation_kw: as for fit (the resumed epochs get metrics; the earlier ones keep theirs).
        DataError when the file is not a checkpoint or the data is not what it was trained on;
        ConfigError when the device, engine or n_epochs cannot continue it."""
        if engine not in ("auto", "fast", "reference"):
            raise ValueError(f"unknown engine {engine!r} (auto, fast, reference)")
        path = Path(checkpoint)
        target = path if save_checkpoint is True else (save_checkpoint or None)
        _check_on_epoch(on_epoch)
        if target is not None:
            check_writable(target, _paths(data, validation))
        resolve_device(device)   # a bad device is named as such, first
        payload = _read_payload(path)
        training = payload.get("training")
        if not isinstance(training, dict):
            raise DataError(f"{path}: a model file without training state; resume needs a "
                            "checkpoint (written by fit(checkpoint=...) or train --checkpoint)")
        est = cls._from_payload(payload, path, device)
        payload["state_dict"] = None    # est.model holds those tensors now (or their copies)
        done = training.get("epochs_done")
        history = training.get("history")
        if not (type(done) is int and type(training.get("n_events")) is int
                and isinstance(training.get("trainer"), dict) and isinstance(history, list)
                and 0 < done == len(history)):
            raise DataError(f"{path}: inconsistent training state (epochs_done, n_events, "
                            "trainer or history missing, of the wrong type, or disagreeing)")
        if n_epochs is not None:
            est.config = est.config.replace(n_epochs=n_epochs)   # checked as a parameter
            if est.config.n_epochs < done:
                raise ConfigError(f"n_epochs={n_epochs} is fewer than the {done} epochs "
                                  f"{path} has already trained")
        saved_trainer = training["trainer"].get("trainer")
        if not (isinstance(saved_trainer, str) and saved_trainer in _ENGINE_OF):
            raise DataError(f"{path}: inconsistent training state (trainer {saved_trainer!r})")
        wanted = {"reference": "Trainer", "fast": "FastTrainer"}.get(engine, saved_trainer)
        if wanted != saved_trainer:
            raise ConfigError(f"{path} was trained by the {_ENGINE_OF[saved_trainer]!r} engine; "
                              f"resume it with that engine (got engine={engine!r})")
        train = _read_training_data(data, read_kw, "resume")
        if train.n_events != training["n_events"] or not same_item_map(train, est._item_map()):
            raise DataError(f"{train.source}: not the data {path} was trained on (that had "
                            f"{training['n_events']:,} events over {len(est.item_ids):,} "
                            f"items; this has {train.n_events:,} over {train.n_items:,}, or "
                            "its items in another order)")
        # checkpoints before the fingerprint have only the checks above
        saved_print = training.get("data_fingerprint")
        fingerprint = training_fingerprint(train) if target is not None or saved_print else None
        if saved_print is not None and saved_print != fingerprint:
            raise DataError(f"{train.source}: not the data {path} was trained on (the same "
                            f"{train.n_events:,} events over the same items, but other "
                            "sessions or other items in them)")
        est._read_kw = dict(read_kw)
        trainer_cls = Trainer if saved_trainer == "Trainer" else FastTrainer
        trainer = trainer_cls(est.model, est.config, train.supports, est.device,
                              schedule_backend)
        try:
            trainer.load_state_dict(training["trainer"], release=True)
            est.history = [_epoch_stats(h, i + 1) for i, h in enumerate(training["history"])]
        except ConfigError as e:     # (a ValueError) what cannot continue, or differs
            raise ConfigError(f"{path}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise DataError(f"{path}: inconsistent training state "
                            f"({type(e).__name__}: {one_line(e, 300)})") from None
        # the file's tensors were copied into the model and the trainer: let them go before the
        # training (a second copy of the item table and its optimizer state on a large catalog)
        del payload, training
        valid = _validation(validation, validation_kw, train, read_kw)
        est._train_epochs(trainer, train, progress, on_epoch, target, valid, start_epoch=done,
                          fingerprint=fingerprint)
        return est

    def _train_epochs(self, trainer: Trainer, train: SessionData, progress: bool, on_epoch,
                      checkpoint, validation=None, start_epoch: int = 0,
                      fingerprint: Optional[str] = None,
                      max_steps: Optional[int] = None) -> None:
        """trainer.fit from start_epoch, appending to self.history; after each epoch the
        validation data (if any) is evaluated into stats.metrics, the checkpoint (if any) is
        written, then on_epoch(stats) is called."""
        # what resume compares the data with, computed once (resume passes the one it checked)
        if checkpoint is not None and fingerprint is None:
            fingerprint = training_fingerprint(train)

        def write_checkpoint(stats: EpochStats) -> None:
            if checkpoint is not None:
                self._write(checkpoint, training={
                    "epochs_done": stats.epoch, "n_events": train.n_events,
                    "data_fingerprint": fingerprint,
                    "history": [dataclasses.asdict(h) for h in self.history],
                    "trainer": trainer.state_dict()})

        def after_epoch(stats: EpochStats) -> None:
            if validation is not None:
                data, options = validation
                try:
                    # a bar like the epoch's: at a large catalog this can take minutes
                    stats.metrics = self.evaluate(data, **options, progress=progress)
                except KeyboardInterrupt:
                    # the epoch is trained: kept (without its metrics) before stopping
                    self.history.append(stats)
                    write_checkpoint(stats)
                    raise
            self.history.append(stats)
            write_checkpoint(stats)
            if on_epoch is not None:
                on_epoch(stats)

        trainer.fit(train, progress=progress, on_epoch=after_epoch, start_epoch=start_epoch,
                    max_steps=max_steps)

    # ------------------------------------------------------------------ inference
    def evaluate(self, test, cutoffs: Sequence[int] = DEFAULT_CUTOFFS, mode: str = "conservative",
                 batch_size: int = 512, progress: bool = False, **read_kw) -> Dict:
        """Recall@K and MRR@K with full ranking over all training items. Returns
        {"recall": {K: v}, "mrr": {K: v}, "n_events": evaluation points, "mode": mode,
        "n_unknown_events": test events dropped for items unknown to the model}.
        read_kw: as for fit (default: the ones fit was given). DataError when the test data has
        no evaluation point (no session with 2 known events: every metric would be a
        meaningless 0)."""
        self._require_fitted()
        check_eval_batch_size(batch_size, "batch_size")   # before reading the test data
        test = as_session_data(test, item_map=self._item_map(), **{**self._read_kw, **read_kw})
        # evaluate_model refuses data without an evaluation point (require_evaluable)
        res = evaluate_model(self.model, test, cutoffs, mode, batch_size, self.device, progress)
        res["n_unknown_events"] = test.n_unknown_events
        return res

    @torch.no_grad()
    def recommend(self, session_items: Sequence, k: int = 20, exclude_seen: bool = False,
                  unknown: str = "warn") -> List[str]:
        """Top-k original item ids for a session prefix (original ids, oldest first).
        Items unknown to the model (not in its training data) are skipped; at least one must
        be known. unknown: "warn" (a UserWarning naming the skipped ids: the result then
        follows an older prefix than the caller's), "skip" (silently) or "raise" (DataError).
        Each call replays the whole prefix (no incremental state is kept)."""
        self._require_fitted()
        _check_k(k)
        if unknown not in ("warn", "skip", "raise"):
            raise ValueError(f"recommend: unknown={unknown!r} (choose from warn, skip, raise)")
        if isinstance(session_items, (str, bytes)):   # its characters would be taken as items
            raise TypeError(f"recommend: session_items must be a sequence of item ids, not one "
                            f"{type(session_items).__name__} ({session_items!r}: give "
                            f"[{session_items!r}])")
        session_items = list(session_items)            # any iterable, read once
        index = self._item_map().item_index()
        known = [index[str(i)] for i in session_items if str(i) in index]
        if not known:
            raise DataError(f"none of the session's items {list(session_items)[:5]} is known "
                            "to the model")
        if len(known) < len(session_items) and unknown != "skip":
            missing = [i for i in session_items if str(i) not in index]
            text = (f"{len(missing)} of the session's {len(session_items)} items unknown to the "
                    f"model: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if unknown == "raise":
                raise DataError(text)
            # stacklevel 3: the caller's line (2 is torch.no_grad's wrapper)
            warnings.warn(f"recommend: {text} (skipped)", UserWarning, stacklevel=3)
        self.model.eval()
        h_last = self.model.encode(torch.tensor([known], device=self.device),
                                   torch.tensor([len(known)], device=self.device))
        order, _ = self._top_items(h_last, int(k), [set(known)] if exclude_seen else None)
        return [str(self.item_ids[i]) for i in order[0] if i >= 0]

    @torch.no_grad()
    def recommend_sessions(self, data, k: int = 20, exclude_seen: bool = False,
                           batch_size: int = 512, progress: bool = False,
                           **read_kw) -> Dict[str, object]:
        """Top-k for every session of ``data`` at once (events: a path, DataFrame or
        SessionData, read with the model's item map, as evaluate() reads test data): the items
        most likely to follow each session's last event, best first. Sessions are batched
        ``batch_size`` at a time, sorted by length (GRU4RecModel.encode); the same items as
        recommend() on each session alone, up to float rounding (a batch's products round
        differently from one session's in the last bits: items whose scores differ by that
        little may come in the other order).
        Returns {"session_id": object (S,) the original ids, in the data's session order;
        "items": object (S, k) original item ids; "scores": float32 (S, k);
        "n_unknown_events": events dropped for items unknown to the model}. Sessions with no
        known item do not appear. When exclude_seen leaves fewer than k items (a catalog
        barely larger than a session), the row ends in None / NaN."""
        self._require_fitted()
        _check_k(k)
        check_eval_batch_size(batch_size, "batch_size")
        data = as_session_data(data, item_map=self._item_map(), **{**self._read_kw, **read_kw})
        lengths = data.session_lengths
        kept = np.flatnonzero(lengths > 0)
        by_length = kept[np.argsort(lengths[kept], kind="stable")]
        k = min(int(k), len(self.item_ids))
        top = np.full((data.n_sessions, k), -1, dtype=np.int64)
        scores = np.full((data.n_sessions, k), np.nan, dtype=np.float32)
        self.model.eval()
        from tqdm.auto import tqdm

        for lo in tqdm(range(0, len(by_length), batch_size), desc="recommend", unit="batch",
                       disable=not progress, leave=False):
            lanes = by_length[lo:lo + batch_size]                     # (b,) session indices
            lane_len = lengths[lanes]
            L = int(lane_len.max())
            # right-aligned (b, L) item matrix: lane j's events in columns L - len_j .. L - 1
            events = np.concatenate([np.arange(data.offsets[s], data.offsets[s + 1])
                                     for s in lanes])
            rows = np.repeat(np.arange(len(lanes)), lane_len)
            cols = (np.arange(len(events)) - np.repeat(np.cumsum(lane_len) - lane_len, lane_len)
                    + np.repeat(L - lane_len, lane_len))
            items = np.zeros((len(lanes), L), dtype=np.int64)
            items[rows, cols] = data.items[events]
            h_last = self.model.encode(torch.from_numpy(items).to(self.device),
                                       torch.from_numpy(lane_len).to(self.device))
            seen = ([set(items[j, L - lane_len[j]:].tolist()) for j in range(len(lanes))]
                    if exclude_seen else None)
            top[lanes], scores[lanes] = self._top_items(h_last, k, seen)
        ids = np.asarray(self.item_ids, dtype=object)
        items_out = np.where(top >= 0, ids[np.maximum(top, 0)], None)
        return {"session_id": np.asarray(data.session_ids, dtype=object)[kept],
                "items": items_out[kept], "scores": scores[kept],
                "n_unknown_events": data.n_unknown_events}

    def _top_items(self, h_last: torch.Tensor, k: int, seen: Optional[List[set]]
                   ) -> "tuple[np.ndarray, np.ndarray]":
        """The k best item indices per row of h_last (b, H) over the catalog, ties to the lower
        index, less each row's ``seen`` items (None: none excluded): (indices int64 (b, k),
        scores float32 (b, k)), -1 / NaN where fewer than k items remain."""
        N = len(self.item_ids)
        k = min(k, N)
        # ask for more when seen items drop out
        want = min(k + (max(map(len, seen)) if seen else 0), N)
        values, order = topk_scores(h_last, self.model.item_weight, self.model.item_bias, want)
        bad = torch.isnan(values).any(dim=1)
        if bool(bad.any()):
            # a NaN score (a damaged model) would sort first: rank it last instead, as
            # evaluate() counts a NaN target as a miss
            rows = torch.nonzero(bad).view(-1)
            s = self.model.score(h_last[rows]).nan_to_num(nan=float("-inf"))
            v, o = torch.sort(s, dim=1, descending=True, stable=True)
            values[rows], order[rows] = v[:, :want], o[:, :want]
        values, order = values.float().cpu().numpy(), order.cpu().numpy()
        if seen is None:
            return order[:, :k], values[:, :k]
        out = np.full((len(order), k), -1, dtype=np.int64)
        out_v = np.full((len(order), k), np.nan, dtype=np.float32)
        for j, (row, row_seen) in enumerate(zip(order, seen)):
            keep = [i for i, item in enumerate(row.tolist()) if item not in row_seen][:k]
            out[j, :len(keep)], out_v[j, :len(keep)] = row[keep], values[j, keep]
        return out, out_v

    # ------------------------------------------------------------------ persistence
    def save(self, path: Union[str, Path]) -> None:
        """Weights, item map and configuration in one file, written atomically. Loading it
        unpickles only tensors and plain containers (torch.load(weights_only=True))."""
        self._require_fitted()
        self._write(path)

    def _write(self, path: Union[str, Path], training: Optional[Dict] = None) -> None:
        """The model file, plus (for a checkpoint) the training state under "training"."""
        path = Path(path)
        bad = _non_finite_parameters(self.model)
        if bad:   # load() would refuse the file: say so now, before writing it
            raise DataError(f"cannot save: parameter {bad[0]} holds NaN or infinite values "
                            f"({len(bad)} such tensor(s)); the model is unusable")
        mixed = _mixed_float_dtypes(self.model.state_dict())
        if mixed:   # the same: load() refuses it, and no step or score could run on it
            raise DataError(f"cannot save: the model's parameters have mixed dtypes {mixed} "
                            f"(one model computes in one dtype: model.model.to(dtype) first)")
        payload = {
            "format": _FORMAT, "version": _FORMAT_VERSION,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "item_ids": encode_item_ids(self.item_ids),
            "supports": torch.from_numpy(np.asarray(self.supports, dtype=np.int64)),
        }
        if training is not None:
            payload["training"] = training
        with atomic_write(path) as f:
            torch.save(payload, f)

    @classmethod
    def load(cls, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> "GRU4Rec":
        """A model saved by save(), or a checkpoint written by fit(checkpoint=...) (its
        training state is ignored: GRU4Rec.resume continues it)."""
        path = Path(path)
        # resolved first, so that a bad device is named as such, not as a bad model file
        device = resolve_device(device)
        return cls._from_payload(_read_payload(path), path, device)

    @classmethod
    def _from_payload(cls, payload: Dict, path: Path, device) -> "GRU4Rec":
        try:
            est = cls(device=device, **payload["config"])
            ids = payload["item_ids"]
            est.item_ids = np.asarray(decode_item_ids(ids) if payload["version"] >= 2
                                      else [str(i) for i in ids], dtype=object)
            est.supports = payload["supports"].numpy()
            if est.item_ids.ndim != 1 or est.supports.shape != est.item_ids.shape:
                raise ValueError("item map and supports disagree")
            saved = payload["state_dict"]
            mixed = _mixed_float_dtypes(saved)
            if mixed:
                # one model computes in one dtype (a float64 bias or a bf16 table beside
                # float32 weights fails at the first product, far from the file)
                raise ValueError(f"parameters of mixed dtypes {mixed}")
            # Built on the CPU without initialising (its tables are allocated, never written,
            # so they take no memory), then the file's tensors become its parameters
            # (assign=True: no copy, so the tables are held once, not twice as a copying load
            # would, and each keeps the dtype it was saved in). Strict: every tensor filled,
            # shapes checked. Then moved to the device (no-op on the CPU).
            model = est.build_model(len(est.item_ids), initialize=False,
                                    device=torch.device("cpu"))
            model.load_state_dict(saved, assign=True)
            est.model = model.to(est.device)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            # a tampered or truncated payload: one line, naming the file
            raise DataError(f"{path}: inconsistent model file ({type(e).__name__}: "
                            f"{one_line(e, 300) or 'missing entry'})") from None
        bad = _non_finite_parameters(est.model)
        if bad:
            # a NaN model would rank nothing and recommend arbitrary items
            raise DataError(f"{path}: parameter {bad[0]} holds NaN or infinite values "
                            f"({len(bad)} such tensor(s)); the model is unusable")
        return est


_ENGINE_OF = {"Trainer": "reference", "FastTrainer": "fast"}


def _paths(*sources) -> List:
    """The sources given as file paths (the inputs an output must not overwrite)."""
    return [s for s in sources if isinstance(s, (str, Path))]


def _check_k(k) -> None:
    if not is_integer(k) or k <= 0:
        raise ValueError(f"k must be a positive integer (got {k!r})")


def _check_on_epoch(on_epoch) -> None:
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be a function of the epoch's stats, or None (got "
                        f"{type(on_epoch).__name__})")


_READ_KW = ("session_key", "item_key", "time_key", "sep")


def _read_training_data(data, read_kw: Dict, method: str) -> SessionData:
    """fit / resume's data, read with the column options; an unknown keyword is named as the
    method's (it would otherwise be named as an internal reader's)."""
    unknown = sorted(set(read_kw) - set(_READ_KW))
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword argument(s) {unknown} (options "
                        f"for reading the data: {', '.join(_READ_KW)})")
    train = as_session_data(data, **read_kw)
    # Supports are the training events' own counts (the sampler's weights, logQ). A SessionData
    # read with another item map (read_sessions(..., item_map=full)) carries that map's counts.
    counts = np.bincount(train.items, minlength=train.n_items).astype(np.int64)
    if not np.array_equal(counts, train.supports):
        train = dataclasses.replace(train, supports=counts)
        unseen = int(np.count_nonzero(counts == 0))
        # (resume: the data is checked to be the fit's next, and the fit has said it)
        if unseen and method == "fit":
            warnings.warn(f"{train.source}: mapped with another item map, {unseen:,} of whose "
                          f"{train.n_items:,} items have no event here: they are in the model "
                          f"but never trained as a target (their supports are counted from "
                          f"these events)", UserWarning, stacklevel=5)
    return train


def _validation(data, options: Optional[Dict], train: SessionData, read_kw: Dict):
    """fit / resume's validation: None, or (the data read with the training item map,
    evaluate() keyword options), everything evaluate() would refuse after the first epoch
    refused now."""
    if data is None:
        if options:
            raise ValueError("validation_kw given without validation data")
        return None
    options = dict(options or {})
    unknown = set(options) - {"cutoffs", "mode", "batch_size"}
    if unknown:
        raise ValueError(f"validation_kw: unknown option(s) {sorted(unknown)} (cutoffs, "
                         f"mode, batch_size)")
    MetricAccumulator(options.get("cutoffs", DEFAULT_CUTOFFS), options.get("mode", "conservative"))
    check_eval_batch_size(options.get("batch_size", 512), "validation_kw batch_size")
    data = as_session_data(data, item_map=train, **read_kw)
    require_evaluable(data)
    return data, options


def available_memory_bytes(device: torch.device) -> Optional[int]:
    """Memory a new allocation can use on device, or None when it cannot be read: CUDA's free
    memory; on the CPU, Linux's MemAvailable, lowered to the cgroup's limit less its usage
    when the process runs in a limited cgroup (a container, a job scheduler)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type != "cpu":
            return None
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        free = int(info["MemAvailable"].split()[0]) * 1024
        try:
            with open("/sys/fs/cgroup/memory.max") as f:
                limit = f.read().strip()
            if limit != "max":
                with open("/sys/fs/cgroup/memory.current") as f:
                    free = min(free, int(limit) - int(f.read().strip()))
        except (OSError, ValueError):
            pass
        return free
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def _mixed_float_dtypes(state: Dict) -> Optional[List[str]]:
    """The floating dtypes of a state dict when there is more than one, else None."""
    dtypes = {t.dtype for t in state.values()
              if isinstance(t, torch.Tensor) and t.is_floating_point()}
    return sorted(map(str, dtypes)) if len(dtypes) > 1 else None


def _torch_load_quietly(path: Path, mmap: bool = False):
    """torch.load of tensors and plain containers only, onto the CPU (mmap: tensors mapped,
    not read). torch warns (three lines) about some files it still reads; the callers' checks
    decide whether the content is a model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _read_payload(path: Path) -> Dict:
    """The checked top level of a model file (format and version), as a dict."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a model file")
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    try:
        payload = _torch_load_quietly(path)
    except Exception as e:  # corrupt file, not a torch file, or disallowed (pickled code)
        raise DataError(f"{path}: not a readable fastgru4rec model: truncated, corrupt or not a "
                        f"torch file ({type(e).__name__}: {one_line(e, 200)})") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise DataError(f"{path}: not a fastgru4rec model file")
    if payload.get("version") not in _READABLE_VERSIONS:
        raise DataError(f"{path}: model format version {payload.get('version')!r} is not "
                        f"supported (this library reads versions "
                        f"{', '.join(map(str, _READABLE_VERSIONS))})")
    return payload


def is_checkpoint(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a file holding a training state (written by fit(checkpoint=...)).
    Cheap at any size: the tensors are memory-mapped, not read. False for anything else,
    readable or not."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        payload = _torch_load_quietly(path, mmap=True)
    except Exception:   # not a torch zip file (mmap needs one), corrupt, or not ours
        return False
    return (isinstance(payload, dict) and payload.get("format") == _FORMAT
            and isinstance(payload.get("training"), dict))


def _epoch_stats(saved: Dict, epoch: int) -> EpochStats:
    """A checkpoint's history entry back as EpochStats, every field checked (ValueError): the
    history is printed, and --json must stay valid JSON (finite numbers)."""
    stats = EpochStats(**saved)

    def count(x):
        return type(x) is int and x >= 0

    def finite(x):
        return type(x) in (int, float) and math.isfinite(x)

    ok = (stats.epoch == epoch and type(stats.epoch) is int and finite(stats.loss)
          and count(stats.n_events) and count(stats.n_steps) and finite(stats.seconds))
    m = stats.metrics
    if m is not None:
        ok = ok and isinstance(m, dict) and all(
            isinstance(m.get(key), dict) and m[key]
            and all(type(k) is int and finite(v) for k, v in m[key].items())
            for key in ("recall", "mrr")) and count(m.get("n_events"))
    if not ok:
        raise ValueError(f"history entry {epoch - 1} is not an epoch's record")
    return stats


def encode_item_ids(item_ids: Sequence) -> Dict[str, torch.Tensor]:
    """Item ids (as strings) for a model file: {"utf8": uint8 (bytes,) the ids' text joined,
    "char_offsets": int64 (N + 1,) where each id starts in that text, in characters}. Two
    tensors: read back in milliseconds, where a list of strings costs the weights-only
    unpickler seconds per million ids. Any string round-trips (surrogatepass)."""
    ids = [str(i) for i in item_ids]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), out=offsets[1:])
    data = "".join(ids).encode("utf-8", "surrogatepass")
    return {"utf8": torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
            else torch.zeros(0, dtype=torch.uint8),
            "char_offsets": torch.from_numpy(offsets)}


def decode_item_ids(encoded: Dict[str, torch.Tensor]) -> List[str]:
    """encode_item_ids' inverse; ValueError when the offsets do not cut the text into ids."""
    text = encoded["utf8"].numpy().tobytes().decode("utf-8", "surrogatepass")
    offsets = encoded["char_offsets"].numpy()
    if (offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0
            or offsets[-1] != len(text) or np.any(np.diff(offsets) < 0)):
        raise ValueError("item id offsets do not cut the id text")
    bounds = offsets.tolist()
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _non_finite_parameters(model: torch.nn.Module) -> List[str]:
    """Names of the model's floating tensors holding NaN or infinite values. A finite sum
    means every element is finite (NaN and infinities carry into the sum); only a sum that is
    not (an overflow, or a bad element) needs the element-wise test: 35x faster on a 1.2M x 100
    item table (checked at every save and checkpoint)."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t.sum()))
            and not bool(torch.isfinite(t).all())]
