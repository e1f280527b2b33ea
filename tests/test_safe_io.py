"""A user's files are never overwritten or read back as inputs; every input file is accounted for.

docs/reliability.md lists the promises these tests keep:

- enhance never writes into or below its input folder, never replaces an input, and never
  replaces a file in its output folder that it did not write itself (its own earlier outputs
  carry a mark and are replaced on a rerun); a single input file can be written to a named file;
- evaluate never writes into its low or ground-truth folder, nor over a foreign file;
- every file of an input folder is written or reported with the reason (an animated GIF too);
- there is one list of image extensions (`image_io.IMAGE_EXTENSIONS`);
- an image over `inference.max_image_pixels` is refused naming its pixel count, and the tiled
  pass holds the image at full resolution in a few bytes per pixel (uint8 in, uint8 out).
"""

import functools
import hashlib
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from configs import default
from crnet_jax import image_io
from crnet_jax import inference
from crnet_jax import models
from crnet_jax.image_io import DataError


@pytest.fixture(scope='module')
def enhancer():
  config = default.get_model_config()
  config.update(features=4, num_groups=1, recurrences=1, num_blocks=1)
  model = models.create_model(config)
  params = jax.jit(functools.partial(models.init_params, model))(jax.random.key(0))
  return inference.Enhancer(model, params)


