"""Export a Keras classifier to TFLite variants, score each through the runtime, write model cards.

Every export is decoded, scored and timed exactly as `sorter` will run it (`sorter.model.Classifier`),
and gated: an export that loses more than `max_drop` accuracy points against the float Keras model,
and loses them beyond chance (an exact one-sided McNemar test on the test images the two disagree on,
so one photo of 60 is not a refusal), or that predicts one class for everything, is refused unless the
user allows it. The float model itself is copied beside the bundles (`NAME.float.keras`, named with its
sha256 in every card's `float_weights`), so `sorter retrain` can fine-tune the model a bundle came from.
"""

from __future__ import annotations

import datetime
import functools
import logging
import platform
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.markup import escape

from sorter.card import (
    Calibration,
    Converter,
    ExportRow,
    ExportScore,
    FloatWeights,
    Gate,
    InputSpec,
    Latency,
    ModelCard,
    OodRule,
    card_path,
    sha256_file,
    write_card,
)
from training import card_rules
from training.data import DataSplits
from training.decide import Goal
from training.evaluate import (
    RunInfo,
    keras_input_size,
    keras_scores,
    load_images,
    load_keras,
    read_run,
    resolve_splits,
    split_images,
)
from training.metrics import agreement, compute_metrics, drop_p_value

log = logging.getLogger(__name__)
MIN_CALIBRATION = 300
GATE_ALPHA = 0.05  # a drop past --max-drop is refused when chance explains it less than 1 time in 20


@dataclass(frozen=True)
class ExportFormat:
    """One row of the formats table: converter options and what the export takes as input."""

    name: str
    description: str
    input_dtype: str
    bytes_per_weight: float
    calibrated: bool = False
    options: str = ""


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("float32", "full precision, the reference", "float32", 4, options="none"),
    ExportFormat("float16", "float16 weights, float32 compute", "float32", 2,
                 options="optimizations=DEFAULT, supported_types=[float16]"),
    ExportFormat("dynamic", "int8 weights, float activations", "float32", 1,
                 options="optimizations=DEFAULT"),
    ExportFormat("int8", "full integer, raw uint8 pixels in", "uint8", 1, calibrated=True,
                 options="optimizations=DEFAULT, representative_dataset, TFLITE_BUILTINS_INT8, "
                         "inference_input_type=uint8"),
)}


class ExportError(RuntimeError):
    """An export that must not ship: empty, malformed, or failing the accuracy gate."""


class GateRefused(ExportError):
    """Exports refused by the gate; `results` holds every format's figures, for the table."""

    def __init__(self, message: str, results: list[ExportResult]):
        super().__init__(message)
        self.results = results


@dataclass
class ExportResult:
    format: str
    path: Path
    size_bytes: int
    input_dtype: str
    accuracy: float
    agreement_with_float: float
    latency_ms: float
    latency_p90_ms: float
    predicted_classes: int
    n_test: int = 0
    lost: int = 0  # test images the float model gets right and this export gets wrong
    gained: int = 0  # the reverse
    problem: str | None = None
    note: str | None = None  # passed the gate, but worth reading (a drop within chance)
    card: ModelCard | None = field(default=None, repr=False)

    def row(self) -> dict:
        out = asdict(self)
        out.pop("card")
        out["path"] = self.path.name
        return out


def parse_formats(text: str) -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    return names


# --- calibration -------------------------------------------------------------------------------

