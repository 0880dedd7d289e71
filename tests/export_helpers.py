"""Helpers of the edit-file and export tests (tests/test_artifact.py, test_export.py): the embedded
model, a text-only global edit of it and fixed inputs are fixtures in conftest.py (``base``,
``edited``, ``inputs``)."""
import torch

FORGET = dict(forget_classes=["star"])  # global: the text-only method changes the model for it


def outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        return model.encode_image(inputs[0]), model.encode_text(inputs[1])


def assert_same_outputs(a, b, inputs):
    for x, y in zip(outputs(a, inputs), outputs(b, inputs)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
