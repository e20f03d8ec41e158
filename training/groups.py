"""Near-duplicate groups and a grouped train/val/test split of a photo collection.

A photo and its near-twin (the same apple shot again a few seconds later, a rotated or re-cropped
copy of one picture) must sit on the same side of a split, or the test share measures memory rather
than the field. Photos are grouped within one source and class by two tests, joined transitively:

* looks: a 256-bit difference hash (dhash16) within `dhash_max` bits, or a 32×32 grey correlation
  of at least `corr_min`, each taken over the eight rotations and mirrorings of the other photo;
* capture time: phone photos whose file names carry a timestamp (`20190809_115439`,
  `IMG_20190809_115439`, `IMG20190809115439`) within `burst_seconds` of each other — a burst of
  one fruit from several sides.

The split then draws whole groups, per source × class, until each share holds its fraction.
Only OpenCV and NumPy: no TensorFlow, so the split is cheap to recompute and to test.
"""

from __future__ import annotations

import csv
import itertools
import random
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

SPLIT_COLUMNS = ("root", "file", "class", "source", "group", "split")
_STAMP = re.compile(r"(20\d{6})_?(\d{6})")


@dataclass(frozen=True)
class Photo:
    """One photo of a collection: `file` relative to the root, its class and where it came from."""

    file: str
    cls: str
    source: str = "local"
    source_path: str = ""
    given_split: str = ""  # the collection's own split (MANIFEST `split`, or a train/ test/ folder)

    @property
    def cell(self) -> tuple[str, str]:
        return self.source, self.cls


def read_manifest(root: Path) -> list[Photo]:
    """MANIFEST.tsv (class, file, source_repo, source_path, split, …) when the collection has one;
    otherwise every image under ROOT/<class>/ (or ROOT/{train,val,test}/<class>/) from one source
    named after the folder."""
    manifest = root / "MANIFEST.tsv"
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            return [Photo(r["file"], r["class"], r.get("source_repo") or "local", r.get("source_path") or "",
                          r.get("split") or "")
                    for r in csv.DictReader(handle, delimiter="\t")]
    from training.data import IMAGE_SUFFIXES

    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if p.suffix.lower() in IMAGE_SUFFIXES and len(rel) in (2, 3):
            given = rel[0] if len(rel) == 3 and rel[0] in ("train", "val", "test") else ""
            if len(rel) == 2 or given:
                found.append(Photo(p.relative_to(root).as_posix(), p.parent.name, root.name, p.name, given))
    return found


def _variants(grey: np.ndarray) -> list[np.ndarray]:
    out = []
    for k in range(4):
        turned = np.rot90(grey, k)
        out += [np.ascontiguousarray(turned), np.ascontiguousarray(turned[:, ::-1])]
    return out


@dataclass
class Signature:
    """dhash bits and a normalised 32×32 grey vector for each of the eight orientations."""

    hashes: np.ndarray  # (8, 256) bool
    greys: np.ndarray  # (8, 1024) float32, zero mean, unit variance


