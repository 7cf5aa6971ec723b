"""Shard sets that live elsewhere: ``http(s)://``, ``s3://``, ``gs://`` and WebDataset's ``pipe:`` form.

A shard set path is a base: the manifest and every shard are named ``base/NAME`` (:func:`join`). Shards are read as
byte streams straight into the tar reader, never copied to local disk first. Each stream is opened lazily, inside the
process that reads it, so every DataLoader worker opens its own connections (nothing that holds a socket is pickled).

Transient errors (connection reset or refused, HTTP 5xx / 408 / 429, a body shorter than its Content-Length, a read
that waits longer than the timeout, a pipe that exits non-zero) are retried with exponential backoff, a bounded number
of times per shard; then the read fails for good and the stream skips and counts the shard like a damaged one.

**Where a retry resumes.** The stream resumes at the byte it had reached: HTTP asks for ``Range: bytes=N-`` (a server
that ignores it answers 200 with the whole body, whose first N bytes are then read and dropped), fsspec seeks, and a
pipe or object-store command line reruns and drops N bytes. The tar reader above never sees the failure, so a retried
shard gives each of its samples exactly once, in order: the same samples (and, in training, the same batches) as an
uninterrupted read. The alternatives lose samples (retry only before the first sample) or must re-read and re-parse
the shard to skip what was already given (skip by sample count). A resumed body must belong to the same object: a
different size or ETag than the first response stops the read instead of splicing two versions.

``s3://`` / ``gs://`` go through fsspec when its backend is installed (``pip install 'tessera-audio[s3]'`` or
``[gs]``), else through the usual command-line clients, ``aws s3 cp URL -`` and ``gsutil cat URL``.
``pipe:CMD`` runs ``CMD`` in a shell and reads its standard output; ``{}`` in ``CMD`` stands for the file name
(``pipe:curl -s -f https://host/set/{}``); without ``{}`` the name is appended as ``/NAME`` (``pipe:cat /data/set``).
"""
from __future__ import annotations

import dataclasses
import functools
import http.client
import io
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO, Callable, Optional, Protocol

from launch.common.errors import BadInput

log = logging.getLogger(__name__)

SCHEMES = ("http://", "https://", "s3://", "gs://", "pipe:")
"""Path prefixes read through this module; anything else is a local path (``file://`` is stripped)."""
MAX_BACKOFF_S = 60.0
"""No single wait between retries is longer than this (the doubling is capped)."""
CLIENTS = {"s3": ["aws", "s3", "cp", "{url}", "-"], "gs": ["gsutil", "cat", "{url}"]}
"""Object-store command-line clients that write an object to standard output (used when fsspec cannot)."""
_BUFFER = 1 << 20  # bytes read from the network per call: large reads keep Python's per-call cost off the profile


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How hard a remote read tries (from ``data.stream.read_retries``, ``retry_backoff_s``, ``read_timeout_s``)."""

    retries: int = 5
    """Retries per shard or manifest after transient errors (0: fail at the first)."""
    backoff_s: float = 0.5
    """Wait before the first retry; doubled for each next one (capped at :data:`MAX_BACKOFF_S`)."""
    timeout_s: float = 60.0
    """Seconds a connect or a read may wait for data before it counts as a transient failure."""


def backoff_delays(policy: RetryPolicy) -> list[float]:
    """The waits before retries 1..n: ``backoff_s * 2**k``, capped (exponential backoff without jitter: each shard
    is one reader, so there is no herd to spread)."""
    return [min(MAX_BACKOFF_S, policy.backoff_s * 2.0**k) for k in range(policy.retries)]


# ----------------------------------------------------------------------------------------------------------------------
# Names


def is_remote(path: str) -> bool:
    """Whether ``path`` is read through this module (a URL or ``pipe:``), not opened as a local file."""
    return str(path).startswith(SCHEMES)


def local_path(path: str) -> str:
    """A local path, with a ``file://`` prefix removed."""
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, name: str) -> str:
    """The file ``name`` of the shard set at ``base`` (a folder, URL or ``pipe:`` command)."""
    if base.startswith("pipe:"):
        return base.replace("{}", name) if "{}" in base else f"{base.rstrip('/')}/{name}"
    if base.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(base)  # keep a query (a token) after the file name
        path = parts.path.rstrip("/") + "/" + urllib.parse.quote(name)
        return urllib.parse.urlunsplit(parts._replace(path=path))
    if is_remote(base):
        return f"{base.rstrip('/')}/{name}"
    return os.path.join(local_path(base), name)


