"""Checkpoints and resumed training: GRU4Rec.fit(checkpoint=...), GRU4Rec.resume, train
--checkpoint / --resume, and the state they carry (SampleStore.state_dict,
Trainer.state_dict).

The oracle is the uninterrupted run itself: a training stopped after an epoch and resumed from
its checkpoint must end with the same parameters, bit for bit, as one that never stopped (same
process, one thread: the same arithmetic in the same order). Dropout, momentum, a sample store
small enough to be redrawn many times an epoch and every optimizer table are in play, so a
checkpoint that dropped any of them (the dropout generator or seed, the store's place in its
stream, the accumulators or velocities) gives other parameters."""
import io
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastgru4rec import GRU4Rec, native
from fastgru4rec.errors import ConfigError, DataError
from fastgru4rec.sampling import SampleStore
from fastgru4rec.synthetic import synthetic_split
from fastgru4rec.train import Trainer

from conftest import assert_cli_error, data_to_rows, run_cli, subprocess_env, write_tsv

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# a store of 12 rows of 25 ids: redrawn every 12 steps, so its state matters at every epoch end
BASE = dict(layers=[24], batch_size=16, n_sample=25, sample_store_size=300, n_epochs=3,
            learning_rate=0.1, momentum=0.3, dropout_p_embed=0.1, dropout_p_hidden=0.3)

CASES = {
    # engine, extra parameters: the fused fast step (hashed dropout), the reference loop, the
    # fast engine's autograd step with a separate input table, in-batch negatives only
    "fast-shared-xe": ("fast", dict(constrained_embedding=True, loss="cross-entropy", logq=1.0)),
    "reference-shared-bprmax": ("reference", dict(constrained_embedding=True, loss="bpr-max",
                                                  bpreg=0.5)),
    "fast-separate-top1max": ("fast", dict(constrained_embedding=False, embedding=12,
                                           loss="top1-max")),
    # (one-hot: no embedding dropout, dropout_p_embed would only warn that it has no effect)
    "reference-onehot-insession": ("reference", dict(constrained_embedding=False, n_sample=0,
                                                     loss="cross-entropy", dropout_p_embed=0.0)),
}


class _Stop(Exception):
    pass


def _stop_after(epoch):
    def on_epoch(stats):
        if stats.epoch == epoch:
            raise _Stop   # a crash between epochs: the checkpoint of `epoch` is on disk
    return on_epoch


def _params_equal(a: GRU4Rec, b: GRU4Rec):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def data():
    return synthetic_split(n_items=120, n_sessions=400, seed=11)


# ---------------------------------------------------------------------------- the sample store
@pytest.mark.parametrize("backend", ["python", "native"])
@pytest.mark.parametrize("rows_before", [0, 3, 12, 29])   # fresh, mid-store, at a refill, later
def test_sample_store_state_continues_the_stream(backend, rows_before):
    if backend == "native" and not native.available():
        pytest.skip("the native extension is not built")
    supports = np.arange(1, 51)
    a = SampleStore(supports, 0.5, 7, store_size=12 * 7, seed=3, backend=backend)
    a.next_rows(rows_before) if rows_before else None
    state = a.state_dict()
    buf = io.BytesIO()       # what a checkpoint does with it: torch.save, weights_only load
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    expected = a.next_rows(40)                      # crosses several refills
    b = SampleStore(supports, 0.5, 7, store_size=12 * 7, seed=3, backend=backend)
    b.next_rows(5)                                  # its own place is overwritten
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.next_rows(40), expected)
    # and the rows a fresh store of the same seed draws at that place (independent of state)
    c = SampleStore(supports, 0.5, 7, store_size=12 * 7, seed=3, backend=backend)
    np.testing.assert_array_equal(c.next_rows(rows_before + 40)[rows_before:], expected)


def test_sample_store_state_of_another_store_is_refused():
    supports = np.arange(1, 51)
    a = SampleStore(supports, 0.5, 7, store_size=84, seed=3, backend="python")
    with pytest.raises(ConfigError, match="n_sample 7 does not match"):
        SampleStore(supports, 0.5, 6, store_size=72, seed=3,
                    backend="python").load_state_dict(a.state_dict())
    with pytest.raises(ConfigError, match="row 99"):
        a.load_state_dict({**a.state_dict(), "row": 99})


