"""Metrics (SSIM, PSNR) and the losses of the paper, as pure functions of arrays.

Images are NHWC (or HWC) float arrays with data range 1. The metrics reduce over H, W and C and
keep any leading batch axes. Every metric takes an optional `mask` (same leading shape, last axis 1
or C, 1 on real pixels) so that padded evaluation batches count only real pixels.

Losses (docs/model.md, "The losses"):
- `progressive_enhancement_loss`: L_PE = L_E + beta * L_ms, with L_E = 1 - SSIM(final, gt) and
  L_ms = mean_i mean|stage_i - gt| over the N-1 intermediate stages.
- `consistency_loss`: L_C = mean (f_student(x) - sg[f_teacher(x + eta)])^2.
- `multi_consistency_loss`: L_MCR = L_C + gamma * L_mc, L_mc = mean_i L_C(stage_i^s, stage_i^t).
- `semi_supervised_loss`: L_SSL = L_PE(labeled) + lam * L_MCR(labeled and unlabeled).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _gaussian_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """The normalised 1-D Gaussian window (as scipy.ndimage.gaussian_filter with radius 5)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return (w / w.sum()).astype(np.float32)


def _filter_valid(x: Array, window: np.ndarray) -> Array:
  """Separable 'valid' filtering of each channel of NHWC `x` with the 1-D `window`."""
  n, h, w, c = x.shape
  planes = jnp.moveaxis(x, -1, 1).reshape(n * c, h, w, 1)
  k = window.size
  rows = jnp.asarray(window).reshape(k, 1, 1, 1)
  cols = jnp.asarray(window).reshape(1, k, 1, 1)
  dn = ('NHWC', 'HWIO', 'NHWC')
  prec = jax.lax.Precision.HIGHEST
  planes = jax.lax.conv_general_dilated(planes, rows.astype(x.dtype), (1, 1), 'VALID',
                                        dimension_numbers=dn, precision=prec)
  planes = jax.lax.conv_general_dilated(planes, cols.astype(x.dtype), (1, 1), 'VALID',
                                        dimension_numbers=dn, precision=prec)
  ho, wo = planes.shape[1:3]
  return jnp.moveaxis(planes.reshape(n, c, ho, wo), 1, -1)


def _flatten_batch(x: Array) -> tuple[Array, tuple[int, ...]]:
  if x.ndim < 3:
    raise ValueError(f'expected images of shape (..., H, W, C), got {x.shape}')
  batch_shape = x.shape[:-3]
  return x.reshape((-1,) + x.shape[-3:]), batch_shape


def _masked_mean(values: Array, mask: Array | None) -> Array:
  """Mean over (H, W, C) of NHWC `values`, counting only pixels where `mask` is 1."""
  if mask is None:
    return jnp.mean(values, axis=(1, 2, 3))
  mask = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
  return jnp.sum(values * mask, axis=(1, 2, 3)) / jnp.sum(mask, axis=(1, 2, 3))


def ssim(x: Array, y: Array, *, max_val: float = 1.0, mask: Array | None = None) -> Array:
  """Mean structural similarity of `x` and `y` (Wang et al. 2004), per image.

  Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances, computed
  per channel and averaged over the channels and the pixels of the valid region (windows that lie
  inside the image): the same definition as `skimage.metrics.structural_similarity(x, y,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=max_val,
  channel_axis=-1)`. With a `mask` (1 on the real pixels of a top-left aligned image in a padded
  array), only windows that lie entirely on real pixels count.
  """
  x, batch_shape = _flatten_batch(jnp.asarray(x))
  y, _ = _flatten_batch(jnp.asarray(y))
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  c1 = (SSIM_K1 * max_val) ** 2
  c2 = (SSIM_K2 * max_val) ** 2
  window = _gaussian_1d()
  stats = _filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), window)
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(stats, 5, axis=-1)
  var_x = e_xx - mu_x * mu_x
  var_y = e_yy - mu_y * mu_y
  cov = e_xy - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
      (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
  map_mask = None
  if mask is not None:
    mask, _ = _flatten_batch(jnp.asarray(mask, jnp.float32))
    # A window counts when all its pixels are real: its box sum of the mask is full.
    box = np.ones(SSIM_WINDOW, np.float32)
    inside = _filter_valid(mask[..., :1], box)
    map_mask = (inside > SSIM_WINDOW * SSIM_WINDOW - 0.5).astype(jnp.float32)
  return _masked_mean(ssim_map, map_mask).reshape(batch_shape)


def psnr(x: Array, y: Array, *, max_val: float = 1.0, mask: Array | None = None) -> Array:
  """Peak signal-to-noise ratio in dB per image: `10 log10(max_val^2 / MSE)`.

  The same definition as `skimage.metrics.peak_signal_noise_ratio(y, x, data_range=max_val)`,
  with the MSE over (H, W, C), or over the real pixels where `mask` is 1.
  """
  x, batch_shape = _flatten_batch(jnp.asarray(x))
  y, _ = _flatten_batch(jnp.asarray(y))
  if mask is not None:
    mask, _ = _flatten_batch(jnp.asarray(mask, jnp.float32))
  mse = _masked_mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), mask)
  return (10.0 * jnp.log10(max_val ** 2 / mse)).reshape(batch_shape)


