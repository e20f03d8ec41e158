"""Safe model updates: check the new bundle, copy it in, swap `models/current` atomically, keep the old.

Layout under the models folder (default /var/lib/sorter/models):
    <name>-<sha12>/<name>.tflite + <name>.card.json   one folder per installed bundle
    current  -> <name>-<sha12>                         what the services load (config `model`)
    previous -> <the one before>                       what `sorter model rollback` goes back to
A running sorter keeps the file it opened; a restart picks up `current`. The swap is a rename
of a fresh symlink over the old one (os.replace), so a reader never sees a missing `current`.
"""

from __future__ import annotations

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


def install(new: Path, models: Path = DEFAULT_DIR) -> tuple[Path, list[Check]]:
    """Doctor-check NEW, copy it (with its card) into its own folder, make it `current`."""
    new = Path(new)
    checks = check_model(new, threads=1)
    if not all(c.ok for c in checks):
        failed = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
        raise BundleError(f"{new} failed its checks, nothing installed: {failed}")
    name = new.name.removesuffix(".tflite")
    digest = next(c.data["sha256"] for c in checks if c.name == "model_hash")
    folder = models / f"{name}-{digest[:12]}"
    if not folder.is_dir():
        staging = models / f".{folder.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy2(new, staging / new.name)
        shutil.copy2(card_path(new), staging / card_path(new).name)
        os.replace(staging, folder)
    before = current(models)
    if before is not None and before == folder.resolve():
        return folder, checks  # already current: idempotent
    if before is not None:
        _swap(models / "previous", before.name)
    _swap(models / "current", folder.name)
    return folder, checks


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
