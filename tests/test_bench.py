"""The benchmark (benchmarks/bench.py), the analytic FLOP count and the performance options.

The performance options of `config.model` (`layer_attention_impl`, `remat`, `remat_policy`) must
compute the same function with the same parameters as the plain path; they are checked here.
"""

import functools
import importlib.util
import json
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench
from benchmarks import hlo_counts
from configs import crnet as crnet_config
from configs import default
from crnet_jax import layers
from crnet_jax import models
from tests.common import random_params


# XLA's CPU backend compiles about 5x faster without its LLVM optimisations; the numbers under test
# do not depend on them.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def tiny_model_config(**overrides):
  config = default.get_model_config()
  config.update(features=4, num_groups=2, recurrences=2, num_blocks=2)
  config.update(overrides)
  return config


# ------------------------------------------------------------------------------------------------
# The benchmark itself.


def test_bench_runs_and_writes_json_lines(tmp_path):
  config = crnet_config.get_config('test')
  config.model.num_groups = 1  # the smallest network: compiling dominates the test's time
  config.inference.max_whole_pixels = 1000  # the 40x24 image goes through tiles
  config.inference.tile_size = 24
  out = tmp_path / 'results' / 'cpu.jsonl'
  has_torch = importlib.util.find_spec('torch') is not None  # a benchmark-only dependency
  opts = bench.Options(cases=('mcmt', 'infer_40x24', 'input_pipeline'), dtypes=('float32',),
                       steps=2, warmup=1, torch='eager' if has_torch else 'none',
                       pipeline_steps=3, out=str(out),
                       compiler_options=FAST_COMPILE)
  records = bench.run(config, opts)
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert lines == json.loads(json.dumps(records))
  assert not [r for r in records if 'error' in r], records
  by_key = {(r['case'], r['framework'], r['variant']): r for r in records}
  common = ('case', 'dtype', 'device', 'backend', 'batch', 'median_ms', 'jax_version', 'date',
            'model')
  mcmt = by_key['mcmt', 'jax', 'jit']
  for key in common + ('patch', 'patches_per_s', 'compile_s', 'peak_bytes', 'compiled_bytes',
                       'tflops', 'flops_per_step') + (('vs_torch_eager',) if has_torch else ()):
    assert key in mcmt, key
  assert mcmt['batch'] == 8 and mcmt['labeled'] == 4 and mcmt['patch'] == 16
  assert mcmt['backend'] == 'cpu' and mcmt['loss_finite']
  assert mcmt['flops_per_step'] == 4 * models.flops_per_pixel(config.model) * 8 * 16 * 16
  assert math.isclose(mcmt['tflops'],
                      mcmt['flops_per_step'] / mcmt['median_ms'] * 1e3 / 1e12, rel_tol=1e-9)
  if has_torch:
    torch_mcmt = by_key['mcmt', 'torch', 'eager']
    assert torch_mcmt['patches_per_s'] > 0
    assert math.isclose(mcmt['vs_torch_eager'],
                        mcmt['patches_per_s'] / torch_mcmt['patches_per_s'], rel_tol=1e-9)
  infer = by_key['infer_40x24', 'jax', 'jit']
  assert infer['path'] == 'tiled' and infer['tiles'] > 1
  assert (infer['height'], infer['width']) == (24, 40) and infer['images_per_s'] > 0
  assert infer['end_to_end_ms'] > 0
  pipeline = by_key['input_pipeline', 'grain', 'mcmt']
  assert pipeline['patches_per_s'] > 0 and pipeline['batch'] == 8
  assert math.isclose(pipeline['vs_mcmt_step'],
                      pipeline['patches_per_s'] / mcmt['patches_per_s'], rel_tol=1e-9)


def test_bench_rejects_unknown_case():
  with pytest.raises(ValueError, match='unknown case'):
    bench.run(crnet_config.get_config('test'), bench.Options(cases=('infer_big',)))


