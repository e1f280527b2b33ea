"""A user's own pairs: a folder of low-light images and a folder of their normal-light partners.

Partners are matched by file stem (`low/a.png` <-> `high/a.jpg`); every file must have one. The
test split comes from a second pair of folders (`test_low_dir`, `test_high_dir`) or, when those
are empty, from a seeded random `test_fraction` of the pairs (at least one; 0 = no test split).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from crnet_jax.datasets import base
from crnet_jax.image_io import DataError


@dataclasses.dataclass(eq=False)
class PairedFoldersConfig(tfds.core.BuilderConfig):
  low_dir: str = ''
  high_dir: str = ''
  test_low_dir: str = ''
  test_high_dir: str = ''
  test_fraction: float = 0.0
  split_seed: int = 0


class PairedFolders(base.ImageRecordsBuilder):
  """Low/normal pairs from two folders matched by file name."""

  BUILDER_CONFIGS = [PairedFoldersConfig(name='base')]

  def _split_items(self, dl_manager) -> dict[str, list[base.Item]]:
    c = self.builder_config
    return paired_items(c.low_dir, c.high_dir, c.test_low_dir, c.test_high_dir,
                        c.test_fraction, c.split_seed)


def paired_items(low_dir: str, high_dir: str, test_low_dir: str = '', test_high_dir: str = '',
                 test_fraction: float = 0.0, split_seed: int = 0) -> dict[str, list[base.Item]]:
  """Train (and test) items; raises DataError naming each problem."""
  if not low_dir or not high_dir:
    raise DataError('paired_folders needs data.low_dir and data.high_dir')
  if bool(test_low_dir) != bool(test_high_dir):
    raise DataError('paired_folders: give both data.test_low_dir and data.test_high_dir, or '
                    'neither (then data.test_fraction splits the pairs)')
  items = base.pair_files(base.list_image_files(low_dir, what='low folder (data.low_dir)'),
                          base.list_image_files(high_dir, what='high folder (data.high_dir)'))
  if test_low_dir:
    test = base.pair_files(
        base.list_image_files(test_low_dir, what='test low folder (data.test_low_dir)'),
        base.list_image_files(test_high_dir, what='test high folder (data.test_high_dir)'))
    return {'train': items, 'test': test}
  train, test = base.split_by_fraction(items, test_fraction, split_seed)
  return {'train': train, 'test': test} if test else {'train': train}


def paired_folders_builder(low_dir: str, high_dir: str, test_low_dir: str = '',
                           test_high_dir: str = '', test_fraction: float = 0.0,
                           split_seed: int = 0, data_dir: str = base.DEFAULT_DATA_DIR
                           ) -> tfds.core.DatasetBuilder:
  """The prepared builder for these folders (rebuilt when their listing changes)."""
  dirs = [base.expand(d) if d else '' for d in (low_dir, high_dir, test_low_dir, test_high_dir)]
  paired_items(*dirs, test_fraction, split_seed)  # layout errors first, cheap
  args = dict(low_dir=dirs[0], high_dir=dirs[1], test_low_dir=dirs[2], test_high_dir=dirs[3],
              test_fraction=float(test_fraction) if not dirs[2] else 0.0,
              split_seed=int(split_seed) if not dirs[2] else 0)
  name = base.config_name('pairs', [args, base.folder_signature(d for d in dirs if d)])
  builder = PairedFolders(config=PairedFoldersConfig(name=name, **args),
                          data_dir=base.expand(data_dir), file_format='array_record')
  return base.prepare(builder)
