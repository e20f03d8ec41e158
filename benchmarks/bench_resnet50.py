"""ResNet50 at 224×224, batch 1, same thread count: int8 TFLite vs float32 TFLite vs onnxruntime vs Keras.

Rounds are interleaved (one call of each variant per round) so machine noise hits all alike.
A benchmark, not a test: it prints a table and asserts nothing.
Run: python benchmarks/bench_resnet50.py [--run runs/NAME] [--rounds 40] [--calibration 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SIZE = 224
FRUIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fruit_dev" / "train"


def build(run: Path | None):
    """The run's classifier when given, else ResNet50 (no weights) + GAP + 6-way softmax."""
    import keras

    if run:
        from training.evaluate import load_keras

        return load_keras(run / "model.keras" if run.is_dir() else run)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.applications.resnet50.preprocess_input(inp)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    out = keras.layers.Dense(6, activation="softmax")(keras.layers.GlobalAveragePooling2D()(base(x)))
    return keras.Model(inp, out)


def calibration(n: int) -> np.ndarray:
    """Real fruit photos when the shared set is here (stratified), else seeded noise."""
    if FRUIT.is_dir():
        from training.data import discover
        from training.export import calibration_images

        images = calibration_images(discover(FRUIT.parent), (SIZE, SIZE), n)  # what `sorter export` uses
        print(f"calibration: {len(images)} real images from {FRUIT}")
        return images
    images = np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    print(f"calibration: {n} synthetic images ({FRUIT} absent)")
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images


def tflite_runner(content: bytes, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from sorter.card import InputSpec, ModelCard, write_card
    from sorter.model import Classifier

    path.write_bytes(content)
    quant = "int8" if "int8" in path.name else "float32"
    write_card(path, ModelCard(name=path.stem, labels=[str(i) for i in range(6)], quantization=quant,
                               input=InputSpec(height=SIZE, width=SIZE, dtype="uint8" if quant == "int8" else
                                               "float32")))
    clf = Classifier(path, num_threads=threads)
    return clf.scores


def onnx_runner(model, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.astype(np.float32)})[0]


def keras_runner(model) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: model.predict(x.astype(np.float32), verbose=0)


def timed(runners: dict[str, Callable], image: np.ndarray, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        for _ in range(3):
            fn(image)
    for _ in range(rounds):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(image)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run folder or model.keras (default: fresh ResNet50)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calibration", type=int, default=100)
    args = parser.parse_args()

    import tensorflow as tf
    from rich.console import Console
    from rich.table import Table

    from sorter.model import default_threads
    from training.export import FORMATS, convert

    threads = default_threads()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = build(args.run)
    tmp = Path(tempfile.mkdtemp(prefix="bench-r50-"))
    t0 = time.perf_counter()
    runners = {"tflite int8": tflite_runner(convert(model, FORMATS["int8"], calibration(args.calibration)),
                                            tmp / "r50-int8.tflite", threads),
               "tflite float32": tflite_runner(convert(model, FORMATS["float32"]), tmp / "r50-float32.tflite",
                                               threads),
               "onnxruntime float32": onnx_runner(model, tmp / "r50.onnx", threads),
               "keras predict": keras_runner(model)}
    print(f"exports ready in {time.perf_counter() - t0:.0f} s; {args.rounds} interleaved rounds, {threads} threads")
    image = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    times = timed(runners, image, args.rounds)
    base = float(np.median(times["tflite int8"]))
    table = Table("variant", "median ms", "p90 ms", "× int8", title=f"ResNet50 {SIZE}×{SIZE}, batch 1")
    for name, ts in times.items():
        med = float(np.median(ts))
        table.add_row(name, f"{med:.1f}", f"{np.percentile(ts, 90):.1f}", f"{med / base:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
