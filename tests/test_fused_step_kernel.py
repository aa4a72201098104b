"""The fused training step's kernels (ops.train_step.shared_step_grads, backend "triton":
explicit backward, no autograd) against its autograd form over the plain-torch references
(backend "torch"): loss, new hidden state, every GRU parameter gradient, the per-occurrence
item-table and bias gradients; 1 and 2 layers, both GRU variants, the sampled losses, dropout,
restarting lanes, repeated ids. fp32 with ieee dots, relative error under 1e-5. Then the whole
engine with the fused step: triton vs torch form after a few steps.

Runs on a GPU, or on CPU in Triton's interpreter (TRITON_INTERPRET=1 set at process start; the
suite's conftest does when there is no CUDA).
"""
import numpy as np
import pytest
import torch

from conftest import kernel_test_setup

K, DEV = kernel_test_setup("gru_step")

from fastgru4rec.config import GRU4RecConfig  # noqa: E402
from fastgru4rec.engine import FastTrainer  # noqa: E402
from fastgru4rec.nn import GRU4RecModel  # noqa: E402
from fastgru4rec.ops.scoring import logq_column_correction  # noqa: E402
from fastgru4rec.ops.train_step import shared_step_grads  # noqa: E402
from fastgru4rec.synthetic import synthetic_split  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # interpreter exp overflow


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


CASES = [  # (layers, variant, loss, logq, dropout embed/hidden, b, n_sample)
    ((24,), "cell", "cross-entropy", 1.0, (0.0, 0.3), 7, 21),
    ((16, 20), "cell", "bpr-max", 0.0, (0.25, 0.2), 5, 12),
    ((20,), "original", "top1-max", 0.0, (0.0, 0.0), 9, 30),
    ((16,), "cell", "bpr", 0.0, (0.1, 0.0), 4, 0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}-{c[2]}-{len(c[0])}layers")
def test_fused_step_kernels_equal_autograd_form(case):
    layers, variant, loss, logq, (p_emb, p_hid), b, n_sample = case
    N = 50
    model = GRU4RecModel(N, layers, "shared", variants=[variant] * len(layers), seed=3).to(DEV)
    g = torch.Generator().manual_seed(len(layers) * 7 + b)
    with torch.no_grad():   # non-zero biases: every bias gradient path is exercised
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(DEV))
    inp = torch.randint(0, N, (b,), generator=g).to(DEV)
    inp[1] = inp[0]                                              # a repeated input
    tgt = torch.randint(0, N, (b,), generator=g).to(DEV)
    tgt[2] = inp[0]                                              # target = another lane's input
    neg = torch.randint(0, N, (n_sample,), generator=g).to(DEV)
    Y = torch.cat([tgt, neg])
    hidden = [torch.randn(b, H, generator=g).to(DEV) for H in layers]
    reset = torch.zeros(b, dtype=torch.bool, device=DEV)
    reset[b - 1] = True
    seed = torch.tensor([12345], dtype=torch.int64, device=DEV)
    supports = torch.randint(1, 30, (N,), generator=g).double().log().float().to(DEV)
    lq = logq_column_correction(supports.index_select(0, Y), b, 0.5) if logq > 0 else None
    kw = dict(loss=loss, batch_size=b + 3, dropout_embed=p_emb, dropout_hidden=p_hid,
              logq_per_column=lq, logq=logq, bpreg=0.7, elu_param=0.5, precision="ieee")
    args = (model.item_weight, model.item_bias, model.gru, inp, Y, hidden, reset, seed)
    want = shared_step_grads(*args, backend="torch", **kw)
    got = shared_step_grads(*args, backend="triton", **kw)
    assert rel(got.loss, want.loss) < 1e-5
    for a, w in zip(got.new_hidden, want.new_hidden):
        assert rel(a, w) < 1e-5
    assert len(got.dense) == len(want.dense)
    for i, (a, w) in enumerate(zip(got.dense, want.dense)):
        assert a.shape == w.shape and rel(a, w) < 1e-5, i
    assert torch.equal(got.item_ids, want.item_ids) and torch.equal(got.bias_ids, want.bias_ids)
    assert rel(got.item_grads, want.item_grads) < 1e-5
    assert rel(got.bias_grads, want.bias_grads) < 1e-5
    if p_hid > 0:   # dropout really dropped something, identically in both
        assert (want.new_hidden[-1] == 0).any()
        assert torch.equal(got.new_hidden[-1] == 0, want.new_hidden[-1] == 0)


