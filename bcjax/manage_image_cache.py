"""Lists and removes decoded-image caches: `python -m bcjax.manage_image_cache --cache_dir=DIR`.

A run keeps its decoded images in `<data_dir>/bcjax_image_cache` (or `data.image_cache_dir`), one
folder per dataset and preprocessing (bcjax.image_cache); they are never removed on their own.

    python -m bcjax.manage_image_cache --cache_dir=~/tensorflow_datasets/bcjax_image_cache
    python -m bcjax.manage_image_cache --cache_dir=DIR --remove=KEY_ID [--remove=KEY_ID ...]
    python -m bcjax.manage_image_cache --cache_dir=DIR --remove_all
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags

from bcjax import image_cache

_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "The cache folder (a run's data.image_cache_dir).", required=True)
_REMOVE = flags.DEFINE_multi_string("remove", [], "Removes the cache of this key id (the listing's first column).")
_REMOVE_ALL = flags.DEFINE_bool("remove_all", False, "Removes every cache in --cache_dir.")


def describe(entry: image_cache.CacheEntry) -> str:
    key = entry.key
    size = f"{key['height']}x{key['width']}"
    stain = "" if key["stain_normalization"] == "none" else f", {key['stain_normalization']} stains"
    what = f"{key['dataset']} at {size}{stain}"
    return f"{entry.folder.name}  {entry.bytes / 2**20:10.1f} MiB  {entry.images} images  {what}"


def main(argv: list[str]) -> None:
    del argv
    root = os.path.expanduser(_CACHE_DIR.value)
    entries = {entry.folder.name: entry for entry in image_cache.list_caches(root)}
    unknown = [name for name in _REMOVE.value if name not in entries]
    if unknown:
        sys.exit(f"error: no cache {', '.join(unknown)} in {root}; run without --remove to list them")
    doomed = list(entries) if _REMOVE_ALL.value else _REMOVE.value
    for name in doomed:
        shutil.rmtree(entries.pop(name).folder)
        print(f"removed {name}")
    for entry in entries.values():
        print(describe(entry))
    total = sum(entry.bytes for entry in entries.values())
    print(f"{len(entries)} caches, {total / 2**20:.1f} MiB in {root}")


if __name__ == "__main__":
    app.run(main)