# ------------------------------------------------------------------------------------------------
# The analytic FLOP count.


def jaxpr_flops(jaxpr) -> int:
  """2 x the multiply-adds of every convolution and dot in `jaxpr` (recursing into sub-jaxprs)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      out = eqn.outvars[0].aval
      kernel = eqn.invars[1].aval  # HWIO
      total += 2 * math.prod(out.shape) * math.prod(kernel.shape[:-1])
    elif eqn.primitive.name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs.shape[d] for d in lhs_contract)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += jaxpr_flops(sub)
  return total


@pytest.mark.parametrize('overrides', [
    {},
    {'masked_conv': False, 'layer_attention': False, 'memory': 'convgru'},
    {'memory': 'none', 'features': 6, 'num_blocks': 3},
])
def test_flops_per_pixel_counts_every_conv_and_einsum(overrides):
  config = tiny_model_config(**overrides)
  model = models.create_model(config)
  height, width = 8, 12
  x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(model.apply)(variables, x).jaxpr
  assert jaxpr_flops(jaxpr) == models.flops_per_pixel(config) * height * width


def test_flops_per_pixel_of_the_default_network_and_xla_agrees():
  config = default.get_model_config()
  assert models.flops_per_pixel(config) == 4_974_592  # 4.97 MFLOP, 81.5 GFLOP per 128x128 patch
  # XLA's own count (it adds the elementwise ops) of one group and pass of the 32-channel network.
  config.update(num_groups=1, recurrences=1)
  model = models.create_model(config)
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  cost = jax.jit(model.apply).lower(variables, x).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA skips the taps that fall on SAME padding: 46 of 48 per axis on 16 pixels.
  analytic = models.flops_per_pixel(config) * 16 * 16 * (46 / 48) ** 2
  assert 0.99 * analytic <= cost['flops'] <= 1.05 * analytic, (cost['flops'], analytic)


# ------------------------------------------------------------------------------------------------
# Performance options: same parameters, same numbers.


@pytest.mark.parametrize('impl', ['concat', 'reduce'])
@pytest.mark.parametrize('energy', ['sum', 'mean'])
def test_layer_attention_impls_equal_stack(impl, energy):
  rng = np.random.default_rng(0)
  feats = rng.standard_normal((2, 3, 4, 5, 2)).astype(np.float32)
  stack = layers.LayerAttention(features=3, energy_mode=energy)
  concat = layers.LayerAttention(features=3, impl=impl, energy_mode=energy)
  params = stack.init(jax.random.key(0), feats)['params']
  params = {**params, 'gamma': jnp.float32(0.37)}
  assert (jax.tree.structure(concat.init(jax.random.key(0), feats)['params'])
          == jax.tree.structure(params))
  want = stack.apply({'params': params}, feats)
  np.testing.assert_allclose(concat.apply({'params': params}, feats), want, atol=1e-5, rtol=1e-5)
  as_list = [feats[:, b] for b in range(feats.shape[1])]
  np.testing.assert_allclose(concat.apply({'params': params}, as_list), want, atol=1e-5,
                             rtol=1e-5)
  mask = (rng.random((2, 4, 5)) > 0.3).astype(np.float32)
  np.testing.assert_allclose(layers.layer_energy_of_list(as_list, mask),
                             layers.layer_energy(feats, mask), rtol=1e-5)
  np.testing.assert_allclose(layers.layer_energy(feats, mask, matmul=False),
                             layers.layer_energy(feats, mask), rtol=1e-5)
  with pytest.raises(ValueError, match='layer_attention_impl'):
    layers.LayerAttention(features=3, impl='fast').init(jax.random.key(0), feats)


OPTION_TEST_MODEL = {'num_groups': 1, 'recurrences': 2, 'num_blocks': 2}


def option_test_inputs():
  return (jax.random.uniform(jax.random.key(1), (2, 12, 16, 3)),
          jax.random.uniform(jax.random.key(2), (2, 12, 16, 3)))


def loss_and_grads(model, params, x, y):
  def loss_fn(p):
    final, intermediates = model.apply({'params': p}, x)
    return jnp.mean(jnp.square(final - y)) + sum(jnp.mean(jnp.abs(s - y)) for s in intermediates)
  fn = jax.jit(jax.value_and_grad(loss_fn)).lower(params).compile(compiler_options=FAST_COMPILE)
  return fn(params)


@functools.cache
def plain_loss_and_grads(energy='sum'):
  """(params, loss, grads) of the plain path, computed once for all the options."""
  plain = models.create_model(tiny_model_config(**OPTION_TEST_MODEL,
                                                layer_attention_energy=energy))
  params = random_params(plain)
  return (params, *loss_and_grads(plain, params, *option_test_inputs()))


@pytest.mark.parametrize('overrides', [
    {'layer_attention_impl': 'concat'},
    {'layer_attention_impl': 'reduce'},
    {'remat': 'lmrg'},
    {'remat': 'blocks', 'remat_policy': 'dots_saveable', 'layer_attention_impl': 'concat'},
    {'layer_attention_impl': 'concat', 'layer_attention_energy': 'mean'},  # its own backward
])
def test_performance_options_keep_outputs_and_gradients(overrides):
  x, y = option_test_inputs()
  fast = models.create_model(tiny_model_config(**OPTION_TEST_MODEL, **overrides))
  params, want_loss, want_grads = plain_loss_and_grads(
      overrides.get('layer_attention_energy', 'sum'))
  assert (jax.tree.structure(jax.eval_shape(fast.init, jax.random.key(0), x)['params'])
          == jax.tree.structure(params))
  loss, grads = loss_and_grads(fast, params, x, y)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
  if overrides.get('remat', 'none') != 'none':  # the backward pass does rematerialise
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(fast.apply({'params': p}, x)[0])))(
        params))
    assert 'checkpoint' in jaxpr or 'remat' in jaxpr


@pytest.mark.parametrize('impl,energy', [('concat', 'sum'), ('reduce', 'sum'), ('stack', 'mean'),
                                         ('concat', 'mean')])
def test_layer_attention_impls_keep_masked_and_tiled_inference(impl, energy):
  # Whole: padded to a multiple of 8 under a pixel mask; tiled: the energy summed over tiles. With
  # 'mean' both must divide by the real pixels (21 x 30), not the padded or the tile's.
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  small = {'num_groups': 1, 'recurrences': 2, 'num_blocks': 2}
  model = models.create_model(tiny_model_config(layer_attention_impl=impl,
                                                layer_attention_energy=energy, **small))
  params = random_params(models.create_model(tiny_model_config(**small)), gamma=3.0)
  image = np.random.default_rng(0).random((21, 30, 3)).astype(np.float32)
  alone = np.asarray(models.enhance(model, params, image[None]))[0]
  whole = inference.Enhancer(model, params, inference.TilingConfig(bucket=8))(image)
  tiled = inference.Enhancer(model, params, inference.TilingConfig(
      bucket=8, max_whole_pixels=100, tile_size=24))(image)
  np.testing.assert_allclose(whole, alone, atol=1e-5)
  np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize('impl', layers.LAYER_ATTENTION_IMPLS)
def test_mean_energy_does_not_grow_with_the_image(impl):
  # The same features tiled 2 x 2: four times the pixels, the same statistics. Away from the
  # border (the fuse conv pads), 'mean' gives the same output; 'sum' quadruples E and does not.
  rng = np.random.default_rng(0)
  feats = rng.standard_normal((1, 3, 6, 7, 2)).astype(np.float32) * 0.3
  feats[:, 1] += feats[:, 0]  # correlated layers, so that the attention is not uniform
  big = np.tile(feats, (1, 1, 2, 2, 1))
  inner = (slice(None), slice(1, 5), slice(1, 6))
  for mode, same in (('mean', True), ('sum', False)):
    lam = layers.LayerAttention(features=3, impl=impl, energy_mode=mode)
    params = {**lam.init(jax.random.key(0), feats)['params'], 'gamma': jnp.float32(2.0)}
    small_out = np.asarray(lam.apply({'params': params}, feats))[inner]
    big_out = np.asarray(lam.apply({'params': params}, big))[inner]
    if same:
      np.testing.assert_allclose(big_out, small_out, atol=1e-5)
    else:
      assert np.abs(big_out - small_out).max() > 1e-2


@pytest.mark.parametrize('key,value', [('layer_attention_impl', 'fast'), ('remat', 'all'),
                                        ('remat_policy', 'everything')])
def test_bad_performance_option_names_the_key(key, value):
  config = default.get_model_config()
  config[key] = value
  with pytest.raises(ValueError, match=f'model.{key}'):
    models.create_model(config)


def _dots_in_compiled_gradient(impl: str) -> int:
  model = models.create_model(tiny_model_config(**OPTION_TEST_MODEL, layer_attention_impl=impl))
  params, _, _ = plain_loss_and_grads()
  x, y = option_test_inputs()
  loss = lambda p: jnp.mean(jnp.square(model.apply({'params': p}, x)[0] - y))
  hlo = jax.jit(jax.grad(loss)).lower(params).compile(compiler_options=FAST_COMPILE).as_text()
  return hlo_counts.dots_anywhere(hlo)


def test_reduce_and_concat_layer_attention_have_no_matrix_products():
  """The compiled gradient of 'stack' holds the attention's batched matmuls; the others none."""
  assert _dots_in_compiled_gradient('stack') > 0
  assert _dots_in_compiled_gradient('reduce') == 0
  assert _dots_in_compiled_gradient('concat') == 0


