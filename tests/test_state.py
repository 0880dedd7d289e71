"""Edit state (lightning_unlearn.state): which config fields an edit id covers, the edit id from
objects, from provenance and through a checkpoint buffer, and the weights digest an edit artifact
checks before it re-applies."""
import copy

import torch

from lightning_unlearn import ForgetRequest, UnlearnConfig
from lightning_unlearn.state import (check_digest, config_dict, edit_id, edit_id_from_tensor, edit_id_tensor,
                                     info_edit_id, provenance, weights_digest)

from conftest import CLASSES, DOMAINS


def req(forget="dog"):
    return ForgetRequest(CLASSES, DOMAINS, forget_classes=[forget], templates=["a {d} of a {c}."])


def test_each_solver_accepts_its_own_fields_and_the_edit_id_covers_only_them():
    projector = UnlearnConfig(solver="projector", energy=0.9, protect="none")
    assert projector.energy == 0.9 and "margin" not in config_dict(projector)
    default = config_dict(UnlearnConfig(text_weight=10.0))
    assert default["text_weight"] == 10.0 and not {"energy", "protect", "center", "retain_energy"} & set(default)
    assert "n_prototypes" not in config_dict(UnlearnConfig(method="text"))
    r = req()
    assert edit_id(r, UnlearnConfig()) != edit_id(r, UnlearnConfig(text_weight=10.0))


def test_an_edit_id_is_the_same_from_objects_and_from_provenance_and_survives_a_buffer():
    r, cfg = req("cat"), UnlearnConfig(method="text")
    ident = edit_id(r, cfg)
    assert info_edit_id(provenance(r, cfg)) == ident and info_edit_id({}) is None
    assert edit_id_from_tensor(edit_id_tensor(ident)) == ident and edit_id_from_tensor(edit_id_tensor("")) == ""


def test_the_weights_digest_covers_each_projection_and_the_rest_and_is_stable(emb):
    digest = weights_digest(emb.model)
    assert set(digest) == {"visual.proj", "text_projection", "backbone"}
    assert digest == weights_digest(copy.deepcopy(emb.model)) and check_digest(digest, emb.model) == ([], [])
    other = copy.deepcopy(emb.model)
    with torch.no_grad():
        other.visual.proj[0, 0] += 1e-3
    assert weights_digest(other)["visual.proj"] != digest["visual.proj"]
    assert weights_digest(other)["backbone"] == digest["backbone"]
