"""Prototype synthesis at scale: stop groups independent of the synthesis batch, batches sized by the
device, bfloat16 autocast (opt-in). The synthesis shared across DDP ranks is tested in
tests/test_lightning.py (tests/ddp_unlearning.py) and tests/test_bad_inputs.py (tests/ddp_failure.py)."""
import pytest
import torch

from lightning_unlearn import ForgetRequest, cache, directions, embedded, restore_, unlearn_
from lightning_unlearn import prototypes as protos
from lightning_unlearn.directions import cell_keys, cell_texts, class_texts
from lightning_unlearn.sites import find_site
from lightning_unlearn.state import info_edit_id


@pytest.fixture(scope="module")
def emb():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-equal comparisons: one reduction order
    yield embedded.load_embedded()
    torch.set_num_threads(threads)


#: Cells whose groups of two stop at different steps (5, 15, 20 of 40) with their own texts as labels.
CELLS = [("star", "photo"), ("star", "sketch"), ("moon", "photo"), ("moon", "sketch"), ("heart", "cartoon"),
         ("heart", "painting")]


def cells_and_texts(emb, n=None):
    cells = CELLS if n is None else [(c, d) for d in emb.domains for c in emb.classnames][:n]
    T = cell_texts(emb.model, emb.tokenizer, cells, emb.cell_templates)
    return cells, T, T if n is None else class_texts(emb.model, emb.tokenizer, list(emb.classnames), emb.templates)


def test_groups_in_one_batch_stop_as_in_batches_of_their_own(emb):
    cells, T, C = cells_and_texts(emb)
    keys = cell_keys(cells, emb.cell_templates)
    # 16 images per group: at 4 the kernels round differently by batch size (pixels up to 1e-3 apart
    # after 40 steps, same stops), from 16 images on they give every image the same bits
    kw = dict(n_per_text=8, steps=40, seed=0, classes=C, stop_prob=0.5, check_every=5, progress=False)
    alone = [protos.synthesize(emb.model, T[i:i + 2], keys=keys[i:i + 2], **kw) for i in (0, 2, 4)]
    together = protos.synthesize(emb.model, T, keys=keys, groups=[0, 0, 1, 1, 2, 2], **kw)
    assert len({int(p.steps.max()) for p in alone}) > 1  # the groups stop at different steps: the test means something
    assert torch.equal(together.steps, torch.cat([p.steps for p in alone]))
    assert torch.equal(together.images, torch.cat([p.images for p in alone]))
    assert torch.equal(together.cos, torch.cat([p.cos for p in alone]))
    with pytest.raises(ValueError, match="`groups` need `classes`"):
        protos.synthesize(emb.model, T, keys=keys, groups=[0, 0, 1, 1, 2, 2], **(kw | {"classes": None}))


def test_prototype_columns_do_not_depend_on_the_synthesis_batch(emb, monkeypatch):
    cells, T, C = cells_and_texts(emb)
    site = find_site(emb.model, "image")
    monkeypatch.setattr(directions, "CHUNK_MAX", 16)  # stop groups of 2 cells (8 prototypes each): 3 groups
    args = (emb.model, site, "joint", T, cell_keys(cells, emb.cell_templates), C, "labels")
    kw = dict(n_prototypes=8, proto_steps=20, proto_lr=0.05, seed=0, progress=False)
    calls = []
    synthesize = protos.synthesize
    monkeypatch.setattr(protos, "synthesize", lambda *a, **k: calls.append(k["groups"]) or synthesize(*a, **k))
    results = []
    for limit in (16, 32, 10_000):  # images per batch: one group, two groups then one, every group
        monkeypatch.setattr(protos, "batch_images", lambda model, group, opts=None, _n=limit: _n)
        with cache.use(None):
            results.append(directions.prototype_columns(*args, **kw))
    assert calls == [None, None, None, [0, 0, 1, 1], None, [0, 0, 1, 1, 2, 2]]
    for cols, stats in results[1:]:
        assert torch.equal(cols, results[0][0])
        assert {k: v for k, v in stats.items() if k != "prototype_seconds"} == \
            {k: v for k, v in results[0][1].items() if k != "prototype_seconds"}


def test_batches_are_one_group_off_cuda(emb):
    assert protos.batch_images(emb.model, 64) == 64
    with pytest.raises(ValueError, match="max_images"):
        protos.Options(max_images=0)
    with pytest.raises(ValueError, match="memory_fraction"):
        protos.Options(memory_fraction=1.5)
    with protos.options(max_images=128) as o:
        assert protos.current_options() == o and o.max_images == 128
    assert protos.current_options() == protos.Options()


