"""Ship a trained CRNet: inference checkpoints and a `jax.export` serialization.

(a) `save_inference_checkpoint(dir, params, model_config)` writes an orbax checkpoint that holds
    only the inference parameters (`dir/params`) and the model config (`dir/model_config.json`,
    written last: a directory without it is an unfinished export and is refused).
    `load_inference_checkpoint(dir)` returns `(model, params, model_config)` without any
    training state.
(b) `export_enhance_function(path, model, params)` serializes the clipped forward pass with
    symbolic batch, height and width (`jax.export`), parameters embedded. The file runs with jax
    alone, without crnet_jax:

        import numpy as np
        from jax import export
        with open('crnet.jaxexport', 'rb') as f:
          enhance = export.deserialize(bytearray(f.read()))
        enhanced = enhance.call(np.random.rand(1, 400, 600, 3).astype(np.float32))

`load_model(path)` accepts a training workdir (with `config.json` and checkpoints) or an
inference checkpoint directory, which is what `main.py --mode=enhance|evaluate` reads.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from crnet_jax import checkpointing
from crnet_jax import models

MODEL_CONFIG_FILE = 'model_config.json'
PARAMS_DIR = 'params'
SERIALIZED_FILE = 'crnet.jaxexport'
EXPORT_PLATFORMS = ('cpu', 'cuda', 'tpu')


def _model_config_from_dict(d: dict[str, Any]) -> ml_collections.ConfigDict:
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_model_config()
  unknown = set(d) - set(config.keys())
  if unknown:
    raise ValueError(f'model config: unknown keys {sorted(unknown)}')
  config.update(d)
  return config


def save_inference_checkpoint(directory: str, params: Any,
                              model_config: ml_collections.ConfigDict) -> str:
  """Writes `params` (orbax) and `model_config` (JSON) to a new directory; returns its path."""
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, MODEL_CONFIG_FILE)):
    raise FileExistsError(f'{directory}: already holds an exported model')
  os.makedirs(directory, exist_ok=True)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, PARAMS_DIR), params)
  tmp = os.path.join(directory, MODEL_CONFIG_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(model_config.to_dict(), f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(directory, MODEL_CONFIG_FILE))
  return directory


def load_inference_checkpoint(
    directory: str) -> tuple[models.CRNet, Any, ml_collections.ConfigDict]:
  """`(model, params, model_config)` from a directory written by `save_inference_checkpoint`."""
  directory = os.path.abspath(directory)
  config_path = os.path.join(directory, MODEL_CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{directory}: not an exported model (no {MODEL_CONFIG_FILE})')
  with open(config_path) as f:
    model_config = _model_config_from_dict(json.load(f))
  model = models.create_model(model_config)
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))['params']
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.join(directory, PARAMS_DIR), abstract)
  return model, params, model_config


def load_model(path: str, which: str = 'student',
               checkpoint: str = 'best') -> tuple[models.CRNet, Any, ml_collections.ConfigDict]:
  """`(model, params, model_config)` from a training workdir or an inference checkpoint.

  Args:
    path: a training workdir (holds `config.json` and `checkpoints/`) or a directory written by
      `save_inference_checkpoint`.
    which: 'student' or 'teacher' parameters (training workdirs of MCMT runs only).
    checkpoint: for a workdir, 'best' (by evaluation PSNR) or 'latest'; if the run has no best
      checkpoint yet, the latest one is used.
  """
  if which not in ('student', 'teacher'):
    raise ValueError(f"params must be 'student' or 'teacher', got {which!r}")
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: checkpoint directory not found')
  if os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)):
    if which == 'teacher':
      raise ValueError(f'{path}: an exported model holds one set of parameters; '
                       "use --params=student")
    return load_inference_checkpoint(path)
  config_path = os.path.join(path, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{path}: neither a training workdir (no config.json) nor an '
                            f'exported model (no {MODEL_CONFIG_FILE})')
  with open(config_path) as f:
    model_config = _model_config_from_dict(json.load(f)['model'])
  try:
    variables, _ = checkpointing.restore_variables(path, checkpoint)
  except FileNotFoundError:
    if checkpoint != 'best':
      raise
    variables, _ = checkpointing.restore_variables(path, 'latest')
  params = variables['params'] if which == 'student' else variables['teacher_params']
  if params is None:
    raise ValueError(f'{path}: this run has no teacher (supervised); use --params=student')
  return models.create_model(model_config), params, model_config


def export_enhance_function(path: str, model: models.CRNet, params: Any,
                            platforms: tuple[str, ...] = EXPORT_PLATFORMS) -> bytes:
  """Serializes `clip(CRNet(x), 0, 1)` for (b, h, w, 3) float32 inputs of any b, h, w.

  The parameters are embedded as constants. Returns the bytes it wrote to `path`.
  """
  params = jax.device_get(params)
  enhance = lambda x: models.enhance(model, params, x)
  b, h, w = jax.export.symbolic_shape('b, h, w')
  exported = jax.export.export(jax.jit(enhance), platforms=platforms)(
      jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32))
  data = exported.serialize()
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)
  return data
