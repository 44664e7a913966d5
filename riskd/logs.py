"""Logging setup: one event per line, text or JSON, never secrets.

Events carry their subject as fields (`extra=`): `market`, `reason`, `venue`,
`publisher`, ... In JSON each is a key of the event object; in text they follow the
message as `key=value`. Secrets never reach the output: the values of configured
secrets are masked wherever they appear, and so is any field whose name says it
holds one. Credentials inside URLs (`user:pw@`, `?token=`) are masked in every
message, field and traceback, configured or not (riskd/secrets.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

from riskd.secrets import mask_urls

# Attributes every LogRecord has; anything else was passed with `extra=` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_KEY = re.compile(r"secret|token|password|passwd|authorization|api_?key", re.I)
MASK = "***"


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event's extra fields."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update(fields(record))
        if record.exc_info:
            event["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = fields(record)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


class RedactSecrets(logging.Filter):
    """Masks secret values, and credentials inside URLs, in the message, its arguments,
    the extra fields and the traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return mask_urls(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        for key, value in fields(record).items():
            if _SECRET_KEY.search(key):
                setattr(record, key, MASK)
            elif isinstance(value, str):
                setattr(record, key, self._mask(value))
        if record.exc_info:
            # The traceback may quote a secret: render it now, masked (formatters use it).
            record.exc_text = self._mask(logging.Formatter().formatException(record.exc_info))
        return True


def setup(level: str = "info", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
