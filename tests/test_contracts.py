"""Both backends of an op accept and refuse the same arguments (kernels/contracts.py).

A bad argument (a short id vector, a reset vector of one lane, a projection of one row, a
missing logq column) used to be broadcast by the plain-torch references into a silently wrong
result, or to fail deep inside torch naming none of the arguments, where the Triton launch
refused it in one line. Each case here runs on backend "torch" always and on "triton" where the
kernels run (a GPU, or Triton's CPU interpreter): the same ValueError, with the same message.
The GRU4RecModel checks at the end are the module's own.
"""
import os

import numpy as np
import pytest
import torch

from fastgru4rec.nn import GRU4RecModel
from fastgru4rec.ops import gru as G
from fastgru4rec.ops import optim as O
from fastgru4rec.ops import ranking as R
from fastgru4rec.ops import scoring as S
from fastgru4rec.ops.backend import load_kernels


def _triton_problem():
    """None when the Triton backend can run here, else why not."""
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return "Triton kernels need CUDA or TRITON_INTERPRET=1 set at process start"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return load_kernels("launch").interpreter_problem()


def _device():
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" \
        else "cpu"


BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    _triton_problem() is not None, reason=str(_triton_problem())))]


def _gru_args(b=4, H=8, E=6, n=10):
    g = torch.Generator().manual_seed(0)
    d = _device()
    t = lambda *s: torch.randn(*s, generator=g).to(d)   # noqa: E731
    return dict(x=t(n, E), h=t(b, H), weight_ih=t(3 * H, E), bias_ih=t(3 * H),
                weight_hh=t(3 * H, H), bias_hh=t(3 * H)), \
        torch.tensor([1, 3, 5, 7][:b], device=d), torch.tensor([True, False, False, True][:b],
                                                                device=d)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, bad, message", [
    ("idx", lambda idx, reset: idx[:1], r"idx must be an int32 or int64 vector of 4 ids"),
    ("idx", lambda idx, reset: idx.float(), r"idx must be an int32 or int64 vector of 4 ids"),
    ("reset", lambda idx, reset: reset[:1], r"reset must be a \(4,\) bool or integer tensor"),
    ("reset", lambda idx, reset: reset.float(), r"reset must be a \(4,\) bool or integer"),
    ("bias_ih", lambda idx, reset: None, None),          # a valid None: no error
])
def test_gru_step_fused_refuses_what_the_kernel_refuses(backend, name, bad, message):
    args, idx, reset = _gru_args()
    kw = dict(args, idx=idx, reset=reset)
    kw[name] = bad(idx, reset)
    if message is None:
        assert G.gru_step_fused(**kw, variant="cell", backend=backend).shape == (4, 8)
        return
    with pytest.raises(ValueError, match=message):
        G.gru_step_fused(**kw, variant="cell", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_step_refuses_a_projection_of_another_batch_and_dropout_of_one(backend):
    args, idx, reset = _gru_args()
    h, whh, bhh = args["h"], args["weight_hh"], args["bias_hh"]
    gi = torch.randn(1, 24, device=h.device)                 # one row for 4 lanes
    with pytest.raises(ValueError, match=r"x must have shape \(4, 24\) \(got \(1, 24\)\)"):
        G.gru_step(gi, h, whh, bhh, "cell", backend=backend)
    with pytest.raises(ValueError, match=r"bias_hh must have shape \(24,\)"):
        G.gru_step(gi.expand(4, 24), h, whh, bhh[:8], "cell", backend=backend)
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got 1.0"):
        G.gru_step_fused(**dict(args, idx=idx), variant="cell", dropout_out=1.0,
                         backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_elements", [1 << 24, 7])   # one tile; tiles of one column
def test_rank_counts_refuse_targets_of_another_batch(backend, max_elements):
    d = _device()
    g = torch.Generator().manual_seed(3)
    # small integers: every score is exact in fp32, whatever the order of the sums (ties too)
    h, W = (torch.randint(-3, 4, s, generator=g).float().to(d) for s in ((5, 4), (37, 4)))
    bias = torch.zeros(37, device=d)
    t = torch.tensor([0, 5, 9, 36, 2], device=d)
    for bad in (t[:3], t.float()):
        with pytest.raises(ValueError, match=r"targets must be an int32 or int64 vector of 5"):
            R.rank_counts(h, W, bias, bad, max_elements=max_elements, backend=backend)
    # the oracle: int32 targets count as int64 ones do, as the scores' own comparison does
    got = R.rank_counts(h, W, bias, t.int(), max_elements=max_elements, backend=backend)
    want = R.rank_counts_from_scores(h.double() @ W.double().T, t)
    assert [g.tolist() for g in got] == [w.tolist() for w in want]


def _scoring_case(seed):
    """h (3, 4), an item table (9, 4) and its bias (9,), on the kernels' device."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g).to(_device()) for s in ((3, 4), (9, 4), (9,)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_loss_refusals(backend):
    d = _device()
    h, W, bias = _scoring_case(1)
    Y = torch.tensor([1, 2, 3, 7, 8], device=d)
    with pytest.raises(ValueError, match="cross-entropy with logq > 0 needs logq_per_column"):
        S.fused_sampled_loss(h, W, bias, Y, "cross-entropy", logq=1.0, backend=backend)
    with pytest.raises(ValueError, match=r"logq_per_column must have shape \(5,\)"):
        S.fused_sampled_loss(h, W, bias, Y, "cross-entropy", logq=1.0,
                             logq_per_column=torch.zeros(3, device=d), backend=backend)
    with pytest.raises(ValueError, match=r"Y must be an int32 or int64 vector \(got torch.float"):
        S.fused_sampled_loss(h, W, bias, Y.float(), "top1", backend=backend)
    with pytest.raises(ValueError, match="bias_index must be an int32 or int64 vector of 5"):
        S.fused_sampled_loss(h, W, bias, Y, "bpr-max", bias_index=Y[:1], backend=backend)
    with pytest.raises(ValueError, match="scores have 2 columns for 3 lanes"):
        S.fused_sampled_loss(h, W, bias, Y[:2], "top1", backend=backend)
    for loss in ("bpr-max", "top1-max"):   # one lane, no samples: no negative to weight
        with pytest.raises(ValueError, match=f"{loss} needs a negative column"):
            S.fused_sampled_loss(h[:1], W, bias, Y[:1], loss, backend=backend)
    for loss in ("cross-entropy", "bpr", "top1"):  # defined on one column: by hand
        value = S.fused_sampled_loss(h[:1], W, bias, Y[:1], loss, backend=backend)
        want = {"cross-entropy": 0.0,                # softmax over one column: p = 1
                "bpr": 0.6931471805599453,           # -log σ(0)
                "top1": 0.5}[loss]                   # σ(0) + σ(r²), its own σ(r²) removed
        assert float(value) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_catalog_cross_entropy_targets_and_output_buffers(backend):
    d = _device()
    h, W, bias = _scoring_case(2)
    t = torch.tensor([0, 4, 8], device=d)
    with pytest.raises(ValueError, match="targets must be an int32 or int64 vector of 3"):
        S.full_catalog_cross_entropy_and_grads(h, W, bias, t[:2], backend=backend)
    with pytest.raises(ValueError, match="d_weight_out and d_bias_out go together"):
        S.full_catalog_cross_entropy_and_grads(h, W, bias, t, backend=backend,
                                               d_weight_out=torch.zeros(9, 4, device=d))
    # both buffers: the gradients are added into them, as documented
    loss, dh, dW, db = S.full_catalog_cross_entropy_and_grads(
        h, W, bias, t, d_weight_out=torch.ones(9, 4, device=d),
        d_bias_out=torch.full((9,), 2.0, device=d), backend=backend)
    ref_loss, _, ref_dW, ref_db = S.full_catalog_cross_entropy_and_grads(
        h.double(), W.double(), bias.double(), t, backend="torch")
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    torch.testing.assert_close(dW.double(), ref_dW + 1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(db.double(), ref_db + 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["rank_counts", "topk_scores", "full_ce", "full_ce_and_grads",
                                "sampled_loss", "sampled_loss_and_grads"])
def test_score_ops_refuse_a_bias_or_table_of_another_shape(backend, op):
    # a short bias broadcast on plain torch into wrong scores (full cross-entropy 14.19 for
    # 17.06); an h of another width failed deep in a matmul, naming no argument
    d = _device()
    h, W, bias = _scoring_case(4)
    t, Y = torch.tensor([0, 4, 8], device=d), torch.tensor([0, 4, 8, 2], device=d)
    call = {
        "rank_counts": lambda h, W, b: R.rank_counts(h, W, b, t, backend=backend),
        "topk_scores": lambda h, W, b: R.topk_scores(h, W, b, 3, backend=backend),
        "full_ce": lambda h, W, b: S.full_catalog_cross_entropy(h, W, b, t, backend=backend),
        "full_ce_and_grads": lambda h, W, b: S.full_catalog_cross_entropy_and_grads(
            h, W, b, t, backend=backend),
        "sampled_loss": lambda h, W, b: S.fused_sampled_loss(h, W, b, Y, "top1",
                                                             backend=backend),
        "sampled_loss_and_grads": lambda h, W, b: S.fused_sampled_loss_and_grads(
            h, W, b, Y, "top1", backend=backend),
    }[op]
    with pytest.raises(ValueError, match=r"h \(b, H\) and item_weight \(N, H\) must agree on H"):
        call(h[:, :3], W, bias)
    with pytest.raises(ValueError, match=r"item_bias must be a vector"):
        call(h, W, bias.view(9, 1))
    if op.startswith("sampled"):   # its bias is indexed by column: any vector covering Y
        return
    for bad in (bias[:1], torch.cat([bias, bias[:1]])):
        with pytest.raises(ValueError, match=rf"item_bias must be a vector of shape \(9,\) "
                                             rf"\(got shape \({bad.shape[0]},\)\)"):
            call(h, W, bad)


@pytest.mark.skipif(_triton_problem() is not None, reason=str(_triton_problem()))
def test_full_catalog_kernels_refuse_hidden_sizes_past_1024():
    # their (rows, H padded) tiles outgrow a GPU's shared memory past 1024 (the launch would
    # fail on the device); the torch path takes any H
    d = _device()
    h, W, t = torch.randn(2, 1025, device=d), torch.randn(5, 1025, device=d), torch.tensor([0, 3])
    with pytest.raises(ValueError, match="hidden sizes up to 1024 .got 1025."):
        S.full_catalog_cross_entropy_and_grads(h, W, torch.zeros(5, device=d), t.to(d),
                                               backend="triton")
    S.full_catalog_cross_entropy_and_grads(h, W, torch.zeros(5, device=d), t.to(d),
                                           backend="torch")


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_row_updates_refuse_a_gradient_of_other_rows_and_take_int32_ids(backend):
    if backend == "native":
        from fastgru4rec import native
        if not native.available():
            pytest.skip(f"native extension unavailable: {native.load_error()}")
    table, acc, vel = torch.randn(6, 3), torch.zeros(6, 3), torch.zeros(6, 3)
    rows = torch.tensor([1, 4])
    table_before = table.clone()
    with pytest.raises(ValueError, match=r"adagrad_momentum_rows: grad must have one row per "
                                         r"row id, shape \(2, 3\) \(got \(1, 3\)\)"):
        O.adagrad_momentum_rows(table, rows, torch.ones(1, 3), acc, vel, 0.1, 0.5,
                                backend=backend)
    with pytest.raises(ValueError, match=r"adagrad_momentum_scatter: grad must have one row"):
        O.adagrad_momentum_scatter(table, rows, torch.ones(1, 3), acc, vel, 0.1, 0.5,
                                   backend=backend)
    assert torch.equal(table, table_before) and not acc.any()   # nothing was written
    # int32 ids: the update of int64 ids; by hand: acc = g², v = -lr·g/sqrt(g² + 1e-6)
    g = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]], dtype=torch.float64)
    t64 = table.double()
    before = t64.clone()
    O.adagrad_momentum_rows(t64, rows.int(), g, torch.zeros(6, 3, dtype=torch.float64),
                            torch.zeros(6, 3, dtype=torch.float64), 0.1, 0.5, backend=backend)
    want = before.clone()
    want[rows] -= 0.1 * g / torch.sqrt(g * g + 1e-6)
    torch.testing.assert_close(t64, want, rtol=0, atol=1e-15)


def test_model_checks_its_arguments():
    with pytest.raises(ValueError, match="layers must hold at least one hidden size"):
        GRU4RecModel(10, layers=())
    with pytest.raises(ValueError, match="1 variants for 2 layers"):
        GRU4RecModel(10, layers=(4, 4), variants=["cell"])
    # sizes are integers (int() truncated 4.7 units to 4)
    for bad in (4.7, "4", True):
        with pytest.raises(TypeError, match=f"GRU4RecModel: layers must be an integer, got "
                                            f"{bad!r}"):
            GRU4RecModel(10, layers=(bad,))
    assert GRU4RecModel(10, layers=(np.int64(6),), embedding_mode="separate",
                        embedding_dim=np.int32(3)).embedding.shape == (10, 3)
    net = GRU4RecModel(10, layers=(6,))
    idx, hidden = torch.tensor([1, 2]), net.init_hidden(2)
    for p, name in ((1.0, "dropout_hidden"), (-0.5, "dropout_hidden"), (1.5, "dropout_embed")):
        with pytest.raises(ValueError, match=f"step: {name} must be in"):
            net.step(net.item_weight[idx], hidden, **{name: p})
    with pytest.raises(ValueError, match=r"input_rows must be \(b, 6\) rows of item_weight"):
        net.step(torch.zeros(2, 5), hidden)
    with pytest.raises(ValueError, match=r"score: h_last must be \(b, 6\)"):
        net.score(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="encode: items and lengths must be integer"):
        net.encode(torch.zeros(2, 3, dtype=torch.long), torch.tensor([2.5, 1.0]))
    net64 = GRU4RecModel(10, layers=(6,)).to(torch.float64)
    with pytest.raises(ValueError, match=r"hidden\[0\] is torch.float32, the model's parameters "
                                         r"torch.float64"):
        net64(idx, hidden)
    h_last, _ = net64(idx)                                   # init_hidden follows the dtype
    assert h_last.dtype == torch.float64


def test_a_kernel_module_failing_to_import_is_that_failure(tmp_path, monkeypatch):
    """load_kernels falls back to the source checkout's top-level ``kernels`` package only when
    fastgru4rec.kernels is missing; an ImportError raised inside a kernel module (a broken
    triton) reaches the caller as it is, not as "No module named 'kernels'"."""
    import sys

    import fastgru4rec.kernels as package
    broken = tmp_path / "broken_kernel_module.py"
    broken.write_text("raise ImportError('triton is broken here')\n")
    monkeypatch.setattr(package, "__path__", [str(tmp_path), *package.__path__])
    monkeypatch.delitem(sys.modules, "fastgru4rec.kernels.broken_kernel_module", raising=False)
    with pytest.raises(ImportError, match="triton is broken here"):
        load_kernels("broken_kernel_module")
    with pytest.raises(ModuleNotFoundError, match="No module named 'kernels.no_such_module'"):
        load_kernels("no_such_module")     # missing everywhere: the fallback's own error


def test_launch_grid_helpers_equal_tritons():
    # kernels/launch.py's plain-Python cdiv / next_pow2 replace Triton's constexpr functions
    # (~2 µs a call) at every launch site: the same numbers, edges included
    triton = pytest.importorskip("triton")
    launch = load_kernels("launch")
    for n in list(range(0, 4100)) + [2 ** 20 - 1, 2 ** 20, 2 ** 20 + 1, 2 ** 31 + 5]:
        assert launch.next_pow2(n) == triton.next_power_of_2(n), n
    for a in list(range(0, 600)) + [2 ** 31 + 7]:
        for b in (1, 2, 3, 16, 31, 64, 128, 1000):
            assert launch.cdiv(a, b) == triton.cdiv(a, b), (a, b)
