"""`python -m bcjax.datasets.synthetic`: writes a synthetic tree and prints what it wrote."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from bcjax.datasets.breakhis import ARCHIVE_NAME, PUBLISHED_PATIENTS, TOP_DIR

from .layout import IMAGE_SIZE, MAGNIFICATION_POWERS
from .writer import SyntheticSummary, write_breakhis_tree

_DESCRIPTION = (
    "Write a BreakHis-shaped tree of synthetic H&E-like images, OUT/BreaKHis_v1/histology_slides/breast/"
    "{benign,malignant}/SOB/<type>/<patient>/<mag>X/SOB_*.png, with the real archive's naming quirks "
    "(DC/LC twin slide 14-13412, suffix siblings, year-15 slide, 700x456 images, non-image files). "
    "Same flags and seed give byte-identical files."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the tree the flags ask for and prints its summary; bad flags exit with a usage error."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        summary = write_breakhis_tree(
            args.out,
            patients=args.patients,
            images_per_magnification=args.images_per_magnification,
            magnifications=args.magnifications,
            image_size=args.image_size,
            seed=args.seed,
            tar=args.tar,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    _print_summary(summary)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bcjax.datasets.synthetic",
        description=_DESCRIPTION,
        epilog="example: python -m bcjax.datasets.synthetic --out /tmp/breakhis --patients 2 "
        "--images-per-magnification 4 --image-size 175x115 --tar",
    )
    add = parser.add_argument
    add("--out", required=True, type=Path, metavar="DIR", help="folder to write BreaKHis_v1/ (and the .tar.gz) into")
    published = ", ".join(f"{code} {n}" for code, n in PUBLISHED_PATIENTS.items())
    add(
        "--patients",
        type=_patients_arg,
        default="full",
        metavar="full|N",
        help=f"'full' for the real {sum(PUBLISHED_PATIENTS.values())} patient folders ({published}), or N "
        "patients per tumour type; the quirk folders are always written, so a type may get more (default: full)",
    )
    add(
        "--images-per-magnification",
        type=int,
        default=3,
        metavar="N",
        help="images per patient and magnification (default: 3)",
    )
    add(
        "--magnifications",
        type=int,
        nargs="+",
        choices=MAGNIFICATION_POWERS,
        default=list(MAGNIFICATION_POWERS),
        metavar="MAG",
        help=f"subset of {' '.join(map(str, MAGNIFICATION_POWERS))} (default: all four)",
    )
    add(
        "--image-size",
        type=_size_arg,
        default=IMAGE_SIZE,
        metavar="WxH",
        help="width x height; ~3%% of images are 456/460 as high (default: 700x460)",
    )
    add("--seed", type=int, default=0, help="random seed (default: 0)")
    add("--tar", action="store_true", help=f"also write OUT/{ARCHIVE_NAME} (top folder {TOP_DIR}/)")
    add("--overwrite", action="store_true", help="replace an existing OUT/BreaKHis_v1 and archive")
    add("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def _patients_arg(text: str) -> str | int:
    if text == "full":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'full' or an integer >= 1, got {text!r}")


def _size_arg(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 700x460, got {text!r}")
    return int(match[1]), int(match[2])


def _print_summary(summary: SyntheticSummary) -> None:
    rate = summary.num_images / max(summary.seconds, 1e-9)
    print(summary.table())
    print(
        f"\n{summary.num_images} SOB images, {sum(summary.patients.values())} patient folders, "
        f"{summary.bytes_written / 1e6:.1f} MB written in {summary.seconds:.1f} s ({rate:.0f} images/s)"
    )
    print(f"tree: {summary.root}" + (f"\narchive: {summary.tar_path}" if summary.tar_path else ""))
    print("quirks:\n" + "\n".join(f"  - {q}" for q in summary.quirks))
