"""The shipped model loads offline and classifies the held-out world (class, domain-wise and colour)."""
import pytest
import torch

from lightning_unlearn import embedded, zeroshot
from lightning_unlearn.data import COLOUR_NAMES, World, WorldDataset


@pytest.fixture(scope="module")
def shipped():
    return embedded.load_embedded()


def test_loads_offline_with_the_world_vocabulary(shipped, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = embedded.load_embedded()  # no download: config and weights are package files
    assert shipped.classnames == World().classnames and shipped.colours == COLOUR_NAMES
    x = WorldDataset(World("test", 1))[0][0][None]
    assert torch.allclose(shipped.model.encode_image(x), again.model.encode_image(x))


def test_zero_shot_accuracy_on_held_out_images(shipped):
    ds = WorldDataset(World("test", 10))
    loader = torch.utils.data.DataLoader(ds, batch_size=200)
    m, tok = shipped.model, shipped.tokenizer
    res = zeroshot.evaluate(m, tok, shipped.classnames, shipped.templates, loader, shipped.domains, progress=False,
                            extra={"colour": (zeroshot.classifier(m, tok, COLOUR_NAMES, shipped.colour_templates),
                                              lambda b: b[3])})
    summary = f"accuracy {res['micro']:.3f}, per domain {res['per_domain']}, colour {res['colour_accuracy']:.3f}"
    assert res["micro"] >= 0.95, summary
    assert min(res["per_domain"].values()) >= 0.90, summary
    assert res["colour_accuracy"] >= 0.90, summary