def mean_absolute_error(x: Array, y: Array) -> Array:
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def enhancement_loss(final: Array, target: Array) -> Array:
  """L_E = 1 - SSIM(final, target), averaged over the batch (same gradient as -SSIM)."""
  return 1.0 - jnp.mean(ssim(final, target))


def mid_step_loss(intermediates: Sequence[Array], target: Array) -> Array:
  """L_ms = mean_i |stage_i - gt|_1 (mean absolute error) over the N-1 intermediate stages."""
  if not intermediates:
    return jnp.zeros((), jnp.float32)
  return jnp.mean(jnp.stack([mean_absolute_error(s, target) for s in intermediates]))


def progressive_enhancement_loss(final: Array, intermediates: Sequence[Array], target: Array,
                                 beta: float = 1.0) -> tuple[Array, dict[str, Array]]:
  """Progressive enhancement loss, L_PE = L_E + beta * L_ms (docs/model.md).

  Returns the loss and its terms `{'enhancement': L_E, 'mid_step': L_ms}`.
  """
  l_e = enhancement_loss(final, target)
  l_ms = mid_step_loss(intermediates, target)
  return l_e + beta * l_ms, {'enhancement': l_e, 'mid_step': l_ms}


def consistency_loss(student: Array, teacher: Array) -> Array:
  """L_C = mean (student - sg[teacher])^2: the teacher's output is a constant target."""
  teacher = jax.lax.stop_gradient(teacher)
  return jnp.mean(jnp.square(student.astype(jnp.float32) - teacher.astype(jnp.float32)))


def multi_consistency_loss(student_final: Array, student_intermediates: Sequence[Array],
                           teacher_final: Array, teacher_intermediates: Sequence[Array],
                           gamma: float = 1.0) -> tuple[Array, dict[str, Array]]:
  """Multi-consistency regularisation, L_MCR = L_C + gamma * L_mc (docs/model.md).

  L_mc = mean_i L_C(stage_i^student, stage_i^teacher) over the N-1 intermediate stages. The
  teacher's outputs get no gradient. Returns the loss and `{'consistency': L_C,
  'mid_consistency': L_mc}`.
  """
  if len(student_intermediates) != len(teacher_intermediates):
    raise ValueError(f'student has {len(student_intermediates)} intermediate stages, teacher '
                     f'{len(teacher_intermediates)}')
  l_c = consistency_loss(student_final, teacher_final)
  if student_intermediates:
    l_mc = jnp.mean(jnp.stack([consistency_loss(s, t) for s, t in
                               zip(student_intermediates, teacher_intermediates)]))
  else:
    l_mc = jnp.zeros((), jnp.float32)
  return l_c + gamma * l_mc, {'consistency': l_c, 'mid_consistency': l_mc}


def semi_supervised_loss(student_final: Array, student_intermediates: Sequence[Array],
                         teacher_final: Array, teacher_intermediates: Sequence[Array],
                         target: Array, *, beta: float = 1.0, gamma: float = 1.0,
                         lam: float = 1.0) -> tuple[Array, dict[str, Array]]:
  """The MCMT objective, L_SSL = L_PE(labeled) + lam * L_MCR(labeled and unlabeled).

  The student and teacher outputs cover the whole batch: the first `len(target)` images are the
  labeled ones (whose ground truth is `target`), the rest are unlabeled. One backward pass of this
  loss updates the student. Returns the loss and all four terms.
  """
  n = target.shape[0]
  l_pe, terms = progressive_enhancement_loss(
      student_final[:n], [s[:n] for s in student_intermediates], target, beta)
  l_mcr, consistency_terms = multi_consistency_loss(
      student_final, student_intermediates, teacher_final, teacher_intermediates, gamma)
  return l_pe + lam * l_mcr, {**terms, **consistency_terms,
                              'progressive': l_pe, 'multi_consistency': l_mcr}
