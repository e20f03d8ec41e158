"""Load a model bundle, pick the TFLite interpreter, and score batches of images."""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sorter import quiet, threads
from sorter.card import ModelCard, card_path, load_card

log = logging.getLogger("sorter.model")
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "fruit-lite1-int8.tflite"
_BACKENDS = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow.lite", "tensorflow.lite"),
)


class ModelError(RuntimeError):
    """A bundle that cannot be used: missing, unreadable, or disagreeing with its card."""


def interpreter_backend() -> tuple[str, Any]:
    """The first interpreter that imports; TensorFlow only as a last resort (it is heavy)."""
    for name, module in _BACKENDS:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        return name, mod.Interpreter
    raise ModelError("no TFLite interpreter: pip install ai-edge-litert")


def default_threads() -> int:
    """LiteRT defaults to one thread; use every core we are allowed to run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def inference_layout(interpreters: int | None, threads: int | None, cores: int | None = None) -> tuple[int, int]:
    """(interpreters, threads each) for a throughput daemon. Whole batches side by side beat one
    batch split across threads: no per-op barrier, so other work (decode, moves) steals only its
    own share of a core (here 2×1 runs 385 images/s where 1×2 runs 345). Unset values fill the cores."""
    cores = cores or default_threads()
    if interpreters is None:
        interpreters = max(1, cores // (threads or 1))
    return interpreters, threads or max(1, cores // interpreters)


def resolve_model(path: Path | str | None) -> Path:
    model = Path(path) if path else Path(os.environ.get("SORTER_MODEL", DEFAULT_MODEL))
    if model.is_dir():
        found = sorted(model.glob("*.tflite"))
        if len(found) != 1:
            raise ModelError(f"{model} holds {len(found)} .tflite files; name one")
        model = found[0]
    return model


@dataclass
class Prediction:
    label: str
    confidence: float
    scores: dict[str, float]
    ood_score: float | None = None  # the card's OOD score (higher = more familiar); None: probability output


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from logits, with the card's temperature (calibration) applied first."""
    scaled = logits / temperature
    out = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return out / out.sum(axis=-1, keepdims=True)


def energy(logits: np.ndarray) -> np.ndarray:
    """logsumexp of the raw logits (temperature 1), per row: the card's OOD score. In float64, and
    from the logits before any temperature, so the threshold chosen at export means the same here."""
    z = logits.astype(np.float64)
    top = z.max(axis=-1)
    return top + np.log(np.exp(z - top[..., None]).sum(axis=-1))


