"""Where the edit goes: the projection of each tower, found through a small registry.

A :class:`Site` names the projection weight of a tower (``x @ W`` for a Parameter, ``W x + b`` for
a Linear). The edit acts either on the projection's output (``"joint"``: a d x d map in the joint
space) or on its input (``"pooled"``: a D x D map on the pooled features, image towers only).

Towers whose output has no projection weight (timm towers built with ``proj="none"`` such as
SigLIP / SigLIP2 / PE-Core / MobileCLIP2, and the vision tower of a transformers ``SiglipModel``)
get a :class:`Slot`: the edit installs a new frozen :class:`EditLinear` (identity until edited) on
the tower output and removes it again on restore. Finding a site allocates nothing: a slot's layer
is made when the site's ``module`` is first read, and that very object is installed. Models: open_clip ``CLIP``, ``CustomTextCLIP``,
``CoCa`` (contrastive towers), transformers ``CLIPModel`` and ``SiglipModel``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from open_clip.coca_model import CoCa
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from .encoders import encode_image, hf_kind
from .errors import UnlearnError

SITES = ("joint", "pooled")
TOWERS = ("image", "text")
#: open_clip private methods the ViT site relies on (checked, so a future open_clip fails clearly).
_VIT_PRIVATE = ("_embeds", "_pool")


class UnsupportedModelError(UnlearnError, TypeError):
    """The model (or tower) has no projection this library knows how to edit."""


class EditLinear(nn.Linear):
    """The frozen ``nn.Linear(d, d, bias=False)`` an edit installs where a tower has no projection
    weight; it starts as the identity, and the edit parametrizes its weight like any projection."""

    def __init__(self, d: int, device=None, dtype=None):
        super().__init__(d, d, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            self.weight.copy_(torch.eye(d, device=device, dtype=dtype))
        self.weight.requires_grad_(False)


class _Projected:
    """Mixin of a module class whose output then goes through its ``edit_proj`` child."""

    def forward(self, *args, **kwargs):
        return self.edit_proj(super().forward(*args, **kwargs))


@dataclass
class Slot:
    """Where an :class:`EditLinear` goes: child ``name`` of ``parent``. An ``nn.Sequential`` parent
    runs a new last child by itself; any other parent gets a subclass running it on its output."""
    parent: nn.Module
    name: str
    dim: int
    folded_cfg: dict | None = None  # open_clip model_cfg changes that describe the folded layer
    device: torch.device | None = None  # where the new layer goes (the tower's weights')
    dtype: torch.dtype | None = None

    @property
    def installed(self) -> EditLinear | None:
        child = getattr(self.parent, self.name, None)
        return child if isinstance(child, EditLinear) else None

    def new_layer(self) -> EditLinear:
        """A new identity :class:`EditLinear` for this slot (not attached)."""
        return EditLinear(self.dim, device=self.device, dtype=self.dtype)

    def install(self, linear: EditLinear) -> None:
        if self.name in self.parent._modules or hasattr(self.parent, self.name):
            raise RuntimeError(f"cannot install the edit layer: {type(self.parent).__name__} already has `{self.name}`")
        self.parent.add_module(self.name, linear)
        if not isinstance(self.parent, nn.Sequential):
            cls = type(self.parent)
            self.parent.__class__ = type(f"Projected{cls.__name__}", (_Projected, cls), {})


def uninstall_(model: nn.Module, plain: bool = False) -> int:
    """Remove every :class:`EditLinear` from ``model`` (``plain=False``, restore) or turn each into a
    plain ``nn.Linear`` with its current weight (``plain=True``, fold). Returns how many."""
    found = [(parent, name, child) for parent in model.modules() for name, child in parent._modules.items()
             if isinstance(child, EditLinear)]
    for parent, name, child in found:
        if plain:
            linear = nn.Linear(child.in_features, child.out_features, bias=False,
                               device=child.weight.device, dtype=child.weight.dtype)
            linear.weight = child.weight
            parent._modules[name] = linear
            continue
        del parent._modules[name]
        if isinstance(parent, _Projected):
            parent.__class__ = next(c for c in type(parent).__mro__[1:] if not issubclass(c, _Projected))
    return len(found)


@dataclass
class Site:
    """A tower's projection: ``module.<weight>`` (and ``module.<bias>``), its layout and pooled input.
    A slot's layer not installed yet is made when ``module`` is first read (:attr:`pending` until then)."""
    _module: nn.Module | None  # owns the projection weight; None: a slot's layer, not made yet
    weight: str  # attribute name of the weight on ``module``
    bias: str | None  # attribute name of the bias, for Linear projections with a bias
    layout: str  # "param": x @ W with W [D, d]; "linear": x @ W.T + b with W [d, D]
    pooled: Callable[[torch.Tensor], torch.Tensor] | None = None  # input -> pooled features (D)
    slot: Slot | None = None  # set when ``module`` is an EditLinear the edit installs (or installed)
    tower: str = "image"

    @property
    def module(self) -> nn.Module:
        """The module owning the projection weight (for a slot not installed yet, its new layer, made once)."""
        if self._module is None:
            self._module = self.slot.new_layer()
        return self._module

    @property
    def pending(self) -> bool:
        """Whether this is a slot whose layer is neither installed nor made yet (it carries no edit)."""
        return self._module is None

    @property
    def dims(self) -> tuple[int, int]:
        """(D, d): the projection's input and output widths."""
        if self.pending:
            return self.slot.dim, self.slot.dim
        W = getattr(self.module, self.weight)
        return tuple(W.shape) if self.layout == "param" else tuple(W.shape[::-1])

    def map_size(self, where: str) -> int:
        """The side of an edit's square map at ``where``: d after the projection ("joint"), D before it ("pooled")."""
        return self.dims[1] if where == "joint" else self.dims[0]


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