def base_name(base: str) -> str:
    """The last folder name of ``base`` (``http://host/sets/tones/`` -> ``tones``), to name the set in logs and batch
    metadata exactly as the same folder on local disk is named."""
    if base.startswith("pipe:"):
        words = base[len("pipe:"):].split()
        word = next((w for w in words if "{}" in w), words[-1] if words else "pipe")
        base = word.split("{}")[0]
    elif is_remote(base):
        base = urllib.parse.urlsplit(base).path or base
    return os.path.basename(local_path(base).rstrip("/")) or base


# ----------------------------------------------------------------------------------------------------------------------
# Errors


class RemoteError(OSError):
    """A remote read that failed for good: a permanent answer (HTTP 404) or transient errors past the retries."""

    def __init__(self, url: str, reason: str, *, missing: bool = False, attempts: int = 1):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.missing, self.attempts = url, reason, missing, attempts


class TransientError(OSError):
    """A failure worth retrying that the transport did not raise itself (a short body, a failed pipe)."""


def is_transient(exc: BaseException) -> bool:
    """Retry connection errors, timeouts, broken or short bodies and server-side HTTP errors; not a 4xx answer, a
    missing object or a bad URL (those do not get better by asking again)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    if isinstance(exc, (RemoteError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(exc, (OSError, http.client.HTTPException))


def reason(exc: BaseException) -> str:
    """A short cause for a log line or an error message."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return reason(exc.reason) if isinstance(exc.reason, BaseException) else str(exc.reason)
    if isinstance(exc, (TimeoutError, ConnectionError)) or not str(exc):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc)


# ----------------------------------------------------------------------------------------------------------------------
# Transports: each opens a body at a byte offset


class Body(Protocol):
    """One response being read: ``size`` (total bytes, when known), ``identity`` (an ETag or similar)."""

    size: Optional[int]
    identity: Optional[str]

    def readinto(self, b: memoryview) -> int: ...

    def close(self) -> None: ...


def _drop(body: Body, n: int) -> None:
    """Read and discard the first ``n`` bytes (resuming where the transport cannot seek)."""
    scratch = memoryview(bytearray(min(n, _BUFFER)))
    while n > 0:
        got = body.readinto(scratch[: min(n, len(scratch))])
        if not got:
            raise TransientError(f"the body ended {n} bytes before the resume offset")
        n -= got


def _drop_or_close(body: Body, n: int) -> None:
    """:func:`_drop`, closing the body when that fails (its caller never gets it to close)."""
    try:
        _drop(body, n)
    except BaseException:
        body.close()
        raise


