"""Recommendations for many sessions at once: GRU4RecModel.encode (sequences of different
lengths in one batch), GRU4Rec.recommend_sessions and ``recommend --sessions``.

Oracles: each sequence stepped alone from a zero state in float64 plain torch (for encode), and
recommend() called on each session alone (for recommend_sessions: no padding, no batching)."""
import copy
import csv

import numpy as np
import pytest
import torch

from fastgru4rec import GRU4Rec
from fastgru4rec.nn import GRU4RecModel
from fastgru4rec.synthetic import synthetic_split

from conftest import assert_cli_error, data_to_rows, run_cli, sessions_to_rows, write_tsv

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FAST = dict(batch_size=16, n_sample=20, n_epochs=1, learning_rate=0.1)
MODES = {"shared": dict(layers=[24]),
         "separate-2-layers": dict(layers=[24, 16], constrained_embedding=False, embedding=8),
         "onehot": dict(layers=[16], constrained_embedding=False, embedding=0)}


@pytest.fixture(scope="module")
def data():
    return synthetic_split(n_items=200, n_sessions=1500, seed=7)


@pytest.fixture(scope="module")
def fitted(data):
    train, _ = data
    return {mode: GRU4Rec(**FAST, **p).fit(train, progress=False) for mode, p in MODES.items()}


