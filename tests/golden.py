"""Access to ../shared/golden (outputs of the authors' implementation) for tests."""
import json
import os
from pathlib import Path

from conftest import missing_data

SHARED = Path(os.environ.get("FASTGRU4REC_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def golden():
    path = SHARED / "golden" / "authors_gru4rec.json"
    if not path.is_file():
        missing_data(f"golden outputs not found at {path} (set FASTGRU4REC_SHARED)")
    return json.loads(path.read_text())
