"""A released model: trained parameters small enough to live in the repository.

A release is a folder with two files:

- `params.npz`: every parameter of the student (or teacher) as float16, keyed by its path in the
  parameter tree (`LMRG_0/head/feature/kernel`); about 2.4 MiB for the paper's network. float16
  keeps 11 significant bits, and the parameters of a trained CRNet lie well inside its range
  (`save_release` refuses a tree that does not fit); they load back as float32.
- `model.json`: `{"model": <the model config>, "info": {...}}`, where `info` says what the model
  was trained on, with which command, for how many steps, and its evaluation figures.

`load_release(folder)` returns `(model, params, model_config, info)`. `main.py --mode=enhance`
(and evaluate, export) reads a release given as `--workdir`, and without `--workdir` the model the
repository ships in `models/` (`shipped_model()`), when it has one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crnet_jax import image_io
from crnet_jax import model_defaults
from crnet_jax import models
from crnet_jax.image_io import DataError

PARAMS_FILE = 'params.npz'
MODEL_FILE = 'model.json'
# The released models that ship with the repository, the first found being the default.
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'models')
SHIPPED = ('crnet_lol_full', 'crnet_lol10')
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def is_release(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, f)) for f in (MODEL_FILE, PARAMS_FILE))


def shipped_model(models_dir: str = MODELS_DIR) -> str | None:
  """The folder of the model shipped in `models_dir` (see SHIPPED), or None."""
  for name in SHIPPED:
    folder = os.path.join(models_dir, name)
    if is_release(folder):
      return folder
  return None


def describe(info: dict[str, Any]) -> str:
  """One line: what the release was trained on, its step and evaluation figures."""
  parts = [info.get('trained_on', '')]
  if 'step' in info:
    parts.append(f"step {info['step']}")
  ev = info.get('eval') or {}
  if 'student_psnr' in ev:
    parts.append(f"test PSNR {ev['student_psnr']:.2f} dB, SSIM {ev.get('student_ssim', 0):.4f}")
  return '; '.join(p for p in parts if p)


def _by_key(tree: Any) -> dict[str, Any]:
  """Path key (`LMRG_0/head/feature/kernel`) -> leaf, in the tree's leaf order."""
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _flatten(params: Any) -> dict[str, np.ndarray]:
  return {k: np.asarray(jax.device_get(v), np.float32) for k, v in _by_key(params).items()}


def save_release(folder: str, params: Any, model_config: ml_collections.ConfigDict,
                 info: dict[str, Any]) -> str:
  """Writes `params` (as float16) and the model config into a new folder; returns its path.

  Raises:
    FileExistsError: the folder exists and is not empty (a release is never overwritten).
    ValueError: a parameter is not finite or does not fit in float16.
  """
  folder = os.path.abspath(folder)
  if os.path.isdir(folder) and os.listdir(folder):
    raise FileExistsError(f'{folder}: exists and is not empty; a release goes into a new folder')
  flat = _flatten(params)
  for key, value in flat.items():
    if not np.all(np.isfinite(value)) or np.max(np.abs(value), initial=0.0) > _FLOAT16_MAX:
      raise ValueError(f'parameter {key}: not finite or outside the float16 range')
  os.makedirs(folder, exist_ok=True)

  def write_params(tmp):
    with open(tmp, 'wb') as f:
      np.savez_compressed(f, **{k: v.astype(np.float16) for k, v in flat.items()})

  def write_model(tmp):
    with open(tmp, 'w') as f:
      json.dump({'model': model_config.to_dict(), 'info': info}, f, indent=2, sort_keys=True)
      f.write('\n')

  image_io.write_atomically(os.path.join(folder, PARAMS_FILE), write_params)
  image_io.write_atomically(os.path.join(folder, MODEL_FILE), write_model)
  return folder


def load_release(folder: str) -> tuple[models.CRNet, Any, ml_collections.ConfigDict,
                                       dict[str, Any]]:
  """`(model, params (float32), model_config, info)` of a folder written by `save_release`.

  Raises:
    DataError: a missing or damaged file, or parameters that do not match the model config
      (the file and the key are named).
  """
  folder = os.path.abspath(folder)
  model_path, params_path = os.path.join(folder, MODEL_FILE), os.path.join(folder, PARAMS_FILE)
  try:
    with open(model_path) as f:
      meta = json.load(f)
    model_config = model_config_from_dict(meta['model'])
    info = dict(meta.get('info', {}))
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise DataError(f'{model_path}: not a readable model description ({e})') from e
  model = models.create_model(model_config)
  try:
    with np.load(params_path) as data:
      stored = {k: data[k].astype(np.float32) for k in data.files}
  except Exception as e:  # pylint: disable=broad-except  (zip, pickle and OS errors alike)
    raise DataError(f'{params_path}: cannot read the parameters ({e})') from e
  params: dict[str, Any] = {}
  for key, value in stored.items():  # 'a/b/kernel' -> params['a']['b']['kernel']
    *parents, name = key.split('/')
    node = params
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = value
  mismatch = models.param_mismatch(model, params)
  if mismatch is not None:
    missing, extra, shapes = mismatch
    if shapes:
      key, got, want = shapes[0]
      raise DataError(f'{params_path}: {key} has shape {got}, the model in {MODEL_FILE} needs '
                      f'{want}')
    raise DataError(f'{params_path}: does not match the model in {MODEL_FILE} (missing '
                    f'{missing[:3]}, unexpected {extra[:3]})')
  return model, jax.tree.map(jnp.asarray, params), model_config, info


def model_config_from_dict(d: dict[str, Any]) -> ml_collections.ConfigDict:
  """The default model config (`model_defaults`) updated with `d` (ValueError: an unknown key)."""
  config = model_defaults.get_model_config()
  unknown = set(d) - set(config.keys())
  if unknown:
    raise ValueError(f'model config: unknown keys {sorted(unknown)}')
  config.update(d)
  return config
