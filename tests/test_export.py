"""Saving edits: the folded open_clip folder (loads with open_clip, same outputs), the edit artifact
(apply / remove round trip, weights digest check), atomic writes and bad input. Runs on a snapshot of
the embedded model's weights, with the fast text-only method."""
import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from lightning_unlearn import EditError, ForgetRequest, edits, embedded, unlearn_
from lightning_unlearn import export as ex
from lightning_unlearn.data import World
from lightning_unlearn.export import (ArtifactError, WeightsMismatchError, apply_edit, load_edit,
                                      remove_edit, save_edit, save_folded)
from lightning_unlearn.state import weights_digest

FORGET = dict(forget_classes=["star"])  # global: the text-only method changes the model for it


@pytest.fixture(scope="module")
def base(weights):
    return embedded.load_embedded(weights)


@pytest.fixture(scope="module")
def edited(base):
    model = copy.deepcopy(base.model)
    request = ForgetRequest(base.classnames, base.domains, **FORGET)
    result = unlearn_(model, base.tokenizer, request, method="text", progress=False)
    return model.eval(), result


@pytest.fixture(scope="module")
def inputs(base):
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 32, 32, generator=g), base.tokenizer(["a sketch of a star.", "a star.", "a moon."])


def outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        return model.encode_image(inputs[0]), model.encode_text(inputs[1])


def assert_same_outputs(a, b, inputs):
    for x, y in zip(outputs(a, inputs), outputs(b, inputs)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def model_cfg():
    return open_clip.get_model_config(embedded.register())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".old"))


def test_folded_folder_loads_with_open_clip_and_gives_the_same_outputs(tmp_path, base, edited, inputs):
    model, _ = edited
    n_edits = len(edits(model))
    out = save_folded(model, model_cfg(), tmp_path / "folded")
    assert sorted(p.name for p in out.iterdir()) == [ex.MARKER_NAME, ex.CONFIG_NAME, ex.WEIGHTS_NAME]
    config = json.loads((out / ex.CONFIG_NAME).read_text())
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
    stamp = (out / ex.WEIGHTS_NAME).stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        save_folded(model, model_cfg(), out)
    assert (out / ex.WEIGHTS_NAME).stat().st_mtime_ns == stamp
    save_folded(model, model_cfg(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [ex.MARKER_NAME, ex.CONFIG_NAME, ex.WEIGHTS_NAME]

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
    before = (old / ex.WEIGHTS_NAME).read_bytes()

    def broken(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a model")
        raise error
    monkeypatch.setattr(ex, "save_file", broken)
    with pytest.raises(type(error)):
        save_folded(model, model_cfg(), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(type(error)):
        save_folded(model, model_cfg(), old, overwrite=True)
    assert (old / ex.WEIGHTS_NAME).read_bytes() == before, "the previous model must survive a failed overwrite"
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


def test_edit_artifact_applies_to_the_original_and_removes_bit_identically(tmp_path, base, edited, inputs):
    model, result = edited
    path = save_edit(model, tmp_path / "edit.safetensors")
    sidecar = tmp_path / "edit.json"
    assert path.stat().st_size < 200_000 and sidecar.is_file()
    art = load_edit(path)
    meta = json.loads(sidecar.read_text())
    assert meta == art.meta
    assert art.meta["request"] == result.request.to_dict() and art.meta["site"] == "joint"
    assert art.meta["config"]["method"] == "text"
    assert [e["tower"] for e in art.entries] == ["image"]
    assert set(art.weights_digest) == {"visual.proj", "text_projection", "backbone"}
    assert art.weights_digest == weights_digest(base.model)
    torch.testing.assert_close(art.maps[0], result.maps["image"], rtol=0, atol=0)

    fresh = copy.deepcopy(base.model)
    original = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert apply_edit(fresh, path) is fresh
    assert_same_outputs(fresh, model, inputs)
    remove_edit(fresh)
    state = fresh.state_dict()
    assert list(state) == list(original)
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in original.items())

    # from the Unlearned result (with the model it was computed on): the same artifact
    again = save_edit(result, tmp_path / "from-result.safetensors", model=base.model)
    art2 = load_edit(again)
    assert art2.meta == art.meta and torch.equal(art2.maps[0], art.maps[0])


def test_weights_digest_mismatch_names_the_tensor_and_leaves_the_model_alone(tmp_path, base, edited):
    model, _ = edited
    path = save_edit(model, tmp_path / "edit.safetensors")
    for key in ["visual.proj", "text_projection"]:
        other = copy.deepcopy(base.model)
        with torch.no_grad():
            other.state_dict()[key][0, 0] += 1e-3
        with pytest.raises(WeightsMismatchError, match=rf"`{key}` .*different values.*sha256") as info:
            apply_edit(other, path)
        assert "star" in str(info.value)
        assert not edits(other)
    with pytest.raises(EditError, match="already carries"):
        apply_edit(copy.deepcopy(model), path)
    with pytest.raises(EditError, match="already applied"):  # the same edit twice would apply its map twice
        apply_edit(copy.deepcopy(model), path, compose=True)


def test_bad_edit_files_and_calls(tmp_path, base, edited):
    model, result = edited
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_edit(tmp_path / "nope.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="cannot read edit"):
        load_edit(tmp_path / "garbage.safetensors")
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ArtifactError, match="not a lightning_unlearn edit"):
        load_edit(tmp_path / "plain.safetensors")
    with pytest.raises(EditError, match="no edit to save"):
        save_edit(base.model, tmp_path / "e.safetensors")
    with pytest.raises(TypeError, match="needs `model=`"):
        save_edit(result, tmp_path / "e.safetensors")
    save_edit(model, tmp_path / "e.safetensors")
    with pytest.raises(FileExistsError, match="already exists"):
        save_edit(model, tmp_path / "e.safetensors")
    save_edit(model, tmp_path / "e.safetensors", overwrite=True)
    assert leftovers(tmp_path) == []
