"""Shared machinery of the image-pair builders: listing, pairing, validation, storage layout.

Every builder here is a TFDS `GeneratorBasedBuilder` written as ArrayRecord and read back with
`builder.as_data_source(split)` (no TensorFlow anywhere). A record is

  {'low': uint8 (H, W, 3), 'high': uint8 (H, W, 3), 'name': bytes}   (paired builders)
  {'low': uint8 (H, W, 3), 'name': bytes}                            (unpaired builder)

with the images stored as PNG (`tfds.features.Image` with bytes we encode with Pillow, since
TFDS encodes numpy arrays with TensorFlow) and decoded by TFDS with Pillow.

Order: records are written with `disable_shuffling=True` under keys `00000000, 00000001, ...` in
the natural sort order of their names, so record `i` of a split is the `i`-th name of
`info.metadata['splits'][split]['names']`. That metadata also holds every image's height and
width, so the pipeline can check sizes and build indices without decoding anything.

Validation happens in `_split_generators`, before a single record is written: every file is
decoded fully (threads), pairs are checked for a partner and for equal sizes, and every problem
found is reported in one `DataError` that names each file. The unpaired builder skips bad files
instead, with one warning that lists them (`info.metadata['skipped']`).

Folder-based builders get a config name made of a hash of their arguments and of the folders'
listings (file names, sizes, modification times): changing a folder rebuilds, an unchanged one
reuses the cache in `data_dir`.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Callable, Iterable, Iterator, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from crnet_jax import image_io
from crnet_jax.image_io import DataError
from crnet_jax.image_io import MissingDataError

DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'crnet_jax', 'tfds')


_MAX_LISTED = 20  # problems listed in one error message


@dataclasses.dataclass(frozen=True)
class Item:
  """One record to write: its name and where its images come from."""
  name: str
  low: str = ''  # a file path ('' when generated)
  high: str = ''  # a file path ('' for unpaired records)


def natural_key(s: str) -> list[Any]:
  """Sort key that orders '2' before '10' ('img2' < 'img10'), then by the full string."""
  parts = re.split(r'(\d+)', s)
  return [(0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts] + [(2, s)]


def expand(path: str) -> str:
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def list_image_files(folder: str, *, what: str = 'folder') -> list[str]:
  """The non-hidden regular files of `folder` (not recursive), naturally sorted.

  Files are not filtered by extension: a non-image file in an image folder is reported when it
  fails to decode.

  Args:
    folder: the folder.
    what: how to call the folder in error messages (e.g. 'LOL low folder').

  Returns:
    Absolute paths.

  Raises:
    MissingDataError: the folder does not exist.
    DataError: it is not a folder, or holds no files.
  """
  folder = expand(folder)
  if not os.path.exists(folder):
    raise MissingDataError(f'{folder}: {what} not found')
  if not os.path.isdir(folder):
    raise DataError(f'{folder}: {what} is not a folder')
  names = [n for n in os.listdir(folder)
           if not n.startswith('.') and n not in ('Thumbs.db', 'desktop.ini')
           and os.path.isfile(os.path.join(folder, n))]
  if not names:
    raise DataError(f'{folder}: {what} is empty (no image files)')
  return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def find_subdir(root: str, *candidates: str) -> str | None:
  """The first child of `root` whose name matches one of `candidates`, case-insensitively."""
  if not os.path.isdir(root):
    return None
  children = {c.lower(): c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c))}
  for cand in candidates:
    if cand.lower() in children:
      return os.path.join(root, children[cand.lower()])
  return None


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def numeric_key(path: str) -> str:
  """The digits of a file's stem as an int string ('low00012.png' -> '12')."""
  digits = re.findall(r'\d+', stem(path))
  if not digits:
    raise DataError(f'{path}: no number in the file name to match its partner by')
  return str(int(digits[-1]))


