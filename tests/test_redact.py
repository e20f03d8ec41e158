"""Credentials never shown or stored: the masking rules, config show, logs, the command's environment,
and webhook URLs with user:password@ (delivered with basic auth, over a real local receiver)."""

from __future__ import annotations

import base64
import json
import logging
import sys

import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.config import ConfigError, OutputSettings, load_settings
from sorter.logs import JsonFormatter, TextFormatter
from sorter.outputs import CommandOutput, Dispatcher, WebhookOutput, build_outputs
from sorter.redact import mask_text, mask_url
from tests.http_helpers import Hook
from tests.watch_helpers import wait_for

pytestmark = pytest.mark.timeout(60)
SECRET = "s3cr3t-pw"
EVENT = {"item_id": 7, "device": "0", "verdict": "rotten", "label": "rottenblue", "confidence": 0.99}


@pytest.mark.parametrize(("url", "shown"), [
    (f"rtsp://admin:{SECRET}@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
    (f"rtsp://admin:{SECRET}@cam/live?channel=1&token=abc", "rtsp://admin:***@cam/live?channel=1&token=***"),
    (f"https://u:p%40{SECRET}@hooks.example/x#frag", "https://u:***@hooks.example/x#frag"),
    (f"https://{SECRET}@hooks.example/x", "https://***@hooks.example/x"),  # a lone user part is often a token
    (f"https://hooks.example/x?api_key={SECRET}&q=a+b", "https://hooks.example/x?api_key=***&q=a+b"),
    (f"rtsp://u:p@{SECRET}@cam/x", "rtsp://u:***@cam/x"),  # an unescaped @ in the password
    ("rtsp://cam.local:554/stream1", "rtsp://cam.local:554/stream1"),
    ("0", "0"), ("/videos/belt 1.mp4", "/videos/belt 1.mp4"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_mask_text_finds_urls_inside_messages():
    text = f"open rtsp://admin:{SECRET}@10.0.0.5/s failed; retry http://{SECRET}@h/x?token={SECRET}&n=2"
    assert mask_text(text) == "open rtsp://admin:***@10.0.0.5/s failed; retry http://***@h/x?token=***&n=2"


def test_log_formatters_mask_urls_even_in_tracebacks():
    try:
        raise OSError(f"cannot open rtsp://admin:{SECRET}@cam/live")
    except OSError:
        record = logging.LogRecord("sorter.camera", logging.ERROR, __file__, 1, "camera %s gone",
                                   (f"rtsp://admin:{SECRET}@cam/live",), sys.exc_info())
    for formatter in (TextFormatter("%(message)s"), JsonFormatter()):
        line = formatter.format(record)
        assert SECRET not in line and "rtsp://admin:***@cam/live" in line


def test_config_show_masks_camera_and_webhook_urls(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(f"[camera]\ndevice = 'rtsp://admin:{SECRET}@10.0.0.5/live'\n"
                    f"[outputs.webhook]\nurl = 'https://hook:{SECRET}@hooks.example/x?key={SECRET}'\n")
    result = CliRunner().invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    shown = json.loads(result.output)
    assert shown["camera"]["device"] == "rtsp://admin:***@10.0.0.5/live"
    assert shown["outputs"]["webhook"]["url"] == "https://hook:***@hooks.example/x?key=***"
    assert load_settings(path).camera.device == f"rtsp://admin:{SECRET}@10.0.0.5/live"  # the real one, to connect


def test_webhook_credentials_in_the_url_are_sent_as_basic_auth():
    hook = Hook()
    url = hook.url(f"ops:p%3A{SECRET}@")  # percent-escaped ':' in the password
    out = WebhookOutput(url, 2.0)
    dispatcher = Dispatcher([(out, ["rotten"])], retries=0)
    try:
        dispatcher.publish(EVENT)
        assert wait_for(lambda: len(hook.received) == 1, 10), dispatcher.stats()
    finally:
        dispatcher.close()
        hook.close()
    body, auth = hook.received[0]
    assert body == EVENT
    assert auth == "Basic " + base64.b64encode(f"ops:p:{SECRET}".encode()).decode()
    assert out.name == f"webhook http://ops:***@127.0.0.1:{hook.port}/hook"
    assert SECRET not in json.dumps(dispatcher.stats())


def test_webhook_url_credentials_and_a_token_together_are_refused(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(f"[outputs.webhook]\nurl = 'https://a:{SECRET}@h.example/x'\ntoken = 't'\n")
    with pytest.raises(ConfigError, match="basic auth") as info:
        load_settings(path)
    assert SECRET not in str(info.value)
    path.write_text(f"[outputs.webhook]\nurl = 'https://a:{SECRET}@h.example:port/x'\n")
    with pytest.raises(ConfigError, match=r"outputs\.webhook") as info:
        load_settings(path)
    assert SECRET not in str(info.value)


def _child_env(tmp_path, output: CommandOutput) -> dict[str, str]:
    out = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    output.argv = [sys.executable, "-c", script]
    output.send({**EVENT, "device": mask_url(f"rtsp://admin:{SECRET}@cam/live")})
    return json.loads(out.read_text())


def test_command_gets_only_the_environment_it_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("SORTER_OUTPUTS__MQTT__PASSWORD", SECRET)  # what deploy/README recommends
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("PLC_HOST", "10.0.0.9")
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    env = _child_env(tmp_path, CommandOutput(["x"]))
    assert SECRET not in json.dumps(env)
    assert "SORTER_OUTPUTS__MQTT__PASSWORD" not in env and "PLC_HOST" not in env
    assert env["SORTER_VERDICT"] == "rotten" and env["SORTER_DEVICE"] == "rtsp://admin:***@cam/live"
    assert env["PATH"] and env["LC_TIME"] == "C.UTF-8"


def test_pass_env_names_what_the_command_may_see(tmp_path, monkeypatch):
    monkeypatch.setenv("SORTER_OUTPUTS__MQTT__PASSWORD", SECRET)
    monkeypatch.setenv("PLC_HOST", "10.0.0.9")
    settings = OutputSettings.model_validate({"command": {"argv": ["x"], "pass_env": ["PLC_HOST"]}})
    [(output, _)] = build_outputs(settings)
    env = _child_env(tmp_path, output)  # type: ignore[arg-type]
    assert env["PLC_HOST"] == "10.0.0.9" and "SORTER_OUTPUTS__MQTT__PASSWORD" not in env


def test_command_line_errors_mask_urls(capsys):
    import typer

    from sorter.console import fail

    with pytest.raises(typer.Exit):
        fail(f"camera rtsp://admin:{SECRET}@10.0.0.5/live: could not open")
    err = capsys.readouterr().err
    assert SECRET not in err and "rtsp://admin:***@10.0.0.5/live" in err
