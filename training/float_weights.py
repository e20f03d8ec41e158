"""The float Keras model beside an int8 bundle: written by `sorter export`, checked by `sorter retrain`.

An int8 TFLite graph cannot be fine-tuned, so the model it was converted from travels with it as
`NAME.float.keras` (the full model, custom layers and in-graph preprocessing included, which
`training.evaluate.load_keras` reloads; a weights-only file would need the architecture rebuilt from a
config that may have changed). The card names it with its sha256 (`float_weights`), and retraining
refuses a file whose bytes are not the ones the card recorded: fine-tuning another model's weights
would silently make a challenger whose parent is not the model in use. The runtime never reads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sorter.card import FloatWeights, ModelCard, sha256_file

SUFFIX = ".float.keras"


class WeightsMissing(RuntimeError):
    """The bundle's float weights are absent, unnamed by its card, or not the bytes it names."""


def write(model_keras: Path, out: Path, name: str) -> FloatWeights:
    """Copy the float model beside the bundles as NAME.float.keras; its name and hash for the cards."""
    target = Path(out) / f"{name}{SUFFIX}"
    if Path(model_keras).resolve() != target.resolve():
        shutil.copyfile(model_keras, target)
    return FloatWeights(file=target.name, sha256=sha256_file(target))


def locate(model_path: Path, card: ModelCard) -> Path:
    """The verified float model of the bundle at `model_path`; WeightsMissing (one line) otherwise."""
    ref = card.float_weights
    if ref is None:
        raise WeightsMissing(f"{model_path}: its card names no float weights (float_weights); re-export the "
                             f"model's run with this version of `sorter export` to retrain it")
    path = Path(model_path).parent / ref.file
    if not path.is_file():
        raise WeightsMissing(f"{model_path}: its float weights {path} are missing")
    digest = sha256_file(path)
    if digest != ref.sha256:
        raise WeightsMissing(f"{path} has sha256 {digest[:12]}…, the card of {Path(model_path).name} records "
                             f"{ref.sha256[:12]}…: not the weights this bundle was made from")
    return path
