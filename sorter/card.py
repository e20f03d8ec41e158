"""The model card: the contract between `training/` and the runtime.

A bundle is `NAME.tflite` with `NAME.card.json` beside it. The card says what the
tensors mean (labels, which labels are rotten, input size and dtype) and how well
the export scored, so the runtime never needs backbone-specific code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CARD_SUFFIX = ".card.json"
CARD_FORMAT = "sorter-card/1"
Quantization = Literal["float32", "float16", "dynamic", "int8"]


class InputSpec(BaseModel):
    """Raw RGB pixels in 0..255; any normalisation lives inside the model graph."""

    model_config = ConfigDict(extra="forbid")
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: int = 3
    dtype: Literal["uint8", "int8", "float32"] = "uint8"


class ExportScore(BaseModel):
    """How one export scored on the held-out test split."""

    model_config = ConfigDict(extra="allow")
    accuracy: float | None = None
    agreement_with_float: float | None = None
    n_test: int | None = None
    per_class: dict[str, dict[str, float]] = Field(default_factory=dict)


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: str = CARD_FORMAT
    name: str
    labels: list[str] = Field(min_length=2)
    rotten_labels: list[str] = Field(default_factory=list)
    input: InputSpec
    quantization: Quantization
    output: Literal["probabilities", "logits"] = "probabilities"
    backbone: str = "unknown"
    model_sha256: str | None = None
    file_size_bytes: int | None = None
    score: ExportScore = Field(default_factory=ExportScore)
    created: str | None = None
    command: str | None = None
    dataset_sha256: str | None = None

    def is_rotten(self, label: str) -> bool:
        return label in self.rotten_labels


def card_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.removesuffix(".tflite") + CARD_SUFFIX)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def guess_rotten(labels: list[str]) -> list[str]:
    """Labels that name spoilage; the training side writes these into the card."""
    markers = ("rotten", "spoiled", "bad", "defect", "mould", "mold")
    return [lbl for lbl in labels if any(m in lbl.lower() for m in markers)]


def load_card(model_path: Path) -> ModelCard:
    path = card_path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model card {path} not found beside {model_path}")
    return ModelCard.model_validate(json.loads(path.read_text()))


def write_card(model_path: Path, card: ModelCard) -> Path:
    path = card_path(model_path)
    path.write_text(json.dumps(card.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
    return path
