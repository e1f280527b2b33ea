"""The Pallas masked residual block (`model.mrb_impl='pallas'`) against the plain XLA path.

The kernels run in Pallas's interpreter here (CPU). Outputs and gradients (wrt the input and every
parameter) must equal those of `layers.MaskedResidualBlock` with `impl='xla'`, with and without
the pixel mask, in float32 and bfloat16, on images that are not a multiple of the tile.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from crnet_jax import layers
from crnet_jax import models
from crnet_jax import pallas_mrb

# XLA's CPU backend compiles several times faster without its LLVM optimisations; the numbers
# under test do not depend on them.
FAST_COMPILE = {'xla_backend_optimization_level': 0}
CHANNELS = 4

# Tolerances, a few times the errors measured against the plain path (jax 0.10.2, CPU):
# float32: outputs 3.6e-7 absolute (values of order 1), gradients 8.1e-7 of the largest entry of
#   each gradient.
# bfloat16: outputs 1.2e-2 of the largest change the block makes (|out - x|), gradients 5.3e-2 of
#   the largest entry (a mask bias: the two paths round in different places: XLA rounds each
#   conv output, bias sum and gate to bf16, the kernels keep them in float32). Against a float32
#   reference the kernels were as accurate as the plain bf16 path or more (at most 1.02x its
#   error, often 2-10x less), hence the second bfloat16 check below.
F32_OUT_ATOL = 2e-6
F32_GRAD_RTOL = 4e-6
BF16_OUT_RTOL = 0.04
BF16_GRAD_RTOL = 0.15


def block_inputs(shape, dtype, with_mask, seed=0):
  """x, mask (or None), a cotangent for the output, and random parameters of a C -> C block."""
  rng = np.random.default_rng(seed)
  n, h, w = shape
  x = jnp.asarray(rng.normal(size=(n, h, w, CHANNELS)), jnp.float32).astype(dtype)
  mask = jnp.asarray(rng.random((n, h, w, 1)) > 0.3, jnp.float32) if with_mask else None
  cotangent = jnp.asarray(rng.normal(size=(n, h, w, CHANNELS)), jnp.float32)
  params = {mc: {k: jnp.asarray(rng.normal(0.0, 0.3 if k.endswith('kernel') else 0.2, (
      (3, 3, CHANNELS, CHANNELS) if k.endswith('kernel') else (CHANNELS,))), jnp.float32)
                 for k in pallas_mrb.PARAM_NAMES} for mc in ('mc1', 'mc2')}
  return x, mask, cotangent, params


def output_and_grads(fn, x, params, mask, cotangent):
  """`fn(x, params, mask)` and the vjp of `cotangent` wrt (x, params), in one compiled call."""
  def f(x, params):
    out, vjp = jax.vjp(lambda x, p: fn(x, p, mask), x, params)
    return out, vjp(cotangent.astype(out.dtype))
  return jax.jit(f).lower(x, params).compile(FAST_COMPILE)(x, params)


def plain(dtype):
  block = layers.MaskedResidualBlock(CHANNELS, dtype=dtype)
  return lambda x, p, m: block.apply({'params': p}, x, m)


def pallas(dtype, tile):
  return lambda x, p, m: pallas_mrb.masked_residual_block(x, p['mc1'], p['mc2'], m,
                                                          dtype=dtype, tile=tile)


def as_f32(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


def max_rel(got, want):
  """max |got - want| / max |want|."""
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize('dtype,with_mask,shape,tile,remat', [
    # Images that are not a multiple of the tile (partial tiles at the bottom and right edges),
    # several tiles in both directions, and one tile larger than the image.
    ('float32', True, (2, 10, 12), (4, 8), False),
    ('float32', False, (2, 9, 7), None, True),  # DEFAULT_TILE 8 x 16; under jax.checkpoint
    ('bfloat16', True, (2, 12, 10), (4, 4), False),
    ('bfloat16', False, (2, 8, 8), (4, 8), False),
])
def test_block_equals_plain_path(dtype, with_mask, shape, tile, remat):
  dtype = jnp.dtype(dtype)
  x, mask, cotangent, params = block_inputs(shape, dtype, with_mask)
  fn = pallas(dtype, tile)
  if remat:  # as with model.remat='blocks': the custom_vjp inside a rematerialised function
    fn = jax.checkpoint(fn)
  want, want_grads = as_f32(output_and_grads(plain(dtype), x, params, mask, cotangent))
  got, got_grads = as_f32(output_and_grads(fn, x, params, mask, cotangent))
  assert jax.tree.structure(got_grads) == jax.tree.structure(want_grads)
  names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(want_grads)]
  assert len(names) == 9  # dx and the 8 parameters
  if dtype == jnp.float32:
    np.testing.assert_allclose(got, want, atol=F32_OUT_ATOL, rtol=0)
    for name, g, w in zip(names, jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
      assert max_rel(g, w) < F32_GRAD_RTOL, name
    return
  change = np.max(np.abs(want - np.asarray(x, np.float32)))
  assert np.max(np.abs(got - want)) < BF16_OUT_RTOL * change
  for name, g, w in zip(names, jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    assert max_rel(g, w) < BF16_GRAD_RTOL, name
  # No less accurate than the plain bf16 path against float32 (1.5x its error, or 0.5%).
  ref, ref_grads = as_f32(output_and_grads(plain(jnp.float32), x.astype(jnp.float32), params,
                                           mask, cotangent))
  assert np.max(np.abs(got - ref)) <= 1.5 * np.max(np.abs(want - ref)) + 0.005 * change
  for name, g, w, r in zip(names, *map(jax.tree.leaves, (got_grads, want_grads, ref_grads))):
    assert max_rel(g, r) <= 1.5 * max_rel(w, r) + 0.005, name


def test_module_switch_keeps_parameters_and_function():
  """`MaskedResidualBlock(impl='pallas')` has the plain block's parameters (same names, shapes,
  initial values) and computes the same function on them."""
  x, mask, _, _ = block_inputs((2, 6, 5), jnp.float32, True, seed=1)
  results = {}
  for impl in layers.MRB_IMPLS:
    block = layers.MaskedResidualBlock(CHANNELS, impl=impl)
    init = jax.jit(block.init_with_output).lower(jax.random.key(3), x, mask)
    results[impl] = init.compile(FAST_COMPILE)(jax.random.key(3), x, mask)
  (out, params), (want_out, want_params) = results['pallas'], results['xla']
  jax.tree.map(np.testing.assert_array_equal, params, want_params)
  assert not np.allclose(want_out, x, atol=1e-3)  # the block changes its input
  np.testing.assert_allclose(out, want_out, atol=F32_OUT_ATOL, rtol=0)


def random_params(model, seed=0):
  """Random params of `model` with non-zero biases and layer attention gammas."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  rng = np.random.default_rng(seed)
  for key, value in flat.items():
    scale = 0.5 if key.endswith('gamma') else (
        0.1 if key.endswith('bias') else 1 / np.sqrt(np.prod(value.shape[:-1])))
    flat[key] = jnp.asarray(rng.normal(0.0, scale, value.shape), jnp.float32)
  return flax.traverse_util.unflatten_dict(flat, sep='/')


