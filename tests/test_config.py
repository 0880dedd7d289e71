"""The configuration (lightning_unlearn.config): values checked with the fix named, each solver's own
settings, the flat keywords sorted into typed parts, "auto" settings, and edit ids that do not move."""
import dataclasses

import pytest

from lightning_unlearn import ForgetRequest, UnlearnConfig, edit
from lightning_unlearn.config import (
    AUTO_PROTO_STEPS,
    AUTO_RETAIN_CELL_WEIGHT,
    Deep,
    Projector,
    PrototypeSettings,
    Regularized,
    TwoSided,
)
from lightning_unlearn.integration import make_config
from lightning_unlearn.state import config_dict, edit_id

CLASSES, DOMAINS = ("cat", "dog", "car"), ("photo", "sketch")


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=-0.1), r"`alpha`=-0.1 must be a number in \[0, 1\]"),
    (dict(alpha=1.5), r"`alpha`=1.5 must be"),
    (dict(alpha=float("nan")), r"`alpha`=nan must be"),
    (dict(alpha="0.5"), r"`alpha`='0.5' must be a number"),
    (dict(method="fast"), r"`method`='fast' is not one of \('multimodal', 'text'\)"),
    (dict(solver="lsq"), r"`solver`='lsq' is not one of \(.*'projector', 'regularized'\)"),
    (dict(site="input"), r"`site`='input' is not one of \('joint', 'pooled'\)"),
    (dict(solver="projector", protect="all"), r"`protect`='all' is not one of"),
    (dict(towers=("vision",)), r"`towers`=\('vision',\) must be a non-empty subset of \('image', 'text'\)"),
    (dict(towers=()), r"`towers`=\(\) must be a non-empty subset"),
    (dict(towers=("image", "image")), r"must be a non-empty subset"),
    (dict(site="pooled", towers=("image", "text")), r"`site`='pooled' edits the image tower only"),
    (dict(site="pooled", towers="text"), r"`site`='pooled' edits the image tower only"),
    (dict(depth="deep", site="pooled"), r"`depth`='deep' erases at the image output: it needs site='joint'"),
    (dict(n_prototypes=0), r"`n_prototypes`=0 \(visual prototypes per cell\) must be an integer >= 1"),
    (dict(proto_steps=0), r"`proto_steps`=0 \(synthesis steps per prototype, or 'auto'\) must be an integer >= 1"),
    (dict(proto_steps="fast"), r"`proto_steps`='fast' .* must be an integer >= 1"),
    (dict(depth="deep", deep_prototypes=0), r"`deep_prototypes`=0 .* must be an integer >= 1"),
    (dict(margin=-0.5), r"`margin`=-0.5 and `sink_margin`=0.25 must be >= 0"),
    (dict(sink_margin=float("nan")), r"`sink_margin`=nan must be >= 0"),
    (dict(class_templates=("a photo.",)), r"template 'a photo.' in `class_templates` has no \{c\} placeholder"),
    (dict(text_weight=-1.0), r"`text_weight`=-1.0 must be a finite number >= 0"),
    (dict(image_weight=float("inf")), r"`image_weight`=inf must be a finite number >= 0"),
    (dict(lam=0.0), r"`lam`=0.0 must be a finite number > 0"),
    (dict(retain_cell_weight=-1.0), r"`retain_cell_weight`=-1.0 must be 'auto' \(per paradigm\) or a finite number"),
    (dict(rounds=-1), r"`rounds`=-1 must be an integer >= 0"),
    (dict(solver="projector", energy=1.5), r"`energy`=1.5 must be in \(0, 1\]"),
    (dict(energy=0.9), r"`energy`=0.9 has no effect: solver='two-sided' ignores it; pass solver='projector'"),
    (dict(protect="none"), r"`protect`='none' has no effect: solver='two-sided' ignores it; pass solver='projector'"),
    (dict(solver="projector", margin=0.5), r"`margin`=0.5 has no effect: solver='projector' ignores it; "
                                           r"pass solver='two-sided'"),
    (dict(solver="regularized", energy=0.5), r"`energy`=0.5 has no effect: solver='regularized'"),
    (dict(method="text", n_prototypes=2), r"`n_prototypes`=2 has no effect: method='text' builds no visual "
                                          r"prototypes; pass method='multimodal'"),
    (dict(method="text", depth="deep", n_prototypes=2), r"`n_prototypes`=2 has no effect: method='text'"),
    (dict(method="text", depth="deep", proto_start="class"), r"`proto_start`='class' has no effect: method='text'"),
    (dict(deep_prototypes=2), r"`deep_prototypes`=2 has no effect: depth='shallow' builds no eraser"),
    (dict(solver="projector", rounds=1), r"`rounds`=1 has no effect: correction rounds need method='multimodal'"),
    (dict(method="text", rounds=1), r"`rounds`=1 has no effect"),
    (dict(text_first=False, lam=3.0), r"`lam`=3.0 has no effect: text_first=False skips stage 1"),
])
def test_bad_configs_raise_helpful_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnlearnConfig(**kwargs)


