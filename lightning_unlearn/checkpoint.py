"""A Lightning checkpoint of :class:`~lightning_unlearn.module.CLIPUnlearning` as a folded open_clip
``local-dir:`` folder: what ``lightning-unlearn export CKPT -o DIR`` runs.

The checkpoint is read with ``weights_only=True`` (loading never runs code); the architecture is
the one the module recorded (``model_config``) or the one the caller names.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .artifact import ArtifactError
from .export import save_model_and_edit
from .load import keys_from_torch_error, model_cfg_of, unpickling_error
from .localdir import describe_key_mismatch
from .staging import check_output

_HINT = ("a CLIPUnlearning checkpoint holds only tensors and plain values, so this one was written by "
         "another module (or with objects in its hyper-parameters)")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, model: str | None = None,
                      overwrite: bool = False) -> list[str]:
    """Write a Lightning checkpoint of ``CLIPUnlearning`` as a folded open_clip ``local-dir:`` folder
    (plus ``edit.safetensors`` when the model carries edits).

    Args:
        checkpoint: the ``.ckpt`` file.
        out_dir: the folder to write (must not exist, unless ``overwrite`` and written by this library).
        model: the architecture (a name or ``local-dir:DIR``) where the module recorded none.
        overwrite: replace ``out_dir``.

    Returns:
        The written file names.

    Raises:
        FileNotFoundError: ``checkpoint`` is not a file.
        ValueError: the file is not a readable Lightning checkpoint of ``CLIPUnlearning``, holds no
            computed edit, or records no architecture and ``model`` is None.
        ArtifactError: the folded model cannot be written.
    """
    ckpt, out = Path(checkpoint), Path(out_dir)
    check_output(out, overwrite, inputs=[ckpt])
    _check_lightning_checkpoint(ckpt)
    module = _restore(ckpt)
    if model is not None:
        model_cfg = model_cfg_of(model)
    elif module.model_config is not None:
        model_cfg = module.model_config["model_cfg"]
    else:
        raise ValueError(f"{ckpt} records no model config (the module was built from a model object without "
                         "`arch`); pass the architecture: `model`= a name or 'local-dir:DIR' (--model)")
    if not module.computed:
        raise ValueError(f"{ckpt} holds no computed edit (the module was saved before `compute_edit()` or a stage ran)")
    try:
        return save_model_and_edit(module.clip, model_cfg, out, overwrite, inputs=[ckpt])
    except ArtifactError as e:
        raise ArtifactError(f"{ckpt}: {e}") from e


def _check_lightning_checkpoint(ckpt: Path) -> None:
    """Raise unless ``ckpt`` is a file ``torch.load(weights_only=True)`` reads as a dict with a ``state_dict``."""
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist" if not ckpt.exists()
                                else f"checkpoint {ckpt} is not a file")
    try:
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise unpickling_error(ckpt, e, _HINT) from e
    except Exception as e:  # noqa: BLE001 - zipfile / EOF / OS errors: unreadable
        raise ValueError(f"cannot read checkpoint {ckpt} ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise ValueError(f"{ckpt} is not a Lightning checkpoint (no 'state_dict' entry); for plain open_clip weights "
                         f"use load_clip(NAME, pretrained='{ckpt}') (`lightning-unlearn unlearn --model NAME "
                         f"--pretrained {ckpt}`)")


def _restore(ckpt: Path):
    """``CLIPUnlearning.load_from_checkpoint(ckpt)`` on the CPU, its failures as one-line ``ValueError`` s."""
    from .module import CLIPUnlearning  # imports Lightning
    try:
        return CLIPUnlearning.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise unpickling_error(ckpt, e, _HINT) from e
    except RuntimeError as e:
        missing, unexpected, shapes = keys_from_torch_error(str(e))
        if missing or unexpected or shapes:
            raise ValueError(f"{ckpt} does not match CLIPUnlearning: "
                             + describe_key_mismatch(missing, unexpected, shapes) + _old_format(str(e))) from e
        raise ValueError(f"cannot restore CLIPUnlearning from {ckpt}: {str(e).splitlines()[0]}") from e
    except Exception as e:  # noqa: BLE001 - hyperparameters that no longer fit the class, ...
        raise ValueError(f"cannot restore CLIPUnlearning from {ckpt}: {type(e).__name__}: {e}"
                         + _old_format(str(e))) from e


#: Hyperparameters and buffers of checkpoints saved by lightning_unlearn 0.1.0 before the option groups.
_OLD_NAMES = ("templates", "colours", "colour_templates", "trainable", "lr", "weight_decay", "edit_fingerprint")


def _old_format(message: str) -> str:
    """A hint for a checkpoint written before ``CLIPUnlearning``'s option groups, when ``message`` names one
    of its old hyperparameters or buffers ("" otherwise)."""
    if not any(f"'{name}'" in message or f"{name}" in message.split() for name in _OLD_NAMES):
        return ""
    return ("; this checkpoint predates the option groups: load it with the version that wrote it, or move "
            "templates / colours / colour_templates under `evaluation=`, trainable / lr / weight_decay under "
            "`finetune=` in its hyper_parameters, and rename the buffer `edit_fingerprint` to `computed_edit_id`")
