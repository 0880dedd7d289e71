"""How :class:`~lightning_unlearn.module.CLIPUnlearning` is built, without Lightning: its option
groups (:class:`Evaluation`, :class:`FineTuning`), the forget request and label names from its
arguments, the CLIP model from an object, a name or the embedded default, and the identity
placeholders that give a checkpoint the edited model's keys before the edit is computed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from . import embedded
from .edit import EditError, UnlearnConfig, edit_modules, edits, inject_
from .errors import check_fields
from .integration import carried_edit_ids, check_tokenizer, make_request, tower_edits
from .load import LoadError, check_name, is_embedded, load_clip, model_cfg_of
from .prompts import CLASS_TEMPLATES, validate_templates
from .request import ForgetRequest, as_names
from .sites import find_site, is_clip


@dataclass(frozen=True)
class Evaluation:
    """How validation, test and predict classify (zero-shot, from the unchanged prompts).

    Args:
        templates: the classifier's templates (``{c}`` = class); default: the library's class templates.
        colours: names of an unrelated task found as a 4th label column of the batches, logged as
            ``<stage>/unrelated_accuracy``; default: the world's colours for the embedded model, else none.
        colour_templates: the unrelated task's templates (``{c}`` = colour); required with ``colours``.
    """
    templates: Optional[list[str]] = None
    colours: Optional[list[str]] = None
    colour_templates: Optional[list[str]] = None

    def resolved(self, world: bool) -> Evaluation:
        """These options checked, with the defaults filled in (``world``: the embedded model's).

        Raises:
            ValueError: ``colours`` without ``colour_templates``, a template without ``{c}``.
            TypeError: a single string where a list is expected.
            RequestError: malformed colour names.
        """
        colours, colour_templates = self.colours, self.colour_templates
        if colours is None and world:
            colours = embedded.Embedded.colours
            colour_templates = colour_templates or embedded.COLOUR_TEMPLATES
        colours = as_names(colours, "colours", allow_none=True)
        if colours is not None and colour_templates is None:
            raise ValueError("`colour_templates` are required with `colours` (e.g. ['a {c} thing.'])")
        return Evaluation(validate_templates(self.templates or CLASS_TEMPLATES, "c", "templates"), colours,
                          validate_templates(colour_templates, "c", "colour_templates") if colours else None)

    def to_dict(self) -> dict:
        """Plain lists (for the hyper-parameters)."""
        return {k: None if v is None else list(v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class FineTuning:
    """Optional fine-tuning in ``fit`` (everything is frozen by default; the edit never trains).

    Args:
        trainable: parameter-name prefixes of the CLIP model to fine-tune (``["visual.ln_post"]``).
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay.

    Raises:
        ValueError: a negative or non-numeric ``lr`` / ``weight_decay``.
    """
    trainable: Optional[list[str]] = None
    lr: float = 1e-5
    weight_decay: float = 0.0

    def to_dict(self) -> dict:
        """Plain values (for the hyper-parameters)."""
        t = self.trainable
        return {"trainable": None if t is None else [t] if isinstance(t, str) else list(t), "lr": self.lr,
                "weight_decay": self.weight_decay}

    def __post_init__(self):
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}`={value!r} must be a number >= 0")


def options(value, cls: type, arg: str):
    """``value`` as an instance of the options dataclass ``cls``: itself, a dict of its fields, or None
    (the defaults). Raises ``ValueError`` for unknown fields and ``TypeError`` for anything else."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"`{arg}` must be None, a dict of its fields or an instance of {cls.__name__}, got "
                        f"{type(value).__name__}")
    check_fields(value, [f.name for f in dataclasses.fields(cls)], f"`{arg}` field(s)")
    return cls(**value)


def resolve_request(request, forget_classes, forget_domains, classnames, domains, cell_templates, *,
                    arch: str | None, world: bool) -> tuple[ForgetRequest, tuple[str, ...], tuple[str, ...]]:
    """The request and the data's label names from ``CLIPUnlearning``'s arguments (see there);
    ``world``: the model is the embedded one (``arch``), whose label names are the defaults.

    Returns:
        (request, classnames, domains).

    Raises:
        ValueError: ``request`` with ``forget_*`` or ``cell_templates``, nothing to forget, no label names.
        RequestError: a malformed request or names.
    """
    if request is not None:
        if forget_classes is not None or forget_domains is not None:
            raise ValueError("give either `request` or `forget_classes` / `forget_domains`, not both")
        if cell_templates is not None:
            raise ValueError("`cell_templates` only applies with `forget_classes` / `forget_domains`; a `request` "
                             "carries its own templates")
        request = make_request(request)
        classnames = request.classnames if classnames is None else classnames
        domains = request.domains if domains is None else domains
    if classnames is None or domains is None:
        if not world:
            raise ValueError(f"`classnames` and `domains` are required for `arch`={arch!r} (the data's label "
                             "names in label-index order), or give a `request` that lists them")
        classnames = embedded.Embedded.classnames if classnames is None else classnames
        domains = embedded.Embedded.domains if domains is None else domains
    classnames, domains = as_names(classnames, "classnames"), as_names(domains, "domains")
    if request is None:
        if forget_classes is None and forget_domains is None:
            raise ValueError("nothing to forget: give `forget_classes` and/or `forget_domains` (names of "
                             f"`classnames` {list(classnames)} / `domains` {list(domains)}), or a `request`")
        request = ForgetRequest(classnames, domains, forget_classes, forget_domains, templates=cell_templates)
    return request, classnames, domains


