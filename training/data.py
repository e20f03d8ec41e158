"""Class folders → train/val/test file lists (and, below, tf.data pipelines)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
SPLITS = ("train", "val", "test")


@dataclass
class DataSplits:
    """Files per split as (path, class index); `classes` is sorted, so indices are stable."""

    root: Path
    classes: list[str]
    train: list[tuple[Path, int]] = field(default_factory=list)
    val: list[tuple[Path, int]] = field(default_factory=list)
    test: list[tuple[Path, int]] = field(default_factory=list)

    def counts(self, split: str) -> dict[str, int]:
        out = dict.fromkeys(self.classes, 0)
        for _, idx in getattr(self, split):
            out[self.classes[idx]] += 1
        return out

    def fingerprint(self) -> str:
        """A hash of every file's split, class, name and size: identifies the data a model saw."""
        digest = hashlib.sha256()
        for split in SPLITS:
            for path, idx in sorted(getattr(self, split)):
                digest.update(f"{split}/{self.classes[idx]}/{path.name}/{path.stat().st_size}\n".encode())
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


def discover(root: Path, seed: int = 42, val_fraction: float = 0.2, test_fraction: float = 0.1) -> DataSplits:
    """Accept DATA/{train,val,test}/<class>/ or flat DATA/<class>/; missing splits are carved
    from train by a seeded stratified split (val_fraction of train, test_fraction of all)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    base = split_dirs.get("train", root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if "train" not in split_dirs:
        classes = [c for c in classes if c not in SPLITS]
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
