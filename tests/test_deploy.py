"""deploy/: units pass `systemd-analyze verify`, install.sh passes shellcheck and its dry run works."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("sorter-*"))
ANALYZE = shutil.which("systemd-analyze") or "systemd-analyze"
SHELLCHECK = shutil.which("shellcheck")
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (apt-get install systemd)")


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
        assert "sorter model install" in result.stdout and "models/fruit-lite1-int8.tflite" in result.stdout
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


def security_scores(tmp_path: Path) -> dict[str, float]:
    """`systemd-analyze security --offline=yes` overall exposure per service (0 safest, 10 worst)."""
    scores = {}
    for name in copy_units(tmp_path):
        if not name.endswith(".service"):
            continue
        result = subprocess.run([ANALYZE, "security", "--offline=yes", f"./{name}"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=90)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
        assert found, result.stdout[-500:] + result.stderr
        scores[name] = float(found.group(1))
    return scores


@needs_analyze
def test_units_score_at_most_1_5_in_systemd_analyze_security(tmp_path):
    """Issue 14.15: the services scored 3.2-3.8; with syscall filter, IP deny list and the rest, at most 1.5."""
    scores = security_scores(tmp_path)
    assert set(scores) == {"sorter-watch.service", "sorter-camera@0.service", "sorter-prune.service",
                           "sorter-report.service"}
    assert all(score <= 1.5 for score in scores.values()), scores
    assert scores["sorter-prune.service"] <= 0.5, scores  # no network, no devices


def _settings(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("name", ["sorter-watch.service", "sorter-camera@.service", "sorter-report.service",
                                  "sorter-prune.service"])
def test_services_limit_memory_tasks_syscalls_network_and_models(name):
    unit = _settings(name)
    assert unit["MemoryMax"][0].endswith(("M", "G")) and int(unit["TasksMax"][0]) <= 128
    assert unit["SystemCallFilter"][0] == "@system-service"
    assert {"@privileged", "@mount", "@module", "@raw-io"} <= set(unit["SystemCallFilter"][1].lstrip("~").split())
    assert unit["SystemCallErrorNumber"] == ["EPERM"]
    assert unit["IPAddressDeny"] == ["any"]
    if name == "sorter-prune.service":
        assert unit["PrivateNetwork"] == ["yes"] and "IPAddressAllow" not in unit
    else:
        assert unit["IPAddressAllow"] == ["localhost"]
    assert "-/var/lib/sorter/models" in unit["ReadOnlyPaths"][0].split()


def run_ip_allow(tmp_path: Path, config: str, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "sorter.toml"
    path.write_text(config)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# test\nnameserver 192.0.2.53\nnameserver 127.0.0.53\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SORTER_")}
    return subprocess.run([sys.executable, str(DEPLOY / "ip_allow.py"), "--config", str(path),
                           "--resolv-conf", str(resolv), *extra], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env)


def test_ip_allow_dropin_lists_the_configs_peers_and_nothing_else(tmp_path):
    config = """
