"""Synthetic low/normal pairs: clean photos darkened by `degrade.degrade` (seeded).

The normal-light image is the photo (downscaled so its longer side is at most `max_side`, 0 = keep
the size); the low-light image is `degrade(photo, image_seed(seed, name), params)` rounded to
uint8. The test split is a seeded random `test_fraction` of the photos (at least one; 0 = none).

With `photos_dir == ''` the photos are the embedded default: the colour photographs that
scikit-image ships inside its wheel (no download): astronaut, rocket, immunohistochemistry,
retina, motorcycle_left and motorcycle_right for training, chelsea and coffee for testing.
(`hubble_deep_field` is left out: it is almost black already.)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from crnet_jax import image_io
from crnet_jax.datasets import base
from crnet_jax.datasets import degrade as degrade_lib
from crnet_jax.image_io import DataError

# name -> file in skimage/data (bundled with the wheel; checked to load offline).
SKIMAGE_PHOTOS = {
    'astronaut': 'astronaut.png',
    'rocket': 'rocket.jpg',
    'immunohistochemistry': 'ihc.png',
    'retina': 'retina.jpg',
    'motorcycle_left': 'motorcycle_left.png',
    'motorcycle_right': 'motorcycle_right.png',
    'chelsea': 'chelsea.png',
    'coffee': 'coffee.png',
}
SKIMAGE_TEST = ('chelsea', 'coffee')


@dataclasses.dataclass(eq=False)
class SyntheticPairsConfig(tfds.core.BuilderConfig):
  photos_dir: str = ''  # '' = scikit-image's bundled photos
  test_fraction: float = 0.0
  split_seed: int = 0
  seed: int = 0  # of the degradation
  max_side: int = 0
  degradation: tuple[tuple[str, float], ...] = ()


class SyntheticPairs(base.ImageRecordsBuilder):
  """Low/normal pairs made by darkening clean photos with a seeded degradation."""

  BUILDER_CONFIGS = [SyntheticPairsConfig(name='base')]

  def _split_items(self, dl_manager) -> dict[str, list[base.Item]]:
    c = self.builder_config
    return synthetic_items(c.photos_dir, c.test_fraction, c.split_seed)

  def _load_item(self, item: base.Item) -> dict[str, np.ndarray]:
    c = self.builder_config
    photo = image_io.load_image_uint8(item.high, image_io.max_image_pixels())
    photo = resize_max_side(photo, c.max_side)
    params = degrade_lib.DegradationParams.from_mapping(dict(c.degradation))
    low = degrade_lib.degrade(photo, degrade_lib.image_seed(c.seed, item.name), params)
    return {'low': image_io.to_uint8(low), 'high': photo}


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
  """Downscales a uint8 image (Lanczos) so that max(H, W) <= max_side (0 = unchanged)."""
  h, w = image.shape[:2]
  if not max_side or max(h, w) <= max_side:
    return image
  s = max_side / max(h, w)
  size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def skimage_data_dir() -> str:
  import skimage.data  # pylint: disable=g-import-not-at-top
  return os.path.dirname(skimage.data.__file__)


def synthetic_items(photos_dir: str, test_fraction: float = 0.0, split_seed: int = 0
                    ) -> dict[str, list[base.Item]]:
  """Train (and test) items of a photo folder, or of scikit-image's photos when ''."""
  if not photos_dir:
    root = skimage_data_dir()
    missing = [f for f in SKIMAGE_PHOTOS.values() if not os.path.isfile(os.path.join(root, f))]
    if missing:
      raise DataError(f'{root}: scikit-image lacks its bundled photos {missing}; reinstall '
                      'scikit-image or use another dataset')
    items = {n: base.Item(name=n, high=os.path.join(root, f)) for n, f in SKIMAGE_PHOTOS.items()}
    return {'train': [it for n, it in items.items() if n not in SKIMAGE_TEST],
            'test': [items[n] for n in SKIMAGE_TEST]}
  files = base.list_image_files(photos_dir, what='photo folder (data.photos_dir)')
  items = [base.Item(name=base.stem(f), high=f) for f in files]
  names = [it.name for it in items]
  if len(set(names)) != len(names):
    raise DataError(f'{photos_dir}: several photos share a file stem')
  train, test = base.split_by_fraction(items, test_fraction, split_seed)
  return {'train': train, 'test': test} if test else {'train': train}


def synthetic_pairs_builder(photos_dir: str = '', *, test_fraction: float = 0.0,
                            split_seed: int = 0, seed: int = 0, max_side: int = 0,
                            degradation: Mapping[str, Any] | None = None,
                            data_dir: str = base.DEFAULT_DATA_DIR) -> tfds.core.DatasetBuilder:
  """The prepared builder (rebuilt when the photos or any parameter change)."""
  photos_dir = base.expand(photos_dir) if photos_dir else ''
  synthetic_items(photos_dir, test_fraction, split_seed)
  params = degrade_lib.DegradationParams.from_mapping(degradation or {})
  deg = tuple(sorted(dataclasses.asdict(params).items()))
  args = dict(photos_dir=photos_dir, test_fraction=float(test_fraction) if photos_dir else 0.0,
              split_seed=int(split_seed) if photos_dir else 0, seed=int(seed),
              max_side=int(max_side), degradation=deg)
  sig = base.folder_signature([photos_dir]) if photos_dir else sorted(SKIMAGE_PHOTOS.items())
  name = base.config_name('default' if not photos_dir else 'photos', [args, sig])
  builder = SyntheticPairs(config=SyntheticPairsConfig(name=name, **args),
                           data_dir=base.expand(data_dir), file_format='array_record')
  return base.prepare(builder)