def _slot_site(slot: Slot, owner: Callable[[torch.Tensor], torch.Tensor]) -> Site:
    """The site of ``slot``: its installed :class:`EditLinear`, or (pending) the identity one made for it
    when the site's ``module`` is first read (:func:`~lightning_unlearn.compose.inject_` installs that
    very object), whose input is ``owner``'s output."""
    linear = slot.installed
    if linear is None:
        return Site(None, "weight", None, "linear", owner, slot=slot)
    return Site(linear, "weight", None, "linear", lambda x: _input_of(linear, owner, x), slot=slot)


def _timm(visual: TimmModel) -> Site:
    head = visual.head
    linear = getattr(head, "proj", None) or getattr(getattr(head, "mlp", None), "fc2", None)
    if isinstance(linear, nn.Linear) and not isinstance(linear, EditLinear):
        return _linear_site(linear, visual)
    if len(head) == 0 or isinstance(linear, EditLinear):
        classifier = visual.trunk.get_classifier() if hasattr(visual.trunk, "get_classifier") else None
        if isinstance(classifier, nn.Linear) and linear is None:  # proj="": the trunk's classifier projects
            return _linear_site(classifier, visual)
        # proj="none": the pooled trunk output is the embedding; open_clip's proj="linear" folds the edit
        ref = next(visual.parameters())
        slot = Slot(head, "proj", _output_dim(visual), {"vision_cfg": {"timm_proj": "linear", "timm_proj_bias": False}},
                    ref.device, ref.dtype)
        return _slot_site(slot, visual)
    raise UnsupportedModelError(f"this TimmModel's head ({[n for n, _ in head.named_children()]}) ends in neither a "
                                "linear projection (`head.proj`, `head.mlp.fc2`) nor the trunk output; nothing to edit")


def _output_dim(visual: TimmModel) -> int:
    """Width of a classifier-less timm trunk's output (its pre-logits features)."""
    trunk = visual.trunk
    return int(getattr(trunk, "head_hidden_size", None) or trunk.num_features)


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
    return (f"open_clip CLIP, CustomTextCLIP or CoCa with a visual tower of type "
            f"{sorted(t.__name__ for t in IMAGE_SITES)} and, for text edits, the built-in text tower; "
            "transformers CLIPModel or SiglipModel (pip install 'lightning-unlearn[hf]')")


