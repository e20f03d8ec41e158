"""Label Studio: a real `audit sample` as an exact tasks import, and a Label Studio JSON export as exact audits."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.audit import sample
from sorter.card import ModelCard, write_card
from sorter.cli import app
from sorter.labelstudio import (
    CONFIG,
    TASKS,
    LabelStudioError,
    export_sample,
    import_export,
    labeling_config,
    path_from_url,
)
from tests.conftest import REPO, write_colour_jpeg

runner = CliRunner()
LABELS = ["freshred", "freshgreen", "rottenblue"]
COLOUR = {"freshred": "red", "freshgreen": "green", "rottenblue": "blue"}
EXPORT = REPO / "tests" / "data" / "labelstudio_export.json"
MODEL_SHA = "5d1c0a9e7b21" + "0" * 52
NOW = datetime.now(UTC)
RECENT = (NOW - timedelta(hours=2)).isoformat(timespec="milliseconds")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# the items the export in tests/data names (their data.sha256), task 103 aside: it has only its image
A, B, D, E, G = (_sha(f"line-3 photo {c}") for c in "ABDEG")


def _insert(db, sha: str | None, label: str, conf: float, verdict: str, destination: Path | None,
            source: str = "watch", source_path: str = "/in/x.jpg") -> int:
    return store.insert_item(db, {"sha256": sha, "source_path": source_path,
                                  "destination": str(destination) if destination else None, "label": label,
                                  "confidence": conf, "verdict": verdict, "source": source, "received_at": RECENT,
                                  "state": "done", "model_id": "fruit-lite1-int8", "model_sha256": MODEL_SHA})


def _audits(path: Path) -> list[tuple]:
    conn = store.open_reader(path)
    try:
        return [tuple(r) for r in conn.execute("SELECT item_id, sha256, true_label, auditor, audited_at, origin "
                                               "FROM audits ORDER BY item_id, auditor")]
    finally:
        conn.close()


@pytest.fixture
def exported_line(tmp_path):
    """The database behind tests/data/labelstudio_export.json: items 1-6, item 3's photo under the root."""
    root = tmp_path / "root"
    photo3 = write_colour_jpeg(root / "audits" / "2026-01-10" / "000003-img003.jpg", "blue", seed=3)
    path = tmp_path / "sorter.db"
    db = store.open_writer(path)
    for sha, label, verdict in ((A, "freshred", "fresh"), (B, "freshgreen", "fresh"),
                                (hashlib.sha256(photo3.read_bytes()).hexdigest(), "freshred", "uncertain"),
                                (D, "rottenblue", "rotten"), (E, "freshred", "fresh"), (G, "freshgreen", "fresh")):
        _insert(db, sha, label, 0.8, verdict, None)
    db.close()
    return path, root, hashlib.sha256(photo3.read_bytes()).hexdigest()


def test_the_export_file_becomes_exact_audit_rows(exported_line):
    db, root, sha3 = exported_line
    result = import_export(db, EXPORT, LABELS, document_root=root)
    assert result.errors == []
    assert result.notes == [
        "task 104, annotation 205 by labelstudio:1: skipped in Label Studio (was_cancelled)",
        "task 105: no annotation yet",
        "task 106, annotation 206 by labelstudio:1: superseded by task 106, annotation 207 by labelstudio:1",
    ]
    assert (result.inserted, result.updated, result.unchanged, result.skipped, result.written) == (5, 0, 0, 3, True)
    assert _audits(db) == [
        (1, A, "freshred", "labelstudio:1", "2026-01-12T09:15:02.118+00:00", "labelstudio"),
        (2, B, "rottenblue", "labelstudio:1", "2026-01-12T09:15:40.551+00:00", "labelstudio"),
        (2, B, "freshgreen", "labelstudio:2", "2026-01-12T10:02:13.009+00:00", "labelstudio"),   # both kept
        (3, sha3, "rottenblue", "labelstudio:2", "2026-01-12T10:03:01.700+00:00", "labelstudio"),  # by its file
        (6, G, "freshgreen", "labelstudio:1", "2026-01-13T08:01:10.482+00:00", "labelstudio"),   # the later one
    ]
    again = import_export(db, EXPORT, LABELS, document_root=root)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 5)


def test_without_a_document_root_a_task_without_sha256_is_an_error_and_nothing_is_written(exported_line):
    db, _, _ = exported_line
    result = import_export(db, EXPORT, LABELS)
    assert result.errors == ["task 103: no sha256 in task data, and no --document-root to find its image"]
    assert not result.written and _audits(db) == []
    partial = import_export(db, EXPORT, LABELS, partial=True)
    assert partial.written and partial.inserted == 4 and [a[0] for a in _audits(db)] == [1, 2, 2, 6]


