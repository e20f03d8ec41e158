"""Safe model updates: check the new bundle, copy it in, swap `models/current` atomically, keep the old.

Layout under the models folder (default /var/lib/sorter/models):
    <name>-<sha12>/<name>.tflite + <name>.card.json   one folder per installed bundle
    current  -> <name>-<sha12>                         what the services load (config `model`)
    previous -> <the one before>                       what `sorter model rollback` goes back to
A running sorter keeps the file it opened; a restart picks up `current`. The swap is a rename
of a fresh symlink over the old one (os.replace), so a reader never sees a missing `current`.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

from sorter.card import card_path
from sorter.doctor import Check, check_model

DEFAULT_DIR = Path("/var/lib/sorter/models")


class BundleError(RuntimeError):
    """The bundle was not installed (or there is nothing to roll back to); nothing changed."""


def _swap(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def current(models: Path) -> Path | None:
    link = models / "current"
    return link.resolve() if link.is_symlink() else None


def install(new: Path, models: Path = DEFAULT_DIR, accept_failed_gate: bool = False) -> tuple[Path, list[Check]]:
    """Doctor-check NEW, copy it (with its card) into its own folder, make it `current`. A bundle
    whose export failed its accuracy gate is refused unless `accept_failed_gate`; the installed card
    then records that acceptance, so `sorter doctor` says so instead of failing every day."""
    new = Path(new)
    checks = check_model(new, threads=1)
    gate = next((c for c in checks if c.name == "gate"), None)
    if gate is not None and not gate.ok and not accept_failed_gate:
        raise BundleError(f"{new} failed its export gate ({gate.data['problem']}), nothing installed; "
                          "pass --accept-failed-gate to install it anyway")
    failed = [c for c in checks if not c.ok and c is not gate]
    if failed:
        raise BundleError(f"{new} failed its checks, nothing installed: "
                          + "; ".join(f"{c.name}: {c.detail}" for c in failed))
    name = new.name.removesuffix(".tflite")
    digest = next(c.data["sha256"] for c in checks if c.name == "model_hash")
    folder = models / f"{name}-{digest[:12]}"
    accepted = gate.data["problem"] if gate is not None and not gate.ok else None
    if not folder.is_dir():
        _copy_in(new, folder)
    if accepted:
        _record_acceptance(card_path(folder / new.name), accepted)
    before = current(models)
    if before is not None and before == folder.resolve():
        return folder, checks  # already current: idempotent
    if before is not None:
        _swap(models / "previous", before.name)
    _swap(models / "current", folder.name)
    return folder, checks


def _copy_in(new: Path, folder: Path) -> None:
    """Copy the model, its card and the card's `sample` into a staging folder, then rename it into
    place: `current` never points at half a bundle."""
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(new, staging / new.name)
    shutil.copy2(card_path(new), staging / card_path(new).name)
    card = json.loads(card_path(new).read_text())
    sample = card.get("sample")
    if sample:  # the doctor checked it is a plain file beside the model
        shutil.copy2(new.parent / sample, staging / sample, follow_symlinks=False)
    weights = (card.get("float_weights") or {}).get("file")  # a plain name (the card's validator); only
    if weights and (new.parent / weights).is_file():  # `sorter retrain` reads it, so the next retrain can
        shutil.copy2(new.parent / weights, staging / weights, follow_symlinks=False)
    os.replace(staging, folder)


def _record_acceptance(card_file: Path, problem: str) -> None:
    """Write into the installed card that the operator accepted its failed gate (once, atomically)."""
    card = json.loads(card_file.read_text())
    gate = card.get("gate") if isinstance(card.get("gate"), dict) else {}
    if gate.get("accepted"):
        return
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    card["gate"] = {**gate, "passed": False, "problem": problem,
                    "accepted": f"by sorter model install --accept-failed-gate at {stamp}"}
    tmp = card_file.with_name(f".{card_file.name}.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_file)


def rollback(models: Path = DEFAULT_DIR) -> Path:
    """Make `previous` current again (and the rolled-back one `previous`, so it can be undone)."""
    prev_link = models / "previous"
    if not prev_link.is_symlink() or not prev_link.resolve().is_dir():
        raise BundleError(f"no previous model under {models} to roll back to")
    prev, now = prev_link.resolve(), current(models)
    _swap(models / "current", prev.name)
    if now is not None:
        _swap(prev_link, now.name)
    return prev
