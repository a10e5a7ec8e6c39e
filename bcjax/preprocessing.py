"""What a run does to an image before the model sees it, recorded in the workdir (`preprocessing.json`).

The resize to the working resolution, the stain normalisation (Macenko, with its reference stains)
and the normaliser (its numbers: the z-score statistics of that run's training images included).
Training and prediction both go through `Preprocessing.pixels` and `Preprocessing.normalizer`,
so an image file is prepared for prediction exactly as the run prepared its own images.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np
from etils import epath

from bcjax.augment import MACENKO_REFERENCE_MAX_CONCENTRATIONS, MACENKO_REFERENCE_STAINS
from bcjax.decoding import RESIZE, prepare_pixels
from bcjax.normalization import Normalizer
from bcjax.workdir_guard import PREPROCESSING_FILE

if TYPE_CHECKING:
    from bcjax.input_pipeline import InputConfig


class PreprocessingNotRecordedError(FileNotFoundError):
    """The workdir has no preprocessing.json; the message says how to write it."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    height: int
    width: int
    stain_normalization: str  # 'none' or 'macenko'
    normalizer: Normalizer  # uint8 pixels -> model inputs, on the device

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB of any size -> uint8 at the working resolution, stain-normalised if the run was."""
        return prepare_pixels(rgb, self.height, self.width, self.stain_normalization)

    def to_json(self) -> dict[str, Any]:
        record = {
            "height": self.height,
            "width": self.width,
            "resize": RESIZE,
            "stain_normalization": self.stain_normalization,
            "normalizer": self.normalizer.to_json(),
        }
        if self.stain_normalization == "macenko":
            record["macenko_reference"] = {
                "stains": MACENKO_REFERENCE_STAINS.tolist(),
                "max_concentrations": MACENKO_REFERENCE_MAX_CONCENTRATIONS.tolist(),
            }
        return record

    @classmethod
    def of_input(cls, config: InputConfig, normalizer: Normalizer) -> Preprocessing:
        """A run's preprocessing: its input config's resolution and stain normalisation, its final normaliser."""
        return cls(config.height, config.width, config.stain_normalization, normalizer)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Preprocessing:
        fields = record["normalizer"]
        normalizer = Normalizer(**{**fields, "mean": tuple(fields["mean"]), "std": tuple(fields["std"])})
        return cls(record["height"], record["width"], record["stain_normalization"], normalizer)


def read(workdir: str | epath.Path) -> Preprocessing:
    """The preprocessing the run in `workdir` recorded."""
    path = epath.Path(workdir) / PREPROCESSING_FILE
    if not path.exists():
        raise PreprocessingNotRecordedError(
            f"{path} is missing: this run was trained before bcjax recorded its preprocessing. Run its training "
            "command once more on the same workdir (it resumes at its last step, evaluates again and writes the file), "
            "then predict again."
        )
    return Preprocessing.from_json(json.loads(path.read_text()))
