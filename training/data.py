"""Class folders → train/val/test file lists (and, below, tf.data pipelines)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sorter.imaging import ImageError, decode

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
SPLITS = ("train", "val", "test")


@dataclass
class DataSplits:
    """Files per split as (path, class index); `classes` is sorted, so indices are stable.

    `roots` are the data folders merged into these splits (class folders merged by name); `root`
    is the first of them, the one a single-folder run is relative to."""

    root: Path
    classes: list[str]
    train: list[tuple[Path, int]] = field(default_factory=list)
    val: list[tuple[Path, int]] = field(default_factory=list)
    test: list[tuple[Path, int]] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.roots = self.roots or [self.root]

    def root_of(self, path: Path) -> Path:
        return next((r for r in self.roots if path.is_relative_to(r)), self.root)

    def sets(self, split: str) -> dict[str, list[tuple[Path, int]]]:
        """The split's files per data root, by the root's folder name (e.g. fruit_dev, fruit_extra):
        each root is a test set of its own, scored and reported apart."""
        out: dict[str, list[tuple[Path, int]]] = {r.name: [] for r in self.roots}
        for item in getattr(self, split):
            out[self.root_of(item[0]).name].append(item)
        return {name: files for name, files in out.items() if files}

    def counts_by_root(self, split: str) -> dict[str, dict[str, int]]:
        out = {}
        for name, files in self.sets(split).items():
            out[name] = dict.fromkeys(self.classes, 0)
            for _, idx in files:
                out[name][self.classes[idx]] += 1
        return out

    def counts(self, split: str) -> dict[str, int]:
        out = dict.fromkeys(self.classes, 0)
        for _, idx in getattr(self, split):
            out[self.classes[idx]] += 1
        return out

    def fingerprint(self) -> str:
        """A hash of every file's split, class, name and size: identifies the data a model saw."""
        digest = hashlib.sha256()
        many = len(self.roots) > 1
        for split in SPLITS:
            for path, idx in sorted(getattr(self, split)):
                where = f"{self.root_of(path).name}:" if many else ""
                digest.update(f"{split}/{where}{self.classes[idx]}/{path.name}/{path.stat().st_size}\n".encode())
        return digest.hexdigest()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _stratified(files: list[tuple[Path, int]], fraction: float, seed: int):
    """Split off `fraction` of every class (at least one file each when fraction > 0)."""
    rng = random.Random(seed)
    keep, taken = [], []
    for idx in sorted({i for _, i in files}):
        members = [f for f in files if f[1] == idx]
        rng.shuffle(members)
        n = max(1, round(len(members) * fraction)) if fraction > 0 and len(members) > 1 else 0
        taken += members[:n]
        keep += members[n:]
    return sorted(keep), sorted(taken)


def class_folders(root: Path) -> list[str]:
    """The class folder names of DATA/{train,…}/<class>/ or DATA/<class>/."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found")
    base = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    return classes if base != root else [c for c in classes if c not in SPLITS]


def discover(root: Path, seed: int = 42, val_fraction: float = 0.2, test_fraction: float = 0.1,
             classes: list[str] | None = None) -> DataSplits:
    """Accept DATA/{train,val,test}/<class>/ or flat DATA/<class>/; missing splits are carved
    from train by a seeded stratified split (val_fraction of train, test_fraction of all).
    `classes` fixes the class list (and indices) when several roots are merged."""
    root = Path(root)
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    base = split_dirs.get("train", root)
    classes = classes or class_folders(root)
    if len(classes) < 2:
        raise ValueError(f"{base} needs at least two class folders, found {classes}")
    index = {c: i for i, c in enumerate(classes)}

    def files_in(folder: Path) -> list[tuple[Path, int]]:
        return [(p, index[c]) for c in classes if (folder / c).is_dir() for p in _images(folder / c)]

    splits = DataSplits(root, classes, train=files_in(base))
    if "test" in split_dirs:
        splits.test = files_in(split_dirs["test"])
    elif test_fraction > 0:
        splits.train, splits.test = _stratified(splits.train, test_fraction, seed)
    if "val" in split_dirs:
        splits.val = files_in(split_dirs["val"])
    elif val_fraction > 0:
        splits.train, splits.val = _stratified(splits.train, val_fraction, seed + 1)
    return splits


def _from_split_file(root: Path, rows: list[dict[str, str]], classes: list[str]) -> DataSplits:
    """A root whose train/val/test come from a split file's rows (grouped, reproducible)."""
    index = {c: i for i, c in enumerate(classes)}
    splits = DataSplits(root, classes)
    missing = []
    for row in rows:
        path = root / row["file"]
        if not path.is_file():
            missing.append(row["file"])
            continue
        getattr(splits, row["split"]).append((path, index[row["class"]]))
    if missing:
        raise ValueError(f"{len(missing)} files named in the split file for {root.name} are missing under "
                         f"{root} (first: {missing[0]})")
    listed = {row["file"] for row in rows}
    unlisted = [p for c in classes if (root / c).is_dir() for p in _images(root / c)
                if p.relative_to(root).as_posix() not in listed]
    if unlisted:
        log.warning("%d images under %s are not in its split file and are not used (first: %s)",
                    len(unlisted), root, unlisted[0])
    return splits


