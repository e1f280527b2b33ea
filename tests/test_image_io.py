"""Tests of crnet_jax/image_io.py: decoding rules, errors and saving."""


import numpy as np
from PIL import Image
import pytest

from crnet_jax import image_io
from crnet_jax.image_io import DataError
from crnet_jax.image_io import MissingDataError


def _rgb(h=24, w=20, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path):
  a = _rgb()
  Image.fromarray(a).save(tmp_path / 'a.png')
  x = image_io.load_image(tmp_path / 'a.png')
  assert x.shape == (24, 20, 3) and x.dtype == np.float32
  np.testing.assert_array_equal(image_io.to_uint8(x), a)


def test_grayscale_replicated(tmp_path):
  g = _rgb()[..., 0]
  Image.fromarray(g, 'L').save(tmp_path / 'g.png')
  x = image_io.load_image(tmp_path / 'g.png')
  assert x.shape == (24, 20, 3)
  for c in range(3):
    np.testing.assert_allclose(x[..., c], g / 255.0, atol=1e-6)


def test_rgba_alpha_dropped_not_composited(tmp_path):
  a = _rgb()
  rgba = np.concatenate([a, np.zeros((24, 20, 1), np.uint8)], axis=-1)  # fully transparent
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a.png')
  x = image_io.load_image(tmp_path / 'a.png')
  np.testing.assert_array_equal(image_io.to_uint8(x), a)


def test_16bit_grayscale_png(tmp_path):
  g = (np.arange(24 * 20).reshape(24, 20) * 131).astype(np.uint16)
  Image.fromarray(g).save(tmp_path / 'g16.png')
  x = image_io.load_image(tmp_path / 'g16.png')
  np.testing.assert_allclose(x[..., 1], g / 65535.0, atol=1e-6)


def test_16bit_rgb_tiff(tmp_path):
  tifffile = pytest.importorskip('tifffile')
  a = (np.random.default_rng(1).integers(0, 65536, (24, 20, 3))).astype(np.uint16)
  tifffile.imwrite(tmp_path / 'a16.tif', a)
  x = image_io.load_image(tmp_path / 'a16.tif')
  np.testing.assert_allclose(x, a / 65535.0, atol=1e-6)


def test_palette(tmp_path):
  a = _rgb()
  p = Image.fromarray(a).convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
  p.save(tmp_path / 'p.png')
  x = image_io.load_image(tmp_path / 'p.png')
  expected = np.asarray(p.convert('RGB'))
  np.testing.assert_array_equal(image_io.to_uint8(x), expected)


def test_exif_orientation(tmp_path):
  a = np.zeros((24, 20, 3), np.uint8)
  a[:4, :4] = 255  # bright top-left corner as stored
  img = Image.fromarray(a)
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display
  img.save(tmp_path / 'r.jpg', exif=exif, quality=95)
  x = image_io.load_image(tmp_path / 'r.jpg')
  assert x.shape == (20, 24, 3)
  # Stored top-left goes to the displayed top-right.
  assert x[:4, -4:].mean() > 0.9 and x[:4, :4].mean() < 0.1
  assert image_io.image_size(tmp_path / 'r.jpg') == (20, 24)


@pytest.mark.parametrize('ext', ['bmp', 'tif', 'jpg'])
def test_other_formats(tmp_path, ext):
  a = _rgb()
  Image.fromarray(a).save(tmp_path / f'a.{ext}')
  x = image_io.load_image(tmp_path / f'a.{ext}')
  assert x.shape == (24, 20, 3)
  if ext != 'jpg':
    np.testing.assert_array_equal(image_io.to_uint8(x), a)


def test_missing_file(tmp_path):
  with pytest.raises(MissingDataError, match='nope.png'):
    image_io.load_image(tmp_path / 'nope.png')
  with pytest.raises(FileNotFoundError):
    image_io.load_image(tmp_path / 'nope.png')


def test_truncated_file(tmp_path):
  Image.fromarray(_rgb(64, 64)).save(tmp_path / 'a.png')
  data = (tmp_path / 'a.png').read_bytes()
  (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match='cut.png'):
    image_io.load_image(tmp_path / 'cut.png')


def test_not_an_image(tmp_path):
  (tmp_path / 'notes.png').write_text('hello')
  with pytest.raises(DataError, match='notes.png.*not an image'):
    image_io.load_image(tmp_path / 'notes.png')
  assert issubclass(DataError, ValueError)


def test_save_image_clips_and_rounds(tmp_path):
  x = np.linspace(-0.5, 1.5, 24 * 20 * 3, dtype=np.float32).reshape(24, 20, 3)
  out = tmp_path / 'sub' / 'o.png'
  image_io.save_image(out, x)
  y = np.asarray(Image.open(out))
  assert y.dtype == np.uint8
  np.testing.assert_array_equal(y, np.round(np.clip(x, 0, 1) * 255).astype(np.uint8))
  image_io.save_image(tmp_path / 'o2.png', x[..., :1])  # (H, W, 1) -> gray
  assert np.asarray(Image.open(tmp_path / 'o2.png')).shape == (24, 20)
