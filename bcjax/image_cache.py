"""Decoded images on disk, so a dataset is decoded once per machine, not once per run or fold.

A cache folder holds one subfolder per key, the key being everything that changes the decoded
bytes: the dataset (name, version and a fingerprint of its files), the working size, the resize,
the stain normalisation and its reference, and this format's version. A subfolder holds chunks:
each build writes the rows it had to decode as one chunk,

    <key id>/key.json                       what the key is (listed by `python -m bcjax.manage_image_cache`)
    <key id>/<chunk>.rows.npy               the table rows held, in order
    <key id>/<chunk>.images.npy             [rows, height, width, 3] uint8, read memory-mapped
    <key id>/<chunk>.json                   shapes and sha256 of both files; written last

Every file is written under a temporary name and renamed into place, and a chunk counts only once
its manifest exists, so a build that dies leaves nothing half-written in use. Two processes
building the same rows at once write two whole chunks (the same pixels twice), never one mixed
file. A chunk whose files do not match its manifest (truncated, overwritten, corrupt) is reported,
removed and decoded again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

FORMAT_VERSION = 1
DEFAULT_FOLDER = "bcjax_image_cache"  # under the data_dir, beside the prepared datasets
KEY_FILE = "key.json"
RECORDS_FILE = "records.json"  # the dataset's per-image metadata (bcjax.input_pipeline.read_table)
_MANIFEST_SUFFIX = ".json"


class ImageCacheError(OSError):
    """The cache folder cannot be written; the message says which setting to change."""


def key_id(key: Mapping[str, Any]) -> str:
    """The subfolder name of `key`: a digest of its canonical JSON."""
    return hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:20]


def dataset_fingerprint(dataset_dir: str | epath.Path) -> str:
    """A digest of a prepared TFDS dataset's files: their names, sizes and modification times.

    A rebuilt or replaced dataset gets a new fingerprint (and so a new cache) even where its
    images are unchanged; a wrong cache hit would be worse than a second decode.
    """
    digest = hashlib.sha256()
    for path in sorted(epath.Path(dataset_dir).iterdir()):
        if path.is_file():
            stat = os.stat(path)
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Held:
    """Where each cached row lies: parallel arrays sorted by row."""

    rows: np.ndarray
    chunks: list[np.ndarray]  # the memory-mapped images of every chunk
    chunk_of_row: np.ndarray
    position_of_row: np.ndarray

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The images of `rows` (all held), gathered into memory in that order."""
        where = np.searchsorted(self.rows, rows)
        chunk_of, position_of = self.chunk_of_row[where], self.position_of_row[where]
        chunks = np.unique(chunk_of)
        if len(chunks) == 1:  # one read from the file, straight into the result
            return np.take(self.chunks[chunks[0]], position_of, axis=0)
        images = np.empty((len(rows), *self.chunks[0].shape[1:]), np.uint8)
        for chunk in chunks:
            mine = chunk_of == chunk
            images[mine] = self.chunks[chunk][position_of[mine]]
        return images


