"""Linear probes and k-nearest neighbours on image features, as the depth audit
(:mod:`~lightning_unlearn.audit`) and the benchmarks fit them.

Probes are multinomial logistic regressions on standardised features (weight decay, full-batch
L-BFGS, float64, from zero: deterministic); the binary probe weights both sides equally.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def fit_probe(X: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float = 1e-3,
              balanced: bool = False, max_iter: int = 200) -> Callable[[torch.Tensor], torch.Tensor]:
    """A multinomial logistic regression on standardised ``X``.

    Minimises the (class-balanced if ``balanced``) cross-entropy plus ``weight_decay / 2 * |W|^2``
    with full-batch L-BFGS in float64, from zero: deterministic.

    Args:
        X: the features, ``(N, width)``.
        y: their labels, ``(N,)`` in ``[0, n_classes)``.
        n_classes: the number of labels.
        weight_decay: the L2 penalty on the weights.
        balanced: weight every class equally instead of every sample.
        max_iter: L-BFGS iterations.

    Returns:
        ``predict(X) -> labels``.
    """
    X = X.double()
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-8)
    Z = (X - mu) / sd
    counts = torch.bincount(y, minlength=n_classes).double()
    w = (1.0 / (n_classes * counts.clamp_min(1)))[y] if balanced else torch.full((len(y),), 1.0 / len(y),
                                                                                  dtype=torch.float64)
    W = torch.zeros(Z.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (F.cross_entropy(Z @ W + b, y, reduction="none") * w).sum() + 0.5 * weight_decay * W.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    W, b = W.detach(), b.detach()
    return lambda X: (((X.double() - mu) / sd) @ W + b).argmax(-1)


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-class recall over the classes present in ``target``."""
    recalls = [float((pred[target == c] == c).double().mean()) for c in target.unique()]
    return sum(recalls) / len(recalls)


def binary_probe(fit_x: torch.Tensor, fit_mask: torch.Tensor, test_x: torch.Tensor, test_mask: torch.Tensor,
                 weight_decay: float = 1e-3) -> float:
    """Balanced accuracy of a class-balanced linear probe "mask vs the rest" fitted on ``fit_x`` and
    scored on ``test_x`` (chance 0.5)."""
    probe = fit_probe(fit_x, fit_mask.long(), 2, weight_decay, balanced=True)
    return balanced_accuracy(probe(test_x), test_mask.long())


def knn_predict(memory: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_classes: int,
                k: int = 10) -> torch.Tensor:
    """Majority vote of the ``k`` cosine-nearest ``memory`` rows (ties: the larger summed similarity)."""
    sim = F.normalize(query.double(), dim=-1) @ F.normalize(memory.double(), dim=-1).T
    top, idx = sim.topk(min(k, len(memory)), dim=-1)
    votes = torch.zeros(len(query), n_classes, dtype=torch.float64)
    votes.scatter_add_(1, labels[idx], 1 + 1e-3 * top)
    return votes.argmax(-1)


def accuracy(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Accuracy of ``pred`` on the rows ``mask`` selects (None when it selects none)."""
    return float((pred[mask] == target[mask]).double().mean()) if mask.any() else None


def probe_metrics(fit_x: torch.Tensor, fit, test_x: torch.Tensor, test, forget: torch.Tensor, n_classes: int,
                  k: int = 10, weight_decay: float = 1e-3) -> dict:
    """Binary probe, multi-class probe and k-NN on one layer.

    Args:
        fit_x, test_x: the layer's features of the fit and test images.
        fit, test: their :class:`~lightning_unlearn.audit.Features` (``cls`` / ``dom`` labels).
        forget: the C x D mask of the forgotten cells.
        n_classes: C.
        k: neighbours of the k-NN vote.
        weight_decay: the probes' L2 penalty.

    Returns:
        ``probe_balanced_acc``, ``probe_recall`` / ``probe_retain_acc`` and ``knn_recall`` /
        ``knn_retain_acc`` (None where a set is empty).
    """
    f_fit, f_test = forget[fit.cls, fit.dom], forget[test.cls, test.dom]
    multi = fit_probe(fit_x, fit.cls, n_classes, weight_decay)(test_x)
    knn = knn_predict(fit_x, fit.cls, test_x, n_classes, k)
    return {"probe_balanced_acc": binary_probe(fit_x, f_fit, test_x, f_test, weight_decay),
            "probe_recall": accuracy(multi, test.cls, f_test), "probe_retain_acc": accuracy(multi, test.cls, ~f_test),
            "knn_recall": accuracy(knn, test.cls, f_test), "knn_retain_acc": accuracy(knn, test.cls, ~f_test)}