def test_annotations_that_cannot_be_trusted_are_errors_one_line_each(exported_line, tmp_path):
    db, root, _ = exported_line
    tasks = json.loads(EXPORT.read_text())
    tasks[0]["annotations"][0]["result"][0]["value"]["choices"] = ["rottenblu"]
    tasks[1]["annotations"][1]["result"][0]["value"]["choices"] = ["freshred", "freshgreen"]
    tasks[2]["data"]["image"] = "/data/local-files/?d=../../etc/passwd"
    tasks[3]["annotations"][0]["was_cancelled"] = False
    tasks[3]["annotations"][0]["result"] = copy.deepcopy(tasks[0]["annotations"][0]["result"])
    tasks[3]["data"]["sha256"] = "f" * 64
    tasks[5]["annotations"][1]["completed_by"] = {"id": 7, "email": "ann@example.com", "first_name": "",
                                                  "last_name": ""}   # as older Label Studio versions export it
    bad = tmp_path / "export.json"
    bad.write_text(json.dumps(tasks))
    result = import_export(db, bad, LABELS, document_root=root)
    assert result.errors == [
        "task 101, annotation 201 by labelstudio:1: unknown label 'rottenblu' (did you mean 'rottenblue'?); "
        "known: freshred, freshgreen, rottenblue",
        "task 102, annotation 203 by labelstudio:2: several choices (freshred, freshgreen); an audit is one label",
        f"task 103: image '/data/local-files/?d=../../etc/passwd' is outside the document root {root}",
        "task 104: unknown item sha256 ffffffffffff… (not in the database)",
    ]
    assert not result.written and _audits(db) == []
    partial = import_export(db, bad, LABELS, document_root=root, partial=True)
    assert [(a[0], a[2], a[3]) for a in _audits(db)] == [
        (2, "rottenblue", "labelstudio:1"), (6, "freshred", "labelstudio:1"),
        (6, "freshgreen", "labelstudio:ann@example.com")]
    assert partial.inserted == 3


def test_not_an_export_is_one_clear_error(tmp_path, exported_line):
    db, _, _ = exported_line
    minimal = tmp_path / "min.json"
    minimal.write_text(json.dumps([{"image": "x.jpg", "label": [{"choices": ["freshred"]}]}]))  # JSON_MIN
    with pytest.raises(LabelStudioError, match="not a Label Studio JSON export"):
        import_export(db, minimal, LABELS)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(LabelStudioError, match="not JSON"):
        import_export(db, broken, LABELS)


def test_local_file_urls_never_leave_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "a b").mkdir(parents=True)
    (root / "a b" / "x&y.jpg").write_bytes(b"1")
    (tmp_path / "secret.jpg").write_bytes(b"2")
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    assert path_from_url("/data/local-files/?d=a%20b/x%26y.jpg", root) == (root / "a b" / "x&y.jpg").resolve()
    assert "outside the document root" in str(path_from_url("/data/local-files/?d=link.jpg", root))
    assert "outside the document root" in str(path_from_url("/data/local-files/?d=/../secret.jpg", root))
    assert "not a local-files URL" in str(path_from_url("https://example.com/x.jpg", root))


@pytest.fixture
def sampled(tmp_path):
    """A real line: three watch items and a camera snapshot, drawn whole by `audit sample` under the root."""
    root = tmp_path / "root"
    path = tmp_path / "sorter.db"
    db = store.open_writer(path)
    specs = [("freshred", 0.91, "fresh", "img001.jpg"), ("freshgreen", 0.62, "fresh", "img 002&b.jpg"),
             ("rottenblue", 0.88, "rotten", "img003.jpg")]
    items = []
    for i, (label, conf, verdict, name) in enumerate(specs, start=1):
        photo = write_colour_jpeg(tmp_path / "out" / verdict / label / name, COLOUR[label], seed=i)
        sha = hashlib.sha256(photo.read_bytes()).hexdigest()
        items.append((_insert(db, sha, label, conf, verdict, photo), sha, label, conf, verdict, name))
    snap = write_colour_jpeg(tmp_path / "snapshots" / "2026-01-10" / "101010_000000-4-uncertain-freshred.jpg",
                             "red", seed=4)
    snap_id = _insert(db, None, "freshred", 0.41, "uncertain", snap, source="camera", source_path="0#17")
    items.append((snap_id, hashlib.sha256(snap.read_bytes()).hexdigest(), "freshred", 0.41, "uncertain", snap.name))
    db.close()
    out = root / "audits" / "s1"
    result = sample(path, out, 10, (NOW - timedelta(days=1)).isoformat(timespec="milliseconds"),
                    NOW.isoformat(timespec="milliseconds"), LABELS, seed=1)
    assert result.drawn == 4
    return path, root, out, items