def test_reduce_layer_attention_at_batch_one():
  """'reduce' equals 'stack' at batch 1 with many pixels, outputs and gradients (inference runs
  one image at a time; a broadcast-product form of the same sums compiles wrong there on CPU)."""
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.standard_normal((1, 3, 24, 32, 4)).astype(np.float32))
  stack = layers.LayerAttention(features=3)
  reduce = layers.LayerAttention(features=3, impl='reduce')
  params = {**stack.init(jax.random.key(0), feats)['params'], 'gamma': jnp.float32(0.37)}
  weight = jnp.asarray(rng.standard_normal((1, 24, 32, 3)).astype(np.float32))

  def value_and_grads(module):
    loss = lambda p, f: jnp.sum(module.apply({'params': p}, f) * weight)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, feats)

  (want, want_grads), (got, got_grads) = value_and_grads(stack), value_and_grads(reduce)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(w))))
  energy = jax.jit(layers.layer_energy, static_argnums=2)
  np.testing.assert_allclose(energy(feats, None, False), energy(feats, None, True), rtol=1e-5)


def test_hlo_counts_enter_loops_but_not_fusions():
  step = lambda a, b: jax.lax.fori_loop(0, 7, lambda i, c: jnp.tanh(c @ b), a)
  hlo = jax.jit(step).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
  counts = hlo_counts.count_ops(hlo)
  assert counts['fusions'] >= 2, counts  # the loop body's ops (the entry holds none)
  assert counts['loops'] == 1
  assert hlo_counts.dots_anywhere(hlo) == 1