def _lookup(obj: nn.Module, registry: dict) -> Callable:
    for cls in type(obj).__mro__:  # parametrized modules subclass the original type
        if cls in registry:
            return registry[cls]
    raise UnsupportedModelError(f"cannot edit a tower of type {type(obj).__name__}; supported: {_supported()}")


def _hf_site(model: nn.Module, kind: str, tower: str) -> Site:
    """transformers ``CLIPModel``: ``visual_projection`` / ``text_projection``; ``SiglipModel``: the
    text tower's ``head`` Linear, and a :class:`Slot` after the vision tower's pooling head."""
    image = lambda x: encode_image(model, x)
    if kind == "clip":
        linear = model.visual_projection if tower == "image" else model.text_projection
        return _linear_site(linear, image) if tower == "image" else \
            Site(linear, "weight", "bias" if linear.bias is not None else None, "linear")
    if tower == "text":
        head = model.text_model.head
        return Site(head, "weight", "bias" if head.bias is not None else None, "linear")
    head = getattr(model.vision_model, "head", None)
    if head is None:
        raise UnsupportedModelError("this SiglipModel's vision tower has no pooling head (vision_use_head=False); "
                                    "nothing to edit on the image side: use towers=('text',)")
    ref = next(head.parameters())
    slot = Slot(head, "edit_proj", model.config.vision_config.hidden_size, device=ref.device, dtype=ref.dtype)
    return _slot_site(slot, image)


def is_clip(model) -> bool:
    """Whether ``model`` is a CLIP model this library edits (open_clip or transformers)."""
    return isinstance(model, (CLIP, CustomTextCLIP, CoCa)) or hf_kind(model) is not None


def find_site(model: nn.Module, tower: str) -> Site:
    """The projection :class:`Site` of ``tower`` ("image" or "text") in a CLIP model."""
    if tower not in TOWERS:
        raise ValueError(f"`tower`={tower!r} is not one of {TOWERS}")
    kind = hf_kind(model)
    if kind:
        site = _hf_site(model, kind, tower)
    elif not isinstance(model, (CLIP, CustomTextCLIP, CoCa)):
        raise UnsupportedModelError(f"cannot edit a model of type {type(model).__name__}; supported: {_supported()}")
    elif tower == "image":
        site = _lookup(model.visual, IMAGE_SITES)(model.visual)
    elif isinstance(model, CLIP):
        site = _text_projection(model)
    elif isinstance(model.text, TextTransformer):  # CustomTextCLIP, CoCa (its contrastive text tower)
        site = _text_projection(model.text)
    else:
        raise UnsupportedModelError(f"text-side edits support the built-in text tower only, not "
                                    f"{type(model.text).__name__}; edit the image tower (towers=('image',))")
    site.tower = tower
    return site


def tower_sites(model: nn.Module, towers=TOWERS, strict: bool = False) -> dict[str, Site]:
    """``{tower: Site}`` of ``towers`` (default: both), one lookup each. A tower without a supported
    site raises :class:`UnsupportedModelError` if ``strict``, else is left out."""
    out = {}
    for tower in towers:
        try:
            out[tower] = find_site(model, tower)
        except UnsupportedModelError:
            if strict:
                raise
    return out


def folded_config(model: nn.Module, model_cfg: dict) -> dict:
    """``model_cfg`` (an open_clip config) describing ``model`` once its edits are folded: a tower
    that received an :class:`EditLinear` gets the config of an open_clip projection layer."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in model_cfg.items()}
    for tower, site in tower_sites(model).items():
        if site.slot is not None and site.slot.installed is not None:
            if site.slot.folded_cfg is None:
                raise UnsupportedModelError(f"the {tower} tower's edit layer has no open_clip config equivalent")
            for key, patch in site.slot.folded_cfg.items():
                out[key] = {**out.get(key, {}), **patch}
    return out