def test_a_sample_becomes_the_exact_tasks_json_and_config(sampled):
    db, root, out, items = sampled
    result = export_sample(db, out, root, LABELS)
    assert (result.tasks, result.pre_annotated, result.errors) == (4, 4, [])
    quoted = {"img 002&b.jpg": "img%20002%26b.jpg"}
    assert json.loads((out / TASKS).read_text()) == [
        {"data": {"image": f"/data/local-files/?d=audits/s1/{item_id:06d}-{quoted.get(name, name)}",
                  "sha256": sha, "item_id": item_id, "file": f"{item_id:06d}-{name}", "verdict": verdict},
         "predictions": [{"model_version": "fruit-lite1-int8@5d1c0a9e7b21", "score": conf, "result": [
             {"id": f"item{item_id}", "from_name": "label", "to_name": "image", "type": "choices",
              "value": {"choices": [label]}}]}]}
        for item_id, sha, label, conf, verdict, name in items]
    assert (out / CONFIG).read_text() == (
        '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
        '  <Choices name="label" toName="image" choice="single" showInLine="true" required="true">\n'
        '    <Choice value="freshred"/>\n    <Choice value="freshgreen"/>\n    <Choice value="rottenblue"/>\n'
        "  </Choices>\n</View>\n")


def test_round_trip_export_label_import(sampled):
    """Tasks as Label Studio stores them after people label them (annotations added, ids given) come back
    as audits of the very items exported, the camera snapshot (no recorded hash) included."""
    db, root, out, items = sampled
    export_sample(db, out, root, LABELS)
    tasks = json.loads((out / TASKS).read_text())
    truth = ["freshred", "rottenblue", "rottenblue", "rottenblue"]
    for n, (task, label) in enumerate(zip(tasks, truth, strict=True), start=1):
        task.update(id=n, annotations=[{"id": 100 + n, "completed_by": 3, "was_cancelled": False,
                                        "created_at": "2026-01-11T08:00:00Z", "updated_at": f"2026-01-11T08:00:0{n}Z",
                                        "result": [{"value": {"choices": [label]}, "id": "x", "from_name": "label",
                                                    "to_name": "image", "type": "choices", "origin": "manual"}]}])
    labelled = out / "export.json"
    labelled.write_text(json.dumps(tasks))
    result = import_export(db, labelled, LABELS)
    assert (result.errors, result.notes, result.inserted) == ([], [], 4)
    assert [(a[0], a[2], a[3], a[4]) for a in _audits(db)] == [
        (item[0], label, "labelstudio:3", f"2026-01-11T08:00:0{n}.000+00:00")
        for n, (item, label) in enumerate(zip(items, truth, strict=True), start=1)]


def test_export_refuses_a_sample_outside_the_root_and_a_changed_copy(sampled, tmp_path):
    db, root, out, items = sampled
    with pytest.raises(LabelStudioError, match="is not under the document root"):
        export_sample(db, out, tmp_path / "elsewhere", LABELS)
    write_colour_jpeg(out / f"{items[0][0]:06d}-img001.jpg", "green", seed=50)
    result = export_sample(db, out, root, LABELS)
    assert result.errors == [f"row 2: '{items[0][0]:06d}-img001.jpg' changed since it was sampled "
                             "(its hash is not the one in sample.csv)"]
    assert not (out / TASKS).exists()


def test_labeling_config_escapes_labels():
    assert '<Choice value="a&amp;b"/>' in labeling_config(["a&b"])


def test_cli_export_and_import(sampled, tmp_path):
    db, root, out, _ = sampled
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    write_card(model, ModelCard(name="m", labels=LABELS, rotten_labels=["rottenblue"],
                                input={"height": 32, "width": 32}, quantization="int8"))
    result = runner.invoke(app, ["audit", "export-labelstudio", str(out), "--db", str(db), "--model", str(model)],
                           env={"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root)})
    assert result.exit_code == 0, result.output
    assert f"wrote 4 tasks (4 pre-annotated) to {out / TASKS}" in result.output
    tasks = json.loads((out / TASKS).read_text())
    tasks[0].update(id=9, annotations=[{"id": 1, "completed_by": 2, "was_cancelled": True, "result": []}])
    tasks[1].update(id=10, annotations=[{"id": 2, "completed_by": 2, "updated_at": "2026-01-11T08:00:00Z",
                                         "result": [{"type": "choices", "from_name": "label", "to_name": "image",
                                                     "value": {"choices": ["rottenblue"]}}]}])
    labelled = tmp_path / "export.json"
    labelled.write_text(json.dumps(tasks))
    result = runner.invoke(app, ["audit", "import-labelstudio", str(labelled), "--db", str(db), "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert "task 9, annotation 1 by labelstudio:2: skipped in Label Studio (was_cancelled)" in result.output
    assert "imported: 1 new, 0 changed, 0 unchanged, 3 skipped, 0 errors" in result.output


def test_a_task_only_skipped_needs_no_known_item(exported_line, tmp_path):
    """Skipping a photo in Label Studio is never an error, even for a photo this database does not hold."""
    db, root, _ = exported_line
    tasks = json.loads(EXPORT.read_text())
    tasks[3]["data"]["sha256"] = "e" * 64   # task 104: its one annotation was cancelled
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    result = import_export(db, export, LABELS, document_root=root)
    assert result.errors == [] and result.inserted == 5
    assert result.notes[0] == "task 104, annotation 205 by labelstudio:1: skipped in Label Studio (was_cancelled)"