def test_hlo_counts_read_ops_with_long_tuple_shapes():
  """A loop whose carry has 6+ parts: its shape holds `/*index=5*/`, and it still counts."""
  def step(*arrays):
    body = lambda i, c: tuple(jnp.tanh(a * (k + 1)) for k, a in enumerate(c))
    return jax.lax.fori_loop(0, 7, body, arrays)
  hlo = jax.jit(step).lower(*[jnp.ones((8, 8))] * 7).compile().as_text()
  assert '/*index=5*/' in hlo
  assert hlo_counts.count_ops(hlo)['loops'] == 1


# Operations of a supervised step compiled for an H100 (`hlo_counts.py --target=h100`), shortened.
_GPU_HLO = '''HloModule jit_step

ENTRY %main (p: bf16[16,128,128,32]) -> f32[] {
  %p = bf16[16,128,128,32]{3,2,1,0} parameter(0)
  %cudnn-conv-bias-activation.336 = (bf16[16,128,128,64]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b, %c), custom_call_target="__cudnn$convBiasActivationForward"
  %cudnn-conv-bw-filter.222 = (bf16[6,3,3,32]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$convBackwardFilter"
  %cudnn-conv-bw-input.111 = (bf16[16,128,128,32]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$convBackwardInput"
  %gemm_fusion_dot.8 = f32[16,64,5,5]{3,2,1,0} fusion(%a, %a), kind=kCustom, calls=%g, backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}
  %fusion.3438 = f32[16,5,5]{2,1,0} fusion(%a), kind=kCustom, calls=%s, backend_config={"fusion_backend_config":{"kind":"__triton","block_level_fusion_config":{}}}
  %input_reduce_fusion = (f32[512]{0}, f32[512]{0}) fusion(%a, %b), kind=kInput, calls=%fused_reduce
  %input_transpose_fusion.48 = bf16[64,3,3,6]{3,2,1,0} fusion(%a, %b), kind=kInput, calls=%t
  %input_concatenate_fusion.160 = bf16[6]{0} fusion(%a, %b), kind=kInput, calls=%c
  %loop_add_fusion.76 = f32[] fusion(%a), kind=kLoop, calls=%fused_add.76
  %copy.2183 = s32[] copy(%a)
  ROOT %tuple = (f32[]) tuple(%loop_add_fusion.76)
}
'''


