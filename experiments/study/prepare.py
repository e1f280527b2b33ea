"""`pack` and `prepare`: the study's sources copied into a compact folder, and the study data.

`experiments/study/main.py` says what each writes; `docs/data.md` gives the sources' layout.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import time
from typing import Any

import numpy as np

from configs import default as default_config
from crnet_jax import image_io
from crnet_jax.datasets import degrade
from crnet_jax.datasets import synthetic_pairs
from experiments.study import shared


def _folder_mib(folder: str) -> float:
  total = 0
  for root, _, files in os.walk(folder):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total / 2**20


def _bsds_file(sources: str, image_id: str) -> str:
  for split in ('train', 'test', 'val'):
    path = os.path.join(sources, 'BSDS500', split, image_id + '.jpg')
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f'BSDS500 image {image_id} not found in {sources}/BSDS500/*/')


def study_sources(sources: str) -> dict[str, Any]:
  """The files the study reads from the folder `sources` (its layout: docs/data.md).

  Returns:
    {'train': [(name, file)] (532 with the full data), 'test': [(name, file)] (CBSD68),
    'lol778': (low, high), 'real_dark': {'dicm': [...], 'lime': [...], 'lol_low': [...]}}.
  """
  splits = os.path.join(sources, 'BSDS500', 'splits')
  train = [('bsds_' + i, _bsds_file(sources, i))
           for i in shared.read_ids(os.path.join(splits, 'CBSD432_ids.txt'))]
  train += [('sun_' + shared.stem(f), f)
            for f in shared.list_images(os.path.join(sources, 'SunHays80', 'train'))]
  train += [('urban_' + shared.stem(f), f)
            for f in shared.list_images(os.path.join(sources, 'Urban100_sub20', 'train'))]
  test = [(i, os.path.join(sources, 'BSDS500', 'val', i + '.jpg'))
          for i in shared.read_ids(os.path.join(splits, 'CBSD68_ids.txt'))]
  names = [n for n, _ in train + test]
  if len(set(names)) != len(names):
    raise ValueError('two study photos share a name')
  lol = os.path.join(sources, 'LOL', 'eval15')
  lol_low = shared.list_images(os.path.join(lol, 'low'))
  pair = [f for f in lol_low if shared.stem(f) == shared.LOL_TEST]
  high = [f for f in shared.list_images(os.path.join(lol, 'high'))
          if shared.stem(f) == shared.LOL_TEST]
  if not pair or not high:
    raise FileNotFoundError(f'{lol}: the LOL pair {shared.LOL_TEST} (low/ and high/) is missing')
  return {'train': train, 'test': test, 'lol778': (pair[0], high[0]),
          'real_dark': {'dicm': shared.list_images(os.path.join(sources, 'DICM', 'test')),
                        'lime': shared.list_images(os.path.join(sources, 'LIME', 'test')),
                        'lol_low': [f for f in lol_low if shared.stem(f) != shared.LOL_TEST]}}


def cmd_pack(args) -> dict[str, float]:
  """Copies the study's sources into `args.pack` (same layout, smaller); returns MiB per folder."""
  sources, pack = os.path.abspath(args.sources), os.path.abspath(args.pack)
  src = study_sources(sources)
  os.makedirs(os.path.join(pack, 'BSDS500', 'splits'), exist_ok=True)
  for f in ('CBSD432_ids.txt', 'CBSD68_ids.txt'):
    shutil.copy2(os.path.join(sources, 'BSDS500', 'splits', f),
                 os.path.join(pack, 'BSDS500', 'splits', f))

  def put(path: str, rel_dir: str, shrink: bool = False) -> None:
    """Copies `path` into pack/rel_dir; BMPs and photos over max_side become (exact) PNGs."""
    out_dir = os.path.join(pack, rel_dir)
    os.makedirs(out_dir, exist_ok=True)
    ext = os.path.splitext(path)[1].lower()
    photo = None
    if shrink and ext == '.png':
      photo = image_io.load_image_uint8(path)
      if max(photo.shape[:2]) <= args.max_side:
        photo = None
      else:
        photo = synthetic_pairs.resize_max_side(photo, args.max_side)
    if photo is None and ext == '.bmp':
      photo = image_io.load_image_uint8(path)
    if photo is None:
      shutil.copy2(path, os.path.join(out_dir, os.path.basename(path)))
    else:
      shared.save_png(os.path.join(out_dir, shared.stem(path) + '.png'), photo)

  for name, path in src['train'] + src['test']:
    rel = os.path.relpath(os.path.dirname(path), sources)
    put(path, rel, shrink=name.startswith('urban_'))
  put(src['lol778'][0], 'LOL/eval15/low')
  put(src['lol778'][1], 'LOL/eval15/high')
  for path in src['real_dark']['lol_low']:
    put(path, 'LOL/eval15/low')
  for path in src['real_dark']['dicm']:
    put(path, 'DICM/test')
  for path in src['real_dark']['lime']:
    put(path, 'LIME/test')
  sizes = {d: round(_folder_mib(os.path.join(pack, d)), 2) for d in sorted(os.listdir(pack))}
  shared.log(f'packed {pack}: MiB per folder {sizes}, {sum(sizes.values()):.1f} MiB in all')
  return sizes


