"""CRNet and its layers: structure, parameter count, numerics against direct numpy formulas."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from crnet_jax import layers
from crnet_jax import models

def init(model, seed):
  """`{'params': ...}` of `model`, drawn the fast way (`models.init_params`, jitted)."""
  return {'params': jax.jit(functools.partial(models.init_params, model))(jax.random.key(seed))}



def tiny_model_config(**overrides):
  config = default.get_model_config()
  config.features = 8
  config.num_groups = 2
  config.recurrences = 2
  config.num_blocks = 2
  config.update(overrides)
  return config


def count(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def numpy_conv3x3(x, kernel, bias):
  """Direct SAME 3x3 convolution of NHWC x with an HWIO kernel, in float64."""
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.float64)
  n, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((n, h, w, kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
  return out + np.asarray(bias, np.float64)


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize('overrides', [
    {},  # the defaults (the paper's architecture): 1,240,732 parameters
    {'masked_conv': False, 'layer_attention': False},  # RN
    {'layer_attention': False},  # MRN
    {'memory': 'convgru'},
    {'memory': 'none', 'num_groups': 3, 'num_blocks': 4, 'features': 16},
])
def test_structure_and_parameter_count(overrides):
  config = default.get_model_config()
  config.update(overrides)
  model = models.create_model(config)
  x = jax.ShapeDtypeStruct((2, 24, 40, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert count(variables['params']) == models.num_params(config)
  final, intermediates = jax.eval_shape(model.apply, variables, x)
  assert final.shape == x.shape and final.dtype == jnp.float32
  assert len(intermediates) == config.num_groups - 1
  assert all(s.shape == x.shape for s in intermediates)


def test_parameter_count_formula_matches_the_param_tree_and_a_hand_count():
  # The paper gives no parameter count: `models.num_params` is checked against the parameters
  # flax creates and, for a tiny network, against shapes written out by hand from docs/model.md.
  config = default.get_model_config()  # the paper's architecture with our defaults
  model = models.create_model(config)
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  assert count(jax.eval_shape(model.init, jax.random.key(0), x)['params']) == 1_240_732
  assert models.num_params(config) == 1_240_732

  # C = 4 features, B = 2 blocks, N = 2 groups, ConvLSTM memory, masked convs, layer attention.
  # Each MC is a feature conv and a mask conv with the same shapes (HWIO kernel + bias).
  c = 4
  lmrg = {
      'head/feature_kernel': (3, 3, 6, c), 'head/feature_bias': (c,),  # concat(x, y): 6 in
      'head/mask_kernel': (3, 3, 6, c), 'head/mask_bias': (c,),
      'memory/gates/kernel': (3, 3, 2 * c, 4 * c), 'memory/gates/bias': (4 * c,),  # i, f, g, o
      'layer_attention/gamma': (),
      'layer_attention/fuse/kernel': (3, 3, 2 * c, c), 'layer_attention/fuse/bias': (c,),
      'tail/feature_kernel': (3, 3, c, 3), 'tail/feature_bias': (3,),
      'tail/mask_kernel': (3, 3, c, 3), 'tail/mask_bias': (3,),
  }
  for block in ('block_0', 'block_1'):
    for mc in ('mc1', 'mc2'):
      for part in ('feature', 'mask'):
        lmrg[f'{block}/{mc}/{part}_kernel'] = (3, 3, c, c)
        lmrg[f'{block}/{mc}/{part}_bias'] = (c,)
  expected = {f'lmrg_{n}/{k}': shape for n in range(2) for k, shape in lmrg.items()}
  # By hand, per group: head 2 * (216 + 4) = 440, ConvLSTM 1152 + 16 = 1168, blocks 2 x 2 MCs x
  # 2 * (144 + 4) = 1184, attention 1 + 288 + 4 = 293, tail 2 * (108 + 3) = 222: 3307.
  assert sum(int(np.prod(s)) for s in expected.values()) == 2 * 3307
  for recurrences in (1, 3):  # the T unrolls share their weights
    tiny = tiny_model_config(features=c, num_groups=2, num_blocks=2, recurrences=recurrences)
    params = jax.eval_shape(models.create_model(tiny).init, jax.random.key(0), x)['params']
    flat = flax.traverse_util.flatten_dict(params, sep='/')
    assert {k: tuple(v.shape) for k, v in flat.items()} == expected
    assert models.num_params(tiny) == 2 * 3307


def test_layer_attention_gamma_starts_at_zero_and_jit_agrees():
  config = tiny_model_config(features=4, recurrences=1, num_blocks=2)
  model = models.create_model(config)
  x = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3))
  variables = init(model, 0)
  flat = flax.traverse_util.flatten_dict(variables['params'], sep='/')
  gammas = {k: v for k, v in flat.items() if k.endswith('layer_attention/gamma')}
  assert len(gammas) == config.num_groups
  assert all(float(v) == 0.0 for v in gammas.values())
  eager_final, eager_inter = model.apply(variables, x)
  jit_final, jit_inter = jax.jit(model.apply)(variables, x)
  np.testing.assert_allclose(eager_final, jit_final, atol=1e-5)
  for a, b in zip(eager_inter, jit_inter):
    np.testing.assert_allclose(a, b, atol=1e-5)


def with_nonzero_gamma(params, value=0.7):
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  flat = {k: (jnp.full_like(v, value) if k.endswith('gamma') else v) for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def test_fused_masked_conv_matches_two_convs():
  x = jax.random.uniform(jax.random.key(1), (2, 12, 16, 3))
  fused = models.create_model(tiny_model_config(fused_masked_conv=True))
  plain = models.create_model(tiny_model_config(fused_masked_conv=False))
  variables = init(fused, 0)
  variables = {'params': with_nonzero_gamma(variables['params'])}
  a, _ = jax.jit(fused.apply)(variables, x)
  b, _ = jax.jit(plain.apply)(variables, x)  # same parameter tree
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_masked_conv_equals_formula():
  x = np.random.default_rng(0).random((1, 5, 6, 3)).astype(np.float32)
  for activation, act in (('relu', lambda v: np.maximum(v, 0)), ('identity', lambda v: v)):
    for fused in (True, False):
      mc = layers.MaskedConv(4, activation, fused=fused)
      params = jax.jit(mc.init)(jax.random.key(0), x)['params']
      params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases
      got = jax.jit(mc.apply)({'params': params}, x)
      want = (act(numpy_conv3x3(x, params['feature_kernel'], params['feature_bias']))
              * sigmoid(numpy_conv3x3(x, params['mask_kernel'], params['mask_bias'])))
      np.testing.assert_allclose(got, want, atol=1e-5)


def test_masked_residual_block_and_convlstm_equal_formulas():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 5, 6, 4)).astype(np.float32)
  block = layers.MaskedResidualBlock(4)
  p = jax.jit(block.init)(jax.random.key(0), x)['params']

  def mc(v, q):
    return (np.maximum(numpy_conv3x3(v, q['feature_kernel'], q['feature_bias']), 0)
            * sigmoid(numpy_conv3x3(v, q['mask_kernel'], q['mask_bias'])))

  np.testing.assert_allclose(jax.jit(block.apply)({'params': p}, x),
                             x + mc(mc(x, p['mc1']), p['mc2']),
                             atol=1e-5)

  h0 = rng.standard_normal((1, 5, 6, 4)).astype(np.float32)
  c0 = rng.standard_normal((1, 5, 6, 4)).astype(np.float32)
  cell = layers.ConvLSTM(4)
  q = jax.jit(cell.init)(jax.random.key(1), x, (h0, c0))['params']
  h, (h_state, c) = jax.jit(cell.apply)({'params': q}, x, (h0, c0))
  gates = numpy_conv3x3(np.concatenate([x, h0], -1), q['gates']['kernel'], q['gates']['bias'])
  i, f, g, o = np.split(gates, 4, axis=-1)
  c_want = sigmoid(f) * c0 + sigmoid(i) * np.tanh(g)
  np.testing.assert_allclose(c, c_want, atol=1e-5)
  np.testing.assert_allclose(h, sigmoid(o) * np.tanh(c_want), atol=1e-5)
  np.testing.assert_array_equal(h, h_state)


def test_layer_attention_equals_numpy():
  rng = np.random.default_rng(0)
  batch, num_layers, height, width, channels = 2, 3, 4, 5, 2
  feats = rng.standard_normal((batch, num_layers, height, width, channels)).astype(np.float32)
  lam = layers.LayerAttention(features=3)
  params = jax.jit(lam.init)(jax.random.key(0), feats)['params']
  params = {**params, 'gamma': jnp.float32(0.37)}
  got = jax.jit(lam.apply)({'params': params}, feats)

  f = feats.reshape(batch, num_layers, -1).astype(np.float64)
  energy = f @ np.transpose(f, (0, 2, 1))
  energy = energy.max(axis=-1, keepdims=True) - energy
  attention = np.exp(energy - energy.max(axis=-1, keepdims=True))
  attention /= attention.sum(axis=-1, keepdims=True)
  out = 0.37 * (attention @ f) + f
  # Channel index of the fused input is layer * C + channel.
  out = out.reshape(batch, num_layers, height, width, channels).transpose(0, 2, 3, 1, 4)
  out = out.reshape(batch, height, width, num_layers * channels)
  want = numpy_conv3x3(out, params['fuse']['kernel'], params['fuse']['bias'])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_bfloat16_compute_is_close_to_float32():
  config = tiny_model_config()
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3)) * 0.3
  f32 = models.create_model(config)
  # At init the network moves the image by 2.7e-3 at most, too little to tell a bf16 path from
  # one that returns its input. With every kernel scaled by 3 (and gamma 0.5) it moves it by up to
  # 0.29 (mean 0.090), like a trained network brightening a dark image.
  flat = flax.traverse_util.flatten_dict(with_nonzero_gamma(init(f32, 0)['params'], 0.5), sep='/')
  flat = {k: v * 3 if k.endswith('kernel') else v for k, v in flat.items()}
  variables = {'params': flax.traverse_util.unflatten_dict(flat, sep='/')}
  bf16 = models.create_model(tiny_model_config(dtype='bfloat16'))
  out32, _ = jax.jit(f32.apply)(variables, x)
  out16, inter16 = jax.jit(bf16.apply)(variables, x)
  assert out16.dtype == jnp.float32 and all(s.dtype == jnp.float32 for s in inter16)
  bf16_params = jax.eval_shape(bf16.init, jax.random.key(0), x)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_params))
  change = float(jnp.max(jnp.abs(out32 - x)))
  assert change > 0.1  # measured 0.289
  # bf16's error relative to the change the network makes: measured 0.0109 (max) and 0.0077
  # (mean) here, 0.0102-0.0155 over init seeds 0-2 and kernel scales 1-3 (bf16 keeps 8 bits of
  # mantissa: 2^-8 = 0.0039 per rounding). A bf16 path returning its input gives 1; one that
  # computes in float32 anyway gives 0.
  relative = float(jnp.max(jnp.abs(out16 - out32))) / change
  assert 2e-3 < relative < 0.03, relative


@pytest.mark.parametrize('key,value', [('memory', 'lstm'), ('activation', 'tanhh'),
                                        ('skip', 'none'), ('dtype', 'float16'),
                                        ('features', 0), ('layer_attention_energy', 'median')])
def test_bad_model_config_names_the_key(key, value):
  config = default.get_model_config()
  config.unlock()
  config[key] = value
  with pytest.raises(ValueError, match=f'model.{key}'):
    models.create_model(config)


@pytest.mark.parametrize('energy', ['sum', 'mean'])
def test_pixel_mask_makes_padding_exact(energy):
  # Two images of different sizes in one zero-padded batch give their unpadded results ('mean'
  # divides each image's energy by its own real pixels).
  config = tiny_model_config(features=4, recurrences=1, layer_attention_energy=energy)
  model = models.create_model(config)
  rng = np.random.default_rng(0)
  images = [rng.random((13, 17, 3)).astype(np.float32), rng.random((20, 9, 3)).astype(np.float32)]
  variables = init(model, 0)
  variables = {'params': jax.tree.map(lambda v: v * 3.0, with_nonzero_gamma(variables['params']))}
  batch = np.zeros((2, 24, 24, 3), np.float32)
  mask = np.zeros((2, 24, 24, 1), np.float32)
  for i, image in enumerate(images):
    batch[i, :image.shape[0], :image.shape[1]] = image
    mask[i, :image.shape[0], :image.shape[1]] = 1
  padded, padded_inter = jax.jit(model.apply)(variables, batch, mask)
  unmasked, _ = jax.jit(model.apply)(variables, batch)
  for i, image in enumerate(images):
    h, w = image.shape[:2]
    alone, alone_inter = jax.jit(model.apply)(variables, image[None])
    np.testing.assert_allclose(padded[i, :h, :w], alone[0], atol=1e-5)
    np.testing.assert_allclose(padded_inter[0][i, :h, :w], alone_inter[0][0], atol=1e-5)
    assert float(jnp.max(jnp.abs(unmasked[i, :h, :w] - alone[0]))) > 1e-4  # the mask matters
