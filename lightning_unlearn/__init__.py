"""lightning_unlearn: training- and data-free class unlearning for open_clip CLIP models.

Implements the multimodal-nullspace edit of "Selective, Controlled and Domain-Agnostic Unlearning
in Pretrained CLIP" (arXiv 2512.14113) as a frozen linear layer, for plain PyTorch and Lightning.
"""
from .edit import EditError, ProjectorEdit, UnlearnConfig, Unlearned, edits, fold_, inject_, restore_, unlearn_
from .request import ForgetRequest, RequestError
from .targets import UnsupportedModelError

__all__ = ["ForgetRequest", "RequestError", "UnlearnConfig", "Unlearned", "unlearn_", "fold_", "restore_",
           "inject_", "edits", "ProjectorEdit", "EditError", "UnsupportedModelError"]
__version__ = "0.1.0"