def test_config_accepts_a_single_tower_string():
    assert UnlearnConfig(towers="text").towers == ("text",)


def test_an_unknown_keyword_is_a_type_error_naming_the_closest_setting():
    with pytest.raises(TypeError, match=r"unknown UnlearnConfig setting\(s\) \['enrgy'\] \('enrgy' -> did you mean 'energy'"):
        UnlearnConfig(solver="projector", enrgy=0.9)


def test_flat_keywords_build_the_typed_parts_of_the_choice():
    cfg = UnlearnConfig(solver="projector", energy=0.9, n_prototypes=2)
    assert cfg.solver == "projector" and cfg.solver_config == Projector(energy=0.9)
    assert cfg.prototypes == PrototypeSettings(n_prototypes=2) and cfg.deep is None
    assert cfg == UnlearnConfig(solver=Projector(energy=0.9), prototypes=PrototypeSettings(n_prototypes=2))
    assert cfg.energy == 0.9 and cfg.n_prototypes == 2  # the flat view reads the parts
    assert UnlearnConfig(method="text").prototypes is None
    assert UnlearnConfig(method="text", depth="deep").prototypes == PrototypeSettings()  # the eraser's settings
    assert UnlearnConfig(depth="deep", deep_prototypes=3).deep == Deep(3)
    assert UnlearnConfig(solver="regularized", lam=5.0).solver_config == Regularized(lam=5.0)
    assert UnlearnConfig(margin=0.5).solver_config == TwoSided(margin=0.5)
    # a setting the chosen solver does not read is not in its part
    assert not hasattr(Projector(), "margin") and not hasattr(TwoSided(), "energy")
    with pytest.raises(TypeError):
        Projector(margin=0.5)
    # keywords the choice does not read pass at their default (a list for a tuple, None for "auto")
    assert UnlearnConfig(solver="projector", margin=0.75, retain_cell_weight=None) == UnlearnConfig(solver="projector")


def test_replace_takes_flat_keywords_and_carries_what_the_new_choice_reads():
    cfg = UnlearnConfig(n_prototypes=2, alpha=0.5)
    moved = dataclasses.replace(cfg, solver="regularized", lam=10.0)
    assert moved == UnlearnConfig(solver="regularized", lam=10.0, n_prototypes=2, alpha=0.5)
    assert dataclasses.replace(UnlearnConfig(lam=10.0), solver="regularized").lam == 10.0  # lam is read by both
    with pytest.raises(ValueError, match=r"`margin`=0.5 has no effect: solver='projector'"):
        dataclasses.replace(UnlearnConfig(margin=0.5), solver="projector")
    with pytest.raises(ValueError, match=r"`n_prototypes`=2 has no effect: method='text'"):
        dataclasses.replace(cfg, method="text")
    assert make_config({"solver": "projector"}, energy=0.9) == UnlearnConfig(solver="projector", energy=0.9)


