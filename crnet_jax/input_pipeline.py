"""Training and evaluation input pipelines (grain over TFDS ArrayRecord; no TensorFlow).

Datasets (`config.data.dataset`): 'default' (synthetic pairs from scikit-image's bundled photos),
'lol', 'paired_folders', 'synthetic_pairs' (see `crnet_jax/datasets`). They are built into
`config.data.data_dir` on first use, after every input file has been validated: bad data raises
`DataError` here, before training starts, never inside a worker.

Config and data, once: `check_config` checks `method` and every `data` field this module reads
(`ConfigError` naming the first bad one), and `load_data` builds the datasets of a config and
splits the labels (a `Data`). A training run calls each once and passes the `Data` to
`dataset_summary`, `create_train_iterator` and `create_eval_dataset`; called without one, these
check the config and load the data themselves.

Training stream (`create_train_iterator`):

- Labels: `label_split` keeps `max(1, round(label_fraction * n))` of the n paired train images
  (all of them when label_fraction == 1), chosen with a seeded permutation.
- Patches: each epoch, every labeled image gives `patches_per_image` random PxP crops, in a
  globally shuffled order (reshuffled every epoch). Each crop draws a position and one of the 8
  flips/90-degree rotations, applied identically to low and high.
- MCMT adds an unlabeled stream, built the same way from the pool: the low images of the pairs
  that lost their labels plus the images of `data.unlabeled_dirs`. When no pair lost its label
  (label_fraction == 1, or too few images to spare one), the pool is the labeled low images plus
  `data.unlabeled_dirs`. Unlabeled images smaller than the patch are skipped with one warning
  (unreadable files of `unlabeled_dirs` are skipped when the pool is built, also with one
  warning); a labeled one is an error.
- Both streams are infinite. Batch k of the global stream is the k-th run of `batch_size`
  patches; process p yields the patches p, p + process_count, ... of it (`b = batch_size //
  process_count` of them), so the shards are disjoint, cover the data, and the global stream does
  not depend on the number of processes. Everything is a pure function of `data.seed` and the
  position: restoring `{'step': k}` continues with exactly the same batches, with any number of
  worker processes.
- Batches: `{'low', 'high'}` float32 (b, P, P, 3) in [0, 1] (+ `'unlabeled'` (bu, P, P, 3) for
  MCMT).

Evaluation (`create_eval_dataset`): every image of the split once, in batches of exactly
`eval_batch_size`, each image zero-padded at the bottom/right to the shape of its orientation
group: the landscape (and square) images first, then the portrait ones, each group in name order,
padded to the group's max height and width rounded up to `eval_pad_multiple` (the last batch of a
group padded with `valid=False` images). So jit compiles at most twice, and a split that mixes
481x321 and 321x481 photos (BSDS, CBSD68) is not padded to 481x481 (1.5x the pixels).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from crnet_jax import datasets
from crnet_jax import image_io
from crnet_jax.config_checks import is_int
from crnet_jax.config_checks import is_num
from crnet_jax.config_checks import need
from crnet_jax.datasets import base as datasets_base
from crnet_jax.image_io import DataError

METHODS = ('supervised', 'mcmt')  # config.method
DATASETS = ('default', 'lol', 'paired_folders', 'synthetic_pairs')
EPOCH_IMAGES = ('labeled', 'all')  # config.data.epoch_images
LOL_OVERRIDE = '--config.data.dataset=lol --config.data.lol_dir=/path/to/LOL'


# ------------------------------------------------------------------------------------------------
# Datasets from the config.


def check_config(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises ConfigError naming the first bad one of `config.method` and the `data` fields.

  Args:
    config: the run config.
    num_devices: the batch sizes must be multiples of it (every device gets the same share).
  """
  need(config.method in METHODS, f"method must be 'supervised' or 'mcmt', got {config.method!r}")
  d = config.data
  keys = ['batch_size'] + (['unlabeled_batch_size'] if config.method == 'mcmt' else [])
  for key in keys:
    v = d[key]
    need(is_int(v) and v > 0 and v % num_devices == 0,
         f'data.{key} must be a positive multiple of the number of devices ({num_devices}), '
         f'got {v!r}')
  need(d.dataset in DATASETS, f'data.dataset must be one of {DATASETS}, got {d.dataset!r}')
  dirs = d.get('unlabeled_dirs', ())
  need(isinstance(dirs, str) or (isinstance(dirs, (tuple, list)) and
                                 all(isinstance(x, str) for x in dirs)),
       f'data.unlabeled_dirs must be a folder or a tuple of folders, got {dirs!r}')
  need(is_num(d.label_fraction) and 0.0 < d.label_fraction <= 1.0,
       f'data.label_fraction must be in (0, 1], got {d.label_fraction!r}')
  e = d.get('epoch_images', 'labeled')
  need(e in EPOCH_IMAGES, f'data.epoch_images must be one of {EPOCH_IMAGES}, got {e!r}')
  for key in ('patch_size', 'patches_per_image', 'eval_batch_size'):
    need(is_int(d[key]) and d[key] > 0, f'data.{key} must be a positive integer, got {d[key]!r}')
  w = d.get('num_workers', 0)
  need(is_int(w) and w >= 0,
       f'data.num_workers must be a non-negative integer (0 = load in the main process), got {w!r}')


