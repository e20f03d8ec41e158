"""report.html: self-contained, phone-sized, and rendered by headless Chromium without console errors."""

from __future__ import annotations

import json
import re
import struct
import subprocess
from pathlib import Path

import pytest

from sorter.report import ReportOptions, build_report, generate
from sorter.report_html import CHECK_JS, render
from tests.report_helpers import HI, LO, build_db, card

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


def chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    """One headless run with its own profile; console messages go to stderr as INFO:CONSOLE lines."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = ["nice", str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture
def written(tmp_path):
    db = build_db(tmp_path)
    return generate(db, tmp_path / "rep", LO, HI, card(0.9), ReportOptions(min_audited=5))


def test_page_is_self_contained_and_phone_ready(written):
    pytest.importorskip("matplotlib", reason="the page's five plots need matplotlib (pip install 'sorter[report]')")
    page = (written.folder / "report.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "@media (max-width:600px)" in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 5 + 3  # five plots (accuracy per model version the fifth), three wrong items' thumbnails
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from anywhere
    assert 'id="headline-accuracy" data-value="0.625">62.5%<' in page
    assert "below the model card" in page  # the drift flag is shown


def test_empty_report_renders_without_plots(tmp_path):
    db = build_db(tmp_path)
    report = build_report(db, LO.replace(year=2025), HI.replace(year=2025))
    page = render(report)
    assert report["audit"]["accuracy"] is None and 'data-value="None">—<' in page
    assert "<img" not in page and "no drift flag" in page


@needs_chromium
def test_chromium_renders_it_without_console_errors_and_the_headline_matches(written, tmp_path):
    page = written.folder / "report.html"
    run = chromium(page, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert console_lines(run.stderr) == []
    assert '<body data-broken-images="0">' in run.stdout  # the page's own check ran: every image decoded
    value, shown = re.search(r'id="headline-accuracy" data-value="([^"]+)">([^<]+)<', run.stdout).groups()
    accuracy = json.loads((written.folder / "report.json").read_text())["audit"]["accuracy"]
    assert float(value) == accuracy == 0.625 and shown == f"{accuracy:.1%}"
    assert run.stdout.count("<figure>") == 3

    shot = tmp_path / "report.png"
    run = chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=420,2000", "--hide-scrollbars")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (420, 2000)
    assert len(data) > 20_000  # a real page, not a blank canvas


@needs_chromium
def test_the_console_check_would_catch_a_broken_image(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(f'<!doctype html><body><img src="data:image/png;base64,AAAA"><script>{CHECK_JS}</script>')
    run = chromium(page, tmp_path, "--virtual-time-budget=3000", "--dump-dom")
    assert any("broken images: 1" in line for line in console_lines(run.stderr)), run.stderr[-2000:]
    assert 'data-broken-images="1"' in run.stdout
