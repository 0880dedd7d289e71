"""The world renderer and the datasets: determinism, labels, speed, folder round trip, bad input."""
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_unlearn.data import (CLASSES, COLOUR_NAMES, DOMAINS, DomainFolderDataset, World, WorldDataset,
                                    cell_images, embed_split, render_split, rendered_batches, write_world)
from lightning_unlearn.zeroshot import encode_images


def pixels(image):
    return np.asarray(image)


def test_render_is_deterministic_and_splits_differ():
    a, b = World("test", 3)[7], World("test", 3)[7]
    assert np.array_equal(pixels(a.image), pixels(b.image))
    assert (a.cls, a.domain, a.colour) == (b.cls, b.domain, b.colour)
    assert not np.array_equal(pixels(World("train", 3)[7].image), pixels(a.image))
    assert not np.array_equal(pixels(World("test", 3)[8].image), pixels(a.image))


def test_labels_follow_the_index():
    n = 3
    world = World("test", n)
    assert len(world) == len(CLASSES) * len(DOMAINS) * n
    for i in [0, 1, n, n * len(DOMAINS), len(world) // 2, len(world) - 1]:
        s = world[i]
        assert (s.cls, s.domain) == divmod(i // n, len(DOMAINS))
        assert 0 <= s.colour < len(COLOUR_NAMES)
        assert world.labels(i) == (s.cls, s.domain, s.colour)
        assert s.image.size == (32, 32) and s.image.mode == "RGB"
    assert len({world[i].colour for i in range(len(world))}) > 1


def test_a_test_cell_of_100_renders_in_seconds():
    world = World("test", 100)
    start = time.perf_counter()
    for i in range(3 * 100, 4 * 100):  # the painting cell: the slowest style
        world[i]
    assert time.perf_counter() - start < 5.0


def test_world_dataset_returns_normalised_tensors_and_labels():
    world = World("val", 2)
    ds = WorldDataset(world)
    assert ds.classnames == CLASSES and ds.domains == DOMAINS and len(ds) == len(world)
    x, c, d, col = ds[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() < 0 < x.max()  # normalised, not in [0, 1]
    assert (c, d, col) == world.labels(5)


def test_a_rendered_split_is_the_batches_in_one_and_its_cells_pick_their_images():
    x, y = render_split("val", 2)
    batches = rendered_batches("val", 2, batch_size=7)
    assert torch.equal(x, torch.cat([b[0] for b in batches]))
    assert torch.equal(y, torch.stack([torch.cat([b[i] for b in batches]) for i in (1, 2, 3)], 1))
    assert y.shape == (len(CLASSES) * len(DOMAINS) * 2, 3) and y.dtype == torch.int64
    cells = [("star", "sketch"), (CLASSES[0], DOMAINS[-1])]
    picked = cell_images(x, y, cells, 1)
    assert list(picked) == cells and all(len(v) == 1 for v in picked.values())
    i = int(((y[:, 0] == CLASSES.index("star")) & (y[:, 1] == DOMAINS.index("sketch"))).nonzero()[0])
    assert torch.equal(picked[("star", "sketch")][0], x[i])
    assert all(len(v) == 2 for v in cell_images(x, y, cells).values())  # default: every image of the cell


def test_an_embedded_split_is_its_images_encoded_in_batches(emb):
    x, h, y = embed_split(emb, "test", 1, batch_size=16)
    x2, y2 = render_split("test", 1, emb.preprocess)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert h.shape == (len(x), emb.model.visual.output_dim) and h.dtype == torch.float32
    torch.testing.assert_close(h, encode_images(emb.model, x, batch_size=len(x)), atol=1e-5, rtol=1e-5)


def test_folder_round_trip(tmp_path):
    world = World("test", 2, classes=("circle", "star", "moon"), domains=("sketch", "photo"))
    root = write_world(world, tmp_path / "w")
    assert root == tmp_path / "w" and (root / "sketch" / "star" / "1.png").is_file()
    ds = DomainFolderDataset(root, classnames=world.classnames, domains=world.domains)
    assert len(ds) == len(world) and not ds.skipped
    assert ds.support == {d: {c: 2 for c in world.classnames} for d in world.domains}
    expected = {}
    for i in range(len(world)):
        s = world[i]
        expected[(s.cls, s.domain, i % world.n_per_cell)] = WorldDataset(world)[i][0]
    for (path, _, _), (x, c, d) in zip(ds.samples, (ds[i] for i in range(len(ds)))):
        assert torch.equal(x, expected[(c, d, int(path.stem))])  # PNG is lossless: same pixels
    # Without fixing the order, names come back sorted.
    plain = DomainFolderDataset(root)
    assert plain.domains == ("photo", "sketch") and plain.classnames == ("circle", "moon", "star")


def test_folder_ignores_other_files_and_matches_extensions_case_insensitively(tmp_path):
    for name in ["a.PNG", "b.JpG", "c.webp", "notes.txt", ".hidden.png"]:
        folder = tmp_path / "photo" / "cat"
        folder.mkdir(parents=True, exist_ok=True)
        if name.endswith("txt"):
            (folder / name).write_text("not an image")
        else:
            fmt = {"jpg": "JPEG", "webp": "WEBP"}.get(name.rsplit(".", 1)[1].lower(), "PNG")
            Image.new("RGB", (8, 8), "red").save(folder / name, format=fmt)
    (tmp_path / "README.md").write_text("a file at the root is not a domain")
    ds = DomainFolderDataset(tmp_path)
    assert [p.name for p, _, _ in ds.samples] == ["a.PNG", "b.JpG", "c.webp"]
    assert ds.domains == ("photo",) and ds.classnames == ("cat",)


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        DomainFolderDataset(tmp_path / "no_such_dir")
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(NotADirectoryError, match="file.txt"):
        DomainFolderDataset(tmp_path / "file.txt")
    (tmp_path / "empty" / "photo" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no readable images.*empty"):
        DomainFolderDataset(tmp_path / "empty")


def test_domain_without_class_folders_names_the_folder(tmp_path):
    write_world(World("test", 1, classes=("circle",), domains=("photo",)), tmp_path)
    (tmp_path / "sketch").mkdir()
    with pytest.raises(ValueError, match="sketch.*no class folders"):
        DomainFolderDataset(tmp_path)


def test_classes_differing_across_domains_warn_and_use_the_union(tmp_path):
    write_world(World("test", 2, classes=("circle", "star"), domains=("photo",)), tmp_path)
    write_world(World("test", 1, classes=("circle", "moon"), domains=("sketch",)), tmp_path)
    with pytest.warns(UserWarning, match=r"lack some classes.*'photo' lacks \['moon'\].*'sketch' lacks \['star'\]"):
        ds = DomainFolderDataset(tmp_path)
    assert ds.classnames == ("circle", "moon", "star")
    assert ds.support == {"photo": {"circle": 2, "moon": 0, "star": 2}, "sketch": {"circle": 1, "moon": 1, "star": 0}}
    assert len(ds) == 6


def test_corrupt_images_are_skipped_with_one_warning(tmp_path):
    write_world(World("test", 2, classes=("circle",), domains=("photo",)), tmp_path)
    folder = tmp_path / "photo" / "circle"
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    good = (folder / "0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = DomainFolderDataset(tmp_path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 3 unreadable" in messages[0] and "broken.png" in messages[0]
    assert sorted(p.name for p in ds.skipped) == ["broken.png", "empty.jpg", "truncated.png"]
    assert len(ds) == 2 and ds.support == {"photo": {"circle": 2}}
    ds[0], ds[1]  # the kept ones load
    (folder / "1.png").write_bytes(b"")  # broken after the scan: loading names the file
    with pytest.raises(OSError, match="1.png"):
        ds[1]


def test_unknown_classnames_suggest_close_matches(tmp_path):
    write_world(World("test", 1, classes=("circle", "star"), domains=("photo",)), tmp_path)
    with pytest.raises(ValueError, match="class 'cirle' in `classnames` has no folder.*did you mean 'circle'"):
        DomainFolderDataset(tmp_path, classnames=["star", "cirle"])
    with pytest.raises(ValueError, match="domain 'skecth' in `domains`.*found: \\['photo'\\]"):
        DomainFolderDataset(tmp_path, domains=["skecth"])
    with pytest.raises(ValueError, match="`classnames` lists .*star.* more than once"):
        DomainFolderDataset(tmp_path, classnames=["star", "star"])
    ds = DomainFolderDataset(tmp_path, classnames=["star", "circle"])
    assert ds.classnames == ("star", "circle") and [c for _, c, _ in ds.samples] == [0, 1]
