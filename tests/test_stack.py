"""The edit stack (lightning_unlearn.stack): one EditStack per edited tensor owns its edits, their names,
the original tensor and the state_dict keys of its edits; inserting at a position, removing one and
removing all are exact; finding a site allocates nothing, and one unlearn_ call looks each tower up once."""
import sys

import open_clip
import pytest
import torch

from lightning_unlearn import ForgetRequest, edits, fold_, inject_, restore_, unlearn_
from lightning_unlearn.sites import EditLinear, find_site
from lightning_unlearn.stack import EditStack, ProjectorEdit, projection_stacks, site_stacks, stacks, stored_edits

from conftest import CLASSES, DOMAINS, assert_bit_identical

FAST = {"method": "text", "class_templates": ("a {c}.",), "progress": False}


def req(forget="dog", **kw):
    return ForgetRequest(CLASSES, DOMAINS, forget_classes=[forget], templates=["a {d} of a {c}."], **kw)


def count_find_site(monkeypatch) -> list[str]:
    """The towers ``find_site`` is asked for from now on, wherever it is looked up."""
    calls = []

    def counting(model, tower):
        calls.append(tower)
        return find_site(model, tower)
    for module in [m for n, m in sys.modules.items() if n.startswith("lightning_unlearn")]:
        if getattr(module, "find_site", None) is find_site:
            monkeypatch.setattr(module, "find_site", counting)
    return calls


@pytest.mark.parametrize("zoo", ["world-clip", "RN50"], indirect=True)  # RN50: a projection with a bias
def test_each_edited_tensor_is_one_stack_with_its_names_original_and_keys(zoo):
    model, tok = zoo.model, zoo.tokenizer
    a = unlearn_(model, tok, req("dog"), **FAST).name
    b = unlearn_(model, tok, req("bird"), compose=True, **FAST).name
    found = stacks(model)
    assert [st.key for st in found] == list(projection_stacks(model, ("image",)))  # weight (and bias)
    assert [st.key for st in site_stacks(find_site(model, "image"))] == [st.tensor for st in found]
    sd = model.state_dict()
    for st in found:
        assert st.names == [a, b] and [i["name"] for i in st.infos] == [a, b]
        assert torch.equal(st.original, zoo.snapshot[st.key])
    keys = [k for st in found for k in st.edit_keys()]
    assert len(keys) == 4 * len(found)  # two edits, each a map and its extra state
    assert set(keys) == {k for k in sd if ".parametrizations." in k and not k.endswith(".original")}
    saved = stored_edits(sd)
    assert set(saved) == {k for k in keys if k.endswith("P.weight")}
    assert [info["name"] for info, _ in saved.values()] == [a, b] * len(found)


@pytest.mark.parametrize("zoo", ["world-clip"], indirect=True)
def test_insert_at_a_position_remove_one_remove_all_and_fold(zoo):
    model = zoo.model
    W = model.visual.proj.detach().clone()
    st = EditStack(model.visual, "proj", "visual.proj")
    assert st.edits == [] and st.original is model.visual.proj and st.edit_keys() == []

    def edit(name, scale):
        e = ProjectorEdit(W.shape[1], "joint", "param", {"name": name})
        with torch.no_grad():
            e.P.weight.mul_(scale)
        return e
    st.insert(edit("a", 2.0))
    st.insert(edit("b", 3.0))
    st.insert(edit("c", 0.5), position=1)
    assert st.names == ["a", "c", "b"] == edits(model)
    assert st.edit_keys()[0] == "visual.parametrizations.proj.0.P.weight"
    torch.testing.assert_close(model.visual.proj, W * 3.0)
    assert [e.info["name"] for e in st.remove({"c"})] == ["c"] and st.names == ["a", "b"]
    torch.testing.assert_close(model.visual.proj, W * 6.0)
    assert torch.equal(st.original, W)
    st.clear()
    assert st.edits == [] and edits(model) == []
    assert_bit_identical(model, zoo.snapshot)
    st.insert(edit("d", 2.0))
    original = st.fold()
    assert torch.equal(original, W) and st.edits == [] and model.visual.proj.requires_grad
    torch.testing.assert_close(model.visual.proj, W * 2.0)
    assert not any(type(m).__name__.startswith("Parametrized") for m in model.modules())


@pytest.mark.parametrize("zoo", ["world-clip", "lu-test-custom-text"], indirect=True)
def test_one_unlearn_call_finds_each_towers_site_once(zoo, monkeypatch):
    """Global (two towers), domain-specific (multimodal, composed) and deep: one lookup per tower."""
    calls = count_find_site(monkeypatch)
    model, tok = zoo.model, zoo.tokenizer
    tiny = {"class_templates": ("a {c}.",), "progress": False, "proto_steps": 2, "n_prototypes": 1}
    for request, kwargs in [(req("dog"), {"towers": ("image", "text")}),
                            (req("cat", forget_domains=["sketch"]), {"compose": True})]:
        calls.clear()
        unlearn_(model, tok, request, **tiny, **kwargs)
        assert sorted(calls) == sorted(kwargs.get("towers", ("image",)))
    restore_(model)
    calls.clear()
    unlearn_(model, tok, req("dog"), depth="deep", deep_prototypes=1, **tiny)
    assert calls == ["image"]
    restore_(model)
    with pytest.raises(ValueError, match="`resolved` is the image tower's site, not the text tower's"):
        inject_(model, torch.eye(find_site(model, "text").dims[1]), "text", resolved=find_site(model, "image"))


def test_finding_a_slot_site_makes_nothing_and_the_layer_computed_on_is_installed(registered, monkeypatch):
    torch.manual_seed(0)
    model, tok = open_clip.create_model("lu-fam-noproj").eval(), open_clip.get_tokenizer("lu-fam-noproj")
    made, init = [], EditLinear.__init__
    monkeypatch.setattr(EditLinear, "__init__", lambda self, *a, **kw: made.append(self) or init(self, *a, **kw))
    site = find_site(model, "image")
    assert site.pending and site.dims == (site.slot.dim, site.slot.dim) and site_stacks(site) == [] and not made
    layer = site.module  # made when first needed, once
    assert made == [layer] and site.module is layer and not site.pending and site.slot.installed is None
    inject_(model, torch.eye(site.dims[1]), "image", resolved=site)
    assert site.slot.installed is layer and find_site(model, "image").module is layer and made == [layer]
    restore_(model)
    made.clear()
    calls = count_find_site(monkeypatch)
    unlearn_(model, tok, req(), **FAST)
    assert calls == ["image"] and len(made) == 1 and find_site(model, "image").module is made[0]
    assert [st.key for st in stacks(model)] == ["visual.head.proj.weight"]
    assert "image" not in {t for t, _ in projection_stacks(model).values()}  # the installed layer: not the model's
    fold_(model)
    assert not stacks(model) and type(model.visual.head.proj) is torch.nn.Linear
