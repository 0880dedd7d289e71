"""Where an edit goes (lightning_unlearn.sites): each tower's projection site on the random-init
open_clip zoo (tests/conftest.py), its pooled features, and the errors for models and towers that
have no supported site."""
import copy

import open_clip
import pytest
import torch
import torch.nn.functional as Fn
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn

from lightning_unlearn import ForgetRequest, UnsupportedModelError, edits, unlearn_
from lightning_unlearn.sites import find_site

from conftest import ARCHS, CLASSES, DOMAINS, cached

FAST = dict(class_templates=("a {c}.",), progress=False)  # one template each: fast text encoding


def req(forget="dog"):
    return ForgetRequest(CLASSES, DOMAINS, forget_classes=[forget], templates=["a {d} of a {c}."])


@pytest.mark.parametrize("zoo", list(ARCHS), indirect=True)
def test_pooled_site_features_are_the_projection_input(zoo):
    """site.pooled(x) through the site's weight (and bias) reproduces encode_image(x)."""
    s = find_site(zoo.model, "image")
    W = getattr(s.module, s.weight)
    with torch.no_grad():
        pooled = s.pooled(zoo.images)
        out = pooled @ W if s.layout == "param" else Fn.linear(pooled, W, getattr(s.module, s.bias) if s.bias else None)
        torch.testing.assert_close(out, zoo.model.encode_image(zoo.images), atol=1e-5, rtol=1e-5)
    assert pooled.shape == (len(zoo.images), s.dims[0])


def test_tower_types_are_the_ones_claimed(registered):
    kinds = {name: type(cached(name).model.visual) for name in ARCHS}
    assert kinds["ViT-B-32"] is VisionTransformer and kinds["RN50"] is ModifiedResNet
    assert kinds["lu-test-timm-vit"] is TimmModel and kinds["lu-test-timm-mlp"] is TimmModel
    assert type(cached("lu-test-custom-text").model).__name__ == "CustomTextCLIP"
    assert type(cached("lu-test-custom-text").model.text.text_projection) is nn.Linear


@pytest.mark.parametrize("zoo", ["world-clip"], indirect=True)
@pytest.mark.parametrize("private", ["_embeds", "_pool"])
def test_a_vit_without_open_clips_private_pooling_is_refused_clearly(zoo, private, monkeypatch):
    monkeypatch.setattr(VisionTransformer, private, None)
    with pytest.raises(UnsupportedModelError, match=rf"no \['{private}'\].*open_clip_torch>=3,<4"):
        find_site(zoo.model, "image")
    with pytest.raises(UnsupportedModelError, match=private):
        unlearn_(zoo.model, zoo.tokenizer, req(), method="text", **FAST)
    assert not edits(zoo.model)


def test_unsupported_models_raise_listing_what_is_supported(registered):
    tok = open_clip.get_tokenizer("world-clip")
    supported = (r"supported: open_clip CLIP, CustomTextCLIP or CoCa with a visual tower of type \['ModifiedResNet', "
                 r"'TimmModel', 'VisionTransformer'\].*transformers CLIPModel or SiglipModel")
    with pytest.raises(UnsupportedModelError, match=r"cannot edit a model of type Linear; " + supported):
        unlearn_(nn.Linear(4, 4), tok, req(), progress=False)
    coca = open_clip.create_model("lu-test-coca")  # CoCa is supported (tests/test_families.py): both towers found
    assert type(coca).__name__ == "CoCa"
    assert find_site(coca, "image").module is coca.visual and find_site(coca, "text").module is coca.text
    assert issubclass(UnsupportedModelError, TypeError)


@pytest.mark.parametrize("zoo", ["lu-test-custom-text"], indirect=True)
def test_unsupported_towers_raise_before_any_edit(zoo):
    model = copy.deepcopy(zoo.model)

    class OtherText(nn.Module):
        def forward(self, text):
            return torch.zeros(len(text), 64)

    model.text = OtherText()
    with pytest.raises(UnsupportedModelError, match=r"text-side edits support the built-in text tower only, not "
                                                    r"OtherText; edit the image tower \(towers=\('image',\)\)"):
        unlearn_(model, zoo.tokenizer, req(), method="text", towers=("image", "text"), progress=False)
    assert not edits(model)  # the image tower was not edited either
    model.visual = nn.Identity()
    with pytest.raises(UnsupportedModelError, match=r"cannot edit a tower of type Identity; supported"):
        unlearn_(model, zoo.tokenizer, req(), method="text", progress=False)
    no_proj = copy.deepcopy(zoo.model)
    no_proj.visual.proj = None
    with pytest.raises(UnsupportedModelError, match=r"has no projection \(`proj` is None\)"):
        unlearn_(no_proj, zoo.tokenizer, req(), method="text", progress=False)
