"""The calibrated decision path (issue 15 items 2-3): temperature, P(rotten) thresholds, the energy
`unknown` verdict, and where unknown goes (OUT/unknown/, the database, reports, metrics, camera votes).

Real parts: the tiny logits bundles in tests/data (tests/make_color_model.py logits: logits are 0.1 ×
each channel's mean, temperature 5, rotten_at 0.6, fresh_at 0.3, unknown below energy 18), the
real interpreter, real SQLite, `sorter classify/watch/report/camera` as a user runs them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sorter import fleet_merge, store
from sorter.card import load_card, write_card
from sorter.classify import rules_for
from sorter.cli import app
from sorter.config import ConfigError, Settings
from sorter.metrics import Telemetry
from sorter.model import Classifier, Prediction
from sorter.report import build_report, window
from sorter.triggers import Vote, Voter
from sorter.verdict import VerdictRules
from tests.camera_helpers import colour_frame, write_frames
from tests.conftest import COLOR_FLOAT, DATA
from tests.watch_helpers import SORTER, Running, drop, files_under, rows, settings, wait_for

pytestmark = pytest.mark.timeout(120)
LOGITS_INT8 = DATA / "color-logits-int8.tflite"
LOGITS_FLOAT = DATA / "color-logits-float32.tflite"
REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()

# the settings keys this file shows the effect of (the lead's meta test reads every KEYS_SHOWN)
KEYS_SHOWN: dict[str, str] = {
    "rotten_at": "test_rotten_at_moves_the_rotten_threshold",
    "fresh_at": "test_fresh_at_moves_the_fresh_threshold",
    "unknown_below": "test_unknown_below_replaces_the_cards_ood_threshold",
    "unknown": "test_unknown_false_turns_the_unknown_verdict_off",
}

# solid photos (RGB) and what the logits model says of them (int8 and float agree to 1e-6):
# P(rotten) = softmax(logits / 5)[rottenblue], energy = logsumexp(logits)
PHOTOS = {
    "red": (255, 0, 0),  # p_rot 0.006, energy 25.4
    "mix": (220, 0, 135),  # p_rot 0.150, energy 22.0
    "straw": (200, 200, 130),  # p_rot 0.110, energy 20.7; its fresh labels 0.445 each (under 0.5)
    "plum": (180, 0, 215),  # p_rot 0.658, energy 21.4
    "blue": (0, 0, 255),  # p_rot 0.988, energy 25.4
    "grey": (128, 128, 128),  # a three-way tie, energy 13.9: not produce the model knows
    "checker": None,  # black and white squares: energy 13.9
}
CARD_RULE = {"red": ("fresh", "freshred"), "mix": ("fresh", "freshred"), "straw": ("fresh", "freshred"),
             "plum": ("rotten", "rottenblue"), "blue": ("rotten", "rottenblue"),
             "grey": ("unknown", "freshred"), "checker": ("unknown", "freshred")}


def photo(path: Path, name: str) -> Path:
    rgb = PHOTOS[name]
    if rgb is None:
        squares = (np.indices((40, 40)).sum(0) // 5 % 2 * 255).astype(np.uint8)
        img = np.repeat(squares[..., None], 3, 2)
    else:
        img = np.zeros((40, 40, 3), np.uint8)
        img[:] = rgb[::-1]
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    return [photo(folder / f"{name}.jpg", name) for name in PHOTOS]


def classify(tmp: Path, files: list[Path], model: Path = LOGITS_INT8, lines: str = "") -> dict[str, tuple]:
    """`sorter classify --json --config FILE` → {photo: (verdict, label)}; an error as ('exit 2', message)."""
    cfg = tmp / "sorter.toml"
    cfg.write_text(f'model = "{model}"\n{lines}\n')
    result = runner.invoke(app, ["classify", "--json", "--config", str(cfg), *map(str, files)])
    if result.exit_code == 2:
        return {"error": ("exit 2", result.output.strip())}
    assert result.exit_code == 0, result.output
    return {Path(r["path"]).stem: (r["verdict"], r["label"]) for r in map(json.loads, result.stdout.splitlines())}


def changed(got: dict, **diff: tuple[str, str]) -> None:
    assert got == {**CARD_RULE, **diff}


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch):
    for name in ("SORTER_MODEL", "SORTER_CONFIG"):
        monkeypatch.delenv(name, raising=False)


# ---- the rule itself, on hand-made score vectors ----

LABELS4 = ["fresh_apple", "fresh_banana", "rotten_apple", "rotten_banana"]
ROT4 = frozenset({"rotten_apple", "rotten_banana"})


def pred(scores: dict[str, float], ood: float | None = None) -> Prediction:
    top = max(scores, key=lambda k: scores[k])
    return Prediction(top, scores[top], scores, ood)


@pytest.mark.parametrize(("scores", "expected"), [
    ((0.5, 0.1, 0.25, 0.15), ("uncertain", "fresh_apple", 0.5)),  # p_rot 0.4: between, the top-1 label
    ((0.4, 0.0, 0.35, 0.25), ("rotten", "rotten_apple", 0.35)),  # p_rot 0.6 = rotten_at: rotten (>=); the top
    # class within the rotten side, although fresh_apple is the top-1 overall
    ((0.4, 0.0, 0.25, 0.35), ("rotten", "rotten_banana", 0.35)),
    ((0.400001, 0.0, 0.35, 0.249999), ("uncertain", "fresh_apple", 0.400001)),  # p_rot 0.599999: not yet
    ((0.2, 0.5, 0.1, 0.2), ("fresh", "fresh_banana", 0.5)),  # p_rot 0.1 + 0.2 = 0.3 = fresh_at: fresh (<=)
    ((0.2, 0.499999, 0.1, 0.200001), ("uncertain", "fresh_banana", 0.499999)),  # p_rot 0.300001: not fresh
    ((0.05, 0.05, 0.7, 0.2), ("rotten", "rotten_apple", 0.7)),
    ((0.6, 0.35, 0.05, 0.0), ("fresh", "fresh_apple", 0.6)),
])
def test_p_rotten_rule_gives_exact_verdicts_and_the_top_label_of_the_chosen_side(scores, expected):
    rules = VerdictRules(ROT4, rotten_at=0.6, fresh_at=0.3)
    j = rules.decide(pred(dict(zip(LABELS4, scores, strict=True))))
    assert (j.verdict, j.label, j.confidence) == expected


def test_the_fresh_side_label_is_the_top_fresh_class_even_when_a_rotten_one_is_the_top_1():
    labels = ["fresh_apple", "fresh_banana", "fresh_orange", "rotten_apple"]
    scores = dict(zip(labels, (0.24, 0.23, 0.23, 0.3), strict=True))  # top-1 is rotten_apple
    j = VerdictRules(frozenset({"rotten_apple"}), rotten_at=0.6, fresh_at=0.3).decide(pred(scores))
    assert (j.verdict, j.label) == ("fresh", "fresh_apple")
    assert VerdictRules(frozenset({"rotten_apple"})).decide(pred(scores)).verdict == "uncertain"  # top-1: 0.3 < 0.5


def test_unknown_comes_first_below_the_energy_threshold_and_keeps_the_top_class():
    rules = VerdictRules(ROT4, rotten_at=0.6, fresh_at=0.3, unknown_below=10.0)
    scores = dict(zip(LABELS4, (0.05, 0.05, 0.7, 0.2), strict=True))
    assert rules.decide(pred(scores, 9.999999)).verdict == "unknown"
    assert rules.decide(pred(scores, 9.999999)).label == "rotten_apple"
    assert rules.decide(pred(scores, 10.0)).verdict == "rotten"  # at the threshold: known (below = unknown)
    assert rules.decide(pred(scores, None)).verdict == "rotten"  # a probability model has no energy
    legacy = VerdictRules(ROT4, unknown_below=10.0)  # unknown applies under the top-1 rule too
    assert legacy.decide(pred(scores, 3.0)).verdict == "unknown"
    assert legacy.decide(pred(scores, 11.0)).verdict == "rotten"


def test_a_confidence_floor_applies_under_p_rotten_only_when_set():
    scores = dict(zip(LABELS4, (0.4, 0.0, 0.35, 0.25), strict=True))  # rotten, rotten_apple at 0.35
    assert VerdictRules(ROT4, rotten_at=0.6, fresh_at=0.3).decide(pred(scores)).verdict == "rotten"
    floored = VerdictRules(ROT4, default_min_confidence=0.36, rotten_at=0.6, fresh_at=0.3).decide(pred(scores))
    assert (floored.verdict, floored.label) == ("uncertain", "fresh_apple")
    per_label = VerdictRules(ROT4, min_confidence={"rotten_apple": 0.4}, rotten_at=0.6, fresh_at=0.3)
    assert per_label.decide(pred(scores)).verdict == "uncertain"
    assert VerdictRules(ROT4, min_confidence={"rotten_banana": 0.4}, rotten_at=0.6,
                        fresh_at=0.3).decide(pred(scores)).verdict == "rotten"


def test_the_top_1_rule_is_unchanged_without_a_decision_rule():
    """The legacy floor is 0.5 and compares the unrounded confidence, as before."""
    rules = VerdictRules(frozenset({"rottenblue"}))
    scores = {"freshred": 0.5, "freshgreen": 0.0, "rottenblue": 0.5}
    assert rules.decide(Prediction("freshred", 0.4999996, scores)).verdict == "uncertain"
    assert rules.decide(Prediction("freshred", 0.5, scores)).verdict == "fresh"
    assert rules.decide(Prediction("rottenblue", 0.5, scores)).verdict == "rotten"
    with pytest.raises(ValueError, match="both rotten_at and fresh_at"):
        VerdictRules(frozenset(), rotten_at=0.5)
    with pytest.raises(ValueError, match=r"fresh_at 0\.7 is above rotten_at 0\.5"):
        VerdictRules(frozenset(), rotten_at=0.5, fresh_at=0.7)


# ---- the model: temperature and energy from the real interpreter ----

def _raw_logits(model: Path, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model))
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(images.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], images.astype(inp["dtype"]))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).astype(np.float64)


@pytest.mark.parametrize("model", [LOGITS_INT8, LOGITS_FLOAT])
def test_probabilities_are_softmax_of_logits_over_the_cards_temperature(model, tmp_path):
    images = np.zeros((4, 32, 32, 3), np.uint8)
    for img, rgb in zip(images, [(255, 0, 0), (200, 0, 120), (150, 0, 180), (128, 128, 128)], strict=True):
        img[:] = rgb
    z = _raw_logits(model, images)
    np.testing.assert_allclose(z[1], [20.0, 0.0, 12.0], atol=0.05)  # 0.1 × the channel means

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    energy = np.log(np.exp(z).sum(axis=1))
    clf = Classifier(model, num_threads=1)
    assert clf.card.temperature == 5.0
    np.testing.assert_allclose(clf.scores(images), softmax(z / 5.0), atol=1e-6)
    preds = clf.predict(images)
    np.testing.assert_allclose([p.ood_score for p in preds], energy, atol=1e-5)  # at T = 1, from the raw logits
    # the same bundle with temperature 1: other probabilities, the same energy
    twin = tmp_path / model.name
    shutil.copy(model, twin)
    card = load_card(model)
    card.temperature = 1.0
    write_card(twin, card)
    hot = Classifier(twin, num_threads=1)
    np.testing.assert_allclose(hot.scores(images), softmax(z), atol=1e-6)
    assert [p.ood_score for p in hot.predict(images)] == [p.ood_score for p in preds]
    assert preds[1].confidence == pytest.approx(float(softmax(z / 5)[1, 0]), abs=1e-6)
    assert preds[1].confidence < 0.9 < hot.predict(images)[1].confidence  # calibrated: less sure than raw


def test_a_probability_model_has_no_ood_score():
    preds = Classifier(COLOR_FLOAT, num_threads=1).predict(np.zeros((1, 32, 32, 3), np.uint8))
    assert preds[0].ood_score is None


# ---- `sorter classify --config FILE`: the card's rule, and each key over it ----

def test_the_cards_rule_decides_and_far_photos_are_unknown(tmp_path, photos):
    """The colour photos pass the energy threshold; grey and a checkerboard come out unknown, with the
    energy beside the verdict in --json."""
    assert classify(tmp_path, photos) == CARD_RULE
    out = runner.invoke(app, ["classify", "--json", "--model", str(LOGITS_INT8), *map(str, photos)])
    got = {Path(r["path"]).stem: r for r in map(json.loads, out.stdout.splitlines())}
    assert got["grey"]["ood_score"] == pytest.approx(12.8 + np.log(3), abs=0.05)
    assert got["checker"]["ood_score"] < 18 < min(got[n]["ood_score"] for n in ("red", "mix", "straw", "plum"))
    assert got["plum"]["confidence"] == got["plum"]["scores"]["rottenblue"]
    plain = runner.invoke(app, ["classify", "--json", "--model", str(COLOR_FLOAT), str(photos[0])])
    assert "ood_score" not in json.loads(plain.stdout)


def test_rotten_at_moves_the_rotten_threshold(tmp_path, photos):
    changed(classify(tmp_path, photos, lines="rotten_at = 0.7"), plum=("uncertain", "rottenblue"))
    changed(classify(tmp_path, photos, lines="rotten_at = 0.65"), plum=("rotten", "rottenblue"))  # 0.658: still
    assert classify(tmp_path, photos, lines="rotten_at = 0.1") == {"error": (  # under the card's fresh_at
        "exit 2", "error: fresh_at 0.3 (card) is above rotten_at 0.1 (config): fresh_at must be at most rotten_at")}


def test_fresh_at_moves_the_fresh_threshold(tmp_path, photos):
    changed(classify(tmp_path, photos, lines="fresh_at = 0.12"), mix=("uncertain", "freshred"))
    changed(classify(tmp_path, photos, lines="fresh_at = 0.1"), mix=("uncertain", "freshred"),
            straw=("uncertain", "freshred"))


def test_unknown_below_replaces_the_cards_ood_threshold(tmp_path, photos):
    changed(classify(tmp_path, photos, lines="unknown_below = 23"), mix=("unknown", "freshred"),
            straw=("unknown", "freshred"), plum=("unknown", "rottenblue"))
    changed(classify(tmp_path, photos, lines="unknown_below = 10"), grey=("uncertain", "freshred"),
            checker=("uncertain", "freshred"))  # known now: a three-way tie, P(rotten) 1/3


def test_unknown_false_turns_the_unknown_verdict_off(tmp_path, photos):
    changed(classify(tmp_path, photos, lines="unknown = false"), grey=("uncertain", "freshred"),
            checker=("uncertain", "freshred"))
    assert classify(tmp_path, photos, lines="unknown = false\nunknown_below = 10")["error"][1].endswith(
        "unknown_below is set but unknown = false turns the unknown verdict off")


def test_min_confidence_keys_are_a_floor_under_the_p_rotten_rule_only_when_set(tmp_path, photos):
    """The 0.5 of the top-1 rule does not apply by itself (straw's label has 0.445: fresh), a set one does."""
    changed(classify(tmp_path, photos, lines="default_min_confidence = 0.5"), straw=("uncertain", "freshred"))
    changed(classify(tmp_path, photos, lines="[min_confidence]\nrottenblue = 0.7"), plum=("uncertain", "rottenblue"))


def test_thresholds_on_a_card_without_a_decision_rule(tmp_path, photos):
    """Both turn the P(rotten) rule on; one alone, or unknown_below on a probability model, is a clear error."""
    lean = tmp_path / "lean.jpg"
    cv2.imwrite(str(lean), np.full((40, 40, 3), (190, 0, 200), np.uint8))  # BGR; P(rotten) 0.25 at temperature 1
    files = [photos[0], lean]
    assert classify(tmp_path, files, COLOR_FLOAT) == {"red": ("fresh", "freshred"), "lean": ("fresh", "freshred")}
    assert classify(tmp_path, files, COLOR_FLOAT, "rotten_at = 0.2\nfresh_at = 0.1") == {
        "red": ("fresh", "freshred"), "lean": ("rotten", "rottenblue")}
    assert classify(tmp_path, files, COLOR_FLOAT, "rotten_at = 0.2") == {"error": (
        "exit 2", "error: rotten_at is set but model card color-float32 has no decision rule to take fresh_at "
                  "from: set both to use the P(rotten) rule")}
    assert classify(tmp_path, files, COLOR_FLOAT, "unknown_below = 5")["error"][1].startswith(
        "error: unknown_below needs a model that outputs logits")
    assert classify(tmp_path, files, LOGITS_INT8, "fresh_at = 0.7") == {"error": (
        "exit 2", "error: fresh_at 0.7 (config) is above rotten_at 0.6 (card): fresh_at must be at most rotten_at")}


def test_rules_for_takes_each_threshold_from_the_config_or_the_card():
    clf = Classifier(LOGITS_INT8, num_threads=1)
    rules = rules_for(clf, Settings(fresh_at=0.2))
    assert (rules.rotten_at, rules.fresh_at, rules.unknown_below) == (0.6, 0.2, 18.0)
    assert rules_for(clf, Settings(unknown=False)).unknown_below is None
    with pytest.raises(ConfigError, match=r"rotten_at 0\.1 \(config\)"):
        rules_for(clf, Settings(rotten_at=0.1))


def test_doctor_shows_the_rule_in_force_and_fails_on_one_the_card_cannot_complete(tmp_path):
    def doctor(model: Path, lines: str = "") -> tuple[int, dict]:
        cfg = tmp_path / "doctor.toml"
        cfg.write_text(f'model = "{model}"\ndb = "{tmp_path / "d.db"}"\n{lines}\n')
        result = runner.invoke(app, ["doctor", "--json", "--no-cameras", "--config", str(cfg)])
        return result.exit_code, {c["name"]: c for c in json.loads(result.stdout)["checks"]}["decision"]

    code, check = doctor(LOGITS_INT8, "fresh_at = 0.2")
    assert check["ok"] and check["detail"] == "P(rotten): rotten at >= 0.6, fresh at <= 0.2; unknown below energy 18.0"
    assert check["data"]["temperature"] == 5.0
    assert doctor(COLOR_FLOAT)[1]["detail"] == "top-1 confidence under 0.5 is uncertain; no unknown"
    code, check = doctor(COLOR_FLOAT, "rotten_at = 0.2")
    assert (code, check["ok"]) == (1, False) and check["detail"].startswith("rotten_at is set but model card")


# ---- `sorter watch --once`: OUT/unknown/<label>, the row, the report, the metrics ----

def test_unknown_items_go_to_out_unknown_with_their_row_and_count_in_the_report(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    for name in ("red", "blue", "grey", "plum"):
        photo(tmp_path / "src.jpg", name)
        drop(incoming, f"{name}.jpg", (tmp_path / "src.jpg").read_bytes())
    env = {"SORTER_STABLE_SECONDS": "0", "SORTER_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*SORTER, "watch", str(incoming), "--once", "--out", str(tmp_path / "out"),
                           "--db", str(tmp_path / "db.sqlite"), "--model", str(LOGITS_INT8)],
                          env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files_under(tmp_path / "out")] == [
        "fresh/freshred/red.jpg", "rotten/rottenblue/blue.jpg", "rotten/rottenblue/plum.jpg",
        "unknown/freshred/grey.jpg"]
    got = {Path(r["source_path"]).name: r for r in rows(tmp_path / "db.sqlite")}
    assert {n: r["verdict"] for n, r in got.items()} == {"red.jpg": "fresh", "blue.jpg": "rotten",
                                                          "plum.jpg": "rotten", "grey.jpg": "unknown"}
    assert got["grey.jpg"]["ood_score"] == pytest.approx(13.8986, abs=0.01)
    assert got["grey.jpg"]["destination"].endswith("/out/unknown/freshred/grey.jpg")
    assert got["red.jpg"]["ood_score"] == pytest.approx(25.4, abs=0.01)
    report = tmp_path / "report"
    result = runner.invoke(app, ["report", "--out", str(report), "--db", str(tmp_path / "db.sqlite"),
                                 "--model", str(LOGITS_INT8), "--since", "1h", "--no-publish"])
    assert result.exit_code == 0, result.output
    r = json.loads((report / "report.json").read_text())
    assert r["by_verdict"] == {"rotten": 2, "fresh": 1, "unknown": 1}
    assert (r["rotten_rate"], r["uncertain_rate"], r["unknown_rate"]) == (0.666667, 0.0, 0.25)  # among produce
    assert sum(h["unknown"] for h in r["throughput"]["hourly"]) == 1
    assert r["confidence_histogram"]["by_verdict"]["unknown"] == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    page = (report / "report.html").read_text()
    assert 'id="headline-unknown" data-value="0.25">25.0%' in page


def test_metrics_count_unknown_items(tmp_path):
    cfg = settings()
    clf = Classifier(LOGITS_INT8, num_threads=1, max_batch=cfg.batch_size)
    (tmp_path / "in").mkdir()
    telemetry = Telemetry("watch")
    from sorter.watch import Watcher

    watcher = Watcher(tmp_path / "in", tmp_path / "out", tmp_path / "db.sqlite", clf, rules_for(clf, cfg), cfg,
                      telemetry=telemetry)
    for name in ("grey", "checker", "red"):
        photo(tmp_path / "in" / f"{name}.jpg", name)
    running = Running(watcher, once=True)
    running.thread.join(30)
    sample = telemetry.registry.get_sample_value
    assert sample("sorter_items_total", {"verdict": "unknown", "label": "freshred"}) == 2
    assert sample("sorter_items_total", {"verdict": "fresh", "label": "freshred"}) == 1


# ---- the camera: unknown is voted on like another verdict ----

def test_the_voter_treats_unknown_as_its_own_verdict():
    voter = Voter(3, 5)
    for label in ("freshred", "rottenblue"):
        assert voter.add(Vote(label, "unknown", 0.4)) is None
    decision = voter.add(Vote("freshgreen", "unknown", 0.4))  # three unknown frames agree, whatever their label
    assert decision is not None and (decision.verdict, decision.consensus, decision.agreeing) == ("unknown", True, 3)
    assert voter.add(Vote("freshred", "unknown", 0.4)) is None
    assert voter.add(Vote("freshred", "fresh", 0.9)) is None
    assert voter.add(Vote("freshred", "unknown", 0.4)) is None  # two unknown, one fresh of the same label
    assert voter.add(Vote("freshred", "fresh", 0.9)) is None  # unknown frames are no votes for their label
    voter = Voter(5, 5)
    for label, verdict in (("freshred", "unknown"), ("freshred", "unknown"), ("freshred", "unknown"),
                           ("freshred", "fresh"), ("rottenblue", "rotten")):
        assert voter.add(Vote(label, verdict, 0.5)) is None
    assert voter.close().verdict == "unknown"  # most of the window was unknown
    for label, verdict in (("freshred", "unknown"), ("freshred", "unknown"), ("freshred", "fresh"),
                           ("freshred", "fresh")):
        voter.add(Vote(label, verdict, 0.5))
    assert voter.close().verdict == "uncertain"  # half is no majority


def test_camera_decides_unknown_snapshots_it_and_fires_no_fresh_rotten_output(tmp_path):
    frames = [colour_frame("red", seed=i) for i in range(6)] + [colour_frame("grey", seed=i) for i in range(6)]
    video = write_frames(tmp_path / "belt.avi", frames)
    marks = tmp_path / "fired.txt"
    cmd = f"{sys.executable} -c \"import os; open('{marks}', 'a').write(os.environ['SORTER_VERDICT'] + chr(10))\""
    cfg = tmp_path / "sorter.toml"
    cfg.write_text(f'model = "{LOGITS_INT8}"\n[camera]\nkeep_share = {{fresh = 0.0}}  # no random fresh snapshot\n'
                   f'[outputs.command]\nargv = {json.dumps(["sh", "-c", cmd])}\n')
    result = runner.invoke(app, ["camera", "-d", str(video), "--interval-ms", "1", "--votes", "3", "--window", "5",
                                 "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps"),
                                 "--config", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    got = [dict(r) for r in store.open_reader(tmp_path / "s.db").execute("SELECT * FROM items ORDER BY id")]
    assert [r["verdict"] for r in got] == ["fresh", "unknown"] and got[0]["label"] == "freshred"
    assert got[1]["label"] in {"freshred", "freshgreen", "rottenblue"}  # noisy grey: the most voted top class
    assert got[1]["ood_score"] < 18 < got[0]["ood_score"]
    assert got[0]["destination"] is None and cv2.imread(got[1]["destination"]) is not None  # unknown: a snapshot
    assert "-unknown-" in Path(got[1]["destination"]).name
    assert wait_for(lambda: marks.exists(), 5) and marks.read_text().split() == ["fresh"]  # default verdicts
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert status["decisions"] == {"fresh": 1, "rotten": 0, "uncertain": 0, "unknown": 1}


def test_outputs_accept_unknown_in_their_verdicts_and_refuse_a_typo():
    chosen = Settings.model_validate({"outputs": {"gpio": {"pin": 17, "verdicts": ["rotten", "unknown"]}}})
    assert chosen.outputs.gpio is not None and chosen.outputs.gpio.verdicts == ["rotten", "unknown"]
    with pytest.raises(ValueError, match="not a verdict: 'unkown'"):
        Settings.model_validate({"outputs": {"serial": {"port": "/dev/null", "verdicts": ["unkown"]}}})


# ---- the store and the fleet ----

def test_an_old_database_gains_the_ood_score_column_and_keeps_its_rows(tmp_path):
    from sqlite_utils import Database

    path = tmp_path / "old.db"
    db = Database(sqlite3.connect(str(path), isolation_level=None))
    store.migrations.apply(db, stop_before="m004_items_ood_score")  # as a database from before m004 is
    db.table("items").insert({"sha256": "a" * 64, "source_path": "/in/a.jpg", "source": "watch", "state": "done",
                        "received_at": store.now_iso(), "label": "freshred", "verdict": "fresh"})
    db.close()
    db = store.open_writer(path)
    assert "ood_score" in db["items"].columns_dict and (tmp_path / "old.db.bak-m004_items_ood_score").exists()
    assert [(r["verdict"], r["ood_score"]) for r in db.query("SELECT * FROM items")] == [("fresh", None)]
    db.close()
    backup = sqlite3.connect(tmp_path / "old.db.bak-m004_items_ood_score")
    assert "ood_score" not in [c[1] for c in backup.execute("PRAGMA table_info(items)")]


def test_fleet_merge_counts_unknown_and_rates_among_the_produce(tmp_path):
    reports = {}
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()  # rows written this millisecond are inside
    for line, verdicts in (("a", ["fresh", "rotten", "unknown", "unknown"]), ("b", ["fresh", "uncertain"])):
        db = store.open_writer(tmp_path / f"{line}.db")
        store.insert_items(db, [{"sha256": f"{line}{i}", "source_path": f"/in/{i}.jpg", "source": "watch",
                                 "state": "done", "received_at": store.now_iso(), "label": "freshred",
                                 "confidence": 0.9, "verdict": v} for i, v in enumerate(verdicts)])
        db.close()
        reports[line] = build_report(tmp_path / f"{line}.db", *window("2h", end=soon))
    assert (reports["a"]["rotten_rate"], reports["a"]["unknown_rate"]) == (0.5, 0.5)
    for slot in reports["b"]["throughput"]["hourly"]:  # a line still on a report from before unknown
        del slot["unknown"]
    del reports["b"]["unknown_rate"]
    merged = fleet_merge.merge(reports)
    assert merged["by_verdict"]["unknown"] == 2 and merged["unknown_rate"] == round(2 / 6, 6)
    assert (merged["rotten_rate"], merged["uncertain_rate"]) == (0.25, 0.25)  # 1 and 1 of 4 produce items
    assert sum(h["unknown"] for h in merged["throughput"]["hourly"]) == 2
    assert (merged["lines"]["a"]["unknown_rate"], merged["lines"]["b"]["unknown_rate"]) == (0.5, None)


def test_keys_shown_name_tests_of_this_file():
    assert all(callable(globals().get(name)) for name in KEYS_SHOWN.values())
    assert set(KEYS_SHOWN) <= set(Settings.model_fields)
