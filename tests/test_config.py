"""Tests of fastgru4rec.config: defaults, validation, parameter strings and parameter files."""
import json

import numpy as np
import pytest

from fastgru4rec.config import (GRU4RecConfig, LOSSES, parse_param_string, read_param_file)
from fastgru4rec.errors import ConfigError


# ---------------------------------------------------------------------------- defaults
def test_defaults_are_the_authors():
    c = GRU4RecConfig()
    assert c.layers == (100,)
    assert c.loss == "cross-entropy"
    assert c.batch_size == 64
    assert c.dropout_p_embed == 0.0 and c.dropout_p_hidden == 0.0
    assert c.learning_rate == 0.05 and c.momentum == 0.0
    assert c.sample_alpha == 0.5 and c.n_sample == 2048
    assert c.embedding == 0 and c.constrained_embedding is True
    assert c.n_epochs == 10
    assert c.bpreg == 1.0 and c.elu_param == 0.5 and c.logq == 0.0
    assert c.gru_variant == "auto"
    assert c.sample_store_size == 10_000_000
    assert c.seed == 42
    assert c.embedding_mode == "shared"
    assert c.layer_variant(0) == "cell"


def test_to_dict_round_trips():
    c = GRU4RecConfig(layers=[32, 16], loss="bpr-max", embedding=8, constrained_embedding=False)
    d = c.to_dict()
    assert d["layers"] == [32, 16]
    json.dumps(d)  # plain JSON types
    assert GRU4RecConfig.from_dict(d) == c
    assert c.replace(loss="top1").loss == "top1"
    assert c.replace(loss="top1").layers == (32, 16)


@pytest.mark.parametrize("kw, mode, variant0", [
    (dict(), "shared", "cell"),
    (dict(constrained_embedding=False, embedding=16), "separate", "cell"),
    (dict(constrained_embedding=False, embedding=0), "onehot", "original"),
    (dict(constrained_embedding=False, embedding=0, gru_variant="cell"), "onehot", "cell"),
    (dict(gru_variant="original"), "shared", "original"),
])
def test_embedding_mode_and_variant(kw, mode, variant0):
    c = GRU4RecConfig(layers=[8, 8], **kw)
    assert c.embedding_mode == mode
    assert c.layer_variant(0) == variant0
    # only the one-hot FIRST layer defaults to the original variant
    assert c.layer_variant(1) == (kw.get("gru_variant") or "cell")


@pytest.mark.parametrize("kw, fragments", [
    (dict(), []),
    (dict(loss="cross-entropy", logq=1.0, dropout_p_embed=0.2), []),   # both take effect
    (dict(constrained_embedding=False, embedding=8, dropout_p_embed=0.2), []),
    (dict(loss="bpr-max", logq=1.0), ["logq=1 has no effect with loss=bpr-max"]),
    (dict(loss="top1", logq=0.5), ["logq=0.5 has no effect with loss=top1"]),
    (dict(constrained_embedding=False, embedding=0, dropout_p_embed=0.25),
     ["dropout_p_embed=0.25 has no effect with one-hot input"]),
])
def test_ineffective_parameters(kw, fragments):
    notes = GRU4RecConfig(**kw).ineffective_parameters()
    assert len(notes) == len(fragments)
    for note, fragment in zip(notes, fragments):
        assert note.startswith(fragment), note


def test_layers_forms():
    assert GRU4RecConfig(layers=64).layers == (64,)
    assert GRU4RecConfig(layers="100/50").layers == (100, 50)
    assert GRU4RecConfig(layers=[3, 2, 1]).layers == (3, 2, 1)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, name", [
    (dict(loss="bpr_max"), "loss"),
    (dict(loss="CrossEntropy"), "loss"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-3), "batch_size"),
    (dict(layers=[0]), "layers"),
    (dict(layers=[100, -1]), "layers"),
    (dict(layers=[]), "layers"),
    (dict(n_epochs=0), "n_epochs"),
    (dict(n_epochs=-1), "n_epochs"),
    (dict(n_sample=-1), "n_sample"),
    (dict(embedding=-5, constrained_embedding=False), "embedding"),
    (dict(dropout_p_hidden=1.0), "dropout_p_hidden"),
    (dict(dropout_p_embed=1.5), "dropout_p_embed"),
    (dict(dropout_p_hidden=-0.1), "dropout_p_hidden"),
    (dict(momentum=1.0), "momentum"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(learning_rate=float("inf")), "learning_rate"),
    (dict(sample_alpha=-0.5), "sample_alpha"),
    (dict(bpreg=float("nan")), "bpreg"),
    (dict(logq=-1.0), "logq"),
    (dict(gru_variant="lstm"), "gru_variant"),
    (dict(sample_store_size=0), "sample_store_size"),
    (dict(embedding=16, constrained_embedding=True), "embedding"),
    (dict(n_sample=0, batch_size=1), "batch_size"),     # a lone lane has no negatives
])
def test_invalid_values_raise_config_error_naming_the_parameter(kw, name):
    with pytest.raises(ConfigError) as ei:
        GRU4RecConfig(**kw)
    msg = str(ei.value)
    assert f"parameter {name}=" in msg
    assert "\n" not in msg
    # the same check through from_dict (what the CLI and the estimator use)
    with pytest.raises(ConfigError, match=name):
        GRU4RecConfig.from_dict(kw)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_unknown_loss_message_lists_the_losses():
    with pytest.raises(ConfigError) as ei:
        GRU4RecConfig(loss="hinge")
    for name in LOSSES:
        assert name in str(ei.value)
    assert "'hinge'" in str(ei.value)