def stratified_sample(files: list[tuple[Path, int]], n: int, seed: int = 0) -> list[Path]:
    """Round-robin over classes (shuffled within each) so every class shapes the int8 ranges."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Path]] = {}
    for path, idx in files:
        by_class.setdefault(idx, []).append(path)
    queues = [list(rng.permutation(np.array(v, dtype=object))) for _, v in sorted(by_class.items())]
    picked: list[Path] = []
    while len(picked) < n and any(queues):
        picked += [q.pop() for q in queues if q][: n - len(picked)]
    return picked


def calibration_images(splits: DataSplits, size: tuple[int, int], n: int, with_val: bool = False) -> np.ndarray:
    """Real training images decoded like the runtime does; one pixel pair pins the input range
    to exactly 0..255 so the uint8 input comes out with scale 1 and zero point 0.

    `with_val` adds every validation photo: the feature-distance output is fitted on the training
    photos, which therefore lie closer to their class means than any other photo will; ranges
    taken from them alone clip the distances of new photos, and int8 then scores most of them alike."""
    files = stratified_sample(splits.train, n) + ([p for p, _ in splits.val] if with_val else [])
    images, _ = load_images(files, size)
    if not len(images):
        raise ExportError(f"no decodable training images under {splits.root} to calibrate int8")
    log.info("int8 calibration on %d images (%s)", len(images),
             "training and validation" if with_val else "training")
    if len(images) < MIN_CALIBRATION:
        log.warning("only %d calibration images (< %d): int8 ranges may be poor", len(images), MIN_CALIBRATION)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images


# --- conversion --------------------------------------------------------------------------------

def convert(model, fmt: ExportFormat, calibration: np.ndarray | None = None) -> bytes:
    """TFLiteConverter.from_keras_model (from_concrete_functions yields an empty model on Keras 3)."""
    import keras
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if fmt.name != "float32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt.name == "float16":
        conv.target_spec.supported_types = [tf.float16]
    if fmt.calibrated:
        if calibration is None:
            raise ExportError(f"{fmt.name} needs calibration images")

        def representative() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None].astype(np.float32)]

        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
    return _quiet_convert(conv, keras)


# What the converter writes to fd 2 on every conversion, with nothing for the user to act on.
CONVERTER_CHATTER = tuple(re.compile(p) for p in (
    r"W\d{4} [\d:.]+ +\d+ tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored (output_format|drop_control_dependency)\.$",
    r"W\d{4} [\d:.]+ +\d+ flatbuffer_export\.cc:\d+\] Skipping runtime version metadata in the model\.",
    r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+$",
))


def _quiet_convert(conv, keras) -> bytes:
    """The converter saves the Keras model first, and Keras prints the saved endpoints (hundreds of
    TensorSpec lines for a ResNet) unless interactive logging is off (then they go to absl's INFO log);
    TensorFlow logs "Assets written to" at INFO, and the converter's C++ prints CONVERTER_CHATTER.
    Warnings and errors still pass."""
    import logging as stdlib_logging

    from sorter.quiet import banners_filtered

    was_on = keras.config.is_interactive_logging_enabled()
    tf_log = stdlib_logging.getLogger("tensorflow")
    level = tf_log.level
    keras.config.disable_interactive_logging()
    tf_log.setLevel(max(level, stdlib_logging.WARNING))
    try:
        with banners_filtered(CONVERTER_CHATTER), warnings.catch_warnings():
            # int8 with uint8 input always warns so; check_tflite verifies the input scale itself
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            return conv.convert()
    finally:
        tf_log.setLevel(level)
        if was_on:
            keras.config.enable_interactive_logging()


def inspect_tflite(content: bytes) -> dict:
    """Ops, tensors and input quantisation of a flatbuffer, read with the runtime's interpreter."""
    from sorter.model import interpreter_backend

    interp = interpreter_backend()[1](model_content=content)
    inp = interp.get_input_details()[0]
    out = max(interp.get_output_details(), key=lambda d: int(d["shape"][-1]))  # the classes, not a score column
    ops = [op["op_name"] for op in interp._get_ops_details()]
    return {"ops": ops, "input_shape": [int(d) for d in inp["shape"]], "input_dtype": np.dtype(inp["dtype"]).name,
            "input_quantization": tuple(float(q) for q in inp["quantization"]),
            "output_shape": [int(d) for d in out["shape"]]}


def check_tflite(content: bytes, model, fmt: ExportFormat) -> dict:
    """Fail loudly on a trivial flatbuffer: too few ops, too small for the weights, wrong shapes."""
    info = inspect_tflite(content)
    n_params = model.count_params()
    min_bytes = int(n_params * fmt.bytes_per_weight * 0.8)
    classes = model.output_shape[0] if isinstance(model.output_shape, list) else model.output_shape
    want_in, want_out = list(model.input_shape[1:]), int(classes[-1])
    problems = []
    if len(info["ops"]) < 2:
        problems.append(f"only {len(info['ops'])} ops")
    if len(content) < min_bytes:
        problems.append(f"{len(content):,} bytes < {min_bytes:,} expected for {n_params:,} weights")
    if info["input_shape"][1:] != want_in or info["output_shape"][-1] != want_out:
        problems.append(f"shapes {info['input_shape']}→{info['output_shape']} vs {want_in}→{want_out}")
    if info["input_dtype"] != fmt.input_dtype:
        problems.append(f"input dtype {info['input_dtype']} vs {fmt.input_dtype}")
    if problems:
        raise ExportError(f"{fmt.name} export is malformed: " + "; ".join(problems))
    scale, zero = info["input_quantization"]
    if fmt.calibrated and (abs(scale - 1.0) > 0.02 or zero != 0):
        log.warning("int8 input scale %.4f zero point %d (want 1.0 and 0): raw pixels will be misread",
                    scale, zero)
    return info


# --- scoring -----------------------------------------------------------------------------------

def latency(score: Callable[[np.ndarray], np.ndarray], image: np.ndarray, runs: int = 30) -> tuple[float, float]:
    """Median and p90 ms per image at batch 1, after a short warm-up."""
    for _ in range(3):
        score(image[None])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        score(image[None])
        times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 3), round(float(np.percentile(times, 90)), 3)