# ---------------------------------------------------------------------------- resumed == uninterrupted
@pytest.mark.parametrize("case", list(CASES))
def test_resumed_training_equals_uninterrupted(case, data, tmp_path):
    engine, extra = CASES[case]
    params = {**BASE, **extra}
    train, test = data
    full = GRU4Rec(**params).fit(train, progress=False, engine=engine)

    ck = tmp_path / "ck.pt"
    with pytest.raises(_Stop):
        GRU4Rec(**params).fit(train, progress=False, engine=engine, checkpoint=ck,
                              on_epoch=_stop_after(1))
    at_epoch_1 = GRU4Rec.load(ck)           # a checkpoint is a model file too
    resumed = GRU4Rec.resume(ck, train, progress=False)

    _params_equal(resumed, full)
    assert [h.loss for h in resumed.history] == [h.loss for h in full.history]
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.evaluate(test) == full.evaluate(test)
    # the checkpoint of epoch 1 held other parameters (the resumed run did train)
    assert not torch.equal(at_epoch_1.model.item_weight, resumed.model.item_weight)
    # resume kept writing the checkpoint: it now holds the end of training
    _params_equal(GRU4Rec.load(ck), full)
    assert torch.load(ck, weights_only=True)["training"]["epochs_done"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", ["fast-shared-xe", "fast-separate-top1max"])
def test_resumed_training_on_cuda_equals_uninterrupted(case, data, tmp_path):
    """On a GPU the fast engine replays CUDA graphs: the fused step's dropout seed is a device
    counter, the autograd step's generator is registered with the graph. A resumed run must
    land where an uninterrupted one does: bit for bit when two uninterrupted runs agree bit for
    bit, else within 10x their own difference (atomics may sum in any order)."""
    engine, extra = CASES[case]
    params = {**BASE, **extra, "device": "cuda"}
    train, _ = data
    full = GRU4Rec(**params).fit(train, progress=False, engine=engine)
    again = GRU4Rec(**params).fit(train, progress=False, engine=engine)
    ck = tmp_path / "ck.pt"
    with pytest.raises(_Stop):
        GRU4Rec(**params).fit(train, progress=False, engine=engine, checkpoint=ck,
                              on_epoch=_stop_after(1))
    resumed = GRU4Rec.resume(ck, train, device="cuda", progress=False)
    for name, p_full in full.model.state_dict().items():
        noise = (again.model.state_dict()[name] - p_full).abs().max().item()
        diff = (resumed.model.state_dict()[name] - p_full).abs().max().item()
        assert diff <= 10 * noise, (name, diff, noise)
    with pytest.raises(ConfigError, match="made on cuda, resumed on cpu"):
        GRU4Rec.resume(ck, train, device="cpu", progress=False)


def test_resume_extends_training_and_resumes_twice(data, tmp_path):
    """n_epochs=2 with a checkpoint, then resume(n_epochs=3): a 3-epoch fit (n_epochs is not
    in the arithmetic); resuming a finished checkpoint trains nothing."""
    train, _ = data
    params = {**BASE, **CASES["fast-shared-xe"][1]}
    full = GRU4Rec(**params).fit(train, progress=False)
    ck = tmp_path / "ck.pt"
    GRU4Rec(**{**params, "n_epochs": 2}).fit(train, progress=False, checkpoint=ck)
    seen = []
    resumed = GRU4Rec.resume(ck, train, n_epochs=3, progress=False,
                             on_epoch=lambda s: seen.append(s.epoch))
    assert seen == [3] and resumed.config.n_epochs == 3
    _params_equal(resumed, full)
    again = GRU4Rec.resume(ck, train, progress=False, save_checkpoint=False)
    assert len(again.history) == 3
    _params_equal(again, full)
    with pytest.raises(ConfigError, match="n_epochs=2 is fewer than the 3 epochs"):
        GRU4Rec.resume(ck, train, n_epochs=2, progress=False)


def test_resume_with_the_python_sampler(data, tmp_path, monkeypatch):
    """A checkpoint made without the C++ extension (numpy's sampler) continues numpy's stream
    when resumed where the extension loads, and the reverse is refused when it does not."""
    if not native.available():
        pytest.skip("the native extension is not built")
    train, _ = data
    params = {**BASE, **CASES["reference-shared-bprmax"][1]}
    make_store = Trainer._sample_store
    with monkeypatch.context() as m:
        # only the sampler as without the extension (the C++ row update stays: its rounding
        # differs from torch's in the last bit)
        m.setattr(Trainer, "_sample_store", lambda self, backend="auto": make_store(
            self, "python" if backend == "auto" else backend))
        full = GRU4Rec(**params).fit(train, progress=False, engine="reference")
        ck = tmp_path / "ck.pt"
        with pytest.raises(_Stop):
            GRU4Rec(**params).fit(train, progress=False, engine="reference", checkpoint=ck,
                                  on_epoch=_stop_after(2))
    assert torch.load(ck, weights_only=True)["training"]["trainer"]["sampler"]["backend"] \
        == "python"
    _params_equal(GRU4Rec.resume(ck, train, progress=False, save_checkpoint=False), full)

    native_ck = tmp_path / "native.pt"
    GRU4Rec(**{**params, "n_epochs": 1}).fit(train, progress=False, checkpoint=native_ck)

    def unavailable(*a, **k):
        raise RuntimeError("the native extension is unavailable: test")
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "AliasSampler", unavailable)
    with pytest.raises(ConfigError, match="C\\+\\+ sampler, which is unavailable"):
        GRU4Rec.resume(native_ck, train, n_epochs=2, progress=False)


