"""Reading users' image files (`bcjax.image_files`): every format and pixel mode as RGB, and a reason for
every file or folder that gives no image."""

import os

import numpy as np
import pytest
from PIL import Image

from bcjax.image_files import ImageFileError, find_images, read_rgb

RGB = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
# JPEG keeps smooth images close: a colour gradient, asymmetric so that a wrong turn shows.
_Y, _X = np.mgrid[0:40, 0:60]
SMOOTH = np.stack([_X * 4, _Y * 6, 255 - _X * 2 - _Y], -1).astype(np.uint8)


@pytest.mark.parametrize("suffix", ["png", "bmp", "tiff", "webp", "gif"])
def test_lossless_formats_read_back_the_same_pixels(tmp_path, suffix):
    """PNG, BMP, TIFF, lossless WebP exactly; GIF through its palette: an image of at most 256 colours, exactly."""
    image = Image.fromarray(RGB)
    if suffix == "gif":
        image = image.quantize(256)
    expected = np.asarray(image.convert("RGB"))
    path = tmp_path / f"image.{suffix}"
    image.save(path, **({"lossless": True} if suffix == "webp" else {}))
    np.testing.assert_array_equal(read_rgb(str(path)), expected)


def test_jpeg_and_the_first_frame_of_an_animated_gif(tmp_path):
    Image.fromarray(SMOOTH).save(tmp_path / "image.jpg", quality=95)
    assert np.abs(read_rgb(str(tmp_path / "image.jpg")).astype(int) - SMOOTH).mean() < 2
    frames = [Image.new("RGB", (60, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(read_rgb(str(tmp_path / "anim.gif"))[0, 0], (255, 0, 0))


def test_grey_palette_16_bit_and_transparent_images_become_rgb(tmp_path):
    grey = RGB[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_rgb(str(tmp_path / "grey.png")), np.repeat(grey[..., None], 3, -1))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # 16-bit: k * 257 -> k
    np.testing.assert_array_equal(read_rgb(str(tmp_path / "grey16.png")), np.repeat(grey[..., None], 3, -1))
    palette = Image.fromarray(RGB).quantize(64)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_rgb(str(tmp_path / "palette.png")), np.asarray(palette.convert("RGB")))
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    rgba[:, :30, 3] = 0  # left half transparent: white
    rgba[:, 30:, 3] = 128  # right half: half over white
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    pixels = read_rgb(str(tmp_path / "rgba.png")).astype(int)
    assert (pixels[:, :30] == 255).all()
    assert np.abs(pixels[:, 30:] - (RGB[:, 30:].astype(int) * 128 + 255 * 127) / 255).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    """A camera JPEG stored sideways with Orientation 6 (turn 90 degrees clockwise to view) reads upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(SMOOTH).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    upright = read_rgb(str(tmp_path / "sideways.jpg"))
    assert upright.shape == (60, 40, 3)
    assert np.abs(upright.astype(int) - np.rot90(SMOOTH, -1)).mean() < 2


def test_every_bad_file_has_its_reason(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "good.png").read_bytes()[:200])
    for name, reason in [
        ("missing.png", "missing"),
        ("empty.png", "empty file"),
        ("notes.png", "not an image"),
        ("truncated.png", "truncated or corrupt image"),
    ]:
        with pytest.raises(ImageFileError, match=reason):
            read_rgb(str(tmp_path / name))


def test_find_images_walks_folders_and_globs_and_names_what_it_cannot_read(tmp_path, monkeypatch):
    """Folders recursively (image suffixes only, sorted), globs, plain files of any suffix; a missing path, a
    pattern matching nothing and an unreadable folder each come back with their reason."""
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "locked").mkdir()
    for name in ("a/2.png", "a/1.JPG", "a/deep/3.gif", "a/Thumbs.db", "x.tif"):
        (tmp_path / name).write_bytes(b"?")
    real_scandir = os.scandir

    def scandir(path="."):  # a folder this user may not list (root reads every folder, so it is simulated)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = find_images(
        [
            str(tmp_path / "a"),
            str(tmp_path / "*.tif"),
            str(tmp_path / "a" / "Thumbs.db"),
            str(tmp_path / "nothing.png"),
            str(tmp_path / "*.webp"),
            str(tmp_path / "locked"),
        ]
    )
    assert found == [
        (str(tmp_path / "a" / "1.JPG"), None),
        (str(tmp_path / "a" / "2.png"), None),
        (str(tmp_path / "a" / "deep" / "3.gif"), None),
        (str(tmp_path / "x.tif"), None),
        (str(tmp_path / "a" / "Thumbs.db"), None),  # named on its own: tried, and reported if no image
        (str(tmp_path / "nothing.png"), "missing: no such file or folder"),
        (str(tmp_path / "*.webp"), "no file matches this pattern"),
        (str(tmp_path / "locked"), "unreadable folder (Permission denied)"),
    ]
