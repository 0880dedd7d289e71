"""Reuse across requests: weights key, short-context text encoding, prompt cache, prototype bank."""
from __future__ import annotations

import copy
import threading

import open_clip
import pytest
import torch
import torch.nn.functional as Fn

from lightning_unlearn import ForgetRequest, cache, directions, embedded, prototypes, restore_, unlearn_, zeroshot

CLASSES, DOMAINS = ["cat", "dog", "bird", "fish"], ["photo", "sketch"]
FAST = dict(class_templates=("a {c}.",), progress=False, n_prototypes=2, proto_steps=4)


def _model(seed):
    embedded.register()
    torch.manual_seed(seed)
    return open_clip.create_model(embedded.MODEL_NAME).eval()


@pytest.fixture(scope="module")
def two():
    return _model(0), _model(1), open_clip.get_tokenizer(embedded.MODEL_NAME)


def test_short_context_gives_the_full_context_embeddings(two):
    model, _, tok = two
    texts = ["red", "a photo of a dog.", "a very small striped dog in a dark painting, seen from far away.", "a cat."]
    assert zeroshot._short_context(model)
    with torch.no_grad():
        full = Fn.normalize(model.encode_text(tok(texts)).float(), dim=-1)
    calls = []
    original = model.transformer.forward
    model.transformer.forward = lambda x, **kw: calls.append(x.shape[1]) or original(x, **kw)
    try:
        short = zeroshot.text_embeddings(model, tok, texts, batch_size=2)
    finally:
        del model.transformer.forward
    torch.testing.assert_close(short, full, atol=1e-6, rtol=0)
    n_tokens = [int(t.argmax()) + 1 for t in tok(texts)]  # up to and including the end-of-text token
    assert calls == [max(sorted(n_tokens)[:2]), max(sorted(n_tokens)[2:])]  # sorted by length, no padding


def test_weights_key_follows_the_weights(two):
    a, b, _ = two
    key = cache.weights_key(a)
    assert cache.weights_key(a) == key == cache.weights_key(copy.deepcopy(a))  # content, not identity
    assert cache.weights_key(b) != key
    w = a.visual.proj
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w[3, 5] += 1e-3  # in place, bumps the version counter
        assert cache.weights_key(a) != key
        with torch.no_grad():
            w.copy_(saved)
        assert cache.weights_key(a) == key
        w.data[0, 0] += 1.0  # a write through .data leaves the version counter alone: seen by the probe
        assert cache.weights_key(a) != key
    finally:
        w.data.copy_(saved)
    assert cache.weights_key(a) == key


def test_prompt_cache_is_per_model_and_nests(two, monkeypatch):
    a, b, tok = two
    texts = ["a photo of a dog.", "a sketch of a cat.", "a photo of a dog."]
    calls = []
    original = zeroshot.text_embeddings
    monkeypatch.setattr(directions, "text_embeddings", lambda m, t, x: calls.append(len(x)) or original(m, t, x))
    outer = cache.Cache()
    with cache.use(outer):
        ea = directions.encode(a, tok, texts)
        assert calls == [2]  # two distinct prompts, once each
        with cache.use(cache.Cache()) as inner:  # nested: its own store
            eb = directions.encode(b, tok, texts[:2])
            directions.encode(b, tok, texts[:2])
            assert calls == [2, 2] and len(inner.texts) == 2
        assert cache.current() is outer
        directions.encode(a, tok, texts)  # the outer store still has model a's prompts
        assert calls == [2, 2] and len(outer.texts) == 2
        with cache.use(None):
            directions.encode(a, tok, texts[:1])
        assert calls == [2, 2, 1]
    torch.testing.assert_close(ea, original(a, tok, texts), atol=0, rtol=0)
    torch.testing.assert_close(eb, original(b, tok, texts[:2]), atol=0, rtol=0)
    assert not torch.allclose(ea[:2], eb)  # two models, two embeddings of the same text
    with pytest.raises(TypeError, match=r"must be a lightning_unlearn.cache.Cache or None \(no caching\), got dict"):
        with cache.use({}):
            pass


def test_prototypes_stopped_per_image_do_not_depend_on_their_batch(two):
    model, _, tok = two
    T = directions.cell_texts(model, tok, [("dog", "photo"), ("cat", "sketch"), ("bird", "photo")], ["a {d} of a {c}."])
    both = prototypes.synthesize(model, T[:2], n_per_text=2, steps=5, classes=T, keys=["x", "y"], per_image=True,
                                 progress=False)
    alone = prototypes.synthesize(model, T[1:2], n_per_text=2, steps=5, classes=T, keys=["y"], per_image=True, progress=False)
    torch.testing.assert_close(alone.images[0], both.images[1], atol=1e-5, rtol=0)
    other = prototypes.synthesize(model, T[1:2], n_per_text=2, steps=5, classes=T, keys=["y"], seed=1, per_image=True,
                                  progress=False)
    assert not torch.allclose(other.images, alone.images)
    assert both.steps.shape == (2, 2) and int(both.steps.max()) <= 5


