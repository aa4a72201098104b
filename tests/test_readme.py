"""The README's Python examples run as written (docs that match the code): each ```python block
of the "Python API" section is executed, on small synthetic data written under the file names
the README uses, with only the sizes made small (epochs, samples) so that it runs in seconds."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgru4rec.synthetic import synthetic_split

from conftest import data_to_rows, one_torch_thread, write_tsv

ROOT = Path(__file__).resolve().parents[1]
# the item ids the README's recommend() example names: two synthetic items are renamed to them
README_ITEMS = ("214853848", "214853182")
# sizes only: every call, argument name and file name stays as the README writes it
SMALLER = {"n_epochs=10": "n_epochs=1", "n_sample=2048": "n_sample=32"}


def python_blocks(section: str):
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.fixture
def readme_data(tmp_path, monkeypatch):
    """train_full.tsv / test.tsv in the working directory, with the README's two item ids."""
    train, test = synthetic_split(n_items=40, n_sessions=300, seed=3)
    rename = {train.item_ids[0]: README_ITEMS[0], train.item_ids[1]: README_ITEMS[1]}
    for data, name in ((train, "train_full.tsv"), (test, "test.tsv")):
        rows = [(s, rename.get(i, i), t) for s, i, t in data_to_rows(data)]
        write_tsv(tmp_path / name, rows)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_api_examples_run_as_written(readme_data):
    blocks = python_blocks("Python API")
    assert len(blocks) == 3, "the README's Python API section changed: update this test"
    estimator_code, checkpoint_code, module_code = blocks

    code = estimator_code
    for big, small in SMALLER.items():
        assert big in code, f"README example no longer has {big!r}"
        code = code.replace(big, small)
    scope: dict = {}
    with one_torch_thread():
        exec(compile(code, "README.md: Python API (estimator)", "exec"), scope)
    model = scope["model"]                       # the reloaded model of the last line
    res = scope["res"]
    assert set(res["recall"]) == {1, 5, 10, 20} and 0.0 <= res["mrr"][20] <= res["recall"][20] <= 1
    assert (readme_data / "rsc15.pt").is_file()
    recs = model.recommend(list(README_ITEMS), k=10)
    assert len(recs) == 10 and len(set(map(str, recs))) == 10

    # the checkpoint example continues from the estimator example's scope (its `model`)
    assert "n_epochs=15" in checkpoint_code
    code = checkpoint_code.replace("n_epochs=15", "n_epochs=2")
    with one_torch_thread():
        exec(compile(code, "README.md: Python API (checkpoints)", "exec"), scope)
    assert [s.epoch for s in scope["model"].history] == [1, 2]
    assert torch.load(readme_data / "rsc15.ckpt", weights_only=True)["training"]["epochs_done"] == 2

    # the nn.Module example: its free names (N, batch, item_idx) given as the README implies
    N, batch = 50, 4
    scope = {"N": N, "batch": batch, "item_idx": torch.tensor([0, 7, 49, 3])}
    exec(compile(module_code, "README.md: Python API (module)", "exec"), scope)
    assert [tuple(h.shape) for h in scope["hidden"]] == [(batch, 100)]
    assert tuple(scope["h_last"].shape) == (batch, 100)
    assert tuple(scope["scores"].shape) == (batch, N)
    # the comment's claim: score(h_last, item_idx=Y) scores the chosen items only
    Y = torch.tensor([3, 3, 10])
    chosen = scope["net"].score(scope["h_last"], item_idx=Y)
    np.testing.assert_allclose(chosen.detach().numpy(), scope["scores"][:, Y].detach().numpy(),
                               rtol=1e-5, atol=1e-6)