# ---------------------------------------------------------------------------- refusals
def test_resume_refusals(data, small_ck, tmp_path):
    train, test = data
    ck, model_file = small_ck
    with pytest.raises(DataError, match="not the data .* was trained on"):
        GRU4Rec.resume(ck, test, progress=False)
    with pytest.raises(DataError, match="without training state"):
        GRU4Rec.resume(model_file, train, progress=False)
    with pytest.raises(ConfigError, match="trained by the 'fast' engine"):
        GRU4Rec.resume(ck, train, engine="reference", progress=False)
    with pytest.raises(ConfigError, match="n_epochs"):
        GRU4Rec.resume(ck, train, n_epochs="two", progress=False)
    with pytest.raises(DataError, match="model file not found"):
        GRU4Rec.resume(tmp_path / "missing.pt", train, progress=False)
    # a tampered training state: one line naming the file
    payload = torch.load(ck, weights_only=True)
    del payload["training"]["trainer"]["optimizer"]["item_bias"]
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(ConfigError, match="bad.pt: optimizer state for"):
        GRU4Rec.resume(bad, train, n_epochs=2, progress=False)
    payload = torch.load(ck, weights_only=True)     # a velocity dropped (momentum > 0)
    payload["training"]["trainer"]["optimizer"]["item_weight"] = \
        payload["training"]["trainer"]["optimizer"]["item_weight"][:1]
    torch.save(payload, bad)
    with pytest.raises(ConfigError, match="item_weight: 1 tensors, expected 2"):
        GRU4Rec.resume(bad, train, n_epochs=2, progress=False)
    for key, value in (("epochs_done", None), ("history", 3), ("trainer", {"trainer": "X"}),
                       ("epochs_done", -5), ("epochs_done", True), ("epochs_done", 2),
                       ("history", [])):
        payload = torch.load(ck, weights_only=True)
        payload["training"][key] = value
        torch.save(payload, bad)
        with pytest.raises(DataError, match="bad.pt: inconsistent training state"):
            GRU4Rec.resume(bad, train, n_epochs=2, progress=False)


def test_unwritable_checkpoint_is_refused_before_training(data, tmp_path):
    train, _ = data
    calls = []
    with pytest.raises(OSError, match="is a directory"):
        GRU4Rec(**BASE).fit(train, progress=False, checkpoint=tmp_path,
                            on_epoch=calls.append)
    assert calls == []


@pytest.fixture
def small_ck(data, tmp_path):
    """(a 1-epoch checkpoint of the fast engine, a model file saved by save())."""
    train, _ = data
    params = {**BASE, **CASES["fast-shared-xe"][1], "n_epochs": 1}
    ck, model_file = tmp_path / "ck.pt", tmp_path / "model.pt"
    GRU4Rec(**params).fit(train, progress=False, checkpoint=ck).save(model_file)
    return ck, model_file