@pytest.mark.parametrize("mode", ["shared", "separate", "onehot"])
def test_encode_equals_each_sequence_stepped_alone(mode):
    torch.manual_seed(0)
    model = GRU4RecModel(30, layers=(12, 7), embedding_mode=mode,
                         embedding_dim=5 if mode == "separate" else 0).double()
    with torch.no_grad():   # nonzero biases: a padded step that leaked into the state would show
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    lengths = [3, 1, 6, 2, 6]
    seqs = [torch.randint(0, 30, (n,)) for n in lengths]
    L = max(lengths)
    items = torch.randint(0, 30, (len(seqs), L))          # padding: arbitrary valid ids
    for i, s in enumerate(seqs):
        items[i, L - len(s):] = s
    got = model.encode(items, torch.tensor(lengths))
    for i, s in enumerate(seqs):
        hidden = model.init_hidden(1)
        for item in s:
            h_last, hidden = model(item.view(1), hidden)
        torch.testing.assert_close(got[i], h_last[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="lengths must be in 1..6"):
        model.encode(items, torch.tensor([3, 0, 6, 2, 6]))
    with pytest.raises(ValueError, match="lengths must be in 1..6"):
        model.encode(items, torch.tensor([3, 7, 6, 2, 6]))


def _assert_valid_top_k(items, scores64, k, excluded, tol=1e-4):
    """items (k,) item indices are a top-k of scores64 (N,) float64, less ``excluded``, up to
    ``tol``: best first, none left out scoring above the last one (near-ties may come in either
    order: batched and single products round differently)."""
    assert len(items) == k and len(set(items)) == k and not set(items) & excluded
    got = scores64[items]
    assert np.all(np.diff(got) <= tol)
    rest = np.setdiff1d(np.arange(len(scores64)), list(items) + list(excluded))
    assert rest.size == 0 or scores64[rest].max() <= got[-1] + tol


@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("mode", list(MODES))
def test_recommend_sessions_equals_recommend_one_by_one(fitted, data, mode, exclude_seen):
    """Against a float64 oracle (each session stepped alone in float64, every item scored):
    both recommend_sessions' rows and recommend()'s lists are valid top-10s, and they agree
    but for near-ties."""
    model = fitted[mode]
    _, test = data
    res = model.recommend_sessions(test, k=10, exclude_seen=exclude_seen, batch_size=7)
    assert res["items"].shape == (test.n_sessions, 10) == res["scores"].shape
    assert list(res["session_id"]) == [str(s) for s in test.session_ids]
    assert res["n_unknown_events"] == test.n_unknown_events
    net64 = copy.deepcopy(model.model).double()
    index = model._item_map().item_index()
    n_same = 0
    for s in range(test.n_sessions):
        known = test.items[test.offsets[s]:test.offsets[s + 1]]
        with torch.no_grad():
            hidden = net64.init_hidden(1)
            for item in known:
                h64, hidden = net64(torch.tensor([int(item)]), hidden)
            scores64 = net64.score(h64)[0].numpy()
        excluded = set(known.tolist()) if exclude_seen else set()
        batched = [index[i] for i in res["items"][s]]
        single = [index[i] for i in model.recommend([str(test.item_ids[i]) for i in known],
                                                    k=10, exclude_seen=exclude_seen)]
        _assert_valid_top_k(batched, scores64, 10, excluded)
        _assert_valid_top_k(single, scores64, 10, excluded)
        np.testing.assert_allclose(res["scores"][s], scores64[batched], rtol=1e-5, atol=1e-5)
        n_same += batched == single
    assert n_same >= 0.9 * test.n_sessions     # equal lists but for rare near-tie swaps
    assert np.all(np.diff(res["scores"], axis=1) <= 0)


@pytest.mark.parametrize("mode", ["shared", "onehot"])
def test_recommendations_from_item_tiles_equal_one_tile(fitted, data, mode, monkeypatch):
    # the top-k over item tiles (each tile's candidates, then a merge; a big catalog's path),
    # forced here with tiles of 13 items on a 200-item catalog: the same recommendations as
    # one tile, but for near-ties, for the batched and the single-session route
    from fastgru4rec.ops import ranking
    model = fitted[mode]
    _, test = data
    whole = model.recommend_sessions(test, k=10, exclude_seen=True, batch_size=7)
    one = model.recommend([str(i) for i in test.item_ids[test.items[:3]]], k=10)
    calls = []
    orig = ranking.topk_scores_dense

    def tiled(h, w, b, k, max_elements=1 << 24):
        calls.append(h.shape[0])
        return orig(h, w, b, k, max_elements=13)

    monkeypatch.setattr(ranking, "topk_scores_dense", tiled)
    tiles = model.recommend_sessions(test, k=10, exclude_seen=True, batch_size=7)
    assert calls, "the tiled top-k was not used"
    assert np.mean(np.all(tiles["items"] == whole["items"], axis=1)) >= 0.99
    np.testing.assert_allclose(tiles["scores"], whole["scores"], rtol=1e-6, atol=1e-6)
    assert model.recommend([str(i) for i in test.item_ids[test.items[:3]]], k=10) == one


def test_recommend_sessions_edges(fitted, tmp_path):
    """Unknown items dropped (a session of only unknown items left out); k above the catalog
    cut to it; exclude_seen on a catalog barely larger than a session ends rows in None."""
    model = fitted["shared"]
    ids = [str(i) for i in model.item_ids]
    path = write_tsv(tmp_path / "s.tsv", [("a", ids[0], 1), ("a", "nope", 2), ("b", "nope", 1),
                                          ("c", ids[5], 1), ("c", ids[5], 2), ("c", ids[7], 3)])
    res = model.recommend_sessions(path, k=3)
    assert list(res["session_id"]) == ["a", "c"] and res["n_unknown_events"] == 2
    assert list(res["items"][0]) == model.recommend([ids[0]], k=3)
    assert model.recommend_sessions(path, k=10_000)["items"].shape == (2, len(ids))

    tiny = GRU4Rec(**{**FAST, "n_sample": 0, "layers": [8]}).fit(
        synthetic_split(n_items=3, n_sessions=40, seed=1)[0], progress=False)
    t_ids = [str(i) for i in tiny.item_ids]
    res = tiny.recommend_sessions(write_tsv(tmp_path / "t.tsv", [("x", t_ids[0], 1),
                                                                   ("x", t_ids[1], 2)]),
                                  k=3, exclude_seen=True)
    assert list(res["items"][0]) == [t_ids[2], None, None]
    assert np.isnan(res["scores"][0, 1:]).all() and np.isfinite(res["scores"][0, 0])
    for k in (0, 1.5, True, None, "3"):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            model.recommend_sessions(path, k=k)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            model.recommend([ids[0]], k=k)
    assert len(model.recommend([ids[0]], k=np.int64(2))) == 2
    with pytest.raises(TypeError, match="a sequence of item ids, not one str"):
        model.recommend(ids[0])                 # its characters would be taken as items
    with pytest.raises(ValueError, match="batch_size must be an integer in"):
        model.recommend_sessions(path, batch_size=0)


def test_cli_recommend_sessions(fitted, data, tmp_path, capsys):
    model = fitted["shared"]
    _, test = data
    model_path, test_tsv = tmp_path / "m.pt", write_tsv(tmp_path / "test.tsv", data_to_rows(test))
    model.save(model_path)
    out_path = tmp_path / "recs.tsv"
    rc, out, err = run_cli(capsys, "recommend", model_path, "--sessions", test_tsv, "-k", "5",
                           "-o", out_path, "-q")
    assert rc == 0, err
    with open(out_path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["SessionId", "Rank", "ItemId", "Score"]
    res = model.recommend_sessions(test, k=5)
    expected = [[str(s), str(r + 1), item] for s, row in zip(res["session_id"], res["items"])
                for r, item in enumerate(row)]
    assert [r[:3] for r in rows[1:]] == expected
    np.testing.assert_allclose([float(r[3]) for r in rows[1:]], res["scores"].ravel(), rtol=1e-5)
    # Parquet: the same rows, typed
    import pyarrow.parquet as pq
    pq_path = tmp_path / "recs.parquet"
    assert run_cli(capsys, "recommend", model_path, "--sessions", test_tsv, "-k", "5", "-o",
                   pq_path, "-q")[0] == 0
    table = pq.read_table(pq_path)
    assert table.column_names == ["SessionId", "Rank", "ItemId", "Score"]
    assert [[r["SessionId"], str(r["Rank"]), r["ItemId"]] for r in table.to_pylist()] == expected
    np.testing.assert_array_equal(table.column("Score").to_numpy(), res["scores"].ravel())
    assert_cli_error(run_cli(capsys, "recommend", model_path, "--sessions", test_tsv, "-o",
                             pq_path, "--json"), "recommend", "--json and a Parquet")
    # stdout and JSON
    rc, out, _ = run_cli(capsys, "recommend", model_path, "--sessions", test_tsv, "-k", "2",
                         "--json")
    assert rc == 0
    import json
    assert json.loads(out) == {str(s): list(r[:2]) for s, r in zip(res["session_id"],
                                                                   res["items"])}

    # ids holding a tab, a line break or a quote are quoted as CSV readers expect
    odd_ids = ["a\tb", 'q"x', "line\nbreak", "car\rreturn"]
    n_all = len(model.item_ids)                  # every item recommended: each odd id written
    names = {str(i): name for i, name in zip(model.item_ids[:len(odd_ids)], odd_ids)}
    odd_model = copy.copy(model)
    odd_model.item_ids = np.array([names.get(str(i), str(i)) for i in model.item_ids],
                                  dtype=object)
    odd_model._train_map = None
    odd_path = tmp_path / "odd.pt"
    odd_model.save(odd_path)
    rows = [("s\t1", names.get(str(i), str(i)), t) for _, i, t in data_to_rows(test)[:40]]
    odd_tsv = tmp_path / "odd.parquet"
    import pyarrow as pa
    pq.write_table(pa.table({"SessionId": [r[0] for r in rows], "ItemId": [r[1] for r in rows],
                             "Time": [float(r[2]) for r in rows]}), odd_tsv)
    assert run_cli(capsys, "recommend", odd_path, "--sessions", odd_tsv, "-k", str(n_all), "-o",
                   out_path, "-q")[0] == 0
    import pandas as pd
    back = pd.read_csv(out_path, sep="\t", dtype=str, keep_default_na=False)
    want = GRU4Rec.load(odd_path).recommend_sessions(odd_tsv, k=n_all)
    assert list(back["ItemId"]) == [i for row in want["items"] for i in row]
    assert set(back["SessionId"]) == {"s\t1"} and set(odd_ids) <= set(back["ItemId"])
    # one session to stdout: one id a line, quoted the same way
    rc, out, err = run_cli(capsys, "recommend", odd_path, "-k", str(n_all), str(model.item_ids[5]))
    assert rc == 0, err
    want = GRU4Rec.load(odd_path).recommend([str(model.item_ids[5])], k=n_all)
    assert set(odd_ids) <= set(want)
    lines = out.splitlines(keepends=True)
    assert list(csv.reader(lines, delimiter="\t")) == [[i] for i in want]

    # item ids after options, as before --sessions existed, and between them
    ids = [str(i) for i in model.item_ids[:2]]
    want = model.recommend(ids, k=3, exclude_seen=True)
    for args in (["-k", "3", "--exclude-seen", *ids], [ids[0], "-k", "3", ids[1],
                                                       "--exclude-seen"]):
        rc, out, err = run_cli(capsys, "recommend", model_path, *args)
        assert rc == 0, err
        assert out.split() == want
    with pytest.raises(SystemExit) as exit_info:       # argparse's own usage error
        run_cli(capsys, "recommend", model_path, "-k", "3", ids[0], "--bogus")
    assert exit_info.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err

    assert_cli_error(run_cli(capsys, "recommend", model_path), "recommend",
                     "give the session's item ids, or --sessions FILE")
    assert_cli_error(run_cli(capsys, "recommend", model_path, "1", "--sessions", test_tsv),
                     "recommend", "not both")
    assert_cli_error(run_cli(capsys, "recommend", model_path, "1", "-o", out_path),
                     "recommend", "-o/--output goes with --sessions")
    assert_cli_error(run_cli(capsys, "recommend", model_path, "1", "--batch-size", "4"),
                     "recommend", "--batch-size goes with --sessions")
    for items in (["1"], []):      # an empty name is not "no --sessions"
        assert_cli_error(run_cli(capsys, "recommend", model_path, *items, "--sessions", ""),
                         "recommend", "--sessions needs the name of an events file")
    # `--` ends the options: the ids after it, even one that looks like an option
    rc, out, err = run_cli(capsys, "recommend", model_path, "-k", "3", "--exclude-seen", "--",
                           *ids)
    assert rc == 0 and out.split() == want, err
    assert_cli_error(run_cli(capsys, "recommend", model_path, "--sessions", test_tsv, "-o",
                             test_tsv), "recommend", "is an input of this command")
    assert_cli_error(run_cli(capsys, "recommend", model_path, "--sessions", test_tsv,
                             "--batch-size", "0"), "recommend",
                     "--batch-size must be an integer in")
    assert_cli_error(run_cli(capsys, "recommend", model_path, "--sessions",
                             tmp_path / "missing.tsv"), "recommend", "missing.tsv")


def test_cli_recommend_sessions_exclude_seen_leaves_short_rows_out(tmp_path, capsys):
    # a 3-item catalog and one test session holding 2 of them: with --exclude-seen and -k 3
    # only the third item is left to recommend, in every output format (the two slots the
    # exclusion emptied are not written: no "None" ids, no null entries)
    import json

    import pyarrow.parquet as pq

    sessions = {f"t{j}": [["a", "b", "c"][(j + o) % 3] for o in range(3)] for j in range(12)}
    train_tsv = write_tsv(tmp_path / "train.tsv", sessions_to_rows(sessions))
    model = GRU4Rec(layers=[4], batch_size=4, n_sample=2, n_epochs=1).fit(train_tsv,
                                                                          progress=False)
    model_path = tmp_path / "m.pt"
    model.save(model_path)
    test_tsv = write_tsv(tmp_path / "test.tsv", sessions_to_rows({"s1": ["c", "a"]}))
    run = ("recommend", model_path, "--sessions", test_tsv, "-k", "3", "--exclude-seen", "-q")
    assert run_cli(capsys, *run, "-o", tmp_path / "r.tsv")[0] == 0
    with open(tmp_path / "r.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert [r[:3] for r in rows] == [["SessionId", "Rank", "ItemId"], ["s1", "1", "b"]]
    assert run_cli(capsys, *run, "-o", tmp_path / "r.parquet")[0] == 0
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [(r["SessionId"], r["Rank"], r["ItemId"]) for r in table] == [("s1", 1, "b")]
    rc, out, err = run_cli(capsys, *run, "--json")
    assert rc == 0, err
    assert json.loads(out) == {"s1": ["b"]}
    rc, out, err = run_cli(capsys, *run[:-2])       # without --exclude-seen: all three
    assert rc == 0, err
    assert sorted(r.split("\t")[2] for r in out.splitlines()[1:]) == ["a", "b", "c"]


@pytest.mark.parametrize("mode", ["shared", "separate", "onehot"])
def test_uninitialised_model_has_the_same_tensors_and_loads(mode):
    """GRU4Rec.load builds with initialize=False (no random init of the item tables): the same
    names, shapes and dtypes, and after load_state_dict the same module."""
    kw = dict(layers=(6, 4), embedding_mode=mode, embedding_dim=3 if mode == "separate" else 0)
    ref, empty = GRU4RecModel(25, **kw), GRU4RecModel(25, **kw, initialize=False)
    assert {k: (v.shape, v.dtype) for k, v in ref.state_dict().items()} == \
        {k: (v.shape, v.dtype) for k, v in empty.state_dict().items()}
    empty.load_state_dict(ref.state_dict())
    h = torch.randn(2, 6)
    torch.testing.assert_close(empty(torch.tensor([1, 24]), [h, torch.zeros(2, 4)])[0],
                               ref(torch.tensor([1, 24]), [h, torch.zeros(2, 4)])[0],
                               rtol=0, atol=0)


def test_module_runs_on_one_torch_thread():
    # the single_torch_thread fixture (pytestmark) is in force: tiny models, 2-core CI
    assert torch.get_num_threads() == 1


def test_unknown_ids_warn_skip_or_raise(fitted):
    model = fitted["shared"]
    known = [str(model.item_ids[3])]
    want = model.recommend(known, k=4)
    with pytest.warns(UserWarning, match=r"1 of the session's 2 items unknown.*'nope'"):
        assert model.recommend(known + ["nope"], k=4) == want
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.recommend(["nope"] + known, k=4, unknown="skip") == want
    from fastgru4rec.errors import DataError
    with pytest.raises(DataError, match="unknown to the model: \\['nope'\\]"):
        model.recommend(known + ["nope"], k=4, unknown="raise")
    with pytest.raises(DataError, match="^none of the session's items"):
        model.recommend(["nope"], k=4)
    with pytest.raises(ValueError, match="unknown='ignore'"):
        model.recommend(known, k=4, unknown="ignore")
    assert model.recommend(iter(known + ["nope"]), k=4, unknown="skip") == want   # any iterable


def test_recommend_sessions_output_in_chunks_json_name_and_csv_refused(fitted, data, tmp_path,
                                                                      capsys, monkeypatch):
    import json

    from fastgru4rec import cli
    model = fitted["shared"]
    _, test = data
    model_path, test_tsv = tmp_path / "m.pt", write_tsv(tmp_path / "test.tsv", data_to_rows(test))
    model.save(model_path)
    res = model.recommend_sessions(test, k=3)
    want = {str(s): list(r) for s, r in zip(res["session_id"], res["items"])}
    # the generated JSON is json.dumps' own text; written in many small chunks it is whole
    text = "".join(cli._recommendation_text(res, as_json=True))
    assert text == json.dumps(want) + "\n"
    writes = []

    class Recorder:
        def write(self, s):
            writes.append(s)

    cli._write_in_chunks(Recorder(), cli._recommendation_text(res, as_json=False), chunk=100)
    assert len(writes) > 10 and max(map(len, writes)) < 200       # a session at a time
    rows = "".join(writes).splitlines()
    assert rows[0] == "SessionId\tRank\tItemId\tScore" and len(rows) == 1 + 3 * len(want)
    # a .json name writes JSON; .csv is refused (the rows are tab-separated)
    out = tmp_path / "recs.json"
    assert run_cli(capsys, "recommend", model_path, "--sessions", test_tsv, "-k", "3", "-o",
                   out, "-q")[0] == 0
    assert json.loads(out.read_text()) == want
    assert_cli_error(run_cli(capsys, "recommend", model_path, "--sessions", test_tsv, "-o",
                             tmp_path / "recs.csv"), "recommend", "not as .csv")
    assert not (tmp_path / "recs.csv").exists()


def test_recommend_to_a_closed_pipe_exits_141(fitted, data, tmp_path):
    """A reader that stops early (`| head -1`) is met at the next chunk: status 141, not 0
    with the output cut short unnoticed (one large write did that)."""
    import subprocess
    import sys

    from conftest import subprocess_env
    model = fitted["shared"]
    _, test = data
    model_path, test_tsv = tmp_path / "m.pt", write_tsv(tmp_path / "test.tsv", data_to_rows(test))
    model.save(model_path)
    cmd = [sys.executable, "-m", "fastgru4rec", "recommend", str(model_path), "--sessions",
           str(test_tsv), "-k", "150", "-q", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=subprocess_env())
    first = proc.stdout.readline()
    proc.stdout.close()                                   # the reader goes away
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert first.startswith(b"SessionId") and "Traceback" not in err


def test_model_files_truncated_or_for_a_missing_device(fitted, tmp_path):
    from fastgru4rec.errors import ConfigError, DataError
    model = fitted["shared"]
    path = tmp_path / "m.pt"
    model.save(path)
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cut.pt: .*truncated, corrupt or not a torch file "
                                        r"\(\w+: .+\)"):
        GRU4Rec.load(tmp_path / "cut.pt")
    for device, why in (("meta", "meta device holds no values"),
                        ("cuda:7" if torch.cuda.is_available() else "cuda", "CUDA")):
        with pytest.raises(ConfigError, match=why):
            GRU4Rec.load(path, device=device)
