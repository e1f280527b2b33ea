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
inference checkpoint directory, which is what `main.py --mode=enhance|evaluate` reads. A folder
that looks like a training workdir (`config.json`, `checkpoints/` or `best/`) is always read as
one, even if an export was written into it by an older version: `--checkpoint=latest` means the
newest checkpoint of the run. `load_model_and_source` also says, in one line, which parameters
it loaded (path, step, student or teacher); `load_model_and_origin` gives the same as a record
(what evaluate writes into its `metrics.json`).

An export goes into a new or empty folder only: `check_export_folder` refuses a training workdir
(an export there would shadow the run's checkpoints) and any other non-empty folder, so that an
export never mixes with or replaces a user's files (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from crnet_jax import checkpointing
from crnet_jax import image_io
from crnet_jax import models
from crnet_jax import release
from crnet_jax.image_io import DataError
from crnet_jax.image_io import MissingDataError

MODEL_CONFIG_FILE = 'model_config.json'
PARAMS_DIR = 'params'
SERIALIZED_FILE = 'crnet.jaxexport'
SOURCE_FILE = 'source.json'  # where the exported parameters come from (one line, for the logs)
RUN_MARKERS = ('config.json', checkpointing.LATEST_DIR, checkpointing.BEST_DIR)  # what a training run writes


def is_training_workdir(path: str) -> bool:
  """Whether `path` holds a training run (`config.json`, `checkpoints/` or `best/`)."""
  return any(os.path.exists(os.path.join(path, m)) for m in RUN_MARKERS)


def check_export_folder(directory: str) -> None:
  """Refuses to export into a training workdir, a file, or a non-empty folder (DataError)."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.exists(directory):
    return
  if not os.path.isdir(directory):
    raise DataError(f'{directory}: the export folder is an existing file; choose a new folder')
  if is_training_workdir(directory):
    found = [m for m in RUN_MARKERS if os.path.exists(os.path.join(directory, m))]
    raise DataError(f'{directory}: is a training workdir (it has {", ".join(found)}); an export '
                    'there would shadow its checkpoints: export into a new folder')
  if os.path.exists(os.path.join(directory, MODEL_CONFIG_FILE)):
    raise DataError(f'{directory}: already holds an exported model; export into a new folder '
                    '(or delete this one first)')
  if os.listdir(directory):
    raise DataError(f'{directory}: the export folder is not empty (and not an earlier export); '
                    'export into a new or empty folder')
EXPORT_PLATFORMS = ('cpu', 'cuda', 'tpu')


def save_inference_checkpoint(directory: str, params: Any,
                              model_config: ml_collections.ConfigDict,
                              source: str | None = None,
                              origin: dict[str, Any] | None = None) -> str:
  """Writes `params` (orbax) and `model_config` (JSON) to a new or empty directory.

  `source` (what `load_model_and_source` said about the parameters) is kept in `source.json`,
  with `origin` (`load_model_and_origin`'s, less its `source`). Returns the directory's path.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, MODEL_CONFIG_FILE)):
    raise FileExistsError(f'{directory}: already holds an exported model')
  check_export_folder(directory)
  os.makedirs(directory, exist_ok=True)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, PARAMS_DIR), params)
  if source:
    with open(os.path.join(directory, SOURCE_FILE), 'w') as f:
      saved = {'source': source}
      if origin:
        saved['origin'] = {k: v for k, v in origin.items() if k != 'source'}
      json.dump(saved, f)

  def write_model_config(tmp: str) -> None:
    with open(tmp, 'w') as f:
      json.dump(model_config.to_dict(), f, indent=2, sort_keys=True)

  image_io.write_atomically(os.path.join(directory, MODEL_CONFIG_FILE), write_model_config)
  return directory


def load_inference_checkpoint(
    directory: str) -> tuple[models.CRNet, Any, ml_collections.ConfigDict]:
  """`(model, params, model_config)` from a directory written by `save_inference_checkpoint`."""
  directory = os.path.abspath(directory)
  config_path = os.path.join(directory, MODEL_CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{directory}: not an exported model (no {MODEL_CONFIG_FILE})')
  with open(config_path) as f:
    model_config = release.model_config_from_dict(json.load(f))
  model = models.create_model(model_config)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.join(directory, PARAMS_DIR),
                                  models.abstract_params(model))
  return model, params, model_config


def check_params(model: models.CRNet, params: Any, config_path: str, where: str) -> None:
  """Refuses (DataError naming `config_path`) parameters whose shapes the model does not take."""
  mismatch = models.param_mismatch(model, params)
  if mismatch is None:
    return
  missing, extra, shapes = mismatch
  detail = (f'parameter {shapes[0][0]} is {shapes[0][1]} in the checkpoint, {shapes[0][2]} for '
            'the config' if shapes else
            f'the config has parameters the checkpoint lacks ({missing[0]}, ...)' if missing else
            f'the checkpoint has parameters the config lacks ({extra[0]}, ...)')
  raise DataError(f'{config_path}: the model config does not match the parameters in {where} '
                  f'({detail})')


def load_model(path: str, which: str = 'student',
               checkpoint: str = 'best') -> tuple[models.CRNet, Any, ml_collections.ConfigDict]:
  """`(model, params, model_config)` from a training workdir or an inference checkpoint.

  See `load_model_and_source`.
  """
  return load_model_and_source(path, which, checkpoint)[:3]


