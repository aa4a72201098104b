"""Training without sampling (n_sample = "all"): cross-entropy over every item, dense updates of
the item table and bias, sparse updates of the input rows; against a float64 dense autograd
step written from REFERENCE §3-4, end to end through the estimator, and the fast engine's
fixed-shape step against the reference loop."""
import copy

import numpy as np
import pytest
import torch

from fastgru4rec import GRU4Rec
from fastgru4rec.cli import main
from fastgru4rec.config import GRU4RecConfig
from fastgru4rec.engine import FastTrainer
from fastgru4rec.errors import ConfigError
from fastgru4rec.nn import GRU4RecModel
from fastgru4rec.synthetic import synthetic_split
from fastgru4rec.train import Trainer

from conftest import one_torch_thread

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def _dense_full_catalog_step(model, cfg, inp, tgt, hidden):
    """float64, no dropout: loss = Σ_i -log(softmax(h_i·Wᵀ + b)[t_i] + 1e-24) / B by plain
    autograd; first Adagrad-momentum step (v = -lr·g/sqrt(g² + 1e-6)) on every parameter, only
    the touched rows of a separate / one-hot input table."""
    model = copy.deepcopy(model)
    table = getattr(model, model.input_table_name)
    h_last, _ = model.step(table[inp], hidden)
    R = h_last @ model.item_weight.t() + model.item_bias
    p = torch.exp(R - R.logsumexp(dim=1, keepdim=True))
    loss = -torch.log(p[torch.arange(len(tgt)), tgt] + 1e-24).sum() / cfg.batch_size
    loss.backward()
    sparse = {"embedding", "input_table"}
    with torch.no_grad():
        for name, prm in model.named_parameters():
            step = -cfg.learning_rate * prm.grad / torch.sqrt(prm.grad ** 2 + 1e-6)
            if name in sparse:
                rows = torch.unique(inp)
                prm[rows] += step[rows]
            else:
                prm += step
    return model, loss.item()


@pytest.mark.parametrize("lanes", [5, 3])   # full width, and the shrinking tail (b < B = 5)
@pytest.mark.parametrize("step", ["reference", "fixed-shape"])
@pytest.mark.parametrize("mode", ["shared", "separate", "onehot"])
def test_full_catalog_step_equals_dense_autograd(mode, step, lanes):
    N = 30
    cfg = GRU4RecConfig(layers=(6,), loss="cross-entropy", batch_size=5, n_sample="all",
                        learning_rate=0.1, momentum=0.3, embedding=7 if mode == "separate" else 0,
                        constrained_embedding=(mode == "shared"))
    model = GRU4RecModel(N, cfg.layers, mode, 7, seed=4).double()
    inp, tgt = torch.tensor([3, 3, 8, 0, 29]), torch.tensor([1, 3, 3, 9, 0])   # repeats
    inp, tgt = inp[:lanes], tgt[:lanes]      # the loss stays divided by B, not b
    hidden = [torch.randn(lanes, 6, dtype=torch.float64)]
    ref_model, ref_loss = _dense_full_catalog_step(model, cfg, inp, tgt, hidden)
    supports = np.arange(1, N + 1)
    if step == "reference":
        trainer = Trainer(model, cfg, supports, CPU)
        assert trainer.sampler is None
        loss, new_hidden = trainer.train_step(inp, tgt, hidden)
    else:
        trainer = FastTrainer(model, cfg, supports, CPU)
        loss, new_hidden = trainer.fixed_step(inp, tgt,
                                              torch.ones(lanes, 1, dtype=torch.float64),
                                              None, hidden)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    assert new_hidden[0].shape == (lanes, 6)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), name
    assert not torch.equal(model.item_weight, GRU4RecModel(N, cfg.layers, mode, 7,
                                                           seed=4).double().item_weight)


