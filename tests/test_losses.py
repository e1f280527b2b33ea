"""SSIM and PSNR against scikit-image; every loss term against a hand computation in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio
from skimage.metrics import structural_similarity

from crnet_jax import losses


def sk_ssim(a, b):
  return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, data_range=1, channel_axis=-1)


def image_pairs():
  """Random and structured pairs of odd and even sizes."""
  rng = np.random.default_rng(0)
  pairs = []
  for shape in [(11, 11, 3), (33, 47, 3), (40, 64, 3), (23, 17, 3)]:
    a = rng.random(shape)
    b = np.clip(a + 0.1 * rng.standard_normal(shape), 0, 1)
    pairs.append((a, b))
  yy, xx = np.mgrid[0:37, 0:29] / 36.0
  gradient = np.stack([yy, xx, (yy + xx) / 2], -1)
  checker = np.kron((np.indices((5, 4)).sum(0) % 2), np.ones((8, 8)))[:37, :29, None]
  checker = np.repeat(checker, 3, -1) * 0.8 + 0.1
  pairs.append((gradient, 0.5 * gradient + 0.1))
  pairs.append((checker, np.clip(checker ** 2.2 + 0.05 * gradient, 0, 1)))
  pairs.append((gradient * 0.2, gradient * 0.2))  # identical: SSIM 1
  return [(a.astype(np.float32), b.astype(np.float32)) for a, b in pairs]


@pytest.mark.parametrize('index', range(7))
def test_ssim_and_psnr_match_scikit_image(index):
  a, b = image_pairs()[index]
  assert abs(float(losses.ssim(a, b)) - sk_ssim(a, b)) < 1e-5
  if not np.array_equal(a, b):
    assert abs(float(losses.psnr(a, b)) - peak_signal_noise_ratio(b, a, data_range=1)) < 1e-5


def test_batched_metrics_match_per_image():
  rng = np.random.default_rng(1)
  a = rng.random((3, 21, 19, 3)).astype(np.float32)
  b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  got_ssim = losses.ssim(a, b)
  got_psnr = losses.psnr(a, b)
  assert got_ssim.shape == (3,) and got_psnr.shape == (3,)
  for i in range(3):
    assert abs(float(got_ssim[i]) - sk_ssim(a[i], b[i])) < 1e-5
    assert abs(float(got_psnr[i]) - peak_signal_noise_ratio(b[i], a[i], data_range=1)) < 1e-5
  # Extra leading axes are kept.
  assert losses.ssim(a[None], b[None]).shape == (1, 3)


def test_masked_metrics_count_only_real_pixels():
  rng = np.random.default_rng(2)
  a = rng.random((17, 23, 3)).astype(np.float32)
  b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  pad_a = np.full((1, 32, 32, 3), 0.9, np.float32)
  pad_b = np.zeros((1, 32, 32, 3), np.float32)  # very different padding
  pad_a[0, :17, :23] = a
  pad_b[0, :17, :23] = b
  mask = np.zeros((1, 32, 32, 1), np.float32)
  mask[0, :17, :23] = 1
  assert abs(float(losses.ssim(pad_a, pad_b, mask=mask)[0]) - sk_ssim(a, b)) < 1e-5
  assert abs(float(losses.psnr(pad_a, pad_b, mask=mask)[0])
             - peak_signal_noise_ratio(b, a, data_range=1)) < 1e-5


def test_metric_gradients_are_finite():
  a, b = image_pairs()[1]
  for fn in (losses.ssim, losses.psnr):
    grad = jax.grad(lambda x, fn=fn: jnp.sum(fn(x, b)))(jnp.asarray(a))
    assert grad.shape == a.shape
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.max(jnp.abs(grad))) > 0


def small_outputs(seed=0, n=2, stages=3, shape=(12, 13, 3)):
  rng = np.random.default_rng(seed)
  final = rng.random((n,) + shape).astype(np.float32)
  intermediates = tuple(rng.random((n,) + shape).astype(np.float32) for _ in range(stages))
  return final, intermediates


def test_progressive_enhancement_loss_by_hand():
  final, inter = small_outputs(0)
  target = np.random.default_rng(9).random(final.shape).astype(np.float32)
  loss, terms = losses.progressive_enhancement_loss(final, inter, target, beta=0.3)
  want_e = 1 - np.mean([sk_ssim(final[i], target[i]) for i in range(len(final))])
  want_ms = np.mean([np.mean(np.abs(s.astype(np.float64) - target)) for s in inter])
  assert abs(float(terms['enhancement']) - want_e) < 1e-5
  assert abs(float(terms['mid_step']) - want_ms) < 1e-6
  assert abs(float(loss) - (want_e + 0.3 * want_ms)) < 1e-5
  # beta = 0 (CRNet-, MRN): only the enhancement loss; N = 1: no intermediates.
  assert abs(float(losses.progressive_enhancement_loss(final, inter, target, 0.0)[0])
             - want_e) < 1e-5
  assert float(losses.progressive_enhancement_loss(final, (), target)[1]['mid_step']) == 0.0


def test_multi_consistency_loss_by_hand():
  s_final, s_inter = small_outputs(1)
  t_final, t_inter = small_outputs(2)
  loss, terms = losses.multi_consistency_loss(s_final, s_inter, t_final, t_inter, gamma=0.5)
  mse = lambda a, b: np.mean((a.astype(np.float64) - b) ** 2)
  want_c = mse(s_final, t_final)
  want_mc = np.mean([mse(s, t) for s, t in zip(s_inter, t_inter)])
  assert abs(float(terms['consistency']) - want_c) < 1e-6
  assert abs(float(terms['mid_consistency']) - want_mc) < 1e-6
  assert abs(float(loss) - (want_c + 0.5 * want_mc)) < 1e-6
  assert abs(float(losses.consistency_loss(s_final, t_final)) - want_c) < 1e-6


def test_semi_supervised_loss_by_hand():
  s_final, s_inter = small_outputs(3, n=5)
  t_final, t_inter = small_outputs(4, n=5)
  target = np.random.default_rng(5).random((2,) + s_final.shape[1:]).astype(np.float32)
  loss, terms = losses.semi_supervised_loss(s_final, s_inter, t_final, t_inter, target,
                                            beta=0.7, gamma=0.4, lam=2.0)
  l_pe, _ = losses.progressive_enhancement_loss(
      s_final[:2], [s[:2] for s in s_inter], target, 0.7)
  mse = lambda a, b: np.mean((a.astype(np.float64) - b) ** 2)
  l_mcr = mse(s_final, t_final) + 0.4 * np.mean([mse(s, t) for s, t in zip(s_inter, t_inter)])
  assert abs(float(terms['progressive']) - float(l_pe)) < 1e-6
  assert abs(float(terms['multi_consistency']) - l_mcr) < 1e-6
  assert abs(float(loss) - (float(l_pe) + 2.0 * l_mcr)) < 1e-5
  assert set(terms) >= {'enhancement', 'mid_step', 'consistency', 'mid_consistency'}


def test_consistency_losses_give_no_gradient_to_the_teacher():
  s_final, s_inter = small_outputs(6)
  t_final, t_inter = small_outputs(7)
  target = s_final[:1] * 0.5

  def total(student, teacher):
    return losses.semi_supervised_loss(student[0], student[1], teacher[0], teacher[1],
                                       target)[0]

  student = (jnp.asarray(s_final), tuple(map(jnp.asarray, s_inter)))
  teacher = (jnp.asarray(t_final), tuple(map(jnp.asarray, t_inter)))
  g_student, g_teacher = jax.grad(total, argnums=(0, 1))(student, teacher)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_teacher))
  assert all(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(g_student))
  g = jax.grad(lambda t: losses.consistency_loss(jnp.asarray(s_final), t))(jnp.asarray(t_final))
  assert float(jnp.max(jnp.abs(g))) == 0.0
