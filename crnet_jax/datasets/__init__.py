"""TFDS builders of the low-light data (ArrayRecord, read with `as_data_source`; no TensorFlow).

- `lol`: LOL v1 / LOL-v2 real / LOL-v2 synthetic from a manual download.
- `paired_folders`: a user's low/high folders matched by file name.
- `unpaired_folders`: folders of unlabeled low-light images (the MCMT pool).
- `synthetic_pairs`: clean photos darkened by the seeded `degrade.degrade`; with no photo folder,
  the embedded default built from scikit-image's bundled photos.

Each `*_builder(...)` function validates its inputs (a `DataError` naming every bad file),
builds the dataset into `data_dir` on first use and returns the prepared builder.
"""

from crnet_jax.datasets.base import DEFAULT_DATA_DIR
from crnet_jax.datasets.base import split_metadata
from crnet_jax.datasets.lol import lol_builder
from crnet_jax.datasets.paired_folders import paired_folders_builder
from crnet_jax.datasets.synthetic_pairs import synthetic_pairs_builder
from crnet_jax.datasets.unpaired_folders import parse_dirs
from crnet_jax.datasets.unpaired_folders import unpaired_folders_builder
from crnet_jax.image_io import DataError
from crnet_jax.image_io import MissingDataError

__all__ = [
    'DEFAULT_DATA_DIR', 'DataError', 'MissingDataError', 'lol_builder',
    'paired_folders_builder', 'parse_dirs', 'split_metadata', 'synthetic_pairs_builder',
    'unpaired_folders_builder',
]
