"""The folded model: a model with every edit merged into its weights, written as a folder that loads
without lightning_unlearn.

* :func:`save_folded` writes an open_clip ``local-dir:`` folder (``open_clip_config.json`` +
  ``open_clip_model.safetensors``); it loads anywhere with
  ``open_clip.create_model_and_transforms("local-dir:DIR")``. The caller's model is left as it is
  (a deep copy is folded).
* :func:`save_pretrained_folded` does the same for a transformers ``CLIPModel`` / ``SiglipModel``
  (``save_pretrained``).
* :func:`save_model_and_edit` writes the folded folder plus the edit alone (``edit.safetensors``, see
  :mod:`~lightning_unlearn.artifact`) in one step.

Every folder is written atomically (:mod:`~lightning_unlearn.staging`): an interrupted run leaves
either the old output or the complete new one, and only folders this library wrote are replaced.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from torch import nn

from .artifact import ArtifactError, save_edit
from .edit import edit_modules, edits, fold_
from .encoders import hf_kind
from .localdir import CONFIG_NAME, WEIGHTS_NAME, describe_key_mismatch, quiet_open_clip
from .sites import TOWERS, find_site, folded_config
from .staging import plain_json, staged_dir

#: The edit alone, next to the folded weights in a folder :func:`save_model_and_edit` writes.
EDIT_NAME = "edit.safetensors"


def preprocess_config(model: nn.Module) -> dict:
    """The image preprocessing open_clip attached to ``model`` (size, mean, std, interpolation...)."""
    return plain_json(open_clip.get_model_preprocess_cfg(model))


def _state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    # Clone: safetensors refuses tensors that share storage (tied weights); open_clip loads them apart.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _check_against_config(state: dict[str, torch.Tensor], folder: Path) -> None:
    """Build the architecture ``folder``'s config describes and compare keys and shapes with ``state``."""
    try:
        with quiet_open_clip(), torch.device("meta"):  # shapes only: no memory, no init time
            ref = open_clip.create_model(f"local-dir:{folder}", load_weights=False, device="meta")
    except Exception as e:  # noqa: BLE001 - open_clip raises many types for a bad config
        raise ArtifactError(f"open_clip cannot build a model from this model_cfg: {type(e).__name__}: {e}") from e
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    if missing or unexpected or shapes:
        raise ArtifactError("the model's weights do not match model_cfg: " + describe_key_mismatch(
            missing, unexpected, [f"{k} (model {got[k]}, config {expected[k]})" for k in shapes]))

