"""lightning_unlearn: training- and data-free class unlearning for open_clip CLIP models.

Implements the multimodal-nullspace edit of "Selective, Controlled and Domain-Agnostic Unlearning
in Pretrained CLIP" (arXiv 2512.14113) as a frozen linear layer, for plain PyTorch and Lightning.
The Lightning pieces are imported lazily, so ``import lightning_unlearn`` does not import Lightning.
"""
from .edit import (EditError, ProjectorEdit, UnlearnConfig, Unlearned, edits, fold_, inject_, remove_edit_, restore_,
                   unlearn_, unlearned)
from .request import ForgetRequest, RequestError
from .encoders import hf_tokenizer
from .sites import UnsupportedModelError

_LAZY = {"CLIPUnlearning": "module", "NullspaceUnlearning": "callback", "UnlearningAccuracy": "metrics",
         "WorldDataModule": "datamodules", "FolderDataModule": "datamodules"}

__all__ = ["ForgetRequest", "RequestError", "UnlearnConfig", "Unlearned", "unlearn_", "fold_", "restore_",
           "inject_", "edits", "remove_edit_", "unlearned", "ProjectorEdit", "EditError", "UnsupportedModelError",
           "hf_tokenizer", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lightning_unlearn' has no attribute {name!r}")