# ---------------------------------------------------------------------------- the command line
def test_cli_checkpoint_and_resume(data, tmp_path, capsys):
    train, test = data
    train_tsv = write_tsv(tmp_path / "train.tsv", data_to_rows(train))
    test_tsv = write_tsv(tmp_path / "test.tsv", data_to_rows(test))
    ps = ("layers=24,batch_size=16,n_sample=25,sample_store_size=300,n_epochs=2,"
          "dropout_p_hidden=0.3,momentum=0.3,learning_rate=0.1")
    full, ck, resumed = tmp_path / "full.pt", tmp_path / "ck.pt", tmp_path / "resumed.pt"
    assert run_cli(capsys, "train", train_tsv, "-ps", ps, "-s", full, "-q")[0] == 0
    ps1 = ps.replace("n_epochs=2", "n_epochs=1")
    assert run_cli(capsys, "train", train_tsv, "-ps", ps1, "--checkpoint", ck, "-q")[0] == 0
    rc, out, err = run_cli(capsys, "train", train_tsv, "--resume", ck, "-ps", "n_epochs=2",
                           "-t", test_tsv, "-s", resumed, "--json")
    assert rc == 0, err
    _params_equal(GRU4Rec.load(resumed), GRU4Rec.load(full))
    assert torch.load(ck, weights_only=True)["training"]["epochs_done"] == 2

    assert_cli_error(run_cli(capsys, "train", train_tsv, "--resume", ck, "-ps", "loss=bpr-max"),
                     "train", "only n_epochs may be given", "loss")
    # a new run onto an existing checkpoint would replace it at its first epoch: refused
    before = ck.read_bytes()
    assert_cli_error(run_cli(capsys, "train", train_tsv, "-ps", ps1, "--checkpoint", ck),
                     "train", f"--checkpoint {ck}: exists", "with --resume and this path")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--resume", ck, "--checkpoint", full,
                             "-q"), "train", f"--checkpoint {full}: exists")
    assert ck.read_bytes() == before
    assert_cli_error(run_cli(capsys, "train", test_tsv, "--resume", ck, "-q"),
                     "train", "not the data", "was trained on")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--resume", full, "-q"),
                     "train", "without training state")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--resume", tmp_path / "nope.pt"),
                     "train", "no such checkpoint file")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--resume", ""), "train",
                     "--resume: the path is empty")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--resume", tmp_path), "train",
                     "is a directory, not a checkpoint file")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--resume", "/dev/null"), "train",
                     "not a regular file")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "-ps", ps1, "--checkpoint", ck,
                             "-s", ck), "train", "name the same file")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "-ps", ps1, "--checkpoint", tmp_path),
                     "train", "is a directory")
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--resume", ck, "-s", ck), "train",
                     "is an input of this command")


def test_cli_save_model_never_replaces_a_checkpoint(data, tmp_path, capsys):
    # -s onto another run's checkpoint would leave a model without training state there: that
    # run could no longer be resumed. A plain model file is replaced as before.
    from fastgru4rec.estimator import is_checkpoint

    train, _ = data
    train_tsv = write_tsv(tmp_path / "train.tsv", data_to_rows(train))
    ps = "layers=8,batch_size=16,n_sample=5,n_epochs=1"
    ck, model = tmp_path / "ck.pt", tmp_path / "model.pt"
    assert run_cli(capsys, "train", train_tsv, "-ps", ps, "--checkpoint", ck, "-q")[0] == 0
    assert run_cli(capsys, "train", train_tsv, "-ps", ps, "-s", model, "-q")[0] == 0
    assert is_checkpoint(ck) and not is_checkpoint(model)
    assert not is_checkpoint(train_tsv) and not is_checkpoint(tmp_path / "none.pt")
    assert not is_checkpoint(tmp_path)
    before = ck.read_bytes()
    assert_cli_error(run_cli(capsys, "train", train_tsv, "-ps", ps, "-s", ck, "-q"),
                     "train", f"-s/--save-model {ck}: is a checkpoint", "another path")
    assert ck.read_bytes() == before
    old_model = model.read_bytes()
    assert run_cli(capsys, "train", train_tsv, "-ps", ps.replace("layers=8", "layers=6"),
                   "-s", model, "-q")[0] == 0
    assert model.read_bytes() != old_model
    assert GRU4Rec.load(model).config.layers == (6,)


