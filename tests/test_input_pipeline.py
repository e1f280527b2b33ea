"""Tests of crnet_jax/input_pipeline.py: patches, determinism, state, shards, eval, errors."""

import json
import logging

from configs import default as default_config
import numpy as np
import pytest

from crnet_jax import input_pipeline as ip
from crnet_jax.image_io import DataError
from tests.test_datasets import pattern
from tests.test_datasets import write
from tests.test_datasets import write_pairs

P = 8  # patch size of these tests
N_TRAIN = 4


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """4 train pairs (24x20, high = pattern(ident=i), low = high // 2), 3 test pairs of
  different sizes, and an extra unlabeled folder."""
  root = tmp_path_factory.mktemp('pipeline')
  write_pairs(root / 'low', root / 'high', [f'{i}.png' for i in range(N_TRAIN)])
  for i, (h, w) in enumerate([(16, 20), (24, 12), (10, 10)]):
    hi = pattern(h, w, 50 + i)
    write(root / 'tlow' / f't{i}.png', hi // 2)
    write(root / 'thigh' / f't{i}.png', hi)
  write(root / 'extra' / 'u.png', pattern(ident=90) // 2)
  return root


def make_config(root, **overrides):
  c = default_config.get_config()
  d = c.data
  d.dataset = 'paired_folders'
  d.low_dir, d.high_dir = str(root / 'low'), str(root / 'high')
  d.test_low_dir, d.test_high_dir = str(root / 'tlow'), str(root / 'thigh')
  d.data_dir = str(root / 'tfds')
  d.patch_size, d.patches_per_image = P, 3
  d.batch_size, d.unlabeled_batch_size, d.eval_batch_size = 4, 2, 2
  for k, v in overrides.items():
    if k == 'method':
      c.method = v
    else:
      setattr(d, k, v)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def dihedral(x, k):
  if k & 4:
    x = x[:, ::-1]
  return np.rot90(x, k & 3)


_INDEX = {}


def locate(patch_u8, images):
  """(image id, i, j, k) with dihedral(image[i:i+P, j:j+P], k) == patch, or None."""
  key = tuple((ident, img.tobytes()) for ident, img in images.items())
  if key not in _INDEX:
    table = {}
    for ident, img in images.items():
      for i in range(img.shape[0] - P + 1):
        for j in range(img.shape[1] - P + 1):
          crop = img[i:i + P, j:j + P]
          for k in range(8):
            table.setdefault(np.ascontiguousarray(dihedral(crop, k)).tobytes(),
                             (ident, i, j, k))
    _INDEX[key] = table
  return _INDEX[key].get(np.ascontiguousarray(patch_u8).tobytes())


def to_u8(x):
  return np.round(x * 255).astype(np.uint8)


def test_batches_shapes_and_alignment(folders):
  it = ip.create_train_iterator(make_config(folders))
  highs = {i: pattern(ident=i) for i in range(N_TRAIN)}
  ks = set()
  for batch in take(it, 6):
    assert set(batch) == {'low', 'high'}
    assert batch['low'].shape == (4, P, P, 3) and batch['low'].dtype == np.float32
    assert 0 <= batch['low'].min() and batch['high'].max() <= 1
    for lo, hi in zip(batch['low'], batch['high']):
      hi8 = to_u8(hi)
      np.testing.assert_array_equal(to_u8(lo), hi8 // 2)  # same crop, same transform
      found = locate(hi8, highs)
      assert found is not None
      ks.add(found[3])
  assert len(ks) >= 4  # flips and rotations happen


def test_epoch_covers_every_image_patches_per_image_times(folders):
  c = make_config(folders, batch_size=1)
  assert ip.steps_per_epoch(c) == N_TRAIN * 3
  highs = {i: pattern(ident=i) for i in range(N_TRAIN)}
  ids = [locate(to_u8(b['high'][0]), highs)[0] for b in take(ip.create_train_iterator(c), 12)]
  assert sorted(ids) == sorted(list(range(N_TRAIN)) * 3)


def test_same_seed_same_batches_other_seed_differs(folders):
  a = take(ip.create_train_iterator(make_config(folders)), 3)
  b = take(ip.create_train_iterator(make_config(folders)), 3)
  c = take(ip.create_train_iterator(make_config(folders, seed=1)), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['low'], y['low'])
  assert not all(np.array_equal(x['high'], z['high']) for x, z in zip(a, c))


def test_state_restore_continues(folders):
  c = make_config(folders, method='mcmt', label_fraction=0.5)
  it = ip.create_train_iterator(c)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # a plain JSON dict
  assert state['step'] == 5
  expected = take(it, 3)
  it2 = ip.create_train_iterator(c)
  take(it2, 1)
  it2.set_state(state)
  for x, y in zip(expected, take(it2, 3)):
    for k in ('low', 'high', 'unlabeled'):
      np.testing.assert_array_equal(x[k], y[k])


def test_process_shards_are_disjoint_and_cover(folders):
  c = make_config(folders, method='mcmt', label_fraction=0.5)
  full = take(ip.create_train_iterator(c), 4)
  shards = [take(ip.create_train_iterator(c, process_index=p, process_count=2), 4)
            for p in range(2)]
  for step in range(4):
    for key, b in (('low', 2), ('unlabeled', 1)):
      assert shards[0][step][key].shape[0] == b
      np.testing.assert_array_equal(shards[0][step][key], full[step][key][0::2])
      np.testing.assert_array_equal(shards[1][step][key], full[step][key][1::2])


def test_batch_not_divisible(folders):
  with pytest.raises(ValueError, match='batch_size=4 is not divisible.*3'):
    ip.create_train_iterator(make_config(folders), process_index=0, process_count=3)
  with pytest.raises(ValueError, match='unlabeled_batch_size=3'):
    ip.create_train_iterator(make_config(folders, method='mcmt', unlabeled_batch_size=3),
                             process_count=2)


def test_label_split_arithmetic():
  lab, unl = ip.label_split(485, 0.1, 0)
  assert len(lab) == 49 and len(unl) == 436  # round(48.5) up
  assert sorted(np.concatenate([lab, unl]).tolist()) == list(range(485))
  assert len(ip.label_split(5, 0.1, 0)[0]) == 1  # at least one
  assert len(ip.label_split(10, 0.25, 0)[0]) == 3
  lab, unl = ip.label_split(7, 1.0, 0)
  assert lab.tolist() == list(range(7)) and len(unl) == 0
  assert ip.label_split(20, 0.5, 1)[0].tolist() == ip.label_split(20, 0.5, 1)[0].tolist()
  assert ip.label_split(20, 0.5, 1)[0].tolist() != ip.label_split(20, 0.5, 2)[0].tolist()
  with pytest.raises(ValueError):
    ip.label_split(10, 0.0, 0)


def _sources_of(batches, key, images):
  return {locate(to_u8(p), images)[0] for b in batches for p in b[key]}


def test_mcmt_pool_is_the_unlabeled_lows_plus_extra(folders):
  lows = {i: pattern(ident=i) // 2 for i in range(N_TRAIN)}
  lows['extra'] = pattern(ident=90) // 2
  highs = {i: pattern(ident=i) for i in range(N_TRAIN)}
  c = make_config(folders, method='mcmt', label_fraction=0.5, unlabeled_dirs=(
      str(folders / 'extra'),))
  lab, unl = ip.label_split(N_TRAIN, 0.5, 0)
  batches = take(ip.create_train_iterator(c), 12)
  assert batches[0]['unlabeled'].shape == (2, P, P, 3)
  assert _sources_of(batches, 'high', highs) == set(lab.tolist())
  assert _sources_of(batches, 'unlabeled', lows) == set(unl.tolist()) | {'extra'}
  s = ip.dataset_summary(c)
  assert (s['labeled'], s['unlabeled'], s['test'], s['train_pairs']) == (2, 3, 3, 4)
  assert ip.steps_per_epoch(c) == (2 * 3) // 4 == s['steps_per_epoch']
  c.data.epoch_images = 'all'  # every train pair counts, labeled or not
  assert ip.steps_per_epoch(c) == (4 * 3) // 4 == ip.dataset_summary(c)['steps_per_epoch']


def test_mcmt_full_labels_pool_is_the_labeled_lows(folders):
  lows = {i: pattern(ident=i) // 2 for i in range(N_TRAIN)}
  c = make_config(folders, method='mcmt', label_fraction=1.0, unlabeled_batch_size=4)
  batches = take(ip.create_train_iterator(c), 12)
  assert _sources_of(batches, 'unlabeled', lows) == set(range(N_TRAIN))


def test_mcmt_unlabeled_patches_are_flipped_and_rotated(folders):
  # 3 of the 4 pairs keep their labels: every unlabeled patch comes from the one left, whose
  # pattern has no symmetry, so each patch's crop position and orientation k is unique.
  c = make_config(folders, method='mcmt', label_fraction=0.75, unlabeled_batch_size=4)
  _, unl = ip.label_split(N_TRAIN, 0.75, 0)
  assert len(unl) == 1
  lows = {i: pattern(ident=i) // 2 for i in range(N_TRAIN)}
  found = [locate(to_u8(p), lows) for b in take(ip.create_train_iterator(c), 20)
           for p in b['unlabeled']]
  assert all(f is not None and f[0] == unl[0] for f in found)
  counts = np.bincount([f[3] for f in found], minlength=8)
  # Measured (seed 0, 80 patches): [8 6 14 9 11 8 18 6] for k = 0..7 (10 expected each). Without
  # the augmentation every k would be 0; with flips only or rotations only, 4 or more are missing.
  assert np.all(counts >= 1) and counts.max() <= 0.3 * len(found), counts


def test_eval_padding_mask_valid(folders):
  c = make_config(folders)
  ev = ip.create_eval_dataset(c)
  assert ip.num_eval_images(c) == 3 and len(ev) == 2
  batches = list(ev)
  assert len(list(ev)) == 2  # re-iterable
  sizes = {'t0': (16, 20), 't1': (24, 12), 't2': (10, 10)}
  seen = []
  # Landscape and square images (t0, t2) padded to 16x24, then the portrait one (t1) to 24x16.
  for b, (hp, wp) in zip(batches, [(16, 24), (24, 16)]):
    assert b['low'].shape == (2, hp, wp, 3) and b['mask'].shape == (2, hp, wp, 1)
    assert b['valid'].dtype == bool and b['height'].dtype == np.int32
    for j in range(2):
      if not b['valid'][j]:
        assert b['name'][j] == '' and b['mask'][j].sum() == 0 and b['low'][j].sum() == 0
        continue
      name, (h, w) = b['name'][j], sizes[b['name'][j]]
      seen.append(name)
      assert (b['height'][j], b['width'][j]) == (h, w)
      assert b['mask'][j, :h, :w].min() == 1 and b['mask'][j].sum() == h * w
      hi = pattern(h, w, 50 + int(name[1]))
      np.testing.assert_array_equal(to_u8(b['high'][j, :h, :w]), hi)
      np.testing.assert_array_equal(to_u8(b['low'][j, :h, :w]), hi // 2)
      assert b['high'][j, h:].sum() == 0 and b['high'][j, :, w:].sum() == 0
  assert seen == ['t0', 't2', 't1']
  assert batches[1]['valid'].tolist() == [True, False]


def test_too_small_labeled_image_is_an_error(folders):
  with pytest.raises(DataError, match=r'0\.png: image is 24x20 .*patch_size=22'):
    ip.create_train_iterator(make_config(folders, patch_size=22))


def test_too_small_unlabeled_image_is_skipped_with_one_warning(tmp_path, folders, caplog):
  write(tmp_path / 'small' / 'tiny.png', pattern(6, 6))
  write(tmp_path / 'small' / 'ok.png', pattern(ident=7))
  c = make_config(folders, method='mcmt', label_fraction=1.0,
                  unlabeled_dirs=(str(tmp_path / 'small'),))
  with caplog.at_level(logging.WARNING):
    it = ip.create_train_iterator(c)
  msgs = [r.getMessage() for r in caplog.records if 'smaller than' in r.getMessage()]
  assert len(msgs) == 1 and 'tiny.png' in msgs[0]
  assert next(it)['unlabeled'].shape == (2, P, P, 3)


def test_bad_dataset_name(folders):
  with pytest.raises(ValueError, match='dataset must be one of'):
    ip.create_train_iterator(make_config(folders, dataset='nope'))


def test_default_dataset_summary_and_batches(tmp_path_factory):
  c = default_config.get_config()
  c.data.data_dir = str(tmp_path_factory.mktemp('default_pipeline'))
  c.data.synthetic.max_side = 64
  c.data.patch_size, c.data.batch_size = 16, 2
  s = ip.dataset_summary(c)
  assert s['dataset'] == 'default' and (s['labeled'], s['test']) == (6, 2)
  assert 'embedded default' in s['description'] and ip.LOL_OVERRIDE in s['description']
  assert '--config.data.dataset=lol --config.data.lol_dir=' in s['description']
  batch = next(ip.create_train_iterator(c))
  assert batch['low'].shape == (2, 16, 16, 3) and batch['low'].mean() < batch['high'].mean()
  assert ip.num_eval_images(c) == 2


def test_worker_processes_give_the_same_batches(folders):
  c = make_config(folders, method='mcmt', label_fraction=0.5)
  expected = take(ip.create_train_iterator(c), 4)
  c.data.num_workers = 1
  it = ip.create_train_iterator(c)
  try:
    got = take(it, 2)
    state = it.get_state()
    it.set_state(state)
    got += take(it, 2)  # restarted workers continue
  finally:
    it.close()
  for x, y in zip(expected, got):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
