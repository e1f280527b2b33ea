"""LOL (LOw-Light) paired dataset, versions 1 and 2, from a manual download.

Builder configs (`Lol(config=...)`):

- `v1` (LOL, Wei et al. 2018): `our485/{low,high}` (train, 485 pairs) and
  `eval15/{low,high}` (test, 15 pairs); partners have the same file name.
- `v2_real` (LOL-v2 Real_captured): `Train/{Low,Normal}` (689) and `Test/{Low,Normal}` (100);
  partners are matched by the number in the name (`low00001.png` <-> `normal00001.png`).
- `v2_synthetic` (LOL-v2 Synthetic): `Train/{Low,Normal}` (900) and `Test/{Low,Normal}` (100);
  partners have the same file name.

Folder names are matched case-insensitively, and the manual dir may also be the parent folder
(`LOLdataset/`, `LOL/`, `LOL-v2/` holding `Real_captured/` or `Synthetic/`). The cache is keyed on
the variant and on the folder's listing (`<data_dir>/lol/<variant>_<hash>`, as for the other
folder datasets): two copies of LOL, say all 485 train pairs and a folder holding a subset of
them, are two datasets, and a changed folder is built again. With `data.lol_dir` empty, the one
copy of the variant already built in `data_dir` is used.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from crnet_jax.datasets import base
from crnet_jax.image_io import DataError
from crnet_jax.image_io import MissingDataError

_INSTRUCTIONS = """\
Download LOL yourself and pass its folder as `--config.data.lol_dir=/path/to/LOL`
(the TFDS manual dir):
- v1 (https://daooshee.github.io/BMVC2018website/): the folder holding `our485/` and `eval15/`,
  each with `low/` and `high/`.
- v2_real / v2_synthetic (LOL-v2, https://github.com/flyywh/SGM-Low-Light): the `Real_captured/`
  or `Synthetic/` folder (or their parent), holding `Train/` and `Test/`, each with `Low/` and
  `Normal/`.
"""

# variant -> ((train dir, test dir), (low dir, high dir), parent folder names, match by number)
_LAYOUTS = {
    'v1': (('our485', 'eval15'), ('low', 'high'), ('LOLdataset', 'LOL', 'LOL-v1', 'LOLv1'),
           False),
    'v2_real': (('Train', 'Test'), ('Low', 'Normal'), ('Real_captured', 'Real'), True),
    'v2_synthetic': (('Train', 'Test'), ('Low', 'Normal'), ('Synthetic',), False),
}
VARIANTS = tuple(_LAYOUTS)


@dataclasses.dataclass(eq=False)
class LolConfig(tfds.core.BuilderConfig):
  variant: str = 'v1'


class Lol(base.ImageRecordsBuilder):
  """LOL / LOL-v2 low-light and normal-light pairs (manual download)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [LolConfig(name=v, variant=v) for v in ('v1', 'v2_real', 'v2_synthetic')]

  def _split_items(self, dl_manager) -> dict[str, list[base.Item]]:
    return lol_items(os.fspath(dl_manager.manual_dir), self.builder_config.variant)


def resolve_root(root: str, variant: str) -> str:
  """The folder that holds the variant's train/test folders (descending one level if needed)."""
  (train, test), _, parents, _ = _LAYOUTS[variant]
  root = base.expand(root)
  if not os.path.isdir(root):
    raise MissingDataError(f'{root}: LOL folder not found (data.lol_dir)\n{_INSTRUCTIONS}')
  if base.find_subdir(root, train) and base.find_subdir(root, test):
    return root
  for parent in parents:
    sub = base.find_subdir(root, parent)
    if sub and base.find_subdir(sub, train) and base.find_subdir(sub, test):
      return sub
  raise MissingDataError(f'{root}: no {train}/ and {test}/ folders for LOL {variant}'
                         f'\n{_INSTRUCTIONS}')


def lol_items(root: str, variant: str) -> dict[str, list[base.Item]]:
  """The train/test items of a LOL copy; raises DataError naming what is missing."""
  if variant not in _LAYOUTS:
    raise ValueError(f'unknown LOL variant {variant!r}; expected one of {VARIANTS}')
  (train, test), (low, high), _, by_number = _LAYOUTS[variant]
  root = resolve_root(root, variant)
  out = {}
  for split, split_dir in (('train', train), ('test', test)):
    d = base.find_subdir(root, split_dir)
    low_dir, high_dir = base.find_subdir(d, low), base.find_subdir(d, high)
    for what, sub, name in (('low', low_dir, low), ('high', high_dir, high)):
      if sub is None:
        raise MissingDataError(f'{os.path.join(d, name)}: LOL {variant} {what} folder not found')
    out[split] = base.pair_files(
        base.list_image_files(low_dir, what=f'LOL {split} low folder'),
        base.list_image_files(high_dir, what=f'LOL {split} high folder'),
        key=base.numeric_key if by_number else base.stem)
  return out


def lol_builder(lol_dir: str, variant: str = 'v1', data_dir: str = base.DEFAULT_DATA_DIR
                ) -> tfds.core.DatasetBuilder:
  """The prepared LOL builder (built from `lol_dir` on first use, then cached)."""
  if variant not in _LAYOUTS:
    raise ValueError(f'data.lol_variant must be one of {VARIANTS}, got {variant!r}')
  data_dir = base.expand(data_dir)
  if not lol_dir:
    return _the_built_copy(variant, data_dir)
  root = resolve_root(lol_dir, variant)
  items = lol_items(root, variant)  # layout errors before TFDS starts
  folders = sorted({os.path.dirname(f) for split in items.values() for i in split
                    for f in (i.low, i.high) if f})
  name = base.config_name(variant, base.folder_signature(folders))
  builder = Lol(config=LolConfig(name=name, variant=variant,
                                 description=f'LOL {variant} from {root}'),
                data_dir=data_dir, file_format='array_record')
  return base.prepare(builder, manual_dir=root)


def _the_built_copy(variant: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The one copy of `variant` built in `data_dir` (for a run that gives no data.lol_dir)."""
  parent = os.path.join(data_dir, 'lol')
  names = sorted(n for n in (os.listdir(parent) if os.path.isdir(parent) else [])
                 if n.startswith(f'{variant}_'))
  built = []
  for name in names:
    builder = Lol(config=LolConfig(name=name, variant=variant), data_dir=data_dir,
                  file_format='array_record')
    if builder.is_prepared():
      built.append(builder)
  if len(built) == 1:
    return built[0]
  if not built:
    raise DataError(f'LOL {variant} is not built in {data_dir} and data.lol_dir is empty.\n'
                    f'{_INSTRUCTIONS}')
  raise DataError(f'data.lol_dir is empty and {data_dir} holds {len(built)} copies of LOL '
                  f'{variant} ({", ".join(b.builder_config.name for b in built)}): give '
                  'data.lol_dir to choose one')
