"""Merged data roots and the grouped split (issue 15 §1): near-twins never straddle a split."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.watch_helpers import SORTER
from training.data import discover_many, load_splits, save_splits
from training.groups import (
    Photo,
    capture_time,
    grouped_split,
    make_split,
    near_duplicate_groups,
    read_manifest,
    read_split,
)

REPO = Path(__file__).resolve().parent.parent
SPLIT_FILE = REPO / "training" / "splits" / "fruit_extra.tsv"
EXTRA = REPO.parent / "shared" / "data" / "fruit_extra"


def _scene(seed: int, size: int = 96) -> np.ndarray:
    """A picture of its own: a smooth random field (unlike any other seed's at every scale)."""
    coarse = np.random.default_rng(seed).integers(0, 255, (6, 6, 3)).astype(np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _manifest(root: Path, rows: list[tuple[str, str, str, str]]) -> None:
    with (root / "MANIFEST.tsv").open("w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(["class", "file", "source_repo", "source_path"])
        out.writerows(rows)


def test_look_alikes_in_any_orientation_and_phone_bursts_share_a_group(tmp_path):
    a, b = _scene(1), _scene(2)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
    files = {"fresh/a.jpg": a, "fresh/a_turned.jpg": np.rot90(a).copy(), "fresh/a_noisy.jpg": noisy,
             "fresh/b.jpg": b, "fresh/c1.jpg": _scene(3), "fresh/c2.jpg": _scene(4), "fresh/d.jpg": _scene(5),
             "rotten/a_copy.jpg": a}
    for name, img in files.items():
        _save(tmp_path / name, img)
    stamps = {"fresh/c1.jpg": "IMG_20190809_115439.jpg", "fresh/c2.jpg": "IMG_20190809_115451.jpg",
              "fresh/d.jpg": "IMG_20190809_120439.jpg"}  # c1, c2: 12 s apart; d: 10 minutes later
    photos = [Photo(f, f.split("/")[0], "cam", stamps.get(f, f)) for f in files]
    groups = near_duplicate_groups(tmp_path, photos)
    assert groups["fresh/a.jpg"] == groups["fresh/a_turned.jpg"] == groups["fresh/a_noisy.jpg"]
    assert groups["fresh/c1.jpg"] == groups["fresh/c2.jpg"]
    assert len({groups[f] for f in ("fresh/a.jpg", "fresh/b.jpg", "fresh/c1.jpg", "fresh/d.jpg")}) == 4
    assert groups["rotten/a_copy.jpg"] != groups["fresh/a.jpg"]  # groups never span two classes


def test_capture_time_reads_the_phone_name_styles():
    assert capture_time("Data/train/A3_good/20190809_115439.jpg") == capture_time("IMG20190809115439.jpg")
    assert capture_time("IMG_20190809_115451_1.jpg") - capture_time("20190809_115439.jpg") == 12
    assert capture_time("IMG_4411.JPG") is None and capture_time("20191399_999999.jpg") is None


def _photos_in_groups(cells: dict[tuple[str, str], list[int]]) -> tuple[list[Photo], dict[str, int]]:
    photos, groups, number = [], {}, 0
    for (source, cls), sizes in cells.items():
        for size in sizes:
            for i in range(size):
                photo = Photo(f"{cls}/{source}-{number}-{i}.jpg", cls, source)
                photos.append(photo)
                groups[photo.file] = number
            number += 1
    return photos, groups


def test_the_split_draws_whole_groups_with_at_least_the_test_share_of_every_cell():
    cells = {("phone", "fresh"): [1] * 20 + [3] * 10 + [9, 14],  # 63 photos
             ("phone", "rotten"): [40, 2, 2, 3, 1, 1, 5, 4],  # one big burst: it must not become test
             ("web", "fresh"): [1] * 7, ("web", "rotten"): [6], ("lab", "fresh"): [9, 1]}
    photos, groups = _photos_in_groups(cells)
    for seed in range(5):
        sides = grouped_split(photos, groups, test=0.3, val=0.15, seed=seed)
        by_group = defaultdict(set)
        for p in photos:
            by_group[groups[p.file]].add(sides[p.file])
        assert all(len(s) == 1 for s in by_group.values()), "a group on two sides"
        share = defaultdict(Counter)
        for p in photos:
            share[p.cell][sides[p.file]] += 1
        for cell, counts in share.items():
            total = sum(counts.values())
            if len(cells[cell]) >= 2:
                assert counts["test"] >= 0.3 * total and counts["train"] > 0, (seed, cell, counts)
            else:
                assert counts == {"train": total}  # one group cannot be split: it trains
        assert share[("phone", "rotten")]["test"] <= 0.5 * 58  # the 40-photo burst stayed out of test
        assert abs(share[("phone", "fresh")]["val"] - 0.15 * 63) <= 2


def _two_roots(tmp_path: Path) -> tuple[Path, Path]:
    dev, extra = tmp_path / "dev", tmp_path / "extra"
    seed = 100
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("freshred", "rottenblue"):
            for i in range(n):
                seed += 1
                _save(dev / split / cls / f"{i}.jpg", _scene(seed))
    rows = []
    for cls, n in (("freshred", 6), ("rottenblue", 5), ("rottengreen", 4)):
        for i in range(n):
            seed += 1
            _save(extra / cls / f"x{i}.jpg", _scene(seed))
            rows.append((cls, f"{cls}/x{i}.jpg", "phone" if i % 2 else "web", f"x{i}.jpg"))
    _manifest(extra, rows)
    return dev, extra


def test_two_roots_merge_by_class_name_and_a_split_file_sets_the_second_roots_splits(tmp_path):
    dev, extra = _two_roots(tmp_path)
    split = tmp_path / "extra.tsv"
    summary = make_split(extra, split, test=0.3, val=0.0)
    assert summary["photos"] == 15 and summary["train"] + summary["test"] == 15
    splits = discover_many([dev, extra], seed=1, val_fraction=0.25, test_fraction=0.0, split_files=[split])
    assert splits.classes == ["freshred", "rottenblue", "rottengreen"]  # the union, by name
    rows = {r["file"]: r["split"] for r in read_split(split)}
    for name in ("train", "val", "test"):
        got = sorted(p.relative_to(extra).as_posix() for p, _ in getattr(splits, name) if p.is_relative_to(extra))
        assert got == sorted(f for f, s in rows.items() if s == name)
    assert splits.counts_by_root("test")["dev"] == {"freshred": 2, "rottenblue": 2, "rottengreen": 0}
    assert splits.counts_by_root("val")["dev"] == {"freshred": 2, "rottenblue": 2, "rottengreen": 0}
    assert sum(splits.counts_by_root("train")["extra"].values()) == summary["train"]
    assert set(splits.sets("test")) == {"dev", "extra"}
    assert all(splits.classes[i] == p.parent.name for s in ("train", "val", "test") for p, i in getattr(splits, s))
    save_splits(splits, tmp_path / "splits.json")
    again = load_splits(tmp_path / "splits.json")
    assert again.roots == [dev.resolve(), extra.resolve()]
    assert {s: sorted(getattr(again, s)) for s in ("train", "val", "test")} == \
        {s: sorted((p.resolve(), i) for p, i in getattr(splits, s)) for s in ("train", "val", "test")}
    assert again.fingerprint() == splits.fingerprint()


def test_a_split_file_naming_missing_photos_or_an_absent_root_is_a_clear_error(tmp_path):
    dev, extra = _two_roots(tmp_path)
    split = tmp_path / "extra.tsv"
    make_split(extra, split)
    (extra / "freshred" / "x0.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 files named in the split file for extra are missing .*freshred/x0"):
        discover_many([dev, extra], split_files=[split])
    with pytest.raises(ValueError, match="name data folders that were not given: extra"):
        discover_many([dev], split_files=[split])
    (tmp_path / "bad.tsv").write_text("file\tsplit\nx.jpg\ttrain\n")
    with pytest.raises(ValueError, match="not a split file"):
        discover_many([dev], split_files=[tmp_path / "bad.tsv"])


def test_sorter_split_writes_the_file_train_reads(tmp_path):
    _, extra = _two_roots(tmp_path)
    out = tmp_path / "s.tsv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([*SORTER, "split", str(extra), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: 15 photos in ")
    assert [r["root"] for r in read_split(out)] == ["extra"] * 15
    assert {r["file"] for r in read_split(out)} == {p.file for p in read_manifest(extra)}


def test_the_committed_fruit_extra_split_keeps_every_group_on_one_side():
    rows = read_split(SPLIT_FILE)
    assert len(rows) == 828 and {r["root"] for r in rows} == {"fruit_extra"}
    sides, cells = defaultdict(set), defaultdict(Counter)
    groups_in = defaultdict(set)
    for r in rows:
        sides[r["group"]].add(r["split"])
        cells[(r["source"], r["class"])][r["split"]] += 1
        groups_in[(r["source"], r["class"])].add(r["group"])
    assert all(len(s) == 1 for s in sides.values())
    for cell, counts in cells.items():
        if len(groups_in[cell]) >= 2:
            assert counts["test"] >= 0.3 * sum(counts.values()), cell


@pytest.mark.skipif(not EXTRA.is_dir(), reason=f"needs the fruit photos at {EXTRA} (../shared beside the repo)")
def test_the_committed_split_is_what_sorter_split_makes_from_fruit_extra(tmp_path):
    make_split(EXTRA, tmp_path / "again.tsv")
    assert (tmp_path / "again.tsv").read_text() == SPLIT_FILE.read_text()
    assert json.dumps(sorted(p.file for p in read_manifest(EXTRA))) == \
        json.dumps(sorted(r["file"] for r in read_split(SPLIT_FILE)))


DEV_SPLIT_FILE = REPO / "training" / "splits" / "fruit_dev.tsv"
DEV = REPO.parent / "shared" / "data" / "fruit_dev"
DEV_SPLIT_ARGS = {"val": 0.15, "keep_test": True, "one_source": "kaggle-fruits-fresh-and-rotten"}


def _shipped_test_collection(root: Path) -> dict[str, np.ndarray]:
    """ROOT/{train,test}/<class>/ with no manifest: twins across two re-hosts, and a test photo."""
    a = _scene(11)
    files = {"train/fresh/a.jpg": a, "train/fresh/a_turned.jpg": np.rot90(a).copy(),
             **{f"train/fresh/u{i}.jpg": _scene(20 + i) for i in range(6)},
             **{f"test/fresh/t{i}.jpg": _scene(40 + i) for i in range(3)}}
    for name, img in files.items():
        _save(root / name, img)
    return files


def test_keep_test_leaves_the_collections_own_test_share_and_splits_the_rest_by_groups(tmp_path):
    root = tmp_path / "dev"
    files = _shipped_test_collection(root)
    out = tmp_path / "dev.tsv"
    summary = make_split(root, out, val=0.5, keep_test=True, seed=3)
    rows = {r["file"]: r for r in read_split(out)}
    assert set(rows) == set(files)
    assert {f for f, r in rows.items() if r["split"] == "test"} == {f"test/fresh/t{i}.jpg" for i in range(3)}
    assert rows["train/fresh/a.jpg"]["group"] == rows["train/fresh/a_turned.jpg"]["group"]
    assert rows["train/fresh/a.jpg"]["split"] == rows["train/fresh/a_turned.jpg"]["split"]
    assert summary["test"] == 3 and summary["val"] > 0 and summary["train"] > 0
    assert {r["class"] for r in rows.values()} == {"fresh"}


def test_keep_test_without_test_photos_is_a_clear_error(tmp_path):
    _, extra = _two_roots(tmp_path)
    with pytest.raises(ValueError, match="no test photos of its own"):
        make_split(extra, tmp_path / "x.tsv", keep_test=True)


def test_one_source_groups_twins_that_two_re_hosts_carry(tmp_path):
    root = tmp_path / "hosted"
    a = _scene(7)
    for name, img in {"fresh/a.jpg": a, "fresh/a_flipped.jpg": a[:, ::-1].copy(), "fresh/b.jpg": _scene(8)}.items():
        _save(root / name, img)
    _manifest(root, [("fresh", "fresh/a.jpg", "host-one", "a.jpg"),
                     ("fresh", "fresh/a_flipped.jpg", "host-two", "a.jpg"),
                     ("fresh", "fresh/b.jpg", "host-two", "b.jpg")])
    make_split(root, tmp_path / "1.tsv")
    apart = {r["file"]: r["group"] for r in read_split(tmp_path / "1.tsv")}
    assert apart["fresh/a.jpg"] != apart["fresh/a_flipped.jpg"]  # groups never span two sources
    make_split(root, tmp_path / "2.tsv", one_source="origin")
    rows = {r["file"]: r for r in read_split(tmp_path / "2.tsv")}
    assert rows["fresh/a.jpg"]["group"] == rows["fresh/a_flipped.jpg"]["group"] != rows["fresh/b.jpg"]["group"]
    assert {r["source"] for r in rows.values()} == {"origin"}


def test_the_committed_fruit_dev_split_keeps_its_test_set_and_every_group_on_one_side_of_train_and_val():
    rows = read_split(DEV_SPLIT_FILE)
    assert len(rows) == 1560 and {r["root"] for r in rows} == {"fruit_dev"}
    assert all((r["split"] == "test") == r["file"].startswith("test/") for r in rows)
    sides = defaultdict(set)
    for r in rows:
        if r["split"] != "test":
            sides[r["group"]].add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    val = Counter(r["class"] for r in rows if r["split"] == "val")
    assert len(val) == 6 and min(val.values()) >= 20


@pytest.mark.skipif(not DEV.is_dir(), reason=f"needs the fruit photos at {DEV} (../shared beside the repo)")
def test_the_committed_fruit_dev_split_is_what_sorter_split_makes_from_fruit_dev(tmp_path):
    make_split(DEV, tmp_path / "again.tsv", **DEV_SPLIT_ARGS)
    assert (tmp_path / "again.tsv").read_text() == DEV_SPLIT_FILE.read_text()