[camera]
device = "rtsp://user:secret@203.0.113.5:554/stream"
[outputs.mqtt]
host = "10.20.30.40"
[outputs.webhook]
url = "https://192.0.2.7:8443/api"
[fleet]
broker = "198.51.100.9:1883"
"""
    result = run_ip_allow(tmp_path, config, "--allow", "127.0.0.1")
    assert result.returncode == 0 and not result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert "[Service]" in lines and "secret" not in result.stdout
    # sorted, loopback left to the unit, no resolver (every peer is an address)
    assert lines[-1] == "IPAddressAllow=10.20.30.40 192.0.2.7 198.51.100.9 203.0.113.5"
    if shutil.which("systemd-analyze"):  # the drop-in parses: the unit with it appended still verifies
        units = tmp_path / "units"
        units.mkdir()
        copy_units(units)
        watch = units / "sorter-watch.service"
        dropin = result.stdout.replace("[Service]\n", "")  # its lines, at the end of the unit's [Service]
        watch.write_text(watch.read_text().replace("\n[Install]", dropin + "\n[Install]"))
        assert "IPAddressAllow=10.20.30.40" in watch.read_text()
        checked = verify(units, ["sorter-watch.service"])
        assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr


def test_ip_allow_names_resolve_and_allow_the_resolver_and_a_bad_name_is_one_line(tmp_path):
    result = run_ip_allow(tmp_path, '[outputs.mqtt]\nhost = "localhost"\n', "--allow", "nothere.invalid")
    assert result.returncode == 0
    assert result.stderr.count("\n") == 1 and "nothere.invalid does not resolve" in result.stderr
    assert result.stdout.splitlines()[-1] == "IPAddressAllow=192.0.2.53"  # localhost: the unit's own
    bad = run_ip_allow(tmp_path, "no_such_key = 1\n")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_install_keeps_models_root_owned_and_writes_the_ip_dropins(tmp_path):
    result = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--dry-run", "--prefix", str(tmp_path / "opt")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "install -d -o root -g sorter -m 2750 /var/lib/sorter/models" in out
    assert "chown -R root:sorter /var/lib/sorter/models" in out and "sorter:sorter /var/lib/sorter/models" not in out
    for unit in ("sorter-watch.service", "sorter-camera@.service", "sorter-report.service"):
        assert f"would write /etc/systemd/system/{unit}.d/50-ip-allow.conf" in out


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck missing (apt-get install shellcheck)")
def test_tool_scripts_and_ci_pass_shellcheck():
    scripts = [*sorted((DEPLOY.parent / "tools").glob("*.sh")), DEPLOY.parent / ".ci" / "run"]
    assert {"install-test-deps.sh", "container-base.sh"} <= {s.name for s in scripts}
    result = subprocess.run([SHELLCHECK, *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_make_test_installs_the_programs_then_lints_type_checks_and_tests():
    """Issue 14.26/27: README's `make test` and .ci/run share one install step; ruff and mypy run in it."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make missing (apt-get install make)")
    plan = subprocess.run([make, "-n", "-W", "pyproject.toml", "test"], cwd=DEPLOY.parent, capture_output=True,
                          text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    steps = plan.stdout.splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(steps) if text in line)

    assert at("tools/install-test-deps.sh") < at("ruff check .") < at("/mypy") < at("-m pytest")
    ci = (DEPLOY.parent / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci  # one copy of the install logic
    typecheck = subprocess.run([make, "-n", "typecheck"], cwd=DEPLOY.parent, capture_output=True, text=True,
                               timeout=60)
    commands = [line for line in typecheck.stdout.splitlines() if not line.startswith("make")]  # make[1]: lines
    assert commands[-1] == ".venv/bin/mypy" and "||" not in typecheck.stdout  # an error fails the build


def test_test_deps_script_names_exactly_what_to_install(tmp_path):
    """With the programs missing from PATH it lists each with its package and prints the one apt-get line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    result = subprocess.run(["bash", str(DEPLOY.parent / "tools" / "install-test-deps.sh"), "--check"],
                            capture_output=True, text=True, timeout=60, env={"PATH": str(bin_dir)})
    assert result.returncode == 0, result.stderr
    assert "missing: shellcheck (shellcheck)" in result.stderr and "missing: buildah (buildah)" in result.stderr
    apt = [line for line in result.stderr.splitlines() if "apt-get install" in line]
    assert len(apt) == 1 and "shellcheck" in apt[0] and "mmdebstrap" in apt[0] and "systemd" in apt[0]
    bad = subprocess.run(["bash", str(DEPLOY.parent / "tools" / "install-test-deps.sh"), "--bogus"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


SECCOMP_EXEC = """
import errno, json, os, sys
import pyseccomp
allowed = json.loads(os.environ.pop("SECCOMP_ALLOW"))
rules = pyseccomp.SyscallFilter(defaction=pyseccomp.ERRNO(errno.EPERM))  # SystemCallErrorNumber=EPERM
for name in allowed:
    try:
        rules.add_rule(pyseccomp.ALLOW, name)
    except Exception:  # a name this architecture has no such call for
        pass
rules.load()
os.execv(sys.argv[1], sys.argv[1:])
"""


def _syscalls(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd group (`systemd-analyze syscall-filter`), nested groups expanded."""
    seen = set() if seen is None else seen
    if group in seen:
        return set()
    seen.add(group)
    listing = subprocess.run([ANALYZE, "syscall-filter", group], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    names: set[str] = set()
    for line in listing.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= _syscalls(item, seen) if item.startswith("@") else {item}
    return names


def unit_syscalls(name: str) -> set[str]:
    """What the unit's SystemCallFilter= lines let through: the allow list less the ~deny groups."""
    lines = _settings(name)["SystemCallFilter"]
    allowed = set().union(*(_syscalls(g) for g in lines[0].split()))
    for line in lines[1:]:
        assert line.startswith("~")
        allowed -= set().union(*(_syscalls(g) for g in line[1:].split()))
    return allowed


def under_filter(name: str, *args: str, cwd: Path, program: str = "sorter") -> subprocess.CompletedProcess:
    """Run `sorter ARGS` with the unit's system call filter loaded (seccomp, as systemd would)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SORTER_")}
    env["SECCOMP_ALLOW"] = json.dumps(sorted(unit_syscalls(name)))
    path = sys.executable if program == "python" else str(Path(sys.executable).parent / "sorter")
    return subprocess.run([sys.executable, "-c", SECCOMP_EXEC, path, *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


@needs_analyze
def test_daemons_work_under_their_units_system_call_filter(tmp_path):
    """The filter is real seccomp here: watch routes the samples, report and prune run, nothing says EPERM."""
    pytest.importorskip("pyseccomp", reason="pyseccomp missing (pip install -e '.[dev]')")
    assert unit_syscalls("sorter-camera@.service") == unit_syscalls("sorter-watch.service")
    assert "setpriority" in unit_syscalls("sorter-watch.service")  # the background helpers' nice
    assert not {"mount", "reboot", "chroot", "init_module"} & unit_syscalls("sorter-watch.service")
    incoming = tmp_path / "incoming"
    shutil.copytree(DEPLOY.parent / "samples", incoming, ignore=shutil.ignore_patterns("*.tsv"))
    model = str(DEPLOY.parent / "models" / "fruit-lite1-int8.tflite")
    db = str(tmp_path / "sorter.db")
    watch = under_filter("sorter-watch.service", "watch", str(incoming), "--out", str(tmp_path / "out"),
                         "--db", db, "--model", model, "--once", cwd=tmp_path)
    assert watch.returncode == 0, watch.stderr[-3000:]
    assert len([p for p in (tmp_path / "out").rglob("*.jpg")]) == 12 and not list(incoming.glob("*.jpg"))
    report = under_filter("sorter-report.service", "report", "--since", "24h", "--db", db, "--out",
                          str(tmp_path / "reports"), "--no-publish", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "reports" / "report.json").is_file()
    prune = under_filter("sorter-prune.service", "db", "prune", "--db", db, "--older-than", "90d", cwd=tmp_path)
    assert prune.returncode == 0, prune.stderr[-3000:]
    for run in (watch, report, prune):
        assert "not permitted" not in (run.stdout + run.stderr).lower()
    # and the filter is really in force: chroot (in @privileged) fails with EPERM
    denied = under_filter("sorter-watch.service", "-c", "import os; os.chroot('/')", cwd=tmp_path, program="python")
    assert denied.returncode == 1 and "PermissionError: [Errno 1] Operation not permitted" in denied.stderr
