"""TFDS's standard builder test on `dummy_data/`, a tiny BreakHis-shaped tree.

`dummy_data/` holds 46 SOB images (40X and 400X of 23 patient folders, 35x23
pixels, one 35x22), the archive's quirks, and non-SOB files the builder must skip.
"""

import tensorflow_datasets as tfds

from . import breakhis_dataset_builder


class BreakHisTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = breakhis_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["custom"]  # `archive` insists on the published counts
    SPLITS = {"train": 46}
    SKIP_CHECKSUMS = True  # a manual download: there is no URL to checksum

    def _make_builder(self, config=None):
        # The standard checks read through `as_dataset` (tf.data), which ArrayRecord,
        # our default format, does not offer; tests/ cover the ArrayRecord path.
        return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION, file_format="tfrecord")


if __name__ == "__main__":
    tfds.testing.test_main()
