"""Flowers: finding the photos, decoding them once, the ci fixture, and prepare_flowers."""
import io
import tarfile
import tempfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from labutils.data import (FLOWER_CLASSES, DataNotFoundError, TensorImageDataset, find_flowers,
                           flowers_augment, load_flowers_tensors, prepare_flowers)
from labutils.data import flowers as flowers_mod

COLOURS = {"daisy": (250, 250, 250), "sunflowers": (250, 210, 0), "roses": (200, 0, 30)}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No photos anywhere unless a test puts them there; fixtures go to tmp_path."""
    monkeypatch.delenv("LABUTILS_FLOWERS_DIR", raising=False)
    monkeypatch.setattr(flowers_mod, "_PROJECT_ROOT", tmp_path / "checkout")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def write_classes(root, counts=None, size=(40, 30)):
    """``root/<class>/<i>.jpg`` filled with the class colour; returns root."""
    counts = counts or {"daisy": 3, "sunflowers": 2, "roses": 4}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, COLOURS[cls]).save(root / cls / f"{i}.jpg")
    return root


def single_warning(record, text):
    hits = [w for w in record if text in str(w.message)]
    assert len(hits) == 1, [str(w.message) for w in record]
    return str(hits[0].message)


# --- loading -------------------------------------------------------------------------------------

def test_classes_in_course_order_labels_and_pixels(tmp_path):
    data = load_flowers_tensors(8, data_dir=write_classes(tmp_path / "photos"))
    assert FLOWER_CLASSES == ["daisy", "sunflowers", "roses"]
    assert isinstance(data, TensorImageDataset)
    assert data.classes == FLOWER_CLASSES
    assert data.images.shape == (9, 3, 8, 8) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert float(data.images.min()) >= -1 and float(data.images.max()) <= 1
    # Each image holds its class colour, scaled to [-1, 1] (JPEG is lossy: loose tolerance).
    for img, label, path in zip(data.images, data.labels, data.paths):
        cls = FLOWER_CLASSES[label]
        assert f"/{cls}/" in path
        expected = torch.tensor(COLOURS[cls]).float() / 127.5 - 1
        assert torch.allclose(img.mean((1, 2)), expected, atol=0.08), (cls, img.mean((1, 2)))


def test_resize_shorter_side_then_centre_crop(tmp_path):
    # 60x20: a red centre square 20x20 between blue borders; the kept square must be red.
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    im.paste((255, 0, 0), (20, 0, 40, 20))
    for cls in FLOWER_CLASSES:
        (tmp_path / cls).mkdir()
        im.save(tmp_path / cls / "wide.png")
    data = load_flowers_tensors(10, data_dir=tmp_path)
    red = data.images[0]
    assert red.shape == (3, 10, 10)
    # Resizing blends one pixel at each edge with the border; everything inside is red.
    inside = red[:, :, 1:-1]
    assert float(inside[0].min()) > 0.9 and float(inside[2].max()) < -0.9
    assert float(red[2].max()) < 0  # the blue border itself was cropped away


def test_corrupt_files_skipped_with_one_counted_warning(tmp_path):
    root = write_classes(tmp_path / "photos")
    (root / "daisy" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    (root / "roses" / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    (root / "roses" / "notes.txt").write_text("not an image suffix: ignored quietly")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = load_flowers_tensors(8, data_dir=root)
    message = single_warning(record, "skipped")
    assert "skipped 2 unreadable" in message
    assert len(data) == 9
    assert not any("garbage" in p or "truncated" in p for p in data.paths)


def test_grey_rgba_and_palette_become_rgb(tmp_path):
    for cls in FLOWER_CLASSES:
        (tmp_path / cls).mkdir()
    Image.new("L", (16, 16), 100).save(tmp_path / "daisy" / "grey.png")
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "sunflowers" / "clear.png")
    Image.new("RGB", (16, 16), (0, 200, 0)).convert("P", palette=Image.ADAPTIVE).save(
        tmp_path / "roses" / "palette.png")
    data = load_flowers_tensors(8, data_dir=tmp_path)
    assert data.images.shape == (3, 3, 8, 8)
    grey, clear, palette = data.images
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    assert abs(float(grey.mean()) - (100 / 127.5 - 1)) < 0.01
    assert torch.allclose(clear, torch.ones_like(clear))  # transparent -> white, not red or black
    assert float(palette[1].mean()) > 0.5 and float(palette[0].mean()) < -0.9


def test_max_images_decodes_a_subset_in_class_order(tmp_path):
    data = load_flowers_tensors(8, data_dir=write_classes(tmp_path / "photos"), max_images=5)
    assert len(data) == 5 and len(data.paths) == 5
    assert data.labels.tolist() == [0, 0, 1, 1, 2]  # balanced, in class order
    sub = data.subset(3)
    assert len(sub.paths) == 3 and set(sub.paths) <= set(data.paths)


def test_a_class_without_images_is_an_error(tmp_path):
    root = write_classes(tmp_path / "photos", {"daisy": 2, "sunflowers": 2})
    (root / "roses").mkdir()
    with pytest.raises(DataNotFoundError, match="roses"):
        load_flowers_tensors(8, data_dir=root)


# --- where the photos come from ------------------------------------------------------------------

def test_sources_in_order(tmp_path, monkeypatch):
    arg = write_classes(tmp_path / "arg")
    env = write_classes(tmp_path / "env")
    local = write_classes(tmp_path / "cwd" / "data" / "cropped_flowers")
    assert find_flowers().resolve() == local.resolve()
    monkeypatch.setenv("LABUTILS_FLOWERS_DIR", str(env))
    assert find_flowers() == env
    assert find_flowers(arg) == arg


def test_checkout_data_dir_is_found_from_the_notebook_folder(tmp_path):
    checkout = write_classes(tmp_path / "checkout" / "data" / "cropped_flowers")
    (tmp_path / "checkout" / "pyproject.toml").write_text("")
    assert find_flowers() == checkout


def test_an_explicit_directory_is_never_replaced_silently(tmp_path, monkeypatch):
    write_classes(tmp_path / "cwd" / "data" / "cropped_flowers")
    partial = write_classes(tmp_path / "partial", {"daisy": 1})
    with pytest.raises(DataNotFoundError, match="sunflowers"):
        find_flowers(partial)
    monkeypatch.setenv("LABUTILS_FLOWERS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="LABUTILS_FLOWERS_DIR"):
        find_flowers()
    monkeypatch.setenv("LABUTILS_PROFILE", "ci")  # a wrong pointer is an error even under ci
    with pytest.raises(DataNotFoundError):
        load_flowers_tensors(8)


def test_no_source_error_names_every_way(monkeypatch):
    monkeypatch.setenv("LABUTILS_PROFILE", "quick")
    with pytest.raises(DataNotFoundError) as err:
        load_flowers_tensors(8)
    message = str(err.value)
    for way in ("LABUTILS_FLOWERS_DIR", "data_dir", "cropped_flowers", "labutils prepare",
                "prepare_flowers", "flower_photos.tgz", "archive=", "ci profile"):
        assert way in message, way


def test_fixture_only_under_ci_and_announced(monkeypatch, capsys):
    monkeypatch.setenv("LABUTILS_PROFILE", "full")
    with pytest.raises(DataNotFoundError):
        load_flowers_tensors(8)
    monkeypatch.setenv("LABUTILS_PROFILE", "ci")
    with pytest.raises(DataNotFoundError):
        load_flowers_tensors(8, allow_fixture=False)
    with pytest.warns(flowers_mod.FlowersFixtureWarning, match="SYNTHETIC"):
        data = load_flowers_tensors(8)
    assert "SYNTHETIC FIXTURE" in capsys.readouterr().out
    assert data.classes == FLOWER_CLASSES
    assert data.images.shape[1:] == (3, 8, 8)
    assert torch.bincount(data.labels).tolist() == [24, 24, 24]
    # The classes look different: roses red, daisies the brightest on average.
    means = [data.images[data.labels == k].mean((0, 2, 3)) for k in range(3)]
    assert means[2][0] > means[2][1] and means[0].mean() > means[2].mean()


def test_fixture_can_be_allowed_explicitly(monkeypatch):
    monkeypatch.setenv("LABUTILS_PROFILE", "quick")
    with pytest.warns(flowers_mod.FlowersFixtureWarning):
        data = load_flowers_tensors(8, allow_fixture=True, classes=["roses", "daisy"])
    assert data.classes == ["roses", "daisy"] and len(data) == 48


# --- augmentation --------------------------------------------------------------------------------

def test_flowers_augment_keeps_shape_and_flips_or_not():
    x = torch.linspace(-1, 1, 32).expand(6, 3, 32, 32).clone()
    for padding in (0, 4):
        y = flowers_augment(32, padding)(x)
        assert y.shape == x.shape
    torch.manual_seed(0)
    y = flowers_augment(32)(x)
    for a, b in zip(x, y):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
    assert any(not torch.equal(a, b) for a, b in zip(x, y))  # 6 coin flips: some flip
    assert flowers_augment(16)(torch.zeros(2, 3, 20, 20)).shape == (2, 3, 16, 16)


# --- prepare_flowers -----------------------------------------------------------------------------

def _jpeg(size, centre, border=(0, 0, 255)):
    """A wide photo: a centre square of colour ``centre`` between ``border`` strips."""
    w, h = size
    im = Image.new("RGB", size, border)
    im.paste(centre, ((w - h) // 2, 0, (w - h) // 2 + h, h))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_archive(path, classes=("daisy", "roses", "sunflowers", "tulips"), per_class=3,
                 corrupt=True):
    with tarfile.open(path, "w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("flower_photos/LICENSE.txt", b"licence text")
        for cls in classes:
            for i in range(per_class):
                add(f"flower_photos/{cls}/{cls}_{i}.jpg",
                    _jpeg((60, 40), COLOURS.get(cls, (255, 0, 255))))
        if corrupt:
            add("flower_photos/daisy/broken.jpg", b"\xff\xd8 not really")
    return path


def test_prepare_from_a_local_archive(tmp_path):
    archive = make_archive(tmp_path / "flower_photos.tgz")
    dest = tmp_path / "data" / "cropped_flowers"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert prepare_flowers(dest, archive=archive, size=None) == dest
    assert "skipped 1 unreadable" in single_warning(record, "skipped")
    assert sorted(p.name for p in dest.iterdir()) == ["daisy", "roses", "sunflowers"]
    for cls in ("daisy", "roses", "sunflowers"):
        files = sorted(p.name for p in (dest / cls).iterdir())
        assert files == [f"{cls}_{i}.jpg" for i in range(3)]
        with Image.open(dest / cls / files[0]) as im:
            assert im.size == (60, 40)  # the aspect is kept (3:2 is within MAX_ASPECT)
            pixels = np.asarray(im.convert("RGB")).astype(int)
        # JPEG's chroma blurs the edges of the centre a little; the blue borders are kept.
        assert np.abs(pixels[:, 12:-12] - np.array(COLOURS[cls])).max() < 40
        assert pixels[:, :8, 2].mean() > 200 and pixels[:, -8:, 2].mean() > 200
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".")] == []
    # The prepared folder is what find_flowers/load_flowers_tensors read.
    data = load_flowers_tensors(8, data_dir=dest)
    assert len(data) == 9 and data.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3


def test_prepare_resizes_and_is_idempotent(tmp_path, capsys):
    dest = tmp_path / "out"
    prepare_flowers(dest, archive=make_archive(tmp_path / "a.tgz", corrupt=False), size=16)
    with Image.open(next((dest / "roses").iterdir())) as im:
        assert im.size == (24, 16)   # shorter edge 16, aspect kept
    stamp = sorted(p.stat().st_mtime_ns for p in dest.rglob("*.jpg"))
    assert prepare_flowers(dest, archive=tmp_path / "missing.tgz") == dest  # nothing to do
    assert "nothing to do" in capsys.readouterr().out
    assert sorted(p.stat().st_mtime_ns for p in dest.rglob("*.jpg")) == stamp


def test_prepare_downloads_when_no_archive_is_given(tmp_path):
    source = make_archive(tmp_path / "served.tgz", corrupt=False)
    dest = tmp_path / "data" / "cropped_flowers"
    prepare_flowers(dest, url=source.as_uri())
    assert (tmp_path / "data" / "flower_photos.tgz").read_bytes() == source.read_bytes()
    assert len(list((dest / "daisy").iterdir())) == 3


def test_prepare_failure_leaves_no_destination(tmp_path, monkeypatch):
    dest = tmp_path / "data" / "cropped_flowers"
    # An archive without roses: a clear error, and no half-built folder.
    archive = make_archive(tmp_path / "no_roses.tgz", classes=("daisy", "sunflowers"),
                           corrupt=False)
    with pytest.raises(DataNotFoundError, match="roses"):
        prepare_flowers(dest, archive=archive)
    assert list(dest.parent.iterdir()) == []
    # A crash midway (here: the third photo) also leaves nothing behind.
    calls = {"n": 0}
    real = flowers_mod._fit_aspect

    def crash_on_third(im):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(im)
    monkeypatch.setattr(flowers_mod, "_fit_aspect", crash_on_third)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_flowers(dest, archive=make_archive(tmp_path / "ok.tgz"))
    assert list(dest.parent.iterdir()) == []
    # Failed downloads: a clear error, no partial archive.
    with pytest.raises(DataNotFoundError, match="could not download"):
        prepare_flowers(dest, url=(tmp_path / "absent.tgz").as_uri())
    assert list(dest.parent.iterdir()) == []


def test_prepare_never_overwrites_an_incomplete_folder(tmp_path):
    dest = tmp_path / "mine"
    (dest / "daisy").mkdir(parents=True)
    (dest / "daisy" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="move it away"):
        prepare_flowers(dest, archive=make_archive(tmp_path / "a.tgz"))
    assert (dest / "daisy" / "keep.txt").read_text() == "user data"
