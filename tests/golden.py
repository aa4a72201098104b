"""Access to ../shared/golden (outputs of the authors' implementation) for tests."""
import json
import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("FASTGRU4REC_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def golden():
    path = SHARED / "golden" / "authors_gru4rec.json"
    if not path.is_file():
        pytest.skip(f"golden outputs not found at {path}")
    return json.loads(path.read_text())