def load_model_and_source(path: str, which: str = 'student', checkpoint: str = 'best'
                          ) -> tuple[models.CRNet, Any, ml_collections.ConfigDict, str]:
  """`(model, params, model_config, source)`; `source` says in one line which parameters.

  See `load_model_and_origin`.
  """
  model, params, model_config, origin = load_model_and_origin(path, which, checkpoint)
  return model, params, model_config, origin['source']


def load_model_and_origin(path: str, which: str = 'student', checkpoint: str = 'best'
                          ) -> tuple[models.CRNet, Any, ml_collections.ConfigDict,
                                     dict[str, Any]]:
  """`(model, params, model_config, origin)`: where the parameters come from.

  `origin` holds `path` (absolute), `kind` ('training run', 'exported model' or 'released
  model'), `step`, `checkpoint` ('best' or 'latest') and `params` ('student' or 'teacher'), each
  None where unknown (an export or release made without that record), and `source`, the same in
  one line for the logs. An export's `origin` also has `exported_from`, the origin of the run it
  was exported from.

  Args:
    path: a training workdir (holds `config.json` and `checkpoints/`) or a directory written by
      `save_inference_checkpoint`. A training workdir is read as one even if it also holds an
      exported model (written there by an older version), which is then ignored.
    which: 'student' or 'teacher' parameters (training workdirs of MCMT runs only).
    checkpoint: for a workdir, 'best' (by evaluation PSNR) or 'latest' (the newest checkpoint);
      if the run has no best checkpoint yet, the latest one is used (and `source` says so). An
      exported model has no checkpoints: 'latest' is refused there.

  Raises:
    MissingDataError: `path` does not exist, or the run has no checkpoint.
    DataError: `path` is neither a run nor an export, the run has no teacher, an export is
      asked for its latest checkpoint or teacher, or the config does not match the parameters.
  """
  if which not in ('student', 'teacher'):
    raise ValueError(f"params must be 'student' or 'teacher', got {which!r}")
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise MissingDataError(f'{path}: checkpoint directory not found')
  config_path = os.path.join(path, 'config.json')
  if not is_training_workdir(path) and release.is_release(path):
    if which == 'teacher' or checkpoint == 'latest':
      raise DataError(f'{path}: a released model holds one set of parameters and no '
                      'checkpoints; drop --params=teacher and --checkpoint=latest')
    model, params, model_config, info = release.load_release(path)
    return model, params, model_config, {
        'path': path, 'kind': 'released model', 'step': info.get('step'),
        'checkpoint': info.get('checkpoint'), 'params': info.get('parameters'),
        'source': f'{path}: released model ({release.describe(info)})'}
  if not is_training_workdir(path):
    if not os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)):
      raise MissingDataError(f'{path}: neither a training workdir (no config.json) nor an '
                             f'exported model (no {MODEL_CONFIG_FILE})')
    if which == 'teacher':
      raise DataError(f'{path}: an exported model holds one set of parameters; '
                      'use --params=student')
    if checkpoint == 'latest':
      raise DataError(f'{path}: an exported model has no checkpoints; --checkpoint=latest is '
                      'for a training workdir')
    model, params, model_config = load_inference_checkpoint(path)
    source, exported_from = '', {}
    try:
      with open(os.path.join(path, SOURCE_FILE)) as f:
        saved = json.load(f)
      source = f' (exported from {saved["source"]})'
      exported_from = dict(saved.get('origin') or {})
    except (OSError, ValueError, KeyError, TypeError):
      pass
    return model, params, model_config, {
        'path': path, 'kind': 'exported model', 'step': exported_from.get('step'),
        'checkpoint': exported_from.get('checkpoint'), 'params': exported_from.get('params'),
        'exported_from': exported_from or None, 'source': f'{path}: exported model{source}'}
  if os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)):
    logging.warning('%s: ignoring the exported model in this training workdir; the parameters '
                    'come from its checkpoints', path)
  if not os.path.isfile(config_path):
    raise MissingDataError(f'{path}: training workdir without config.json')
  try:
    with open(config_path) as f:
      model_config = release.model_config_from_dict(json.load(f)['model'])
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f'{config_path}: not the config of a run ({type(e).__name__}: {e})') from e
  used = checkpoint
  try:
    variables, step = checkpointing.restore_variables(path, checkpoint)
  except FileNotFoundError as e:
    if checkpoint != 'best':
      raise MissingDataError(f'{path}: {e}') from e
    variables, step = checkpointing.restore_variables(path, 'latest')
    used = 'latest (the run has no best checkpoint yet)'
  params = variables['params'] if which == 'student' else variables['teacher_params']
  if params is None:
    raise DataError(f'{path}: this run has no teacher (supervised); use --params=student')
  model = models.create_model(model_config)
  folder = checkpointing.BEST_DIR if used == 'best' else checkpointing.LATEST_DIR
  check_params(model, params, config_path, os.path.join(path, folder, str(step)))
  return model, params, model_config, {
      'path': path, 'kind': 'training run', 'step': int(step),
      'checkpoint': 'best' if used == 'best' else 'latest', 'params': which,
      'source': (f'{os.path.join(path, folder, str(step))}: step {step}, {used} checkpoint, '
                 f'{which} parameters')}


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

  def write_data(tmp: str) -> None:
    with open(tmp, 'wb') as f:
      f.write(data)

  image_io.write_atomically(path, write_data)
  return data
