"""The quality targets on the embedded model: one request per paradigm, library defaults (method
"multimodal"). The same requests and measure as ``benchmarks/unlearning.py --quick``."""
import os

import pytest
import torch
import torch.nn.functional as F

from lightning_unlearn import ForgetRequest, cache, edits, remove_edit_, restore_, unlearn_, unlearned
from lightning_unlearn.data import QUICK_REQUESTS, rendered_batches
from lightning_unlearn.load import load_clip
from lightning_unlearn.zeroshot import classifier, request_accuracy

POINTS = 100.0


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()  # other modules pin 1 thread; these edits are the suite's longest
    torch.set_num_threads(max(threads, os.cpu_count() or 1))
    # a cache of this module's own: prototypes another module synthesised (one thread: other float
    # rounding) would make these results depend on which test files ran before in the same process
    with cache.use(cache.Cache()):
        torch.manual_seed(0)
        emb = load_clip("embedded")
        yield emb, rendered_batches("test", 20, emb.preprocess), classifier(emb.model, emb.tokenizer, emb.colours,
                                                                            emb.colour_templates)
    torch.set_num_threads(threads)


def _run(setup, paradigm):
    emb, batches, colour_T = setup
    kw = dict(QUICK_REQUESTS)[paradigm]
    request = ForgetRequest(emb.classnames, emb.domains, **kw)
    before = request_accuracy(emb.model, emb, batches, request, colour_T)
    with unlearned(emb.model, emb.tokenizer, request, progress=False):
        after = request_accuracy(emb.model, emb, batches, request, colour_T)
    assert not edits(emb.model)
    drop = {k: POINTS * (before[k] - after[k]) for k in before if before[k] is not None}
    return before, after, drop


# The limits per paradigm: forget accuracy after (at most), drops in points (at most).
# Whole domain: chance, the floor of a linear map here (README, "Where the edit acts"), plus one image
# in 100 (here 20 per cell: 0.105, one painting image over chance, since whole domains keep the retained
# cells' prompt directions, retain_cell_weight; the worst retained cell lost 10 points without them at
# 50 per cell, 2 with them: benchmarks/results/self_check.json); +1e-6 for float32 accuracies.
TARGETS = {
    "global": {"forget": 0.03, "retain_acc": 0.5, "unrelated_acc": 1.0},
    "domain-specific": {"forget": 0.05, "retain_acc": 2.0, "same_class_other_domains_acc": 2.0,
                        "unrelated_acc": 1.0},
    "domain": {"forget": 0.1 + 0.01 + 1e-6, "retain_acc": 1.0, "unrelated_acc": 1.0},
}


# A whole domain (4 prototypes x 30 steps per cell) takes half a minute or more on one core: slow.
PARADIGMS = [pytest.param(p, marks=pytest.mark.slow) if p == "domain" else p for p in TARGETS]


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_targets_are_met(setup, paradigm):
    before, after, drop = _run(setup, paradigm)
    limits = dict(TARGETS[paradigm])
    assert before["forget_acc"] > 0.9
    assert after["forget_acc"] <= limits.pop("forget")
    for key, limit in limits.items():
        assert drop[key] <= limit, f"{key} dropped {drop[key]:.2f} points (limit {limit})"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_whole_domain_targets_hold_at_other_seeds(setup, seed):
    """Whole domains synthesise 4 prototypes x 30 steps per cell. Chosen on every domain and every
    pair of domains at seeds 0, 1 and 2 (README, "Prototype settings per paradigm"): fewer
    prototypes held at seed 0 and lost 2.8-4.3 retain points at seed 1, and the earlier 60 steps
    lost 6.5-7.5 at seed 2. Limits: chance (plus the sweep's worst 0.027 over it) and 1 point."""
    emb, batches, colour_T = setup
    request = ForgetRequest(emb.classnames, emb.domains, **dict(QUICK_REQUESTS)["domain"])
    before = request_accuracy(emb.model, emb, batches, request, colour_T)
    with unlearned(emb.model, emb.tokenizer, request, progress=False, seed=seed):
        after = request_accuracy(emb.model, emb, batches, request, colour_T)
    assert after["forget_acc"] <= 0.13
    assert POINTS * (before["retain_acc"] - after["retain_acc"]) <= 1.0


