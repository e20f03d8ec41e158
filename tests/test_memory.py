"""The daemons keep pixel buffers in the process: freed buffers are reused, not faulted back in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from sorter import memory
from tests.conftest import REPO

# Decode → batch → drop, as the daemons do, with real JPEG bytes through sorter.imaging.decode;
# prints the minor page faults that 100 batches of 8 cost.
CHURN = """
import resource, sys
import cv2, numpy as np
from sorter import imaging, memory
if sys.argv[1] == "recycle":
    assert memory.recycle_buffers()
imaging.one_image_per_thread()
rng = np.random.default_rng(0)
jpegs = [cv2.imencode(".jpg", rng.integers(0, 255, (224, 180 + 4 * i, 3), dtype=np.uint8))[1].tobytes()
         for i in range(8)]
np.stack([imaging.decode(d, (256, 256)) for d in jpegs])  # first-use faults, before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    batch = np.stack([imaging.decode(d, (256, 256)) for d in jpegs])
    del batch
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
# what would change the allocator under the test's feet
_ALLOCATOR_ENV = ("LD_PRELOAD", *memory._OPERATOR_SETTINGS)
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def faults(mode: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in _ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=REPO, env=clean, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="tunes glibc's malloc, so Linux with glibc only")
def test_recycled_buffers_stop_the_page_faults():
    default = faults("default")
    if default < 100 * 8 * 10:
        pytest.skip(f"this glibc keeps the buffers by itself ({default} faults for 800 decodes)")
    recycled = faults("recycle")
    assert recycled < default / 10, (default, recycled)


def test_an_operators_allocator_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert memory.recycle_buffers() is False


def test_recycling_is_a_no_op_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.recycle_buffers() is False
