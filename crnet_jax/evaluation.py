"""Evaluation of a training run: PSNR and SSIM on whole test images, padding excluded.

`evaluate` runs the jitted `eval_step` (`compiled_eval_step`) over the batches of an
`input_pipeline.EvalDataset`: the outputs are clipped to [0, 1], each metric is computed per image
on its real pixels (`mask`) and averaged over the real images (`valid`), so the padding of a
batch or of an image changes nothing. The student is evaluated, and for MCMT the teacher; the
input's own PSNR/SSIM (the identity) is reported for reference.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
import numpy as np

from crnet_jax import losses
from crnet_jax import models

Array = jax.Array
PyTree = Any


def eval_step(model: models.CRNet, params: PyTree, teacher_params: PyTree | None,
              batch: Mapping[str, Array]) -> tuple[dict[str, Array], dict[str, Array]]:
  """Per-image metrics and outputs of one evaluation batch.

  Returns:
    ({'input_psnr', 'input_ssim', 'student_psnr', 'student_ssim'[, 'teacher_psnr',
    'teacher_ssim']}: (n,) PSNR/SSIM on the real pixels (`batch['mask']`), and
    {'student'[, 'teacher']}: the outputs clipped to [0, 1]). The input's metrics are those of
    the identity (the low-light image itself).
  """
  high, mask = batch['high'], batch['mask']
  low = jnp.clip(batch['low'], 0.0, 1.0)
  metrics = {'input_psnr': losses.psnr(low, high, mask=mask),
             'input_ssim': losses.ssim(low, high, mask=mask)}
  outputs = {}
  for name, p in (('student', params), ('teacher', teacher_params)):
    if p is None:
      continue
    outputs[name] = models.enhance(model, p, batch['low'], mask)
    metrics[f'{name}_psnr'] = losses.psnr(outputs[name], high, mask=mask)
    metrics[f'{name}_ssim'] = losses.ssim(outputs[name], high, mask=mask)
  return metrics, outputs


@functools.lru_cache(maxsize=16)
def compiled_eval_step(model: models.CRNet, replicated: NamedSharding,
                       data_sharding: NamedSharding) -> Callable[..., Any]:
  """`eval_step` of `model`, jitted: parameters `replicated`, the batch on `data_sharding`.

  (params, teacher_params, batch) -> (per-image metrics, clipped outputs), replicated. Cached on
  its arguments, so runs with the same model and mesh in one process compile it once.
  """
  return jax.jit(functools.partial(eval_step, model),
                 in_shardings=(replicated, replicated, data_sharding), out_shardings=replicated)


def _replicated_global(x: np.ndarray, sharding: NamedSharding) -> Array:
  """A global array from data every process holds whole (evaluation batches)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
  extra = -len(x) % multiple
  if not extra:
    return x
  return np.concatenate([x, np.zeros((extra,) + x.shape[1:], x.dtype)])


def evaluate(fns: Any, params: PyTree, teacher_params: PyTree | None,
             eval_ds: Iterable[Mapping[str, np.ndarray]], num_images: int = 0
             ) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
  """Mean PSNR/SSIM over the real images of `eval_ds`, and up to `num_images` example images.

  Every metric is computed per image on its real pixels (`mask`), then summed with the `valid`
  flags and divided by the number of valid images, so padded batches change nothing.

  Args:
    fns: the run's compiled functions (`train.Functions`): its `eval_step` (`compiled_eval_step`),
      `mesh` and `data_sharding` are used.
    params: the student's parameters.
    teacher_params: the teacher's (MCMT), or None.
    eval_ds: the evaluation batches (`input_pipeline.EvalDataset`).
    num_images: how many example images to return (the first valid ones).

  Returns:
    ({'student_psnr', 'student_ssim', ['teacher_psnr', 'teacher_ssim'], 'input_psnr',
    'input_ssim', 'num_images'}, [{'name', 'low', 'student', ['teacher'], 'high'}, ...]) with the
    images cropped to their real size.
  """
  num_devices = fns.mesh.size
  sums: dict[str, float] = collections.defaultdict(float)
  count = 0
  examples: list[dict[str, np.ndarray]] = []
  for batch in eval_ds:
    valid = np.asarray(batch['valid'], bool)
    n = len(valid)
    arrays = {k: _replicated_global(_pad_to_multiple(np.asarray(batch[k], np.float32),
                                                     num_devices), fns.data_sharding)
              for k in ('low', 'high', 'mask')}
    per_image, outputs = fns.eval_step(params, teacher_params, arrays)
    for key, values in jax.device_get(per_image).items():
      values = np.asarray(values, np.float64)[:n]
      sums[key] += float(np.sum(np.where(valid, values, 0.0)))
    count += int(valid.sum())
    if len(examples) < num_images and valid.any():
      outputs = jax.device_get(outputs)
      for j in np.flatnonzero(valid)[:num_images - len(examples)]:
        h, w = int(batch['height'][j]), int(batch['width'][j])
        example = {'name': str(batch['name'][j]), 'low': np.asarray(batch['low'][j, :h, :w]),
                   'high': np.asarray(batch['high'][j, :h, :w])}
        for key, out in outputs.items():
          example[key] = np.asarray(out[j, :h, :w])
        examples.append(example)
  if count == 0:
    raise ValueError('the evaluation set has no valid image')
  results = {k: v / count for k, v in sums.items()}
  results['num_images'] = count
  return results, examples