def test_kernel_kinds_of_a_gpu_module():
  counts = hlo_counts.count_ops(_GPU_HLO)
  assert counts['kinds'] == {
      'conv_fprop': 1, 'conv_wgrad': 1, 'conv_dgrad': 1, 'gemm': 1, 'triton_fusion': 1,
      'reduction': 1, 'transpose': 1, 'concatenate': 1, 'elementwise': 1, 'copy': 1}
  assert (counts['ops'], counts['custom_calls'], counts['fusions'],
          counts['copies']) == (10, 3, 6, 1)


def test_gpu_target_without_its_compiler_is_one_line():
  """Without the CUDA plugin (as here), `--target=h100` ends in one line naming the flag."""
  with pytest.raises(SystemExit, match=r'^error: --target=h100: no CUDA compiler'):
    hlo_counts.target_devices('h100')
  with pytest.raises(SystemExit, match='unknown'):
    hlo_counts.target_devices('a100')


def test_predicted_gpu_step_of_the_profiled_step_is_its_measured_time():
  """`predict_gpu`: the default's prediction from its own profile is exactly the measured step;
  an option without the GEMMs' bytes saves exactly their measured time; Pallas bytes get a range."""
  from benchmarks import predict_gpu  # pylint: disable=import-outside-toplevel
  profile = {'busy_ms_per_step': 30.0, 'kinds': [
      {'kind': 'conv forward (fprop)', 'ms_per_step': 10.0},
      {'kind': 'GEMM/dot', 'ms_per_step': 8.0},
      {'kind': 'elementwise/concat fusions', 'ms_per_step': 11.0},
      {'kind': 'conv padding/workspace', 'ms_per_step': 1.0}]}
  default = {'case': 'supervised', 'option': 'default', 'kernels_run': 100,
             'bytes_by_kind': {'conv_fprop': 5e9, 'gemm': 2e9, 'elementwise': 4e9,
                               'concatenate': 7e9}}
  cal = predict_gpu.Calibration.of('supervised', default, profile, step_ms=40.0)
  assert cal.predict(default)['predicted'] == pytest.approx(40.0)
  no_gemm = {**default, 'bytes_by_kind': {k: v for k, v in default['bytes_by_kind'].items()
                                          if k != 'gemm'}}
  assert cal.predict(no_gemm)['predicted'] == pytest.approx(32.0)
  pallas = {**no_gemm, 'bytes_by_kind': {**no_gemm['bytes_by_kind'], 'pallas_or_triton': 1e9}}
  got = cal.predict(pallas)
  assert got['pallas_fast'] == pytest.approx(32.0 + 1e9 / (11e9 / 11.0))
  assert got['pallas_slow'] == pytest.approx(32.0 + 1e9 / (5e9 / 10.0))