def _data_dir(d: ml_collections.ConfigDict) -> str:
  return d.get('data_dir', '') or datasets.DEFAULT_DATA_DIR


def _paired_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The prepared builder of the paired dataset named by `config.data.dataset` (checked)."""
  d = config.data
  data_dir = _data_dir(d)
  synthetic = dict(d.get('synthetic', {}))
  if d.dataset == 'default':
    return datasets.synthetic_pairs_builder(
        '', seed=d.seed, max_side=int(synthetic.get('max_side', 0)), degradation=synthetic,
        data_dir=data_dir)
  if d.dataset == 'lol':
    return datasets.lol_builder(d.get('lol_dir', ''), d.get('lol_variant', 'v1'), data_dir)
  if d.dataset == 'paired_folders':
    return datasets.paired_folders_builder(
        d.get('low_dir', ''), d.get('high_dir', ''), d.get('test_low_dir', ''),
        d.get('test_high_dir', ''), d.get('test_fraction', 0.0), d.seed, data_dir)
  # 'synthetic_pairs'
  if not d.get('photos_dir', ''):
    raise DataError('dataset=synthetic_pairs needs data.photos_dir (a folder of clean photos); '
                    "dataset='default' uses scikit-image's photos")
  return datasets.synthetic_pairs_builder(
      d.photos_dir, test_fraction=d.get('test_fraction', 0.0), split_seed=d.seed, seed=d.seed,
      max_side=int(synthetic.get('max_side', 0)), degradation=synthetic, data_dir=data_dir)


def label_split(n: int, label_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded split of n train pairs into (labeled, unlabeled) index arrays, each sorted.

  Keeps `max(1, round(label_fraction * n))` labels (half rounds up); all when label_fraction is 1.

  Args:
    n: number of paired train images (>= 1).
    label_fraction: in (0, 1].
    seed: `config.data.seed`.

  Returns:
    (labeled, unlabeled) int64 arrays of indices in [0, n), disjoint, covering range(n).
  """
  if not 0.0 < label_fraction <= 1.0:
    raise ValueError(f'data.label_fraction must be in (0, 1], got {label_fraction}')
  if n < 1:
    raise DataError('no training pairs')
  if label_fraction >= 1.0:
    return np.arange(n), np.arange(0)
  n_lab = min(n, max(1, int(math.floor(label_fraction * n + 0.5))))
  perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1]).permutation(n)
  return np.sort(perm[:n_lab]), np.sort(perm[n_lab:])


@dataclasses.dataclass
class Data:
  """The datasets of a run (`load_data`): prepared builders, the label split, record indices."""
  builder: tfds.core.DatasetBuilder  # the paired dataset (splits 'train' and maybe 'test')
  meta: dict[str, list[Any]]  # of the paired train split
  labeled: np.ndarray  # record indices into the paired train split
  unlabeled_from_pairs: np.ndarray  # record indices of pairs that lost their labels
  pool_builder: tfds.core.DatasetBuilder | None  # data.unlabeled_dirs (MCMT)
  pool_meta: dict[str, list[Any]] | None


