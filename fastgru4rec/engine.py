"""The fast training engine: the reference loop's semantics with fixed-shape, sync-free steps
and, on CUDA, the steady-state step captured in a CUDA graph.

With the shared embedding and sampled negatives (all the published settings) every step, on
any device, is the fused one (``fused_step``: ops.train_step.shared_step_grads, explicit
backward: on CUDA the fused Triton kernels, on the CPU the same backward written out in plain
torch ops, no autograd graph; then the row updates with repeated ids summed by the optimizer, on
the CPU in one C++ pass): 1.29x to 1.35x the reference loop's events/s on rsc15-sample at the
RSC15 setting on a 2-core CPU (README). Otherwise, on the CPU the engine runs the reference
step (Trainer.train_step: torch.unique costs nothing there and gathers fewer rows; measured
faster than the fixed-shape autograd step) with the samples moved in chunks; on CUDA the
fixed-shape step below.

What the CUDA path changes against train.Trainer (and why):
- With the shared embedding (all the published settings) the step is the fused one
  (``fused_step``: ops.train_step, explicit backward over the fused GRU and scoring kernels, no
  autograd). Otherwise (``fixed_step``, an autograd step):
- No torch.unique (its output size is data-dependent: a host sync, and no CUDA graph). Each
  step gathers the item-table rows it uses, one row per occurrence, as leaves; the optimizer
  (ops.optim.adagrad_momentum_scatter) sums the gradients of repeated ids itself after a sort,
  on CUDA in one Triton launch for the item table and its bias together (one sort).
- Dense parameters are updated by ops.optim.adagrad_momentum_list: on CUDA one Triton launch per
  four tensors (a GRU layer), elsewhere multi-tensor torch._foreach_* launches.
- Negative samples are drawn ``chunk_steps`` steps at a time and moved to the device as one
  block through pinned buffers, asynchronously (the same ids, in the same order, as the
  reference's one row per step).
- The hidden-state reset is always applied as a multiplication by the (b, 1) not-reset mask
  (×1 leaves a row bit-identical), so every full-width step has the same shapes.
- On CUDA, the full-width steps (all B lanes active: from the start of the epoch until the
  first lane runs out of sessions) replay one captured CUDA graph: it reads its step's row
  of a chunk buffer (filled once per ``chunk_steps`` steps: [inputs; targets; samples; restart
  flags]) through a device-side counter, so nothing is copied or synchronised per step.
  One graph step is 15 launches at b 32 / H 100 / CE + logQ (benchmarks/compile_check.py
  counts them). The first ``warmup_steps`` full-width steps run eagerly (they load
  kernels, cuBLAS handles and the allocator's blocks before capture). The shrinking tail runs
  eagerly through the same step function.

Same seed, same results, for the autograd step: its dropout masks come from the same generator
calls in the same order as the reference loop's (a CUDA graph replays the generator's Philox
offsets, registered with the graph), so both train the same parameters up to the order of
floating-point sums (which the RSC15 setting amplifies chaotically: see README "Results"). The
fused step draws its masks from a counter hash of a device seed instead: the same distribution,
other masks, so it matches the reference loop in metrics, not in parameters.
"""
from __future__ import annotations

import warnings
from typing import List, Optional

import numpy as np
import torch

from .config import GRU4RecConfig
from .data import SessionData
from .nn import GRU4RecModel
from .ops.optim import adagrad_momentum_list, adagrad_momentum_scatter
from .ops.train_step import dense_params, shared_step_grads
from .train import EpochOnDevice, EpochProgress, EpochStats, Trainer, zero_restarted


