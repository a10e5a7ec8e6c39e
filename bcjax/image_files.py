"""Image files from users: finding them (files, folders, globs) and reading any common format as RGB.

PNG, JPEG, GIF (its first frame), TIFF, BMP and WebP are read with Pillow; EXIF orientation is
applied, palette, grey and 16-bit images become 8-bit RGB, and transparency is composed over
white. Every way a file can fail to be an image ends in an `ImageFileError` whose message is the
reason a report shows beside the path.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp", ".webp")
_GLOB_CHARACTERS = set("*?[")


class ImageFileError(ValueError):
    """A path that gives no image; the message is the reason, e.g. 'empty file'."""


def find_images(arguments: Iterable[str]) -> list[tuple[str, str | None]]:
    """(path, None) for every image a file, folder (recursive, image suffixes only) or glob names,
    in order, each once; (argument, reason) for what names none (a missing path, an unreadable folder)."""
    found: dict[str, str | None] = {}
    for argument in arguments:
        if os.path.isdir(argument):
            found.update(_folder_images(argument))
        elif os.path.exists(argument):
            found.setdefault(argument, None)
        elif _GLOB_CHARACTERS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            for match in matches:
                found.update(_folder_images(match) if os.path.isdir(match) else {match: None})
            if not matches:
                found[argument] = "no file matches this pattern"
        else:
            found[argument] = "missing: no such file or folder"
    return list(found.items())


def _folder_images(folder: str) -> dict[str, str | None]:
    """The image files below `folder`, sorted; an unreadable folder is a failure of its own."""
    found: dict[str, str | None] = {}

    def unreadable(error: OSError) -> None:
        found[error.filename or folder] = f"unreadable folder ({error.strerror or error})"

    for root, folders, files in os.walk(folder, onerror=unreadable):
        folders.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES):
                found[os.path.join(root, name)] = None
    return found


def read_rgb(path: str) -> np.ndarray:
    """The image at `path` as uint8 (H, W, 3) RGB, upright; an ImageFileError saying why not."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageFileError("empty file")
        with Image.open(path) as image:
            return to_rgb(image)
    except FileNotFoundError as error:
        raise ImageFileError("missing: no such file") from error
    except IsADirectoryError as error:
        raise ImageFileError("a folder, not a file") from error
    except PermissionError as error:
        raise ImageFileError(f"unreadable file ({error.strerror})") from error
    except UnidentifiedImageError as error:
        raise ImageFileError(f"not an image (none of Pillow's formats; images are {_suffixes()})") from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageFileError):
            raise
        raise ImageFileError(f"truncated or corrupt image ({error})") from error


def to_rgb(image: Image.Image) -> np.ndarray:
    """An opened Pillow image (its current frame: the first of a GIF) as upright uint8 RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit grey (and PNG's 32-bit 'I' mode for it)
        grey = np.asarray(image, np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _suffixes() -> str:
    return ", ".join(s.removeprefix(".") for s in IMAGE_SUFFIXES)
