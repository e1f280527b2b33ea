r"""How a trained run's eval15 PSNR depends on the scale of the layer attention's energy.

The paper's energy `E = F F^T` sums over every pixel, so a whole test image sharpens the softmax
by its pixel count over the training patch's. This probe evaluates a run's checkpoint on whole
images with E rescaled to what an image of `--pixels` pixels with the same per-pixel statistics
would give (`E * pixels_ref / pixels`; 0 keeps the paper's sum), without training anything:

  python experiments/lol/energy_probe.py --workdir runs/lol_cpu_long/full-s0 \
      --pairs /path/to/lol_half/eval15 --which latest --pixels 0,1024,4096,16384

Prints one JSON line per scale (docs/lol_study.md, "The energy's scale"). Only for runs trained
with `model.layer_attention_energy='sum'`.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from crnet_jax import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position
from crnet_jax import image_io  # pylint: disable=g-import-not-at-top,wrong-import-position
from crnet_jax import layers  # pylint: disable=g-import-not-at-top,wrong-import-position
from crnet_jax import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from crnet_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position


def rescaled(reference_pixels: int):
  """A stand-in for `layers.scale_energy` that maps the summed E to `reference_pixels` pixels."""
  def scale(energy, mode, pixels, channels):
    del mode, channels
    return energy * (reference_pixels / jnp.asarray(pixels, jnp.float32).reshape(-1, 1, 1))
  return scale


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--pairs', required=True, help='a folder with low/ and high/')
  parser.add_argument('--which', default='latest', choices=('latest', 'best'))
  parser.add_argument('--step', type=int, default=None)
  parser.add_argument('--pixels', default='0,1024,4096,16384')
  args = parser.parse_args(argv)
  with open(os.path.join(args.workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.model.get('layer_attention_energy', 'sum') != 'sum':
    raise SystemExit(f'error: {args.workdir}: the probe rescales a summed energy; this run '
                     "trained with model.layer_attention_energy='mean'")
  model = models.create_model(config.model)
  variables, step = checkpointing.restore_variables(args.workdir, args.which, args.step)
  names = sorted(os.listdir(os.path.join(args.pairs, 'low')))
  pairs = [(image_io.load_image(os.path.join(args.pairs, 'low', n)),
            image_io.load_image(os.path.join(args.pairs, 'high', n))) for n in names]
  paper_scale = layers.scale_energy
  results = []
  try:
    for reference in (int(p) for p in args.pixels.split(',')):
      layers.scale_energy = paper_scale if reference == 0 else rescaled(reference)
      # A fresh jit per scale: the stand-in is read when the function is traced.
      enhance = jax.jit(lambda p, x: models.enhance(model, p, x))
      psnrs = [float(losses.psnr(enhance(variables['params'], low[None])[0], high))
               for low, high in pairs]
      record = {'workdir': os.path.relpath(args.workdir), 'which': args.which, 'step': step,
                'reference_pixels': reference or 'sum', 'images': len(pairs),
                'pixels': int(pairs[0][0].shape[0] * pairs[0][0].shape[1]),
                'psnr': round(float(np.mean(psnrs)), 3)}
      print(json.dumps(record), flush=True)
      results.append(record)
  finally:
    layers.scale_energy = paper_scale
  return results


if __name__ == '__main__':
  main()