class HostSyncGuard(torch.overrides.TorchFunctionMode):
    """Raises AssertionError on torch calls that read device data on the host or make shapes
    depend on data (each a host sync on CUDA, and impossible inside a CUDA graph capture).
    Wrap code meant for capture to check it anywhere, the CPU included:
    ``with HostSyncGuard(): trainer.fused_step(...)``. On the CPU, set
    ``trainer.optimizer_backend = "torch"`` first: the default there is the C++ row update,
    which hands the tensors to the extension as numpy arrays (Tensor.numpy: forbidden here,
    though it is no sync on the CPU); on CUDA the default (triton) passes as it is."""

    FORBIDDEN = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
                 torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
                 torch.unique, torch.Tensor.unique, torch._unique2, torch.nonzero,
                 torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select,
                 torch.unique_consecutive}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FORBIDDEN:
            raise AssertionError(f"host sync in the step: {getattr(func, '__name__', func)}")
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            index = args[1] if len(args) > 1 else None
            for ix in (index if isinstance(index, tuple) else (index,)):
                if isinstance(ix, torch.Tensor) and ix.dtype == torch.bool:
                    raise AssertionError("boolean-mask indexing in the step (data-dependent shape)")
        return func(*args, **(kwargs or {}))


class FastTrainer(Trainer):
    """Drop-in for Trainer (same constructor, ``train_epoch`` and ``fit``).

    cuda_graph: "auto" (capture on CUDA, eager elsewhere), True (require CUDA), False (eager).
    chunk_steps: steps of negative samples moved to the device at once.
    optimizer_backend: backend of the sparse row update ("auto": triton on CUDA, the C++ row
    update ("native") on the CPU when the extension loads, else "torch"; "torch" everywhere
    with FASTGRU4REC_BACKEND=torch).
    step: the step's form: "autograd" (gathered rows as autograd leaves; the same dropout draws
    as the reference loop; on the CPU the reference step itself), "fused" (shared embedding,
    sampled negatives: the explicit-backward step of ops.train_step, dropout masks from a
    counter-based hash of a device seed), "auto" (fused wherever it applies, on any device).
    step_backend: backend of the fused step ("auto": triton on CUDA, "explicit" elsewhere,
    "torch" everywhere with FASTGRU4REC_BACKEND=torch; "torch": its autograd oracle).
    """

    def __init__(self, model: GRU4RecModel, config: GRU4RecConfig, supports: np.ndarray,
                 device: torch.device, schedule_backend: str = "auto",
                 precision: Optional[str] = None, cuda_graph="auto", chunk_steps: int = 256,
                 warmup_steps: int = 3, optimizer_backend: str = "auto", step: str = "auto",
                 step_backend: str = "auto"):
        super().__init__(model, config, supports, device, schedule_backend, precision)
        device = self.device   # a torch.device (a string is accepted, as by Trainer)
        if step not in ("auto", "autograd", "fused"):
            raise ValueError(f"step must be 'auto', 'autograd' or 'fused' (got {step!r})")
        fusable = model.embedding_mode == "shared" and not config.full_catalog
        if step == "fused" and not fusable:
            raise ValueError("the fused step needs the shared embedding (constrained_embedding) "
                             "and sampled negatives (not n_sample='all')")
        #: fixed-shape steps go through fused_step (True) or the autograd fixed_step
        self.fused = step == "fused" or (step == "auto" and fusable)
        self.step_backend = step_backend
        if cuda_graph not in ("auto", True, False):
            raise ValueError(f"cuda_graph must be 'auto', True or False (got {cuda_graph!r})")
        if cuda_graph is True and device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        if int(chunk_steps) < 1 or int(warmup_steps) < 1:
            raise ValueError("chunk_steps and warmup_steps must be at least 1")
        self.use_graph = device.type == "cuda" and cuda_graph is not False
        #: eager steps through fixed_step (fixed shapes, no sync: what a GPU wants; and the
        #: fused step on any device) or through the reference step (the CPU's autograd step:
        #: torch.unique over the touched rows gathers and updates fewer rows, and a sync costs
        #: nothing on the CPU; measured faster there than the fixed-shape autograd step)
        self.fixed_shapes = device.type == "cuda" or self.fused
        self.chunk_steps, self.warmup_steps = int(chunk_steps), int(warmup_steps)
        self.optimizer_backend = optimizer_backend
        #: how the last epoch's full-width steps ran: "graph", "eager" or "eager (reason)"
        self.graph_status = "eager"
        self._dense_acc = [self.opt.state[n][0] for n, _ in self._dense]
        self._dense_vel = ([self.opt.state[n][1] for n, _ in self._dense]
                           if config.momentum > 0 else None)
        n_cols = 2 * config.batch_size + config.n_extra_samples
        # column ids 0..: the scoring reads the gathered leaves in order (no duplicates, so the
        # kernels' gradient scatter has no atomic collisions)
        self._cols = torch.arange(n_cols, dtype=torch.int64, device=device)
        # the fused step's gradients come in ops.train_step.dense_params order: with the shared
        # embedding that is the model's own order of its dense parameters (the GRU layers')
        if fusable and [id(p) for p in dense_params(model.gru)] != [id(p) for p in
                                                                    self._dense_params]:
            raise AssertionError("GRU parameter order differs from ops.train_step.dense_params")
        # device counters [dropout seed of the fused step, row of the graph's step chunk]: one
        # tensor, so the CUDA graph advances both with one launch; the seed goes up by one per
        # step (lanes_step, _GraphedSteps.body)
        self._counters = torch.tensor([(config.seed * 1_000_003 + 7) & 0x7FFFFFFF, 0],
                                      dtype=torch.int64, device=device)
        self._seed = self._counters[0:1]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Trainer.state_dict and the fused step's dropout seed (it advances once a step)."""
        state = super().state_dict()
        state["dropout_seed"] = int(self._counters[0])
        return state

    def load_state_dict(self, state: dict, release: bool = False) -> None:
        super().load_state_dict(state, release)
        self._counters[0] = int(state["dropout_seed"])

    # ------------------------------------------------------------------ one step
    def fixed_step(self, inp: torch.Tensor, tgt: torch.Tensor, not_reset: torch.Tensor,
                   neg: Optional[torch.Tensor], hidden: List[torch.Tensor],
                   ids: Optional[torch.Tensor] = None, reset: Optional[torch.Tensor] = None):
        """One training step on b lanes with shapes fixed by b alone: inp / tgt int64 (b,),
        not_reset float (b, 1), neg int64 (n_sample,) or None, hidden list of (b, H_l).
        ids: optionally [inp; tgt; neg] as one contiguous tensor whose views inp, tgt and neg
        are (saves the fused step two concatenations); reset: optionally the lanes' restart
        flags (b,) (nonzero: restart), which the fused step reads instead of not_reset (then
        None). Returns (loss / B (0-d, detached), new hidden list, detached). No host sync; the
        caller advances the dropout seed."""
        if self.fused:
            return self.fused_step(inp, tgt, not_reset, neg, hidden, ids, reset)
        if self.cfg.full_catalog:
            return self.full_catalog_step(inp, tgt, zero_restarted(hidden, not_reset))
        cfg, model = self.cfg, self.model
        b = inp.shape[0]
        Y = torch.cat([tgt, neg]) if neg is not None else tgt          # (C,)
        C = Y.shape[0]
        W, bias = model.item_weight, model.item_bias
        shared = model.embedding_mode == "shared"
        # leaves: one gathered row per occurrence (shared: the b input rows, then the C columns)
        w_ids = torch.cat([inp, Y]) if shared else Y
        w_rows = W.detach().index_select(0, w_ids).requires_grad_()
        b_rows = bias.detach().index_select(0, Y).requires_grad_()
        if shared:
            x, y_cols, in_rows, in_table = w_rows[:b], self._cols[b:b + C], None, None
        else:
            in_table = getattr(model, model.input_table_name)
            in_rows = in_table.detach().index_select(0, inp).requires_grad_()
            x, y_cols = in_rows, self._cols[:C]

        hidden = zero_restarted(hidden, not_reset)
        loss, new_hidden = self.step_loss(x, hidden, Y, w_rows, y_cols, b_rows, self._cols[:C])

        leaves = [w_rows, b_rows] + ([in_rows] if in_rows is not None else [])
        grads = torch.autograd.grad(loss, self._dense_params + leaves, allow_unused=True)
        n_dense = len(self._dense_params)
        used = [i for i in range(n_dense) if grads[i] is not None]
        adagrad_momentum_list(
            [self._dense_params[i] for i in used], [grads[i] for i in used],
            [self._dense_acc[i] for i in used],
            [self._dense_vel[i] for i in used] if self._dense_vel is not None else None,
            cfg.learning_rate, cfg.momentum, backend=self.optimizer_backend)
        self._update_item_rows(w_ids, grads[n_dense], grads[n_dense + 1], b if shared else 0)
        if in_rows is not None:
            self._update_rows(model.input_table_name, in_table, inp, grads[n_dense + 2])
        return loss.detach(), [h.detach() for h in new_hidden]

    def fused_step(self, inp: torch.Tensor, tgt: torch.Tensor, not_reset: torch.Tensor,
                   neg: Optional[torch.Tensor], hidden: List[torch.Tensor],
                   ids: Optional[torch.Tensor] = None, reset: Optional[torch.Tensor] = None):
        """fixed_step's contract through ops.train_step.shared_step_grads (explicit backward,
        fused kernels on CUDA), then the same optimizer updates. No host sync."""
        cfg, model = self.cfg, self.model
        b = inp.shape[0]
        if ids is None:
            Y = torch.cat([tgt, neg]) if neg is not None else tgt
        else:
            Y = ids[b:]                                   # (C,) = [tgt; neg], a view
        if reset is None:
            reset = not_reset.view(-1) == 0
        g = shared_step_grads(model.item_weight, model.item_bias, model.gru, inp, Y, hidden,
                              reset, self._seed, loss=cfg.loss,
                              batch_size=cfg.batch_size, dropout_embed=cfg.dropout_p_embed,
                              dropout_hidden=cfg.dropout_p_hidden,
                              log_support=self.log_support, sample_alpha=cfg.sample_alpha,
                              logq=cfg.logq, bpreg=cfg.bpreg, elu_param=cfg.elu_param,
                              backend=self.step_backend, precision=self.precision,
                              item_ids=ids)
        adagrad_momentum_list(self._dense_params, g.dense, self._dense_acc, self._dense_vel,
                              cfg.learning_rate, cfg.momentum, backend=self.optimizer_backend)
        # g.item_ids = [inp; Y] and g.bias_ids = Y: the bias rows are the ids past b
        self._update_item_rows(g.item_ids, g.item_grads, g.bias_grads, b)
        return g.loss, g.new_hidden

    def lanes_step(self, ep: EpochOnDevice, t: int, hidden: List[torch.Tensor],
                   neg: Optional[torch.Tensor] = None):
        """Trainer.lanes_step, through the fixed-shape step when fixed_shapes is on."""
        if not self.fixed_shapes:
            return super().lanes_step(ep, t, hidden, neg)
        lo, hi = ep.step_off[t], ep.step_off[t + 1]
        out = self.fixed_step(ep.inputs[lo:hi], ep.targets[lo:hi], ep.not_reset[lo:hi], neg,
                              hidden)
        self._seed.add_(1)
        return out

    def _sample_chunk(self, k: int) -> torch.Tensor:
        """The next k steps' samples (k, n_sample) int64 on the device. On CUDA they go through
        two alternating pinned host buffers with asynchronous copies (a buffer is refilled only
        after its previous copy has finished), so the upload overlaps the running steps."""
        rows = self.sampler.next_rows(k)
        if self.device.type != "cuda":
            return torch.from_numpy(rows)
        if getattr(self, "_pinned", None) is None:
            shape = (self.chunk_steps, self.cfg.n_extra_samples)
            self._pinned = [torch.empty(shape, dtype=torch.int64, pin_memory=True)
                            for _ in range(2)]
            self._pinned_done = [None, None]
            self._pinned_next = 0
        i = self._pinned_next
        self._pinned_next = 1 - i
        if self._pinned_done[i] is not None:
            self._pinned_done[i].synchronize()
        host = self._pinned[i][:k]
        host.numpy()[:] = rows
        out = host.to(self.device, non_blocking=True)
        self._pinned_done[i] = torch.cuda.Event()
        self._pinned_done[i].record()
        return out

    def _update_rows(self, name: str, table: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor):
        acc, vel = self.opt.state[name]
        adagrad_momentum_scatter(table.data, ids, grad, acc, vel, self.cfg.learning_rate,
                                 self.cfg.momentum, backend=self.optimizer_backend)

    def _update_item_rows(self, ids: torch.Tensor, grad: torch.Tensor, bias_grad: torch.Tensor,
                          bias_offset: int):
        """The item table at ids (L,) (one gradient row per occurrence) and the item bias at
        ids[bias_offset:] (bias_grad (L - bias_offset,)): one sort, and on CUDA one launch."""
        acc, vel = self.opt.state["item_weight"]
        b_acc, b_vel = self.opt.state["item_bias"]
        adagrad_momentum_scatter(self.model.item_weight.data, ids, grad, acc, vel,
                                 self.cfg.learning_rate, self.cfg.momentum,
                                 backend=self.optimizer_backend,
                                 bias=(self.model.item_bias.data, bias_grad, b_acc, b_vel,
                                       bias_offset))

    # ------------------------------------------------------------------ the epoch
    # training works inside a caller's torch.no_grad() or torch.inference_mode() too
    @torch.inference_mode(False)
    @torch.enable_grad()
    def train_epoch(self, data: SessionData, epoch: int = 0, progress: bool = True,
                    max_steps: Optional[int] = None) -> EpochStats:
        ep = EpochOnDevice.upload(self.schedule(data), self.device)
        B = self.cfg.batch_size
        n_steps = ep.n_steps if max_steps is None else min(max_steps, ep.n_steps)
        n_full = full_width_steps(ep, B, n_steps)
        n_events = ep.step_off[n_steps]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        bar = EpochProgress(epoch, n_events, B, progress)

        graphed = None
        if self.use_graph and n_full > 0:
            graphed = _GraphedSteps(self, ep, n_full, loss_sum)
        # the schedule starts min(B, sessions) lanes (compacted later by the steps' keep lists)
        hidden = self.model.init_hidden(min(B, data.n_sessions))
        t = 0
        while t < n_steps:
            k = min(self.chunk_steps, n_steps - t)
            neg_chunk = self._sample_chunk(k) if self.sampler is not None else None
            if graphed is not None and t < n_full:
                # full-width steps of this chunk through the graph (warm-up / capture inside)
                k_full = min(k, n_full - t)
                graphed.load_chunk(t, k_full, neg_chunk)
                for i in range(k_full):
                    graphed.step()
                    bar.after_step(t + i + 1, n_steps, ep.step_off[t + i + 1], loss_sum)
                if t + k_full == n_full:
                    hidden = [h.clone() for h in graphed.hidden]
            else:
                k_full = 0
            for i in range(k_full, k):
                neg = neg_chunk[i] if neg_chunk is not None else None
                loss, hidden = self.step_at(ep, t + i, hidden, neg)
                loss_sum += loss
                bar.after_step(t + i + 1, n_steps, ep.step_off[t + i + 1], loss_sum)
            t += k
        self.graph_status = "eager" if graphed is None else graphed.status
        if self.use_graph and self.graph_status == "eager":
            self.graph_status = (f"eager (not captured: {n_full} full-width steps, "
                                 f"{self.warmup_steps} warm-up)")
        return bar.close(n_steps, loss_sum)


