"""Import TensorFlow without its start-up banners, keeping its warnings.

Every training command used to open with the oneDNN and CPU-feature INFO lines, twice (two of
TensorFlow's shared libraries run the check as they load). They are written from C++ while the
libraries load, before TF_CPP_MIN_LOG_LEVEL is read, so the import runs under
`sorter.quiet.banners_filtered` (every other line is written back). TF_CPP_MIN_LOG_LEVEL=1 then hides
later INFO lines and nothing else; a value the user set wins.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow():
    """The tensorflow module, imported once without banners."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" not in sys.modules:
        from sorter.quiet import banners_filtered

        with banners_filtered():
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]