def test_boundaries_that_are_valid():
    c = GRU4RecConfig(n_sample=0, dropout_p_hidden=0.0, dropout_p_embed=0.999, momentum=0.0,
                      batch_size=2, n_epochs=1, layers=[1], sample_alpha=0.0, elu_param=0.0)
    assert c.n_sample == 0 and c.batch_size == 2
    # one lane trains with extra samples (or every item scored), not with in-batch ones only
    assert GRU4RecConfig(n_sample=1, batch_size=1).batch_size == 1
    assert GRU4RecConfig(n_sample="all", batch_size=1).batch_size == 1


def test_replace_validates():
    with pytest.raises(ConfigError, match="batch_size"):
        GRU4RecConfig().replace(batch_size=0)


# ---------------------------------------------------------------------------- parameter strings
def test_parse_param_string_and_coercion():
    params = parse_param_string("loss=bpr-max,layers=100/100,constrained_embedding=False,n_sample=0")
    assert params == {"loss": "bpr-max", "layers": "100/100", "constrained_embedding": "False",
                      "n_sample": "0"}
    c = GRU4RecConfig.from_dict(params)
    assert c.loss == "bpr-max"
    assert c.layers == (100, 100)
    assert c.constrained_embedding is False
    assert c.n_sample == 0 and type(c.n_sample) is int
    assert c.embedding_mode == "onehot"


def test_param_string_types():
    c = GRU4RecConfig.from_dict(parse_param_string(
        " learning_rate=0.2 , momentum=0.1,batch_size=32,dropout_p_hidden=0.5,layers=7,"
        "constrained_embedding=true,elu_param=1,"))
    assert c.learning_rate == 0.2 and type(c.learning_rate) is float
    assert c.momentum == 0.1
    assert c.batch_size == 32 and type(c.batch_size) is int
    assert c.layers == (7,)
    assert c.constrained_embedding is True
    assert c.elu_param == 1.0 and type(c.elu_param) is float


def test_param_string_value_may_contain_equals():
    assert parse_param_string("loss=a=b") == {"loss": "a=b"}


def test_param_string_without_equals():
    with pytest.raises(ConfigError, match="'loss'"):
        parse_param_string("loss,layers=100")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError) as ei:
        GRU4RecConfig.from_dict(parse_param_string("loss=bpr-max,hidden_size=100"),
                                where="parameter string")
    assert "'hidden_size'" in str(ei.value)
    assert "parameter string" in str(ei.value)


@pytest.mark.parametrize("text, name", [
    ("batch_size=abc", "batch_size"),
    ("batch_size=1.5", "batch_size"),
    ("learning_rate=fast", "learning_rate"),
    ("constrained_embedding=maybe", "constrained_embedding"),
    ("layers=100/abc", "layers"),
    ("layers=", "layers"),
])
def test_uncoercible_values_are_named(text, name):
    with pytest.raises(ConfigError, match=f"parameter {name}="):
        GRU4RecConfig.from_dict(parse_param_string(text))


def test_param_string_out_of_range_after_coercion():
    with pytest.raises(ConfigError, match="batch_size"):
        GRU4RecConfig.from_dict(parse_param_string("batch_size=0"))
    with pytest.raises(ConfigError, match="learning_rate"):
        GRU4RecConfig.from_dict(parse_param_string("learning_rate=nan"))
    with pytest.raises(ConfigError, match="layers"):
        GRU4RecConfig.from_dict(parse_param_string("layers=100/0"))


