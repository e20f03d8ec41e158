"""Credentials out of anything shown or stored: `rtsp://user:secret@cam/` → `rtsp://user:***@cam/`.

Why one module: a camera URL or a webhook URL travels far (logs, the database, reports, MQTT and
webhook payloads, /status, a command's environment). Each place calls `mask_url` on what it
shows, and the log formatters run `mask_text` over every line as a last net for messages that
quote a URL (an FFmpeg or urllib error, say). The plain URL stays only where a connection is made.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"
# scheme://user:password@ inside free text (an unescaped '@' in the password is taken in too)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:?#]*)(?P<password>:[^\s/?#]*)?@")
# a query parameter that carries a credential by convention (webhook services, camera firmwares)
_QUERY_SECRET = re.compile(r"(?P<name>[?&;][^=&\s#]*(?:pass|pwd|secret|token|key|auth|sig|credential|session)"
                           r"[^=&\s#]*=)[^&\s#]+", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL without its secrets (password, lone user token, secret-looking query values).

    Anything that is not a URL (a device index `0`, a file path) comes back unchanged, so every
    place that shows a camera device can call this without asking what kind it is.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not parseable as a URL (a bad port, say): the text rules still apply
        return mask_text(url)
    query = _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", f"?{parts.query}")[1:]
    if "@" not in parts.netloc and query == parts.query:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = (f"{parts.username}:{MASK}@" if password is not None else f"{MASK}@") + netloc
    return parts._replace(netloc=netloc, query=query).geturl()


def mask_text(text: str) -> str:
    """Every URL credential inside free text (a log line, an error message) masked."""
    if "://" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user'] + ':' if m['password'] else ''}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)