def test_second_request_reuses_prompts_and_prototypes_and_gives_the_same_edit(two):
    model, _, tok = two
    request = ForgetRequest(CLASSES, DOMAINS, forget_classes=["dog"], forget_domains=["photo"])
    with cache.use(cache.Cache()) as store:
        cold = unlearn_(model, tok, request, **FAST)
        restore_(model)
        warm = unlearn_(model, tok, request, **FAST)
        restore_(model)
    n = cold.stats["image"]["n_prototypes"]
    assert cold.stats["image"]["prototypes_reused"] == 0 and warm.stats["image"]["prototypes_reused"] == n > 0
    assert torch.equal(cold.maps["image"], warm.maps["image"])
    assert len(store.banks) == 1 and len(next(iter(store.banks.values()))) == n // 2  # one entry per cell
    with cache.use(None):  # no cache: the same edit, computed from scratch
        plain = unlearn_(model, tok, request, **FAST)
        restore_(model)
    assert plain.stats["image"]["prototypes_reused"] == 0
    torch.testing.assert_close(plain.maps["image"], cold.maps["image"], atol=1e-5, rtol=0)
    with cache.use(cache.Cache()):  # the same class in another domain: the same cells, in another order
        other = unlearn_(model, tok, ForgetRequest(CLASSES, DOMAINS, forget_classes=["dog"], forget_domains=["sketch"]),
                         **FAST)
        restore_(model)
        again = unlearn_(model, tok, request, **FAST)
        restore_(model)
    assert other.stats["image"]["prototypes_reused"] == 0 and again.stats["image"]["prototypes_reused"] == n
    assert torch.equal(again.maps["image"], cold.maps["image"])  # the batch's order changes no image


def test_bank_on_disk_is_atomic_and_refuses_other_weights(two, tmp_path):
    a, b, tok = two
    request = ForgetRequest(CLASSES, DOMAINS, forget_domains=["sketch"])
    with cache.use(cache.Cache(tmp_path)):
        cold = unlearn_(a, tok, request, **FAST)
        restore_(a)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{cache.weights_key(a)}.safetensors"]  # no temporary file left
    with cache.use(cache.Cache(tmp_path)):  # a new process would see the same: prototypes from disk
        warm = unlearn_(a, tok, request, **FAST)
        restore_(a)
    assert warm.stats["image"]["prototypes_reused"] == warm.stats["image"]["n_prototypes"] > 0
    torch.testing.assert_close(warm.maps["image"], cold.maps["image"], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"was made for weights '[0-9a-f]{32}', not for this model"):
        cache.PrototypeBank.load(tmp_path / files[0], cache.weights_key(b))
    with pytest.raises(ValueError, match=r"the bank has no `path`"):
        cache.PrototypeBank("k").save()


def test_weights_key_reads_every_value(two):
    a, _, _ = two
    key, emb = cache.weights_key(a), a.token_embedding.weight
    with torch.no_grad():
        emb[[5, 6]] = emb[[6, 5]]  # a swap: the same sum, values no sample of a few thousand need to read
    try:
        assert cache.weights_key(a) != key
    finally:
        with torch.no_grad():
            emb[[5, 6]] = emb[[6, 5]]
    assert cache.weights_key(a) == key


def test_banks_are_bounded_oldest_first(tmp_path):
    row = torch.ones(2, 4)  # 32 bytes (clones: entries saved together may not share memory)
    bank = cache.PrototypeBank("w", tmp_path / "w.safetensors", max_bytes=3 * row.nbytes)
    for k in "abcd":
        bank.put(k, row.clone())
    assert list(bank.entries) == ["b", "c", "d"]
    bank.put("b", row.clone())  # replaced where it is: still the oldest
    bank.put("e", row.clone())
    assert list(bank.entries) == ["c", "d", "e"]
    bank.save()
    assert list(cache.PrototypeBank.load(bank.path, "w", max_bytes=row.nbytes).entries) == ["e"]
    store = cache.Cache(tmp_path, max_banks=2, max_bank_bytes=row.nbytes)
    for w in "xyz":
        store.bank(w).put("k", row.clone())
    assert list(store.banks) == ["y", "z"] and (tmp_path / "x.safetensors").is_file()  # saved as it went
    assert len(cache.DEFAULT.bank("some weights").entries) == 0 and cache.DEFAULT.max_banks == cache.MAX_BANKS
    cache.DEFAULT.banks.pop("some weights")
    with pytest.raises(ValueError, match="`max_bytes`=-1 must be a non-negative number of bytes"):
        cache.PrototypeBank("w", max_bytes=-1)
    with pytest.raises(ValueError, match="`max_banks`=0 must be a positive number of banks"):
        cache.Cache(max_banks=0)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (bit-equal comparisons: one reduction order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_threads_editing_two_models_give_the_maps_of_one_thread(two, one_thread):
    a, b, tok = two
    request = ForgetRequest(CLASSES, DOMAINS, forget_classes=["dog"], forget_domains=["photo"])
    settings = FAST | dict(n_prototypes=1, proto_steps=2)
    alone = {}
    for key, model in (("a", a), ("b", b)):
        alone[key] = unlearn_(model, tok, request, cache=cache.Cache(), **settings).maps["image"]
        restore_(model)
    shared, maps, errors, start = cache.Cache(), {}, [], threading.Barrier(2)

    def edit(key, model):
        try:
            start.wait()
            maps[key] = unlearn_(model, tok, request, cache=shared, **settings).maps["image"]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            restore_(model)
    threads = [threading.Thread(target=edit, args=item) for item in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(maps) == ["a", "b"]
    assert all(torch.equal(maps[k], alone[k]) for k in maps) and not torch.equal(maps["a"], maps["b"])
    assert len(shared.banks) == 2  # one per model, both in the cache both threads were given
    with pytest.raises(TypeError, match="got str; unlearn_ also takes cache='current'"):
        unlearn_(a, tok, request, cache="shared", **settings)
    assert not restore_(a)  # nothing was injected