def test_auto_settings_are_named_and_none_reads_as_auto():
    cfg = UnlearnConfig()
    assert cfg.prototypes.proto_steps == "auto" and cfg.solver_config.retain_cell_weight == "auto"
    assert UnlearnConfig(proto_steps=None, retain_cell_weight=None) == cfg
    assert [cfg.prototype_steps(p) for p in AUTO_PROTO_STEPS] == list(AUTO_PROTO_STEPS.values())
    assert UnlearnConfig(proto_steps=7).prototype_steps("domain") == 7
    one = ForgetRequest(CLASSES, DOMAINS, forget_domains=["sketch"])
    two = ForgetRequest(CLASSES, DOMAINS, forget_domains=["sketch", "photo"], forget_classes=["cat"])
    assert cfg.cell_weight(one) == AUTO_RETAIN_CELL_WEIGHT["domain"] == 900.0
    assert cfg.cell_weight(ForgetRequest(CLASSES, DOMAINS, forget_classes=["cat"])) == 0.0
    assert UnlearnConfig(retain_cell_weight=4.0).cell_weight(one) == 4.0 and cfg.cell_weight(two) == 0.0
    # edit ids and checkpoints stored None for "auto": to_dict writes it so, and reads back
    d = config_dict(cfg)
    assert d["proto_steps"] is None and d["retain_cell_weight"] is None
    assert edit.AUTO_PROTO_STEPS is AUTO_PROTO_STEPS and edit.UnlearnConfig is UnlearnConfig


@pytest.mark.parametrize("kwargs", [
    {}, dict(solver="projector", energy=0.9, protect="none"), dict(method="text"), dict(solver="regularized", lam=3.0),
    dict(depth="deep", deep_prototypes=2), dict(method="text", depth="deep", proto_steps=5), dict(text_first=False),
    dict(rounds=2, towers=("image", "text")), dict(site="pooled", solver="projector", protect="cells"),
    dict(proto_start="class"), dict(depth="deep", proto_start="class"),
])
def test_the_acting_settings_round_trip(kwargs):
    cfg = UnlearnConfig(**kwargs)
    assert UnlearnConfig(**config_dict(cfg)) == cfg == make_config(config_dict(cfg))
    assert tuple(config_dict(cfg)) == cfg.acting_fields()


#: Edit ids recorded before the typed configuration (artifacts and checkpoints carry them).
PINNED = [
    ({}, "cat", "2a4bdb9a3cf32a55"),
    ({}, None, "7b31b77d251e1d71"),
    (dict(solver="projector", energy=0.9), "cells", "dcc074a1d6a529a9"),
    (dict(method="text"), "cat", "3aca38c0b2676cac"),
    (dict(depth="deep", deep_prototypes=2), "cat", "24695fdc5da0ed19"),
    (dict(text_first=False), "cat", "d332e284c2f278ab"),
    (dict(proto_steps=50, retain_cell_weight=4.0), "cells", "ba48f86f30f0764a"),
    (dict(rounds=2, towers=("image", "text")), "cat", "4ed3468b4e23e29b"),
    (dict(site="pooled", solver="projector", protect="cells"), None, "148fc50e8501acb4"),
    (dict(solver="regularized", lam=10.0), "cat", "7caf17485d5f148d"),
]


@pytest.mark.parametrize("kwargs, forget, expected", PINNED)
def test_edit_ids_are_the_ones_recorded_before(kwargs, forget, expected):
    spec = {"cat": dict(forget_classes=("cat",)), None: dict(forget_domains=("sketch",)),
            "cells": dict(forget_classes=("cat",), forget_domains=("sketch",))}[forget]
    assert edit_id(ForgetRequest(CLASSES, DOMAINS, **spec), UnlearnConfig(**kwargs)) == expected


def test_stage_one_without_a_kept_class_is_recorded(emb):
    request = ForgetRequest(list(emb.classnames), list(emb.domains), forget_domains=[emb.domains[1]])
    with edit.unlearned(emb.model, emb.tokenizer, request, n_prototypes=1, proto_steps=2, progress=False,
                        class_templates=("a {c}.",)) as u:
        assert "no kept class" in u.stats["image"]["text_first_skipped"]
        assert "text_first_rank" not in u.stats["image"]


def test_other_solvers_read_the_per_paradigm_cell_weight_and_bad_values_get_their_own_error():
    from lightning_unlearn import ForgetRequest
    from lightning_unlearn.data import CLASSES, DOMAINS
    request = ForgetRequest(CLASSES, DOMAINS, forget_domains=["sketch"])
    assert UnlearnConfig(solver="projector").cell_weight(request) == UnlearnConfig().cell_weight(request) == 900.0
    with pytest.raises(ValueError, match=r"`protect`='bogus' is not one of"):
        UnlearnConfig(protect="bogus")  # a value no solver accepts: that error, not "has no effect"
    with pytest.raises(ValueError, match=r"`protect`='none' has no effect"):
        UnlearnConfig(protect="none")
