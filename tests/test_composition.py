"""Composed edits on the embedded model: every request of a chain stays forgotten whatever the order,
an edit that later edits need cannot be removed alone, and a whole-domain edit never sends its images
to a class that another edit forgets."""
import pytest
import torch

from lightning_unlearn import EditError, ForgetRequest, cache, edits, remove_edit_, restore_, unlearn_
from lightning_unlearn.data.datasets import rendered_batches
from lightning_unlearn.compose import chain, dependents
from lightning_unlearn.embedded import load_embedded
from lightning_unlearn.stack import edit_modules
from lightning_unlearn.zeroshot import evaluate

CHEAP = dict(progress=False, n_prototypes=1, proto_steps=2)  # the bookkeeping, not the quality


@pytest.fixture(scope="module")
def world():
    with cache.use(cache.Cache()):  # this module's own prototypes
        e = load_embedded()
        yield e, rendered_batches("test", 10, e.preprocess)


@pytest.fixture
def emb(world):
    yield world[0]
    restore_(world[0].model)


def requests(e):
    C, D = e.classnames, e.domains
    return {"global": ForgetRequest(C, D, forget_classes=["star"]),
            "domain-specific": ForgetRequest(C, D, forget_classes=["heart"], forget_domains=["sketch"]),
            "domain-specific 2": ForgetRequest(C, D, forget_classes=["arrow"], forget_domains=["cartoon"]),
            "domain-specific 3": ForgetRequest(C, D, forget_classes=["arrow"], forget_domains=["sketch"]),
            "domain": ForgetRequest(C, D, forget_domains=["painting"])}


@pytest.mark.parametrize("order", [("global", "domain-specific"), ("domain-specific", "global")])
def test_global_and_domain_specific_requests_compose_in_either_order(world, emb, order):
    R = requests(emb)
    before = evaluate(emb.model, emb.tokenizer, emb.classnames, emb.templates, world[1], emb.domains, progress=False)
    names = [unlearn_(emb.model, emb.tokenizer, R[k], compose=i > 0, progress=False).name for i, k in enumerate(order)]
    after = evaluate(emb.model, emb.tokenizer, emb.classnames, emb.templates, world[1], emb.domains, progress=False)
    forgotten = {c for k in order for c in R[k].forget_cells}
    for k in order:  # each request of the chain, to its own target (the composed failure left 1.00 here)
        assert max(after["cells"][c] for c in R[k].forget_cells) <= 0.1, (k, order)
    drops = [before["cells"][c] - after["cells"][c] for c in before["cells"] if c not in forgotten]
    assert sum(drops) / len(drops) <= 0.01 and max(drops) <= 0.1
    # the domain-specific edit sits below the global one, on the image features it was computed on
    ds = names[order.index("domain-specific")]
    assert edits(emb.model)[0] == ds


def test_an_edit_that_a_later_edit_was_computed_on_cannot_be_removed_alone(emb):
    R = requests(emb)
    a = unlearn_(emb.model, emb.tokenizer, R["domain-specific"], method="text", progress=False).name
    b = unlearn_(emb.model, emb.tokenizer, R["domain-specific 3"], method="text", compose=True, progress=False).name
    g = unlearn_(emb.model, emb.tokenizer, R["global"], method="text", compose=True, progress=False).name
    assert dependents(emb.model, a) == [b] and dependents(emb.model, b) == [] and dependents(emb.model, g) == []
    kept = chain(emb.model, "image")
    with pytest.raises(EditError, match=rf"'{a}' cannot be removed alone: \['{b}'\] were computed on top of it.*"
                                        r"cascade=True"):
        remove_edit_(emb.model, a)
    assert chain(emb.model, "image") == kept  # refused: nothing changed
    assert remove_edit_(emb.model, a, cascade=True) == [a, b] and edits(emb.model) == [g]
    # a global edit holds on any input: the edits below it can go
    c = unlearn_(emb.model, emb.tokenizer, R["domain-specific"], method="text", compose=True, progress=False).name
    assert edits(emb.model) == [c, g] and remove_edit_(emb.model, c) == [c]


def test_a_whole_domain_edit_avoids_classes_other_edits_forget(emb):
    R = requests(emb)
    w = unlearn_(emb.model, emb.tokenizer, R["domain"], **CHEAP)
    sink = w.stats["image"]["sink"]
    assert [e.info.get("sink") for _, e in edit_modules(emb.model)] == [sink]
    forget_sink = ForgetRequest(emb.classnames, emb.domains, forget_classes=[sink])
    with pytest.raises(EditError, match=rf"forgets '{sink}', the class that the whole-domain edit .* sends its "
                                        r"domain's images to.*other order"):
        unlearn_(emb.model, emb.tokenizer, forget_sink, method="text", compose=True, progress=False)
    assert edits(emb.model) == [w.name]
    restore_(emb.model)  # the other order: the domain goes to another class
    unlearn_(emb.model, emb.tokenizer, forget_sink, method="text", progress=False)
    w2 = unlearn_(emb.model, emb.tokenizer, R["domain"], compose=True, **CHEAP)
    assert w2.stats["image"]["sink"] != sink
    assert edits(emb.model)[0] == w2.name  # below the global edit


def test_composed_edits_restore_bit_identically(emb):
    snapshot = {k: v.clone() for k, v in emb.model.state_dict().items()}
    R = requests(emb)
    unlearn_(emb.model, emb.tokenizer, R["global"], method="text", progress=False)
    unlearn_(emb.model, emb.tokenizer, R["domain-specific"], method="text", compose=True, progress=False)
    restore_(emb.model)
    sd = emb.model.state_dict()
    assert set(sd) == set(snapshot) and all(torch.equal(sd[k], snapshot[k]) for k in sd)


def test_a_checkerboard_of_forgotten_cells_is_refused_and_its_rectangle_is_not(emb):
    R = requests(emb)
    unlearn_(emb.model, emb.tokenizer, R["domain-specific"], method="text", progress=False)  # heart in sketches
    kept = chain(emb.model, "image")
    with pytest.raises(EditError, match=r"forget \('heart', 'sketch'\) and \('arrow', 'cartoon'\) but keep "
                                        r"\('heart', 'cartoon'\) and \('arrow', 'sketch'\).*whole rectangle"):
        unlearn_(emb.model, emb.tokenizer, R["domain-specific 2"], method="text", compose=True, progress=False)
    assert chain(emb.model, "image") == kept
    unlearn_(emb.model, emb.tokenizer, R["domain-specific 3"], method="text", compose=True, progress=False)  # same domain
    assert len(edits(emb.model)) == 2


@pytest.mark.parametrize("other", ["domain-specific", "domain 2"])
def test_a_whole_domain_edit_with_another_feature_bound_edit_is_refused(emb, other):
    R = requests(emb) | {"domain 2": ForgetRequest(emb.classnames, emb.domains, forget_domains=["photo"])}
    unlearn_(emb.model, emb.tokenizer, R["domain"], **CHEAP)
    fix = r"forget_domains=\['painting', 'photo'\]" if other == "domain 2" else r"restore_\(model\) and keep one"
    with pytest.raises(EditError, match=rf"cannot be composed.*whole-domain edit stacked.*24-84 points.*{fix}"):
        unlearn_(emb.model, emb.tokenizer, R[other], compose=True, **CHEAP)
    assert len(edits(emb.model)) == 1
