"""Hostile files into a real `sorter watch` (issue 14, "Done when"): the daemon's peak RSS stays under
400 MB for every file, each gets a row with a reason, nothing outside INCOMING and OUT changes.
The harness is benchmarks/torture_hostile.py; run it alone for the figures."""

from __future__ import annotations

import pytest

from benchmarks.torture_hostile import AT_LIMIT, LIMIT_MB, at_limit, hostile, run


def _check(tmp_path, files) -> None:
    outcomes, baseline, changed = run(tmp_path, files)
    assert len(outcomes) == len(files) + 1  # + the symlink out of INCOMING
    assert changed == [], "files outside INCOMING/OUT changed"
    accepted = {name for name, (*_, ok) in AT_LIMIT.items() if ok}
    assert [o.name for o in outcomes if not o.error and o.name not in accepted] == []
    assert all(o.error is None for o in outcomes if o.name in accepted)
    worst = max(outcomes, key=lambda o: o.peak_mb)
    assert worst.peak_mb < LIMIT_MB, f"peak RSS {worst.peak_mb:.0f} MB after {worst.name} (baseline {baseline:.0f})"


def test_one_hostile_file_of_each_kind(tmp_path):
    files = hostile(small=True)
    assert len(files) >= 60
    _check(tmp_path, files)


@pytest.mark.slow
def test_the_full_hostile_set_and_images_at_the_byte_limit(tmp_path):
    files = hostile() + at_limit()
    assert len(files) >= 100
    _check(tmp_path, files)
