"""Secrets never leave the process: credentials in tracking URIs are masked in everything printed,
logged, tagged or written.

A tracking URI may carry a password (``http://user:password@host``, ``postgresql://u:pw@db``)
and MLflow reads ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN`` from the environment.
privbench needs them to talk to the store, and nowhere else: a secret printed in a line, a link,
a log, a param, a tag or an artifact (``report.html`` is uploaded to the tracking server) is
readable by everyone who can read that output or that server.

:func:`redact` masks the password of every ``scheme://user:password@`` in a text and every
secret registered with :func:`register` (or found in the environment); :func:`guard` wraps this
process's stdout and stderr, and the handlers of the root logger, so that nothing printed gets
through unmasked, including lines MLflow itself prints ("View run ... at: URL").
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from typing import Iterator, Optional
from urllib.parse import unquote, urlsplit

MASK = "***"

# scheme://user:password@ (the password may hold anything but '@', '/' and white space)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):(?P<pw>[^\s/@]+)@")
# environment variables whose value is a credential (MLflow's documented client settings)
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_CLIENT_CERT_KEY")
_registered: set[str] = set()


def _secrets() -> list[str]:
    """Every secret to mask, longest first (a password that contains another stays masked whole);
    values shorter than 4 characters are left alone (masking 'a' would mangle every line)."""
    found = set(_registered)
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value:
            found.add(value)
    found.update(_uri_secrets(os.environ.get("MLFLOW_TRACKING_URI", "")))
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def _uri_secrets(uri: str) -> set[str]:
    """The password of a URI, as written and percent-decoded."""
    if not uri or "@" not in uri:
        return set()
    try:
        pw = urlsplit(uri).password
    except ValueError:
        pw = None
    if not pw:
        m = _USERINFO.search(uri)
        pw = m.group("pw") if m else None
    return {pw, unquote(pw)} if pw else set()


def register(uri_or_secret: Optional[str]) -> None:
    """Remember the password of a tracking URI (or a bare secret) so that :func:`redact` masks it
    wherever it appears, even outside a URI."""
    if not uri_or_secret:
        return
    if "://" in uri_or_secret:
        _registered.update(_uri_secrets(uri_or_secret))
    else:
        _registered.add(uri_or_secret)


def forget() -> None:
    """Drop the registered secrets (tests)."""
    _registered.clear()


def redact(text: str) -> str:
    """``text`` with every URI password and every known secret replaced by ``***``."""
    if not text:
        return text
    out = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    for secret in _secrets():
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def mask_uri(uri: str) -> str:
    """A tracking URI fit to print: its password masked (the user name stays, to say who)."""
    return redact(uri)


def strip_credentials(uri: str) -> str:
    """``uri`` without its ``user:password@`` part (for links: the browser asks for them itself)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


class RedactingStream(io.TextIOBase):
    """A text stream that masks secrets in what is written through it and forwards the rest
    (``isatty``, ``fileno``, ``encoding`` ...) to the stream it wraps, so progress bars still work."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")

    def __getattr__(self, name):
        return getattr(self._stream, name)


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's final message (its arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose args do not fit its format: leave it to the handler
            return True
        masked = redact(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_text is None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _excepthook(kind, value, tb) -> None:
    """An uncaught exception's traceback, masked (it is printed after :func:`guard` has ended)."""
    import traceback

    sys.__stderr__.write(redact("".join(traceback.format_exception(kind, value, tb))))


@contextlib.contextmanager
def guard(*uris: Optional[str]) -> Iterator[None]:
    """Register the passwords of ``uris`` and mask secrets in this process's stdout, stderr and
    root-logger handlers until the block ends (the CLI wraps each command in it)."""
    for uri in uris:
        register(uri)
    out, err = sys.stdout, sys.stderr
    wrapped_out = out if isinstance(out, RedactingStream) else RedactingStream(out)
    wrapped_err = err if isinstance(err, RedactingStream) else RedactingStream(err)
    filt = RedactingFilter()
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(filt)
    sys.stdout, sys.stderr = wrapped_out, wrapped_err
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    try:
        yield
    finally:
        # restore only what this block replaced (a test harness may have swapped them meanwhile)
        if sys.stdout is wrapped_out:
            sys.stdout = out
        if sys.stderr is wrapped_err:
            sys.stderr = err
        for h in handlers:
            h.removeFilter(filt)
