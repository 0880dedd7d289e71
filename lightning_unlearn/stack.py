"""The edit stack: the frozen maps on one tensor, and every change to them.

An edit is a frozen map ``M`` held by a :class:`ProjectorEdit`, registered as a
``torch.nn.utils.parametrize`` parametrization of a tower's projection weight (and bias, for a
"joint" edit on a projection with a bias): the forward pass sees the edited tensor, the original
stays untouched in ``parametrizations.<tensor>.original``. Several edits on one tensor form a chain,
applied in order.

An :class:`EditStack` owns one such tensor (as PEFT's ``LoraLayer`` owns its adapters): its edits
in order, their names and provenance, the original tensor, the state_dict keys of its edits, and
every change (insert at a position, remove some, remove all, fold). :func:`stacks` finds every
stack of a model in one walk; :func:`projection_stacks` the projection tensors of every tower (edited
or not); :func:`site_stacks` the tensors an edit at a site changes. Model-level: :func:`edits`
names the edits, :func:`restore_` removes all of them, :func:`fold_` merges them into the weights.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Container, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .sites import TOWERS, EditLinear, Site, tower_sites, uninstall_

#: Where an edit's tensors sit in a state_dict: ``<module>.parametrizations.<tensor>.<index>.<what>``.
PARAMETRIZATIONS = "parametrizations"


class ProjectorEdit(nn.Module):
    """Parametrization ``W -> W'`` applying the frozen map ``P`` (an ``nn.Linear(n, n, bias=False)``)
    on the output side ("joint") or the input side ("pooled") of a projection weight.
    ``layout``: "param" (x @ W), "linear" (W x) or "bias" (a Linear's bias, output side)."""

    def __init__(self, n: int, side: str, layout: str, info: dict | None = None):
        super().__init__()
        self.side, self.layout, self.info = side, layout, dict(info or {})
        # Built on the meta device and then given memory: a plain nn.Linear(n, n) would draw its random
        # init from (and so change) the global torch RNG state.
        self.P = nn.Linear(n, n, bias=False, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            self.P.weight.copy_(torch.eye(n))
        self.P.weight.requires_grad_(False)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        M = self.P.weight.float()
        meta = W.device.type == "meta"  # shapes only (autocast has no meta device)
        with contextlib.nullcontext() if meta else torch.autocast(device_type=W.device.type, enabled=False):
            Wf = W.float()
            if self.layout == "bias":
                out = M @ Wf
            elif self.layout == "param":
                out = Wf @ M.T if self.side == "joint" else M.T @ Wf
            else:
                out = M @ Wf if self.side == "joint" else Wf @ M
        return out.to(W.dtype)

    def get_extra_state(self):
        return {"side": self.side, "layout": self.layout, "info": json.dumps(self.info)}

    def set_extra_state(self, state):
        self.side, self.layout, self.info = state["side"], state["layout"], json.loads(state["info"])


class EditStack:
    """The edits on one tensor, ``module.<tensor>`` (qualified name ``key`` in the model), in
    application order; an empty stack for a tensor no edit changes (yet).

    Args:
        module: the module owning the tensor.
        tensor: the tensor's attribute name on ``module`` ("weight", "bias", "proj", ...).
        key: its qualified name in the model (its state_dict key once unedited); default ``tensor``.
    """

    def __init__(self, module: nn.Module, tensor: str, key: str | None = None):
        self.module, self.tensor = module, tensor
        self.key = tensor if key is None else key

    def __repr__(self) -> str:
        return f"EditStack({self.key!r}, {self.names})"

    @property
    def _plist(self):
        """torch's ``ParametrizationList`` of the tensor, or None when it is not parametrized."""
        if not parametrize.is_parametrized(self.module, self.tensor):
            return None
        return getattr(self.module.parametrizations, self.tensor)

    @property
    def edits(self) -> list[ProjectorEdit]:
        """The edits, in application order."""
        plist = self._plist
        return [] if plist is None else [e for e in plist if isinstance(e, ProjectorEdit)]

    @property
    def names(self) -> list[str]:
        """Each edit's name ("" for an unnamed legacy edit), in application order."""
        return [e.info.get("name", "") for e in self.edits]

    @property
    def infos(self) -> list[dict]:
        """Each edit's provenance, in application order."""
        return [e.info for e in self.edits]

    @property
    def original(self) -> torch.Tensor:
        """The unedited tensor (the tensor itself when no edit changes it)."""
        plist = self._plist
        return getattr(self.module, self.tensor) if plist is None else plist.original

    def edit_keys(self) -> list[str]:
        """The state_dict keys of the edits' tensors (each edit's ``P.weight`` and its ``_extra_state``)."""
        stem = f"{self.key.removesuffix(self.tensor)}{PARAMETRIZATIONS}.{self.tensor}"
        return [f"{stem}.{i}.{what}" for i, e in enumerate(self._plist or ()) if isinstance(e, ProjectorEdit)
                for what in ("P.weight", "_extra_state")]

    def insert(self, edit: ProjectorEdit, position: int | None = None) -> None:
        """Add ``edit``: last in the chain, or at index ``position`` (0 = applied first). The edit is
        moved to the tensor's device first (torch evaluates the parametrization at once)."""
        edit.to(getattr(self.module, self.tensor).device)
        parametrize.register_parametrization(self.module, self.tensor, edit)
        if position is not None:
            plist = self._plist
            order = list(plist)
            order.insert(position, order.pop())
            for i, e in enumerate(order):
                plist[i] = e

    def remove(self, names: Container[str]) -> list[ProjectorEdit]:
        """Remove the edits called one of ``names`` (the others keep their order); the last one gone
        gives the original tensor back. Returns the edits removed."""
        plist = self._plist
        if plist is None:
            return []
        hit = [i for i, e in enumerate(plist) if isinstance(e, ProjectorEdit) and e.info.get("name", "") in names]
        gone = [plist[i] for i in hit]
        if len(hit) == len(plist):
            self._unparametrize(leave_parametrized=False)
        else:
            for i in reversed(hit):
                del plist[i]
        return gone

    def clear(self) -> None:
        """Remove every edit: the tensor is the original again (the same tensor object, bit-identical)."""
        if self._plist is not None:
            self._unparametrize(leave_parametrized=False)

    def fold(self) -> torch.Tensor | None:
        """Merge the edits into the tensor (it keeps its ``requires_grad``). Returns a copy of the original,
        or None for a stack without edits."""
        plist = self._plist
        if plist is None:
            return None
        original, requires_grad = plist.original.detach().clone(), plist.original.requires_grad
        self._unparametrize(leave_parametrized=True)
        getattr(self.module, self.tensor).requires_grad_(requires_grad)
        return original

    def _unparametrize(self, leave_parametrized: bool) -> None:
        """torch's ``remove_parametrizations`` on this tensor alone. torch deletes the tensor's property
        from the module's generated class, which a deepcopy of the module shares (torch's deepcopy of a
        parametrized module keeps its class): the module gets a class of its own first, so the copy keeps
        its edits (torch offers no removal that leaves the class alone)."""
        cls = self.module.__class__
        self.module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(self.module, self.tensor, leave_parametrized=leave_parametrized)


# ---------------------------------------------------------------------------------------------- finding stacks
def stacks(model: nn.Module) -> list[EditStack]:
    """Every tensor of ``model`` that carries an edit, as an :class:`EditStack`, in module order (one walk)."""
    out = []
    for prefix, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor, plist in list(module.parametrizations.items()):
                if any(isinstance(e, ProjectorEdit) for e in plist):
                    out.append(EditStack(module, tensor, f"{prefix}.{tensor}".lstrip(".")))
    return out


def site_stacks(site: Site, where: str = "joint") -> list[EditStack]:
    """The stacks an edit at ``where`` ("joint" or "pooled") on ``site`` changes: its weight's, and at
    "joint" its bias's. A slot whose layer is not made yet has none (looking makes nothing)."""
    if site.pending:
        return []
    out = [EditStack(site.module, site.weight)]
    if site.bias is not None and where == "joint":
        out.append(EditStack(site.module, site.bias))
    return out


def site_edits(site: Site) -> list[ProjectorEdit]:
    """The edits on ``site``'s weight, in application order (its chain)."""
    return site_stacks(site)[0].edits if not site.pending else []


def projection_stacks(model: nn.Module, towers=TOWERS, strict: bool = False) -> dict[str, tuple[str, EditStack]]:
    """``{qualified name: (tower, stack)}`` of the projection weight and bias of each of ``towers``
    (edited or not). A layer an edit installs is not one of the model's weights and is left out; a tower
    with no supported site raises if ``strict``, else is left out (:func:`~lightning_unlearn.sites.tower_sites`)."""
    sites = tower_sites(model, towers, strict)
    names = {id(m): n for n, m in model.named_modules()} if sites else {}
    out = {}
    for tower, site in sites.items():
        if site.slot is not None:
            continue
        for tensor in (site.weight, site.bias):
            if tensor is not None:
                key = f"{names[id(site.module)]}.{tensor}".lstrip(".")
                out[key] = (tower, EditStack(site.module, tensor, key))
    return out


def stored_edits(state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[dict, torch.Tensor]]:
    """The edits held in a ``state_dict`` (keys as :meth:`EditStack.edit_keys` writes them) under
    ``prefix``: ``{key of P.weight: (info, M)}``."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix) and f".{PARAMETRIZATIONS}." in key and key.endswith("._extra_state"):
            stem = key[: -len("_extra_state")]
            if isinstance(value, Mapping) and "info" in value and stem + "P.weight" in state_dict:
                out[stem + "P.weight"] = (json.loads(value["info"]), state_dict[stem + "P.weight"])
    return out


# ---------------------------------------------------------------------------------------------- the model's edits
def edit_modules(model: nn.Module) -> list[tuple[str, ProjectorEdit]]:
    """Every injected map as (qualified tensor name, edit), in application order."""
    return [(st.key, e) for st in stacks(model) for e in st.edits]


def edits(model: nn.Module) -> list[str]:
    """The names of the edits ``model`` carries, in application order ("" for an unnamed legacy edit);
    an empty list for a model without edits. Never raises."""
    return _names(stacks(model))


def _names(found: list[EditStack]) -> list[str]:
    """The edit names of the stacks ``found``, each once, in application order."""
    return list(dict.fromkeys(name for st in found for name in st.names))


def fresh_name(model: nn.Module, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever no edit of ``model`` carries yet."""
    taken, name, k = set(edits(model)), base, 1
    while name in taken:
        k += 1
        name = f"{base}-{k}"
    return name


def restore_(model: nn.Module) -> list[str]:
    """Remove every injected edit (and every layer an edit installed): the state_dict is then
    bit-identical to the original. Returns the names removed (an empty list for a model without
    edits, which is left as it is)."""
    found = stacks(model)
    names = _names(found)
    for st in found:
        st.clear()
    uninstall_(model)
    return names


def fold_(model: nn.Module) -> dict[str, torch.Tensor]:
    """Merge every injected edit into its projection weight: a plain open_clip model with the
    original state_dict keys and no inference overhead. Returns the original weights by key, the
    only way back (``model.load_state_dict(originals, strict=False)``). A layer an edit installed on
    a tower with no projection stays, as a plain ``nn.Linear`` holding the edit. A model without
    edits is left as it is (returns ``{}``)."""
    originals = {}
    for st in stacks(model):
        original = st.fold()
        if not isinstance(st.module, EditLinear):  # an installed layer has no original
            originals[st.key] = original
    uninstall_(model, plain=True)
    return originals