def test_max_steps_trial_run(data, tmp_path, capsys, monkeypatch):
    from fastgru4rec import cli

    train, test = data
    train_tsv = write_tsv(tmp_path / "train.tsv", data_to_rows(train))
    test_tsv = write_tsv(tmp_path / "test.tsv", data_to_rows(test))
    ps = "layers=8,batch_size=16,n_sample=5,n_epochs=3"
    rc, out, err = run_cli(capsys, "train", train_tsv, "-ps", ps, "--max-steps", "7",
                           "-t", test_tsv, "-m", "5")
    assert rc == 0, err
    assert "trial run: stopped after 7 steps (--max-steps 7), 1 of 3 epochs begun" in err
    assert "reading" not in err      # a small file: no notice before reading it
    assert "Recall" in out   # the cut model is still evaluated
    import json
    monkeypatch.setattr(cli, "READ_NOTICE_BYTES", 10)
    rc, out, err = run_cli(capsys, "train", train_tsv, "-ps", ps, "--max-steps", "7", "-q")
    assert rc == 0 and err == ""
    rc, out, err = run_cli(capsys, "train", train_tsv, "-ps", ps, "--max-steps", "7")
    assert rc == 0 and err.startswith(f"reading {train_tsv} (0 MB) ...\n"), err
    rc, out, err = run_cli(capsys, "train", train_tsv, "-ps", ps, "--max-steps", "7", "--json")
    assert rc == 0, err
    assert [e["epoch"] for e in json.loads(out)["epochs"]] == [1]
    ck = tmp_path / "ck.pt"
    for extra, option in ((["--checkpoint", ck], "--checkpoint"),
                          (["--resume", ck], "--resume")):
        assert_cli_error(run_cli(capsys, "train", train_tsv, "--max-steps", "3", *extra),
                         "train", f"does not go with {option}")
    assert not ck.exists()
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--max-steps", "0"), "train",
                     "--max-steps must be positive")
    with pytest.raises(ConfigError, match="max_steps .* and checkpoint"):
        GRU4Rec(**dict(BASE, n_epochs=1)).fit(train, progress=False, max_steps=3,
                                              checkpoint=ck)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        GRU4Rec(**dict(BASE, n_epochs=1)).fit(train, progress=False, max_steps=0)
    est = GRU4Rec(**BASE).fit(train, progress=False, max_steps=4)
    assert [(s.epoch, s.n_steps) for s in est.history] == [(1, 4)]
    assert not ck.exists()


@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")])
def test_cli_interrupt_names_the_checkpoint(data, tmp_path, signum, status, word):
    """Ctrl-C (SIGINT), or SIGTERM (kill, a job scheduler), during training with --checkpoint:
    exit 130 / 143 and a one-line hint to resume; the checkpoint on disk is a whole file of
    the last finished epoch, and no temporary file is left beside it."""
    train, _ = data
    train_tsv = write_tsv(tmp_path / "train.tsv", data_to_rows(train))
    ck = tmp_path / "ck.pt"
    ps = "layers=24,batch_size=16,n_sample=25,sample_store_size=300,n_epochs=100000"
    p = subprocess.Popen([sys.executable, "-m", "fastgru4rec", "train", str(train_tsv), "-ps", ps,
                          "--checkpoint", str(ck), "-q", "--threads", "1"],
                         env=subprocess_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ck.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ck.exists(), "no checkpoint written"
        p.send_signal(signum)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == status, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"fastgru4rec train: {word} (continue from "
                                            f"the last checkpoint with --resume {ck})")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ck.pt", "train.tsv"]
    done = torch.load(ck, weights_only=True)["training"]["epochs_done"]
    resumed = GRU4Rec.resume(ck, train, n_epochs=done + 1, progress=False,
                             save_checkpoint=False)
    assert [h.epoch for h in resumed.history] == list(range(1, done + 2))


