"""The daemons keep pixel buffers in the process: freed buffers are reused, not faulted back in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

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


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="tunes glibc's malloc, so Linux with glibc only")
def test_recycled_buffers_stop_the_page_faults():
    default, recycled = faults("default"), faults("recycle")
    assert default > 100 * 8 * 10  # glibc's defaults: each decode's buffers go back to the kernel
    assert recycled < default / 10, (default, recycled)


def test_recycling_is_a_no_op_elsewhere(monkeypatch):
    from sorter import memory

    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.recycle_buffers() is False