def is_world(model: nn.Module | None, arch: str | None) -> bool:
    """Whether the model is the embedded one (the world's label names and colours are the defaults)."""
    return (model is None or arch is not None) and is_embedded(arch)


def check_source(model: nn.Module | None, tokenizer: Callable | None, arch: str | None, weights: str | None) -> None:
    """Cheap checks of where the model comes from, before anything is loaded (see ``CLIPUnlearning``)."""
    check_tokenizer(tokenizer)
    if model is not None:
        if not is_clip(model):
            raise TypeError(f"`model` must be an open_clip CLIP / CustomTextCLIP / CoCa or a transformers "
                            f"CLIPModel / SiglipModel, got {type(model).__name__}")
        if weights is not None:
            raise ValueError("give either `model` or `weights`, not both (load the weights into the model first)")
        if tokenizer is None and arch is None:
            raise ValueError("a `model` object needs its `tokenizer` (open_clip.get_tokenizer(<name>)) or the "
                             "`arch` name it was built from")
    if arch is not None:
        if not isinstance(arch, str) or not arch.strip():
            raise ValueError(f"`arch`={arch!r} must be an open_clip model name (see open_clip.list_models()) or "
                             "'local-dir:/path/to/folder'")
        if arch.startswith("local-dir:") and weights is not None:
            raise ValueError(f"`arch`={arch!r} loads the weights from its folder; drop `weights`={weights!r}")
        try:
            check_name(arch)
        except LoadError as e:
            raise LoadError(f"`arch`={arch!r}: {e}") from e
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"`weights`={weights!r} is not a file; give a local weights file (.safetensors, "
                                ".pt, .bin) or use arch='local-dir:/path' for a folder")


def build_model(model: nn.Module | None, tokenizer: Callable | None, arch: str | None, weights: str | None):
    """(model, preprocess, tokenizer, model config) from an object, an architecture name, or the
    embedded default; the model config (``{"arch", "model_cfg"}``) is None for an object without ``arch``."""
    import open_clip
    if model is not None:
        if tokenizer is None:
            tokenizer = open_clip.get_tokenizer(embedded.MODEL_NAME if is_embedded(arch) else arch)
        return model, None, tokenizer, None if arch is None else {"arch": arch, "model_cfg": model_cfg_of(arch)}
    loaded = load_clip(arch, weights)
    return loaded.model, loaded.preprocess, tokenizer or loaded.tokenizer, loaded.model_config


def inject_placeholders(clip: nn.Module, config: UnlearnConfig, edit_id: str) -> bool:
    """Inject identity maps where ``config``'s edit goes, so a checkpoint's keys match before the edit
    is computed; a model that already carries exactly this edit (``edit_id``) is left as it is.

    Returns:
        Whether ``clip`` already carried the edit.

    Raises:
        EditError: ``clip`` carries other edits.
    """
    carried = carried_edit_ids(clip)
    if carried:
        n_edited = sum(len(v) for v in tower_edits(clip, config).values())
        if set(carried) == {edit_id} and len(carried) == n_edited:
            return True
        raise EditError(f"`model` already carries {len(carried)} edit(s) ({edits(clip)}) "
                        "that are not this request's; pass an un-edited model: restore_(model) drops them, "
                        "fold_(model) keeps them as plain weights")
    for tower in config.towers:
        site = find_site(clip, tower)
        n = site.map_size(config.site)
        inject_(clip, torch.eye(n), tower, config.site, info={})
    return False


def unfreeze(clip: nn.Module, prefixes) -> tuple[str, ...]:
    """Make the parameters under ``prefixes`` (names, or one name) trainable; the edit's own never are.

    Returns:
        The prefixes, as a tuple (empty for None).

    Raises:
        ValueError: a prefix that matches no trainable parameter.
    """
    if prefixes is None:
        return ()
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    frozen = {id(p) for _, e in edit_modules(clip) for p in e.parameters()}
    names = dict(clip.named_parameters())
    for prefix in prefixes:
        hits = [n for n, p in names.items() if (n == prefix or n.startswith(prefix + ".")) and id(p) not in frozen]
        if not hits:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"`trainable` prefix {prefix!r} matches no trainable parameter of the CLIP model "
                             f"(the edit's own weights are never trainable); top-level names: {tops}, e.g. "
                             "'visual.transformer.resblocks.5' or 'visual.ln_post'")
        for n in hits:
            names[n].requires_grad_(True)
    return tuple(prefixes)
