"""Issue 4's targets on the embedded model: one request per paradigm, library defaults (method
"multimodal"). The same code path as ``benchmarks/unlearning.py --quick``."""
import pytest

from benchmarks.unlearning import QUICK, measure, prepare
from lightning_unlearn import ForgetRequest, restore_, unlearn_

POINTS = 100.0


@pytest.fixture(scope="module")
def setup():
    return prepare(n_per_cell=20)


def _run(setup, paradigm):
    emb, batches, colour_T = setup
    kw = dict(QUICK)[paradigm]
    request = ForgetRequest(emb.classnames, emb.domains, **kw)
    before = measure(emb.model, emb, batches, request, colour_T)
    unlearn_(emb.model, emb.tokenizer, request, progress=False)
    try:
        after = measure(emb.model, emb, batches, request, colour_T)
    finally:
        restore_(emb.model)
    drop = {k: POINTS * (before[k] - after[k]) for k in before if before[k] is not None}
    return before, after, drop


def test_global(setup):
    before, after, drop = _run(setup, "global")
    assert before["forget_acc"] > 0.9
    assert after["forget_acc"] <= 0.03
    assert drop["retain_acc"] <= 0.5
    assert drop["unrelated_acc"] <= 1.0


def test_domain_specific(setup):
    before, after, drop = _run(setup, "domain-specific")
    assert before["forget_acc"] > 0.9
    assert after["forget_acc"] <= 0.05
    assert drop["retain_acc"] <= 2.0
    assert drop["same_class_other_domains_acc"] <= 2.0
    assert drop["unrelated_acc"] <= 1.0


def test_whole_domain(setup):
    emb = setup[0]
    before, after, drop = _run(setup, "domain")
    assert before["forget_acc"] > 0.9
    # chance, the floor of a linear map here (README, "Whole domains"); 1e-6: float32 accuracies
    assert after["forget_acc"] <= 1.0 / len(emb.classnames) + 1e-6
    assert drop["retain_acc"] <= 1.0
    assert drop["unrelated_acc"] <= 1.0