@pytest.mark.parametrize("graph_path", [False, True])
def test_engine_fused_step_triton_equals_torch_form(graph_path):
    """A few full-width steps of the engine with the fused step: kernels (step and optimizer:
    the item table and its bias in one launch, the dense list) vs the torch form; also through
    the CUDA-graph code path run eagerly (the step's ids and int64 restart flags as views of
    one chunk row)."""
    train, _ = synthetic_split(n_items=120, n_sessions=300, seed=3)
    cfg = GRU4RecConfig(layers=(16,), batch_size=8, n_sample=12, learning_rate=0.05,
                        momentum=0.2, dropout_p_hidden=0.2, logq=1.0, sample_store_size=12 * 40)
    dev = torch.device(DEV)
    models = []
    for backend in ("torch", "triton"):
        model = GRU4RecModel(train.n_items, cfg.layers, "shared", seed=cfg.seed).to(dev)
        trainer = FastTrainer(model, cfg, train.supports, dev, step="fused",
                              step_backend=backend, optimizer_backend=backend,
                              precision="ieee", cuda_graph=False)
        trainer.fixed_shapes = True
        trainer.use_graph = graph_path and backend == "triton"   # graph code path, eagerly
        trainer.chunk_steps, trainer.warmup_steps = 4, 10 ** 9
        stats = trainer.train_epoch(train, progress=False, max_steps=6)
        assert np.isfinite(stats.loss)
        models.append(model)
    for a, b in zip(*[m.parameters() for m in models]):
        assert rel(a, b) < 1e-4


def test_fused_step_item_ids_view_and_bf16_table():
    """The engine's forms: inp and Y as views of one [inp; Y] tensor passed as item_ids (no
    concatenation) give the same step; a bf16 item table's row gradients land in the fp32
    item_grads buffer too (copied, not written by the kernel)."""
    N, b, n_sample, H = 40, 6, 10, 16
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(0, N, (2 * b + n_sample,), generator=g).to(DEV)
    inp, Y = ids[:b], ids[b:]
    kw = dict(loss="cross-entropy", batch_size=b, dropout_embed=0.0, dropout_hidden=0.2,
              precision="ieee")
    seed = torch.tensor([99], dtype=torch.int64, device=DEV)
    reset = torch.zeros(b, dtype=torch.bool, device=DEV)
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = GRU4RecModel(N, (H,), "shared", seed=4).to(DEV)
        W = model.item_weight.detach().to(dtype)
        hidden = [torch.randn(b, H, generator=g).to(DEV)]
        args = (W, model.item_bias, model.gru, inp, Y, hidden, reset, seed)
        outs[dtype] = shared_step_grads(*args, backend="triton", item_ids=ids, **kw)
        if dtype == torch.float32:
            plain = shared_step_grads(*args, backend="triton", **kw)
            assert torch.equal(outs[dtype].item_ids, ids)
            assert torch.equal(outs[dtype].item_grads, plain.item_grads)
            assert torch.equal(outs[dtype].loss, plain.loss)
        # the torch form in fp32 over the same (bf16-exact) table values
        want = shared_step_grads(W.float(), *args[1:], backend="torch", item_ids=ids, **kw)
        got = outs[dtype]
        assert got.item_grads.dtype == torch.float32 and got.item_grads.shape == (2 * b + n_sample, H)
        assert rel(got.item_grads[b:], want.item_grads[b:]) < 1e-5, dtype
        # the input rows' gradients went through the table's dtype (bf16: 8 bits of mantissa)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert rel(got.item_grads[:b], want.item_grads[:b]) < tol, dtype
