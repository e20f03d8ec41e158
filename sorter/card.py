"""The model card: the contract between `training/` and the runtime.

A bundle is `NAME.tflite` with `NAME.card.json` beside it. The card says what the
tensors mean (labels, which labels are rotten, input size and dtype) and how well
the export scored, so the runtime never needs backbone-specific code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import unicodedata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CARD_SUFFIX = ".card.json"
CARD_FORMAT = "sorter-card/1"
Quantization = Literal["float32", "float16", "dynamic", "int8"]
NAME_MAX = 255  # bytes in one file-name component on the file systems we run on
SHA256 = r"^[0-9a-f]{64}$"


class CardError(ValueError):
    """A card that must not be used; the message is one line that says which field and why."""


def unsafe_name(text: str) -> str | None:
    """Why `text` cannot be one folder or file name inside the bundle or OUT (None when it can).
    Labels become `OUT/<verdict>/<label>`: a separator, `..` or an absolute path would file items
    outside OUT, a control character would forge log lines, a leading dot hides the folder."""
    if not text or not text.strip():
        return "is empty"
    if "/" in text or "\\" in text:
        return "holds a path separator"
    if text in (".", ".."):
        return "is a relative path step"
    if text.startswith("."):
        return "starts with a dot"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        return "holds a control character"
    if len(text.encode("utf-8")) > NAME_MAX:
        return f"is longer than {NAME_MAX} bytes"
    return None


def folder_key(label: str) -> str:
    """Labels that land in the same folder on a case-insensitive or normalising file system."""
    return unicodedata.normalize("NFC", label).casefold()


class InputSpec(BaseModel):
    """Raw RGB pixels in 0..255; any normalisation lives inside the model graph."""

    model_config = ConfigDict(extra="forbid")
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: int = 3
    dtype: Literal["uint8", "int8", "float32"] = "uint8"


class ExportScore(BaseModel):
    """How one export scored on the held-out test split."""

    model_config = ConfigDict(extra="forbid")
    accuracy: float | None = None
    agreement_with_float: float | None = None
    n_test: int | None = None
    macro_f1: float | None = None
    per_class: dict[str, dict[str, float]] = Field(default_factory=dict)


class ExportRow(BaseModel):
    """One format's line of the export table every sibling card carries (training/export.py)."""

    model_config = ConfigDict(extra="forbid")
    format: str
    path: str  # the bundle's file name, beside this card
    size_bytes: int | None = None
    input_dtype: str | None = None
    accuracy: float | None = None
    agreement_with_float: float | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    predicted_classes: int | None = None
    n_test: int | None = None
    lost: int | None = None  # test photos the float model gets right and this export wrong
    gained: int | None = None  # the reverse
    problem: str | None = None  # why the accuracy gate refused it
    note: str | None = None  # passed the gate, but worth reading (a drop within chance)


class Gate(BaseModel):
    """The export's accuracy gate: `model install` refuses a failed one unless accepted (and says so here)."""

    model_config = ConfigDict(extra="forbid")
    passed: bool | None = None
    problem: str | None = None
    accepted: str | None = None  # by whom and when: `sorter model install --accept-failed-gate`


class Latency(BaseModel):
    """The bundle timed through the runtime on the machine that exported it."""

    model_config = ConfigDict(extra="forbid")
    median: float
    p90: float | None = None
    batch: int = 1
    threads: int | None = None
    runs: int | None = None
    backend: str | None = None
    machine: str | None = None
    processor: str | None = None


class Converter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str  # the converter entry point
    options: str  # its settings, as a line


class Calibration(BaseModel):
    """The photos an int8 export's ranges were calibrated on."""

    model_config = ConfigDict(extra="forbid")
    images: int = Field(ge=0)
    split: str
    sampling: str | None = None


class SamplePrediction(BaseModel):
    """One image the export scored through the runtime, kept in the card so `sorter doctor` can
    check that this bundle, here, still gives the same answer (decoder, interpreter and all)."""

    model_config = ConfigDict(extra="forbid")
    jpeg: str = Field(min_length=1, description="the image, base64 JPEG at the model's input size")
    label: str
    scores: list[float] = Field(min_length=2)
    true_label: str | None = None

    def image_bytes(self) -> bytes:
        return base64.b64decode(self.jpeg, validate=True)


