"""Hyperparameters of GRU4Rec: one dataclass with the authors' parameter names.

Parses the formats users of the authors' code already have:
  - parameter strings  ``loss=bpr-max,layers=100/100,constrained_embedding=True``
  - parameter files    a Python file assigning ``gru4rec_params = OrderedDict([...])`` of
                       literals (read with ``ast``, never executed), or a JSON object.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import numbers
import operator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from .errors import ConfigError

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "top1", "bpr")
GRU_VARIANTS = ("auto", "original", "cell")

# Upper bounds of the sizes, far beyond anything that fits in memory: a larger value could only
# end in an allocation failure deep inside training (or an integer overflow in numpy/torch), so
# it is rejected up front, naming the parameter. A 2^20-unit layer's recurrent weights alone
# are 3 * 2^40 floats (12 TiB); 2^40 pre-drawn int64 ids are 8 TiB.
MAX_UNITS = 1 << 20            # layers, embedding
MAX_BATCH_SIZE = 1 << 24
MAX_SAMPLES = 1 << 40          # n_sample, sample_store_size
MAX_INT = (1 << 63) - 1        # n_epochs and seed: what a signed 64-bit integer holds


@dataclass
class GRU4RecConfig:
    """GRU4Rec hyperparameters; defaults are those of the authors' implementation."""

    layers: Tuple[int, ...] = (100,)      # hidden units per GRU layer
    loss: str = "cross-entropy"           # one of LOSSES
    batch_size: int = 64                  # B: session-parallel lanes; losses are divided by B
    dropout_p_embed: float = 0.0          # dropout on the input embedding rows
    dropout_p_hidden: float = 0.0         # dropout on each layer's output (carried as state)
    learning_rate: float = 0.05
    momentum: float = 0.0
    sample_alpha: float = 0.5             # negatives drawn with p ~ support^alpha
    n_sample: Union[int, str] = 2048      # extra negatives shared by a step (0: in-batch only;
                                          # "all": cross-entropy over every item, no sampling)
    embedding: int = 0                    # >0: separate input embedding of this size
    constrained_embedding: bool = True    # shared: the output table is the input embedding
    n_epochs: int = 10
    bpreg: float = 1.0                    # bpr-max score regularisation
    elu_param: float = 0.5                # ELU before bpr-max / top1-max (0: linear)
    logq: float = 0.0                     # logQ correction strength (cross-entropy only)
    gru_variant: str = "auto"             # auto: "original" for a one-hot first layer, else "cell"
    sample_store_size: int = 10_000_000   # ids pre-drawn at once (a row of n_sample per step)
    seed: int = 42

    def __post_init__(self):
        # Typed values here (from_dict and GRU4Rec(...) convert strings first): a string where
        # a number belongs would otherwise fail inside a comparison with a bare TypeError.
        for name in ("batch_size", "dropout_p_embed", "dropout_p_hidden", "learning_rate",
                     "momentum", "sample_alpha", "embedding", "n_epochs", "bpreg", "elu_param",
                     "logq", "sample_store_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real):   # numpy scalars are Real too
                raise ConfigError(f"parameter {name}={value!r}: must be a number "
                                  "(GRU4RecConfig.from_dict converts strings)")
        try:
            self.layers = _as_layers(self.layers)
        except (TypeError, ValueError):
            raise ConfigError(f"parameter layers={self.layers!r}: every layer size must be a "
                              "positive integer") from None
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> "GRU4RecConfig":
        def bad(name, why):
            raise ConfigError(f"parameter {name}={getattr(self, name)!r}: {why}")

        if not self.layers or any(h <= 0 for h in self.layers):
            bad("layers", "every layer size must be a positive integer")
        if any(h > MAX_UNITS for h in self.layers):
            bad("layers", f"a layer of more than {MAX_UNITS:,} units cannot fit in memory")
        if self.loss not in LOSSES:
            bad("loss", f"unknown loss (choose from {', '.join(LOSSES)})")
        if self.gru_variant not in GRU_VARIANTS:
            bad("gru_variant", f"choose from {', '.join(GRU_VARIANTS)}")
        for name, most in (("batch_size", MAX_BATCH_SIZE), ("n_epochs", MAX_INT),
                           ("sample_store_size", MAX_SAMPLES)):
            if int(getattr(self, name)) <= 0:
                bad(name, "must be a positive integer")
            if int(getattr(self, name)) > most:
                bad(name, f"must be at most {most:,}")
        if self.full_catalog:
            if self.loss != "cross-entropy":
                bad("loss", "n_sample=all (every item scored) is defined for cross-entropy only")
            if self.logq != 0:
                bad("logq", "must be 0 with n_sample=all (every item is scored: no sampling "
                            "to correct)")
        if int(self.batch_size) < self.min_lanes:
            bad("batch_size", "must be at least 2 with n_sample=0 (without extra samples a "
                              "step's negatives are the other lanes' targets: one lane trains "
                              "nothing)")
        if isinstance(self.n_sample, str) and not self.full_catalog:
            bad("n_sample", 'must be zero, a positive integer or "all"')
        for name, most in (("n_sample", MAX_SAMPLES), ("embedding", MAX_UNITS)):
            if getattr(self, name) != "all" and int(getattr(self, name)) < 0:
                bad(name, "must be zero or a positive integer" +
                    (' (or "all")' if name == "n_sample" else ""))
            if getattr(self, name) != "all" and int(getattr(self, name)) > most:
                bad(name, f"must be at most {most:,}")
        # torch's generator, numpy's and the native sampler (which is given seed + 1) all take
        # a non-negative 64-bit seed
        if not (0 <= int(self.seed) < MAX_INT):
            bad("seed", f"must be an integer in [0, {MAX_INT - 1}]")
        for name in ("dropout_p_embed", "dropout_p_hidden", "momentum"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                bad(name, "must be in [0, 1)")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            bad("learning_rate", "must be a positive number")
        for name in ("sample_alpha", "bpreg", "elu_param", "logq"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                bad(name, "must be a non-negative number")
        if self.embedding and self.constrained_embedding:
            bad("embedding", "a separate embedding needs constrained_embedding=False")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def embedding_mode(self) -> str:
        """'shared' (x = Wy[item]), 'separate' (own N x E table) or 'onehot' (N x 3H gather)."""
        if self.constrained_embedding:
            return "shared"
        return "separate" if self.embedding > 0 else "onehot"

    @property
    def full_catalog(self) -> bool:
        """n_sample = "all": every step scores the whole catalog (full-catalog cross-entropy)."""
        return self.n_sample == "all"

    @property
    def min_lanes(self) -> int:
        """Lanes a training step needs: 2 with in-batch negatives only (n_sample = 0: a lane's
        negatives are the other lanes' targets, so one lane trains nothing), else 1."""
        return 2 if self.n_sample == 0 else 1

    @property
    def n_extra_samples(self) -> int:
        """Sampled extra negatives per step (0 with n_sample = "all")."""
        return 0 if self.full_catalog else int(self.n_sample)

    def ineffective_parameters(self) -> List[str]:
        """Parameters set to a value that this configuration ignores, each as a sentence (for
        a warning): valid settings, but someone porting a setup would expect an effect."""
        notes = []
        if self.logq != 0 and self.loss != "cross-entropy":
            notes.append(f"logq={self.logq:g} has no effect with loss={self.loss} (the logQ "
                         "correction is for cross-entropy only)")
        if self.dropout_p_embed != 0 and self.embedding_mode == "onehot":
            notes.append(f"dropout_p_embed={self.dropout_p_embed:g} has no effect with one-hot "
                         "input (constrained_embedding=False, embedding=0): there is no embedding "
                         "to drop; the first layer's output gets dropout_p_hidden, as in the "
                         "authors' Theano code (their PyTorch port applies dropout_p_embed there)")
        return notes

    def layer_variant(self, layer: int) -> str:
        """GRU variant of a layer; 'auto' follows the authors' code: the one-hot first layer
        is the original (Theano) form, every other layer the torch.nn.GRUCell form."""
        if self.gru_variant != "auto":
            return self.gru_variant
        return "original" if (layer == 0 and self.embedding_mode == "onehot") else "cell"

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, params: Dict[str, Any], where: str = "parameters") -> "GRU4RecConfig":
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in params.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown parameter {key!r} (known: {', '.join(known)})")
            kwargs[key] = _coerce(key, value, known[key].type, where)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            # the range checks of validate(): name the source too (a file, the -ps string)
            if where == "parameters":
                raise
            raise ConfigError(f"{where}: {e}") from None

    def replace(self, **changes) -> "GRU4RecConfig":
        return self.from_dict({**self.to_dict(), **changes})


def _as_layers(value) -> Tuple[int, ...]:
    """100, "100/100", [100, 100] -> (100, 100). Raises ValueError/TypeError on anything that
    is not a whole number (1.5 must not become 1 silently)."""
    if isinstance(value, str):
        value = value.split("/")
    try:
        items = list(value)
    except TypeError:
        items = [value]   # a single number
    return tuple(_as_int(v) for v in items)


def is_integer(value) -> bool:
    """An int or numpy integer, not a bool (True would pass for 1): what a count parameter
    given as a Python value must be."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_int(value) -> int:
    """A whole number (int, numpy integer, integral float, or its text) as int; else
    ValueError/TypeError."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, str):
        return int(value.strip())
    try:
        return operator.index(value)       # int, numpy integer
    except TypeError:
        number = float(value)              # float, numpy float; TypeError if not a number
        if not number.is_integer():        # 1.5 must not become 1; nan and inf are not whole
            raise ValueError(f"{value!r} is not a whole number") from None
        return int(number)


def _coerce(key: str, value: Any, type_name: Any, where: str) -> Any:
    type_name = str(type_name)
    if "Union" in type_name:   # n_sample: an integer or "all"
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        type_name = "int"
    try:
        if "Tuple" in type_name:
            return _as_layers(value)
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValueError
        if type_name in ("int", "float") and isinstance(value, bool):
            raise ValueError  # JSON true/false is not a number
        if value is None:
            raise ValueError  # JSON null: no default is implied
        if type_name == "int":
            return _as_int(value)
        if type_name == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        what = "list of whole numbers (e.g. 100/100)" if "Tuple" in type_name else type_name
        raise ConfigError(f"{where}: parameter {key}={value!r} is not a valid {what}") from None


def _unique_keys(pairs, where: str) -> Dict[str, Any]:
    """A parameter file's (key, value) pairs as a dict; a key written twice is an error (a
    file is edited, not appended to: one of the two values was a mistake, and the last one
    would silently win)."""
    params: Dict[str, Any] = {}
    for key, value in pairs:
        if key in params:
            raise ConfigError(f"{where}: parameter {key!r} given twice")
        params[key] = value
    return params


def parse_param_string(text: str) -> Dict[str, str]:
    """``"loss=bpr-max,layers=100/100"`` -> ``{"loss": "bpr-max", "layers": "100/100"}``.
    A key given again overrides the earlier value, as in the authors' run script (so that
    ``-ps "$BASE,n_epochs=5"`` changes one parameter of a shared string)."""
    params: Dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"parameter string: {part!r} is not of the form key=value")
        key, value = part.split("=", 1)
        params[key.strip()] = value.strip()
    return params


def read_param_file(path) -> Dict[str, Any]:
    """Read a parameter file: JSON (a .json file, or any file whose text starts with '{'), or
    the authors' Python form ``gru4rec_params = OrderedDict([('loss', 'bpr-max'), ...])``
    parsed as literals (never run)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a parameter file")
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    text = text.removeprefix("\ufeff")   # a byte-order mark, as some editors write
    if "\0" in text:
        raise ConfigError(f"{path}: contains a NUL byte; not a text parameter file")
    # JSON by its extension, or by its content (an object) whatever the file is called
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            params = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs,
                                                                                  str(path)))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid JSON (nested too deeply)") from None
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: a JSON parameter file must hold an object")
        return params
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise ConfigError(f"{path}: line {e.lineno}: not valid Python syntax") from None
    except (MemoryError, RecursionError):
        # CPython's parser gives up on deeply nested expressions (e.g. 100000 unary minuses)
        raise ConfigError(f"{path}: too deeply nested to parse as a parameter file") from None
    assign = next((node for node in tree.body if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "gru4rec_params" for t in node.targets)), None)
    if assign is None:
        raise ConfigError(f"{path}: no 'gru4rec_params = ...' assignment found")
    # The file is read, not run: a later statement that changes gru4rec_params (a second
    # assignment, gru4rec_params['loss'] = ..., .update(...)) would be silently ignored where
    # the authors' run.py, which executes the file, applies it. Any other use is refused.
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "gru4rec_params" \
                and not any(node is t for t in assign.targets):
            raise ConfigError(
                f"{path}: line {node.lineno}: a second use of gru4rec_params (its assignment is "
                f"on line {assign.lineno}); this file is read, not run: put every parameter in "
                "that one assignment")
    return _literal_params(assign.value, path)


def _dict_pairs(node: ast.Dict) -> list:
    """A dict literal's (key, value) pairs as written, repeats kept (literal_eval would merge
    them); ValueError for a ``**`` entry (its key is None)."""
    if None in node.keys:
        raise ValueError("a ** entry")
    return [(ast.literal_eval(k), ast.literal_eval(v)) for k, v in zip(node.keys, node.values)]


def _literal_params(node: ast.AST, path: Path) -> Dict[str, Any]:
    try:
        # OrderedDict([...]) / dict(...) / {...}: only the literal arguments are evaluated.
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name not in ("OrderedDict", "dict"):
                raise ValueError
            pairs = []
            for arg in node.args:
                if isinstance(arg, ast.Dict):      # OrderedDict({...}): its keys as written
                    pairs.extend(_dict_pairs(arg))
                else:
                    pairs.extend(tuple(pair) for pair in ast.literal_eval(arg))
            pairs.extend((kw.arg, ast.literal_eval(kw.value)) for kw in node.keywords)
        elif isinstance(node, ast.Dict):
            pairs = _dict_pairs(node)
        else:
            raise ValueError
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError
        return _unique_keys(pairs, str(path))
    except ConfigError:   # a key given twice: said as such
        raise
    except (ValueError, TypeError, SyntaxError):
        raise ConfigError(
            f"{path}: line {getattr(node, 'lineno', '?')}: gru4rec_params must be a dict or "
            "OrderedDict of literal values"
        ) from None
    except (MemoryError, RecursionError):
        raise ConfigError(f"{path}: line {getattr(node, 'lineno', '?')}: gru4rec_params is "
                          "too deeply nested to read") from None