@pytest.mark.parametrize("mode", ["shared", "separate", "onehot"])
def test_full_catalog_step_through_the_kernels_equals_dense_autograd(mode):
    """The Triton path of the step (fp32, in the interpreter on the CPU): the loss and dh
    kernels, the GRU's backward, then the item table's update made tile by tile inside the dW
    kernel with the shared embedding's input rows added (repeats in inp), no N × H gradient."""
    import os
    pytest.importorskip("triton")
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 set at process start")
    dev = torch.device("cuda" if os.environ.get("TRITON_INTERPRET") != "1" else "cpu")
    N = 150
    cfg = GRU4RecConfig(layers=(12,), loss="cross-entropy", batch_size=6, n_sample="all",
                        learning_rate=0.1, momentum=0.3, embedding=7 if mode == "separate" else 0,
                        constrained_embedding=(mode == "shared"))
    model64 = GRU4RecModel(N, cfg.layers, mode, 7, seed=4).double()
    inp, tgt = torch.tensor([3, 3, 8, 0, 149, 3]), torch.tensor([1, 3, 3, 9, 0, 140])
    hidden = [torch.randn(6, 12, dtype=torch.float64)]
    ref_model, ref_loss = _dense_full_catalog_step(model64, cfg, inp, tgt, hidden)
    model = copy.deepcopy(model64).float().to(dev)
    trainer = Trainer(model, cfg, np.arange(1, N + 1), dev)
    trainer.catalog_backend, trainer.precision = "triton", "ieee"
    loss, _ = trainer.train_step(inp.to(dev), tgt.to(dev), [h.float().to(dev) for h in hidden])
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    for (name, p), (_, q), (_, p0) in zip(model.named_parameters(), ref_model.named_parameters(),
                                          model64.named_parameters()):
        moved = (q - p0).norm()
        assert moved > 0, name
        assert ((p.double().cpu() - q).norm() / moved).item() < 1e-4, name


def test_full_catalog_config():
    cfg = GRU4RecConfig.from_dict({"n_sample": "ALL", "logq": "0"})
    assert cfg.n_sample == "all" and cfg.full_catalog and cfg.n_extra_samples == 0
    assert GRU4RecConfig.from_dict(cfg.to_dict()).n_sample == "all"
    assert not GRU4RecConfig(n_sample=0).full_catalog
    with pytest.raises(ConfigError, match="logq.*n_sample=all"):
        GRU4RecConfig(n_sample="all", logq=1.0)
    with pytest.raises(ConfigError, match="cross-entropy only"):
        GRU4RecConfig(n_sample="all", loss="bpr-max")
    with pytest.raises(ConfigError, match="n_sample"):
        GRU4RecConfig.from_dict({"n_sample": "most"})
    with pytest.raises(ConfigError, match='"all"'):
        GRU4RecConfig(n_sample="most")


def test_full_catalog_fit_learns_and_engines_agree(tmp_path):
    train, test = synthetic_split(n_items=200, n_sessions=1500, seed=7)
    params = dict(layers=[24], batch_size=32, n_sample="all", logq=0.0, n_epochs=2,
                  learning_rate=0.1, momentum=0.1, dropout_p_hidden=0.1)
    fast = GRU4Rec(**params).fit(train, progress=False, engine="fast")
    ref = GRU4Rec(**params).fit(train, progress=False, engine="reference")
    h = ref.history
    assert h[1].loss < h[0].loss and np.isfinite(h[1].loss)
    res = ref.evaluate(test, cutoffs=[20])
    assert res["recall"][20] > 3 * 20 / train.n_items
    for a, b in zip(fast.model.parameters(), ref.model.parameters()):
        assert torch.equal(a, b)
    # the GPU engine's fixed-shape path, here on the CPU, over a whole epoch
    cfg = GRU4RecConfig.from_dict({**params, "n_epochs": 1})
    models = []
    for fixed in (False, True):
        m = GRU4RecModel(train.n_items, cfg.layers, "shared", seed=cfg.seed)
        trainer = FastTrainer(m, cfg, train.supports, CPU)
        trainer.fixed_shapes = fixed
        trainer.train_epoch(train, progress=False)
        models.append(m)
    for a, b in zip(*[m.parameters() for m in models]):
        assert ((a - b).norm() / b.norm()).item() < 1e-4
    path = tmp_path / "m.pt"
    ref.save(path)
    assert GRU4Rec.load(path).config.n_sample == "all"


def test_full_catalog_cli(synthetic_tsv, capsys):
    tr, te = synthetic_tsv(n_items=40, n_sessions=120)
    assert main(["train", str(tr), "-t", str(te), "-ps",
                 "n_sample=all,logq=0,layers=8,n_epochs=1,batch_size=8", "--json"]) == 0
    assert '"n_sample": "all"' in capsys.readouterr().out
    assert main(["train", str(tr), "-ps", "n_sample=all,logq=1,layers=8", "-q"]) == 2
    err = capsys.readouterr().err
    assert "logq" in err and "\n" not in err.strip()
