"""benchmarks/bench_model_latency.py on the tiny bundles in tests/data: the report's structure and the
values that must hold whatever the machine (issue 15 §4). Speed itself is never asserted here: the
benchmark measures it, and run it alone for the figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_model_latency import batches_of, cpu_model, main, sample_images, unique_names, verdict
from sorter.imaging import decode
from tests.conftest import COLOR_INT8, DATA, REPO

COLOR_LOGITS = DATA / "color-logits-int8.tflite"


def _run(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "latency.json"
    assert main([*argv, "--rounds", "2", "--runs", "2", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_bundle_against_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _run(tmp_path, "--baseline", str(COLOR_INT8), str(COLOR_INT8))
    base, twin = report["models"]
    assert (base["name"], base["role"]) == ("color-int8", "baseline")
    assert (twin["name"], twin["role"]) == ("color-int8 #2", "same bundle")
    assert report["baseline"] == "color-int8" and report["bound"] == 1.5
    assert report["rounds"] == 2 and report["runs"] == 2 and report["threads"] >= 1
    assert report["inputs"] == "12 photos from samples/"
    for model in (base, twin):
        assert model["input"] == [32, 32] and model["quantization"] == "int8"
        assert model["output"] == "probabilities"
        assert model["size_mb"] == COLOR_INT8.stat().st_size / 1e6
        assert set(model["batches"]) == {"1", "8"}
        for batch, figures in model["batches"].items():
            assert figures["images_per_call"] == int(batch)
            assert figures["calls"] == 4  # 2 rounds × 2 calls
            assert figures["ms_per_image"] == pytest.approx(figures["median_ms"] / int(batch))
            assert 0 < figures["median_ms"] <= figures["p90_ms"]
            assert len(figures["round_ratios"]) == 2 and all(r > 0 for r in figures["round_ratios"])
            assert figures["ratio_min"] <= figures["ratio"] <= figures["ratio_max"]
    for figures in base["batches"].values():  # the baseline over itself, round by round: exactly 1
        assert figures["round_ratios"] == [1.0, 1.0]
    for batch, figures in twin["batches"].items():  # each round's ratio is twin / baseline of that round
        mine, theirs = figures["round_ms"], base["batches"][batch]["round_ms"]
        assert figures["round_ratios"] == pytest.approx([m / t for m, t in zip(mine, theirs, strict=True)])
    assert "verdict" not in base and twin["verdict"].startswith(("within the 1.5× bound", "OVER the 1.5× bound"))
    out = capsys.readouterr().out
    assert "color-int8 #2: batch 1 " in out and "× the baseline (range " in out and ", batch 8 " in out
    assert "sanity check (the baseline against itself)" in out
    assert report["cpu"] == cpu_model() and report["cpu"] != "unknown CPU"
    assert f"{report['cpu']}, {report['threads']} thread(s)" in out  # the CPU and thread count head the table


def test_probabilities_against_logits_on_random_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "no-photos"
    empty.mkdir()
    report = _run(tmp_path, "--baseline", str(COLOR_INT8), str(COLOR_LOGITS), "--samples", str(empty),
                  "--threads", "1")
    base, other = report["models"]
    assert report["threads"] == 1 and report["inputs"] == "random uint8 (no JPEGs found)"
    assert (base["output"], other["output"]) == ("probabilities", "logits")
    assert (other["name"], other["role"]) == ("color-logits-int8", "candidate")
    assert other["batches"]["8"]["images_per_call"] == 8
    assert "sanity check" not in capsys.readouterr().out  # two different bundles: no self-comparison


def test_no_model_times_the_baseline_against_itself(tmp_path: Path) -> None:
    report = _run(tmp_path, "--baseline", str(COLOR_INT8), "--batches", "8", "2")
    assert [m["role"] for m in report["models"]] == ["baseline", "same bundle"]
    assert [set(m["batches"]) for m in report["models"]] == [{"2", "8"}] * 2


def test_missing_model_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--baseline", str(COLOR_INT8), str(tmp_path / "absent.tflite")]) == 2
    assert "absent.tflite not found" in capsys.readouterr().err


def test_inputs_are_the_runtime_decode_of_the_samples() -> None:
    images, source = sample_images((32, 40), REPO / "samples")
    first = sorted((REPO / "samples").glob("*.jpg"))[0]
    assert source == "12 photos from samples/" and images.shape == (12, 32, 40, 3)
    np.testing.assert_array_equal(images[0], decode(first.read_bytes(), (32, 40)))
    calls = batches_of(images, 8, 3)  # successive calls cycle through the set
    assert [c.shape for c in calls] == [(8, 32, 40, 3)] * 3
    np.testing.assert_array_equal(calls[1][:4], images[8:12])
    np.testing.assert_array_equal(calls[1][4:], images[:4])


def test_verdict_and_names() -> None:
    def fig(ratio: float, top: float) -> dict[str, float]:
        return {"ratio": ratio, "ratio_min": ratio, "ratio_max": top}

    assert verdict({1: fig(1.2, 1.3), 8: fig(1.1, 1.2)}) == "within the 1.5× bound"
    assert verdict({1: fig(1.6, 1.7), 8: fig(1.1, 1.2)}) == "OVER the 1.5× bound at batch 1 (1.60×)"
    assert "a round passed it at batch 8" in verdict({1: fig(1.2, 1.3), 8: fig(1.4, 1.7)})
    assert unique_names([Path("a/m.tflite"), Path("b/m.tflite"), Path("n.tflite"), Path("m.tflite")]) == [
        "m", "m #2", "n", "m #3"]