def _degradation() -> dict[str, float]:
  synthetic = default_config.get_config().data.synthetic
  params = degrade.DegradationParams.from_mapping(synthetic)
  return {k: float(v) for k, v in sorted(vars(params).items())}


def make_pair(name: str, photo_path: str, out_dir: str, seed: int, max_side: int,
              params: degrade.DegradationParams) -> bool:
  """Writes out_dir/{low,high}/name.png (as the synthetic_pairs dataset makes them); False if both
  exist already."""
  low_path = os.path.join(out_dir, 'low', name + '.png')
  high_path = os.path.join(out_dir, 'high', name + '.png')
  if os.path.isfile(low_path) and os.path.isfile(high_path):
    return False
  photo = synthetic_pairs.resize_max_side(image_io.load_image_uint8(photo_path), max_side)
  low = degrade.degrade(photo, degrade.image_seed(seed, name), params)
  shared.save_png(high_path, photo)
  shared.save_png(low_path, image_io.to_uint8(low))
  return True


def _link(src: str, dst: str, copy: bool) -> None:
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  if os.path.lexists(dst):
    os.remove(dst)
  if copy:
    shutil.copy2(src, dst)
  else:
    os.symlink(os.path.realpath(src), dst)


def cmd_prepare(args) -> dict[str, Any]:
  """Writes the study data folder (experiments/study/main.py); returns its manifest."""
  sources, study_dir = os.path.abspath(args.sources), os.path.abspath(args.study_dir)
  src = study_sources(sources)
  settings = {'seed': int(args.seed), 'max_side': int(args.max_side),
              'degradation': _degradation()}
  manifest_path = os.path.join(study_dir, 'manifest.json')
  if os.path.isfile(manifest_path):
    with open(manifest_path) as f:
      old = json.load(f)
    if {k: old.get(k) for k in settings} != settings:
      if not args.force:
        raise SystemExit(f'{study_dir} was prepared with other settings '
                         f'({ {k: old.get(k) for k in settings} }); use --force to redo it')
    if args.force:
      for sub in ('train', 'cbsd68', 'tfds'):
        shutil.rmtree(os.path.join(study_dir, sub), ignore_errors=True)
  params = degrade.DegradationParams(**settings['degradation'])
  jobs = [(n, p, os.path.join(study_dir, 'train')) for n, p in src['train']]
  jobs += [(n, p, os.path.join(study_dir, 'cbsd68')) for n, p in src['test']]
  t0 = time.time()
  with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
    made = sum(pool.map(lambda j: make_pair(*j, args.seed, args.max_side, params), jobs))
  shared.log(f'{made} pair(s) written, {len(jobs) - made} already there ({time.time() - t0:.1f} s)')

  # CBSD68 is read from BSDS500/val: check it against the CBSD68 PNGs when they are at hand.
  cbsd68_check = 'CBSD68/test not at hand'
  cbsd68_dir = os.path.join(sources, 'CBSD68', 'test')
  if os.path.isdir(cbsd68_dir):
    diffs = []
    for name, path in src['test']:
      png = os.path.join(cbsd68_dir, name + '.png')
      if os.path.isfile(png):
        a = image_io.load_image_uint8(png).astype(np.int16)
        b = image_io.load_image_uint8(path).astype(np.int16)
        diffs.append(int(np.abs(a - b).max()) if a.shape == b.shape else 255)
    cbsd68_check = (f'{len(diffs)} CBSD68 PNGs vs BSDS500/val JPEGs: max abs diff '
                    f'{max(diffs) if diffs else "n/a"}')
    shared.log(cbsd68_check)

  low, high = src['lol778']
  _link(low, os.path.join(study_dir, 'lol778', 'low', os.path.basename(low)), args.copy)
  _link(high, os.path.join(study_dir, 'lol778', 'high', os.path.basename(high)), args.copy)
  for sub, files in src['real_dark'].items():
    folder = os.path.join(study_dir, 'real_dark', sub)
    shutil.rmtree(folder, ignore_errors=True)
    for f in files:
      _link(f, os.path.join(folder, os.path.basename(f)), args.copy)
  manifest = {**settings, 'sources': sources, 'cbsd68_check': cbsd68_check,
              'counts': {'train': len(src['train']), 'cbsd68': len(src['test']),
                         **{k: len(v) for k, v in src['real_dark'].items()}},
              'train': [n for n, _ in src['train']], 'cbsd68': [n for n, _ in src['test']]}
  with open(manifest_path, 'w') as f:
    json.dump(manifest, f, indent=1)
  shared.log(f'prepared {study_dir}: {manifest["counts"]}')
  return manifest