# ---------------------------------------------------------------------------- parameter files
AUTHORS_FILE = """\
from collections import OrderedDict
gru4rec_params = OrderedDict([
('loss', 'bpr-max'),
('constrained_embedding', True),
('embedding', 0),
('elu_param', 0.5),
('layers', [224]),
('n_epochs', 10),
('batch_size', 80),
('dropout_p_embed', 0.5),
('dropout_p_hidden', 0.05),
('learning_rate', 0.05),
('momentum', 0.4),
('n_sample', 2048),
('sample_alpha', 0.4),
('bpreg', 1.95),
('logq', 0.0)
])
"""


def test_read_authors_python_param_file(tmp_path):
    p = tmp_path / "rsc15_bprmax.py"
    p.write_text(AUTHORS_FILE)
    params = read_param_file(p)
    assert params["loss"] == "bpr-max" and params["layers"] == [224]
    assert list(params)[:3] == ["loss", "constrained_embedding", "embedding"]  # order kept
    c = GRU4RecConfig.from_dict(params)
    assert c.layers == (224,) and c.batch_size == 80 and c.bpreg == 1.95
    assert c.dropout_p_embed == 0.5 and c.momentum == 0.4 and c.sample_alpha == 0.4


def test_read_python_param_file_forms(tmp_path):
    p = tmp_path / "a.py"
    p.write_text("import collections\n"
                 "gru4rec_params = collections.OrderedDict([('loss', 'top1')], layers=[8, 4])\n")
    assert read_param_file(p) == {"loss": "top1", "layers": [8, 4]}
    p.write_text("gru4rec_params = {'loss': 'bpr', 'n_sample': 0}\n")
    assert read_param_file(p) == {"loss": "bpr", "n_sample": 0}
    p.write_text("gru4rec_params = dict(loss='bpr', layers=(3,))\n")
    assert read_param_file(p) == {"loss": "bpr", "layers": (3,)}


def test_a_parameter_given_twice_overrides_in_a_string_and_is_an_error_in_a_file(tmp_path):
    # a string: the later value wins (the authors' run script; -ps "$BASE,n_epochs=5")
    assert parse_param_string("n_epochs=1,loss=top1,n_epochs=2") == {"n_epochs": "2",
                                                                    "loss": "top1"}
    for name, text in (("a.json", '{"loss": "top1", "layers": [4], "loss": "bpr"}'),
                       ("b.py", "gru4rec_params = OrderedDict([('loss', 'top1'), ('loss', 'bpr')])"),
                       ("c.py", "gru4rec_params = {'loss': 'top1', 'loss': 'bpr'}"),
                       ("d.py", "gru4rec_params = dict([('loss', 'top1')], loss='bpr')"),
                       ("f.py", "gru4rec_params = OrderedDict({'loss': 'top1', 'loss': 'bpr'})")):
        p = tmp_path / name
        p.write_text(text + "\n")
        with pytest.raises(ConfigError, match=f"{name}: parameter 'loss' given twice"):
            read_param_file(p)
    p = tmp_path / "e.py"          # pairs of three are not parameters
    p.write_text("gru4rec_params = OrderedDict([('loss', 'top1', 3)])\n")
    with pytest.raises(ConfigError, match="must be a dict or OrderedDict of literal values"):
        read_param_file(p)


@pytest.mark.parametrize("later, line", [
    ("gru4rec_params['loss'] = 'bpr-max'", 3),            # an item set after the assignment
    ("gru4rec_params.update(loss='bpr-max')", 3),          # a method call
    ("# tuned later:\ngru4rec_params = {'loss': 'bpr-max'}", 4),   # assigned twice
    ("del gru4rec_params['n_sample']", 3),
])
def test_python_param_file_changed_after_its_assignment_is_refused(tmp_path, later, line):
    # the authors' run.py executes the file, so a later change wins there; this reader does
    # not run it and must not train with the first assignment's values silently
    p = tmp_path / "tuned.py"
    p.write_text("from collections import OrderedDict\n"
                 "gru4rec_params = OrderedDict([('loss', 'cross-entropy'), ('n_sample', 8)])\n"
                 f"{later}\n")
    with pytest.raises(ConfigError, match=rf"tuned.py: line {line}: a second use of "
                                          r"gru4rec_params \(its assignment is on line 2\)"):
        read_param_file(p)


