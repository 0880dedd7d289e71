"""The folded model (lightning_unlearn.export): the open_clip folder loads with open_clip and gives the
same outputs, existing outputs are refused unless asked, an interrupted write leaves nothing half
written, and a config that does not fit writes nothing. Runs on a snapshot of the embedded model's
weights, with the fast text-only method. The edit file is tested in test_artifact.py, the staging
of writes in test_bad_inputs.py, the module layering in test_staging.py."""
import json
from pathlib import Path

import open_clip
import pytest
import torch
from export_helpers import assert_same_outputs, outputs

from lightning_unlearn import ArtifactError, artifact, edits, embedded
from lightning_unlearn import export as ex
from lightning_unlearn.artifact import save_edit
from lightning_unlearn.data import World
from lightning_unlearn.export import save_folded
from lightning_unlearn.localdir import CONFIG_NAME, WEIGHTS_NAME
from lightning_unlearn.staging import MARKER_NAME


def model_cfg():
    return open_clip.get_model_config(embedded.register())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".old"))


def test_folded_folder_loads_with_open_clip_and_gives_the_same_outputs(tmp_path, base, edited, inputs):
    model, _ = edited
    n_edits = len(edits(model))
    out = save_folded(model, model_cfg(), tmp_path / "folded")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["model_cfg"] == json.loads(json.dumps(model_cfg()))
    assert config["preprocess_cfg"]["mean"] == list(open_clip.OPENAI_DATASET_MEAN)
    assert config["lightning_unlearn"]["folded_edits"][0]["request"]["forget_classes"] == ["star"]
    assert len(edits(model)) == n_edits, "the caller's model must keep its edits (a copy is folded)"

    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert not edits(loaded)
    assert set(loaded.state_dict()) == set(base.model.state_dict())
    assert_same_outputs(loaded, model, inputs)
    assert not torch.equal(outputs(loaded, inputs)[0], outputs(base.model, inputs)[0])
    image = World("test", 1)[3].image
    assert torch.equal(preprocess(image), base.preprocess(image))
    assert leftovers(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path, edited):
    model, _ = edited
    out = save_folded(model, model_cfg(), tmp_path / "m")
    stamp = (out / WEIGHTS_NAME).stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        save_folded(model, model_cfg(), out)
    assert (out / WEIGHTS_NAME).stat().st_mtime_ns == stamp
    save_folded(model, model_cfg(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, CONFIG_NAME, WEIGHTS_NAME]

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="refusing to replace .*not a folder written by lightning_unlearn"):
        save_folded(model, model_cfg(), precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        save_folded(model, model_cfg(), tmp_path / "a-file", overwrite=True)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_no_half_written_model(tmp_path, edited, monkeypatch, error):
    model, _ = edited
    old = save_folded(model, model_cfg(), tmp_path / "old")
    before = (old / WEIGHTS_NAME).read_bytes()

    def broken(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a model")
        raise error
    monkeypatch.setattr(ex, "save_file", broken)
    monkeypatch.setattr(artifact, "save_file", broken)
    with pytest.raises(type(error)):
        save_folded(model, model_cfg(), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(type(error)):
        save_folded(model, model_cfg(), old, overwrite=True)
    assert (old / WEIGHTS_NAME).read_bytes() == before, "the previous model must survive a failed overwrite"
    with pytest.raises(type(error)):
        save_edit(model, tmp_path / "edit.safetensors")
    assert not (tmp_path / "edit.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_a_model_cfg_that_does_not_fit_names_the_keys_and_writes_nothing(tmp_path, edited):
    model, _ = edited
    wrong = dict(model_cfg(), embed_dim=64)
    with pytest.raises(ArtifactError, match=r"shape mismatches .*visual\.proj"):
        save_folded(model, wrong, tmp_path / "m")
    with pytest.raises(ArtifactError, match="vision_cfg"):
        save_folded(model, {"embed_dim": 128}, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
