"""The edit file (lightning_unlearn.artifact): save / load / apply round trip (the same outputs, and
removing the edits it added gives back the original state_dict bit for bit), the weights digest
check, and bad files and calls. Runs on a snapshot of the embedded model's weights, with the fast
text-only method."""
import copy
import json

import pytest
import torch
from export_helpers import assert_same_outputs
from safetensors.torch import save_file

from lightning_unlearn import EditError, ForgetRequest, edits, remove_edit_, restore_, unlearn_
from lightning_unlearn.artifact import ArtifactError, WeightsMismatchError, apply_edit_file_, load_edit, save_edit
from lightning_unlearn.state import weights_digest


def snapshot(model) -> dict:
    """The state_dict, tensors cloned (an edited model's holds the edits' extra state too)."""
    return {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in model.state_dict().items()}


def assert_state_is(model, original):
    state = model.state_dict()
    assert list(state) == list(original)
    for k, v in original.items():
        assert (torch.equal(state[k], v) and state[k].dtype == v.dtype) if torch.is_tensor(v) else state[k] == v, k


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".old"))


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
    original = snapshot(fresh)
    assert apply_edit_file_(fresh, path) == edits(fresh) == [result.name]  # the names it added
    assert_same_outputs(fresh, model, inputs)
    assert restore_(fresh) == [result.name]
    assert_state_is(fresh, original)

    # from the Unlearned result (with the model it was computed on): the same artifact
    again = save_edit(result, tmp_path / "from-result.safetensors", model=base.model)
    art2 = load_edit(again)
    assert art2.meta == art.meta and torch.equal(art2.maps[0], art.maps[0])


def test_the_names_it_returns_remove_exactly_the_edits_it_added(tmp_path, base, edited):
    model, _ = edited
    path = save_edit(model, tmp_path / "edit.safetensors")
    other = ForgetRequest(base.classnames, base.domains, forget_classes=["moon"])
    fresh = copy.deepcopy(base.model)
    unlearn_(fresh, base.tokenizer, other, method="text", progress=False)
    first = edits(fresh)
    before = snapshot(fresh)
    added = apply_edit_file_(fresh, path, compose=True)
    assert added == [n for n in edits(fresh) if n not in first] and len(added) == 1
    for name in reversed(added):
        remove_edit_(fresh, name)
    assert edits(fresh) == first
    assert_state_is(fresh, before)


def test_weights_digest_mismatch_names_the_tensor_and_leaves_the_model_alone(tmp_path, base, edited):
    model, _ = edited
    path = save_edit(model, tmp_path / "edit.safetensors")
    for key in ["visual.proj", "text_projection"]:
        other = copy.deepcopy(base.model)
        with torch.no_grad():
            other.state_dict()[key][0, 0] += 1e-3
        with pytest.raises(WeightsMismatchError, match=rf"`{key}` .*different values.*sha256") as info:
            apply_edit_file_(other, path)
        assert "star" in str(info.value)
        assert not edits(other)
    with pytest.raises(EditError, match="already carries"):
        apply_edit_file_(copy.deepcopy(model), path)
    with pytest.raises(EditError, match="already applied"):  # the same edit twice would apply its map twice
        apply_edit_file_(copy.deepcopy(model), path, compose=True)


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
