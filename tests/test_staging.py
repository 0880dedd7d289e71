"""The module layering of saving and loading: loading a model imports none of the writing modules
(staging, artifact, export), and the staging of writes imports neither torch nor open_clip while
still writing tensors as JSON. The staging behaviour itself (markers, stale leftovers, the atomic
exchange, interrupts) is tested in test_bad_inputs.py and test_export.py."""
import json
import subprocess
import sys

import pytest
import torch

from lightning_unlearn.staging import OutputError, plain_json, write_json

WRITERS = ("lightning_unlearn.staging", "lightning_unlearn.artifact", "lightning_unlearn.export")


def imported_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_loading_imports_none_of_the_writing_modules():
    modules = imported_after("import lightning_unlearn.load")
    assert "lightning_unlearn.load" in modules and "lightning_unlearn.localdir" in modules
    assert not modules & set(WRITERS)


def test_staging_imports_neither_torch_nor_open_clip():
    modules = imported_after("import lightning_unlearn.staging")
    assert not modules & {"torch", "open_clip"}


def test_write_json_writes_tensors_tuples_and_paths(tmp_path):
    path = write_json({"t": torch.tensor([1.5, 2.0]), "pair": ("a", "b"), "where": tmp_path}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"t": [1.5, 2.0], "pair": ["a", "b"], "where": str(tmp_path)}
    assert plain_json({"pair": ("a", "b")}) == {"pair": ["a", "b"]}
    with pytest.raises(OutputError, match="already exists"):
        write_json({"x": 1}, path)
