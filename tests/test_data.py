"""training/data.py: layouts, seeded stratified splits, every input mode, bad files, tf.data pipelines."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import import_tensorflow
from training.data import (
    Augment,
    class_weights,
    discover,
    imbalance_warning,
    load_split,
    load_splits,
    make_dataset,
    save_splits,
)

tf = import_tensorflow()


def _names(files: list[tuple[Path, int]]) -> set[str]:
    return {p.name for p, _ in files}


def test_flat_layout_split_is_stratified_seeded_and_disjoint(tmp_path, class_folders):
    class_folders(tmp_path, ["apple", "banana", "cherry"], per_class=10)
    a = discover(tmp_path, seed=1)
    assert a.classes == ["apple", "banana", "cherry"]
    train, val, test = _names(a.train), _names(a.val), _names(a.test)
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 30
    for split in ("val", "test"):
        assert all(n >= 1 for n in a.counts(split).values())  # every class in every split
    b = discover(tmp_path, seed=1)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    c = discover(tmp_path, seed=2)
    assert (a.val, a.test) != (c.val, c.test)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_split_layout_used_as_given(tmp_path, class_folders):
    for seed, (split, n) in enumerate((("train", 5), ("val", 2), ("test", 3))):
        class_folders(tmp_path, ["fresh", "rotten"], per_class=n, split=split, seed=seed)
    s = discover(tmp_path)
    assert s.classes == ["fresh", "rotten"]
    assert (len(s.train), len(s.val), len(s.test)) == (10, 4, 6)
    assert all(p.parts[-3] == "val" for p, _ in s.val)


def test_split_files_round_trip(tmp_path, class_folders):
    data = class_folders(tmp_path / "data", ["a", "b"], per_class=6)
    s = discover(data)
    save_splits(s, tmp_path / "splits.json")
    back = load_splits(tmp_path / "splits.json")
    assert (back.classes, back.train, back.val, back.test) == (s.classes, s.train, s.val, s.test)
    assert back.fingerprint() == s.fingerprint()


def _write_modes(folder: Path) -> dict[str, Path]:
    """One file per awkward input: grey, RGBA, palette, 16-bit PNG, WEBP, BMP, a tiny JPEG."""
    folder.mkdir(parents=True)
    red = np.zeros((40, 50, 3), np.uint8)
    red[..., 2] = 200  # BGR
    files = {"gray.png": np.full((40, 50), 128, np.uint8),
             "rgba.png": np.dstack([red, np.full((40, 50), 255, np.uint8)]),
             "deep.png": (red.astype(np.uint16) * 257),
             "photo.webp": red, "photo.bmp": red, "tiny.jpg": red[:6, :6]}
    for name, img in files.items():
        cv2.imwrite(str(folder / name), img)
    Image.fromarray(red[..., ::-1]).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    return {p.name: p for p in folder.iterdir()}


def test_every_format_and_mode_becomes_rgb_at_the_model_size(tmp_path):
    files = _write_modes(tmp_path / "x")
    loaded = load_split([(p, 0) for p in sorted(files.values())], 32)
    assert loaded.skipped == []
    assert loaded.images.shape == (7, 32, 32, 3) and loaded.images.dtype == np.uint8
    by_name = dict(zip([p.name for p in loaded.paths], loaded.images, strict=True))
    assert np.all(np.abs(by_name["gray.png"].astype(int) - 128) <= 1)
    for name in ("rgba.png", "deep.png", "photo.webp", "photo.bmp", "palette.png", "tiny.jpg"):
        r, g, b = by_name[name].reshape(-1, 3).mean(0)
        assert r > 180 and g < 20 and b < 20, name  # red stays red: channels in RGB order, 16-bit scaled


def test_unreadable_and_empty_files_are_listed_and_skipped(tmp_path, class_folders):
    class_folders(tmp_path, ["a", "b"], per_class=3)
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (tmp_path / "b" / "text.png").write_text("not a picture")
    s = discover(tmp_path, val_fraction=0, test_fraction=0)
    loaded = load_split(s.train, 32)
    reasons = {p.name: r for p, r in loaded.skipped}
    assert set(reasons) == {"empty.png", "broken.jpg", "text.png"}
    assert reasons["empty.png"].startswith("empty")
    assert len(loaded.labels) == 6 and sorted(loaded.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_imbalance_warning_and_class_weights():
    assert imbalance_warning({"a": 10, "b": 9}) is None
    msg = imbalance_warning({"fresh": 40, "rotten": 5})
    assert msg and "fresh" in msg and "rotten" in msg and "--class-weights" in msg
    w = class_weights(np.array([0, 0, 0, 1]), 2)
    assert w[1] == pytest.approx(3 * w[0])


def _batches(ds) -> list[np.ndarray]:
    return [x.numpy() for x, _ in ds]


def test_augmentation_only_on_the_training_split(tmp_path, class_folders):
    class_folders(tmp_path, ["a", "b"], per_class=4)
    s = discover(tmp_path, val_fraction=0, test_fraction=0)
    loaded = load_split(s.train, 32)
    val = make_dataset(loaded.images, loaded.labels, 4, training=False, augment=Augment())
    first, second = _batches(val), _batches(val)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert np.array_equal(np.concatenate(first), loaded.images.astype(np.float32))  # untouched pixels
    train = make_dataset(loaded.images, loaded.labels, 8, training=True, augment=Augment(), seed=3)
    t1, t2 = _batches(train)[0], _batches(train)[0]
    assert t1.dtype == np.float32 and t1.shape == (8, 32, 32, 3)
    assert t1.min() >= 0 and t1.max() <= 255
    assert not np.array_equal(np.sort(t1, axis=None), np.sort(t2, axis=None))  # pixels changed, not just order
    plain = _batches(make_dataset(loaded.images, loaded.labels, 8, training=True, augment=None))[0]
    assert np.array_equal(np.sort(plain, axis=None), np.sort(loaded.images.astype(np.float32), axis=None))


def test_binary_labels_are_float_columns(tmp_path, class_folders):
    class_folders(tmp_path, ["a", "b"], per_class=2)
    loaded = load_split(discover(tmp_path, val_fraction=0, test_fraction=0).train, 32)
    _, y = next(iter(make_dataset(loaded.images, loaded.labels, 4, training=False, binary=True)))
    assert y.shape == (4, 1) and y.dtype.name == "float32"


def _through(augment: Augment, image: np.ndarray, seed: int) -> np.ndarray:
    out = image[None].astype(np.float32)
    for layer in augment.layers(seed):
        out = layer(out, training=True)
    return np.asarray(out)[0]


def test_fill_decides_what_uncovered_corners_show():
    white = np.full((32, 32, 3), 255, np.uint8)
    turn = {"rotation": 45.0, "width_shift": 0.0, "height_shift": 0.0, "shear": 0.0, "zoom": 0.0, "flip": False}
    black = [_through(Augment(**turn, fill="constant"), white, s).min() for s in range(6)]
    kept = [_through(Augment(**turn, fill="reflect"), white, s).min() for s in range(6)]
    assert min(black) == 0 and min(kept) > 250  # black corners only with constant fill


def test_vertical_flip_flips_top_and_bottom():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:16] = (255, 0, 0)  # red top, black bottom
    only = {"rotation": 0.0, "width_shift": 0.0, "height_shift": 0.0, "shear": 0.0, "zoom": 0.0}
    tops = {float(_through(Augment(**only, flip=False, vflip=True), image, s)[0, 0, 0]) for s in range(12)}
    assert tops == {0.0, 255.0}  # some draws flipped upside down, some not
    mirrors = {float(_through(Augment(**only, flip=True), image, s)[0, 0, 0]) for s in range(12)}
    assert mirrors == {255.0}  # a horizontal flip keeps the top on top


def test_brightness_and_contrast_jitter_change_pixels_within_their_bounds():
    image = np.full((16, 16, 3), 128, np.uint8)
    image[:8] = 64
    only = {"rotation": 0.0, "width_shift": 0.0, "height_shift": 0.0, "shear": 0.0, "zoom": 0.0, "flip": False}
    means = [float(_through(Augment(**only, brightness=0.2), image, s).mean()) for s in range(8)]
    assert len({round(m, 3) for m in means}) > 1  # each draw shifts by its own amount
    assert all(abs(m - 96.0) <= 0.2 * 255 + 1e-3 for m in means)
    spreads = [float(np.ptp(_through(Augment(**only, contrast=0.5), image, s))) for s in range(8)]
    assert len({round(x, 3) for x in spreads}) > 1 and all(32.0 <= x <= 96.0 + 1e-3 for x in spreads)
    assert len(Augment(**only).layers(0)) == 0  # both default off