@dataclass
class ExportJob:
    """Everything shared by the formats of one export run."""

    model: object
    run: RunInfo
    labels: list[str]
    rotten_labels: list[str]
    splits: DataSplits
    test_images: np.ndarray
    test_y: np.ndarray
    float_probs: np.ndarray
    out: Path
    name: str
    command: str
    latency_runs: int = 30
    logits: bool = False  # the exports output logits; the card then carries temperature, decision, ood
    photos: card_rules.FieldSets | None = None  # val / per-root test / non-produce photos for the card's rule
    distance: bool = False  # the graph's second output is the feature-distance OOD score
    goal: Goal = field(default_factory=Goal)
    ood_pass: float = 0.95
    float_weights: FloatWeights | None = None  # NAME.float.keras beside the bundles, for `sorter retrain`

    @property
    def size(self) -> tuple[int, int]:
        return keras_input_size(self.model)

    @functools.cached_property
    def dataset_sha256(self) -> str:
        """The data set's fingerprint, taken once for every format's card."""
        return self.splits.fingerprint()

    @property
    def float_accuracy(self) -> float:
        return round(float(np.mean(self.float_probs.argmax(axis=1) == self.test_y)), 6)


def base_card(job: ExportJob, fmt: ExportFormat, path: Path) -> ModelCard:
    height, width = job.size
    return ModelCard(
        name=path.name.removesuffix(".tflite"), labels=job.labels, rotten_labels=job.rotten_labels,
        input=InputSpec(height=height, width=width, dtype=fmt.input_dtype),  # type: ignore[arg-type]
        quantization=fmt.name,  # type: ignore[arg-type]  # the formats table holds only valid names
        backbone=str(job.run.config.get("backbone", "unknown")), model_sha256=sha256_file(path),
        file_size_bytes=path.stat().st_size, command=job.command, dataset_sha256=job.dataset_sha256,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        converter=Converter(path="TFLiteConverter.from_keras_model", options=fmt.options),
        float_accuracy=job.float_accuracy, baselines=job.run.baselines or {},
        source_run=str(job.run.run_dir or job.run.model_path), output="logits" if job.logits else "probabilities",
        # which output the runtime reads the OOD score from; the threshold is chosen once the export can run
        ood=OodRule(score="distance", threshold=0.0) if job.distance else None, float_weights=job.float_weights)