def load_data(config: ml_collections.ConfigDict) -> Data:
  """Builds (or finds, in `data.data_dir`) the datasets of a checked config; splits the labels.

  Raises:
    DataError: bad input data (every bad file is named).
  """
  d = config.data
  builder = _paired_builder(config)
  meta = datasets.split_metadata(builder, 'train')
  labeled, rest = label_split(len(meta['names']), float(d.label_fraction), d.seed)
  dirs = datasets.parse_dirs(d.get('unlabeled_dirs', ()))
  pool_builder = pool_meta = None
  if dirs and config.method == 'mcmt':
    pool_builder = datasets.unpaired_folders_builder(dirs, _data_dir(d))
    pool_meta = datasets.split_metadata(pool_builder, 'train')
  return Data(builder, meta, labeled, rest, pool_builder, pool_meta)


def _data_of(config: ml_collections.ConfigDict, data: Data | None) -> Data:
  """`data`, or, when None, the data of `config` (checked first, `check_config`)."""
  if data is None:
    check_config(config)
    data = load_data(config)
  return data


# ------------------------------------------------------------------------------------------------
# Transforms (module-level classes: grain pickles them into spawned workers).


def _dihedral(x: np.ndarray, k: int) -> np.ndarray:
  """One of the 8 flips / 90-degree rotations of an (H, W, C) array (k in [0, 8))."""
  if k & 4:
    x = x[:, ::-1]
  return np.rot90(x, k & 3)


def _crop(rng: np.random.Generator, h: int, w: int, p: int) -> tuple[int, int, int]:
  return int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1)), int(rng.integers(8))


def _to_float(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x, dtype=np.float32) * np.float32(1.0 / 255.0)


class CachedSource:
  """Random access to a split's records (only `keys`), with an optional in-memory cache.

  The cache keeps each decoded record of this process after its first use, so that after one
  epoch patches are cut from memory instead of decoding a PNG per patch. It is per process (a
  worker starts with an empty one; pickling drops it) and transparent to the stream.
  """

  def __init__(self, source: Sequence[Mapping[str, Any]], keys: Sequence[str], cache: bool):
    self._source = source
    self._keys = tuple(keys)
    self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if self._cache is not None:
      hit = self._cache.get(index)
      if hit is not None:
        return hit
    rec = self._source[index]
    rec = {k: rec[k] for k in self._keys}
    if self._cache is not None:
      self._cache[index] = rec
    return rec

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state['_cache'] = {} if self._cache is not None else None
    return state


