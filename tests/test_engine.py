"""The fast engine (fastgru4rec.engine.FastTrainer) against the eager reference loop, and its
fixed-shape optimizer pieces against the unique-row reference (float64)."""
import copy
import random

import numpy as np
import pytest
import torch

from fastgru4rec.config import LOSSES, GRU4RecConfig
from fastgru4rec.engine import FastTrainer, HostSyncGuard, full_width_steps
from fastgru4rec.evaluate import evaluate_model
from fastgru4rec.nn import GRU4RecModel
from fastgru4rec.ops.optim import (adagrad_momentum_dense, adagrad_momentum_foreach,
                                   adagrad_momentum_list, adagrad_momentum_scatter)
from fastgru4rec.sampling import SampleStore
from fastgru4rec.synthetic import synthetic_split
from fastgru4rec.train import EpochOnDevice, Trainer
from conftest import one_torch_thread

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


# ------------------------------------------------------------------ optimizer pieces
#: scales (table, acc, vel, grad) of the two regimes: "unit" (acc + g² ~ 1: placing epsilon
#: outside the sqrt moves the step by ~1e-6 relative, below a float32 tolerance) and "small"
#: (acc ~ 1e-7, g ~ 1e-4: acc + g² ~ 1e-7 < eps = 1e-6, so sqrt(acc + eps) ~ 1e-3 and
#: sqrt(acc) + eps ~ 3e-4: the epsilon placement changes the step ~3x)
SCALES = {"unit": (1.0, 1.0, 0.1, 1.0), "small": (1e-2, 1e-7, 1e-3, 1e-4)}


