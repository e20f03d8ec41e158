"""deploy/: units pass `systemd-analyze verify`, install.sh passes shellcheck and its dry run works."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("sorter-*"))
ANALYZE = shutil.which("systemd-analyze")
SHELLCHECK = shutil.which("shellcheck")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd)")


def verify(folder: Path, names: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", "--man=no", "--generators=no", *[f"./{n}" for n in names]],
                          cwd=folder, capture_output=True, text=True, timeout=90)


def copy_units(tmp_path: Path) -> list[str]:
    """ExecStart must exist for verify: point /opt/sorter/venv/bin/sorter at /bin/true; instantiate templates."""
    names = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/sorter/venv/bin/sorter", "/bin/true")
        name = unit.name.replace("@.", "@0.")
        (tmp_path / name).write_text(text)
        names.append(name)
    return names


@needs_analyze
def test_units_verify(tmp_path):
    names = copy_units(tmp_path)
    want = {"sorter-watch.service", "sorter-camera@0.service", "sorter-prune.service", "sorter-prune.timer"}
    assert want <= set(names)
    result = verify(tmp_path, names)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    copy_units(tmp_path)
    watch = tmp_path / "sorter-watch.service"
    watch.write_text(watch.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    result = verify(tmp_path, ["sorter-watch.service"])
    assert result.returncode != 0 or "sometimes" in result.stderr


def test_services_restart_with_a_rate_limit_and_are_hardened():
    for name in ("sorter-watch.service", "sorter-camera@.service"):
        text = (DEPLOY / "systemd" / name).read_text()
        for line in ("Restart=on-failure", "StartLimitIntervalSec=", "StartLimitBurst=", "User=sorter",
                     "ProtectSystem=strict", "ReadWritePaths=/var/lib/sorter\n", "NoNewPrivileges=yes",
                     "PrivateTmp=yes", "ExecStart=/opt/sorter/venv/bin/sorter "):
            assert line in text, f"{name} lacks {line!r}"


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck missing (apt-get install shellcheck)")
def test_install_script_passes_shellcheck():
    result = subprocess.run([SHELLCHECK, str(DEPLOY / "install.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_install_script_dry_run_changes_nothing_and_honours_prefix(tmp_path):
    text = (DEPLOY / "install.sh").read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    result = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--dry-run", "--prefix", str(tmp_path / "opt")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'opt'}/venv/bin/pip install" in result.stdout and "sorter-watch.service" in result.stdout
    if not Path("/var/lib/sorter/models/current").exists():  # a fresh box gets the bundled model
        assert "sorter model install" in result.stdout and "models/fruit-lite0-int8.tflite" in result.stdout
    else:  # a box with a model keeps it
        assert "sorter model install" not in result.stdout
    assert not (tmp_path / "opt").exists()
    bad = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown option" in bad.stderr


def test_runtime_container_has_no_tensorflow():
    runtime = (DEPLOY / "Containerfile.runtime").read_text()
    assert "python:3.11-slim" in runtime and "[train]" not in runtime and "tensorflow" not in runtime.replace(
        '! /opt/sorter/venv/bin/python -c "import tensorflow"', "")
    assert "[train]" in (DEPLOY / "Containerfile.train").read_text()
    bundled = re.search(r"COPY (models/\S+\.tflite) (models/\S+\.card\.json) /opt/sorter/models/", runtime)
    assert bundled and all((DEPLOY.parent / p).is_file() for p in bundled.groups())
    assert f"SORTER_MODEL=/opt/sorter/models/{Path(bundled.group(1)).name}" in runtime