def pair_files(low_files: Sequence[str], high_files: Sequence[str], *,
               key: Callable[[str], str] = stem,
               low_what: str = 'low', high_what: str = 'high') -> list[Item]:
  """Matches low and high files by `key` (the stem by default).

  Returns:
    Items named by the low file's stem, in the natural order of the names.

  Raises:
    DataError: a key appears twice in a folder, or a file has no partner (all listed).
  """
  problems = []

  def index(files, what):
    out = {}
    for f in files:
      try:
        k = key(f)
      except DataError as e:
        problems.append(str(e))
        continue
      if k in out:
        problems.append(f'{f}: same match key {k!r} as {out[k]} in the {what} folder')
      out[k] = f
    return out

  lows, highs = index(low_files, low_what), index(high_files, high_what)
  for k in sorted(set(lows) - set(highs), key=natural_key):
    problems.append(f'{lows[k]}: no {high_what} partner (expected a file matching {k!r} in '
                    f'{os.path.dirname(high_files[0]) if high_files else "the high folder"})')
  for k in sorted(set(highs) - set(lows), key=natural_key):
    problems.append(f'{highs[k]}: no {low_what} partner (expected a file matching {k!r} in '
                    f'{os.path.dirname(low_files[0]) if low_files else "the low folder"})')
  raise_problems(problems)
  items = [Item(name=stem(lows[k]), low=lows[k], high=highs[k]) for k in lows]
  names = [it.name for it in items]
  if len(set(names)) != len(names):
    raise DataError(f'{os.path.dirname(low_files[0])}: two low files have the same name stem')
  return sorted(items, key=lambda it: natural_key(it.name))


def raise_problems(problems: Sequence[str], header: str = '') -> None:
  """Raises one DataError listing `problems` (no-op when empty)."""
  if not problems:
    return
  shown = list(problems[:_MAX_LISTED])
  if len(problems) > _MAX_LISTED:
    shown.append(f'... and {len(problems) - _MAX_LISTED} more')
  if len(problems) == 1 and not header:
    raise DataError(shown[0])
  header = header or f'{len(problems)} problems with the input data:'
  raise DataError(header + '\n  ' + '\n  '.join(shown))


def split_by_fraction(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item],
                                                                                  list[Item]]:
  """Seeded train/test split: round(fraction * n) test items (at least 1 when fraction > 0).

  At least one item stays in train. Both lists keep the natural name order.
  """
  n = len(items)
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'test_fraction must be in [0, 1), got {fraction}')
  if fraction == 0.0:
    return list(items), []
  n_test = min(max(1, int(np.floor(fraction * n + 0.5))), n - 1)
  if n_test <= 0:
    raise DataError(f'cannot split {n} image(s) into train and test; give a separate test folder')
  perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7]).permutation(n)
  test_idx = set(perm[:n_test].tolist())
  train = [it for i, it in enumerate(items) if i not in test_idx]
  test = [it for i, it in enumerate(items) if i in test_idx]
  return train, test


def folder_signature(folders: Iterable[str]) -> list[Any]:
  """A cheap fingerprint of folders' contents: (name, size, mtime) of each file."""
  sig = []
  for folder in folders:
    folder = expand(folder)
    entries = []
    if os.path.isdir(folder):
      for n in sorted(os.listdir(folder)):
        p = os.path.join(folder, n)
        if os.path.isfile(p):
          st = os.stat(p)
          entries.append([n, st.st_size, st.st_mtime_ns])
    sig.append([folder, entries])
  return sig


def config_name(prefix: str, payload: Any) -> str:
  """`prefix_<12 hex>`: a builder config name from a JSON-able payload."""
  digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
  return f'{prefix}_{digest[:12]}'


def _num_threads() -> int:
  return max(1, min(8, os.cpu_count() or 1))


def parallel_map(fn: Callable[[Any], Any], xs: Sequence[Any]) -> list[Any]:
  """`[fn(x) for x in xs]` on a thread pool (Pillow decodes without the GIL)."""
  if len(xs) <= 1:
    return [fn(x) for x in xs]
  with concurrent.futures.ThreadPoolExecutor(_num_threads()) as pool:
    return list(pool.map(fn, xs))


class ImageRecordsBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the builders: subclasses list their items and load one item's images."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}
  PAIRED = True
  # Bad files: 'raise' (paired data) or 'skip' with one warning (the unlabeled pool).
  ON_BAD_FILE = 'raise'

  def _info(self) -> tfds.core.DatasetInfo:
    feats = {
        'low': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
        'name': tfds.features.Text(),
    }
    if self.PAIRED:
      feats['high'] = tfds.features.Image(shape=(None, None, 3), encoding_format='png')
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__class__.__doc__,
        features=tfds.features.FeaturesDict(feats),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and
  # prepared" on stdout; nothing is downloaded here and `prepare` logs its own line instead.
  def _log_download_bytes(self) -> None:
    logging.debug('Preparing %s in %s', self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.debug('Prepared %s in %s', self.name, self.data_dir)

  @abc.abstractmethod
  def _split_items(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[Item]]:
    """The items of each split, in record order (raise DataError on layout problems)."""

  def _load_item(self, item: Item) -> dict[str, np.ndarray]:
    """The uint8 (H, W, 3) images of one item: 'low' (and 'high' when PAIRED)."""
    limit = image_io.max_image_pixels()
    out = {'low': image_io.load_image_uint8(item.low, limit)}
    if self.PAIRED:
      out['high'] = image_io.load_image_uint8(item.high, limit)
      if out['high'].shape != out['low'].shape:
        lh, lw = out['low'].shape[:2]
        hh, hw = out['high'].shape[:2]
        raise DataError(f'{item.low}: size {lh}x{lw} (HxW) differs from its partner '
                        f'{item.high}: {hh}x{hw}')
    return out

  def _check_item(self, item: Item) -> tuple[int, int]:
    """Decodes an item fully and returns its (height, width); raises DataError."""
    arrays = self._load_item(item)
    return tuple(int(v) for v in arrays['low'].shape[:2])

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    split_items = self._split_items(dl_manager)
    problems, skipped, meta = [], [], {}
    for split, items in split_items.items():
      def check(item):
        try:
          return self._check_item(item)
        except DataError as e:
          return e
      results = parallel_map(check, items)
      kept, sizes = [], []
      for item, res in zip(items, results):
        if isinstance(res, DataError):
          if self.ON_BAD_FILE == 'skip':
            skipped.append(str(res))
          else:
            problems.append(str(res))
        else:
          kept.append(item)
          sizes.append(res)
      split_items[split] = kept
      meta[split] = {'names': [it.name for it in kept],
                     'files': [it.low or it.high for it in kept],
                     'heights': [s[0] for s in sizes],
                     'widths': [s[1] for s in sizes]}
    raise_problems(problems)
    if skipped:
      logging.warning('Skipped %d unreadable file(s) of the unlabeled pool:\n  %s',
                      len(skipped), '\n  '.join(skipped))
    for split, items in split_items.items():
      if not items:
        raise DataError(f'{self.name}/{self.builder_config.name}: split {split!r} has no '
                        'usable image (all skipped)')
    self.info.metadata['splits'] = meta
    self.info.metadata['skipped'] = skipped
    return {split: self._generate_examples(items) for split, items in split_items.items()}

  def _generate_examples(self, items: Sequence[Item]) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, item in enumerate(items):
      arrays = self._load_item(item)
      ex = {'name': item.name, 'low': image_io.encode_png(arrays['low'])}
      if self.PAIRED:
        ex['high'] = image_io.encode_png(arrays['high'])
      yield f'{i:08d}', ex


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | None = None
            ) -> tfds.core.DatasetBuilder:
  """Builds `builder` into its data_dir unless already there; returns it."""
  if not builder.is_prepared():
    tfds.disable_progress_bar()
    logging.info('Building %s/%s into %s', builder.name, builder.builder_config.name,
                 builder.data_dir)
    dl_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    try:
      builder.download_and_prepare(file_format='array_record', download_config=dl_config)
    except OSError:
      # Several processes building into one shared data_dir: each writes a temporary folder and
      # renames it; the first rename wins and the others fail here. Reuse the winner's copy.
      root = os.fspath(builder._data_dir_root)  # pylint: disable=protected-access
      fresh = type(builder)(config=builder.builder_config, data_dir=root,
                            file_format='array_record')
      if not fresh.is_prepared():
        raise
      logging.info('%s/%s was built by another process meanwhile: using it.', builder.name,
                   builder.builder_config.name)
      return fresh
  return builder


def split_metadata(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, list[Any]]:
  """{'names', 'files', 'heights', 'widths'} of a prepared split, in record order."""
  splits = builder.info.metadata.get('splits', {}) if builder.info.metadata else {}
  if split not in splits:
    raise DataError(f'{builder.data_dir}: the dataset has no {split!r} split '
                    f'(it has: {sorted(splits)})')
  return splits[split]
