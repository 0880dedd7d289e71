"""The open_clip ``local-dir:`` model folder as both sides see it: its file names and its config file,
read by :mod:`~lightning_unlearn.load` and written by :mod:`~lightning_unlearn.export`.

Standard library only (neither torch nor open_clip is imported here), so that loading a model does
not import the writing side. Also holds what reading and writing share: :class:`ArtifactError`,
silencing open_clip's warnings while an architecture is built, and the wording of a key mismatch.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

from .errors import UnlearnError

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


class ArtifactError(UnlearnError, ValueError):
    """An edit artifact (or model folder) that cannot be read or does not fit."""


@contextmanager
def quiet_open_clip():
    """Silence open_clip's root-logger warnings ("No pretrained weights loaded ...") while building a
    model whose weights are loaded separately."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def describe_key_mismatch(missing, unexpected, shapes=(), limit: int = 8) -> str:
    """'missing keys [...]; unexpected keys [...]; shape mismatches [...]' with at most ``limit`` each."""
    def some(keys):
        keys = list(keys)
        return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    parts = [f"{what} ({len(keys)}): {some(keys)}" for what, keys in
             [("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)] if keys]
    return "; ".join(parts) or "no differences"


def read_local_dir_config(folder: str | Path) -> dict:
    """The parsed ``open_clip_config.json`` of a local-dir model folder.

    Args:
        folder: the model folder (what follows ``local-dir:``).

    Returns:
        The config as a dict; its ``"model_cfg"`` is the architecture dict.

    Raises:
        FileNotFoundError: ``folder`` does not exist, is a file, or has no config file.
        ArtifactError: the config file cannot be read or has no ``model_cfg`` object.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist" if not folder.exists()
                                else f"{folder} is a file; a local-dir model is a folder holding {CONFIG_NAME}")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; a local-dir model folder holds {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (as written by save_folded or `lightning-unlearn unlearn`)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ArtifactError(f"{path} has no 'model_cfg' object; open_clip needs {{\"model_cfg\": ..., "
                            "\"preprocess_cfg\": ...}")
    return config
