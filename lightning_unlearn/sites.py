"""Where the edit goes: the projection of each open_clip tower, found through a small registry.

A :class:`Site` names the projection weight of a tower (``x @ W`` for a Parameter, ``W x + b`` for
a Linear). The edit acts either on the projection's output (``"joint"``: a d x d map in the joint
space) or on its input (``"pooled"``: a D x D map on the pooled features, image towers only).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

SITES = ("joint", "pooled")
TOWERS = ("image", "text")
#: open_clip private methods the ViT site relies on (checked, so a future open_clip fails clearly).
_VIT_PRIVATE = ("_embeds", "_pool")


class UnsupportedModelError(TypeError):
    """The model (or tower) has no projection this library knows how to edit."""


@dataclass
class Site:
    module: nn.Module  # owns the projection weight
    weight: str  # attribute name of the weight on ``module``
    bias: str | None  # attribute name of the bias, for Linear projections with a bias
    layout: str  # "param": x @ W with W [D, d]; "linear": x @ W.T + b with W [d, D]
    pooled: Callable[[torch.Tensor], torch.Tensor] | None = None  # input -> pooled features (D)

    @property
    def dims(self) -> tuple[int, int]:
        """(D, d): the projection's input and output widths."""
        W = getattr(self.module, self.weight)
        return tuple(W.shape) if self.layout == "param" else tuple(W.shape[::-1])


def _input_of(module: nn.Module, owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input ``module`` receives when ``owner(x)`` runs."""
    captured = []
    handle = module.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        owner(x)
    finally:
        handle.remove()
    return captured[-1]


def _linear_site(linear: nn.Linear, owner: nn.Module) -> Site:
    return Site(linear, "weight", "bias" if linear.bias is not None else None, "linear",
                lambda x: _input_of(linear, owner, x))


def _vit(visual: VisionTransformer) -> Site:
    if visual.proj is None:
        raise UnsupportedModelError("this VisionTransformer has no projection (`proj` is None); nothing to edit")
    # The pooled features before `pooled @ proj`, as in VisionTransformer.forward: open_clip 3.x's
    # private `_embeds` / `_pool` (pyproject pins open_clip_torch < 4).
    missing = [m for m in _VIT_PRIVATE if not callable(getattr(visual, m, None))]
    if missing:
        import open_clip
        raise UnsupportedModelError(
            f"open_clip {open_clip.__version__}'s VisionTransformer has no {missing}, which lightning_unlearn reads "
            "for the pooled image features (they exist in open_clip 3.x); install open_clip_torch>=3,<4")
    return Site(visual, "proj", None, "param", lambda x: visual._pool(visual.transformer(visual._embeds(x)))[0])


def _resnet(visual: ModifiedResNet) -> Site:
    # AttentionPool2d passes `c_proj.weight` to F.multi_head_attention_forward and never calls the
    # Linear, so a hook on it never fires: rerun the pool with an identity output projection.
    pool = visual.attnpool
    site = _linear_site(pool.c_proj, visual)

    def pooled(x):
        ref, n = pool.q_proj.weight, pool.c_proj.in_features
        identity = SimpleNamespace(weight=torch.eye(n, dtype=ref.dtype, device=ref.device),
                                   bias=torch.zeros(n, dtype=ref.dtype, device=ref.device))
        proxy = SimpleNamespace(positional_embedding=pool.positional_embedding, q_proj=pool.q_proj,
                                k_proj=pool.k_proj, v_proj=pool.v_proj, c_proj=identity,
                                num_heads=pool.num_heads, training=pool.training)
        return AttentionPool2d.forward(proxy, _input_of(pool, visual, x))
    site.pooled = pooled
    return site


def _timm(visual: TimmModel) -> Site:
    head = visual.head
    linear = getattr(head, "proj", None) or getattr(getattr(head, "mlp", None), "fc2", None)
    if not isinstance(linear, nn.Linear):
        raise UnsupportedModelError("this TimmModel has no linear projection head (`head.proj` or `head.mlp.fc2`); "
                                    "build it with proj='linear' or proj='mlp'")
    return _linear_site(linear, visual)


def _text_projection(owner: nn.Module) -> Site:
    proj = getattr(owner, "text_projection", None)
    if proj is None:
        raise UnsupportedModelError("this text tower has no `text_projection`; nothing to edit")
    if isinstance(proj, nn.Linear):
        return Site(proj, "weight", "bias" if proj.bias is not None else None, "linear")
    return Site(owner, "text_projection", None, "param")


IMAGE_SITES: dict[type, Callable[[nn.Module], Site]] = {VisionTransformer: _vit, ModifiedResNet: _resnet,
                                                       TimmModel: _timm}


def _supported() -> str:
    return (f"open_clip.CLIP or CustomTextCLIP with a visual tower of type "
            f"{sorted(t.__name__ for t in IMAGE_SITES)} and, for text edits, the built-in text tower")


def _lookup(obj: nn.Module, registry: dict) -> Callable:
    for cls in type(obj).__mro__:  # parametrized modules subclass the original type
        if cls in registry:
            return registry[cls]
    raise UnsupportedModelError(f"cannot edit a tower of type {type(obj).__name__}; supported: {_supported()}")


def find_site(model: nn.Module, tower: str) -> Site:
    """The projection :class:`Site` of ``tower`` ("image" or "text") in an open_clip model."""
    if not isinstance(model, (CLIP, CustomTextCLIP)):
        raise UnsupportedModelError(f"cannot edit a model of type {type(model).__name__}; supported: {_supported()}")
    if tower == "image":
        return _lookup(model.visual, IMAGE_SITES)(model.visual)
    if tower == "text":
        if isinstance(model, CLIP):
            return _text_projection(model)
        if isinstance(model.text, TextTransformer):
            return _text_projection(model.text)
        raise UnsupportedModelError(f"text-side edits support the built-in text tower only, not "
                                    f"{type(model.text).__name__}; edit the image tower (towers=('image',))")
    raise ValueError(f"`tower`={tower!r} is not one of {TOWERS}")