class _HttpBody:
    """``GET`` with ``Range: bytes=N-`` for a resume (urllib: proxies from the environment, redirects, https)."""

    def __init__(self, url: str, offset: int, timeout: float):
        headers = {"User-Agent": f"tessera (pid {os.getpid()})"}  # the pid: a server log shows which worker asked
        if offset:
            headers["Range"] = f"bytes={offset}-"
        self.size: Optional[int] = None
        try:
            self.response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # nothing left past the offset: the reset came after the last byte
                self.response, self.identity, self.size = None, None, offset
                e.close()
                return
            raise
        headers = self.response.headers
        self.identity = headers.get("ETag") or headers.get("Last-Modified")
        if self.response.status == 206:
            start, _, total = (headers.get("Content-Range") or "").removeprefix("bytes ").partition("/")
            if start.split("-")[0] != str(offset):
                self.close()
                raise TransientError(f"asked for bytes {offset}- and got {headers.get('Content-Range')!r}")
            self.size = int(total) if total.isdigit() else None
        else:
            length = headers.get("Content-Length")
            self.size = int(length) if length and length.isdigit() and not headers.get("Content-Encoding") else None
            if offset:  # the server ignored the Range header and sends the whole body
                _drop_or_close(self, offset)

    def readinto(self, b) -> int:
        if self.response is None:
            return 0
        # read1: one recv at most. readinto would fill all of ``b`` through the socket's buffered file, and a reset or
        # timeout would then lose what had already arrived (the resume would restart further back)
        data = self.response.read1(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.response is not None:
            self.response.close()


class _PipeBody:
    """The standard output of a command (``pipe:`` or an object-store client), read with a timeout per read."""

    def __init__(self, command: str | list[str], offset: int, timeout: float):
        self.command, self.timeout, self.size, self.identity = command, timeout, None, None
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty command can never block on it
        self.proc = subprocess.Popen(command, shell=isinstance(command, str), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.stderr, bufsize=0, start_new_session=True)
        if offset:
            _drop_or_close(self, offset)

    def readinto(self, b) -> int:
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], self.timeout)[0]:
            raise TimeoutError(f"no output for {self.timeout:g} s")
        data = os.read(fd, len(b))
        b[: len(data)] = data
        if not data:
            try:
                status = self.proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"closed its output but still runs after {self.timeout:g} s") from None
            if status != 0:
                self.stderr.seek(0)
                said = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
                raise TransientError(f"{self._name()} exited with status {status}" + (f": {said[-1]}" if said else ""))
        return len(data)

    def _name(self) -> str:
        return self.command if isinstance(self.command, str) else " ".join(self.command)

    def close(self) -> None:
        if self.proc.poll() is None:  # stopped early (eval range ends, shard skipped): end the command's group
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


class _FsspecBody:
    """An fsspec file (s3fs, gcsfs), seeked to the offset (timeouts are the backend's own settings)."""

    def __init__(self, url: str, offset: int, timeout: float):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        self.file = fs.open(path, "rb", block_size=_BUFFER)
        self.size = getattr(self.file, "size", None)
        details = getattr(self.file, "details", None) or {}
        self.identity = details.get("ETag") or details.get("etag") or details.get("md5Hash")
        try:
            self.file.seek(offset)
        except BaseException:
            self.file.close()
            raise

    def readinto(self, b) -> int:
        return self.file.readinto(b)

    def close(self) -> None:
        self.file.close()


@functools.lru_cache(maxsize=None)
def _fsspec_has(protocol: str) -> bool:
    """Whether fsspec and its backend for ``protocol`` (s3fs, gcsfs) are installed."""
    try:
        import fsspec

        fsspec.get_filesystem_class(protocol)
        return True
    except (ImportError, ValueError):
        return False


def opener(url: str) -> Callable[[int, float], Body]:
    """``open(offset, timeout) -> Body`` for a remote ``url``; :class:`BadInput` when nothing installed can read it."""
    if url.startswith(("http://", "https://")):
        return functools.partial(_HttpBody, url)
    if url.startswith("pipe:"):
        return functools.partial(_PipeBody, url[len("pipe:"):])
    protocol = url.split("://", 1)[0]
    if protocol not in CLIENTS:
        raise BadInput(f"{url}: unknown scheme; expected a folder or an http://, https://, s3://, gs:// or pipe: URL")
    if _fsspec_has(protocol):
        return functools.partial(_FsspecBody, url)
    command = [word.replace("{url}", url) for word in CLIENTS[protocol]]
    if shutil.which(command[0]) is None:
        raise BadInput(f"{url}: reading {protocol}:// needs fsspec with its backend (pip install "
                       f"'tessera-audio[{protocol}]') or the {command[0]!r} command line client on PATH")
    return functools.partial(_PipeBody, command)


