"""Tests of the TFDS builders (crnet_jax/datasets) on tiny fixtures made here."""

import logging
import os

import numpy as np
from PIL import Image
import pytest

from crnet_jax import datasets
from crnet_jax.datasets import degrade
from crnet_jax.image_io import DataError
from crnet_jax.image_io import MissingDataError

H, W = 24, 20


def pattern(h: int = H, w: int = W, ident: int = 0) -> np.ndarray:
  """A uint8 image whose every pixel differs from its neighbours (and per `ident`)."""
  y, x = np.mgrid[0:h, 0:w]
  r = (y * 7 + x * 13 + ident * 31) % 256
  g = (y * 29 + x * 3 + ident * 57) % 256
  b = (y * 11 + x * 17 + ident * 101 + 50) % 256
  return np.stack([r, g, b], -1).astype(np.uint8)


def write(path, arr: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path)
  return str(path)


def write_pairs(low_dir, high_dir, names, h=H, w=W, ident0=0, low_names=None, high_names=None):
  """Writes high = pattern, low = high // 2 for each name; returns the high arrays."""
  out = {}
  for i, n in enumerate(names):
    hi = pattern(h, w, ident0 + i)
    write(os.path.join(high_dir, (high_names or names)[i]), hi)
    write(os.path.join(low_dir, (low_names or names)[i]), hi // 2)
    out[n] = hi
  return out


def records(builder, split):
  src = builder.as_data_source(split)
  return [src[i] for i in range(len(src))]


def check_records(builder, split, expected_names, highs=None):
  meta = datasets.split_metadata(builder, split)
  assert meta['names'] == expected_names
  recs = records(builder, split)
  assert [r['name'].decode() for r in recs] == expected_names  # record order = name order
  for r, name in zip(recs, expected_names):
    assert r['low'].dtype == np.uint8 and r['low'].shape[-1] == 3
    if highs is not None:
      np.testing.assert_array_equal(r['high'], highs[name])
      np.testing.assert_array_equal(r['low'], highs[name] // 2)
  return recs


def test_lol_v1(tmp_path):
  root = tmp_path / 'LOL'
  hi_train = write_pairs(root / 'our485' / 'low', root / 'our485' / 'high',
                         ['1.png', '2.png', '10.png'])
  hi_test = write_pairs(root / 'eval15' / 'low', root / 'eval15' / 'high', ['5.png', '7.png'],
                        ident0=9)
  b = datasets.lol_builder(str(root), 'v1', str(tmp_path / 'tfds'))
  check_records(b, 'train', ['1', '2', '10'], {k[:-4]: v for k, v in hi_train.items()})
  check_records(b, 'test', ['5', '7'], {k[:-4]: v for k, v in hi_test.items()})
  # Cached: a second call does not need the folder any more.
  b2 = datasets.lol_builder('', 'v1', str(tmp_path / 'tfds'))
  assert datasets.split_metadata(b2, 'test')['names'] == ['5', '7']


def test_lol_v2_real_matches_by_number(tmp_path):
  root = tmp_path / 'LOL-v2' / 'Real_captured'
  for split, nums in (('Train', [1, 2, 3]), ('Test', [4])):
    write_pairs(root / split / 'Low', root / split / 'Normal', [str(n) for n in nums],
                low_names=[f'low{n:05d}.png' for n in nums],
                high_names=[f'normal{n:05d}.png' for n in nums], ident0=nums[0])
  # The parent folder works too.
  b = datasets.lol_builder(str(tmp_path / 'LOL-v2'), 'v2_real', str(tmp_path / 'tfds'))
  recs = check_records(b, 'train', ['low00001', 'low00002', 'low00003'])
  for i, r in enumerate(recs):
    np.testing.assert_array_equal(r['high'], pattern(ident=1 + i))
  check_records(b, 'test', ['low00004'])


def test_lol_v2_synthetic(tmp_path):
  root = tmp_path / 'Synthetic'
  hi = write_pairs(root / 'Train' / 'Low', root / 'Train' / 'Normal', ['r01.png', 'r02.png'])
  write_pairs(root / 'Test' / 'Low', root / 'Test' / 'Normal', ['r09.png'], ident0=5)
  b = datasets.lol_builder(str(root), 'v2_synthetic', str(tmp_path / 'tfds'))
  check_records(b, 'train', ['r01', 'r02'], {k[:-4]: v for k, v in hi.items()})
  check_records(b, 'test', ['r09'])


def test_lol_missing_dir(tmp_path):
  with pytest.raises(MissingDataError, match='nowhere'):
    datasets.lol_builder(str(tmp_path / 'nowhere'), 'v1', str(tmp_path / 'tfds'))
  (tmp_path / 'LOL' / 'our485' / 'low').mkdir(parents=True)
  (tmp_path / 'LOL' / 'eval15').mkdir(parents=True)
  with pytest.raises(MissingDataError, match='high'):
    datasets.lol_builder(str(tmp_path / 'LOL'), 'v1', str(tmp_path / 'tfds'))


def test_paired_folders_with_test_folders(tmp_path):
  hi = write_pairs(tmp_path / 'low', tmp_path / 'high', ['a.png', 'b.png', 'c.png'])
  write_pairs(tmp_path / 'tlow', tmp_path / 'thigh', ['z.png'], ident0=4)
  b = datasets.paired_folders_builder(str(tmp_path / 'low'), str(tmp_path / 'high'),
                                      str(tmp_path / 'tlow'), str(tmp_path / 'thigh'),
                                      data_dir=str(tmp_path / 'tfds'))
  check_records(b, 'train', ['a', 'b', 'c'], {k[:-4]: v for k, v in hi.items()})
  check_records(b, 'test', ['z'])


def test_paired_folders_split_by_fraction(tmp_path):
  names = [f'{i}.png' for i in range(10)]
  write_pairs(tmp_path / 'low', tmp_path / 'high', names)
  kw = dict(test_fraction=0.2, data_dir=str(tmp_path / 'tfds'))
  b = datasets.paired_folders_builder(str(tmp_path / 'low'), str(tmp_path / 'high'),
                                      split_seed=0, **kw)
  train = datasets.split_metadata(b, 'train')['names']
  test = datasets.split_metadata(b, 'test')['names']
  assert len(test) == 2 and len(train) == 8
  assert sorted(train + test, key=int) == [str(i) for i in range(10)]
  again = datasets.paired_folders_builder(str(tmp_path / 'low'), str(tmp_path / 'high'),
                                          split_seed=0, **kw)
  assert datasets.split_metadata(again, 'test')['names'] == test
  other = datasets.paired_folders_builder(str(tmp_path / 'low'), str(tmp_path / 'high'),
                                          split_seed=3, **kw)
  assert datasets.split_metadata(other, 'test')['names'] != test


def test_paired_folders_rebuilds_when_folder_changes(tmp_path):
  write_pairs(tmp_path / 'low', tmp_path / 'high', ['a.png'])
  args = (str(tmp_path / 'low'), str(tmp_path / 'high'))
  b = datasets.paired_folders_builder(*args, data_dir=str(tmp_path / 'tfds'))
  assert datasets.split_metadata(b, 'train')['names'] == ['a']
  write_pairs(tmp_path / 'low', tmp_path / 'high', ['b.png'], ident0=3)
  b = datasets.paired_folders_builder(*args, data_dir=str(tmp_path / 'tfds'))
  assert datasets.split_metadata(b, 'train')['names'] == ['a', 'b']


def test_unpaired_folders_skip_bad_files_with_one_warning(tmp_path, caplog):
  write(tmp_path / 'u1' / 'a.png', pattern())
  write(tmp_path / 'u2' / 'a.png', pattern(ident=2))
  write(tmp_path / 'u2' / 'b.jpg', pattern(ident=3))
  (tmp_path / 'u2' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
  (tmp_path / 'u2' / 'notes.txt').write_text('not an image')
  with caplog.at_level(logging.WARNING):
    b = datasets.unpaired_folders_builder([str(tmp_path / 'u1'), str(tmp_path / 'u2')],
                                          str(tmp_path / 'tfds'))
  warnings = [r for r in caplog.records if 'Skipped' in r.getMessage()]
  assert len(warnings) == 1
  assert 'broken.png' in warnings[0].getMessage() and 'notes.txt' in warnings[0].getMessage()
  recs = records(b, 'train')
  assert [r['name'].decode() for r in recs] == ['0/a', '1/a', '1/b']
  assert set(recs[0]) == {'low', 'name'}
  np.testing.assert_array_equal(recs[1]['low'], pattern(ident=2))


def test_unpaired_folders_errors(tmp_path):
  with pytest.raises(MissingDataError, match='missing_dir'):
    datasets.unpaired_folders_builder([str(tmp_path / 'missing_dir')], str(tmp_path / 'tfds'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match='empty'):
    datasets.unpaired_folders_builder([str(tmp_path / 'empty')], str(tmp_path / 'tfds'))
  (tmp_path / 'junk').mkdir()
  (tmp_path / 'junk' / 'x.png').write_text('nope')
  with pytest.raises(DataError, match='no usable image'):
    datasets.unpaired_folders_builder([str(tmp_path / 'junk')], str(tmp_path / 'tfds'))


def test_synthetic_pairs_from_photos(tmp_path):
  for i in range(5):
    write(tmp_path / 'photos' / f'p{i}.png', pattern(ident=i))
  kw = dict(test_fraction=0.2, split_seed=0, seed=0, data_dir=str(tmp_path / 'tfds'))
  b = datasets.synthetic_pairs_builder(str(tmp_path / 'photos'), **kw)
  train = records(b, 'train')
  assert len(train) == 4 and len(records(b, 'test')) == 1
  for r in train:
    ident = int(r['name'].decode()[1:])
    np.testing.assert_array_equal(r['high'], pattern(ident=ident))
    assert r['low'].mean() < 0.4 * r['high'].mean()  # darkened
    expected = degrade.degrade(pattern(ident=ident),
                               degrade.image_seed(0, r['name'].decode()))
    np.testing.assert_array_equal(r['low'], np.round(expected * 255).astype(np.uint8))
  other = datasets.synthetic_pairs_builder(str(tmp_path / 'photos'), **{**kw, 'seed': 1})
  assert not np.array_equal(records(other, 'train')[0]['low'], train[0]['low'])


def test_degrade_is_pure_and_documented_ranges():
  x = pattern(64, 64).astype(np.float32) / 255
  a = degrade.degrade(x, 3)
  b = degrade.degrade(x, np.random.default_rng(3))
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.float32 and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
  assert not np.array_equal(a, degrade.degrade(x, 4))
  assert a.mean() < 0.3 * x.mean()
  with pytest.raises(ValueError):
    degrade.DegradationParams(exposure_min=0.5, exposure_max=0.1)
  p = degrade.DegradationParams.from_mapping({'exposure_min': 0.1, 'exposure_max': 0.1,
                                              'max_side': 600})
  assert p.exposure_min == 0.1


def test_default_dataset(default_builder):
  train = datasets.split_metadata(default_builder, 'train')
  test = datasets.split_metadata(default_builder, 'test')
  assert test['names'] == ['chelsea', 'coffee']
  assert len(train['names']) == 6 and not set(train['names']) & set(test['names'])
  assert max(train['heights'] + train['widths']) <= 96  # max_side of the fixture
  r = default_builder.as_data_source('test')[0]
  assert r['low'].shape == r['high'].shape and r['low'].mean() < r['high'].mean()


@pytest.fixture(scope='session')
def default_builder(tmp_path_factory):
  return datasets.synthetic_pairs_builder(
      '', seed=0, max_side=96, data_dir=str(tmp_path_factory.mktemp('default_tfds')))


# ------------------------------------------------------------------------------------------------
# Bad input: each error names the file.


def _paired(tmp_path):
  return datasets.paired_folders_builder(str(tmp_path / 'low'), str(tmp_path / 'high'),
                                         data_dir=str(tmp_path / 'tfds'))


def test_error_missing_folder(tmp_path):
  write_pairs(tmp_path / 'low', tmp_path / 'other', ['a.png'])
  with pytest.raises(MissingDataError, match=str(tmp_path / 'high')):
    _paired(tmp_path)


def test_error_empty_folder(tmp_path):
  (tmp_path / 'low').mkdir()
  write(tmp_path / 'high' / 'a.png', pattern())
  with pytest.raises(DataError, match=f'{tmp_path / "low"}.*empty'):
    _paired(tmp_path)


def test_error_missing_partner(tmp_path):
  write_pairs(tmp_path / 'low', tmp_path / 'high', ['a.png', 'b.png'])
  write(tmp_path / 'low' / 'c.png', pattern())
  with pytest.raises(DataError, match=r'c\.png: no high partner'):
    _paired(tmp_path)


def test_error_size_mismatch(tmp_path):
  write_pairs(tmp_path / 'low', tmp_path / 'high', ['a.png'])
  write(tmp_path / 'low' / 'b.png', pattern(24, 20))
  write(tmp_path / 'high' / 'b.png', pattern(20, 24))
  with pytest.raises(DataError, match=r'b\.png: size 24x20 .*differs'):
    _paired(tmp_path)


def test_error_corrupt_file(tmp_path):
  write_pairs(tmp_path / 'low', tmp_path / 'high', ['a.png', 'b.png'])
  data = (tmp_path / 'high' / 'b.png').read_bytes()
  (tmp_path / 'high' / 'b.png').write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match=str(tmp_path / 'high' / 'b.png')):
    _paired(tmp_path)
  assert not (tmp_path / 'tfds' / 'paired_folders').exists() or not any(
      (tmp_path / 'tfds' / 'paired_folders').rglob('*.array_record*'))


def test_error_non_image_file(tmp_path):
  write_pairs(tmp_path / 'low', tmp_path / 'high', ['a.png'])
  (tmp_path / 'low' / 'readme.txt').write_text('hello')
  (tmp_path / 'high' / 'readme.txt').write_text('hello')
  with pytest.raises(DataError, match=r'readme\.txt: not an image'):
    _paired(tmp_path)


def test_error_lists_every_problem(tmp_path):
  write_pairs(tmp_path / 'low', tmp_path / 'high', ['a.png', 'b.png'])
  (tmp_path / 'low' / 'a.png').write_text('x')
  (tmp_path / 'high' / 'b.png').write_text('x')
  with pytest.raises(DataError) as e:
    _paired(tmp_path)
  assert 'a.png' in str(e.value) and 'b.png' in str(e.value) and '2 problems' in str(e.value)


def test_lol_copies_are_separate_datasets(tmp_path):
  """A subset of LOL built after the whole (same data_dir) is its own dataset, not the cache."""
  full, part = tmp_path / 'LOL', tmp_path / 'LOL_part'
  write_pairs(full / 'our485' / 'low', full / 'our485' / 'high', ['1.png', '2.png', '3.png'])
  write_pairs(full / 'eval15' / 'low', full / 'eval15' / 'high', ['5.png'], ident0=9)
  write_pairs(part / 'our485' / 'low', part / 'our485' / 'high', ['2.png'], ident0=1)
  write_pairs(part / 'eval15' / 'low', part / 'eval15' / 'high', ['5.png'], ident0=9)
  data_dir = str(tmp_path / 'tfds')
  b_full = datasets.lol_builder(str(full), 'v1', data_dir)
  assert datasets.split_metadata(b_full, 'train')['names'] == ['1', '2', '3']
  b_part = datasets.lol_builder(str(part), 'v1', data_dir)
  assert datasets.split_metadata(b_part, 'train')['names'] == ['2']
  # Without data.lol_dir, two built copies are ambiguous: the error names both.
  with pytest.raises(DataError, match='2 copies of LOL v1'):
    datasets.lol_builder('', 'v1', data_dir)
