"""POST each decision as JSON to a URL (basic auth from the URL, or a bearer token)."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, model_validator

from sorter.outputs.base import OutputConfig
from sorter.redact import mask_url
from sorter.secrets import read_secret, reveal


class Config(OutputConfig):
    """`[outputs.webhook]`: anything but a 2xx answer in time is a failure (retried)."""

    type: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://")
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout_seconds: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _token(self) -> Config:
        read_secret(self, "token")
        try:
            netloc = urlsplit(self.url).netloc
            urlsplit(self.url).port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"url {mask_url(self.url)}: {exc}") from exc
        if "@" in netloc and self.token is not None:
            raise ValueError("url has user:password@ (sent as basic auth) and a token is set: give one of them")
        return self


def build(config: Config) -> WebhookOutput:
    return WebhookOutput(config.url, config.timeout_seconds, reveal(config.token))


def split_credentials(url: str) -> tuple[str, str | None]:
    """`https://user:pass@host/x` → (`https://host/x`, "Basic …"); urllib would take `user:pass@host`
    for the host name and never deliver. A URL without credentials comes back with None."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return bare, "Basic " + base64.b64encode(pair.encode()).decode()


class WebhookOutput:
    """POST the decision as JSON; anything but 2xx (or no answer in time) is a failure.

    Credentials in the URL (`https://user:pass@host/hook`) are sent as HTTP basic auth, a `token`
    as a bearer token (not both); the name shown in logs and /status is the masked URL."""

    def __init__(self, url: str, timeout_seconds: float = 2.0, token: str | None = None):
        self.url, basic = split_credentials(url)
        self.timeout, self.name = timeout_seconds, f"webhook {mask_url(url)}"
        self._headers = {"Content-Type": "application/json"}
        if token and basic:
            raise ValueError("webhook: credentials in the URL and a token: give one of them")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif basic:
            self._headers["Authorization"] = basic

    def send(self, event: dict[str, Any]) -> None:
        headers = self._headers
        if key := event.get("idempotency_key"):  # the same decision sent twice carries the same key
            headers = {**headers, "Idempotency-Key": str(key)}
        request = urllib.request.Request(self.url, data=json.dumps(event).encode(), method="POST",
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # raises on 4xx/5xx
            response.read()

    def close(self) -> None:
        pass
