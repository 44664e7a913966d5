"""Secrets inside URLs: masked wherever a URL is shown (check-config, logs, errors);
and a command's secret read from its file or the environment, never its arguments.

A URL may carry a credential in its userinfo (`https://user:pw@host/`, or a bare
token as the user: `https://TOKEN@host/`) or in a query parameter (`?token=...`,
`?api_key=...`, `?X-Amz-Signature=...`). The host, path and other parameters stay
readable: they are what an operator needs to tell which endpoint is meant.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

MASK = "***"
# Query (and fragment) parameter names that carry credentials; over-masking is harmless.
SECRET_PARAM = re.compile(r"token|key|secret|sig|passw|pwd|auth|credential|session", re.I)
# A URL inside free text (a log message, an exception): scheme://, then anything up to
# whitespace or a quote.
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>`]+")


def _mask_params(part: str) -> str:
    pieces = part.split("&")
    for i, piece in enumerate(pieces):
        name, eq, value = piece.partition("=")
        if eq and value and SECRET_PARAM.search(unquote(name)):
            pieces[i] = f"{name}={MASK}"
    return "&".join(pieces)


def mask_url(url: str) -> str:
    """`url` with its userinfo password (or bare userinfo token) and the values of
    credential-like query parameters replaced by ***; anything else unchanged."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: show nothing after the scheme
        return url.split("://", 1)[0] + "://" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    query = _mask_params(parts.query) if parts.query else ""
    fragment = _mask_params(parts.fragment) if parts.fragment else ""
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    # Rebuilt by hand, not urlunsplit: it would drop an empty "?" or re-quote.
    out = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query or "?" in url.split("#", 1)[0]:
        out += "?" + query
    if parts.fragment or url.endswith("#"):
        out += "#" + fragment
    return out


def url_secrets(url: str) -> list[str]:
    """The credentials inside `url` (as written and unquoted), for the log filter to
    mask by value wherever they appear, URL or not."""
    if "://" not in url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    for part in (parts.query, parts.fragment):
        for piece in part.split("&") if part else ():
            name, eq, value = piece.partition("=")
            if eq and value and SECRET_PARAM.search(unquote(name)):
                found.append(value)
    return [v for s in found if s for v in {s, unquote(s)}]


def mask_urls(text: str) -> str:
    """Every URL found in free text masked as by `mask_url`."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)


def read_secret(
    path: Path | None, option: str, env: str, missing: str, error: type[Exception]
) -> bytes:
    """The secret in `path` (given as `option`), else in the environment variable `env`
    (a secret on the command line is visible in `ps`); `error` when there is none."""
    if path is None:
        secret = os.environ.get(env, "").encode()
    else:
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise error(f"{option}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise error(f"{missing}: set {env} or {option}")
    return secret