def _scatter_case(seed, L, N, H, dtype=torch.float64, scale="unit"):
    s_t, s_a, s_v, s_g = SCALES[scale]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, N, (L,), generator=g)
    ids[: L // 3] = ids[L // 3: 2 * (L // 3)]          # plenty of repeats
    shape = (N, H) if H else (N,)
    gshape = (L, H) if H else (L,)
    table = torch.randn(shape, generator=g, dtype=dtype) * s_t
    acc = torch.rand(shape, generator=g, dtype=dtype) * s_a
    vel = torch.randn(shape, generator=g, dtype=dtype) * s_v
    grad = torch.randn(gshape, generator=g, dtype=dtype) * s_g
    return ids, table, acc, vel, grad


def adagrad_reference(P, acc, vel, G, lr, mu):
    """REFERENCE §4 written out in float64 numpy, on one row or a whole tensor:
    acc += g²;  v = μ·v - lr·g / sqrt(acc + 1e-6);  p += v   (μ = 0: p -= lr·g / sqrt(..),
    no velocity kept). Returns the new (P, acc, vel)."""
    acc = acc + G * G
    step = lr * G / np.sqrt(acc + 1e-6)
    if mu > 0:
        vel = mu * vel - step
        return P + vel, acc, vel
    return P - step, acc, vel


def _unique_reference(ids, table, acc, vel, grad, lr, momentum):
    """The sparse update of REFERENCE §4 in float64 numpy, independent of the library: the
    gradients of repeated ids summed row by row, then each touched row updated once
    (adagrad_reference); untouched rows keep value, accumulator and velocity. Returns torch
    float64 tensors (vel None when momentum is off)."""
    P = table.double().numpy().copy()
    A = acc.double().numpy().copy()
    V = vel.double().numpy().copy() if vel is not None else np.zeros_like(P)
    gr = grad.double().numpy()
    ids = ids.numpy()
    G = {}
    for j in range(ids.shape[0]):                      # literal loop: duplicates summed
        r = int(ids[j])
        G[r] = G[r] + gr[j] if r in G else gr[j].copy()
    for r, g in G.items():
        P[r], A[r], V[r] = adagrad_reference(P[r], A[r], V[r], g, lr, momentum)
    return (torch.from_numpy(P), torch.from_numpy(A),
            torch.from_numpy(V) if vel is not None else None)


SCATTER_CASES = [(1, 5, 7), (40, 30, 16), (61, 200, 100), (50, 9, 0)]


def check_scatter_update(backend, momentum, L, N, H, device="cpu", dtype=torch.float64,
                         tol=1e-12, scale="unit"):
    """adagrad_momentum_scatter on ``device`` against the unique-row float64 reference; rows
    not named by the ids must stay bit-identical. (Also run by tests/test_optim_kernel.py.)"""
    ids, table, acc, vel, grad = _scatter_case(L * 7 + H, L, N, H, scale=scale)
    vel = vel if momentum > 0 else None
    ref = _unique_reference(ids, table, acc, vel, grad, 0.07, momentum)
    t, a = table.to(device, dtype), acc.to(device, dtype)
    v = vel.to(device, dtype) if vel is not None else None
    adagrad_momentum_scatter(t, ids.to(device), grad.to(device, dtype), a, v, 0.07, momentum,
                             backend=backend)
    for got, want, name in ((t, ref[0], "table"), (a, ref[1], "acc"), (v, ref[2], "vel")):
        if want is None:
            continue
        err = (got.cpu().double() - want).norm() / want.norm()
        assert err < tol, (name, err.item())
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[ids] = False
    assert torch.equal(t.cpu()[untouched], table.to(dtype)[untouched])


@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("L,N,H", SCATTER_CASES)
def test_scatter_update_equals_unique_rows(momentum, L, N, H):
    check_scatter_update("torch", momentum, L, N, H)


#: small-state cases (SCALES["small"]), where epsilon dominates the denominator
SMALL_SCATTER_CASES = [(40, 30, 16), (50, 9, 0)]


@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("L,N,H", SMALL_SCATTER_CASES)
def test_scatter_update_equals_unique_rows_epsilon_dominated(momentum, L, N, H):
    check_scatter_update("torch", momentum, L, N, H, scale="small")


def test_small_scale_separates_epsilon_placement():
    """The "small" regime is what makes the epsilon tests bite: with epsilon outside the sqrt
    (lr·g / (sqrt(acc) + eps)) the reference's updated table differs by > 10% relative, the
    "unit" regime by < 1e-5 (under the float32 tolerance 2e-6 only by luck of size)."""
    for scale, lo, hi in (("small", 0.1, 10.0), ("unit", 0.0, 1e-5)):
        _, P, A, V, G = _scatter_case(3, 40, 40, 16, scale=scale)
        P, A, V, G = (x.numpy() for x in (P, A, V, G[:40]))
        want, acc, _ = adagrad_reference(P, A, V, G, 0.07, 0.4)
        wrong = P + 0.4 * V - 0.07 * G / (np.sqrt(acc) + 1e-6)
        rel = np.linalg.norm(wrong - want) / np.linalg.norm(want)
        assert lo < rel < hi, (scale, rel)


#: (L ids, N rows, H, bias offset): the bias rows are the ids at positions >= offset
SCATTER_BIAS_CASES = [(40, 30, 16, 12), (61, 200, 100, 0), (9, 50, 8, 9), (70, 25, 33, 20)]


def check_scatter_with_bias(backend, momentum, L, N, H, offset, device="cpu",
                            dtype=torch.float64, tol=1e-12, scale="unit"):
    """adagrad_momentum_scatter(..., bias=...) against the float64 unique-row reference run on
    the table at ids and on the bias at ids[offset:] separately; a bias row named only before
    offset (an input that is no column) keeps its value, accumulator and velocity bit-exactly.
    (Also run by tests/test_optim_kernel.py.)"""
    ids, table, acc, vel, grad = _scatter_case(L * 5 + H + offset, L, N, H, scale=scale)
    _, bias, b_acc, b_vel, b_grad = _scatter_case(L + 99, L, N, 0, scale=scale)
    ids[0] = ids[L - 1] if offset == 0 else ids[0]
    if 0 < offset < L:       # plant: an id only before offset, and one on both sides
        ids[offset:] = torch.where(ids[offset:] == ids[0], (ids[0] + 1) % N, ids[offset:])
        ids[offset - 1] = ids[L - 1]
    b_grad = b_grad[offset:]
    vel, b_vel = (vel, b_vel) if momentum > 0 else (None, None)
    want = _unique_reference(ids, table, acc, vel, grad, 0.07, momentum)
    want_b = (_unique_reference(ids[offset:], bias, b_acc, b_vel, b_grad, 0.07, momentum)
              if offset < L else (bias, b_acc, b_vel))
    got = [x.to(device, dtype) if x is not None else None
           for x in (table, acc, vel, bias, b_acc, b_vel)]
    adagrad_momentum_scatter(got[0], ids.to(device), grad.to(device, dtype), got[1], got[2],
                             0.07, momentum, backend=backend,
                             bias=(got[3], b_grad.to(device, dtype), got[4], got[5], offset))
    for g, w, name in zip(got, list(want) + list(want_b),
                          ("table", "acc", "vel", "bias", "bias acc", "bias vel")):
        if w is None:
            continue
        err = (g.cpu().double() - w).norm() / w.norm()
        assert err < tol, (name, err.item())
    no_bias = torch.ones(N, dtype=torch.bool)
    no_bias[ids[offset:]] = False
    for g, before in zip(got[3:], (bias, b_acc, b_vel)):
        if g is not None:
            assert torch.equal(g.cpu()[no_bias], before.to(dtype)[no_bias])
    if 0 < offset < L:
        assert bool(no_bias[ids[0]])   # the planted input-only id was kept


@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("L,N,H,offset", SCATTER_BIAS_CASES)
def test_scatter_update_with_bias_equals_separate_updates(momentum, L, N, H, offset):
    check_scatter_with_bias("torch", momentum, L, N, H, offset)


@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_scatter_update_with_bias_epsilon_dominated(momentum):
    check_scatter_with_bias("torch", momentum, 40, 30, 16, 12, scale="small")


def check_dense_list(backend, shapes, momentum, device="cpu", dtype=torch.float64, tol=1e-12,
                     scale="unit"):
    """adagrad_momentum_list against the float64 numpy reference (adagrad_reference) per
    tensor. (Also run by tests/test_optim_kernel.py.)"""
    s_t, s_a, s_v, s_g = SCALES[scale]
    g = torch.Generator().manual_seed(len(shapes) * 10 + int(momentum * 10))
    params = [torch.randn(s, generator=g, dtype=torch.float64) * s_t for s in shapes]
    grads = [torch.randn(s, generator=g, dtype=torch.float64) * s_g for s in shapes]
    accs = [torch.rand(s, generator=g, dtype=torch.float64) * s_a for s in shapes]
    vels = [torch.randn(s, generator=g, dtype=torch.float64) * s_v for s in shapes]
    want = [[], [], []]
    for p, gr, a, v in zip(params, grads, accs, vels):
        for out, x in zip(want, adagrad_reference(p.numpy(), a.numpy(), v.numpy(), gr.numpy(),
                                                  0.1, momentum)):
            out.append(torch.from_numpy(x))
    got = [[x.to(device, dtype) for x in xs] for xs in (params, accs, vels)]
    adagrad_momentum_list(got[0], [x.to(device, dtype) for x in grads], got[1],
                          got[2] if momentum else None, 0.1, momentum, backend=backend)
    for gs, ws in zip(got, want):
        for gt, w in zip(gs, ws):
            if w.numel():
                err = (gt.cpu().double() - w).norm() / w.norm()
                assert err < tol, err.item()
    if not momentum:
        assert all(torch.equal(v.cpu(), v0.to(dtype)) for v, v0 in zip(got[2], vels))


@pytest.mark.parametrize("scale", ["unit", "small"])
@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_list_update_torch_equals_dense(momentum, scale):
    check_dense_list("torch", [(6, 5), (7,), (3, 4)], momentum, scale=scale)


def test_list_and_bias_updates_reject_mismatched_arguments():
    p = [torch.zeros(3), torch.zeros(2)]
    with pytest.raises(ValueError, match="2 params, 1 grads"):
        adagrad_momentum_list(p, p[:1], p, None, 0.1, 0.0)
    t, ids = torch.zeros(5, 2), torch.tensor([0, 1, 2])
    bias = (torch.zeros(5), torch.zeros(3), torch.zeros(5), None, 1)   # 3 grads, 2 ids past 1
    for backend in ("torch", "auto"):
        with pytest.raises(ValueError, match="bias_grad has 3 rows; the ids past offset 1 are 2"):
            adagrad_momentum_scatter(t, ids, torch.zeros(3, 2), torch.zeros(5, 2), None, 0.1,
                                     0.0, backend=backend, bias=bias)
    assert torch.equal(t, torch.zeros(5, 2))                          # nothing written


def test_foreach_update_equals_dense():
    g = torch.Generator().manual_seed(1)
    shapes = [(6, 5), (7,), (3, 4)]
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    accs = [torch.rand(s, generator=g, dtype=torch.float64) for s in shapes]
    vels = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    for momentum in (0.0, 0.3):
        p1, a1, v1 = [copy.deepcopy(x) for x in (params, accs, vels)]
        p2, a2, v2 = [copy.deepcopy(x) for x in (params, accs, vels)]
        adagrad_momentum_foreach(p1, grads, a1, v1 if momentum else None, 0.1, momentum)
        for p, gr, a, v in zip(p2, grads, a2, v2):
            adagrad_momentum_dense(p, gr, a, v if momentum else None, 0.1, momentum)
        for x, y in zip(p1 + a1 + v1, p2 + a2 + v2):
            assert torch.allclose(x, y, rtol=1e-14, atol=0)
        assert not torch.equal(p1[0], params[0])


def test_sample_store_next_rows_matches_next():
    supports = np.arange(1, 30)
    a = SampleStore(supports, 0.5, 7, store_size=7 * 5, seed=3, backend="python")
    b = SampleStore(supports, 0.5, 7, store_size=7 * 5, seed=3, backend="python")
    rows = np.concatenate([a.next_rows(3), a.next_rows(9), a.next_rows(1)])   # crosses refills
    want = np.stack([b.next().copy() for _ in range(13)])
    assert np.array_equal(rows, want)


def test_full_width_steps_counts_leading_full_steps():
    class Sched:   # the fields EpochOnDevice.upload reads
        def __init__(self, widths, keeps):
            self.step_offsets = np.concatenate([[0], np.cumsum(widths)])
            self.keep_offsets = np.concatenate([[0], np.cumsum(keeps)])
            n = int(self.step_offsets[-1])
            self.inputs = self.targets = np.zeros(n, dtype=np.int64)
            self.reset = np.zeros(n, dtype=np.int8)
            self.keep = np.zeros(int(self.keep_offsets[-1]), dtype=np.int64)
            self.n_steps = len(widths)

    ep = EpochOnDevice.upload(Sched([4, 4, 4, 3, 3], [0, 0, 0, 3, 0]), CPU)
    assert full_width_steps(ep, 4, 5) == 3
    assert full_width_steps(ep, 4, 2) == 2
    ep = EpochOnDevice.upload(Sched([4, 4, 4, 4], [0, 0, 4, 0]), CPU)   # compaction at full width
    assert full_width_steps(ep, 4, 4) == 2


# ------------------------------------------------------------------ whole loop
@pytest.fixture(scope="module")
def small_split():
    return synthetic_split(n_items=300, n_sessions=1500, seed=11)


CONFIGS = {
    "shared-ce": dict(loss="cross-entropy", layers=(24,), logq=1.0, dropout_p_hidden=0.3,
                      dropout_p_embed=0.2, momentum=0.2, constrained_embedding=True),
    "separate-bprmax": dict(loss="bpr-max", layers=(16, 12), embedding=10, bpreg=0.5,
                            elu_param=1.0, dropout_p_hidden=0.1, momentum=0.0,
                            constrained_embedding=False),
    "onehot-top1max": dict(loss="top1-max", layers=(20,), embedding=0, momentum=0.3,
                           constrained_embedding=False),
}


# n_sample = "all": full-catalog cross-entropy, dense item-table updates, scattered input rows
FULL_CATALOG = dict(loss="cross-entropy", layers=(16,), embedding=10, n_sample="all", logq=0.0,
                    dropout_p_hidden=0.2, momentum=0.2, constrained_embedding=False)


def _train(cls, split, params, max_steps, fixed_shapes=None, **kw):
    cfg = GRU4RecConfig(**{**dict(batch_size=16, n_sample=40, learning_rate=0.1,
                                  sample_alpha=0.5, sample_store_size=40 * 37, seed=5),
                           **params})
    train = split[0]
    variants = [cfg.layer_variant(l) for l in range(len(cfg.layers))]
    model = GRU4RecModel(train.n_items, cfg.layers, cfg.embedding_mode, cfg.embedding, variants,
                         seed=cfg.seed)
    trainer = cls(model, cfg, train.supports, CPU, **kw)
    if fixed_shapes is not None:
        trainer.fixed_shapes = fixed_shapes     # the GPU's step, here on the CPU
    stats = trainer.train_epoch(train, progress=False, max_steps=max_steps)
    return model, stats, trainer


def _assert_same_params(m1, m2, rtol):
    for (name, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        err = ((p - q).norm() / q.norm()).item()
        assert err < rtol, (name, err)


def _assert_equal_params(m1, m2):
    for (name, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p, q), (name, ((p - q).norm() / q.norm()).item())


@pytest.mark.parametrize("fixed_shapes", [True, False])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_loop_equals_reference_after_100_steps(small_split, name, fixed_shapes):
    """The issue's requirement is agreement within 1e-4 after 100 steps; the tests hold the
    engine's autograd step (the one with the reference loop's dropout draws; the fused step's
    hashed masks differ, see test_fused_step_engine_learns_like_the_reference) to what it
    achieves. fixed_shapes=False (the CPU's autograd step) runs Trainer.train_step itself:
    bit-identical. fixed_shapes=True (the GPU's fixed-shape step: sorted scatter
    updates, foreach dense update, masked lanes) reorders float32 sums: measured max 3.7e-6
    relative on a parameter (shared-ce, gru.0.weight_hh) and 2.0e-8 on the mean loss, so
    2e-5 and 1e-7 (about 5x)."""
    ref, ref_stats, _ = _train(Trainer, small_split, CONFIGS[name], 100)
    fast, fast_stats, _ = _train(FastTrainer, small_split, CONFIGS[name], 100, fixed_shapes,
                                 step="autograd")
    assert fast_stats.n_steps == ref_stats.n_steps == 100
    if fixed_shapes:
        _assert_same_params(fast, ref, 2e-5)
        assert fast_stats.loss == pytest.approx(ref_stats.loss, rel=1e-7, abs=0)
    else:
        _assert_equal_params(fast, ref)
        assert fast_stats.loss == ref_stats.loss
    start = GRU4RecModel(small_split[0].n_items, ref.layers, ref.embedding_mode,
                         ref.embedding_dim, seed=5)
    assert (ref.item_weight - start.item_weight).norm() > 1e-2   # it did train


def test_graph_path_counters_equal_reference_over_whole_epoch(small_split):
    """The CUDA-graph code path run eagerly on CPU (it never captures: warm-up longer than the
    epoch): the device counters, sample chunks and the hand-over of the hidden state to the
    shrinking tail give the reference loop's result over a full epoch."""
    params = CONFIGS["shared-ce"]
    ref, ref_stats, _ = _train(Trainer, small_split, params, None)
    fast_model, fast_stats, trainer = _train(FastTrainer, small_split, params, None,
                                             chunk_steps=7, warmup_steps=10 ** 9,
                                             step="autograd")
    # same again, now through the graph code path
    cfg = trainer.cfg
    model = GRU4RecModel(small_split[0].n_items, cfg.layers, "shared", 0, seed=cfg.seed)
    graphed = FastTrainer(model, cfg, small_split[0].supports, CPU, chunk_steps=7,
                          warmup_steps=10 ** 9, step="autograd")
    graphed.use_graph = True        # counters and static buffers, eagerly (no CUDA here)
    stats = graphed.train_epoch(small_split[0], progress=False)
    assert stats.n_steps == ref_stats.n_steps and stats.n_events == ref_stats.n_events
    n_full = full_width_steps(EpochOnDevice.upload(graphed.schedule(small_split[0]), CPU),
                              cfg.batch_size, stats.n_steps)
    assert 0 < n_full < stats.n_steps                       # both phases ran
    # requirement 1e-4; measured: graph path 4.8e-6 (parameters) and 2.0e-8 (loss) relative,
    # the eager fast loop (fixed_shapes=False on CPU: Trainer.train_step) bit-identical
    _assert_same_params(model, ref, 2.5e-5)
    _assert_equal_params(fast_model, ref)
    assert stats.loss == pytest.approx(ref_stats.loss, rel=1e-7, abs=0)
    test = small_split[1]
    r_ref = evaluate_model(ref, test, (20,), "conservative", 256, CPU)
    r_fast = evaluate_model(model, test, (20,), "conservative", 256, CPU)
    assert r_fast["recall"][20] == pytest.approx(r_ref["recall"][20], abs=2e-3)
    assert r_fast["mrr"][20] == pytest.approx(r_ref["mrr"][20], abs=2e-3)


def test_graph_path_of_the_fused_step_equals_its_eager_steps(small_split):
    """The fused step (torch form) through the CUDA-graph code path run eagerly on the CPU
    (chunk buffers [inputs; targets; samples] and not-reset rows, the counter of the chunk row
    and the dropout seed advanced by one add) equals the same step taken eagerly step by step
    (lanes_step) over a whole epoch: same ids, masks and dropout seeds."""
    train = small_split[0]
    cfg = GRU4RecConfig(**{**dict(batch_size=16, n_sample=40, learning_rate=0.1,
                                  sample_alpha=0.5, sample_store_size=40 * 37, seed=5),
                           **CONFIGS["shared-ce"]})
    runs = []
    for use_graph in (False, True):
        model = GRU4RecModel(train.n_items, cfg.layers, "shared", 0, seed=cfg.seed)
        trainer = FastTrainer(model, cfg, train.supports, CPU, chunk_steps=7,
                              warmup_steps=10 ** 9, step="fused", step_backend="torch")
        trainer.fixed_shapes = True
        trainer.use_graph = use_graph
        stats = trainer.train_epoch(train, progress=False)
        runs.append((model, stats, int(trainer._seed)))
    (eager, s_eager, seed_eager), (graphed, s_graphed, seed_graphed) = runs
    n_full = full_width_steps(EpochOnDevice.upload(trainer.schedule(train), CPU), 16,
                              s_graphed.n_steps)
    assert 7 < n_full < s_graphed.n_steps            # several chunks, then the eager tail
    assert seed_graphed == seed_eager and s_graphed.n_steps == s_eager.n_steps
    assert s_graphed.loss == pytest.approx(s_eager.loss, rel=1e-6)
    _assert_same_params(graphed, eager, 1e-6)


def test_fast_trainer_rejects_bad_options():
    model = GRU4RecModel(10, (4,), "shared")
    cfg = GRU4RecConfig(layers=(4,), batch_size=2, n_sample=3)
    with pytest.raises(ValueError, match="cuda_graph"):
        FastTrainer(model, cfg, np.ones(10), CPU, cuda_graph="yes")
    with pytest.raises(ValueError, match="CUDA device"):
        FastTrainer(model, cfg, np.ones(10), CPU, cuda_graph=True)
    with pytest.raises(ValueError, match="chunk_steps"):
        FastTrainer(model, cfg, np.ones(10), CPU, chunk_steps=0)


def _random_config(seed: int) -> dict:
    """A configuration drawn over what users can set (dropout 0: the two loops draw their
    masks differently by design), with a small sample store so it refills during the run."""
    r = random.Random(seed)
    # seeds 0..14 cover every (loss, embedding mode) pair; the rest is drawn
    loss, mode = LOSSES[seed % 5], ("shared", "separate", "onehot")[seed % 3]
    p = dict(loss=loss, layers=tuple(r.choice([3, 8, 13]) for _ in range(r.choice([1, 1, 2]))),
             batch_size=r.choice([2, 3, 5, 16]), learning_rate=r.choice([0.05, 0.2, 1.0]),
             momentum=r.choice([0.0, 0.2, 0.9]), sample_alpha=r.choice([0.0, 0.5, 1.0]),
             gru_variant=r.choice(["auto", "cell", "original"]), seed=seed,
             elu_param=r.choice([0.0, 0.5, 2.0]), bpreg=r.choice([0.0, 1.0, 5.0]),
             constrained_embedding=mode == "shared",
             embedding=r.choice([4, 9]) if mode == "separate" else 0)
    if loss == "cross-entropy":
        p["logq"] = r.choice([0.0, 1.0])
    choices = [0, 1, 7, 40] + (["all"] if loss == "cross-entropy" and not p["logq"] else [])
    p["n_sample"] = r.choice(choices)
    if p["n_sample"] not in (0, "all"):
        p["sample_store_size"] = p["n_sample"] * 7
    return p


@pytest.mark.parametrize("seed", range(15))
def test_fast_loop_equals_reference_step_by_step_on_random_configs(seed):
    """Each step of the fast engine (its fused explicit-backward step where it applies, the C++
    row update) against the reference loop's, in float64 from the same state: after every step
    the parameters, optimizer state, hidden state and loss agree to rounding, then the fast
    trainer is reset to the reference's state (so chaotic growth of rounding differences over
    many steps cannot hide or fake a difference)."""
    p = _random_config(seed)
    cfg = GRU4RecConfig(**p)
    data = synthetic_split(n_items=random.Random(seed).choice([5, 30, 80]), n_sessions=60,
                           seed=seed)[0]
    variants = [cfg.layer_variant(l) for l in range(len(cfg.layers))]
    models = [GRU4RecModel(data.n_items, cfg.layers, cfg.embedding_mode, cfg.embedding,
                           variants, seed=cfg.seed).double() for _ in range(2)]
    ref = Trainer(models[0], cfg, data.supports, CPU)
    fast = FastTrainer(models[1], cfg, data.supports, CPU)
    ep = EpochOnDevice.upload(ref.schedule(data), CPU)
    hidden = models[0].init_hidden(min(cfg.batch_size, data.n_sessions))
    n_steps = min(ep.n_steps, 40)
    assert n_steps >= 10, p
    for t in range(n_steps):
        loss_ref, h_ref = ref.step_at(ep, t, [h.clone() for h in hidden])
        # the same sample row (both stores are seeded alike; the fast engine takes rows by chunk)
        neg = (torch.from_numpy(fast.sampler.next_rows(1)[0])
               if fast.sampler is not None else None)
        loss_fast, h_fast = fast.step_at(ep, t, [h.clone() for h in hidden], neg)
        where = f"config {p}, step {t}"
        assert float(loss_fast) == pytest.approx(float(loss_ref), rel=1e-10, abs=1e-12), where
        for a, b in zip(h_ref, h_fast):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=where)
        for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=f"{name}: {where}")
        for name, state in ref.opt.state.items():
            for x, y in zip(state, fast.opt.state[name]):
                if x is not None:
                    torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-11, msg=f"{name}: {where}")
        with torch.no_grad():        # the next step starts from the reference's state
            for a, b in zip(models[0].parameters(), models[1].parameters()):
                b.copy_(a)
            for name, state in ref.opt.state.items():
                for x, y in zip(state, fast.opt.state[name]):
                    if x is not None:
                        y.copy_(x)
        hidden = h_ref


