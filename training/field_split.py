"""Hold back part of the line's audited photos as the field test (and validation), stratified by true label.

One photo per content hash (the data set already is), so a held-out item never has a copy in the
training share. Seeded: the same photos and seed give the same split, and the split is written as a
file so the comparison can be re-scored later on exactly the photos the challenger never saw.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar


class Photo(Protocol):
    @property
    def sha256(self) -> str: ...

    @property
    def true_label(self) -> str: ...


P = TypeVar("P", bound=Photo)
COLUMNS = ("sha256", "true_label", "split", "file")


def split(photos: Sequence[P], test_share: float = 0.3, seed: int = 42) -> tuple[list[P], list[P]]:
    """(rest, held out): `test_share` of every true label's photos (rounded, at least one when the label
    has two or more and the share is not 0; a label with one photo stays in the rest), drawn after
    sorting by hash so the order the data set lists them in does not matter."""
    if not 0 <= test_share < 1:
        raise ValueError(f"a field share must be in [0, 1), not {test_share}")
    rng = random.Random(seed)
    train: list[P] = []
    test: list[P] = []
    for label in sorted({p.true_label for p in photos}):
        members = sorted((p for p in photos if p.true_label == label), key=lambda p: p.sha256)
        rng.shuffle(members)
        n = min(len(members) - 1, max(1, round(len(members) * test_share))) if len(members) > 1 and test_share else 0
        test += members[:n]
        train += members[n:]
    return train, test


class Labelled(Photo, Protocol):
    @property
    def pseudo(self) -> bool: ...


L = TypeVar("L", bound=Labelled)


def partition(photos: Sequence[L], test_share: float, val_share: float, seed: int = 42) -> dict[str, list[L]]:
    """{train, val, test}: test and validation drawn from audited photos only; pseudo-labelled ones
    (the model's own confident label) only ever train, since a test labelled by the model in use
    would score it right by construction."""
    audited = [p for p in photos if not p.pseudo]
    rest, test = split(audited, test_share, seed)
    train, val = split(rest, val_share, seed + 1)
    return {"train": train + [p for p in photos if p.pseudo], "val": val, "test": test}


def write(path: Path, parts: Mapping[str, Sequence[Photo]], files: Mapping[str, Path]) -> Path:
    """`path` as TSV: sha256, true label, split (train, val, test), file (as the data set placed it)."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, delimiter="\t", lineterminator="\n")
        out.writerow(COLUMNS)
        for name, part in parts.items():
            for p in sorted(part, key=lambda p: (p.true_label, p.sha256)):
                out.writerow([p.sha256, p.true_label, name, str(files[p.sha256])])
    return path


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))
