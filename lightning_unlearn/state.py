"""Edit state, Lightning-free: what identifies an edit, what it was computed on, and how it is stored.

Three identities, one name each:

* the **request digest** (:meth:`ForgetRequest.digest`): a hash of the request alone;
* the **edit id** (:func:`edit_id`): a hash of the request and the config, i.e. of everything the
  computed maps depend on; the callback and ``CLIPUnlearning`` use it to recognise their own edit
  in a model or a checkpoint;
* the **weights digest** (:func:`weights_digest`): sha256 of the unedited projection weights an
  edit was computed on; an edit artifact only re-applies to weights with the same digest.

An injected edit carries its **provenance** (:func:`provenance`: request, request digest and
config as plain JSON data), built here once for :func:`~lightning_unlearn.edit.unlearn_` and for
:mod:`~lightning_unlearn.export`. The config is serialised one way, :func:`config_dict`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .request import ForgetRequest
from .sites import TOWERS, UnsupportedModelError, find_site

#: Bytes of the edit id as stored in a uint8 buffer (``CLIPUnlearning.computed_edit_id``).
EDIT_ID_LEN = 16


# ---------------------------------------------------------------------------------------------- config, provenance
def config_dict(config) -> dict:
    """An :class:`~lightning_unlearn.edit.UnlearnConfig` (any dataclass) as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def provenance(request: ForgetRequest, config) -> dict:
    """What an injected edit records about itself: ``{"request", "request_digest", "config"}`` (plain JSON)."""
    return {"request": request.to_dict(), "request_digest": request.digest(), "config": config_dict(config)}


def edit_id(request: ForgetRequest | Mapping, config) -> str:
    """A short stable hash of what the edit depends on: the request and the config.

    Computed the same way from objects or from an edit's :func:`provenance` (``info["request"]``,
    ``info["config"]``)."""
    r = request.to_dict() if isinstance(request, ForgetRequest) else dict(request)
    c = config_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    payload = json.dumps({"request": r, "config": c}, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def info_edit_id(info: Mapping) -> str | None:
    """The :func:`edit_id` of an injected edit's provenance ``info`` (``None`` if it has none)."""
    if "request" not in info or "config" not in info:
        return None
    return edit_id(info["request"], info["config"])


def describe_info(info: Mapping) -> str:
    """The request an edit's provenance names, in words."""
    try:
        return ForgetRequest.from_dict(info["request"]).describe()
    except Exception:
        return "an unreadable request"


# ---------------------------------------------------------------------------------------------- checkpoint payloads
def edit_id_tensor(value: str) -> torch.Tensor:
    """``value`` (an edit id, or "" for none) as a fixed-size uint8 tensor for a persistent buffer."""
    return torch.tensor(list(value.encode().ljust(EDIT_ID_LEN, b"\0")[:EDIT_ID_LEN]), dtype=torch.uint8)


def edit_id_from_tensor(t: torch.Tensor) -> str:
    """The inverse of :func:`edit_id_tensor` ("" for none)."""
    return bytes(t.tolist()).rstrip(b"\0").decode(errors="replace")


def checkpoint_edits(state_dict: Mapping[str, Any], prefix: str) -> dict[str, tuple[dict, torch.Tensor]]:
    """Edits stored in a ``state_dict`` under ``prefix``: ``{key of P.weight: (info, M)}``."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix) and ".parametrizations." in key and key.endswith("._extra_state"):
            stem = key[: -len("_extra_state")]
            if isinstance(value, Mapping) and "info" in value and stem + "P.weight" in state_dict:
                out[stem + "P.weight"] = (json.loads(value["info"]), state_dict[stem + "P.weight"])
    return out


# ---------------------------------------------------------------------------------------------- weights digest
def _original(module: nn.Module, name: str) -> torch.Tensor:
    """The unedited tensor ``module.<name>`` (under its parametrization if it has one)."""
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original
    return getattr(module, name)


def _sha256(t: torch.Tensor) -> str:
    data = t.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def weights_digest(model: nn.Module) -> dict[str, dict]:
    """sha256 (of the float32 values) and shape of every tower's unedited projection weight and bias:
    ``{qualified tensor name: {"tower", "shape", "sha256"}}``."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for tower in TOWERS:
        try:
            site = find_site(model, tower)
        except UnsupportedModelError:
            continue
        if site.slot is not None:  # a layer the edit installs: not a weight of the model
            continue
        for attr in (site.weight, site.bias):
            if attr is None:
                continue
            t = _original(site.module, attr)
            out[f"{names[id(site.module)]}.{attr}".lstrip(".")] = {
                "tower": tower, "shape": list(t.shape), "sha256": _sha256(t)}
    return out


def compare_digests(expected: dict, actual: dict) -> list[str]:
    """What differs between two :func:`weights_digest` results, one sentence per tensor (empty: same)."""
    problems = []
    for key, want in expected.items():
        have = actual.get(key)
        if have is None:
            problems.append(f"`{key}` ({want['tower']} projection) is absent from the model")
        elif have["shape"] != want["shape"]:
            problems.append(f"`{key}` has shape {tuple(have['shape'])}, the edit was made for {tuple(want['shape'])}")
        elif have["sha256"] != want["sha256"]:
            problems.append(f"`{key}` ({want['tower']} projection) has different values "
                            f"(sha256 {have['sha256'][:12]}..., the edit expects {want['sha256'][:12]}...)")
    return problems