def export_one(job: ExportJob, fmt: ExportFormat, calibration: np.ndarray | None) -> ExportResult:
    """Convert, check, write the bundle, then score and time it through the runtime."""
    from sorter.doctor import record_samples
    from sorter.model import Classifier, ModelError, default_threads

    content = convert(job.model, fmt, calibration)
    check_tflite(content, job.model, fmt)
    path = job.out / f"{job.name}-{fmt.name}.tflite"
    path.write_bytes(content)
    card = base_card(job, fmt, path)
    if calibration is not None:
        card.calibration = Calibration(images=len(calibration), split="train + val" if job.distance else "train",
                                       sampling="stratified train" + (", every val photo" if job.distance else ""))
    write_card(path, card)
    try:
        clf = Classifier(path, num_threads=default_threads())
    except ModelError as exc:  # never leave a bundle behind that the runtime refuses
        path.unlink(missing_ok=True)
        card_path(path).unlink(missing_ok=True)
        raise ExportError(f"{fmt.name} export is refused by the runtime: {exc}") from None
    if job.logits and job.photos is not None:
        try:
            apply_rules(card, card_rules.choose(clf, job.labels, job.rotten_labels, job.photos, job.goal,
                                                job.ood_pass))
            write_card(path, card)
            clf = Classifier(path, num_threads=default_threads())  # the runtime reads the temperature from the card
        except (ValueError, ModelError) as exc:  # nor one whose card still holds the stand-in rule
            path.unlink(missing_ok=True)
            card_path(path).unlink(missing_ok=True)
            raise ExportError(f"{fmt.name} export: its card's rule could not be chosen: {exc}") from None
    probs = clf.scores(job.test_images)
    m = compute_metrics(job.test_y, probs, job.labels, job.rotten_labels)
    med, p90 = latency(clf.scores, job.test_images[0], job.latency_runs)
    card.score = ExportScore(accuracy=m["accuracy"], agreement_with_float=agreement(probs, job.float_probs),
                             n_test=m["n"], per_class=m["per_class"], macro_f1=m["macro"]["f1"])
    picked = sample_indices(job.test_y)  # recorded so `sorter doctor` can check the bundle reproduces them
    card.samples = record_samples(clf, job.test_images[picked], [job.labels[int(job.test_y[i])] for i in picked])
    card.latency_ms = Latency(median=med, p90=p90, batch=1, threads=clf.num_threads, runs=job.latency_runs,
                              backend=clf.backend, machine=platform.machine(),
                              processor=platform.processor() or platform.machine())
    right, float_right = probs.argmax(axis=1) == job.test_y, job.float_probs.argmax(axis=1) == job.test_y
    return ExportResult(fmt.name, path, path.stat().st_size, fmt.input_dtype, m["accuracy"],
                        card.score.agreement_with_float or 0.0, med, p90, m["predicted_classes"], m["n"],
                        int(np.sum(float_right & ~right)), int(np.sum(~float_right & right)), card=card)


def apply_rules(card: ModelCard, rules: card_rules.CardRules) -> None:
    card.temperature, card.decision, card.ood = rules.temperature, rules.decision, rules.ood
    card.evaluation = rules.evaluation
    card.temperature_fit = rules.temperature_fit


def sample_indices(test_y: np.ndarray, limit: int = 8) -> list[int]:
    """The first test image of each class (up to `limit`): the card's recorded sample predictions."""
    first: dict[int, int] = {}
    for i, y in enumerate(test_y.tolist()):
        first.setdefault(int(y), i)
    return [first[c] for c in sorted(first)][:limit]


def gate(result: ExportResult, float_accuracy: float, max_drop: float, n_classes_in_test: int) -> str | None:
    """Why an export must not ship (None when it may): one class only, or an accuracy drop past
    `max_drop` points that chance does not explain. On 60 test images one photo is 1.67 points, so the
    points alone would refuse a single flip; the paired test asks whether the images the export lost
    (float right, export wrong) outnumber those it gained by more than coin flips would. A drop past
    `max_drop` that chance does explain passes with a `note`, so the table and card still show it."""
    if n_classes_in_test > 1 and result.predicted_classes == 1:
        return f"{result.format} export predicts a single class for all {n_classes_in_test}-class test images"
    if not result.n_test:  # no per-image counts: the points alone
        drop = (float_accuracy - result.accuracy) * 100
        return (f"{result.format} export scores {result.accuracy:.2%}, {drop:.1f} points below the float "
                f"model's {float_accuracy:.2%} (max drop {max_drop})") if drop > max_drop else None
    drop = (result.lost - result.gained) / result.n_test * 100
    if drop <= max_drop:
        return None
    p = drop_p_value(result.lost, result.gained)
    counts = (f"{result.lost} of {result.n_test} test images lost and {result.gained} gained against the float "
              f"model; one-sided exact McNemar p = {p:.3f}")
    if p < GATE_ALPHA:
        return (f"{result.format} export scores {result.accuracy:.2%}, {drop:.1f} points below the float "
                f"model's {float_accuracy:.2%} (max drop {max_drop}; {counts})")
    result.note = f"{drop:.1f} points below float, within chance ({counts})"
    return None


