"""Published ImageNet weights by name, downloaded, checked and converted once, then reused.

    python -m bcjax.weight_hub list                        # every name, its architecture, file and hash
    python -m bcjax.weight_hub fetch torchvision:resnet50  # download and convert now

`--config.model.init_from=torchvision:resnet50` does the same at the start of a run
(`resolve`). The cache folder is $BCJAX_WEIGHTS_CACHE, else ~/.cache/bcjax/weights
($XDG_CACHE_HOME/bcjax/weights):

    downloads/FILE                         the published file, checked against its published hash
    converted/SOURCE-NAME-VERSION/         `python -m bcjax.convert` output (VERSION: hash prefix or Hub tag)
    converted/.SOURCE-NAME-VERSION.lock    held while one process downloads and converts

$BCJAX_WEIGHTS_MIRROR (a base URL) replaces the publishers' servers with one serving the same file
names, e.g. for a cluster without internet access. Every process of a run resolves the name; the
lock (flock, which NFS v4 and Lustre honour) lets one of them download and convert while the others
wait, then they read the same folder. A file under downloads/ is used as it is (checked first), so
one fetched by hand is picked up.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import bcjax
from bcjax import http_download
from bcjax.pretrained import ConversionError
from bcjax.published_weights import PUBLISHED, Published, lookup

CACHE_ENV = "BCJAX_WEIGHTS_CACHE"
MIRROR_ENV = "BCJAX_WEIGHTS_MIRROR"


class WeightDownloadError(ConversionError):
    """Published weights that could not be fetched or converted; the message says what to do."""


def cache_dir() -> Path:
    """$BCJAX_WEIGHTS_CACHE, else bcjax's weights folder under $XDG_CACHE_HOME (~/.cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bcjax" / "weights"


def download_url(entry: Published) -> str:
    """The publisher's URL, or the same file name on $BCJAX_WEIGHTS_MIRROR."""
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{entry.file_name}" if mirror else entry.url


def converted_dir(entry: Published) -> Path:
    return cache_dir() / "converted" / f"{entry.source}-{entry.name}-{entry.version}"


def resolve(spec: str, *, out: TextIO = sys.stderr) -> Path:
    """The converted folder of the published weights `spec` ("SOURCE:NAME"), made once and reused."""
    try:
        entry = lookup(spec)
    except ValueError as e:
        raise WeightDownloadError(str(e)) from None
    target = converted_dir(entry)
    if (target / "metadata.json").is_file():
        return target
    with _locked(target.with_name(f".{target.name}.lock"), spec, out):
        if not (target / "metadata.json").is_file():  # another process may have made it meanwhile
            _convert(entry, fetch_file(entry, out=out), target, out)
    return target


def fetch_file(entry: Published, *, out: TextIO = sys.stderr) -> Path:
    """The published file in downloads/, downloaded unless it is there already; checked either way."""
    path = cache_dir() / "downloads" / entry.file_name
    if path.is_file():
        _check_present(entry, path)
        return path
    url = download_url(entry)
    print(f"downloading {entry.spec} from {url}", file=out)
    try:
        http_download.download(url, path, algorithm=entry.hash_algorithm, expected=entry.hash_prefix, out=out)
    except http_download.DownloadError as e:
        raise WeightDownloadError(_by_hand(entry, path, e) if e.no_file else str(e)) from None
    return path


def _check_present(entry: Published, path: Path) -> None:
    if entry.hash_algorithm is None:
        return
    digest = http_download.hex_digest(path, entry.hash_algorithm)
    if not digest.startswith(entry.hash_prefix):
        raise WeightDownloadError(
            f"{path}: its {entry.hash_algorithm} is {digest}, the published one for {entry.spec} is "
            f"{entry.hash_prefix}; delete the file and run again to download it"
        )


def _by_hand(entry: Published, path: Path, error: Exception) -> str:
    """What to do when no server gives the file: fetch it elsewhere, then let bcjax or the user convert it."""
    folder = f"weights/{entry.source}-{entry.name}"
    hashed = f" ({_hash_text(entry)})" if entry.hash_algorithm else ""
    return (
        f"cannot download {entry.spec}: {error}\n"
        f"Offline? On a machine with internet access download\n"
        f"  {entry.url}{hashed}\n"
        f"as {entry.file_name}, then either copy it to {path} (it is checked and converted on the next run), "
        "or convert it yourself:\n"
        f"  python -m bcjax.convert --source={entry.source} --input={entry.file_name} --output={folder} "
        f"--arch={entry.arch}\n"
        f"and pass --config.model.init_from={folder}. A server with the same file names can stand in for "
        f"the publishers': {MIRROR_ENV}=URL."
    )


def _hash_text(entry: Published) -> str:
    """'md5 <digest>', or 'sha256 starting <digits>' for torchvision's prefixes."""
    whole = hashlib.new(entry.hash_algorithm).digest_size * 2 == len(entry.hash_prefix)
    return f"{entry.hash_algorithm} {'' if whole else 'starting '}{entry.hash_prefix}"


@contextlib.contextmanager
def _locked(path: Path, spec: str, out: TextIO) -> Iterator[None]:
    """Holds an exclusive flock on `path`; says so when another process holds it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process preparing {spec} (it holds {path})", file=out)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert(entry: Published, weights: Path, target: Path, out: TextIO) -> None:
    """`python -m bcjax.convert` in a process of its own: on the CPU (the run may hold the
    accelerators), outside the run's jax.distributed (orbax would wait for the other processes)."""
    command = [
        sys.executable,
        "-m",
        "bcjax.convert",
        f"--source={entry.source}",
        f"--input={weights}",
        f"--output={target}",
        f"--arch={entry.arch}",
    ]
    package_root = str(Path(bcjax.__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath}
    print(f"converting {weights.name} into {target}", file=out)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise WeightDownloadError(f"{entry.spec}: {' '.join(command)} failed:\n{result.stderr.strip()[-3000:]}")


# ---------------------------------------------------------------------------------------
# Command line.


def _list(out: TextIO) -> None:
    for entry in PUBLISHED.values():
        hashed = _hash_text(entry) if entry.hash_algorithm else "no published hash"
        named = "" if entry.url.endswith(f"/{entry.file_name}") else f"  (cache and mirror name: {entry.file_name})"
        print(f"{entry.spec:36} {entry.arch} ({entry.layout})  {hashed}\n    {entry.url}{named}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: 0 when done; 1 with one `error:` block on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m bcjax.weight_hub", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the published weights bcjax knows")
    fetch = commands.add_parser("fetch", help="download and convert now")
    fetch.add_argument("names", nargs="+", metavar="SOURCE:NAME")
    args = parser.parse_args(argv)
    if args.command == "list":
        _list(sys.stdout)
        return 0
    try:
        for spec in args.names:
            print(f"{spec}: {resolve(spec)}  (--config.model.init_from={spec})")
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
