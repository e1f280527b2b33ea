r"""Peak memory of `main.py --mode=enhance` against the image size: one JSON line per size.

  python benchmarks/enhance_memory.py                       # 1, 12 and 81 Mpx
  python benchmarks/enhance_memory.py --megapixels=1,12 --config=configs/crnet.py:demo

Each size runs in a fresh subprocess that enhances one PNG file into another through
`inference.enhance_paths` (what `--mode=enhance` runs) with the network of `--config` (default the
tiny `configs/crnet.py:test` one, so that 81 Mpx runs on CPU in minutes; random parameters: the
memory does not depend on them) and the config's `inference` settings, and reports the peak
resident memory of that process (`ru_maxrss`), its memory after setup (jax, the model), the
image as uint8, and the analytic bytes per pixel of the tiled pass (`inference.bytes_per_pixel`).
The input PNG is written by the parent process, so its encoding does not count. Results:
benchmarks/results/enhance-memory-*.jsonl; docs/reliability.md reads them.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {1: (1000, 1000), 12: (4000, 3000), 81: (9000, 9000)}  # megapixels -> (width, height)


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args) -> None:
  sys.path.insert(0, REPO)
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  from crnet_jax import models  # pylint: disable=g-import-not-at-top
  path, arg = (args.config.split(':', 1) + [None])[:2]
  module = config_flags.config_flags._LoadConfigModule('bench_config', path)  # pylint: disable=protected-access
  config = module.get_config(*([arg] if arg else []))
  model = models.create_model(config.model)
  params = jax.jit(functools.partial(models.init_params, model))(jax.random.key(0))
  tiling = inference.TilingConfig.from_config(config.inference)
  enhancer = inference.Enhancer(model, params, tiling)
  setup_mb = _rss_mb()
  t0 = time.perf_counter()
  report = inference.enhance_paths(enhancer, args.input, args.output, progress=False)
  seconds = time.perf_counter() - t0
  assert report['written'] == [args.output], report
  width, height = SIZES[args.megapixels]
  b = tiling.bucket
  padded = (-(-height // b) * b) * (-(-width // b) * b)
  print(json.dumps({
      'megapixels': round(width * height / 1e6, 2), 'width': width, 'height': height,
      'config': args.config,
      'path': ('auto' if not tiling.max_whole_pixels else
               'whole' if padded <= tiling.max_whole_pixels else 'tiled'),
      'peak_rss_mb': round(_rss_mb(), 1), 'setup_rss_mb': round(setup_mb, 1),
      'image_uint8_mb': round(width * height * 3 / 2**20, 1),
      'tiled_bytes_per_pixel': inference.bytes_per_pixel(model, tiling),
      'seconds': round(seconds, 1), 'cpus': os.cpu_count(),
      'device': str(jax.devices()[0].platform)}), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--megapixels', default='1,12,81', help='comma-separated: 1, 12, 81')
  parser.add_argument('--config', default='configs/crnet.py:test')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--input', help=argparse.SUPPRESS)
  parser.add_argument('--output', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    args.megapixels = int(args.megapixels)
    return child(args)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    for mp in (int(m) for m in args.megapixels.split(',')):
      width, height = SIZES[mp]
      source = os.path.join(tmp, f'{mp}mpx.png')
      # A smooth dark gradient (quick to encode); the values do not change the memory.
      row = (np.arange(width, dtype=np.uint32) * 60 // width).astype(np.uint8)
      image = np.broadcast_to(row[None, :, None], (height, width, 3))
      Image.fromarray(np.ascontiguousarray(image)).save(source, compress_level=1)
      del image
      subprocess.run([sys.executable, os.path.abspath(__file__), '--child',
                      f'--megapixels={mp}', f'--config={args.config}', f'--input={source}',
                      f'--output={os.path.join(tmp, f"{mp}mpx_out.png")}'],
                     check=True, cwd=REPO, env={**os.environ, 'JAX_PLATFORMS':
                                                os.environ.get('JAX_PLATFORMS', 'cpu')})
      os.remove(source)


if __name__ == '__main__':
  main()