def write_folded_into(folder: str | Path, model: nn.Module, model_cfg: dict,
                      preprocess_cfg: dict | None = None) -> Path:
    """Write the folded ``model`` (``open_clip_config.json`` + ``open_clip_model.safetensors``) into the
    existing ``folder`` (no staging: :func:`save_folded` wraps this in a temporary folder)."""
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
        got = f"keys {sorted(model_cfg)}" if isinstance(model_cfg, dict) else type(model_cfg).__name__
        raise ArtifactError("`model_cfg` must be an open_clip model config dict with 'vision_cfg' and 'text_cfg' "
                            f"(from open_clip.get_model_config(name)); got {got}")
    folder = Path(folder)
    model_cfg = folded_config(model, model_cfg)  # a layer an edit installed becomes an open_clip projection
    provenance = [dict(e.info, tensor=name) for name, e in edit_modules(model) if e.layout != "bias"]
    folded = copy.deepcopy(model)
    fold_(folded)
    state = _state_for_saving(folded)
    del folded
    config = {"model_cfg": plain_json(model_cfg),
              "preprocess_cfg": plain_json(preprocess_cfg or preprocess_config(model)),
              "lightning_unlearn": {"folded_edits": provenance}}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    _check_against_config(state, folder)
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def save_folded(model: nn.Module, model_cfg: dict, out_dir: str | Path, overwrite: bool = False,
                preprocess_cfg: dict | None = None) -> Path:
    """Write ``model`` with its edits folded in as an open_clip ``local-dir:`` folder.

    The folder holds ``open_clip_config.json`` ({"model_cfg", "preprocess_cfg", "lightning_unlearn":
    provenance}) and ``open_clip_model.safetensors``; the weights are checked against ``model_cfg``
    before anything is written. A deep copy is folded: ``model`` itself is not changed.

    >>> # save_folded(model, open_clip.get_model_config("ViT-B-32"), "vit-b32-no-dogs")
    >>> # open_clip.create_model_and_transforms("local-dir:vit-b32-no-dogs")

    Args:
        model: the (edited) open_clip model; a transformers model (``model_cfg=None``) is written by
            :func:`save_pretrained_folded`.
        model_cfg: the architecture dict open_clip builds the model from
            (``open_clip.get_model_config(name)``, or ``model_cfg`` of a local-dir's config file).
        out_dir: the folder to write.
        overwrite: replace an existing ``out_dir`` (only one this library wrote, or an empty one).
        preprocess_cfg: defaults to the one open_clip attached to ``model``.

    Returns:
        The folder.

    Raises:
        OutputError: ``out_dir`` exists and ``overwrite`` is False, or it may not be replaced.
        ArtifactError: ``model_cfg`` is not an open_clip config, or the weights do not fit it.
    """
    if hf_kind(model):
        if model_cfg is not None:
            raise ValueError("a transformers model carries its own config: pass model_cfg=None")
        return save_pretrained_folded(model, out_dir, overwrite)
    with staged_dir(out_dir, overwrite) as tmp:
        write_folded_into(tmp, model, model_cfg, preprocess_cfg)
    return Path(out_dir)


def save_pretrained_folded(model: nn.Module, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a transformers ``CLIPModel`` / ``SiglipModel`` with its edits folded in, by
    ``save_pretrained``: the folder loads with ``<Class>.from_pretrained(out_dir)``, no
    lightning_unlearn needed. A tower whose edit sits in a layer the architecture does not have
    (the vision tower of ``SiglipModel``) raises: ``from_pretrained`` would drop that layer."""
    for tower in TOWERS:
        site = find_site(model, tower)
        if site.slot is not None and site.slot.installed is not None and site.slot.folded_cfg is None:
            raise ArtifactError(f"the {tower} edit of this {type(model).__name__} lives in a layer its architecture "
                                "does not have (no projection on that tower), so from_pretrained would drop it: save "
                                "the edit with save_edit and re-apply it with apply_edit_file_ after from_pretrained, "
                                "or edit the other tower (towers=('text',))")
    with staged_dir(out_dir, overwrite) as tmp:
        folded = copy.deepcopy(model)
        fold_(folded)
        folded.save_pretrained(str(tmp))
    return Path(out_dir)


def save_model_and_edit(model: nn.Module, model_cfg: dict, out_dir: str | Path, overwrite: bool = False,
                        inputs=()) -> list[str]:
    """:func:`save_folded` plus, when ``model`` carries edits, the edit alone (``edit.safetensors`` +
    ``edit.json``, see :func:`~lightning_unlearn.artifact.save_edit`) in the same folder, written in
    one step.

    Args:
        model: the (edited) open_clip model.
        model_cfg: its architecture dict, as for :func:`save_folded`.
        out_dir: the folder to write.
        overwrite: replace an existing ``out_dir`` (only one this library wrote, or an empty one).
        inputs: paths being read (the model's folder or weights) that ``out_dir`` may not replace.

    Returns:
        The names of the files in ``out_dir``.

    Raises:
        OutputError: ``out_dir`` may not be written (see :func:`~lightning_unlearn.staging.check_output`).
        ArtifactError: the weights do not fit ``model_cfg``.
    """
    with staged_dir(out_dir, overwrite, inputs=inputs) as tmp:
        write_folded_into(tmp, model, model_cfg)
        if edits(model):
            save_edit(model, tmp / EDIT_NAME)
    return sorted(p.name for p in Path(out_dir).iterdir())

