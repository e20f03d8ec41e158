"""`sorter classify`: JSON lines, errors that do not stop the run, the table, and no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from sorter.cli import app
from tests.conftest import COLOR_INT8, REPO


def _files(tmp_path, colour_jpeg):
    nested = tmp_path / "in" / "nested"
    paths = [colour_jpeg(tmp_path / "in" / "a_red.jpg", "red"),
             colour_jpeg(nested / "b_blue.jpg", "blue"),
             colour_jpeg(nested / "c_grey.jpg", "grey")]
    (tmp_path / "in" / "d_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "in" / "notes.txt").write_text("not an image and not an image name: skipped in folders")
    return paths


def test_json_lines_for_a_folder_with_a_broken_file(tmp_path, colour_jpeg):
    _files(tmp_path, colour_jpeg)
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "in"), "--model", str(COLOR_INT8), "--json"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in rows}
    assert set(by_name) == {"a_red.jpg", "b_blue.jpg", "c_grey.jpg", "d_broken.jpg"}
    assert (by_name["a_red.jpg"]["label"], by_name["a_red.jpg"]["verdict"]) == ("freshred", "fresh")
    assert (by_name["b_blue.jpg"]["label"], by_name["b_blue.jpg"]["verdict"]) == ("rottenblue", "rotten")
    assert by_name["c_grey.jpg"]["verdict"] == "uncertain"
    assert set(by_name["a_red.jpg"]) == {"path", "label", "confidence", "verdict", "scores"}
    assert set(by_name["d_broken.jpg"]) == {"path", "error"}
    assert result.exit_code == 1


def test_classify_reads_files_as_watch_does_no_symlink_nothing_over_max_file_bytes(tmp_path, colour_jpeg):
    """A link to a file outside the folder and a file over max_file_bytes are refused with watch's reasons,
    the good file is classified (the old code followed the link and read any size into memory)."""
    good = colour_jpeg(tmp_path / "in" / "a_red.jpg", "red")
    secret = colour_jpeg(tmp_path / "elsewhere" / "secret.jpg", "blue")
    (tmp_path / "in" / "link.jpg").symlink_to(secret)
    big = tmp_path / "in" / "big.jpg"
    big.write_bytes(good.read_bytes() + b"\0" * 5000)
    config = tmp_path / "sorter.toml"
    config.write_text(f"max_file_bytes = {good.stat().st_size + 100}\n")
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "in"), str(tmp_path / "in" / "link.jpg"),
                                      "--model", str(COLOR_INT8), "--json", "--config", str(config)])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = [(r["path"].rsplit("/", 1)[1], r.get("verdict"), r.get("error")) for r in rows]
    assert sorted(by_name) == [
        ("a_red.jpg", "fresh", None),
        ("big.jpg", None, f"too-large: {big.stat().st_size:,} bytes (max_file_bytes {good.stat().st_size + 100:,})"),
        ("link.jpg", None, "symlink: not followed (name the file it points to)"),
        ("link.jpg", None, "symlink: not followed (name the file it points to)")]
    assert result.exit_code == 1


def test_all_good_files_exit_zero_and_print_a_table(tmp_path, colour_jpeg):
    red = colour_jpeg(tmp_path / "red.jpg", "red")
    result = CliRunner().invoke(app, ["classify", str(red), "--model", str(COLOR_INT8)])
    assert result.exit_code == 0
    assert "freshred" in result.stdout and "fresh" in result.stdout


def test_per_class_threshold_from_config_makes_items_uncertain(tmp_path, colour_jpeg):
    red = colour_jpeg(tmp_path / "red.jpg", "red")
    config = tmp_path / "sorter.toml"
    config.write_text('[min_confidence]\nfreshred = 0.999\n')
    result = CliRunner().invoke(app, ["classify", str(red), "--model", str(COLOR_INT8), "--json",
                                      "--config", str(config)])
    assert json.loads(result.stdout)["verdict"] == "uncertain"


def test_missing_model_is_one_line(tmp_path, colour_jpeg):
    red = colour_jpeg(tmp_path / "red.jpg", "red")
    result = CliRunner().invoke(app, ["classify", str(red), "--model", str(tmp_path / "gone.tflite")])
    assert result.exit_code == 2
    assert "gone.tflite" in result.output and "Traceback" not in result.output


def test_runtime_never_imports_tensorflow_or_training(tmp_path, colour_jpeg):
    red = colour_jpeg(tmp_path / "red.jpg", "red")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sorter.cli import app\n"
        f"r = CliRunner().invoke(app, ['classify', {str(red)!r}, '--model', {str(COLOR_INT8)!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'freshred' in r.stdout\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'training'))\n"
        "print('IMPORTED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "IMPORTED []" in out.stdout