class ImageCache:
    """The cache of one key under `root` (created on first use)."""

    def __init__(self, root: str | epath.Path, key: Mapping[str, Any]):
        self.key = {**key, "format_version": FORMAT_VERSION}
        self.folder = epath.Path(root) / key_id(self.key)
        # Chunks this object has checked against their manifests, or written: each is hashed once.
        self._sound: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not (self.folder / KEY_FILE).exists():
                _write_atomically(self.folder / KEY_FILE, lambda f: f.write(json.dumps(self.key, indent=2).encode()))
        except OSError as error:
            raise ImageCacheError(
                f"Cannot keep decoded images in {self.folder} ({type(error).__name__}: {error}). Set "
                "--config.data.image_cache_dir to a folder this process can write, or to 'none' to decode "
                "in memory every run."
            ) from None

    def held(self) -> Held | None:
        """Every row of every sound chunk (the first chunk holding a row wins); None when empty."""
        parts = [(rows, images, index) for index, (rows, images) in enumerate(self._sound_chunks())]
        if not parts:
            return None
        rows = np.concatenate([rows for rows, _, _ in parts])
        chunk_of = np.concatenate([np.full(len(rows), i, np.int64) for rows, _, i in parts])
        position_of = np.concatenate([np.arange(len(rows)) for rows, _, _ in parts])
        rows, first = np.unique(rows, return_index=True)
        return Held(rows, [images for _, images, _ in parts], chunk_of[first], position_of[first])

    def records(self) -> list[dict[str, Any]] | None:
        """The dataset's per-image metadata kept by `keep_records`, or None (never kept, or unreadable)."""
        path = self.folder / RECORDS_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as error:
            print(
                f"Decoded-image cache: {path} is unreadable ({error}); reading the dataset's table again.",
                file=sys.stderr,
            )
            return None

    def keep_records(self, records: list[dict[str, Any]]) -> None:
        """Keeps the dataset's per-image metadata, which otherwise costs a read of every record (PNGs included)."""
        _write_atomically(self.folder / RECORDS_FILE, lambda f: f.write(json.dumps(records).encode()))

    def add(self, rows: np.ndarray, images: np.ndarray) -> None:
        """Writes `rows` and their `images` as a new chunk, atomically (the manifest last)."""
        if not len(rows):
            return
        name = uuid.uuid4().hex
        files = {"rows": np.asarray(rows, np.int64), "images": np.ascontiguousarray(images, np.uint8)}
        manifest = {"count": len(rows), "image_shape": list(images.shape[1:])}
        for part, array in files.items():
            path = self.folder / f"{name}.{part}.npy"
            _write_atomically(path, lambda f, array=array: np.lib.format.write_array(f, array, allow_pickle=False))
            manifest[f"{part}_sha256"] = _sha256(path)
        _write_atomically(self.folder / f"{name}{_MANIFEST_SUFFIX}", lambda f: f.write(json.dumps(manifest).encode()))
        self._sound[name] = (files["rows"], np.load(self.folder / f"{name}.images.npy", mmap_mode="r"))

    def _sound_chunks(self):
        """(rows, memory-mapped images) of every chunk that matches its manifest; the others are removed.

        A chunk is hashed the first time this object sees it; a multi-host load asks three times.
        """
        for manifest_path in _manifests(self.folder):
            name = manifest_path.name.removesuffix(_MANIFEST_SUFFIX)
            if name in self._sound:
                yield self._sound[name]
                continue
            problem, chunk = _open_chunk(self.folder, name, manifest_path)
            if problem is None:
                self._sound[name] = chunk
                yield chunk
                continue
            print(
                f"Decoded-image cache: chunk {name} in {self.folder} is unusable ({problem}); "
                "removing it, its images are decoded again.",
                file=sys.stderr,
            )
            for path in (manifest_path, *(self.folder / f"{name}.{p}.npy" for p in ("rows", "images"))):
                path.unlink(missing_ok=True)


def _manifests(folder: epath.Path) -> list[epath.Path]:
    """The chunk manifests in `folder`: not the key, not a temporary file still being written."""
    paths = folder.glob(f"*{_MANIFEST_SUFFIX}")
    return sorted(p for p in paths if p.name not in (KEY_FILE, RECORDS_FILE) and not p.name.startswith(".tmp-"))


def _open_chunk(folder: epath.Path, name: str, manifest_path: epath.Path):
    """(None, (rows, images)) for a sound chunk, else (what is wrong, None)."""
    try:
        manifest = json.loads(manifest_path.read_text())
        arrays = {}
        for part in ("rows", "images"):
            path = folder / f"{name}.{part}.npy"
            if _sha256(path) != manifest[f"{part}_sha256"]:
                return f"{path.name} does not match its sha256", None
            arrays[part] = np.load(path, mmap_mode="r", allow_pickle=False)
        rows, images = arrays["rows"], arrays["images"]
        if len(rows) != manifest["count"] or images.shape != (manifest["count"], *manifest["image_shape"]):
            return "its shapes do not match its manifest", None
        return None, (np.asarray(rows), images)
    except (OSError, ValueError, KeyError) as error:  # missing, truncated or unreadable file, bad JSON
        return f"{type(error).__name__}: {error}", None


def _sha256(path: epath.Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_atomically(path: epath.Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, then renamed to `path` (atomic on POSIX)."""
    temporary = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- listing and removing


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    folder: epath.Path
    key: dict[str, Any]
    images: int
    bytes: int


def list_caches(root: str | epath.Path) -> list[CacheEntry]:
    """Every key's folder under `root`, with its image count and size on disk."""
    root = epath.Path(root)
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        key_path = folder / KEY_FILE
        if not key_path.exists():
            continue
        count = sum(json.loads(m.read_text()).get("count", 0) for m in _manifests(folder))
        size = sum(os.stat(p).st_size for p in folder.iterdir() if p.is_file())
        entries.append(CacheEntry(folder, json.loads(key_path.read_text()), count, size))
    return entries