def full_width_steps(ep: EpochOnDevice, batch_size: int, n_steps: int) -> int:
    """How many leading steps have all batch_size lanes and no compaction (the steps a CUDA
    graph of one shape can replay)."""
    widths = np.diff(np.asarray(ep.step_off[:n_steps + 1]))
    kept = np.diff(np.asarray(ep.keep_off[:n_steps + 1]))
    bad = np.flatnonzero((widths != batch_size) | (kept > 0))
    return int(bad[0]) if bad.size else n_steps


class _GraphedSteps:
    """The full-width steps of one epoch, a chunk of steps at a time: a static chunk buffer of
    one int64 row per step, [inputs (B); targets (B); samples (n_sample); restart flags (B)],
    filled before each chunk outside the graph (and, for the autograd step, the not-reset
    masks (B, 1)); the device counter k (the row of the chunk, trainer._counters[1], advanced
    with the dropout seed by one launch); the hidden state in static buffers; and one CUDA
    graph of ``body`` once warmed up. The fused step reads its data with one launch (a row
    gather) and needs no concatenation."""

    def __init__(self, trainer: FastTrainer, ep: EpochOnDevice, n_full: int,
                 loss_sum: torch.Tensor):
        B, dev, rows = trainer.cfg.batch_size, trainer.device, trainer.chunk_steps
        self.trainer, self.loss_sum, self.B = trainer, loss_sum, B
        self.inputs = ep.inputs[:n_full * B].view(n_full, B)
        self.targets = ep.targets[:n_full * B].view(n_full, B)
        self.not_reset = ep.not_reset[:n_full * B].view(n_full, B, 1)
        self.n_sample = trainer.cfg.n_extra_samples if trainer.sampler is not None else 0
        self.rows = torch.zeros(rows, 3 * B + self.n_sample, dtype=torch.int64, device=dev)
        self.not_reset_rows = (None if trainer.fused else
                               torch.ones(rows, B, 1, dtype=ep.not_reset.dtype, device=dev))
        self.k = trainer._counters[1:2]
        self.hidden = trainer.model.init_hidden(B)
        self.graph = None
        self.side = None
        self.done = 0
        self.status = "eager"

    def load_chunk(self, t0: int, n: int, neg_chunk: Optional[torch.Tensor]) -> None:
        """Steps t0 .. t0 + n - 1 into the chunk buffers' rows 0 .. n - 1 (outside the graph)."""
        B, end = self.B, 2 * self.B + self.n_sample
        self.rows[:n, :B].copy_(self.inputs[t0:t0 + n])
        self.rows[:n, B:2 * B].copy_(self.targets[t0:t0 + n])
        if neg_chunk is not None:
            self.rows[:n, 2 * B:end].copy_(neg_chunk[:n])
        self.rows[:n, end:].copy_(self.not_reset[t0:t0 + n].view(n, B) == 0)
        if self.not_reset_rows is not None:
            self.not_reset_rows[:n].copy_(self.not_reset[t0:t0 + n])
        self.k.zero_()

    def body(self) -> None:
        """One full-width step reading chunk row k through the device counter."""
        B, end = self.B, 2 * self.B + self.n_sample
        row = self.rows.index_select(0, self.k).view(-1)   # [inp; tgt; neg; restart flags]
        nr = (self.not_reset_rows.index_select(0, self.k).view(-1, 1)
              if self.not_reset_rows is not None else None)
        neg = row[2 * B:end] if self.n_sample else None
        loss, new_hidden = self.trainer.fixed_step(row[:B], row[B:2 * B], nr, neg, self.hidden,
                                                   ids=row[:end], reset=row[end:])
        for h, new in zip(self.hidden, new_hidden):
            h.copy_(new)
        self.loss_sum.add_(loss)
        self.trainer._counters.add_(1)        # the dropout seed and k, one launch

    def step(self) -> None:
        if self.graph is None and self.status == "eager" and self.done >= self.trainer.warmup_steps:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager_body()
        self.done += 1

    def _eager_body(self) -> None:
        if not self.inputs.is_cuda:
            self.body()
            return
        # warm-up on a side stream, as torch.cuda.graph's documentation asks
        if self.side is None:
            self.side = torch.cuda.Stream()
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            self.body()
        torch.cuda.current_stream().wait_stream(self.side)

    def _capture(self) -> None:
        """Capture body() (nothing runs during capture); on failure, warn once and stay eager."""
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            if self.trainer.cfg.dropout_p_embed > 0 or self.trainer.cfg.dropout_p_hidden > 0:
                graph.register_generator_state(self.trainer.generator)
            with torch.cuda.graph(graph):
                self.body()
        except Exception as exc:   # an op that cannot be captured: fall back, keep training
            torch.cuda.synchronize()
            self.status = f"eager (CUDA graph capture failed: {type(exc).__name__}: {exc})"
            warnings.warn(f"fastgru4rec: {self.status}; the fast engine runs eagerly",
                          RuntimeWarning, stacklevel=3)
            return
        self.graph = graph
        self.status = "graph"
