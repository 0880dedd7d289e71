"""Every CLIP family on small random-init instances: towers with no projection weight (timm
``proj="none"``, SigLIP-style), timm towers whose trunk classifier is the projection (EVA-style),
CoCa, and transformers ``CLIPModel`` / ``SiglipModel`` (skipped without the ``[hf]`` extra).

Per family: injected == folded (fp32, <= 1e-5), restore bit-exact, the exported folder reloads with
open_clip / transformers alone to the same outputs, alpha = 0 changes nothing, and the callback
finds the model on a LightningModule.
"""
import copy
import json

import lightning as L
import open_clip
import pytest
import torch
from torch import nn

from lightning_unlearn import CLIPUnlearning, ForgetRequest, NullspaceUnlearning, edits, fold_, restore_, unlearn_
from lightning_unlearn.artifact import ArtifactError, apply_edit_file_, save_edit
from lightning_unlearn.edit import edit_modules
from lightning_unlearn.encoders import encode_image, encode_text, tokenize
from lightning_unlearn.export import save_folded, save_pretrained_folded
from lightning_unlearn.sites import EditLinear, find_site

from conftest import CLASSES, DOMAINS, FAMILY_CONFIGS, assert_bit_identical, hf_tiny, snapshot


HF = ["hf-clip", "hf-siglip"]
FAMILIES = [*FAMILY_CONFIGS, *HF]
FAST = dict(method="text", class_templates=("a {c}.",), progress=False)


def request():
    return ForgetRequest(CLASSES, DOMAINS, forget_classes=["dog"], templates=["a {d} of a {c}."])


_CACHE = {}


def build(name):
    """(model, tokenizer, images, tokens, snapshot), built once per session."""
    if name not in _CACHE:
        if name in HF:
            model, tok = hf_tiny(name)
        else:
            torch.manual_seed(0)
            model, tok = open_clip.create_model(name).eval(), open_clip.get_tokenizer(name)
            with torch.no_grad():  # open_clip leaves CoCa's text_decoder.text_projection uninitialised (torch.empty)
                for p in model.parameters():
                    p.nan_to_num_(0.0, 0.0, 0.0)
        from lightning_unlearn.encoders import image_io
        size, _, _ = image_io(model)
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        tokens = tokenize(tok, ["a photo of a dog", "a sketch of a cat"], "cpu")
        _CACHE[name] = (model, tok, images, tokens, snapshot(model))
    return _CACHE[name]


def outputs(model, images, tokens):
    with torch.no_grad():
        return encode_image(model, images), encode_text(model, tokens)


def max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.fixture(params=FAMILIES)
def family(registered, request):
    model, tok, images, tokens, snap = build(request.param)
    yield request.param, model, tok, images, tokens, snap
    restore_(model)
    model.load_state_dict(snap)


def test_both_towers_edit_fold_restore(family):
    name, model, tok, images, tokens, snap = family
    before = outputs(model, images, tokens)
    unlearn_(model, tok, request(), towers=("image", "text"), **FAST)
    injected = outputs(model, images, tokens)
    assert max_diff(injected, before) > 1e-3  # the edit acts on both towers
    folded = copy.deepcopy(model)
    originals = fold_(folded)
    assert not edits(folded) and not any(isinstance(m, EditLinear) for m in folded.modules())
    assert max_diff(outputs(folded, images, tokens), injected) <= 1e-5
    restore_(model)
    assert_bit_identical(model, snap)  # no leftover keys from an installed layer either
    assert max_diff(outputs(model, images, tokens), before) == 0.0
    folded.load_state_dict(originals, strict=False)  # fold's way back covers the tensors it changed
    assert {k for k in originals} <= set(snap)


def test_towers_without_a_projection_get_a_layer_that_restore_removes(registered):
    for name in ["lu-fam-noproj", "hf-siglip"] if _hf() else ["lu-fam-noproj"]:
        model, tok, images, tokens, snap = build(name)
        site = find_site(model, "image")
        assert site.slot is not None and site.slot.installed is None  # nothing installed by looking
        assert set(model.state_dict()) == set(snap)
        unlearn_(model, tok, request(), **FAST)
        assert isinstance(find_site(model, "image").slot.installed, EditLinear)
        assert not find_site(model, "image").module.weight.requires_grad
        restore_(model)
        assert find_site(model, "image").slot.installed is None
        assert_bit_identical(model, snap)
    model = build("lu-fam-classifier")[0]
    assert find_site(model, "image").module is model.visual.trunk.get_classifier()  # EVA-style: no new layer