class DecisionRule(BaseModel):
    """P(rotten) → verdict, chosen on validation photos for a stated goal (training/decide.py).

    P(rotten) is the summed probability of the rotten labels: `rotten` when it is at least
    `rotten_at`, `fresh` when it is at most `fresh_at`, `uncertain` between. The label is the top
    class on the chosen side."""

    model_config = ConfigDict(extra="forbid")
    rotten_at: float = Field(ge=0, le=1)
    fresh_at: float = Field(ge=0, le=1)
    goal: str | None = None  # e.g. "rotten recall >= 0.98 at the lowest uncertain rate"
    chosen_on: str | None = None  # which photos the thresholds were chosen on

    @model_validator(mode="after")
    def _ordered(self) -> DecisionRule:
        if self.fresh_at > self.rotten_at:
            raise ValueError(f"fresh_at {self.fresh_at} is above rotten_at {self.rotten_at}")
        return self


class OodRule(BaseModel):
    """When an image is not produce the model knows: `unknown` when the score is below `threshold`.

    score "energy": logsumexp of the logits (the negative free energy; higher = more familiar),
    computed by the runtime from the logits the model outputs (card `output: logits`).
    score "distance": minus the Mahalanobis distance from the image's features (the layer before the
    classifier) to the nearest training class mean, a second one-column output of the graph (higher
    = more familiar); it tells a face or a cup from produce far better than energy does."""

    model_config = ConfigDict(extra="forbid")
    score: Literal["energy", "distance"] = "energy"
    threshold: float
    in_dist_pass: float | None = Field(default=None, ge=0, le=1)  # share of validation photos above it
    chosen_on: str | None = None
    figures: dict[str, Any] = Field(default_factory=dict)  # AUROC, share flagged, on which photos


class FloatWeights(BaseModel):
    """The float Keras model an int8 bundle was converted from, beside it: what `sorter retrain`
    fine-tunes from (the int8 graph cannot be trained). The runtime never reads the file."""

    model_config = ConfigDict(extra="forbid")
    file: str  # a plain name inside the bundle folder
    sha256: str = Field(pattern=SHA256)

    @field_validator("file")
    @classmethod
    def _beside_model(cls, file: str) -> str:
        if why := unsafe_name(file):
            raise ValueError(f"float_weights file {file!r} {why}; it must name a file beside the model")
        return file


class ParentModel(BaseModel):
    """The model a retrained bundle was fine-tuned from (`sorter retrain`)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    sha256: str = Field(pattern=SHA256)


class ControlFigures(BaseModel):
    """How the auditors answered the control photos (photos of known label, `audit sample --control-data`)
    of the samples a retrain's audits were drawn in: a low score means the audits cannot be trusted."""

    model_config = ConfigDict(extra="forbid")
    audited: int = Field(default=0, ge=0)  # audited items the check looked at
    covered: int = Field(default=0, ge=0)  # of them, drawn in a sample whose controls were answered
    samples: int = Field(default=0, ge=0)  # those samples
    placed: int = Field(default=0, ge=0)  # control photos placed in them
    answered: int = Field(default=0, ge=0)  # answers given on them (one per photo and auditor)
    right: int = Field(default=0, ge=0)  # answers that were the photo's known label
    accuracy: float | None = None  # right / answered; None without answers
    min_accuracy: float | None = None  # below it the retrain refused the audits