def discover_many(roots: list[Path], seed: int = 42, val_fraction: float = 0.2, test_fraction: float = 0.1,
                  split_files: list[Path] | None = None) -> DataSplits:
    """Several data folders merged by class name (fruit_dev and fruit_extra: the same six classes).

    A root named in a split file (`sorter split`, column `root`) takes its train/val/test from the
    file, by whole near-duplicate groups; any other root is discovered as `discover` does."""
    from training.groups import read_split

    roots = [Path(r) for r in roots]
    if len({r.name for r in roots}) != len(roots):
        raise ValueError("data folders need distinct names: each is reported as a test set of its own")
    by_root: dict[str, list[dict[str, str]]] = {}
    for file in split_files or []:
        for row in read_split(file):
            by_root.setdefault(row["root"], []).append(row)
    unknown = sorted(set(by_root) - {r.name for r in roots})
    if unknown:
        raise ValueError(f"the split files name data folders that were not given: {', '.join(unknown)}")
    classes = sorted({c for r in roots for c in class_folders(r)}
                     | {row["class"] for rows in by_root.values() for row in rows})
    if len(roots) == 1 and not by_root:
        return discover(roots[0], seed, val_fraction, test_fraction)
    merged = DataSplits(roots[0], classes, roots=roots)
    for root in roots:
        part = (_from_split_file(root, by_root[root.name], classes) if root.name in by_root
                else discover(root, seed, val_fraction, test_fraction, classes=classes))
        for split in SPLITS:
            getattr(merged, split).extend(getattr(part, split))
    return merged


# --- decoding, reporting and tf.data pipelines -------------------------------------------------

IMBALANCE_RATIO = 3.0  # largest/smallest class count above which training is likely to be biased


@dataclass
class Loaded:
    """Decoded pixels of one split: uint8 (N, H, W, 3), int labels, and the files that were skipped."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    skipped: list[tuple[Path, str]]


def _decode_file(path: Path, size: tuple[int, int]) -> np.ndarray | str:
    """Pixels, or the reason the file cannot be used (a bad file must never stop an epoch)."""
    try:
        return decode(path.read_bytes(), size)
    except ImageError as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def load_split(files: list[tuple[Path, int]], size: int | tuple[int, int], workers: int | None = None) -> Loaded:
    """Decode every file once with the edge runtime's decoder, in threads (OpenCV releases the GIL),
    so training sees exactly the pixels the device will see, at any source size, format or mode.
    `size`: a side, or (height, width)."""
    size = (size, size) if isinstance(size, int) else size
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda f: _decode_file(f[0], size), files))
    good = [(f, r) for f, r in zip(files, results, strict=True) if not isinstance(r, str)]
    skipped = [(f[0], r) for f, r in zip(files, results, strict=True) if isinstance(r, str)]
    images = np.stack([r for _, r in good]) if good else np.zeros((0, *size, 3), np.uint8)
    labels = np.array([f[1] for f, _ in good], dtype=np.int32)
    return Loaded(images, labels, [f[0] for f, _ in good], skipped)


def imbalance_warning(counts: dict[str, int], ratio: float = IMBALANCE_RATIO) -> str | None:
    """A one-line warning when the largest class outnumbers the smallest by more than `ratio`."""
    if not counts:
        return None
    big, small = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
    if counts[small] == 0:
        return f"class '{small}' has no training images"
    if counts[big] / counts[small] > ratio:
        return (f"classes are imbalanced: '{big}' has {counts[big]} images, '{small}' only {counts[small]} "
                f"(consider --class-weights)")
    return None


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency weights ('balanced'), so rare classes count as much as common ones."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return {i: float(len(labels) / (n_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def save_splits(splits: DataSplits, path: Path) -> None:
    """Write the file lists (relative to DATA) so evaluate/export score the very same test split.
    Several roots: `roots` lists them and each entry names its root's index third."""
    doc: dict[str, Any] = {"root": str(splits.root.resolve()), "classes": splits.classes}
    many = len(splits.roots) > 1
    if many:
        doc["roots"] = [str(r.resolve()) for r in splits.roots]
    for split in SPLITS:
        entries = []
        for p, i in getattr(splits, split):
            root = splits.root_of(p)
            entries.append([p.relative_to(root).as_posix(), i, *([splits.roots.index(root)] if many else [])])
        doc[split] = entries
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def load_splits(path: Path, root: Path | None = None) -> DataSplits:
    """Read `splits.json`; `root` relocates the data folder of a one-root run (default: where it
    was at training). A run on several roots finds them where they were."""
    doc = json.loads(Path(path).read_text())
    roots = [Path(r) for r in doc.get("roots", [])] or [Path(root or doc["root"])]
    lists = {s: [(roots[int(e[2]) if len(e) > 2 else 0] / e[0], int(e[1])) for e in doc.get(s, [])]
             for s in SPLITS}
    return DataSplits(roots[0], list(doc["classes"]), roots=roots, **lists)


