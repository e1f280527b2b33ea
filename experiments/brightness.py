"""Mean brightness of real LOL low-light images vs. the embedded default's synthetic ones.

Prints one JSON object: the mean pixel value (in [0, 1], averaged over pixels and channels of
each image, then over images) of the LOL low images in `--lol_low_dir`, and of the low and
normal images of the embedded default dataset (scikit-image's bundled photos darkened by
`crnet_jax/datasets/degrade.py` with the parameters of `configs/default.py`).

  python experiments/brightness.py --lol_low_dir /path/to/LOL/eval15/low
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default as default_config  # pylint: disable=wrong-import-position
from crnet_jax import image_io  # pylint: disable=wrong-import-position
from crnet_jax.datasets import degrade  # pylint: disable=wrong-import-position
from crnet_jax.datasets import synthetic_pairs  # pylint: disable=wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--lol_low_dir', required=True, help='a folder of LOL low-light images')
  args = parser.parse_args()

  files = sorted(glob.glob(os.path.join(args.lol_low_dir, '*')))
  if not files:
    raise SystemExit(f'{args.lol_low_dir}: no images')
  lol = [float(image_io.load_image(f).mean()) for f in files]

  config = default_config.get_config()
  syn = config.data.synthetic
  params = degrade.DegradationParams.from_mapping(syn)
  root = synthetic_pairs.skimage_data_dir()
  low, high = [], []
  for name, fname in synthetic_pairs.SKIMAGE_PHOTOS.items():
    photo = synthetic_pairs.resize_max_side(
        image_io.load_image_uint8(os.path.join(root, fname)), int(syn.max_side))
    dark = image_io.to_uint8(degrade.degrade(photo, degrade.image_seed(config.data.seed, name),
                                             params))
    low.append(float(dark.mean()) / 255.0)
    high.append(float(photo.mean()) / 255.0)

  print(json.dumps({
      'lol_low_mean': round(float(np.mean(lol)), 4),
      'lol_low_images': len(lol),
      'synthetic_low_mean': round(float(np.mean(low)), 4),
      'synthetic_normal_mean': round(float(np.mean(high)), 4),
      'synthetic_images': len(low),
  }))


if __name__ == '__main__':
  main()