class PairedPatch(grain.transforms.RandomMap):
  """Sample number -> a random aligned (low, high) patch of image `sample // patches_per_image`."""

  def __init__(self, source: Sequence[Mapping[str, Any]], records: np.ndarray,
               patches_per_image: int, patch_size: int):
    self.source = source
    self.records = np.asarray(records, np.int64)
    self.patches_per_image = int(patches_per_image)
    self.patch_size = int(patch_size)

  def random_map(self, sample, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rec = self.source[int(self.records[int(sample) // self.patches_per_image])]
    low, high = rec['low'], rec['high']
    p = self.patch_size
    i, j, k = _crop(rng, low.shape[0], low.shape[1], p)
    return {'low': _to_float(_dihedral(low[i:i + p, j:j + p], k)),
            'high': _to_float(_dihedral(high[i:i + p, j:j + p], k))}


class UnlabeledPatch(grain.transforms.RandomMap):
  """Sample number -> a random augmented patch of pool image `sample // patches_per_image`.

  `pool` rows are (source number, record index).
  """

  def __init__(self, sources: Sequence[Sequence[Mapping[str, Any]]], pool: np.ndarray,
               patches_per_image: int, patch_size: int):
    self.sources = list(sources)
    self.pool = np.asarray(pool, np.int64).reshape(-1, 2)
    self.patches_per_image = int(patches_per_image)
    self.patch_size = int(patch_size)

  def random_map(self, sample, rng: np.random.Generator) -> np.ndarray:
    s, r = self.pool[int(sample) // self.patches_per_image]
    low = self.sources[int(s)][int(r)]['low']
    p = self.patch_size
    i, j, k = _crop(rng, low.shape[0], low.shape[1], p)
    return _to_float(_dihedral(low[i:i + p, j:j + p], k))


class MergeBatches(grain.transforms.Map):
  """(labeled batch, unlabeled batch) -> {'low', 'high', 'unlabeled'}."""

  def map(self, element):
    labeled, unlabeled = element
    return {'low': labeled['low'], 'high': labeled['high'], 'unlabeled': unlabeled}


# ------------------------------------------------------------------------------------------------
# Training.


def _derived_seed(seed: int, stream: int) -> int:
  return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(1)[0])


def _patch_stream(transform: grain.transforms.RandomMap, num_samples: int, seed: int,
                  stream: int) -> grain.MapDataset:
  """An infinite, per-epoch reshuffled stream of `transform(sample)` for sample in range(n)."""
  return (grain.MapDataset.range(num_samples)
          .shuffle(seed=_derived_seed(seed, 2 * stream))
          .repeat()
          .random_map(transform, seed=_derived_seed(seed, 2 * stream + 1)))


def _local_batch(name: str, global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f'data.{name}={global_batch} is not divisible by the number of processes '
                     f'({process_count}): each process must get the same share of the batch')
  return global_batch // process_count


def _size_problems(meta: Mapping[str, list[Any]], rows: Sequence[int], patch: int
                   ) -> list[str | None]:
  """Per row: a message if the image is smaller than patch x patch, else None."""
  out = []
  for r in rows:
    h, w = meta['heights'][int(r)], meta['widths'][int(r)]
    src = meta.get('files', meta['names'])[int(r)]
    out.append(f'{src}: image is {h}x{w} (HxW), smaller than data.patch_size={patch}'
               if h < patch or w < patch else None)
  return out


def _check_sizes(meta: Mapping[str, list[Any]], rows: Sequence[int], patch: int) -> list[str]:
  return [m for m in _size_problems(meta, rows, patch) if m]


def _unlabeled_pool(data: Data, paired: CachedSource, patch: int, cache: bool
                    ) -> tuple[list[Any], np.ndarray]:
  """(sources, pool rows (source number, record index)); too-small images skipped, one warning.

  `paired` is the paired train split's source (shared with the labeled stream when cached).
  """
  from_pairs = data.unlabeled_from_pairs if len(data.unlabeled_from_pairs) else data.labeled
  if not cache:
    # Only the low image of a pair is needed: leave the high one undecoded.
    paired = CachedSource(data.builder.as_data_source(
        'train', decoders={'high': tfds.decode.SkipDecoding()}), ('low',), cache=False)
  sources = [paired]
  parts = [(0, data.meta, from_pairs)]
  if data.pool_builder is not None:
    sources.append(CachedSource(data.pool_builder.as_data_source('train'), ('low',), cache))
    parts.append((1, data.pool_meta, np.arange(len(data.pool_meta['names']))))
  rows, small = [], []
  for s, meta, records in parts:
    for r, msg in zip(records, _size_problems(meta, records, patch)):
      if msg:
        small.append(msg)
      else:
        rows.append((s, int(r)))
  if small:
    logging.warning('Skipped %d unlabeled image(s) smaller than data.patch_size=%d:\n  %s',
                    len(small), patch, '\n  '.join(small))
  if not rows:
    raise DataError(f'the unlabeled pool is empty: no unlabeled image is at least {patch}x{patch}')
  return sources, np.asarray(rows, np.int64)


def _use_cache(data: Data, mcmt: bool, cache_mb: float) -> bool:
  """Whether the decoded training images fit in `data.cache_mb` (per process)."""
  def nbytes(meta, rows, images_per_record):
    return sum(3 * meta['heights'][int(r)] * meta['widths'][int(r)] for r in rows) * (
        images_per_record)
  total = nbytes(data.meta, np.arange(len(data.meta['names'])), 2)
  if mcmt and data.pool_meta is not None:
    total += nbytes(data.pool_meta, np.arange(len(data.pool_meta['names'])), 1)
  use = total <= cache_mb * 2**20
  if not use and cache_mb > 0:
    logging.info('Training images need %.0f MiB decoded, over data.cache_mb=%g: decoding a PNG '
                 'per patch (raise data.num_workers so that loading keeps up).', total / 2**20,
                 cache_mb)
  return use


_PROCESS_KEYS = ('process_index', 'process_count')


class TrainIterator:
  """An infinite, checkpointable iterator over this process's training batches.

  `get_state()` returns a plain JSON-able dict (save it with `ocp.args.JsonSave`);
  `set_state(state)` continues exactly after the batch the state was taken at. The step counts
  global batches, so a state can be restored with another `num_workers` or number of processes,
  and every process of a run has the same state (checkpoints keep the one of process 0).
  Call `close()` to stop worker processes early (they also stop when the iterator is
  garbage-collected).
  """

  def __init__(self, batches: grain.MapDataset, *, num_workers: int, read_threads: int,
               info: Mapping[str, Any]):
    self._batches = batches
    self._num_workers = int(num_workers)
    self._read_threads = max(1, int(read_threads))
    self._info = dict(info)
    self._step = 0
    self._it = None

  def __iter__(self) -> 'TrainIterator':
    return self

  def _start(self) -> None:
    ds = self._batches[self._step:].to_iter_dataset(grain.ReadOptions(
        num_threads=self._read_threads, prefetch_buffer_size=2 * self._read_threads))
    if self._num_workers > 0:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._num_workers, per_worker_buffer_size=2))
    self._it = iter(ds)

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._start()
    batch = next(self._it)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """{'step': global batches consumed, plus the fields the stream depends on}."""
    return {'step': self._step, **self._info}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores a `get_state()` dict: the next batch is the one after it."""
    if 'step' not in state:
      raise ValueError(f'not a TrainIterator state (no "step"): {state!r}')
    # The stream is global: a state saved by process 0 of a run with any number of processes
    # restores on every process of a run with any other number (only the step matters).
    changed = {k: (state[k], v) for k, v in self._info.items()
               if k in state and state[k] != v and k not in _PROCESS_KEYS}
    if changed:
      logging.warning('Restoring a data iterator state made with other settings %s: the '
                      'stream continues at step %d but differs from the saved run.',
                      changed, state['step'])
    self.close()
    self._step = int(state['step'])

  def close(self) -> None:
    it, self._it = self._it, None
    if it is not None and hasattr(it, 'close'):
      it.close()

  @property
  def step(self) -> int:
    return self._step


def create_train_iterator(config: ml_collections.ConfigDict, *, process_index: int = 0,
                          process_count: int = 1, data: Data | None = None) -> TrainIterator:
  """The training batches of this process (see the module docstring).

  Args:
    config: the run config (`config.method`, `config.data`).
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()).
    data: `load_data(config)` of the checked config; None checks and loads it.

  Returns:
    A `TrainIterator` yielding {'low', 'high'} (and 'unlabeled' for MCMT) float32 NHWC numpy
    batches of `batch_size // process_count` (`unlabeled_batch_size // process_count`) patches.

  Raises:
    ValueError: a batch size is not divisible by process_count, or a bad setting
      (`ConfigError`).
    DataError: bad input data (named in the message).
  """
  d = config.data
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count})')
  data = _data_of(config, data)
  mcmt = config.method == 'mcmt'
  b = _local_batch('batch_size', d.batch_size, process_count)
  bu = _local_batch('unlabeled_batch_size', d.unlabeled_batch_size, process_count) if mcmt else 0
  ppi, patch = int(d.patches_per_image), int(d.patch_size)
  datasets_base.raise_problems(_check_sizes(data.meta, data.labeled, patch))
  cache = _use_cache(data, mcmt, float(d.get('cache_mb', 0)))
  source = CachedSource(data.builder.as_data_source('train'), ('low', 'high'), cache)
  labeled = _patch_stream(PairedPatch(source, data.labeled, ppi, patch),
                          len(data.labeled) * ppi, d.seed, stream=0)
  batches = labeled[process_index::process_count].batch(b, drop_remainder=True)
  if mcmt:
    sources, pool = _unlabeled_pool(data, source, patch, cache)
    unlabeled = _patch_stream(UnlabeledPatch(sources, pool, ppi, patch), len(pool) * ppi,
                              d.seed, stream=1)
    unl_batches = unlabeled[process_index::process_count].batch(bu, drop_remainder=True)
    n = min(len(batches), len(unl_batches))  # both infinite; zip needs equal lengths
    batches = grain.experimental.ZipMapDataset([batches[:n], unl_batches[:n]]).map(
        MergeBatches())
  info = {'seed': int(d.seed), 'batch_size': int(d.batch_size), 'method': config.method,
          'unlabeled_batch_size': int(d.unlabeled_batch_size) if mcmt else 0,
          'patch_size': patch, 'patches_per_image': ppi,
          'process_index': int(process_index), 'process_count': int(process_count)}
  return TrainIterator(batches, num_workers=int(d.num_workers),
                       read_threads=int(d.get('read_threads', 2)), info=info)


def steps_per_epoch(config: ml_collections.ConfigDict, data: Data | None = None) -> int:
  """floor(train images * patches_per_image / batch_size), at least 1.

  With `data.epoch_images='labeled'` (the default) the images counted are the labeled ones, so an
  "epoch" is one pass over the labeled patches; with 'all', every train pair, labeled or not (for
  MCMT with 10% labels, 10x the steps). The stream is continuous, so a batch can straddle two
  epochs.
  """
  data = _data_of(config, data)
  return _steps_per_epoch(config.data, len(data.labeled), len(data.meta['names']))


def _steps_per_epoch(d: ml_collections.ConfigDict, num_labeled: int, num_pairs: int) -> int:
  n = num_pairs if d.get('epoch_images', 'labeled') == 'all' else num_labeled
  return max(1, (n * int(d.patches_per_image)) // int(d.batch_size))


def _train_data_counts(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray, int]:
  """(labeled, unlabeled) record indices of the train pairs, and their number."""
  data = _data_of(config, None)
  return data.labeled, data.unlabeled_from_pairs, len(data.meta['names'])


# ------------------------------------------------------------------------------------------------
# Evaluation.


class EvalDataset:
  """Re-iterable evaluation batches (see the module docstring); `len()` = number of batches."""

  def __init__(self, source: Sequence[Mapping[str, Any]], meta: Mapping[str, list[Any]],
               batch_size: int, pad_multiple: int = 8):
    self._source = source
    self.names = list(meta['names'])
    self.files = list(meta.get('files', meta['names']))
    self.heights = np.asarray(meta['heights'], np.int32)
    self.widths = np.asarray(meta['widths'], np.int32)
    self.batch_size = n = int(batch_size)
    self.num_images = len(self.names)
    m = max(1, int(pad_multiple))
    round_up = lambda v: image_io.round_up(int(v), m)
    # (image indices, padded height, padded width) of each batch, orientation group by group.
    self.batches: list[tuple[np.ndarray, int, int]] = []
    portrait = self.heights > self.widths
    for group in (np.flatnonzero(~portrait), np.flatnonzero(portrait)):
      if len(group):
        hp, wp = round_up(self.heights[group].max()), round_up(self.widths[group].max())
        self.batches += [(group[i:i + n], hp, wp) for i in range(0, len(group), n)]
    self.shapes = sorted({(hp, wp) for _, hp, wp in self.batches})  # the padded shapes

  def __len__(self) -> int:
    return len(self.batches)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    n = self.batch_size
    for idx, hp, wp in self.batches:
      low = np.zeros((n, hp, wp, 3), np.float32)
      high = np.zeros((n, hp, wp, 3), np.float32)
      mask = np.zeros((n, hp, wp, 1), np.float32)
      valid = np.zeros((n,), bool)
      height = np.zeros((n,), np.int32)
      width = np.zeros((n,), np.int32)
      names = np.full((n,), '', dtype=object)
      for j, r in enumerate(idx):
        rec = self._source[int(r)]
        h, w = rec['low'].shape[:2]
        low[j, :h, :w] = _to_float(rec['low'])
        high[j, :h, :w] = _to_float(rec['high'])
        mask[j, :h, :w] = 1.0
        valid[j], height[j], width[j] = True, h, w
        name = rec['name']
        names[j] = name.decode('utf-8') if isinstance(name, bytes) else str(name)
      yield {'low': low, 'high': high, 'mask': mask, 'valid': valid, 'height': height,
             'width': width, 'name': names.astype(str)}


def check_eval_sizes(eval_ds: EvalDataset, min_side: int) -> None:
  """Raises one DataError naming every evaluation image smaller than min_side x min_side.

  Training evaluates with SSIM (an 11x11 window): a smaller test image has no SSIM value.
  """
  datasets_base.raise_problems(
      [f'{src}: test image is {h}x{w} (HxW), smaller than the {min_side}x{min_side} SSIM '
       'window: it cannot be evaluated'
       for src, h, w in zip(eval_ds.files, eval_ds.heights, eval_ds.widths)
       if min(h, w) < min_side])


def create_eval_dataset(config: ml_collections.ConfigDict, split: str = 'test',
                        data: Data | None = None) -> EvalDataset:
  """The evaluation batches of `split` ('test', or 'train' to evaluate on training pairs).

  Batches hold `low`, `high` float32 (n, Hpad, Wpad, 3), `mask` float32 (n, Hpad, Wpad, 1) (1 on
  real pixels), `valid` bool (n,), `height`, `width` int32 (n,) and `name` str (n,) ('' for
  padding), with n = `data.eval_batch_size`. `data`: as for `create_train_iterator`.
  """
  builder = _data_of(config, data).builder
  meta = datasets.split_metadata(builder, split)
  return EvalDataset(builder.as_data_source(split), meta, int(config.data.eval_batch_size),
                     int(config.data.get('eval_pad_multiple', 8)))


def num_eval_images(config: ml_collections.ConfigDict, split: str = 'test',
                    data: Data | None = None) -> int:
  """Number of real images in the evaluation split."""
  return len(datasets.split_metadata(_data_of(config, data).builder, split)['names'])


# ------------------------------------------------------------------------------------------------
# Summary.


def dataset_summary(config: ml_collections.ConfigDict, data: Data | None = None) -> dict[str, Any]:
  """Counts and a one-line description of the data a run uses (`data`: as for
  `create_train_iterator`).

  Returns:
    {'dataset', 'labeled', 'unlabeled', 'test', 'train_pairs', 'steps_per_epoch',
    'description'}: `unlabeled` is the size of the MCMT pool (0 for supervised runs), `test` 0
    when the dataset has no test split.
  """
  d = config.data
  data = _data_of(config, data)
  splits = data.builder.info.metadata.get('splits', {})
  labeled, rest, n = data.labeled, data.unlabeled_from_pairs, len(data.meta['names'])
  unlabeled = 0
  if config.method == 'mcmt':
    unlabeled = len(rest) if len(rest) else len(labeled)
    if data.pool_meta is not None:
      unlabeled += len(data.pool_meta['names'])
  test = len(splits['test']['names']) if 'test' in splits else 0
  counts = f'{len(labeled)} labeled / {unlabeled} unlabeled / {test} test images'
  if d.dataset == 'default':
    desc = ("embedded default: synthetic low-light pairs darkened from scikit-image's bundled "
            f'photos ({counts}); to train on LOL instead: {LOL_OVERRIDE}')
  elif d.dataset == 'lol':
    desc = f'LOL {d.get("lol_variant", "v1")} from {d.get("lol_dir", "")} ({counts})'
  elif d.dataset == 'paired_folders':
    desc = f'paired folders {d.low_dir} / {d.high_dir} ({counts})'
  else:
    desc = f'synthetic pairs darkened from the photos in {d.photos_dir} ({counts})'
  return {'dataset': d.dataset, 'labeled': len(labeled), 'unlabeled': unlabeled, 'test': test,
          'train_pairs': n,
          'steps_per_epoch': _steps_per_epoch(d, len(labeled), n),
          'description': desc}