def finish_cards(results: list[ExportResult]) -> None:
    """Every card carries the whole exports table, so one bundle tells how its siblings did."""
    table = [ExportRow.model_validate(r.row()) for r in results]
    for r in results:
        if r.card is not None:
            r.card.exports = table
            r.card.gate = Gate(passed=r.problem is None, problem=r.problem)  # `model install` reads it
            write_card(r.path, r.card)


def reject(result: ExportResult) -> None:
    """Remove a refused bundle so nothing loadable is left behind."""
    result.path.unlink(missing_ok=True)
    card_path(result.path).unlink(missing_ok=True)


def logits_model(model):
    """The classifier with its softmax taken off (the same weights, a linear last layer), or None when its
    head is not a softmax Dense (a `--binary-sigmoid` model). The export then outputs logits: the runtime
    applies the card's temperature and computes the energy score for `unknown` from them."""
    import keras

    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense) or last.get_config().get("activation") != "softmax":
        return None
    dense = keras.layers.Dense(last.units, activation=None, dtype="float32", name="logits")
    out = dense(last.input)
    dense.set_weights(last.get_weights())
    return keras.Model(model.input, out, name=model.name)


def _run_data(run: RunInfo) -> Path | None:
    """The data folder a run names (the first of several: its splits.json holds every root)."""
    data = run.config.get("data")
    return Path(data[0] if isinstance(data, list) else data) if data else None


def field_sets(splits: DataSplits, labels: list[str], size: tuple[int, int]) -> card_rules.FieldSets | None:
    """Validation photos (all roots) to choose the card's rule on, each root's test split apart, and the
    non-produce photos; None without validation photos (the card then keeps the top-1 rule)."""
    from training.ood_photos import PhotosUnavailable, photo_sets

    if not splits.val:
        log.warning("no validation photos: the card gets no temperature, P(rotten) or unknown rule "
                    "(train with --val-split > 0)")
        return None
    roots = " + ".join(splits.sets("val"))
    val = split_images(splits, "val", labels, size)
    tests = [_photos(f"{root} test split", root, files, splits, labels, size)
             for root, files in splits.sets("test").items()]
    try:
        ood = photo_sets(size)
    except PhotosUnavailable as exc:
        log.warning("no non-produce photos to measure unknown on: %s", exc)
        ood = []
    return card_rules.FieldSets(card_rules.Photos(f"validation ({roots})", roots, val.images, val.y), tests, ood)


def _photos(name: str, root: str, files: list[tuple[Path, int]], splits: DataSplits, labels: list[str],
            size: tuple[int, int]) -> card_rules.Photos:
    one = DataSplits(splits.root, splits.classes, test=files, roots=splits.roots)
    sample = split_images(one, "test", labels, size)
    return card_rules.Photos(name, root, sample.images, sample.y)


def add_distance(model, graph, splits: DataSplits, labels: list[str], size: tuple[int, int]):
    """`graph` (image → logits) with the feature-distance score as a second output, fitted on the
    training photos' features from the float model; `graph` unchanged when the model has no pooled
    features layer to measure in."""
    from training import distance_head

    if distance_head.FEATURES_LAYER not in {layer.name for layer in model.layers}:
        log.warning("no '%s' layer: the unknown rule uses the energy of the logits", distance_head.FEATURES_LAYER)
        return graph, False
    train = split_images(splits, "train", labels, size)
    features = keras_scores(distance_head.feature_model(model), train.images)
    log.info("feature-distance OOD head fitted on %d training photos", len(train.y))
    return distance_head.with_distance(graph, distance_head.fit(features, train.y, len(labels))), True


