"""Real photos that are not produce, from packages on PyPI, to measure the `unknown` verdict on.

An empty belt, a hand or a tool must not come out as "fresh apple 0.93". No photo of a belt installs
from a registry, but scikit-image and scikit-learn ship real photographs (a cat, a cup of coffee,
an astronaut, coins, brick and gravel textures, a rocket, a page of text, microscope slides…) and
scikit-image 200 small grey crops from Labeled Faces in the Wild: 100 faces and 100 crops of the
photos' backgrounds. The background crops are the hardest set and the least like a camera frame
(25×25 grey patches of wall or sky, blown up ten-fold), so each set is reported apart.
Each is decoded by the runtime's own decoder at the model's input size, so the figures are the ones
a camera file of that picture would get.
Synthetic drawings (chessboards, logos, phantoms) are left out: they say little about a camera.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# scikit-image's bundled photographs (skimage/data/*, shipped in the wheel, no download)
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                  "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png",
                  "retina.jpg", "rocket.jpg", "text.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
FACES = "lfw_subset.npy"  # 200 grey 25×25 crops (Labeled Faces in the Wild): 100 faces, then 100 backgrounds


@dataclass
class PhotoSet:
    """One named set of non-produce photos at a model's input size."""

    name: str
    source: str
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    names: list[str]


class PhotosUnavailable(RuntimeError):
    """The package holding a set is not installed; the message says which to install."""


def _package_dir(module: str, sub: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(module, module)
        raise PhotosUnavailable(f"{module} is not installed: pip install {pip} (or '.[train]')")
    return Path(next(iter(spec.submodule_search_locations))) / sub


def _decode_files(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    from sorter.imaging import decode

    return np.stack([decode(p.read_bytes(), size) for p in paths])


def _crops(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The crops are grey arrays: written as PNG and read back through the runtime's decoder."""
    import cv2

    from sorter.imaging import decode

    crops = np.load(path)
    out = []
    for crop in crops:
        grey = crop if crop.dtype == np.uint8 else np.clip(crop * 255, 0, 255).astype(np.uint8)
        ok, png = cv2.imencode(".png", grey)
        if not ok:
            raise RuntimeError("OpenCV could not encode a face crop")
        out.append(decode(png.tobytes(), size))
    return np.stack(out)


def photo_sets(size: tuple[int, int]) -> list[PhotoSet]:
    """Every non-produce set, decoded at `size` (height, width)."""
    skimage_dir, sklearn_dir = _package_dir("skimage", "data"), _package_dir("sklearn", "datasets/images")
    photos = [skimage_dir / n for n in SKIMAGE_PHOTOS]
    samples = [sklearn_dir / n for n in SKLEARN_PHOTOS]
    crops = _crops(skimage_dir / FACES, size)
    return [
        PhotoSet("photos", "scikit-image data + scikit-learn sample images",
                 _decode_files(photos + samples, size), [p.name for p in photos + samples]),
        PhotoSet("faces", "scikit-image lfw_subset, faces (100 grey 25×25 crops)", crops[:100],
                 [f"face-{i:03d}" for i in range(100)]),
        PhotoSet("backgrounds", "scikit-image lfw_subset, non-faces (100 grey 25×25 background crops)",
                 crops[100:], [f"background-{i:03d}" for i in range(100)]),
    ]