# --------------------------------------------------------------------------- the default solver: composition, alpha, names


@pytest.mark.slow
def test_several_classes_in_several_domains_lose_far_less_of_their_other_domains(setup):
    """Two classes in two domains: the forgotten cells of one domain share one shift, and the
    text stage protects the classes' other domains. Before, both classes largely went in every
    domain (same-class accuracy 1.00 -> 0.53 here); now 0.95. The limit is that level minus
    slack, not the 2-point target of single cells (not reached for several classes: README)."""
    emb, batches, colour_T = setup
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star", "heart"],
                            forget_domains=["sketch", "cartoon"])
    before = request_accuracy(emb.model, emb, batches, request, colour_T)
    with unlearned(emb.model, emb.tokenizer, request, progress=False):
        after = request_accuracy(emb.model, emb, batches, request, colour_T)
    assert after["forget_acc"] <= 0.05
    assert after["same_class_other_domains_acc"] >= before["same_class_other_domains_acc"] - 0.15
    assert POINTS * (before["retain_acc"] - after["retain_acc"]) <= 2.0


def _forget_acc(setup, request):
    emb, batches, colour_T = setup
    return request_accuracy(emb.model, emb, batches, request, colour_T)["forget_acc"]


@pytest.mark.slow
def test_composed_default_edits_keep_both_forgotten_and_one_is_removable_by_name(setup):
    emb = setup[0]
    snapshot = {k: v.clone() for k, v in emb.model.state_dict().items()}
    A = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    B = ForgetRequest(emb.classnames, emb.domains, forget_classes=[emb.classnames[0]])
    assert A.forget_classes != B.forget_classes
    try:
        ua = unlearn_(emb.model, emb.tokenizer, A, progress=False, name="A")
        ub = unlearn_(emb.model, emb.tokenizer, B, progress=False, compose=True)
        assert ua.config.solver == "two-sided" and edits(emb.model) == ["A", ub.name]
        assert _forget_acc(setup, A) <= 0.05 and _forget_acc(setup, B) <= 0.05
        assert remove_edit_(emb.model, "A") == ["A"] and edits(emb.model) == [ub.name]
        assert _forget_acc(setup, A) >= 0.9, "removing A must bring its class back"
        assert _forget_acc(setup, B) <= 0.1, "removing A must leave B forgotten"
    finally:
        assert restore_(emb.model) == [ub.name]
    sd = emb.model.state_dict()
    assert set(sd) == set(snapshot) and all(torch.equal(sd[k], snapshot[k]) for k in sd)


def _class_score(setup, c: str) -> float:
    """Mean cosine of class ``c``'s test images with its (unedited) zero-shot class vector."""
    emb, batches, _ = setup
    T = classifier(emb.model, emb.tokenizer, emb.classnames, emb.templates)
    i = emb.classnames.index(c)
    with torch.no_grad():
        h = F.normalize(emb.model.encode_image(torch.cat([b[0][b[1] == i] for b in batches])), dim=-1)
    return float((h @ T[:, i]).mean())


def test_intermediate_alpha_under_the_default_solver_forgets_partly(setup):
    emb = setup[0]
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    before, score_before = _forget_acc(setup, request), _class_score(setup, "star")
    with unlearned(emb.model, emb.tokenizer, request, progress=False) as full:
        acc_full, score_full = _forget_acc(setup, request), _class_score(setup, "star")
    with unlearned(emb.model, emb.tokenizer, request, progress=False, alpha=0.5) as half:
        acc_half, score_half = _forget_acc(setup, request), _class_score(setup, "star")
    eye = torch.eye(full.maps["image"].shape[0])
    torch.testing.assert_close(half.maps["image"], eye + 0.5 * (full.maps["image"] - eye), atol=1e-5, rtol=0)
    assert acc_full <= 0.05 < before - 0.5
    # the class score moves part of the way; accuracy (an argmax) flips late, so it may not move yet at 0.5
    assert score_full < score_half < score_before, (score_full, score_half, score_before)
    assert score_before - score_half > 0.1 * (score_before - score_full)
    assert acc_full <= acc_half <= before
