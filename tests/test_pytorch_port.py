"""The PyTorch baseline of the benchmarks computes what the JAX code computes.

Skipped where torch is absent (it is a benchmark-only dependency, `benchmarks/requirements.txt`).
"""

import functools

import pytest

torch = pytest.importorskip('torch')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import pytorch_crnet  # noqa: E402
from crnet_jax import losses  # noqa: E402
from crnet_jax import models  # noqa: E402
from tests.common import random_params  # noqa: E402
from tests.test_models import tiny_model_config  # noqa: E402


@pytest.fixture(autouse=True, scope='module')
def exact_single_threaded_torch():
  """Float32 without TF32 (on GPUs), and one CPU thread for the tiny models (no OpenMP spinning
  against XLA's threads on small machines); torch's settings are restored afterwards."""
  saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
           torch.get_num_threads())
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.set_num_threads(1)
  yield
  torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, threads = saved
  torch.set_num_threads(threads)


FORWARD_CASES = (
    (),  # CRNet as in the paper (fused masked convs, ConvLSTM, layer attention, input skip)
    (('masked_conv', False), ('memory', 'convgru'), ('activation', 'gelu')),
    (('layer_attention', False), ('memory', 'none'), ('skip', 'previous'),
     ('fused_masked_conv', False)),
    (('layer_attention_energy', 'mean'),),
)


@functools.cache
def flax_forward(overrides):
  """(config, params, x, final, intermediates) of the flax model, computed once per case."""
  config = tiny_model_config(**dict(overrides))
  x = np.random.default_rng(1).uniform(size=(1, 20, 24, 3)).astype(np.float32)
  model = models.create_model(config)
  params = random_params(model, gamma=(0.3, 0.8))
  with jax.default_matmul_precision('highest'):
    final, intermediates = jax.jit(model.apply)({'params': params}, x)
  return config, params, x, np.asarray(final), [np.asarray(s) for s in intermediates]


@pytest.mark.parametrize('overrides', FORWARD_CASES, ids=['crnet', 'rn_convgru_gelu',
                                                        'mrn_nomemory_previous_unfused',
                                                        'crnet_mean_energy'])
def test_forward_matches_flax(overrides):
  config, params, x, final, intermediates = flax_forward(overrides)
  torch_model = pytorch_crnet.create_model(config)
  assert sum(p.numel() for p in torch_model.parameters()) == models.num_params(config)
  pytorch_crnet.load_flax_params(torch_model, params)
  torch_final, torch_intermediates = pytorch_crnet.apply_nhwc(torch_model, x)

  assert len(torch_intermediates) == len(intermediates) == config.num_groups - 1
  np.testing.assert_allclose(torch_final, final, atol=1e-4, rtol=0)
  for ours, theirs in zip(torch_intermediates, intermediates):
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_load_rejects_mismatched_params():
  config = tiny_model_config()
  x = np.zeros((1, 8, 8, 3), np.float32)
  params = random_params(models.create_model(config), gamma=(0.3, 0.8))
  with pytest.raises(ValueError, match='shape'):
    pytorch_crnet.load_flax_params(pytorch_crnet.create_model(tiny_model_config(features=4)),
                                   params)
  with pytest.raises(ValueError, match='lmrg_1'):  # no place for lmrg_1 in a one-group model
    pytorch_crnet.load_flax_params(pytorch_crnet.create_model(tiny_model_config(num_groups=1)),
                                   params)
  with pytest.raises(ValueError, match='layer_attention'):
    pytorch_crnet.load_flax_params(
        pytorch_crnet.create_model(tiny_model_config(layer_attention=False)), params)


def test_losses_match_flax():
  rng = np.random.default_rng(2)
  shape = (3, 20, 24, 3)
  target = rng.uniform(size=(2,) + shape[1:]).astype(np.float32)
  a = rng.uniform(size=shape).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
  stages = [rng.uniform(size=shape).astype(np.float32) for _ in range(2)]
  teacher_stages = [rng.uniform(size=shape).astype(np.float32) for _ in range(2)]
  t = pytorch_crnet.to_nchw

  np.testing.assert_allclose(pytorch_crnet.ssim(t(a), t(b)).numpy(),
                             np.asarray(jax.jit(losses.ssim)(a, b)), atol=1e-5, rtol=0)
  loss, terms = pytorch_crnet.progressive_enhancement_loss(
      t(a[:2]), [t(s[:2]) for s in stages], t(target), beta=0.7)
  jax_loss, jax_terms = jax.jit(losses.progressive_enhancement_loss)(
      a[:2], [s[:2] for s in stages], target, beta=0.7)
  np.testing.assert_allclose(loss.item(), float(jax_loss), atol=1e-5, rtol=0)
  for key in jax_terms:
    np.testing.assert_allclose(terms[key].item(), float(jax_terms[key]), atol=1e-5, rtol=0)

  loss, terms = pytorch_crnet.semi_supervised_loss(
      t(a), [t(s) for s in stages], t(b), [t(s) for s in teacher_stages], t(target),
      beta=0.7, gamma=0.5, lam=2.0)
  jax_loss, jax_terms = jax.jit(losses.semi_supervised_loss)(
      a, stages, b, teacher_stages, target, beta=0.7, gamma=0.5, lam=2.0)
  np.testing.assert_allclose(loss.item(), float(jax_loss), atol=1e-5, rtol=0)
  assert set(terms) == set(jax_terms)
  for key in jax_terms:
    np.testing.assert_allclose(terms[key].item(), float(jax_terms[key]), atol=1e-5, rtol=0)


def test_supervised_step_loss_matches_flax_and_updates():
  config, params, low, final, intermediates = flax_forward(FORWARD_CASES[0])
  high = np.random.default_rng(3).uniform(size=low.shape).astype(np.float32)
  jax_loss, _ = jax.jit(losses.progressive_enhancement_loss)(final, intermediates, high)

  torch_model = pytorch_crnet.load_flax_params(pytorch_crnet.create_model(config), params)
  before = [p.detach().clone() for p in torch_model.parameters()]
  step = pytorch_crnet.make_supervised_step(
      torch_model, pytorch_crnet.make_optimizer(torch_model, 1e-3))
  loss = step(pytorch_crnet.to_nchw(low), pytorch_crnet.to_nchw(high))  # the loss before the update
  np.testing.assert_allclose(loss.item(), float(jax_loss), atol=1e-5, rtol=0)
  assert all(not torch.equal(p, q) for p, q in zip(before, torch_model.parameters()))


@pytest.mark.parametrize('bf16', [False, True])
def test_mcmt_step_updates_student_and_ema_teacher(bf16):
  config = tiny_model_config()
  torch.manual_seed(0)
  student = pytorch_crnet.create_model(config)
  teacher = pytorch_crnet.make_teacher(student)
  with torch.no_grad():  # a teacher apart from the student, to see the EMA mix them
    for p in teacher.parameters():
      p.add_(0.01)
  teacher_before = [p.detach().clone() for p in teacher.parameters()]
  opt = pytorch_crnet.make_optimizer(student, 1e-3)
  step = pytorch_crnet.make_mcmt_step(student, teacher, opt, ema_decay=0.9, bf16=bf16)
  labeled_low, labeled_high, unlabeled_low = torch.rand(3, 2, 3, 16, 16).unbind(0)
  loss = step(labeled_low, labeled_high, unlabeled_low)
  assert loss.dtype == torch.float32 and torch.isfinite(loss)
  for t0, t1, s1 in zip(teacher_before, teacher.parameters(), student.parameters()):
    assert not t1.requires_grad
    torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s1.detach(), atol=1e-6, rtol=1e-6)
