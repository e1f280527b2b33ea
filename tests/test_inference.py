"""Inference, evaluation and export on a tiny CRNet with non-trivial parameters."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from skimage.metrics import peak_signal_noise_ratio
from skimage.metrics import structural_similarity

from configs import default
from crnet_jax import export
from crnet_jax import image_io
from crnet_jax import inference
from crnet_jax import models

def init(model, seed):
  """`{'params': ...}` of `model`, drawn the fast way (`models.init_params`, jitted)."""
  return {'params': jax.jit(functools.partial(models.init_params, model))(jax.random.key(seed))}



@pytest.fixture(scope='module')
def tiny():
  """A tiny CRNet whose parameters change images visibly (so tiling errors would show)."""
  config = default.get_model_config()
  config.update(features=4, num_groups=2, recurrences=1, num_blocks=2)
  model = models.create_model(config)
  params = init(model, 0)['params']
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  flat = {k: (jnp.full_like(v, 0.5) if k.endswith('gamma') else v * 3.0) for k, v in flat.items()}
  return model, flax.traverse_util.unflatten_dict(flat, sep='/'), config


def reference(model, params, image):
  """The plain jitted forward pass on exactly this image: no padding, no tiles."""
  out, _ = jax.jit(model.apply)({'params': params}, image[None])
  return np.clip(np.asarray(out[0]), 0, 1)


def test_tile_windows_partition_the_image():
  for length in (40, 96, 97, 200, 331):
    windows = inference.tile_windows(length, 48, 10)
    covered = np.zeros(length, int)
    for start, core_start, core_end in windows:
      assert 0 <= start and start + min(48, length) <= length
      assert core_start - start >= 10 or start == 0
      assert start + min(48, length) - core_end >= 10 or start + min(48, length) == length
      covered[core_start:core_end] += 1
    np.testing.assert_array_equal(covered, 1)
  with pytest.raises(ValueError, match='tile_size'):
    inference.tile_windows(100, 20, 10)


@pytest.mark.parametrize('overrides', [
    {}, {'memory': 'convgru', 'layer_attention': False, 'skip': 'previous'}])
def test_tiled_equals_whole_image(tiny, overrides):
  model, params, _ = tiny
  if overrides:
    model = model.clone(config=dataclasses.replace(model.config, **overrides))
    params = init(model, 1)['params']
    params = jax.tree.map(lambda v: v * 3.0, params)
  rng = np.random.default_rng(0)
  image = (rng.random((150, 203, 3)) * np.linspace(0.05, 0.4, 203)[None, :, None])
  image = image.astype(np.float32)
  whole = inference.Enhancer(model, params, inference.TilingConfig(max_whole_pixels=10**8))
  tiled = inference.Enhancer(model, params, inference.TilingConfig(max_whole_pixels=1,
                                                                   tile_size=64))
  recompute = inference.Enhancer(model, params, inference.TilingConfig(
      max_whole_pixels=1, tile_size=64, cache_blocks=False))
  a, b = whole(image), tiled(image)
  assert a.shape == b.shape == image.shape
  assert np.abs(a - image).max() > 0.05  # the network really changes the image
  # Exact up to float32 rounding (the context covers the receptive field): measured max
  # differences 1.8e-7 (default model) and 6.0e-8 (convgru, no attention, skip 'previous').
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  # Recomputing the block outputs in each pass's second part instead of keeping them
  # (measured: bit-identical).
  np.testing.assert_allclose(recompute(image), b, atol=1e-5)
  # The tiles do see only part of the image: with too little context the seams show.
  rough = inference.Enhancer(model, params, inference.TilingConfig(
      max_whole_pixels=1, tile_size=64, tile_overlap=2))
  assert np.abs(rough(image) - a).max() > 1e-3


def test_tiled_memory_does_not_grow_with_the_passes():
  # The passes run in one loop: one pass's full-resolution buffers, whatever N x T is.
  temp = {}
  for groups in (1, 4):
    config = default.get_model_config()
    config.update(features=4, num_groups=groups, recurrences=2, num_blocks=2)
    model = models.create_model(config)
    enhancer = inference.Enhancer(model, init(model, 0)['params'], inference.TilingConfig(
        max_whole_pixels=1, tile_size=64))
    compiled = enhancer.lower_tiled(256, 256).compile()
    temp[groups] = compiled.memory_analysis().temp_size_in_bytes
  assert temp[4] < 1.1 * temp[1], temp


def test_bucket_padding_crops_back_exactly(tiny):
  model, params, _ = tiny
  image = np.random.default_rng(1).random((37, 45, 3)).astype(np.float32) * 0.3
  enhancer = inference.Enhancer(model, params, inference.TilingConfig(bucket=16))
  out = enhancer(image)
  assert out.shape == image.shape
  assert 0 <= out.min() and out.max() <= 1
  # With the pixel mask, padding changes nothing (convolutions and layer attention alike).
  np.testing.assert_allclose(out, reference(model, params, image), atol=1e-5)


def write_colour_modes(folder):
  """One image per colour mode and format, odd sizes."""
  rng = np.random.default_rng(2)
  rgb = (rng.random((21, 33, 3)) * 80).astype(np.uint8)
  os.makedirs(folder, exist_ok=True)
  Image.fromarray(rgb).save(os.path.join(folder, 'rgb.png'))
  Image.fromarray(rgb).save(os.path.join(folder, 'photo.jpg'))
  Image.fromarray(rgb).save(os.path.join(folder, 'bitmap.bmp'))
  Image.fromarray(rgb).save(os.path.join(folder, 'scan.tiff'))
  Image.fromarray(rgb[..., 0]).save(os.path.join(folder, 'gray.png'))
  Image.fromarray(np.concatenate([rgb, np.full((21, 33, 1), 255, np.uint8)], -1)).save(
      os.path.join(folder, 'alpha.png'))
  Image.fromarray(rgb).convert('P').save(os.path.join(folder, 'palette.png'))
  Image.fromarray((rng.random((19, 17)) * 9000).astype(np.uint16)).save(
      os.path.join(folder, 'deep16.png'))
  return ['rgb', 'photo', 'bitmap', 'scan', 'gray', 'alpha', 'palette', 'deep16']


def test_enhance_folder_round_trip_and_corrupt_file(tiny, tmp_path):
  model, params, _ = tiny
  names = write_colour_modes(tmp_path / 'in')
  (tmp_path / 'in' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
  enhancer = inference.Enhancer(model, params)
  report = inference.enhance_paths(enhancer, str(tmp_path / 'in'), str(tmp_path / 'out'),
                                   progress=False)
  assert list(report['failed']) == [str(tmp_path / 'in' / 'broken.png')]
  assert 'broken.png' in report['failed'][str(tmp_path / 'in' / 'broken.png')]
  assert sorted(os.listdir(tmp_path / 'out')) == sorted(n + '.png' for n in names)
  for name in names:
    source = image_io.load_image(next((tmp_path / 'in').glob(name + '.*')))
    written = image_io.load_image(tmp_path / 'out' / (name + '.png'))
    assert written.shape == source.shape
    want = image_io.to_uint8(enhancer(source)).astype(np.float32) / 255
    np.testing.assert_allclose(written, want, atol=1e-6)


def test_enhance_errors(tiny, tmp_path):
  model, params, _ = tiny
  enhancer = inference.Enhancer(model, params)
  with pytest.raises(FileNotFoundError, match='nowhere'):
    inference.enhance_paths(enhancer, str(tmp_path / 'nowhere'), str(tmp_path / 'out'))
  with pytest.raises(FileNotFoundError, match='checkpoint directory not found'):
    export.load_model(str(tmp_path / 'no_run'))
  (tmp_path / 'empty_run').mkdir()
  with pytest.raises(FileNotFoundError, match='neither a training workdir'):
    export.load_model(str(tmp_path / 'empty_run'))


def test_evaluate_matches_scikit_image(tiny, tmp_path):
  model, params, _ = tiny
  rng = np.random.default_rng(3)
  for i, shape in enumerate([(24, 31, 3), (29, 22, 3)]):
    high = (rng.random(shape) * 255).astype(np.uint8)
    low = (high * 0.2).astype(np.uint8)
    for folder, image in (('low', low), ('high', high)):
      os.makedirs(tmp_path / folder, exist_ok=True)
      Image.fromarray(image).save(tmp_path / folder / f'{i}.png')
  enhancer = inference.Enhancer(model, params)
  result = inference.evaluate_pairs(enhancer, str(tmp_path / 'low'), str(tmp_path / 'high'),
                                    str(tmp_path / 'eval'), progress=False)
  psnrs, ssims = [], []
  for i in range(2):
    low = image_io.load_image(tmp_path / 'low' / f'{i}.png')
    high = image_io.load_image(tmp_path / 'high' / f'{i}.png')
    out = enhancer(low).astype(np.float64)
    psnrs.append(peak_signal_noise_ratio(high.astype(np.float64), out, data_range=1))
    ssims.append(structural_similarity(out, high.astype(np.float64), gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False, data_range=1,
                                       channel_axis=-1))
  assert abs(result['mean']['psnr'] - np.mean(psnrs)) < 1e-4
  assert abs(result['mean']['ssim'] - np.mean(ssims)) < 1e-5
  saved = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  assert saved['num_images'] == 2 and len(saved['images']) == 2
  assert sorted(os.listdir(tmp_path / 'eval' / 'figures')) == ['0.png', '1.png']
  assert (tmp_path / 'eval' / 'contact_sheet.png').exists()


def test_inference_checkpoint_round_trip(tiny, tmp_path):
  model, params, config = tiny
  path = export.save_inference_checkpoint(str(tmp_path / 'model'), params, config)
  with pytest.raises(FileExistsError):
    export.save_inference_checkpoint(path, params, config)
  loaded_model, loaded_params, loaded_config = export.load_model(path)
  assert loaded_config.to_dict() == config.to_dict()
  image = np.random.default_rng(4).random((20, 27, 3)).astype(np.float32)
  np.testing.assert_array_equal(reference(loaded_model, loaded_params, image),
                                reference(model, params, image))


def test_jax_export_runs_without_crnet_jax(tiny, tmp_path):
  model, params, _ = tiny
  path = str(tmp_path / 'crnet.jaxexport')
  export.export_enhance_function(path, model, params)
  images = {'a': np.random.default_rng(5).random((1, 20, 28, 3)).astype(np.float32),
            'b': np.random.default_rng(6).random((2, 13, 9, 3)).astype(np.float32)}
  for key, x in images.items():
    np.save(tmp_path / f'{key}.npy', x)
  # The README's usage example, verbatim but for the path, in a process that never imports
  # crnet_jax; then the same function on two more image sizes.
  readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'README.md')).read()
  example = readme.split('<!-- export-example -->\n```python\n', 1)[1].split('```', 1)[0]
  assert 'exported/crnet.jaxexport' in example
  script = example.replace('exported/crnet.jaxexport', path) + textwrap.dedent(f"""
      assert enhanced.shape == (1, 400, 600, 3)
      import sys
      for key in ('a', 'b'):
        x = np.load({str(tmp_path)!r} + f'/{{key}}.npy')
        np.save({str(tmp_path)!r} + f'/{{key}}_out.npy', np.asarray(enhance.call(x)))
      assert not any(m.startswith('crnet_jax') for m in sys.modules), 'crnet_jax was imported'
      """)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  subprocess.run([sys.executable, '-c', script], check=True, cwd=str(tmp_path), env=env,
                 timeout=120)
  for key, x in images.items():
    want = np.stack([reference(model, params, image) for image in x])
    np.testing.assert_allclose(np.load(tmp_path / f'{key}_out.npy'), want, atol=1e-5)


def test_whole_or_tiled_by_memory(tiny, monkeypatch):
  """`max_whole_pixels=0`: an image runs whole when its compiled whole pass needs at most half of
  the memory, else tiled; both give the whole-image result (tiles are exact)."""
  model, params, _ = tiny
  image = np.random.default_rng(1).random((70, 90, 3)).astype(np.float32) * 0.3
  want = inference.Enhancer(model, params, inference.TilingConfig(max_whole_pixels=10**8))(image)
  auto = lambda: inference.Enhancer(model, params, inference.TilingConfig(
      max_whole_pixels=0, tile_size=64))
  probe = auto()
  stats = probe._compiled_whole(96, 96).memory_analysis()  # 70 x 90 padded to the bucket 32
  need = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
          - stats.alias_size_in_bytes)
  for memory, whole in ((2 * need, True), (2 * need - 2, False)):
    monkeypatch.setattr(inference, '_memory_bytes', lambda m=memory: m)
    enhancer = auto()
    assert enhancer.uses_whole(96, 96) is whole  # `__call__` runs tiled exactly when not
    np.testing.assert_allclose(enhancer(image), want, atol=1e-5)
  with pytest.raises(ValueError, match='max_whole_pixels'):
    inference.TilingConfig(max_whole_pixels=-1)
