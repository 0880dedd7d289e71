"""lightning_unlearn: training- and data-free class unlearning for open_clip CLIP models.

Implements the multimodal-nullspace edit of "Selective, Controlled and Domain-Agnostic Unlearning
in Pretrained CLIP" (arXiv 2512.14113) as a frozen linear layer, for plain PyTorch and Lightning.
Everything but the request is imported lazily (on first use), so ``import lightning_unlearn`` imports
neither torch nor Lightning: the command line answers an interrupt during its start-up.
"""
from .errors import UnlearnError
from .request import ForgetRequest, RequestError

_LAZY = {**dict.fromkeys(("UnlearnConfig", "Unlearned", "unlearn_", "unlearned"), "edit"),
         **dict.fromkeys(("ProjectorEdit", "edits", "fold_", "restore_"), "stack"),
         **dict.fromkeys(("inject_", "remove_edit_"), "compose"),
         "EditError": "errors",
         **dict.fromkeys(("AUTO_PROTO_STEPS", "AUTO_RETAIN_CELL_WEIGHT", "TwoSided", "Projector", "Regularized",
                          "PrototypeSettings", "Deep"), "config"),
         "hf_tokenizer": "encoders", "UnsupportedModelError": "sites",
         "ArtifactError": "localdir", "OutputError": "staging", "WeightsMismatchError": "artifact",
         "CLIPUnlearning": "module", "NullspaceUnlearning": "callback", "UnlearningAccuracy": "metrics",
         "WorldDataModule": "datamodules", "FolderDataModule": "datamodules"}

__all__ = ["ForgetRequest", "RequestError", "UnlearnError", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lightning_unlearn' has no attribute {name!r}")
