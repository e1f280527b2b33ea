"""An unlabeled pool: one or more folders of low-light images without partners.

Records hold `low` and `name` (`<folder index>/<file stem>`). Files that fail to decode are
skipped with one warning listing them (and kept in `info.metadata['skipped']`); a missing folder,
an empty folder, or a pool where nothing decodes is a `DataError`. Only a `train` split.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import tensorflow_datasets as tfds

from crnet_jax.datasets import base
from crnet_jax.image_io import DataError


@dataclasses.dataclass(eq=False)
class UnpairedFoldersConfig(tfds.core.BuilderConfig):
  dirs: tuple[str, ...] = ()


class UnpairedFolders(base.ImageRecordsBuilder):
  """Unlabeled low-light images from folders."""

  PAIRED = False
  ON_BAD_FILE = 'skip'
  BUILDER_CONFIGS = [UnpairedFoldersConfig(name='base')]

  def _split_items(self, dl_manager) -> dict[str, list[base.Item]]:
    return {'train': unpaired_items(self.builder_config.dirs)}


def unpaired_items(dirs: Sequence[str]) -> list[base.Item]:
  if not dirs:
    raise DataError('unpaired_folders needs at least one folder')
  items = []
  for i, d in enumerate(dirs):
    for f in base.list_image_files(d, what='unlabeled folder (data.unlabeled_dirs)'):
      items.append(base.Item(name=f'{i}/{base.stem(f)}', low=f))
  names = [it.name for it in items]
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise DataError(f'unlabeled folders: several files share the stem(s) {dup[:5]}')
  return items


def unpaired_folders_builder(dirs: Sequence[str], data_dir: str = base.DEFAULT_DATA_DIR
                             ) -> tfds.core.DatasetBuilder:
  """The prepared builder for these folders (rebuilt when their listing changes)."""
  dirs = tuple(base.expand(d) for d in dirs)
  unpaired_items(dirs)
  name = base.config_name('unpaired', [dirs, base.folder_signature(dirs)])
  builder = UnpairedFolders(config=UnpairedFoldersConfig(name=name, dirs=dirs),
                            data_dir=base.expand(data_dir), file_format='array_record')
  return base.prepare(builder)


def parse_dirs(value) -> tuple[str, ...]:
  """`data.unlabeled_dirs` as a tuple: a tuple/list, or a string separated by ',' or os.pathsep."""
  if not value:
    return ()
  if isinstance(value, str):
    parts = [p for chunk in value.split(',') for p in chunk.split(os.pathsep)]
  else:
    parts = list(value)
  return tuple(p.strip() for p in parts if p and p.strip())