# ----------------------------------------------------------------------------------------------------------------------
# The resuming stream


class ResumableStream(io.RawIOBase):
    """A remote file read front to back; a transient error re-opens it at the byte reached (see the module docstring),
    at most ``policy.retries`` times in all. Past them, and after a permanent error, every read raises
    :class:`RemoteError` (the tar reader then ends the shard, and the stream counts it)."""

    def __init__(self, url: str, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        self.url, self.policy, self.sleep = url, policy, sleep
        self._open = opener(url)
        self._body: Optional[Body] = None
        self._failed: Optional[RemoteError] = None
        self.position, self.retried = 0, 0
        self.size: Optional[int] = None
        self.identity: Optional[str] = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._failed is not None:
            raise RemoteError(self.url, self._failed.reason, missing=self._failed.missing,
                              attempts=self._failed.attempts)
        delays = backoff_delays(self.policy)
        while True:
            try:
                if self._body is None:
                    self._body = self._open(self.position, self.policy.timeout_s)
                    self._same_object(self._body)
                n = self._body.readinto(b)
                if not n and len(b) and self.size is not None and self.position < self.size:
                    raise TransientError(f"the body ended early ({self.size} bytes expected)")
                self.position += n
                return n
            except Exception as e:  # noqa: BLE001 - classified below: retried, or ends the shard
                self._close_body()
                attempts = self.retried + 1
                if not is_transient(e):
                    missing = isinstance(e, FileNotFoundError) or getattr(e, "code", None) in (403, 404, 410)
                    self._failed = e if isinstance(e, RemoteError) else RemoteError(self.url, reason(e),
                                                                                    missing=missing, attempts=attempts)
                    raise self._failed from None
                if self.retried >= len(delays):
                    self._failed = RemoteError(self.url, f"{reason(e)} (gave up after {attempts} attempts)",
                                               attempts=attempts)
                    raise self._failed from None
                log.warning("%s: %s at byte %d; retry %d of %d in %.2g s", self.url, reason(e), self.position,
                            attempts, len(delays), delays[self.retried])
                self.sleep(delays[self.retried])
                self.retried += 1

    def _same_object(self, body: Body) -> None:
        """The first body fixes the size and identity; a resumed one must match them (else the object changed)."""
        if self.position == 0 or (self.size is None and self.identity is None):
            self.size, self.identity = body.size, body.identity
            return
        changed = (body.size is not None and self.size is not None and body.size != self.size) or (
            body.identity is not None and self.identity is not None and body.identity != self.identity)
        if changed:
            raise RemoteError(self.url, f"changed while being read (size {self.size} -> {body.size}, "
                                        f"identity {self.identity} -> {body.identity})", attempts=self.retried + 1)

    def _close_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may itself fail; nothing to keep
                pass
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


def open_stream(url: str, policy: RetryPolicy) -> BinaryIO:
    """A readable binary stream of ``url``: a local file as it is, a remote one through :class:`ResumableStream`.
    Nothing is opened for a remote ``url`` until the first read (so this is cheap, and happens in the reader)."""
    if not is_remote(url):
        return open(local_path(url), "rb")
    return io.BufferedReader(ResumableStream(url, policy), buffer_size=_BUFFER)


def fetch(url: str, policy: RetryPolicy) -> bytes:
    """The whole file at ``url`` (a manifest), with retries; raises :class:`RemoteError` when it cannot be read."""
    with open_stream(url, policy) as stream:
        return stream.read()


__all__ = ["RemoteError", "RetryPolicy", "base_name", "backoff_delays", "fetch", "is_remote", "is_transient", "join",
           "open_stream", "opener"]
