"""One file over HTTP(S): streamed with a progress line, resumed after an interruption, checked
against its published hash, and never present under its final name unless complete and checked.

The bytes go to `NAME.partial` beside the destination; an interrupted transfer continues from
there with an HTTP Range request (from the start when the server ignores Range), within this call
and on the next one; a file whose hash differs is deleted. Only then is it renamed to NAME.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

CHUNK = 1 << 20
TIMEOUT_S = 60  # per blocking read: a stalled server ends the attempt, which is then resumed
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadError(Exception):
    """A download that did not give the published file; `no_file` when the server could not be
    reached or did not serve it (so the way out is another source), rather than a broken transfer."""

    def __init__(self, message: str, *, no_file: bool = False):
        super().__init__(message)
        self.no_file = no_file


class _Interrupted(Exception):
    """The transfer ended before the file did; what is written stays in NAME.partial."""


def download(
    url: str,
    destination: Path,
    *,
    algorithm: str | None,
    expected: str | None,
    attempts: int = 3,
    out: TextIO = sys.stderr,
) -> None:
    """Writes the file at `url` to `destination` once its `algorithm` hex digest starts with `expected`.

    With no published hash (`algorithm` None), a sha256 the server states in `X-Linked-Etag` (the
    Hugging Face Hub's Git LFS oid) is checked instead, when it sends one. Raises DownloadError.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    stated_sha256 = None
    for attempt in range(1, attempts + 1):
        try:
            stated_sha256 = _fetch(url, partial, out) or stated_sha256
            break
        except _Interrupted as e:
            if attempt == attempts:
                raise DownloadError(
                    f"{url}: {e} after {attempts} attempts; {partial} is kept, run again to resume"
                ) from None
            print(f"{e}; resuming ({attempt + 1}/{attempts})", file=out)
    if algorithm is None and stated_sha256:
        algorithm, expected = "sha256", stated_sha256
    if algorithm is not None:
        _check(partial, url, algorithm, expected)
    os.replace(partial, destination)


def hex_digest(path: Path, algorithm: str) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _check(partial: Path, url: str, algorithm: str, expected: str) -> None:
    digest = hex_digest(partial, algorithm)
    if not digest.startswith(expected):
        partial.unlink()
        raise DownloadError(
            f"{url}: the file's {algorithm} is {digest}, the published one {expected}; deleted it. "
            "Run again to download it anew; if the same happens, the server serves another file."
        )


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the `X-Linked-Etag` of a redirect: the Hub states the sha256 there, the CDN it points to does not."""

    stated: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.stated = headers.get("X-Linked-Etag", self.stated)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, partial: Path, out: TextIO) -> str | None:
    """One request, appended to `partial` when the server resumes it; the sha256 it states, if any.

    Raises _Interrupted when the bytes stop before the length the server announced.
    """
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    redirects = _RecordRedirects()
    try:
        response = urllib.request.build_opener(redirects).open(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing after `offset`: the partial file is whole; the hash decides
            return None
        raise DownloadError(f"{url}: the server answered {e.code} {e.reason}", no_file=True) from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {getattr(e, 'reason', e)}", no_file=True) from None
    with response:
        stated = response.headers.get("X-Linked-Etag") or redirects.stated
        if response.status != 206:
            offset = 0  # the server sends the whole file: start again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        progress = _Progress(partial.name.removesuffix(".partial"), offset, total, out)
        with partial.open("ab" if offset else "wb") as f:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    progress.update(len(chunk))
            except (http.client.HTTPException, OSError) as e:
                progress.end()
                raise _Interrupted(f"the transfer broke at {progress.done:,} bytes ({e})") from None
    progress.end()
    if total is not None and progress.done < total:
        raise _Interrupted(f"the transfer stopped at {progress.done:,} of {total:,} bytes")
    stated = (stated or "").strip('"').removeprefix("W/").strip('"')
    return stated if _SHA256.fullmatch(stated) else None


class _Progress:
    """'NAME: 45.2 of 97.8 MB (46%), 12.3 MB/s' on stderr: rewritten in place on a terminal, a line
    every few seconds in a log."""

    def __init__(self, name: str, done: int, total: int | None, out: TextIO):
        self.name, self.done, self.total, self.out = name, done, total, out
        self.start_done, self.start = done, time.monotonic()
        self.tty = out.isatty()
        self.every_s = 0.2 if self.tty else 5.0
        self.shown = self.start

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.shown >= self.every_s:
            self.shown = now
            print(self.line(now), end="\r" if self.tty else "\n", file=self.out, flush=True)

    def end(self) -> None:
        print(self.line(time.monotonic()), file=self.out, flush=True)

    def line(self, now: float) -> str:
        mb_s = (self.done - self.start_done) / 1e6 / max(now - self.start, 1e-9)
        size = f"{self.done / 1e6:.1f} MB"
        if self.total:
            size = f"{self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB ({100 * self.done / self.total:.0f}%)"
        return f"{self.name}: {size}, {mb_s:.1f} MB/s"