# --- augmentation and datasets ----------------------------------------------------------------


FILLS = ("reflect", "constant", "nearest")


@dataclass
class Augment:
    """Training-split augmentation; degrees for rotation, fractions of the side for the rest."""

    rotation: float = 90.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    shear: float = 0.2
    zoom: float = 0.2
    flip: bool = True
    fill: str = "reflect"  # what the transforms paint into uncovered corners: reflect | constant (black) | nearest
    vflip: bool = False  # upside-down produce is as real as mirrored produce on a belt
    brightness: float = 0.0  # max brightness shift, fraction of the 0..255 range (belt lighting drifts)
    contrast: float = 0.0  # max contrast change, fraction

    def layers(self, seed: int) -> list:
        """Keras 3 preprocessing layers, applied in the tf.data map (never inside the exported model)."""
        import keras

        out: list = []
        if self.rotation:
            out.append(keras.layers.RandomRotation(self.rotation / 360.0, fill_mode=self.fill, seed=seed))
        if self.width_shift or self.height_shift:
            out.append(keras.layers.RandomTranslation(self.height_shift, self.width_shift,
                                                      fill_mode=self.fill, seed=seed + 1))
        if self.shear:
            out.append(keras.layers.RandomShear(self.shear, self.shear, fill_mode=self.fill, seed=seed + 2))
        if self.zoom:
            out.append(keras.layers.RandomZoom(self.zoom, fill_mode=self.fill, seed=seed + 3))
        if self.flip or self.vflip:
            mode = "horizontal_and_vertical" if self.flip and self.vflip else "horizontal" if self.flip else "vertical"
            out.append(keras.layers.RandomFlip(mode, seed=seed + 4))
        if self.brightness:
            out.append(keras.layers.RandomBrightness(self.brightness, value_range=(0.0, 255.0), seed=seed + 5))
        if self.contrast:
            out.append(keras.layers.RandomContrast(self.contrast, value_range=(0.0, 255.0), seed=seed + 6))
        return out


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, *, training: bool,
                 augment: Augment | None = None, seed: int = 42, binary: bool = False):
    """uint8 arrays → batches of float32 0..255 RGB. The decoded arrays are already the cache;
    only the training split is shuffled (seeded, new order each epoch) and augmented."""
    import tensorflow as tf

    y = labels.astype("float32")[:, None] if binary else labels
    ds = tf.data.Dataset.from_tensor_slices((images, y))
    if training:
        ds = ds.shuffle(max(1, len(images)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, t: (tf.cast(x, tf.float32), t),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    layers = augment.layers(seed) if (training and augment) else []
    if layers:
        def apply(x, t):
            for layer in layers:
                x = layer(x, training=True)
            return tf.clip_by_value(x, 0.0, 255.0), t

        ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