@pytest.mark.parametrize("cls", [Trainer, FastTrainer])
def test_trainers_refuse_a_frozen_parameter(cls):
    # both trainers update every parameter (the fused step has no autograd that would skip a
    # frozen one): freezing is refused up front, naming the parameter
    model = GRU4RecModel(10, (4,), "shared")
    model.gru[0].weight_hh.requires_grad_(False)
    cfg = GRU4RecConfig(layers=(4,), batch_size=2, n_sample=3)
    with pytest.raises(ValueError, match=r"gru\.0\.weight_hh has requires_grad=False"):
        cls(model, cfg, np.ones(10), CPU)


@pytest.mark.parametrize("cls", [Trainer, FastTrainer])
@pytest.mark.parametrize("name", ["shared-ce", "separate-bprmax", "separate-ce-all"])
def test_trainers_keep_a_bfloat16_model_in_bfloat16(small_split, cls, name):
    # the restart mask is float32: multiplying a bf16 state by it promoted the state to float32
    # and the next product failed (mat1 and mat2 must have the same dtype)
    params = FULL_CATALOG if name == "separate-ce-all" else CONFIGS[name]
    cfg = GRU4RecConfig(**{**dict(batch_size=16, n_sample=40, learning_rate=0.1, seed=5),
                           **params})
    train = small_split[0]
    model = GRU4RecModel(train.n_items, cfg.layers, cfg.embedding_mode, cfg.embedding,
                         seed=cfg.seed).to(torch.bfloat16)
    before = copy.deepcopy(model)
    trainer = cls(model, cfg, train.supports, CPU)
    stats = trainer.train_epoch(train, progress=False, max_steps=30)
    assert stats.n_steps == 30 and np.isfinite(stats.loss)
    for (name_, p), (_, q) in zip(model.named_parameters(), before.named_parameters()):
        assert p.dtype == torch.bfloat16 and not torch.equal(p, q), name_


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CUDA-graph path)")
@pytest.mark.parametrize("name", ["shared-ce", "separate-bprmax", "separate-ce-all"])
def test_cuda_graph_engine_equals_reference(small_split, name):
    """On a GPU: the captured CUDA graph (plus the eager tail) against the eager reference loop
    on the same device, exact fp32 dot products, over a whole epoch."""
    dev = torch.device("cuda")
    out = {}
    for cls in (Trainer, FastTrainer):
        params = dict(batch_size=16, n_sample=40, learning_rate=0.1, sample_alpha=0.5,
                      sample_store_size=40 * 37, seed=5)
        params.update(CONFIGS[name] if name in CONFIGS else FULL_CATALOG)
        cfg = GRU4RecConfig(**params)
        variants = [cfg.layer_variant(l) for l in range(len(cfg.layers))]
        model = GRU4RecModel(small_split[0].n_items, cfg.layers, cfg.embedding_mode,
                             cfg.embedding, variants, seed=cfg.seed).to(dev)
        kw = {"step": "autograd"} if cls is FastTrainer else {}   # the reference's dropout draws
        trainer = cls(model, cfg, small_split[0].supports, dev, precision="ieee", **kw)
        out[cls] = (model, trainer.train_epoch(small_split[0], progress=False), trainer)
    (ref, ref_stats, _), (fast, stats, trainer) = out[Trainer], out[FastTrainer]
    assert trainer.graph_status == "graph"
    assert stats.n_steps == ref_stats.n_steps
    _assert_same_params(fast, ref, 1e-4)
    assert stats.loss == pytest.approx(ref_stats.loss, rel=1e-4)