def prepare(source: Path, data: Path | None, out: Path, name: str | None, command: str,
            latency_runs: int = 30, goal: Goal = Goal(), ood_pass: float = 0.95,
            ood_score: str = "distance") -> ExportJob:
    run = read_run(source)
    data = data or _run_data(run)
    if data is None:
        raise ExportError("no data to score the exports on: pass --data DATA")
    model = load_keras(run.model_path)
    splits = resolve_splits(data, run.splits_file)
    labels = run.labels or splits.classes
    from sorter.card import guess_rotten

    rotten = run.rotten_labels if run.rotten_labels is not None else guess_rotten(labels)
    size = keras_input_size(model)
    split = "test" if splits.test else "val"
    sample = split_images(splits, split, labels, size)
    log.info("scoring exports on %d %s images", len(sample.y), split)
    out.mkdir(parents=True, exist_ok=True)
    logits = logits_model(model)
    photos = field_sets(splits, list(labels), size) if logits is not None else None
    graph, distance = (logits, False) if photos is not None else (model, False)
    if photos is not None and ood_score == "distance":
        graph, distance = add_distance(model, logits, splits, list(labels), size)
    return ExportJob(graph, run, list(labels), list(rotten), splits, sample.images, sample.y,
                     keras_scores(model, sample.images), out, name or run.name, command, latency_runs,
                     logits=photos is not None, photos=photos, goal=goal, ood_pass=ood_pass, distance=distance)


def export(source: Path, data: Path | None = None, formats: list[str] | None = None, out: Path = Path("models"),
           name: str | None = None, calibration: int = 500, allow_drop: bool = False, max_drop: float = 1.0,
           command: str = "", latency_runs: int = 30, goal: Goal = Goal(),
           ood_pass: float = 0.95, ood_score: str = "distance") -> list[ExportResult]:
    """Export every requested format; raise ExportError (after writing the rest) if one is refused."""
    if ood_score not in ("distance", "energy"):
        raise ValueError(f"--ood-score must be distance or energy, not '{ood_score}'")
    for flag, value in (("--unknown-pass", ood_pass), ("--rotten-recall", goal.rotten_caught),
                        ("--fresh-kept", goal.fresh_kept)):
        if not 0 < value <= 1:  # checked before any conversion, not after minutes of it
            raise ValueError(f"{flag} must be in (0, 1], not {value}")
    job = prepare(Path(source), Path(data) if data else None, Path(out), name, command, latency_runs, goal,
                  ood_pass, ood_score)
    from training import float_weights

    job.float_weights = float_weights.write(job.run.model_path, job.out, job.name)
    chosen = [FORMATS[f] for f in formats or list(FORMATS)]
    calib = (calibration_images(job.splits, job.size, calibration, job.distance)
             if any(f.calibrated for f in chosen) else None)
    try:
        results = [export_one(job, f, calib if f.calibrated else None) for f in chosen]
        n_classes = len(set(job.test_y.tolist()))
        for r in results:
            r.problem = gate(r, job.float_accuracy, max_drop, n_classes)
        finish_cards(results)
        refused = [r for r in results if r.problem]
        if refused and not allow_drop:
            for r in refused:
                reject(r)
            raise GateRefused("; ".join(r.problem or "" for r in refused) + " — refused (use --allow-drop to keep)",
                              results)
    finally:
        drop_unused_weights(job, chosen)
    return results


def drop_unused_weights(job: ExportJob, chosen: list[ExportFormat]) -> None:
    """No bundle of this export left (all refused, or one failed): its float weights go too."""
    if job.float_weights and not any((job.out / f"{job.name}-{f.name}.tflite").exists() for f in chosen):
        (job.out / job.float_weights.file).unlink(missing_ok=True)


def export_table(rows: list[ExportFormat] | list[ExportResult]):
    """A Rich table: the formats about to be exported, or the figures of the finished exports."""
    from rich.table import Table

    if rows and isinstance(rows[0], ExportFormat):
        table = Table("format", "input", "converter options", "what", title="TFLite formats")
        for f in rows:
            table.add_row(f.name, f.input_dtype, escape(f.options), f.description)
        return table
    table = Table("format", "file", "MB", "input", "accuracy", "agreement", "ms (median)", "ms (p90)", "status",
                  title="exports")
    for r in rows:
        assert isinstance(r, ExportResult)
        table.add_row(r.format, escape(str(r.path)), f"{r.size_bytes / 1e6:.2f}", r.input_dtype,
                      f"{r.accuracy:.4f}", f"{r.agreement_with_float:.4f}", f"{r.latency_ms:.2f}",
                      f"{r.latency_p90_ms:.2f}", _status(r))
    return table


def _status(r: ExportResult) -> str:
    if r.problem:
        gone = "" if r.path.exists() else " (removed)"
        return f"[red]refused{gone}: {escape(r.problem)}[/red]"
    return f"[yellow]ok: {escape(r.note)}[/yellow]" if r.note else "ok"