# Measured: the final images 1.2e-7 apart (the network changes them by up to 0.2).
CRNET_OUT_ATOL = 1e-6


def test_crnet_with_pallas_blocks_equals_xla():
  """A tiny CRNet (2 passes of 2 blocks, padded images with their pixel mask) gives the same
  images with either block implementation, on the same parameters."""
  config = default.get_model_config()
  config.update(features=CHANNELS, num_groups=1, recurrences=2, num_blocks=2)
  rng = np.random.default_rng(2)
  mask = jnp.ones((2, 8, 10, 1)).at[1, 6:].set(0.0).at[1, :, 7:].set(0.0)
  x = jnp.asarray(rng.random((2, 8, 10, 3)), jnp.float32) * mask
  params = random_params(models.create_model(config))
  outs = {}
  for impl in layers.MRB_IMPLS:
    config.mrb_impl = impl
    model = models.create_model(config)
    assert model.config.mrb_impl == impl
    fn = jax.jit(lambda p, model=model: model.apply({'params': p}, x, mask)[0])
    outs[impl] = fn.lower(params).compile(FAST_COMPILE)(params)
  assert np.max(np.abs(outs['xla'] - x)) > 0.05  # the network does something
  np.testing.assert_allclose(outs['pallas'], outs['xla'], atol=CRNET_OUT_ATOL, rtol=0)


def test_bad_or_unsupported_mrb_impl_is_refused():
  config = default.get_model_config()
  config.mrb_impl = 'triton'
  with pytest.raises(ValueError, match='model.mrb_impl'):
    models.create_model(config)
  x = jnp.zeros((1, 4, 4, CHANNELS))
  with pytest.raises(ValueError, match='model.mrb_impl'):
    layers.MaskedResidualBlock(CHANNELS, impl='fast').init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='model.mrb_impl'):  # the kernels are the masked block's
    layers.MaskedResidualBlock(CHANNELS, masked=False, impl='pallas').init(jax.random.key(0), x)


def test_kernels_lower_for_gpu():
  """Every kernel, forward and backward, lowers with Pallas's Triton (GPU) backend: lowering
  only, no GPU needed (the Triton compiler itself runs on the GPU machine)."""
  c = 16  # the GPU kernels need power-of-two channels >= 16
  x = jnp.zeros((2, 12, 20, c), jnp.bfloat16)
  mask = jnp.ones((2, 12, 20, 1))
  p = {k: jnp.zeros((3, 3, c, c) if k.endswith('kernel') else (c,))
       for k in pallas_mrb.PARAM_NAMES}
  block = functools.partial(pallas_mrb.masked_residual_block, dtype=jnp.bfloat16,
                            interpret=False)

  def f(x, p1, p2):
    out, vjp = jax.vjp(lambda *a: block(*a, mask), x, p1, p2)
    return vjp(out)

  text = jax.jit(f).trace(x, p, p).lower(lowering_platforms=('cuda',)).as_text()
  assert text.count('xla.gpu.triton') == 5  # 2 forward, 3 backward kernels
  with pytest.raises(ValueError, match='powers of two'):
    pallas_mrb.masked_residual_block(jnp.zeros((1, 4, 4, 12)), *[{
        k: jnp.zeros((3, 3, 12, 12) if k.endswith('kernel') else (12,))
        for k in pallas_mrb.PARAM_NAMES}] * 2, interpret=False)