class FieldData(BaseModel):
    """The line's own audited photos a retrained bundle learnt from and was tested on."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str
    counts: dict[str, int] = Field(default_factory=dict)  # photos per true label, the whole field set
    train: int = Field(default=0, ge=0)  # photos in the training share
    val: int = Field(default=0, ge=0)  # photos the card's rule was fitted on
    test: int = Field(default=0, ge=0)  # photos held back as the field test
    pseudo: int = Field(default=0, ge=0)  # unaudited confident items taken as pseudo-labels
    weight: float | None = None  # how many times each field training photo was shown per epoch
    controls: ControlFigures | None = None  # the audits' control photos (None: a retrain from before them)


class ModelCard(BaseModel):
    """The model's contract with the runtime. Every field is declared and an unknown one is refused: a
    card from a newer exporter whose rule this sorter would silently ignore would sort otherwise than its
    figures say. Figure tables (evaluation, temperature_fit, comparison, baselines) are free-form per
    test set; what the runtime acts on is typed."""

    model_config = ConfigDict(extra="forbid")
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
    sample: str | None = None  # an image file beside the model (a plain name inside the bundle)
    samples: list[SamplePrediction] = Field(default_factory=list)
    # how the export was made and how it and its siblings did (training/export.py writes them)
    converter: Converter | None = None
    float_accuracy: float | None = None
    baselines: dict[str, Any] | None = None
    source_run: str | None = None
    calibration: Calibration | None = None
    latency_ms: Latency | None = None
    exports: list[ExportRow] | None = None
    gate: Gate | None = None  # `model install` and `doctor` read it
    # how the runtime turns logits into a verdict (training/calibrate.py, training/decide.py write them)
    temperature: float = Field(default=1.0, gt=0)  # probabilities = softmax(logits / temperature)
    decision: DecisionRule | None = None
    ood: OodRule | None = None
    temperature_fit: dict[str, Any] | None = None  # on which photos T was fitted; NLL and ECE before/after
    evaluation: dict[str, Any] | None = None  # figures per test set: {"in_distribution": {...}, "other_sources": {...}}
    # what a retrained bundle came from (training/retrain.py writes them; training/export.py float_weights)
    float_weights: FloatWeights | None = None
    parent: ParentModel | None = None
    field_data: FieldData | None = None
    comparison: dict[str, Any] | None = None  # champion vs challenger on the field and base tests, the decision

    @field_validator("labels")
    @classmethod
    def _safe_labels(cls, labels: list[str]) -> list[str]:
        seen: dict[str, str] = {}
        for label in labels:
            if why := unsafe_name(label):
                raise ValueError(f"label {label!r} {why}; labels become folder names under OUT")
            if (twin := seen.get(folder_key(label))) is not None:
                raise ValueError(f"labels {twin!r} and {label!r} would share one folder")
            seen[folder_key(label)] = label
        return labels

    @field_validator("sample")
    @classmethod
    def _sample_in_bundle(cls, sample: str | None) -> str | None:
        if sample is not None and (why := unsafe_name(sample)):
            raise ValueError(f"sample {sample!r} {why}; it must name a file beside the model")
        return sample

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
            raise ValueError(f"name {name!r} holds a control character")
        return name

    @model_validator(mode="after")
    def _logits_for_ood(self) -> ModelCard:
        if self.ood is not None and self.output != "logits":
            raise ValueError("ood needs output: logits (energy is computed from the logits)")
        if self.temperature != 1.0 and self.output != "logits":
            raise ValueError("temperature needs output: logits")
        return self

    @model_validator(mode="after")
    def _samples_match(self) -> ModelCard:
        for i, sample in enumerate(self.samples):
            if sample.label not in self.labels or len(sample.scores) != len(self.labels):
                raise ValueError(f"samples[{i}] does not match the card's {len(self.labels)} labels")
        return self

    def is_rotten(self, label: str) -> bool:
        return label in self.rotten_labels

    def _own_export(self) -> ExportRow | None:
        """This bundle's row of the `exports` table (cards from before `gate` was recorded)."""
        return next((row for row in self.exports or [] if row.path == f"{self.name}.tflite"), None)

    def gate_recorded(self) -> bool:
        return self.gate is not None or self._own_export() is not None

    def gate_problem(self) -> str | None:
        """Why the export's accuracy gate refused this bundle (kept with --allow-drop), or None."""
        if self.gate is not None:
            if self.gate.passed is False or self.gate.problem:
                return self.gate.problem or "the card records a failed gate"
            return None
        own = self._own_export()
        return own.problem if own is not None and own.problem else None

    def gate_accepted(self) -> str | None:
        """Who accepted a failed gate, when: written by `sorter model install --accept-failed-gate`."""
        return self.gate.accepted if self.gate is not None and self.gate.accepted else None


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


def one_line(exc: ValidationError) -> str:
    """Pydantic's multi-line report as `field: why; field: why`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "card"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def load_card(model_path: Path) -> ModelCard:
    """The validated card beside `model_path`; CardError (one line) when it is malformed or unsafe."""
    path = card_path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model card {path} not found beside {model_path}")
    try:
        return ModelCard.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise CardError(f"{path} is not JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CardError(f"{path} is not UTF-8 text: {exc}") from None
    except ValidationError as exc:
        raise CardError(one_line(exc)) from None


def write_card(model_path: Path, card: ModelCard) -> Path:
    path = card_path(model_path)
    path.write_text(json.dumps(card.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
    return path
