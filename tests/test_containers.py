"""deploy/Containerfile.*: the images build (buildah, offline Debian base) and the runtime image sorts the samples.

No registry is reachable here, so the base is made from Debian's packages (tools/container-base.sh, cached
under build/containers) and passed as the Containerfiles' BASE. Layers are cached in buildah's storage
(`--layers`): a code change rebuilds only the layers from `COPY sorter` on. pip inside the build needs PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1200)
REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
BASE_SCRIPT = REPO / "tools" / "container-base.sh"
HOST_SORTER = Path(sys.executable).parent / "sorter"


def _why_not() -> str | None:
    """Why buildah cannot build here, or None when it can."""
    for tool in ("buildah", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install buildah mmdebstrap)"
    if os.geteuid() != 0:
        return "buildah --isolation chroot and mmdebstrap need root here (run the suite as root, as .ci/run does)"
    probe = subprocess.run(["buildah", "from", "--name", f"sorter-probe-{os.getpid()}", "scratch"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"buildah cannot create a container: {(probe.stderr.strip().splitlines() or ['?'])[-1]}"
    subprocess.run(["buildah", "rm", probe.stdout.strip()], capture_output=True, timeout=60)
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15).close()
    except (urllib.error.URLError, OSError) as exc:
        return f"PyPI unreachable ({exc}): pip inside the image build needs it"
    return None


def _ca_args() -> list[str]:
    """The host's CA bundle for pip in the build (a TLS-inspecting proxy signs PyPI with its own CA)."""
    cafile = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    if not Path(cafile).is_file():
        return []
    return ["--volume", f"{cafile}:/run/ca.crt:ro", "--build-arg", "PIP_CERT=/run/ca.crt"]


def build(containerfile: str, tag: str) -> str:
    """Build deploy/<containerfile> on the offline base; return the tag."""
    why = _why_not()
    if why:
        pytest.skip(why)
    base = subprocess.run(["bash", str(BASE_SCRIPT)], capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, base.stderr[-3000:]
    result = subprocess.run(
        ["buildah", "bud", "--isolation", "chroot", "--layers", "--format", "docker", "--quiet",
         "--build-arg", f"BASE={base.stdout.strip()}", *_ca_args(),
         "-f", f"deploy/{containerfile}", "-t", tag, "."],
        cwd=REPO, capture_output=True, text=True, timeout=1100)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return tag


class Container:
    """A working container from an image: `run` a command in it with buildah (chroot isolation)."""

    def __init__(self, image: str, name: str) -> None:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=60)  # a leftover of a killed run
        made = subprocess.run(["buildah", "from", "--name", name, image], capture_output=True, text=True,
                              timeout=120)
        assert made.returncode == 0, made.stderr
        self.name = name

    def argv(self, *command: str, volumes: tuple[str, ...] = ()) -> list[str]:
        extra = [arg for volume in volumes for arg in ("--volume", volume)]
        return ["buildah", "run", "--isolation", "chroot", *extra, self.name, "--", *command]

    def run(self, *command: str, volumes: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*command, volumes=volumes), capture_output=True, text=True, timeout=timeout)

    def copy(self, source: Path, dest: str) -> None:
        copied = subprocess.run(["buildah", "copy", "--chown", "sorter:sorter", self.name, str(source), dest],
                                capture_output=True, text=True, timeout=120)
        assert copied.returncode == 0, copied.stderr

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def runtime():
    image = build("Containerfile.runtime", "localhost/sorter:runtime-test")
    box = Container(image, f"sorter-runtime-test-{os.getpid()}")
    box.copy(SAMPLES, "/tmp/samples")
    yield box
    box.remove()


def _config(image: str) -> dict:
    out = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["Docker"]["config"]


