"""The fine-tuning baseline stays the official recipe: which embeddings carry gradient in its loss,
how it picks the tensors it trains, and that a failed epoch is rolled back (model and optimiser)."""
import math

import torch
from torch import nn

from benchmarks import finetune_baseline as fb
from lightning_unlearn import ForgetRequest


class Towers(nn.Module):
    """Linear stand-ins for CLIP's towers that record every call and whether grad was enabled."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = nn.Linear(12, 5)
        self.transformer = nn.Linear(3, 5)
        self.calls = []

    def encode_image(self, x):
        out = self.visual(x.flatten(1))
        self.calls.append(("image", torch.is_grad_enabled(), out))
        return out

    def encode_text(self, t):
        out = self.transformer(t)
        self.calls.append(("text", torch.is_grad_enabled(), out))
        return out


def test_loss_noisy_embedding_is_a_fixed_target_text_and_clean_image_carry_gradient():
    m = Towers()
    x = torch.rand(4, 3, 2, 2)
    t = torch.rand(4, 3)
    loss = fb.lipschitz_loss(m, t, x, sigma=0.3, n_samples=3)
    kinds = [(k, g, o.requires_grad) for k, g, o in m.calls]
    assert kinds[0] == ("text", True, True) and kinds[1] == ("image", True, True)  # E_t(t), E_i(x)
    assert kinds[2:] == [("image", False, False)] * 3  # E_i(x') once per noise sample, no graph
    loss.backward()
    assert m.transformer.weight.grad.abs().sum() > 0 and m.visual.weight.grad.abs().sum() > 0


def test_loss_value_is_the_official_formula_on_raw_embeddings():
    m = Towers()
    x, t = torch.rand(3, 3, 2, 2), torch.rand(3, 3)
    torch.manual_seed(1)
    loss = fb.lipschitz_loss(m, t, x, sigma=0.5, n_samples=2)
    torch.manual_seed(1)
    with torch.no_grad():
        et, ei, lo, hi = m.transformer(t), m.visual(x.flatten(1)), x.min(), x.max()
        want = 0.0
        for _ in range(2):
            x2 = (x + 0.5 * torch.randn_like(x)).clamp(lo, hi)  # clamped to the batch's own range
            e2 = m.visual(x2.flatten(1))
            want += (((et - e2).norm(dim=1) + (ei - e2).norm(dim=1)) / (2 * (x - x2).flatten(1).norm(dim=1))).sum()
    assert math.isclose(float(loss), float(want) / 4, rel_tol=1e-5)


def test_top_tensors_per_tower_by_mean_absolute_gradient():
    m = nn.Module()
    m.visual = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(4, 4)})
    m.transformer = nn.ModuleDict({"c": nn.Linear(2, 2)})
    m.token_embedding = nn.Embedding(3, 2)
    grads = {"visual.a.weight": 1.0, "visual.a.bias": 3.0, "visual.b.weight": 2.0, "visual.b.bias": 0.5,
             "transformer.c.weight": 0.1, "transformer.c.bias": 0.2, "token_embedding.weight": 99.0}
    for n, p in m.named_parameters():
        signs = torch.tensor([1.0, -1.0]).repeat(p.numel() // 2 + 1)[:p.numel()].view_as(p)
        p.grad = torch.full_like(p, grads[n]) * signs  # mixed signs: the score is the mean of |grad|
    chosen = fb.top_tensors(m, 2)
    # mean |grad|, not sum: the large b.weight (16 entries of 2.0) loses to a.bias (2 entries of 3.0)
    assert chosen == {"visual.a.bias", "visual.b.weight", "transformer.c.bias", "transformer.c.weight"}
    fb.mask_gradients_(m, chosen)
    assert m.token_embedding.weight.grad is None and m.visual.a.weight.grad is None
    assert m.visual.b.weight.grad is not None


def test_failed_epochs_roll_back_model_and_optimiser_and_advance_the_schedule(emb, monkeypatch):
    """Synthetic accuracy that never falls: every epoch trains, fails and is rolled back, so each
    epoch starts from the original weights; k and sigma advance each time; the run ends with the
    schedule and returns the model of the last failed epoch (as the official loop does)."""
    monkeypatch.setattr(fb, "synthesize_forget_images",
                        lambda model, T, targets, labels, recipe, gen: torch.randn(len(labels), 3, 32, 32))
    monkeypatch.setattr(fb, "synthetic_accuracy", lambda *a: 1.0)
    seen, calls = [], []
    original_top, original_loss = fb.top_tensors, fb.lipschitz_loss
    monkeypatch.setattr(fb, "top_tensors", lambda model, k: seen.append(k) or original_top(model, k))

    def loss(m, t, x, s, n):
        calls.append((s, {k: v.detach().clone() for k, v in m.state_dict().items()}))
        return original_loss(m, t, x, s, n)
    monkeypatch.setattr(fb, "lipschitz_loss", loss)
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    before = {k: v.clone() for k, v in emb.model.state_dict().items()}
    edited, info = fb.finetune_unlearn(emb.model, emb.tokenizer, request, emb.templates,
                                       fb.Recipe(lr=1e-2, n_images=4, n_samples=1))
    assert info["rollbacks"] == info["epochs"] == len(fb.SIGMAS) and not info["converged"]
    assert seen == [25 + k for k in fb.TOPK_STEPS] and [s for s, _ in calls] == list(fb.SIGMAS)
    for _, state in calls:  # every epoch started from the original weights: the model was rolled back
        assert all(torch.equal(state[k], v) for k, v in before.items())
    assert info["optimizer_steps_kept"] == 0  # and so was the optimiser state
    assert any(not torch.equal(edited.state_dict()[k], v) for k, v in before.items())  # last failed epoch
    assert all(torch.equal(emb.model.state_dict()[k], v) for k, v in before.items())  # input untouched


def test_a_successful_step_is_kept_and_stops_at_the_criterion(emb, monkeypatch):
    monkeypatch.setattr(fb, "synthesize_forget_images",
                        lambda model, T, targets, labels, recipe, gen: torch.randn(len(labels), 3, 32, 32))
    accs = iter([1.0, 0.5, 0.1])  # before, epoch 1, epoch 2
    monkeypatch.setattr(fb, "synthetic_accuracy", lambda *a: next(accs))
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"], forget_domains=["sketch"])
    edited, info = fb.finetune_unlearn(emb.model, emb.tokenizer, request, emb.templates,
                                       fb.Recipe(lr=1e-3, n_images=4, n_samples=1))
    assert info["converged"] and info["epochs"] == 2 and info["rollbacks"] == 0 and info["steps"] == 2
    assert info["optimizer_steps_kept"] == 2
    changed = [k for k, v in emb.model.state_dict().items() if not torch.equal(edited.state_dict()[k], v)]
    assert changed and all(k.startswith(("visual.", "transformer.")) for k in changed)
    assert any(k.startswith("transformer.") for k in changed) and any(k.startswith("visual.") for k in changed)