def test_cuda_batch_size_arithmetic(monkeypatch):  # the sizing rule, with the CUDA queries stubbed
    class Param:
        device = torch.device("cuda", 0)

    class Model:
        def parameters(self):
            return iter([Param()])
    gib = 2 ** 30
    monkeypatch.setattr(protos, "_bytes_per_image", lambda model, autocast: 20 * 2 ** 20)  # 20 MiB an image
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * gib, 141 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    # (100 + 6 - 2) GiB x 0.5 / 20 MiB = 2,662 images -> 2,656 (83 groups of 32)
    assert protos.batch_images(Model(), 32) == 2656
    assert protos.batch_images(Model(), 32, protos.Options(max_images=1000)) == 992
    assert protos.batch_images(Model(), 32, protos.Options(max_images=10)) == 32  # never below one group
    assert protos.batch_images(Model(), 32, protos.Options(memory_fraction=1.0)) == protos.CUDA_MAX_IMAGES


def test_shard_puts_the_ranks_rows_together_and_stops_on_a_failed_peer():
    from lightning_unlearn.sharding import PeerFailedError, Shard
    theirs = torch.tensor([[11.0], [13.0], [0.0]])  # rank 1 holds rows 1 and 3 (padded to 3 rows)
    failed = []
    shard = Shard(0, 2, vote=lambda decision, all=True: bool(failed) if not all else decision,
                  gather=lambda t: torch.stack([t, theirs if t.shape == theirs.shape else t]))
    mine = torch.tensor([[0.0], [2.0], [4.0]])  # rank 0 holds rows 0, 2, 4
    assert shard.rows(mine, 5).flatten().tolist() == [0.0, 11.0, 2.0, 13.0, 4.0]
    assert shard.least(7) == 7 and shard.every(torch.tensor([True, False])).tolist() == [True, False]
    failed.append(1)
    with pytest.raises(PeerFailedError, match="another rank failed while rank 0"):
        shard.rows(mine, 5)