def test_alpha_zero_changes_nothing(family):
    name, model, tok, images, tokens, snap = family
    before = outputs(model, images, tokens)
    unlearn_(model, tok, request(), towers=("image", "text"), alpha=0.0, **FAST)
    assert max_diff(outputs(model, images, tokens), before) <= 1e-6
    restore_(model)
    assert_bit_identical(model, snap)


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_open_clip_export_reloads_without_the_library(registered, name, tmp_path):
    model, tok, images, tokens, snap = build(name)
    unlearn_(model, tok, request(), towers=("image", "text"), **FAST)
    injected = outputs(model, images, tokens)
    out = save_folded(model, open_clip.get_model_config(name), tmp_path / "folded")
    edit_path = save_edit(model, tmp_path / "edit.safetensors")
    restore_(model)
    reloaded = open_clip.create_model(f"local-dir:{out}").eval()
    assert max_diff(outputs(reloaded, images, tokens), injected) <= 1e-5
    assert not edits(reloaded) and not any(isinstance(m, EditLinear) for m in reloaded.modules())
    if name == "lu-fam-noproj":  # the folded tower is open_clip's own linear projection head
        cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
        assert (cfg["timm_proj"], cfg["timm_proj_bias"]) == ("linear", False)
        assert type(reloaded.visual.head.proj) is nn.Linear
    apply_edit_file_(model, edit_path)  # the edit artifact re-applies to the original weights
    assert max_diff(outputs(model, images, tokens), injected) <= 1e-5
    restore_(model)
    assert_bit_identical(model, snap)


def _hf():
    try:
        import transformers  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("name", HF)
def test_transformers_export_reloads_with_from_pretrained(registered, name, tmp_path):
    model, tok, images, tokens, snap = build(name)
    towers = ("image", "text") if name == "hf-clip" else ("text",)
    unlearn_(model, tok, request(), towers=towers, **FAST)
    injected = outputs(model, images, tokens)
    out = save_pretrained_folded(model, tmp_path / "folded")
    restore_(model)
    reloaded = type(model).from_pretrained(str(out)).eval()
    assert max_diff(outputs(reloaded, images, tokens), injected) <= 1e-5
    assert set(reloaded.state_dict()) == set(snap)
    if name == "hf-siglip":  # the image edit has no place in a stock SiglipModel: refused, nothing written
        unlearn_(model, tok, request(), **FAST)
        with pytest.raises(ArtifactError, match=r"image edit of this SiglipModel lives in a layer .* save_edit"):
            save_pretrained_folded(model, tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
        restore_(model)
    assert_bit_identical(model, snap)


def test_multimodal_prototypes_run_through_the_transformers_adapter(registered):
    pytest.importorskip("transformers")
    model, tok, images, tokens, snap = build("hf-siglip")
    result = unlearn_(model, tok, request(), class_templates=("a {c}.",), proto_steps=2, n_prototypes=1,
                      progress=False)
    assert result.stats["image"]["n_prototypes"] == len(request().forget_cells)
    assert [n for n, _ in edit_modules(model)] == ["vision_model.head.edit_proj.weight"]
    restore_(model)
    assert_bit_identical(model, snap)


class Holder(L.LightningModule):
    """A user's module that keeps a CLIP model of any family and its tokenizer."""

    def __init__(self, clip, tokenizer):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.clip = clip
        self.tokenizer = tokenizer


def test_the_callback_and_the_module_find_every_family(family):
    name, model, tok, images, tokens, snap = family
    expected = copy.deepcopy(model)
    unlearn_(expected, tok, request(), **FAST)
    holder = Holder(model, tok)
    NullspaceUnlearning(request(), **{k: v for k, v in FAST.items() if k != "progress"}).setup(
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False), holder, "test")
    assert [n.removeprefix("backbone.clip.") for n, _ in edit_modules(holder)] == [n for n, _ in edit_modules(expected)]
    assert max_diff(outputs(model, images, tokens), outputs(expected, images, tokens)) <= 1e-5
    restore_(model)
    module = CLIPUnlearning(request(), model=model, tokenizer=tok, unlearn={"method": "text", "class_templates": ["a {c}."]}, progress=False)
    module.setup("test")
    assert len(edits(module.clip)) == len(edits(expected))
    assert max_diff(outputs(module.clip, images, tokens), outputs(expected, images, tokens)) <= 1e-5
    restore_(model)
    assert_bit_identical(model, snap)