# ---------------------------------------------------------------------------- validation per epoch
def test_an_interrupt_during_validation_keeps_the_trained_epoch(data, tmp_path, monkeypatch):
    # Ctrl-C while epoch 2 is being validated: epoch 2 is trained, so the checkpoint holds it
    # (without its metrics); resuming then gives the uninterrupted run's parameters
    train, test = data
    params = {**BASE, **CASES["fast-shared-xe"][1]}
    whole = GRU4Rec(**params).fit(train, progress=False)
    est, ck = GRU4Rec(**params), tmp_path / "ck.pt"
    evaluate = est.evaluate

    def evaluate_until_epoch_2(*args, **kw):
        if len(est.history) == 1:
            raise KeyboardInterrupt
        return evaluate(*args, **kw)

    monkeypatch.setattr(est, "evaluate", evaluate_until_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        est.fit(train, progress=False, checkpoint=ck, validation=test)
    training = torch.load(ck, weights_only=True)["training"]
    assert training["epochs_done"] == 2
    assert [h["metrics"] is not None for h in training["history"]] == [True, False]
    _params_equal(GRU4Rec.resume(ck, train, progress=False, save_checkpoint=False), whole)


def test_validation_metrics_per_epoch_through_fit_resume_and_cli(data, tmp_path, capsys,
                                                                  monkeypatch):
    """fit(validation=...) puts evaluate()'s result after each epoch into stats.metrics without
    changing the training; a checkpoint keeps them and resume adds the new epochs'; the CLI's
    --eval-every-epoch reports them in --json."""
    train, test = data
    params = {**BASE, **CASES["fast-shared-xe"][1]}
    seen = []
    watched = GRU4Rec(**params)
    watched.fit(train, progress=False, on_epoch=lambda s: seen.append(watched.evaluate(
        test, cutoffs=[5, 20], mode="standard")))
    ck = tmp_path / "ck.pt"
    with pytest.raises(_Stop):
        GRU4Rec(**params).fit(train, progress=False, checkpoint=ck, on_epoch=_stop_after(2),
                              validation=test, validation_kw=dict(cutoffs=[5, 20],
                                                                  mode="standard"))
    resumed = GRU4Rec.resume(ck, train, progress=False, validation=test,
                             validation_kw=dict(cutoffs=[5, 20], mode="standard"))
    _params_equal(resumed, watched)
    assert [h.metrics for h in resumed.history] == seen
    assert [sorted(h.metrics["recall"]) for h in resumed.history] == [[5, 20]] * 3
    # resumed without validation: the earlier epochs keep theirs, the new one has none
    again = GRU4Rec.resume(ck, train, n_epochs=4, progress=False, save_checkpoint=False)
    assert [h.metrics is not None for h in again.history] == [True, True, True, False]

    calls = []
    with pytest.raises(ValueError, match="unknown option"):
        GRU4Rec(**params).fit(train, progress=False, validation=test,
                              validation_kw=dict(cutof=[5]))
    for bad, message in ((dict(cutoffs=[0]), "cut-offs must be positive"),
                         (dict(mode="best"), "unknown evaluation mode"),
                         (dict(batch_size=0), "validation_kw batch_size must be an integer"),
                         (dict(batch_size=2.5), "validation_kw batch_size must be an integer"),
                         (dict(cutoffs=[5.5]), "cut-offs must be positive integers"),
                         (dict(cutoffs=[True]), "cut-offs must be positive integers")):
        with pytest.raises(ValueError, match=message):
            GRU4Rec(**params).fit(train, progress=False, validation=test, validation_kw=bad,
                                  on_epoch=calls.append)
    with pytest.raises(ValueError, match="without validation data"):
        GRU4Rec(**params).fit(train, progress=False, validation_kw=dict(cutoffs=[5]))
    assert calls == []
    unknown = write_tsv(tmp_path / "unknown.tsv", [("a", "nope", 1), ("a", "nope2", 2)])
    with pytest.raises(DataError, match="unknown.tsv"):
        GRU4Rec(**params).fit(train, progress=False, on_epoch=calls.append,
                              validation=unknown)
    assert calls == []

    train_tsv = write_tsv(tmp_path / "train.tsv", data_to_rows(train))
    test_tsv = write_tsv(tmp_path / "test.tsv", data_to_rows(test))
    evaluations = []
    real_evaluate = GRU4Rec.evaluate

    def counted(self, *a, **kw):
        evaluations.append(self)
        return real_evaluate(self, *a, **kw)

    monkeypatch.setattr(GRU4Rec, "evaluate", counted)
    model_path = tmp_path / "every.pt"
    rc, out, err = run_cli(capsys, "train", train_tsv, "-t", test_tsv, "--eval-every-epoch",
                           "-ps", "layers=16,n_epochs=2,n_sample=8,batch_size=16", "-m", "3",
                           "10", "--json", "-s", model_path)
    assert rc == 0, err
    import json
    res = json.loads(out)
    assert [sorted(e["metrics"]["mrr"]) for e in res["epochs"]] == [["10", "3"]] * 2
    assert res["epochs"][-1]["metrics"]["recall"] == res["results"][str(test_tsv)]["recall"]
    # the final results are the last epoch's evaluation, not a second run of it: two
    # evaluations in all, and they are what evaluating the saved model gives
    assert len(evaluations) == 2
    again = real_evaluate(GRU4Rec.load(model_path), test_tsv, [3, 10])
    assert {str(k): v for k, v in again["recall"].items()} == \
        res["results"][str(test_tsv)]["recall"]
    assert_cli_error(run_cli(capsys, "train", train_tsv, "--eval-every-epoch"), "train",
                     "--eval-every-epoch evaluates the first -t/--test file")


def test_refusals_found_by_the_second_review(data, small_ck, tmp_path, capsys, monkeypatch):
    train, test = data
    ck, _ = small_ck
    # a refused fit leaves the earlier fit as it was
    model = GRU4Rec.load(ck)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    model.history = ["kept"]
    for bad in (dict(validation=test, validation_kw=dict(cutoffs=[0])),
                dict(validation=tmp_path / "missing.tsv"), dict(validation_kw=dict(mode="x"))):
        with pytest.raises((ValueError, OSError)):
            model.fit(train, progress=False, **bad)
        assert model.history == ["kept"]
        assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    # tampered history entries and trainer names: one-line errors, before any training
    bad = tmp_path / "bad.pt"
    for where, value in (("metrics", "x"), ("metrics", {"recall": {20: torch.tensor(0.1)},
                                                        "mrr": {20: 0.1}, "n_events": 3}),
                         ("loss", float("nan")), ("epoch", 7), ("seconds", "1")):
        payload = torch.load(ck, weights_only=True)
        payload["training"]["history"][0][where] = value
        torch.save(payload, bad)
        with pytest.raises(DataError, match="bad.pt: inconsistent training state .*history"):
            GRU4Rec.resume(bad, train, n_epochs=2, progress=False)
    payload = torch.load(ck, weights_only=True)
    payload["training"]["trainer"]["trainer"] = ["x"]
    torch.save(payload, bad)
    with pytest.raises(DataError, match="inconsistent training state"):
        GRU4Rec.resume(bad, train, n_epochs=2, progress=False)

    # Ctrl-C: the hint names this run's checkpoint or the resumed one, never a stale file
    train_tsv = write_tsv(tmp_path / "train.tsv", data_to_rows(train))
    stale = tmp_path / "stale.pt"
    stale.write_bytes(ck.read_bytes())
    import os
    os.utime(stale, (0, 0))

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(GRU4Rec, "fit", interrupted)
    # (a new run onto an existing file is refused since: it would replace it)
    assert_cli_error(run_cli(capsys, "train", train_tsv, "-ps", "layers=8", "--checkpoint",
                             stale), "train", f"--checkpoint {stale}: exists")
    fresh = tmp_path / "fresh.pt"   # interrupted before its first checkpoint: no hint
    rc, _, err = run_cli(capsys, "train", train_tsv, "-ps", "layers=8", "--checkpoint", fresh)
    assert rc == 130 and err.strip().splitlines()[-1] == "fastgru4rec train: interrupted"
    monkeypatch.setattr(GRU4Rec, "resume", interrupted)
    rc, _, err = run_cli(capsys, "train", train_tsv, "--resume", ck, "--checkpoint", fresh)
    assert rc == 130 and err.strip().splitlines()[-1] == (
        f"fastgru4rec train: interrupted (continue from the last checkpoint with --resume {ck})")


# ---------------------------------------------------------------------------- the third review
def test_checkpoint_never_overwrites_the_validation_file_and_resume_knows_its_data(
        data, small_ck, tmp_path):
    train, test = data
    ck, _ = small_ck
    test_tsv = write_tsv(tmp_path / "test.tsv", data_to_rows(test))
    before = test_tsv.read_bytes()
    params = {**BASE, "n_epochs": 1}
    with pytest.raises(OSError, match="is an input of this command"):
        GRU4Rec(**params).fit(train, progress=False, validation=test_tsv, checkpoint=test_tsv)
    with pytest.raises(OSError, match="is an input of this command"):
        GRU4Rec.resume(ck, train, n_epochs=2, progress=False, validation=test_tsv,
                       save_checkpoint=test_tsv)
    assert test_tsv.read_bytes() == before

    # the same number of events over the same item map, other sessions: refused by the
    # fingerprint of what training reads (the count and map checks alone let it through)
    from fastgru4rec.data import SessionData
    order = np.arange(train.n_sessions)[::-1]                  # the sessions reversed
    lengths = train.session_lengths[order]
    starts = train.offsets[:-1][order]
    events = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    reordered = SessionData(np.concatenate([[0], np.cumsum(lengths)]), train.items[events],
                            train.times[events], train.session_ids[order], train.item_ids,
                            train.supports)
    assert reordered.n_events == train.n_events and reordered.item_ids is train.item_ids
    with pytest.raises(DataError, match="other sessions or other items in them"):
        GRU4Rec.resume(ck, reordered, n_epochs=2, progress=False, save_checkpoint=False)
    # the same sessions, lengths and item counts, two items of one session swapped
    lo = int(train.offsets[np.flatnonzero(
        (train.session_lengths >= 2)
        & (train.items[train.offsets[:-1]] != train.items[np.minimum(train.offsets[:-1] + 1,
                                                                      train.n_events - 1)]))[0]])
    items = train.items.copy()
    items[[lo, lo + 1]] = items[[lo + 1, lo]]
    assert items[lo] != train.items[lo] and np.array_equal(np.sort(items), np.sort(train.items))
    swapped = SessionData(train.offsets, items, train.times, train.session_ids, train.item_ids,
                          train.supports)
    with pytest.raises(DataError, match="other sessions or other items in them"):
        GRU4Rec.resume(ck, swapped, n_epochs=2, progress=False, save_checkpoint=False)
    # a checkpoint written before the fingerprint existed resumes on the count and map checks
    payload = torch.load(ck, weights_only=True)
    assert len(payload["training"].pop("data_fingerprint")) == 32
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    resumed = GRU4Rec.resume(old, train, n_epochs=2, progress=False, save_checkpoint=False)
    assert [h.epoch for h in resumed.history] == [1, 2]


def test_fit_checks_its_callback_and_keywords_before_training(data):
    train, _ = data
    with pytest.raises(TypeError, match="on_epoch must be a function"):
        GRU4Rec(**BASE).fit(train, progress=False, on_epoch=5)
    with pytest.raises(TypeError, match=r"fit\(\) got unexpected keyword argument\(s\) \['foo'\]"):
        GRU4Rec(**BASE).fit(train, progress=False, foo=1)


def test_load_state_dict_release_drops_the_saved_optimizer_tensors_once_copied(data):
    """resume passes release=True: the checkpoint's copy of each optimizer tensor goes once
    copied (400K items x H 128 with momentum: peak RSS of a resume 1.72 -> 1.52 GB), and the
    trainer holds the same values either way."""
    train, _ = data
    est = GRU4Rec(**BASE)
    cfg, supports = est.config, np.bincount(train.items, minlength=train.n_items)
    a = Trainer(est.build_model(train.n_items), cfg, supports, torch.device("cpu"))
    for acc, vel in a.opt.state.values():          # a trainer some steps in
        acc.uniform_(0, 1)
        vel.normal_()
    for release in (False, True):
        state = a.state_dict()
        b = Trainer(est.build_model(train.n_items), cfg, supports, torch.device("cpu"))
        b.load_state_dict(state, release=release)
        for name, (acc, vel) in a.opt.state.items():
            assert torch.equal(b.opt.state[name][0], acc) and torch.equal(b.opt.state[name][1], vel)
        left = [v is None for v in state["optimizer"].values()]
        assert all(left) if release else not any(left)