_BYTES_HLO = '''HloModule bytes

%fused_slice (p0: f32[1024]) -> f32[16] {
  %p0 = f32[1024]{0} parameter(0)
  ROOT %s = f32[16]{0} slice(%p0), slice={[0:16]}
}

%fused_dus (p0: f32[1024], p1: f32[16], p2: s32[]) -> f32[1024] {
  %p0 = f32[1024]{0} parameter(0)
  %p1 = f32[16]{0} parameter(1)
  %p2 = s32[] parameter(2)
  ROOT %d = f32[1024]{0} dynamic-update-slice(%p0, %p1, %p2)
}

%fused_cat (p0: f32[1024], p1: f32[16]) -> f32[32] {
  %p0 = f32[1024]{0} parameter(0)
  %p1 = f32[16]{0} parameter(1)
  %h = f32[16]{0} slice(%p0), slice={[0:16]}
  ROOT %c = f32[32]{0} concatenate(%h, %p1), dimensions={0}
}

%body (c: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %c = (s32[], f32[1024]{0}) parameter(0)
  %x = f32[1024]{0} get-tuple-element(%c), index=1
  %y = f32[1024]{0} fusion(%x), kind=kLoop, calls=%fused_slice
  ROOT %t = (s32[], f32[1024]{0}) tuple(%i, %y)
}

ENTRY %main (a: f32[1024], u: f32[16], i: s32[]) -> f32[1024] {
  %a = f32[1024]{0} parameter(0)
  %u = f32[16]{0} parameter(1)
  %i = s32[] parameter(2)
  %s = f32[16]{0} fusion(%a), kind=kLoop, calls=%fused_slice
  %r = f32[16]{0} fusion(%s, %u), kind=kInput, calls=%fused_reduce
  %w = (s32[], f32[1024]{0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"7"}}
  %k = f32[32]{0} fusion(%a, %u), kind=kLoop, calls=%fused_cat
  ROOT %d = f32[1024]{0} fusion(%a, %r, %i), kind=kLoop, calls=%fused_dus
}
'''


def test_bytes_of_kernels_slices_in_place_updates_and_loops():
  """Moved bytes: a loop fusion reads only what its result needs of an operand (the 16 sliced
  floats, not 1024); a concatenation reads each element of its result once; an in-place update
  moves its update twice, not the whole buffer; a loop body's kernel runs its trip count times."""
  ops = {line.split('=')[0].split('%')[-1].strip(): (size, runs)
         for _, line, size, runs in hlo_counts.top_level_ops(_BYTES_HLO)}
  assert ops['s'] == (64 + 64, 1)
  assert ops['r'] == (64 + 64 + 64, 1)
  assert ops['d'] == (2 * 64 + 64 + 4, 1)
  assert ops['y'] == (4096 + 4096, 7)
  assert ops['k'] == (2 * 128, 1)
  counts = hlo_counts.count_ops(_BYTES_HLO)
  assert counts['kernels_run'] == 4 + 7 and counts['loops'] == 1
  assert counts['bytes'] == 128 + 192 + 196 + 256 + 7 * 8192
