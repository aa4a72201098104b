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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from .errors import ConfigError

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "top1", "bpr")
GRU_VARIANTS = ("auto", "original", "cell")


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
        self.layers = _as_layers(self.layers)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> "GRU4RecConfig":
        def bad(name, why):
            raise ConfigError(f"parameter {name}={getattr(self, name)!r}: {why}")

        if not self.layers or any(h <= 0 for h in self.layers):
            bad("layers", "every layer size must be a positive integer")
        if self.loss not in LOSSES:
            bad("loss", f"unknown loss (choose from {', '.join(LOSSES)})")
        if self.gru_variant not in GRU_VARIANTS:
            bad("gru_variant", f"choose from {', '.join(GRU_VARIANTS)}")
        for name in ("batch_size", "n_epochs", "sample_store_size"):
            if int(getattr(self, name)) <= 0:
                bad(name, "must be a positive integer")
        if self.full_catalog:
            if self.loss != "cross-entropy":
                bad("loss", "n_sample=all (every item scored) is defined for cross-entropy only")
            if self.logq != 0:
                bad("logq", "must be 0 with n_sample=all (every item is scored: no sampling "
                            "to correct)")
        if isinstance(self.n_sample, str) and not self.full_catalog:
            bad("n_sample", 'must be zero, a positive integer or "all"')
        for name in ("n_sample", "embedding"):
            if getattr(self, name) != "all" and int(getattr(self, name)) < 0:
                bad(name, "must be zero or a positive integer" +
                    (' (or "all")' if name == "n_sample" else ""))
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
    def n_extra_samples(self) -> int:
        """Sampled extra negatives per step (0 with n_sample = "all")."""
        return 0 if self.full_catalog else int(self.n_sample)

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
        return cls(**kwargs)

    def replace(self, **changes) -> "GRU4RecConfig":
        return self.from_dict({**self.to_dict(), **changes})


def _as_layers(value) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        return tuple(int(v) for v in value.split("/"))
    return tuple(int(v) for v in value)


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
        if type_name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if type_name == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: parameter {key}={value!r} is not a valid {type_name}") from None


def parse_param_string(text: str) -> Dict[str, str]:
    """``"loss=bpr-max,layers=100/100"`` -> ``{"loss": "bpr-max", "layers": "100/100"}``."""
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
    """Read a parameter file: JSON, or the authors' Python form
    ``gru4rec_params = OrderedDict([('loss', 'bpr-max'), ...])`` parsed as literals (never run)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            params = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: a JSON parameter file must hold an object")
        return params
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise ConfigError(f"{path}: line {e.lineno}: not valid Python syntax") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "gru4rec_params" for t in node.targets
        ):
            return _literal_params(node.value, path)
    raise ConfigError(f"{path}: no 'gru4rec_params = ...' assignment found")


def _literal_params(node: ast.AST, path: Path) -> Dict[str, Any]:
    try:
        # OrderedDict([...]) / dict(...) / {...}: only the literal arguments are evaluated.
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name not in ("OrderedDict", "dict"):
                raise ValueError
            params: Dict[str, Any] = {}
            for arg in node.args:
                params.update(dict(ast.literal_eval(arg)))
            for kw in node.keywords:
                params[kw.arg] = ast.literal_eval(kw.value)
            return params
        value = ast.literal_eval(node)
        if not isinstance(value, dict):
            raise ValueError
        return value
    except (ValueError, TypeError, SyntaxError):
        raise ConfigError(
            f"{path}: line {getattr(node, 'lineno', '?')}: gru4rec_params must be a dict or "
            "OrderedDict of literal values"
        ) from None