def png(path, seed=0, size=(12, 17)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray((rng.random(size + (3,)) * 90).astype(np.uint8)).save(path)
  return str(path)


def digest(path):
  with open(path, 'rb') as f:
    return hashlib.sha1(f.read()).hexdigest()


def snapshot(folder):
  return {os.path.relpath(os.path.join(r, n), folder): digest(os.path.join(r, n))
          for r, _, names in os.walk(folder) for n in names}


def enhance(enhancer, inputs, output):
  return inference.enhance_paths(enhancer, inputs, output, progress=False)


def test_output_folder_is_never_the_input_folder_or_inside_it(enhancer, tmp_path):
  src = tmp_path / 'in'
  png(src / 'a.png')
  before = snapshot(src)
  os.symlink(src, tmp_path / 'link')  # the input folder under another name
  for output in (src, src / 'enhanced', tmp_path / 'link', tmp_path / 'link' / 'out'):
    with pytest.raises(DataError) as err:
      enhance(enhancer, str(src), str(output))
    message = str(err.value)
    assert str(output) in message and str(src) in message, message
    assert snapshot(src) == before  # neither replaced nor joined by an output
  # A single input file into its own folder, or onto itself.
  for output in (src, src / 'a.png'):
    with pytest.raises(DataError, match='input'):
      enhance(enhancer, str(src / 'a.png'), str(output))
  assert snapshot(src) == before


def test_foreign_files_in_the_output_folder_are_never_replaced(enhancer, tmp_path):
  src, out = tmp_path / 'in', tmp_path / 'out'
  png(src / 'a.png', seed=1)
  png(src / 'b.png', seed=2)
  png(out / 'a.png', seed=3)  # the user's own file, not an output of enhance
  (out / 'notes.txt').write_text('mine')
  before = snapshot(out)
  with pytest.raises(DataError) as err:
    enhance(enhancer, str(src), str(out))
  assert str(out / 'a.png') in str(err.value) and 'not written by' in str(err.value)
  assert snapshot(out) == before  # refused before anything is written: no b.png either
  # A symbolic link in the output folder is not followed (it could point at an input).
  os.remove(out / 'a.png')
  os.symlink(src / 'a.png', out / 'a.png')
  with pytest.raises(DataError, match='is an input'):
    enhance(enhancer, str(src), str(out))
  os.remove(out / 'a.png')
  elsewhere = png(tmp_path / 'elsewhere.png', seed=5)
  os.symlink(elsewhere, out / 'a.png')
  with pytest.raises(DataError, match='symbolic link'):
    enhance(enhancer, str(src), str(out))
  assert snapshot(src) == {'a.png': digest(src / 'a.png'), 'b.png': digest(src / 'b.png')}
  assert digest(elsewhere) == digest(out / 'a.png')
  os.remove(out / 'a.png')
  # Its own earlier outputs are replaced by a rerun (the same command works twice).
  first = enhance(enhancer, str(src), str(out))
  assert sorted(os.listdir(out)) == ['a.png', 'b.png', 'notes.txt']
  second = enhance(enhancer, str(src), str(out))
  assert first['written'] == second['written'] and not second['failed']
  assert (out / 'notes.txt').read_text() == 'mine'
  assert not [n for n in os.listdir(out) if n.startswith('.')]  # no temporary files left


def test_output_that_is_an_existing_file_or_an_input(enhancer, tmp_path):
  src = tmp_path / 'in'
  png(src / 'a.png', seed=1)
  png(src / 'b.png', seed=2)
  (tmp_path / 'taken').write_text('a file, not a folder')
  with pytest.raises(DataError, match='not a folder'):
    enhance(enhancer, str(src), str(tmp_path / 'taken'))
  assert (tmp_path / 'taken').read_text() == 'a file, not a folder'
  # An input list that holds a file of the output folder: it would be replaced.
  out = tmp_path / 'out'
  png(out / 'b.png', seed=4)
  before = snapshot(out)
  with pytest.raises(DataError, match='is the input folder'):
    enhance(enhancer, [str(src / 'a.png'), str(out / 'b.png')], str(out))
  assert snapshot(out) == before
  # One file to one named file: written there (and only there).
  report = enhance(enhancer, str(src / 'a.png'), str(tmp_path / 'single.png'))
  assert report['written'] == [str(tmp_path / 'single.png')]
  assert image_io.load_image(tmp_path / 'single.png').shape == (12, 17, 3)
  enhance(enhancer, str(src / 'a.png'), str(tmp_path / 'single.png'))  # its own output again
  with pytest.raises(DataError, match='not written by'):
    enhance(enhancer, str(src / 'a.png'), str(src / 'b.png'))  # another user file


def test_every_file_of_an_input_folder_is_written_or_reported(enhancer, tmp_path):
  src = tmp_path / 'in'
  png(src / 'a.png')
  frames = [Image.fromarray(np.full((9, 11, 3), v, np.uint8)) for v in (10, 200)]
  frames[0].save(src / 'anim.gif', save_all=True, append_images=frames[1:], duration=50)
  Image.fromarray(np.full((9, 11, 3), 30, np.uint8)).save(src / 'w.webp')
  (src / 'notes.txt').write_text('not an image')
  (src / 'sub').mkdir()
  report = enhance(enhancer, str(src), str(tmp_path / 'out'))
  assert sorted(os.listdir(tmp_path / 'out')) == ['a.png', 'anim.png', 'w.png']
  assert sorted(report['failed']) == [str(src / 'notes.txt'), str(src / 'sub')]
  assert 'not an image' in report['failed'][str(src / 'notes.txt')]
  assert 'folder' in report['failed'][str(src / 'sub')]
  # The first frame of the animation, as for a single file.
  single = enhance(enhancer, str(src / 'anim.gif'), str(tmp_path / 'one'))
  assert digest(single['written'][0]) == digest(tmp_path / 'out' / 'anim.png')


def test_one_list_of_image_extensions():
  from experiments.study import shared as study  # pylint: disable=g-import-not-at-top
  assert '.webp' in image_io.IMAGE_EXTENSIONS and '.gif' in image_io.IMAGE_EXTENSIONS
  for module in (inference, study):
    assert getattr(module, 'IMAGE_EXTENSIONS', image_io.IMAGE_EXTENSIONS) is (
        image_io.IMAGE_EXTENSIONS), module.__name__


def test_evaluate_never_writes_into_its_inputs_or_over_foreign_files(enhancer, tmp_path):
  low, high = tmp_path / 'low', tmp_path / 'high'
  png(low / 'x.png', seed=1)
  png(high / 'x.png', seed=2)
  before = snapshot(tmp_path)
  for output in (low, high / 'eval'):
    with pytest.raises(DataError, match='inside|is the'):
      inference.evaluate_pairs(enhancer, str(low), str(high), str(output), progress=False)
  assert snapshot(tmp_path) == before
  out = tmp_path / 'eval'
  out.mkdir()
  (out / 'metrics.json').write_text('{"mine": 1}')
  with pytest.raises(DataError, match='not written by'):
    inference.evaluate_pairs(enhancer, str(low), str(high), str(out), progress=False)
  assert json.loads((out / 'metrics.json').read_text()) == {'mine': 1}
  os.remove(out / 'metrics.json')
  for _ in range(2):  # a rerun replaces its own outputs
    result = inference.evaluate_pairs(enhancer, str(low), str(high), str(out), progress=False)
  assert result['num_images'] == 1


def test_too_many_pixels_is_refused_naming_the_count(enhancer, tmp_path):
  src = tmp_path / 'in'
  png(src / 'big.png', size=(24, 32))
  png(src / 'small.png', size=(8, 8))
  limited = inference.Enhancer(enhancer.model, enhancer.params,
                               inference.TilingConfig(max_image_pixels=500))
  report = enhance(limited, str(src), str(tmp_path / 'out'))
  assert os.listdir(tmp_path / 'out') == ['small.png']
  reason = report['failed'][str(src / 'big.png')]
  assert '32x24' in reason and '768 pixels' in reason and 'inference.max_image_pixels' in reason


def test_uint8_images_give_the_float_result_exactly(enhancer):
  rng = np.random.default_rng(5)
  image = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
  for tiling in (inference.TilingConfig(), inference.TilingConfig(max_whole_pixels=1,
                                                                  tile_size=48)):
    e = inference.Enhancer(enhancer.model, enhancer.params, tiling)
    as_float = e(image.astype(np.float32) / 255.0)
    as_uint8 = e(image)
    np.testing.assert_array_equal(as_uint8, as_float)
    np.testing.assert_array_equal(e.enhance_uint8(image), image_io.to_uint8(as_float))


def test_tiled_memory_is_a_few_bytes_per_pixel(enhancer):
  # features 4, 1 block, 1 recurrence: the input (uint8), the estimate (float32), one block
  # output (4 x float32) and the output (uint8) at full resolution: 3 + 12 + 16 + 3 = 34 bytes.
  e = inference.Enhancer(enhancer.model, enhancer.params,
                         inference.TilingConfig(max_whole_pixels=1, tile_size=64))
  pixels = 512 * 512
  per_pixel = e.tiled_memory_bytes(512, 512) / pixels
  assert per_pixel < 40, per_pixel
  assert inference.bytes_per_pixel(e.model, e.tiling) == 34
