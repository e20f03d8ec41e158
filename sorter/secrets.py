"""Secret settings: read from a file next to the key (systemd credentials, Docker secrets), revealed only
where they are used (a connection), never printed (`SecretStr` masks them in dumps and logs)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, SecretStr

M = TypeVar("M", bound=BaseModel)


def reveal(secret: SecretStr | None) -> str | None:
    """The plain value, only at the point of use (a connection), never for printing."""
    return secret.get_secret_value() if secret else None


def read_secret(model: M, key: str) -> M:
    """`<key>_file` fills `<key>` from a file (systemd credentials, Docker secrets): never in the TOML."""
    path = getattr(model, f"{key}_file")
    if path is None:
        return model
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{key}_file {path}: {exc.strerror}") from exc
    current = getattr(model, key)
    if current is not None and current.get_secret_value() != secret:  # re-validation passes both
        raise ValueError(f"set {key} or {key}_file, not both")
    setattr(model, key, SecretStr(secret))
    return model
