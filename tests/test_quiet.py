"""Native banners stay off stderr; every other line, warnings included, still gets there (issue 14 item 24).

Each check runs in a fresh process: the banners print once per process, so only a new one can show them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import COLOR_INT8, REPO


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_classify_prints_no_xnnpack_line(tmp_path, colour_jpeg):
    photo = colour_jpeg(tmp_path / "red.jpg", "red")
    done = python(f"import sys; from sorter.cli import app; sys.argv = ['sorter', 'classify', '--model', "
                  f"{str(COLOR_INT8)!r}, '--json', {str(photo)!r}]; app()")
    assert done.returncode == 0, done.stderr
    assert '"label": "freshred"' in done.stdout
    assert "XNNPACK" not in done.stderr and "INFO:" not in done.stderr


def test_filter_drops_banners_and_keeps_everything_else():
    done = python(
        "import os, sys\n"
        "from sorter.quiet import banners_filtered\n"
        "with banners_filtered():\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "    os.write(2, b'W0000 00:00:1.2 7 thing.cc:3] a real warning\\n')\n"
        "    print('python warning', file=sys.stderr)\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to "
        "STDERR\\n')\n"
        "print('after', file=sys.stderr)\n")
    assert done.returncode == 0
    assert done.stderr.splitlines() == ["W0000 00:00:1.2 7 thing.cc:3] a real warning", "python warning", "after"]


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow (the train extra)")
def test_training_command_prints_its_error_and_no_banners(tmp_path, class_folders):
    """`sorter train` imports TensorFlow (oneDNN and CPU-feature banners, twice) before it checks the options."""
    data = class_folders(tmp_path / "data", ["a", "b"], per_class=2)
    done = python(f"import sys; from sorter.cli import app; sys.argv = ['sorter', 'train', {str(data)!r}, "
                  f"'--optimizer', 'lbfgs', '--runs-dir', {str(tmp_path / 'runs')!r}]; app()")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --optimizer must be one of adam, sgd, rmsprop, nadam, adadelta, not 'lbfgs'"]


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow (the train extra)")
def test_tensorflow_warnings_still_reach_stderr():
    done = python("from training.tf_quiet import import_tensorflow\n"
                  "tf = import_tensorflow()\n"
                  "tf.get_logger().warning('a real tensorflow warning')\n")
    assert done.returncode == 0, done.stderr
    assert "a real tensorflow warning" in done.stderr and "oneDNN" not in done.stderr
