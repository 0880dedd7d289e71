"""UnlearningAccuracy: counts per (class, domain) cell, forget / retain / per-domain summaries, the
distributed reduction, the docstring example and bad input."""
import doctest
import math

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

import lightning_unlearn.metrics as metrics
from lightning_unlearn import ForgetRequest, RequestError
from lightning_unlearn.metrics import HIGHER_IS_BETTER, UnlearningAccuracy, forget_mask, sample_masks

CLASSES = ("cat", "dog", "fox")
DOMAINS = ("photo", "sketch")


def batch(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, len(CLASSES), (n,), generator=g)
    dom = torch.randint(0, len(DOMAINS), (n,), generator=g)
    right = torch.rand(n, generator=g) < 0.6
    pred = torch.where(right, cls, (cls + 1) % len(CLASSES))
    return pred, cls, dom


def by_hand(pred, cls, dom, cells):
    """Micro accuracy over the images whose (class, domain) is in ``cells`` (name pairs)."""
    keep = torch.tensor([(CLASSES[c], DOMAINS[d]) in cells for c, d in zip(cls.tolist(), dom.tolist())])
    return float((pred[keep] == cls[keep]).float().mean())


def test_docstring_examples():
    assert doctest.testmod(metrics, raise_on_error=False).failed == 0


def test_domain_specific_request_matches_hand_counts():
    r = ForgetRequest(CLASSES, DOMAINS, forget_classes=["dog"], forget_domains=["sketch"])
    m = UnlearningAccuracy(r)
    pred, cls, dom = batch()
    for i in range(0, len(pred), 64):  # several updates = one big update
        m.update(pred[i:i + 64], cls[i:i + 64], dom[i:i + 64])
    out = m.compute()
    assert out["forget_accuracy"].item() == pytest.approx(by_hand(pred, cls, dom, set(r.forget_cells)))
    assert out["retain_accuracy"].item() == pytest.approx(by_hand(pred, cls, dom, set(r.retain_cells)))
    assert out["same_class_other_domains_accuracy"].item() == pytest.approx(
        by_hand(pred, cls, dom, {("dog", "photo")}))
    assert out["accuracy"].item() == pytest.approx(float((pred == cls).float().mean()))
    for d in DOMAINS:
        assert out[f"accuracy_{d}"].item() == pytest.approx(by_hand(pred, cls, dom, {(c, d) for c in CLASSES}))
    macro = sum(by_hand(pred, cls, dom, {cell}) for cell in r.retain_cells) / len(r.retain_cells)
    assert out["retain_accuracy_macro"].item() == pytest.approx(macro)
    assert out["forget_accuracy_macro"].item() == pytest.approx(out["forget_accuracy"].item())  # one cell
    assert set(out) - {f"accuracy_{d}" for d in DOMAINS} <= set(HIGHER_IS_BETTER)
    assert UnlearningAccuracy.higher_is_better is None and not UnlearningAccuracy.is_differentiable


def test_scores_mask_and_request_agree():
    r = ForgetRequest(CLASSES, DOMAINS, forget_classes=["fox"])
    pred, cls, dom = batch(seed=1)
    scores = torch.nn.functional.one_hot(pred, len(CLASSES)).float() + 0.01 * torch.rand(len(pred), len(CLASSES))
    a, b = UnlearningAccuracy(r), UnlearningAccuracy(forget_mask(r), domains=DOMAINS)
    a.update(scores, cls, dom)
    b.update(pred, cls, dom)
    out_a, out_b = a.compute(), b.compute()
    assert out_a.keys() == out_b.keys() and all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    assert "same_class_other_domains_accuracy" not in out_a  # a global request has no such cells
    assert forget_mask(r).tolist() == [[False, False], [False, False], [True, True]]


def test_states_are_count_tables_summed_across_processes():
    r = ForgetRequest(CLASSES, DOMAINS, forget_domains=["photo"])
    pred, cls, dom = batch(seed=2)
    whole, half0, half1 = UnlearningAccuracy(r), UnlearningAccuracy(r), UnlearningAccuracy(r)
    whole.update(pred, cls, dom)
    half0.update(pred[::2], cls[::2], dom[::2])  # what two ranks see under a DistributedSampler
    half1.update(pred[1::2], cls[1::2], dom[1::2])
    assert whole.correct.shape == (3, 2)
    assert whole._reductions["correct"] is dim_zero_sum and whole._reductions["total"] is dim_zero_sum
    assert torch.equal(half0.correct + half1.correct, whole.correct)
    assert torch.equal(half0.total + half1.total, whole.total)
    half0.merge_state(half1)  # torchmetrics applies the same "sum" reduction
    assert all(torch.equal(half0.compute()[k], whole.compute()[k]) for k in whole.compute())


def test_sets_without_images_are_nan_and_reset_clears():
    r = ForgetRequest(CLASSES, DOMAINS, forget_classes=["dog"], forget_domains=["sketch"])
    m = UnlearningAccuracy(r)
    m.update(torch.tensor([0, 2]), torch.tensor([0, 2]), torch.tensor([0, 0]))  # photos of cat and fox only
    out = m.compute()
    assert math.isnan(out["forget_accuracy"]) and math.isnan(out["accuracy_sketch"])
    assert out["retain_accuracy"] == 1.0
    m.reset()
    assert m.total.sum() == 0


def test_bad_input_is_refused_with_a_fix():
    r = ForgetRequest(CLASSES, DOMAINS, forget_classes=["dog"])
    with pytest.raises(RequestError, match=r"class name\(s\) \['dog'\], which are not in `classnames`"):
        UnlearningAccuracy(r, classnames=["cat", "fox"])
    with pytest.raises(ValueError, match="2-D bool"):
        UnlearningAccuracy(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least one forgotten and one retained"):
        UnlearningAccuracy(torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        UnlearningAccuracy(forget_mask(r), classnames=CLASSES, domains=["photo"])
    with pytest.raises(TypeError, match="ForgetRequest or a bool tensor"):
        UnlearningAccuracy(["dog"])
    m = UnlearningAccuracy(r)
    with pytest.raises(ValueError, match=r"classes must be in \[0, 3\)"):
        m.update(torch.tensor([0]), torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="scores for 4 classes, expected 3"):
        m.update(torch.zeros(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same length"):
        m.update(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0]))


def test_sample_masks_mark_the_forgotten_cells_and_the_forgotten_classes_other_domains():
    labels = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]])  # (class, domain) per image
    r = ForgetRequest(["cat", "dog"], ["photo", "sketch"], forget_classes=["dog"], forget_domains=["photo"])
    forget, same = sample_masks(labels, r)
    assert forget.tolist() == [False, True, False, False] and same.tolist() == [False, False, True, False]
    forget, same = sample_masks(labels, ForgetRequest(["cat", "dog"], ["photo", "sketch"], forget_domains=["sketch"]))
    assert forget.tolist() == [False, False, True, True] and not same.any()  # whole domains: no same-class cells