def test_python_param_file_is_never_executed(tmp_path):
    marker = tmp_path / "x_marker"
    p = tmp_path / "evil.py"
    p.write_text(
        "from collections import OrderedDict\n"
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "import os\n"
        f"os.makedirs({str(tmp_path / 'made_dir')!r})\n"
        "gru4rec_params = OrderedDict([('loss', 'bpr-max'), ('layers', [224])])\n"
        "raise SystemExit(3)\n"
    )
    params = read_param_file(p)
    assert params == {"loss": "bpr-max", "layers": [224]}
    assert not marker.exists()
    assert not (tmp_path / "made_dir").exists()


def test_read_json_param_file(tmp_path):
    p = tmp_path / "params.json"
    p.write_text(json.dumps({"loss": "top1-max", "layers": [32, 32], "constrained_embedding": False,
                             "embedding": 16, "learning_rate": 0.1}))
    params = read_param_file(p)
    c = GRU4RecConfig.from_dict(params)
    assert c.loss == "top1-max" and c.layers == (32, 32) and c.embedding_mode == "separate"
    assert c.learning_rate == 0.1


def test_missing_param_file(tmp_path):
    with pytest.raises(ConfigError, match="not found") as ei:
        read_param_file(tmp_path / "nope.py")
    assert "nope.py" in str(ei.value)
    with pytest.raises(ConfigError, match="is a directory, not a parameter file"):
        read_param_file(tmp_path)


def test_python_file_without_gru4rec_params(tmp_path):
    p = tmp_path / "p.py"
    p.write_text("params = {'loss': 'bpr'}\n")
    with pytest.raises(ConfigError, match="gru4rec_params") as ei:
        read_param_file(p)
    assert "p.py" in str(ei.value)


@pytest.mark.parametrize("value", [
    "OrderedDict([('loss', get_loss())])",
    "OrderedDict([('loss', 'bpr'), ('layers', [int('3')])])",
    "make_params()",
    "OrderedDict([('loss', 'bpr')]) | other",
    "['loss', 'bpr']",
    "__import__('os').system('true')",
])
def test_non_literal_param_values(tmp_path, value):
    p = tmp_path / "p.py"
    p.write_text(f"from collections import OrderedDict\ngru4rec_params = {value}\n")
    with pytest.raises(ConfigError, match="literal") as ei:
        read_param_file(p)
    assert "p.py" in str(ei.value) and "line 2" in str(ei.value)


def test_python_syntax_error(tmp_path):
    p = tmp_path / "p.py"
    p.write_text("gru4rec_params = OrderedDict([('loss', 'bpr')\n")
    with pytest.raises(ConfigError, match="syntax"):
        read_param_file(p)


@pytest.mark.parametrize("text, what", [
    ('{"loss": "bpr",}', "invalid JSON"),
    ('{"loss": ', "invalid JSON"),
    ('["loss", "bpr"]', "object"),
])
def test_bad_json_param_file(tmp_path, text, what):
    p = tmp_path / "p.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=what) as ei:
        read_param_file(p)
    assert "p.json" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_param_file_unknown_key_through_from_dict(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('{"loss": "bpr", "n_hidden": 3}')
    with pytest.raises(ConfigError, match="'n_hidden'") as ei:
        GRU4RecConfig.from_dict(read_param_file(p), where=str(p))
    assert str(p) in str(ei.value)


def test_non_utf8_param_file(tmp_path):
    p = tmp_path / "p.py"
    p.write_bytes(b"gru4rec_params = {'loss': '\xff\xfe'}\n")
    with pytest.raises(ConfigError, match="p.py"):
        read_param_file(p)


def test_direct_construction_with_a_string_number_is_a_config_error():
    with pytest.raises(ConfigError, match=r"parameter dropout_p_hidden='0.5': must be a number"):
        GRU4RecConfig(dropout_p_hidden="0.5")
    assert GRU4RecConfig.from_dict({"dropout_p_hidden": "0.5"}).dropout_p_hidden == 0.5
    assert GRU4RecConfig(batch_size=np.int64(3)).batch_size == 3


def test_the_parameter_files_are_the_bench_presets():
    # benchmarks/params holds the authors' best settings as parameter files; bench --preset
    # holds the same settings: one must not drift from the other
    from pathlib import Path

    from fastgru4rec.bench import PRESETS

    files = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "params").glob("*.py"))
    assert {f.name.split("_")[0] for f in files} == set(PRESETS)
    for f in files:
        preset = PRESETS[f.name.split("_")[0]]
        from_file = GRU4RecConfig.from_dict(read_param_file(f))
        assert from_file == GRU4RecConfig.from_dict({**preset, "n_epochs": from_file.n_epochs}), f