def test_autocast_runs_and_keeps_float32_maps(emb):
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"], forget_domains=["sketch"])
    with cache.use(cache.Cache()):
        with protos.options(autocast=True):
            amp = unlearn_(emb.model, emb.tokenizer, request, proto_steps=3, progress=False)
        restore_(emb.model)
        plain = unlearn_(emb.model, emb.tokenizer, request, proto_steps=3, progress=False)
        restore_(emb.model)
    assert amp.maps["image"].dtype == torch.float32 and torch.isfinite(amp.maps["image"]).all()
    assert plain.stats["image"]["prototypes_reused"] == 0  # bf16 prototypes are kept apart in the bank
    assert amp.stats["image"]["prototype_autocast"] == "bf16" and "prototype_autocast" not in plain.stats["image"]
    assert not torch.equal(amp.maps["image"], plain.maps["image"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_from_free_memory_give_the_same_prototypes(emb, monkeypatch):
    model = embedded.load_embedded(device="cuda").model
    n = protos.batch_images(model, 64)
    assert n % 64 == 0 and 64 <= n <= protos.CUDA_MAX_IMAGES
    with protos.options(max_images=64):
        assert protos.batch_images(model, 64) == 64
    monkeypatch.setattr(directions, "CHUNK_MAX", 8)  # stop groups of 2 cells (4 prototypes each): 20 groups
    cells, T, C = cells_and_texts(emb, 40)
    site = find_site(model, "image")
    args = (model, site, "joint", T, cell_keys(cells, emb.cell_templates), C, "labels")
    kw = dict(n_prototypes=4, proto_steps=20, proto_lr=0.05, seed=0, progress=False)
    out = []
    for cap in (8, None):  # one group per batch, or every group in one batch
        with cache.use(None), protos.options(max_images=cap):
            out.append(directions.prototype_columns(*args, **kw))
    assert out[0][1]["prototype_image_steps"] == out[1][1]["prototype_image_steps"]  # the same stops
    torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-2)  # up to the kernels' rounding


def test_synthesize_starts_from_given_images(emb):
    T = cell_texts(emb.model, emb.tokenizer, CELLS[:2], emb.cell_templates)
    size = protos.model_io(emb.model)[0]
    init = torch.rand(2, 3, 3, size, size)
    p = protos.synthesize(emb.model, T, n_per_text=3, steps=1, lr=1e-6, blur_every=0, stop_prob=1.0, progress=False,
                          init=init)
    torch.testing.assert_close(p.images, init, rtol=0, atol=1e-5)  # one step of a tiny learning rate
    with pytest.raises(ValueError, match=r"`init` has shape \(2, 2, 3"):
        protos.synthesize(emb.model, T, n_per_text=3, steps=1, progress=False, init=init[:, :2])


def warm_start(emb, cells):
    return directions.Start.of_cells(emb.model, emb.tokenizer, cells, list(emb.classnames), emb.templates)


def test_warm_start_counts_its_class_stage_and_keeps_its_own_bank_entries(emb, monkeypatch):
    cells, T, _ = cells_and_texts(emb)
    C = class_texts(emb.model, emb.tokenizer, list(emb.classnames), emb.templates)
    site = find_site(emb.model, "image")
    args = (emb.model, site, "joint", T, cell_keys(cells, emb.cell_templates), C, "labels")
    kw = dict(n_prototypes=4, proto_steps=20, proto_lr=0.05, seed=0, progress=False)
    calls, synthesize = [], protos.synthesize

    def counted(*a, **k):
        p = synthesize(*a, **k)
        calls.append((len(a[1]), k["steps"], k.get("init") is not None, int(p.steps.sum())))
        return p
    monkeypatch.setattr(protos, "synthesize", counted)
    with cache.use(cache.Cache()):
        cold, s_cold = directions.prototype_columns(*args, **kw)
        warm, s_warm = directions.prototype_columns(*args, **kw, start=warm_start(emb, cells))
        again, s_again = directions.prototype_columns(*args, **kw, start=warm_start(emb, cells))
    # one class stage on the 3 classes (10 of the 20 steps), then the 6 cells from their class's images
    assert [c[:3] for c in calls] == [(6, 20, False), (3, 10, False), (6, 10, True)]
    assert s_warm["prototype_image_steps"] == calls[1][3] + calls[2][3]  # every image-step, the class stage's too
    assert s_cold["prototype_image_steps"] == calls[0][3]
    assert s_warm["prototypes_reused"] == 0 and s_again["prototypes_reused"] == 24 and len(calls) == 3
    assert not torch.equal(cold, warm) and torch.equal(warm, again)


def test_warm_start_does_not_depend_on_the_synthesis_batch(emb, monkeypatch):
    cells, T, _ = cells_and_texts(emb)
    C = class_texts(emb.model, emb.tokenizer, list(emb.classnames), emb.templates)
    site = find_site(emb.model, "image")
    monkeypatch.setattr(directions, "CHUNK_MAX", 32)  # stop groups of 2 cells (16 prototypes): 3 groups
    args = (emb.model, site, "joint", T, cell_keys(cells, emb.cell_templates), C, "labels")
    kw = dict(n_prototypes=16, proto_steps=40, proto_lr=0.05, seed=0, progress=False, start=warm_start(emb, cells))
    results = []
    for limit in (32, 10_000):  # one group per batch, or every group in one batch
        monkeypatch.setattr(protos, "batch_images", lambda model, group, opts=None, _n=limit: _n)
        with cache.use(None):
            results.append(directions.prototype_columns(*args, **kw))
    assert results[0][1]["prototype_image_steps"] == results[1][1]["prototype_image_steps"]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-4)


def test_warm_start_is_a_setting_of_the_edit(emb):
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"], forget_domains=["sketch"])
    with cache.use(cache.Cache()):
        warm = unlearn_(emb.model, emb.tokenizer, request, proto_steps=6, proto_start="class", progress=False)
        restore_(emb.model)
        cold = unlearn_(emb.model, emb.tokenizer, request, proto_steps=6, progress=False)
        restore_(emb.model)
    assert warm.config.proto_start == "class" and cold.config.proto_start == "noise"
    assert cold.stats["image"]["prototypes_reused"] == 0 and not torch.equal(warm.maps["image"], cold.maps["image"])
    assert info_edit_id(warm.infos["image"]) != info_edit_id(cold.infos["image"])
    with pytest.raises(ValueError, match=r"`proto_start`='warm' is not one of \('noise', 'class'\)"):
        unlearn_(emb.model, emb.tokenizer, request, proto_start="warm", progress=False)


def test_the_class_stage_follows_the_autocast_option(emb, monkeypatch):
    cells, T, _ = cells_and_texts(emb)
    C = class_texts(emb.model, emb.tokenizer, list(emb.classnames), emb.templates)
    flags, synthesize = [], protos.synthesize
    monkeypatch.setattr(protos, "synthesize", lambda *a, **k: flags.append(k.get("autocast")) or synthesize(*a, **k))
    with cache.use(None), protos.options(autocast=True):
        directions.prototype_columns(emb.model, find_site(emb.model, "image"), "joint", T,
                                     cell_keys(cells, emb.cell_templates), C, "labels", n_prototypes=2, proto_steps=2,
                                     proto_lr=0.05, seed=0, progress=False, start=warm_start(emb, cells))
    assert flags == [True, True]  # the class stage and the cell stage
