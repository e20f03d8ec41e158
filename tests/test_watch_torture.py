"""The torture run of issue 14: 1,000 drops into a real `sorter watch` killed 10 times with SIGKILL,
with duplicate content, names reused after their first file was routed, and files replaced by rename
within 0-5 ms of landing. Counts: 0 lost, 0 in two places, 0 rows describing other bytes.

Run on its own for the figures: python -m pytest -q -s tests/test_watch_torture.py
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.watch_helpers import drop, files_under, jpeg, kill_env, rows, start_watch, watch_command

COLORS = ["red", "green", "blue", "grey"]
pytestmark = pytest.mark.slow


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Plan:
    """What the harness delivered: per path the contents in order; the last one at a path is final."""

    at: dict[str, list[bytes]] = field(default_factory=dict)
    drops: int = 0

    def put(self, incoming: Path, name: str, data: bytes) -> None:
        drop(incoming, name, data)
        self.at.setdefault(name, []).append(data)
        self.drops += 1

    def required(self) -> Counter[str]:
        """Contents that must each reach OUT: every one nothing was written over. (A file replaced at
        its name may have been routed before the replacement landed, or not: either is right.)"""
        return Counter(_sha(datas[-1]) for datas in self.at.values())

    def written(self) -> Counter[str]:
        return Counter(_sha(d) for datas in self.at.values() for d in datas)


def _drops(rng: random.Random, incoming: Path, plan: Plan, n: int, serial: list[int]) -> None:
    """n drops: new photos, duplicate bytes under new names, names reused, replacements by rename."""
    for _ in range(n):
        serial[0] += 1
        i = serial[0]
        fresh = jpeg(COLORS[i % 4], tag=f"item-{i}")
        roll = rng.random()
        names = list(plan.at)
        if roll < 0.15 and names:  # the same bytes again, under a new name
            plan.put(incoming, f"d{i:04d}.jpg", plan.at[rng.choice(names)][-1])
        elif roll < 0.25 and names:  # a name used before, new bytes (its first file is likely routed)
            plan.put(incoming, rng.choice(names), fresh)
        elif roll < 0.30:  # dropped, then replaced by rename 0-5 ms later
            name = f"r{i:04d}.jpg"
            plan.put(incoming, name, fresh)
            time.sleep(rng.uniform(0, 0.005))
            plan.put(incoming, name, jpeg(COLORS[(i + 1) % 4], tag=f"replacement-{i}"))
        else:
            plan.put(incoming, f"f{i:04d}.jpg", fresh)


def _audit(tmp: Path, plan: Plan) -> dict[str, int]:
    """The figures: what was lost, what sits in two places, which rows describe other bytes."""
    out = tmp / "out"
    placed = files_under(out)
    got = rows(tmp / "db.sqlite")
    in_out: Counter[str] = Counter()
    firsts: Counter[str] = Counter()
    for path in placed:
        sha = _sha(path.read_bytes())
        in_out[sha] += 1
        if path.parent != out / "duplicates":
            firsts[sha] += 1
    by_dest = {r["destination"]: r for r in got if r["destination"]}
    wrong = sum(1 for path in placed if (r := by_dest.get(str(path))) is None or r["sha256"] != _sha(path.read_bytes()))
    wrong += sum(1 for dest in by_dest if not Path(dest).exists())
    written = plan.written()
    return {
        "drops": plan.drops,
        "files in OUT": len(placed),
        "rows": len(got),
        "lost": sum(1 for sha in plan.required() if sha not in in_out),
        "in two places": sum(n - 1 for n in firsts.values() if n > 1)
        + sum(1 for sha, n in in_out.items() if n > written[sha]),
        "rows describing other bytes": wrong,
        "rows not done": sum(1 for r in got if r["state"] != "done"),
        "left in INCOMING": len(files_under(tmp / "in")),
    }


def test_a_thousand_drops_ten_sigkills_name_reuse_and_replacements(tmp_path):
    rng = random.Random(14)
    incoming = tmp_path / "in"
    incoming.mkdir()
    plan, serial = Plan(), [0]
    _drops(rng, incoming, plan, 100, serial)  # a backlog before the first start
    kills = 0
    for run in range(10):
        proc = start_watch(tmp_path, run)
        kill_after = rng.randrange(10, 80)
        _drops(rng, incoming, plan, kill_after, serial)
        time.sleep(rng.uniform(0, 0.3))  # some queued, some decoded, a batch maybe half moved
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        _drops(rng, incoming, plan, 85 - kill_after, serial)  # more land while it is down
    _drops(rng, incoming, plan, 1000 - plan.drops if plan.drops < 1000 else 0, serial)
    final = subprocess.run(watch_command(tmp_path, "--once"), env=kill_env(), capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]

    figures = _audit(tmp_path, plan)
    print("\n" + "\n".join(f"{k:>28}: {v}" for k, v in {"SIGKILLs": kills, **figures}.items()))
    assert kills == 10 and figures["drops"] >= 1000
    assert figures["lost"] == 0
    assert figures["in two places"] == 0
    assert figures["rows describing other bytes"] == 0
    assert figures["rows not done"] == 0 and figures["left in INCOMING"] == 0
    assert figures["files in OUT"] == sum(1 for r in rows(tmp_path / "db.sqlite") if r["destination"])