@pytest.mark.parametrize("params,step", [(CONFIGS["shared-ce"], "autograd"),
                                         (CONFIGS["shared-ce"], "fused"),
                                         (CONFIGS["shared-ce"], "fused-explicit"),
                                         (CONFIGS["separate-bprmax"], "autograd"),
                                         (CONFIGS["onehot-top1max"], "autograd"),
                                         (FULL_CATALOG, "autograd"),
                                         ({**FULL_CATALOG, "constrained_embedding": True,
                                           "embedding": 0}, "autograd-triton")],
                         ids=["shared-ce", "shared-ce-fused", "shared-ce-fused-explicit",
                              "separate-bprmax",
                              "onehot-top1max", "full-catalog", "full-catalog-shared-kernels"])
def test_graph_body_has_no_host_sync(small_split, params, step):
    """What a CUDA graph captures (the graph body: counters, fixed_step or fused_step, optimizer
    updates) makes no host-synchronising or data-dependent-shape torch call (torch paths, on the
    CPU). The row optimizer runs its torch form here (optimizer_backend="torch"): on a GPU it is
    one Triton launch, on the CPU by default the C++ update, which takes the tensors as numpy
    arrays (Tensor.numpy, which the guard forbids though it is no sync on the CPU)."""
    if step.endswith("triton"):
        from conftest import kernel_test_setup
        _, kernel_device = kernel_test_setup("scoring")   # skips without CUDA / the interpreter
        if kernel_device != "cpu":
            # this test's tensors are on the CPU: the kernels run them only in the interpreter
            # (CI); on a GPU the CUDA-graph tests below capture the same step on the device
            pytest.skip("CPU tensors through the kernels need Triton's interpreter")
    model, _, trainer = _train(FastTrainer, small_split, params, 3, fixed_shapes=True,
                               step=step.split("-")[0],
                               step_backend="explicit" if step.endswith("explicit") else "torch",
                               optimizer_backend="torch")
    if step.endswith("triton"):
        # n_sample="all" through the kernels (the interpreter here): the shared embedding's
        # input rows summed per item by the slot map, then the update inside the dW kernel
        trainer.catalog_backend = "triton"
    from fastgru4rec.engine import _GraphedSteps
    ep = EpochOnDevice.upload(trainer.schedule(small_split[0]), CPU)
    loss_sum = torch.zeros((), dtype=torch.float64)
    graphed = _GraphedSteps(trainer, ep, full_width_steps(ep, trainer.cfg.batch_size, 50),
                            loss_sum)
    neg = (torch.from_numpy(trainer.sampler.next_rows(trainer.chunk_steps))
           if trainer.sampler is not None else None)
    graphed.load_chunk(0, 3, neg)
    before = [p.detach().clone() for p in model.parameters()]
    seed = int(trainer._seed)
    with HostSyncGuard():
        for _ in range(3):
            graphed.body()
    assert int(graphed.k) == 3 and int(trainer._seed) == seed + 3
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters())
               if a.dim() == 2)
    if trainer.cfg.full_catalog:
        return          # its reference step is the same sync-free step
    # the mode does catch syncs: the reference step's torch.unique
    with pytest.raises(AssertionError, match="host sync"), HostSyncGuard():
        trainer.train_step(ep.inputs[:16], ep.targets[:16], trainer.model.init_hidden(16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CUDA-graph path)")
def test_cuda_graph_of_the_fused_step_equals_its_eager_run(small_split):
    """On a GPU: the fused kernel step replayed from a CUDA graph against the same step run
    eagerly (same hashed dropout), over a whole epoch."""
    dev = torch.device("cuda")
    cfg = GRU4RecConfig(batch_size=16, n_sample=40, learning_rate=0.1, sample_alpha=0.5,
                        sample_store_size=40 * 37, seed=5, **CONFIGS["shared-ce"])
    models, statuses = [], []
    for graph in (True, False):
        model = GRU4RecModel(small_split[0].n_items, cfg.layers, "shared", seed=cfg.seed).to(dev)
        trainer = FastTrainer(model, cfg, small_split[0].supports, dev, precision="ieee",
                              cuda_graph="auto" if graph else False)
        assert trainer.fused
        trainer.train_epoch(small_split[0], progress=False)
        models.append(model)
        statuses.append(trainer.graph_status)
    assert statuses[0] == "graph"
    _assert_same_params(models[0], models[1], 1e-5)


def test_fused_step_engine_learns_like_the_reference():
    """The fused step (its torch form, through the graph code path run eagerly; and its
    explicit form, the CPU engine's default) trains as well as the reference loop: other
    dropout masks, so close metrics rather than equal ones."""
    train, test = synthetic_split(n_items=200, n_sessions=1500, seed=7)
    cfg = GRU4RecConfig(layers=(32,), batch_size=32, n_sample=16, learning_rate=0.1,
                        momentum=0.1, dropout_p_hidden=0.2, logq=1.0, sample_store_size=20000)
    results = {}
    for name in ("reference", "fused", "default"):
        model = GRU4RecModel(train.n_items, cfg.layers, "shared", seed=cfg.seed)
        if name == "reference":
            trainer = Trainer(model, cfg, train.supports, CPU)
        elif name == "default":
            trainer = FastTrainer(model, cfg, train.supports, CPU)
            assert trainer.fused and trainer.fixed_shapes and not trainer.use_graph
        else:
            trainer = FastTrainer(model, cfg, train.supports, CPU, step="fused",
                                  step_backend="torch", warmup_steps=10 ** 9)
            trainer.use_graph, trainer.fixed_shapes = True, True
        for epoch in range(3):
            trainer.train_epoch(train, epoch, progress=False)
        results[name] = evaluate_model(model, test, (20,), "conservative", 256, CPU)
    ref = results["reference"]
    for name in ("fused", "default"):
        fused = results[name]
        assert fused["recall"][20] > 3 * 20 / train.n_items, name
        assert abs(fused["recall"][20] - ref["recall"][20]) < 0.03, name
        assert abs(fused["mrr"][20] - ref["mrr"][20]) < 0.03, name