def test_runtime_image_version_names_its_interpreter_and_has_no_tensorflow(runtime):
    """The image's default user (sorter) runs the CLI; the LiteRT interpreter is in, TensorFlow is not."""
    version = runtime.run("sorter", "--version")
    assert version.returncode == 0, version.stderr
    host = subprocess.run([str(HOST_SORTER), "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.split()[:2] == host.stdout.split()[:2]  # "sorter 0.1.0"
    assert "interpreter: ai-edge-litert" in version.stdout
    no_tf = runtime.run("python3", "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))")
    assert no_tf.stdout.strip() == "None", no_tf.stderr
    assert runtime.run("id", "-un").stdout.strip() == "sorter"


def test_runtime_image_classifies_the_samples_as_the_host_does(runtime):
    """The bundled model in the image gives the host's labels and verdicts for all 12 sample photos."""
    inside = runtime.run("sorter", "classify", "/tmp/samples", "--json")
    assert inside.returncode == 0, inside.stderr
    host = subprocess.run([str(HOST_SORTER), "classify", str(SAMPLES), "--json",
                           "--model", str(REPO / "models" / "fruit-lite1-int8.tflite")],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "SORTER_CONFIG"})
    assert host.returncode == 0, host.stderr

    def by_name(text: str) -> dict[str, dict]:
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return {Path(r["path"]).name: r for r in rows}

    got, want = by_name(inside.stdout), by_name(host.stdout)
    assert len(got) == 12 and set(got) == set(want)
    for name, row in got.items():
        assert "error" not in row, row
        assert (row["label"], row["verdict"]) == (want[name]["label"], want[name]["verdict"]), name
        assert row["confidence"] == pytest.approx(want[name]["confidence"], abs=0.02), name


def test_runtime_image_runs_without_a_mounted_config(runtime):
    """Without /etc/sorter/sorter.toml the image runs on its defaults (SORTER_CONFIG pointed at a missing file)."""
    config = _config("localhost/sorter:runtime-test")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert "SORTER_CONFIG" not in env and env["SORTER_MODEL"] == "/opt/sorter/models/fruit-lite1-int8.tflite"
    shown = runtime.run("sorter", "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["metrics"]["host"] == "0.0.0.0"
    assert config["Healthcheck"]["Test"][-1].startswith("python3 -c")  # kept: built with --format docker
    # a config mounted where the units keep it is read; the image's environment still outranks it
    mounted = runtime.run("sorter", "config", "show",
                          volumes=(f"{REPO / 'deploy' / 'sorter.toml'}:/etc/sorter/sorter.toml:ro",))
    assert mounted.returncode == 0, mounted.stderr
    settings = json.loads(mounted.stdout)
    assert settings["line"] == "line-1" and settings["metrics"] == {"host": "0.0.0.0", "port": 9108}
    assert settings["model"] == "/opt/sorter/models/fruit-lite1-int8.tflite"


def _non_loopback_address() -> str | None:
    """This host's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runtime_image_default_command_sorts_and_its_metrics_answer_beyond_loopback(runtime):
    """The image's CMD sorts what lands in /var/lib/sorter/incoming, and its metrics answer on the network address.

    A published port reaches the container on its network address, not on 127.0.0.1. chroot isolation shares
    the host's network, so the host's own non-loopback address stands for it.
    """
    address = _non_loopback_address()
    assert address, "no non-loopback IPv4 address on this host"
    port = _free_port()
    config = _config("localhost/sorter:runtime-test")
    command = [*config["Entrypoint"], *config["Cmd"]]
    assert command == ["sorter", "watch", "/var/lib/sorter/incoming", "--metrics-port", "9108"]
    runtime.copy(SAMPLES, "/var/lib/sorter/incoming")
    daemon = subprocess.Popen(runtime.argv(*command[:-1], str(port)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    body, error, sorted_jpgs = None, None, []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=2) as response:
                    body = response.read().decode()
                break
            except urllib.error.HTTPError as exc:  # 503 until ready: it answered all the same
                body = exc.read().decode()
                break
            except (urllib.error.URLError, OSError) as exc:
                error = exc
                time.sleep(0.5)
        while time.monotonic() < deadline and daemon.poll() is None and len(sorted_jpgs) < 12:
            found = runtime.run("find", "/var/lib/sorter/sorted", "-name", "*.jpg")
            sorted_jpgs = found.stdout.split()
            time.sleep(0.5)
    finally:
        os.killpg(daemon.pid, 15)
        output = daemon.communicate(timeout=60)[0]
    assert len(sorted_jpgs) == 12, output[-2000:]
    assert {p.split("/")[5] for p in sorted_jpgs} <= {"fresh", "rotten", "uncertain", "unknown"}, sorted_jpgs
    assert body is not None, f"no answer on {address}:{port} ({error}); daemon said:\n{output[-2000:]}"
    assert body.strip().startswith("{"), body


def test_train_image_has_tensorflow_and_the_training_commands():
    """The training image (about 2.3 GB, built once and cached like the runtime one) has TensorFlow and training/."""
    image = build("Containerfile.train", "localhost/sorter:train-test")
    box = Container(image, f"sorter-train-test-{os.getpid()}")
    try:
        version = box.run("sorter", "--version")
        assert version.returncode == 0 and version.stdout.startswith("sorter "), version.stderr
        probe = box.run("python3", "-c", "import tensorflow, keras, training.train, training.export; "
                        "print('tf', tensorflow.__version__)", timeout=300)
        assert probe.returncode == 0 and "tf 2." in probe.stdout, probe.stderr[-2000:]
        helped = box.run("sorter", "train", "--help")
        assert helped.returncode == 0 and "class folders" in helped.stdout, helped.stderr
    finally:
        box.remove()