def signature(path: Path) -> Signature:
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ValueError(f"{path}: not a readable image")
    hashes, greys = [], []
    for view in _variants(grey):
        small = cv2.resize(view, (17, 16), interpolation=cv2.INTER_AREA).astype(np.int16)
        hashes.append((small[:, 1:] > small[:, :-1]).ravel())
        vec = cv2.resize(view, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        greys.append((vec - vec.mean()) / (vec.std() + 1e-6))
    return Signature(np.array(hashes), np.array(greys, np.float32))


def capture_time(source_path: str) -> float | None:
    """Seconds since the epoch from a phone-style timestamp in the file name, else None."""
    match = _STAMP.search(Path(source_path).name)
    if not match:
        return None
    try:
        return datetime.strptime(match[1] + match[2], "%Y%m%d%H%M%S").timestamp()
    except ValueError:
        return None


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _look_alike(sigs: list[Signature], dhash_max: int, corr_min: float) -> list[tuple[int, int]]:
    """Pairs (i, j) of one cell whose photos look alike in some orientation."""
    if len(sigs) < 2:
        return []
    base_h = np.array([s.hashes[0] for s in sigs])  # (n, 256)
    base_g = np.array([s.greys[0] for s in sigs])  # (n, 1024)
    pairs = []
    for j, sig in enumerate(sigs[1:], start=1):
        dist = (base_h[:j, None, :] != sig.hashes[None]).sum(-1).min(1)  # (j,)
        corr = (base_g[:j] @ sig.greys.T / base_g.shape[1]).max(1)
        pairs += [(int(i), j) for i in np.flatnonzero((dist <= dhash_max) | (corr >= corr_min))]
    return pairs


def _bursts(times: list[float | None], burst_seconds: float) -> list[tuple[int, int]]:
    stamped = sorted((t, i) for i, t in enumerate(times) if t is not None)
    return [(a, b) for (ta, a), (tb, b) in itertools.pairwise(stamped) if tb - ta <= burst_seconds]


def near_duplicate_groups(root: Path, photos: list[Photo], *, dhash_max: int = 45, corr_min: float = 0.85,
                          burst_seconds: float = 20.0) -> dict[str, int]:
    """file → group number; groups never span two sources or two classes."""
    cells: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, photo in enumerate(photos):
        cells[photo.cell].append(i)
    union = _Union(len(photos))
    for members in cells.values():
        sigs = [signature(root / photos[i].file) for i in members]
        times = [capture_time(photos[i].source_path) for i in members]
        for a, b in [*_look_alike(sigs, dhash_max, corr_min), *_bursts(times, burst_seconds)]:
            union.join(members[a], members[b])
    numbers: dict[int, int] = {}
    return {p.file: numbers.setdefault(union.find(i), len(numbers)) for i, p in enumerate(photos)}


def _pick(sizes: dict[int, int], want: float, rng: random.Random, *, at_least: bool, tries: int = 200) -> set[int]:
    """Groups whose photos add up to `want` as closely as a seeded random search finds: at least
    `want` (overshooting least) or, without `at_least`, nearest either way. One large group must
    not take the whole share when smaller ones fit."""
    best: tuple[float, set[int]] = (float("inf"), set())
    order = sorted(sizes)
    for _ in range(tries):
        rng.shuffle(order)
        chosen: set[int] = set()
        total = 0
        for group in order:
            if total >= want or (not at_least and total + sizes[group] - want > want - total):
                continue
            chosen.add(group)
            total += sizes[group]
        miss = total - want if total >= want else (float("inf") if at_least else want - total)
        if miss < best[0]:
            best = (miss, chosen)
    return best[1]


def grouped_split(photos: list[Photo], groups: dict[str, int], *, test: float = 0.3, val: float = 0.15,
                  seed: int = 42) -> dict[str, str]:
    """file → train | val | test, drawn by whole groups per source × class.

    Test takes at least `test` of every cell's photos; validation as near `val` as whole groups
    allow. A cell with one group cannot be split: it goes to train, so the model still learns its
    look, and the split says so by leaving that cell out of test. With two groups, test comes first."""
    rng = random.Random(seed)
    cells: dict[tuple[str, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for photo in photos:
        cells[photo.cell][groups[photo.file]] += 1
    side: dict[int, str] = {}
    for cell in sorted(cells):
        sizes = dict(cells[cell])
        total = sum(sizes.values())
        if len(sizes) < 2:
            side.update(dict.fromkeys(sizes, "train"))
            continue
        in_test = _pick(sizes, test * total, rng, at_least=True)
        left = {g: n for g, n in sizes.items() if g not in in_test}
        in_val = _pick(left, val * total, rng, at_least=False) if len(left) > 1 and val > 0 else set()
        if in_val and len(in_val) == len(left):  # train keeps at least one group of every cell
            in_val.discard(min(in_val, key=lambda g: (left[g], g)))
        for group in sizes:
            side[group] = "test" if group in in_test else "val" if group in in_val else "train"
    return {p.file: side[groups[p.file]] for p in photos}


def write_split(path: Path, root_name: str, photos: list[Photo], groups: dict[str, int],
                sides: dict[str, str]) -> None:
    with path.open("w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(SPLIT_COLUMNS)
        for p in sorted(photos, key=lambda p: p.file):
            out.writerow([root_name, p.file, p.cls, p.source, groups[p.file], sides[p.file]])


def read_split(path: Path) -> list[dict[str, str]]:
    """The rows of a split file; a file without the split columns is a clear error."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = set(SPLIT_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a split file (missing columns {', '.join(sorted(missing))})")
        rows = list(reader)
    bad = sorted({r["split"] for r in rows} - {"train", "val", "test"})
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}")
    return rows


def make_split(root: Path, out: Path, *, test: float = 0.3, val: float = 0.15, seed: int = 42,
               keep_test: bool = False, one_source: str | None = None) -> dict:
    """Group ROOT's photos, split them, write OUT; returns photos and groups per split.

    `keep_test`: the collection's own test photos (MANIFEST `split`, or ROOT/test/) stay the test
    share and only the rest is split, into train and validation by whole groups: a collection that
    ships a test set keeps it comparable, and its validation stops being near-copies of training.
    `one_source`: every photo counts as coming from that one source, for a collection whose
    `source_repo`s are re-hosts of one dataset (its near-copies cross the re-hosts)."""
    photos = read_manifest(root)
    if one_source:
        photos = [replace(p, source=one_source) for p in photos]
    groups = near_duplicate_groups(root, photos)
    if keep_test:
        given = [p for p in photos if p.given_split == "test"]
        if not given:
            raise ValueError(f"{root}: --keep-test, but the collection has no test photos of its own "
                             "(no MANIFEST.tsv split column saying test, no test/ folder)")
        rest = [p for p in photos if p.given_split != "test"]
        sides = {**dict.fromkeys((p.file for p in given), "test"),
                 **grouped_split(rest, groups, test=0.0, val=val, seed=seed)}
    else:
        sides = grouped_split(photos, groups, test=test, val=val, seed=seed)
    write_split(out, root.name, photos, groups, sides)
    summary: dict = {"photos": len(photos), "groups": len(set(groups.values()))}
    for name in ("train", "val", "test"):
        summary[name] = sum(1 for s in sides.values() if s == name)
    return summary