class Classifier:
    """One TFLite interpreter with its card; thread-safe through a lock.

    The model file is read into memory once, hashed, and every interpreter (replicas too) is built
    from those bytes. A running daemon keeps the model it loaded and checked: the interpreter would
    otherwise map the file, so overwriting it in place killed the daemon with SIGBUS or, with other
    bytes of the same size, gave verdicts from a model that no card describes."""

    def __init__(self, path: Path | str | None = None, num_threads: int | None = None, max_batch: int = 8):
        self.path = resolve_model(path)
        if not self.path.exists():
            raise ModelError(f"model {self.path} not found (set --model or SORTER_MODEL)")
        try:
            self.card: ModelCard = load_card(self.path)
        except FileNotFoundError as exc:
            raise ModelError(str(exc)) from exc
        except ValueError as exc:
            raise ModelError(f"model card {card_path(self.path)} is invalid: {exc}") from exc
        try:
            self._content = self.path.read_bytes()
        except OSError as exc:
            raise ModelError(f"model {self.path} cannot be read: {exc.strerror}") from exc
        self.sha256 = hashlib.sha256(self._content).hexdigest()
        self.num_threads = num_threads or default_threads()
        self.max_batch = max_batch
        self._open()
        self._check_card()

    def _open(self) -> None:
        self.backend, interpreter_cls = interpreter_backend()
        try:
            self._interp = interpreter_cls(model_content=self._content, num_threads=self.num_threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path} is not a loadable TFLite model: {exc}") from exc
        self._lock = threading.Lock()
        self._inp = self._interp.get_input_details()[0]
        self._out, self._ood_out = self._output_tensors()
        self.batch_capable = True
        self._batch = 0

    def _output_tensors(self) -> tuple[dict, dict | None]:
        """The class output, and the OOD score output (one column) of a card whose `ood.score` is
        `distance`. TFLite does not keep Keras' output order, so they are told apart by width."""
        details = self._interp.get_output_details()
        if not self.feature_distance or len(details) < 2:
            return details[0], None
        scores = [d for d in details if int(d["shape"][-1]) == 1]
        classes = [d for d in details if int(d["shape"][-1]) != 1]
        return (classes[0], scores[0]) if scores and classes else (details[0], None)

    @property
    def feature_distance(self) -> bool:
        """The card's OOD score is the graph's second output (distance in feature space), not energy."""
        return self.card.ood is not None and self.card.ood.score == "distance"

    def replica(self) -> Classifier:
        """Another interpreter on the same checked bundle, for a second inference worker."""
        twin = copy.copy(self)
        twin._open()
        return twin

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    @property
    def input_size(self) -> tuple[int, int]:
        return self.card.input.height, self.card.input.width

    @property
    def model_id(self) -> str:
        return self.card.name

    def _check_card(self) -> None:
        """Refuse a bundle whose card and tensors disagree: that would mislabel every item."""
        shape = list(self._inp["shape"])
        want = [self.card.input.height, self.card.input.width, self.card.input.channels]
        problems = []
        if shape[1:] != want:
            problems.append(f"input shape {shape[1:]} vs card {want}")
        dtype = np.dtype(self._inp["dtype"]).name
        if dtype != self.card.input.dtype:
            problems.append(f"input dtype {dtype} vs card {self.card.input.dtype}")
        n_out = int(self._out["shape"][-1])
        if n_out != len(self.card.labels):
            problems.append(f"{n_out} outputs vs {len(self.card.labels)} labels")
        if self.feature_distance and self._ood_out is None:
            problems.append("the card's ood score is 'distance' but the model has no one-column score output")
        if self.card.model_sha256 and self.card.model_sha256 != self.sha256:
            problems.append("file hash differs from the card's model_sha256")
        if problems:
            raise ModelError(f"{self.path.name}: card and model disagree: " + "; ".join(problems))

    def _resize(self, n: int) -> None:
        if n == self._batch:
            return
        try:
            self._interp.resize_tensor_input(self._inp["index"], [n, *self._inp["shape"][1:]], strict=False)
            quiet.allocate_tensors(self._interp)  # without LiteRT's XNNPACK banner
        except (ValueError, RuntimeError):
            if n == 1:
                raise
            self.batch_capable = False
            self._batch = 0  # the input may already hold the refused size (resize passed, allocation failed)
            self._resize(1)
            return
        self._inp = self._interp.get_input_details()[0]
        self._out, self._ood_out = self._output_tensors()
        self._batch = n

    def _quantize(self, batch: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._inp["dtype"])
        if dtype == np.uint8:
            return batch.astype(np.uint8, copy=False)
        scale, zero = self._inp["quantization"]
        if dtype == np.int8 and scale:
            return np.clip(np.round(batch / scale + zero), -128, 127).astype(np.int8)
        return batch.astype(dtype)

    def _dequantize(self, raw: np.ndarray, tensor: dict) -> np.ndarray:
        """An output tensor as floats (each output has its own int8 scale and zero point)."""
        scale, zero = tensor["quantization"]
        return (raw.astype(np.float32) - zero) * scale if scale else raw.astype(np.float32)

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 1 or self.batch_capable:  # a refused size turns batch_capable off, for good
            self._resize(len(batch))
        if len(batch) > 1 and not self.batch_capable:  # the model refused a batch size: one by one
            return np.concatenate([self._invoke(image[None]) for image in batch], axis=0)
        self._interp.set_tensor(self._inp["index"], self._quantize(batch))
        self._interp.invoke()
        out = self._dequantize(self._interp.get_tensor(self._out["index"]), self._out)
        if self._ood_out is None:
            return out
        score = self._dequantize(self._interp.get_tensor(self._ood_out["index"]), self._ood_out)
        return np.concatenate([out, score.reshape(len(out), 1)], axis=1)

    def outputs(self, images: np.ndarray) -> np.ndarray:
        """The model's dequantized output for an (N, H, W, 3) uint8 array (logits or probabilities, as
        the card's `output` says; a `distance` card's OOD score is one more, last column); splits into
        allowed batches. `logits`, `probabilities` and `ood_scores` read it."""
        if images.ndim == 3:
            images = images[None]
        with self._lock:
            parts = [self._invoke(images[start : start + self.max_batch])
                     for start in range(0, len(images), self.max_batch)]
        return np.concatenate(parts, axis=0)

    def logits(self, outputs: np.ndarray) -> np.ndarray:
        """The class columns of `outputs`: logits, or probabilities for a probabilities card."""
        return outputs[:, : len(self.labels)]

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities: softmax(logits / card.temperature) for a logits model."""
        classes = self.logits(outputs)
        return softmax(classes, self.card.temperature) if self.card.output == "logits" else classes

    def ood_scores(self, outputs: np.ndarray) -> np.ndarray | None:
        """The OOD score per image (higher = more familiar), which the card's `ood.threshold` is on:
        the graph's distance output for a `distance` card, else the energy of the logits; None for a
        probabilities model."""
        if self._ood_out is not None:
            return outputs[:, len(self.labels)].astype(np.float64)
        return energy(self.logits(outputs)) if self.card.output == "logits" else None

    def scores(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for an (N, H, W, 3) uint8 array; splits into allowed batches."""
        return self.probabilities(self.outputs(images))

    def warm_up(self, batch: int = 1) -> None:
        """Allocate the tensors at `batch` and run one blank invoke: the first invoke after an
        allocation sets up the delegate (~15 ms more here, 12 ms more to allocate), which a daemon
        pays before it says ready rather than on its first item."""
        self.scores(np.zeros((min(batch, self.max_batch), *self.input_size, 3), np.uint8))

    def predict(self, images: np.ndarray) -> list[Prediction]:
        outputs = self.outputs(images)
        probs, ood = self.probabilities(outputs), self.ood_scores(outputs)
        preds = []
        for i, row in enumerate(probs):
            best = int(np.argmax(row))
            scores = {lbl: round(float(p), 6) for lbl, p in zip(self.labels, row, strict=True)}
            score = round(float(ood[i]), 6) if ood is not None else None
            preds.append(Prediction(self.labels[best], float(row[best]), scores, score))
        return preds


def warm_up_all(classifiers: list[Classifier], batch: int) -> None:
    """Warm each interpreter, side by side, before a daemon says ready. A failure is logged, not
    raised: the daemon's batches record what a broken model does, item by item, as before."""

    def warm(index: int, clf: Classifier) -> None:
        try:
            clf.warm_up(batch)
        except Exception as exc:
            log.warning("interpreter %d: warm-up failed (%s); the first items will show why", index, exc)

    for worker in [threads.start(warm, f"warm-{i}", i, clf) for i, clf in enumerate(classifiers)]:
        worker.join()
