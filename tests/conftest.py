"""Shared fixtures: paths to the real test models and to the shared fruit photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
FRUIT_DEV = REPO.parent / "shared" / "data" / "fruit_dev"
COLOR_INT8 = DATA / "color-int8.tflite"
COLOR_FLOAT = DATA / "color-float32.tflite"
COLOURS_BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "grey": (128, 128, 128)}


def write_colour_jpeg(path: Path, colour: str, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """A solid-colour JPEG with a little seeded noise, so different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    img = np.empty((*size, 3), np.uint8)
    img[:] = COLOURS_BGR[colour]
    noise = rng.integers(-6, 7, img.shape)
    img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def colour_jpeg():
    return write_colour_jpeg


@pytest.fixture
def color_model() -> Path:
    return COLOR_INT8


@pytest.fixture
def fruit_dev() -> Path:
    if not FRUIT_DEV.is_dir():
        pytest.skip(f"needs the shared fruit photos at {FRUIT_DEV} (absent on this machine)")
    return FRUIT_DEV
