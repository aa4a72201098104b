"""The training loop (REFERENCE §2, §4): session-parallel steps, sampled negatives, losses,
sparse Adagrad with momentum. This is the eager reference loop; it runs on any device.

Per step (b active lanes, C = b + n_sample columns):
  1. compact/reset the hidden state as the schedule says (h = h[keep]; h[reset] = 0),
  2. gather the item-table rows the step uses, once each, as leaf tensors (so autograd returns
     per-row gradients with duplicates already summed: the sparse update needs exactly that),
  3. GRU step(s) with dropout, scores R (b, C) against Y = [targets ; samples], loss / B,
  4. backward, then Adagrad-momentum on the dense weights and on the touched rows only.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .batching import EpochSchedule, build_schedule
from .config import GRU4RecConfig, is_integer
from .data import SessionData
from .errors import ConfigError
from .nn import GRU4RecModel
from .ops.optim import adagrad_momentum_dense, adagrad_momentum_rows, adagrad_momentum_scatter
from .ops.scoring import (full_catalog_adagrad_update, full_catalog_forward, fused_sampled_loss,
                          logq_columns)
from .sampling import SampleStore


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class AdagradMomentum:
    """Optimizer state for a GRU4RecModel: dense params updated densely, item tables by rows."""

    def __init__(self, model: GRU4RecModel, lr: float, momentum: float):
        self.lr, self.momentum = lr, momentum
        self.sparse = set(model.sparse_tables())
        self.state: Dict[str, tuple] = {}
        for name, p in model.named_parameters():
            vel = torch.zeros_like(p) if momentum > 0 else None
            self.state[name] = (torch.zeros_like(p), vel)

    def step_dense(self, name: str, param: torch.Tensor, grad: torch.Tensor):
        acc, vel = self.state[name]
        adagrad_momentum_dense(param, grad, acc, vel, self.lr, self.momentum)

    def step_rows(self, name: str, table: torch.Tensor, rows: torch.Tensor, grad_rows: torch.Tensor):
        acc, vel = self.state[name]
        adagrad_momentum_rows(table, rows, grad_rows, acc, vel, self.lr, self.momentum)


@dataclass
class EpochStats:
    epoch: int
    # mean per-event loss: the lanes' losses summed over the epoch / its events (the authors'
    # log weights each step's loss, already divided by batch_size, by its lane count, which
    # differs on the shrinking tail: 0.15% on rsc15-sample's first epoch)
    loss: float
    n_events: int
    n_steps: int
    seconds: float
    #: GRU4Rec.evaluate's result on the validation data after this epoch (fit / resume with
    #: ``validation=``), else None
    metrics: Optional[Dict] = None

    @property
    def events_per_s(self) -> float:
        return self.n_events / max(self.seconds, 1e-9)

    @property
    def batches_per_s(self) -> float:
        return self.n_steps / max(self.seconds, 1e-9)


def check_max_steps(max_steps) -> None:
    if max_steps is not None and (not is_integer(max_steps) or max_steps <= 0):
        raise ValueError(f"max_steps must be a positive integer or None (got {max_steps!r})")


def zero_restarted(hidden: List[torch.Tensor], not_reset: torch.Tensor) -> List[torch.Tensor]:
    """The states of lanes whose session restarts set to 0: each (b, H_l) state times
    not_reset (b, 1) 0/1, cast to the state's dtype (the float32 mask would promote a bf16
    state, and the next product fails on mixed dtypes)."""
    return [h * not_reset.to(h.dtype) for h in hidden]


@dataclass
class EpochOnDevice:
    """An epoch's schedule moved to the device once (the steps slice views of it).
    inputs / targets int64 (E,), not_reset float (E, 1) (0 where the lane's session restarts),
    keep int64 (K,); step_off / keep_off host lists (n_steps + 1); has_reset host bools."""
    inputs: torch.Tensor
    targets: torch.Tensor
    not_reset: torch.Tensor
    keep: torch.Tensor
    step_off: List[int]
    keep_off: List[int]
    has_reset: List[bool]

    @property
    def n_steps(self) -> int:
        return len(self.step_off) - 1

    @classmethod
    def upload(cls, sched: EpochSchedule, device: torch.device) -> "EpochOnDevice":
        def to_dev(a, dtype):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)).to(device)
        has_reset = (np.add.reduceat(sched.reset, sched.step_offsets[:-1]) > 0).tolist() \
            if sched.n_steps else []
        return cls(to_dev(sched.inputs, np.int64), to_dev(sched.targets, np.int64),
                   to_dev(1.0 - sched.reset.astype(np.float32), np.float32).unsqueeze(1),
                   to_dev(sched.keep, np.int64), sched.step_offsets.tolist(),
                   sched.keep_offsets.tolist(), has_reset)


class EpochProgress:
    """The progress bar and the divergence check of an epoch: the loss stays on the device and
    is read (one host sync) every ``report_every`` steps and at the end."""

    def __init__(self, epoch: int, n_events: int, batch_size: int, progress: bool,
                 report_every: int = 200):
        from tqdm.auto import tqdm

        self.epoch, self.n_events, self.batch_size = epoch, n_events, batch_size
        self.report_every = report_every
        self.bar = tqdm(total=n_events, desc=f"epoch {epoch + 1}", unit="ev",
                        disable=not progress, leave=False, mininterval=0.5)
        self.t0 = time.perf_counter()
        self.done = 0

    def after_step(self, steps_done: int, n_steps: int, events_done: int,
                   loss_sum: torch.Tensor) -> None:
        if steps_done % self.report_every and steps_done != n_steps:
            return
        value = loss_sum.item()
        if not math.isfinite(value):
            self.bar.close()
            raise TrainingDiverged(
                f"loss became {value} in epoch {self.epoch + 1} (step {steps_done}); "
                "lower learning_rate or check the data")
        self.bar.set_postfix(loss=f"{value * self.batch_size / max(events_done, 1):.4f}",
                             ev_s=f"{events_done / (time.perf_counter() - self.t0):.0f}",
                             refresh=False)
        self.bar.update(events_done - self.done)
        self.done = events_done

    def close(self, n_steps: int, loss_sum: torch.Tensor) -> EpochStats:
        self.bar.close()
        seconds = time.perf_counter() - self.t0
        mean_loss = loss_sum.item() * self.batch_size / max(self.n_events, 1)
        return EpochStats(self.epoch + 1, mean_loss, self.n_events, n_steps, seconds)


class Trainer:
    """Trains a GRU4RecModel on SessionData with the configuration's hyperparameters."""

    def __init__(self, model: GRU4RecModel, config: GRU4RecConfig, supports: np.ndarray,
                 device: torch.device, schedule_backend: str = "auto",
                 precision: Optional[str] = None):
        """precision: tl.dot precision of the Triton scoring on a GPU ("ieee" for exact fp32,
        "tf32" / None the GPU default, "tf32x3"); ignored on CPU."""
        device = torch.device(device)   # "cpu", "cuda:0" or a torch.device
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        if frozen:
            # the optimizer updates every parameter (the fused step has no autograd to skip one)
            raise ValueError(f"parameter {frozen[0]} has requires_grad=False: the GRU4Rec trainers "
                             f"train every parameter of the model (freezing is not supported)")
        self.model, self.cfg, self.device = model, config, device
        self.schedule_backend = schedule_backend
        self.precision = precision
        #: backend of the sparse row updates that take repeated ids (ops.optim)
        self.optimizer_backend = "auto"
        #: backend of n_sample="all"'s cross-entropy and item-table update (ops.scoring
        #: full_catalog_forward: "auto" = triton on CUDA)
        self.catalog_backend = "auto"
        self.opt = AdagradMomentum(model, config.learning_rate, config.momentum)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self._supports = supports
        self.sampler = self._sample_store() if config.n_extra_samples > 0 else None
        log_support = torch.log(torch.as_tensor(np.maximum(supports, 1), dtype=torch.float64))
        self.log_support = log_support.to(device=device, dtype=model.item_weight.dtype)
        self._dense = [(n, p) for n, p in model.named_parameters() if n not in self.opt.sparse]
        self._dense_params = [p for _, p in self._dense]

    def _sample_store(self, backend: str = "auto") -> SampleStore:
        cfg = self.cfg
        return SampleStore(self._supports, cfg.sample_alpha, cfg.n_extra_samples,
                           cfg.sample_store_size, seed=cfg.seed + 1, backend=backend)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything besides the model's parameters that the next epoch depends on: the
        optimizer's accumulators and velocities, the dropout generator, the sample store's
        place in its stream. Tensors (on the CPU) and plain values only (torch.save with
        weights_only loading). Taken between epochs (the schedule is rebuilt each epoch). On the
        CPU the optimizer tensors are the live ones, not copies (a large catalog's accumulators
        and velocities are twice its item table): save them before training on, or copy."""
        return {
            "trainer": type(self).__name__,
            "device_type": self.device.type,
            "optimizer": {name: [t.detach().cpu() if t is not None else None
                                 for t in pair] for name, pair in self.opt.state.items()},
            "generator": self.generator.get_state(),
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
        }

    def load_state_dict(self, state: dict, release: bool = False) -> None:
        """Restore state_dict's output into this trainer, built for the same model shape and
        configuration (ConfigError naming what differs). Tensors are copied in place (the
        fast engine holds references to the optimizer's). release: drop each saved tensor
        from ``state`` once copied (GRU4Rec.resume: the file's copy of a large catalog's
        optimizer state goes as the trainer's fills, not after all of it is held twice)."""
        if state["trainer"] != type(self).__name__:
            raise ConfigError(f"training state of a {state['trainer']}, not a "
                              f"{type(self).__name__} (resume with the engine that trained it)")
        if state["device_type"] != self.device.type:
            raise ConfigError(f"training state made on {state['device_type']}, resumed on "
                              f"{self.device.type}: the random streams differ between devices")
        saved = state["optimizer"]
        if sorted(saved) != sorted(self.opt.state):
            raise ConfigError(f"optimizer state for {sorted(saved)}, the model has "
                              f"{sorted(self.opt.state)}")
        for name, pair in self.opt.state.items():
            if len(saved[name]) != len(pair):
                raise ConfigError(f"optimizer state of {name}: {len(saved[name])} tensors, "
                                  f"expected {len(pair)} (accumulator, velocity)")
            for mine, theirs in zip(pair, saved[name]):
                if (mine is None) != (theirs is None) or (
                        mine is not None and mine.shape != theirs.shape):
                    raise ConfigError(f"optimizer state of {name}: shape or momentum differs "
                                      f"from the model's")
        if (state["sampler"] is None) != (self.sampler is None):
            raise ConfigError("training state and configuration disagree on negative sampling")
        if self.sampler is not None and state["sampler"]["backend"] != self.sampler.backend:
            # the stream of the sampler that made the checkpoint (numpy's or the C++ one's)
            try:
                sampler = self._sample_store(state["sampler"]["backend"])
            except RuntimeError as e:
                raise ConfigError(f"the checkpoint's negative samples came from the C++ "
                                  f"sampler, which is unavailable here ({e})") from None
        else:
            sampler = self.sampler
        if sampler is not None:
            sampler.load_state_dict(state["sampler"])
        for name, pair in self.opt.state.items():
            theirs = list(saved[name])                  # (accumulator, velocity or None)
            if release:
                saved[name] = None
            for i, mine in enumerate(pair):
                if mine is not None:
                    mine.copy_(theirs[i])
                theirs[i] = None        # with release, the last reference to the saved tensor
        self.generator.set_state(state["generator"])
        self.sampler = sampler

    def schedule(self, data: SessionData) -> EpochSchedule:
        return build_schedule(data.offsets, data.items, self.cfg.batch_size, self.cfg.min_lanes,
                              backend=self.schedule_backend)

    def fit(self, data: SessionData, n_epochs: Optional[int] = None,
            progress: bool = True, on_epoch: Optional[Callable[[EpochStats], None]] = None,
            start_epoch: int = 0, max_steps: Optional[int] = None) -> List[EpochStats]:
        """Epochs start_epoch .. n_epochs - 1 (default: the configuration's n_epochs); a
        trainer restored by load_state_dict continues with start_epoch = the epochs it had
        done. on_epoch(stats) is called after each epoch. max_steps: stop after this many
        mini-batch steps in all (a trial run; the epoch it ends in is cut short, its stats
        count the steps it ran). Returns the new epochs' stats."""
        last = self.cfg.n_epochs if n_epochs is None else n_epochs   # (0 trains none: not None)
        if not is_integer(last) or last < 0:
            raise ValueError(f"n_epochs must be a non-negative integer (got {n_epochs!r})")
        check_max_steps(max_steps)
        steps_left = max_steps
        history = []
        for epoch in range(start_epoch, int(last)):
            if steps_left is not None and steps_left <= 0:
                break
            stats = self.train_epoch(data, epoch, progress, max_steps=steps_left)
            if steps_left is not None:
                steps_left -= stats.n_steps
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
        return history

    # training works inside a caller's torch.no_grad() or torch.inference_mode() too
    @torch.inference_mode(False)
    @torch.enable_grad()
    def train_epoch(self, data: SessionData, epoch: int = 0, progress: bool = True,
                    max_steps: Optional[int] = None) -> EpochStats:
        ep = EpochOnDevice.upload(self.schedule(data), self.device)
        n_steps = ep.n_steps if max_steps is None else min(max_steps, ep.n_steps)
        n_events = ep.step_off[n_steps]
        # the schedule starts min(B, sessions) lanes (compacted later by the steps' keep lists)
        hidden = self.model.init_hidden(min(self.cfg.batch_size, data.n_sessions))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        bar = EpochProgress(epoch, n_events, self.cfg.batch_size, progress)
        for t in range(n_steps):
            loss, hidden = self.step_at(ep, t, hidden)
            loss_sum += loss
            bar.after_step(t + 1, n_steps, ep.step_off[t + 1], loss_sum)
        return bar.close(n_steps, loss_sum)

    def step_at(self, ep: EpochOnDevice, t: int, hidden: List[torch.Tensor],
                neg: Optional[torch.Tensor] = None):
        """Step t of an uploaded epoch: keep the hidden rows of the lanes that go on (when some
        ran out of sessions), then train the step's lanes (lanes_step)."""
        if ep.keep_off[t + 1] > ep.keep_off[t]:
            keep = ep.keep[ep.keep_off[t]:ep.keep_off[t + 1]]
            hidden = [h.index_select(0, keep) for h in hidden]
        return self.lanes_step(ep, t, hidden, neg)

    def lanes_step(self, ep: EpochOnDevice, t: int, hidden: List[torch.Tensor],
                   neg: Optional[torch.Tensor] = None):
        """Zero the state of lanes starting a session, then train_step on the step's lanes."""
        lo, hi = ep.step_off[t], ep.step_off[t + 1]
        if ep.has_reset[t]:
            hidden = zero_restarted(hidden, ep.not_reset[lo:hi])
        return self.train_step(ep.inputs[lo:hi], ep.targets[lo:hi], hidden, neg)

    def step_loss(self, x: torch.Tensor, hidden: List[torch.Tensor], Y: torch.Tensor,
                  item_rows: torch.Tensor, item_cols: torch.Tensor, bias_rows: torch.Tensor,
                  bias_cols: torch.Tensor):
        """The forward of a step from gathered rows: GRU layers (with dropout) on the input rows
        x (b, ·), then the sampled loss / B of R = h · item_rows[item_cols]ᵀ +
        bias_rows[bias_cols] (columns for the item ids Y (C,)): plain torch on the CPU, the fused
        Triton score + loss on CUDA (backend "auto"). Returns (loss, new hidden list)."""
        cfg = self.cfg
        h_last, new_hidden = self.model.step(x, hidden, cfg.dropout_p_embed,
                                             cfg.dropout_p_hidden, self.generator)
        lq = (logq_columns(self.log_support, Y, x.shape[0], cfg.sample_alpha)
              if cfg.loss == "cross-entropy" and cfg.logq > 0 else None)
        loss = fused_sampled_loss(h_last, item_rows, bias_rows, item_cols, cfg.loss,
                                  logq_per_column=lq, logq=cfg.logq, bpreg=cfg.bpreg,
                                  elu_param=cfg.elu_param, bias_index=bias_cols,
                                  precision=self.precision)
        return loss / cfg.batch_size, new_hidden

    def full_catalog_step(self, inp: torch.Tensor, tgt: torch.Tensor,
                          hidden: List[torch.Tensor]):
        """A step with n_sample = "all": cross-entropy over every item (on CUDA the tiled Triton
        kernels: neither the (b, N) scores nor the (N, H) gradient is held). Every item row is
        scored, so the item table and bias get dense updates, after the GRU's backward: with
        the shared embedding the table's gradient also holds the input rows' (one row per
        occurrence, summed). The input rows of the separate and one-hot modes are updated
        sparsely. Fixed shapes, no host sync. Returns (loss / B, new hidden), detached."""
        cfg, model = self.cfg, self.model
        W, bias = model.item_weight, model.item_bias
        shared = model.embedding_mode == "shared"
        in_table = W if shared else getattr(model, model.input_table_name)
        in_rows = in_table.detach().index_select(0, inp).requires_grad_()   # (b, ·) leaves
        h_last, new_hidden = model.step(in_rows, hidden, cfg.dropout_p_embed,
                                        cfg.dropout_p_hidden, self.generator)
        fwd = full_catalog_forward(h_last.detach(), W.detach(), bias.detach(), tgt,
                                   scale=1.0 / cfg.batch_size, backend=self.catalog_backend,
                                   precision=self.precision)
        grads = torch.autograd.grad(h_last, self._dense_params + [in_rows],
                                    fwd.dh.to(h_last.dtype), allow_unused=True)
        for (name, p), g in zip(self._dense, grads):
            if g is not None:
                self.opt.step_dense(name, p.data, g)
        d_rows = grads[-1]
        full_catalog_adagrad_update(fwd, W.data, bias.data, self.opt.state["item_weight"],
                                    self.opt.state["item_bias"], cfg.learning_rate, cfg.momentum,
                                    extra_ids=inp if shared else None,
                                    extra_rows=d_rows if shared else None)
        if not shared:
            acc, vel = self.opt.state[model.input_table_name]
            adagrad_momentum_scatter(in_table.data, inp, d_rows, acc, vel, cfg.learning_rate,
                                     cfg.momentum, backend=self.optimizer_backend)
        return fwd.loss.detach(), [h.detach() for h in new_hidden]

    @torch.inference_mode(False)
    @torch.enable_grad()
    def train_step(self, inp: torch.Tensor, tgt: torch.Tensor, hidden: List[torch.Tensor],
                   neg: Optional[torch.Tensor] = None):
        """One step on b lanes: inp/tgt int64 (b,), hidden list of (b, H_l); neg: the step's
        negative samples int64 (n_sample,) (default: the next row of the sample store).
        Returns (the step's loss / B, detached, and the new hidden state, detached)."""
        if self.cfg.full_catalog:
            return self.full_catalog_step(inp, tgt, hidden)
        model = self.model
        b = inp.shape[0]
        if self.sampler is not None:
            if neg is None:
                neg = torch.from_numpy(self.sampler.next()).to(self.device, non_blocking=True)
            Y = torch.cat([tgt, neg])
        else:
            Y = tgt

        # Gather each item-indexed table's rows once (unique ids) as leaves of this step.
        W, bias = model.item_weight, model.item_bias
        if model.embedding_mode == "shared":
            w_rows_idx, w_inv = torch.unique(torch.cat([inp, Y]), return_inverse=True)
        else:
            w_rows_idx, w_inv = torch.unique(Y, return_inverse=True)
        w_rows = W.detach().index_select(0, w_rows_idx).requires_grad_()
        b_rows_idx, b_inv = torch.unique(Y, return_inverse=True)
        b_rows = bias.detach().index_select(0, b_rows_idx).requires_grad_()
        if model.embedding_mode == "shared":
            x = w_rows.index_select(0, w_inv[:b])
            y_idx = w_inv[b:]                       # (C,) rows of w_rows scored by the step
            in_name, in_rows_idx, in_rows = None, None, None
        else:
            in_name = model.input_table_name
            in_rows_idx, in_inv = torch.unique(inp, return_inverse=True)
            in_rows = getattr(model, in_name).detach().index_select(0, in_rows_idx).requires_grad_()
            x = in_rows.index_select(0, in_inv)
            y_idx = w_inv

        loss, new_hidden = self.step_loss(x, hidden, Y, w_rows, y_idx, b_rows, b_inv)

        leaves = [w_rows, b_rows] + ([in_rows] if in_rows is not None else [])
        grads = torch.autograd.grad(loss, self._dense_params + leaves, allow_unused=True)
        for (name, p), g in zip(self._dense, grads):
            if g is not None:
                self.opt.step_dense(name, p.data, g)
        g_w, g_b = grads[len(self._dense)], grads[len(self._dense) + 1]
        self.opt.step_rows("item_weight", W.data, w_rows_idx, g_w)
        self.opt.step_rows("item_bias", bias.data, b_rows_idx, g_b)
        if in_rows is not None:
            self.opt.step_rows(in_name, getattr(model, in_name).data, in_rows_idx, grads[-1])
        return loss.detach(), [h.detach() for h in new_hidden]
