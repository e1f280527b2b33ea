"""What the run configs share: the parser of their argument and the one table of named sizes.

A run config (`crnet.py`, `mcmt.py`, `lol.py`, `study.py`) takes an argument after a colon,
`--config=configs/crnet.py:demo,mrn`: comma-separated tokens, at most one of the config's own
choices (a Table 2 row, an arm of the LOL runs, a run of the study) and at most one size.
`parse_arg` splits it; `apply_size` merges an entry of `SIZES` into the config.

A size changes the scale of a run (network, patches, batches, steps, schedule, evaluation,
checkpoints, logging), never its method, labels or data. Each run config names the entries it
offers under its own argument names (`lol.py`'s `cpu` is the entry `lol_cpu`); the run config's
docstring says what each size is for and what it measured.
"""

import copy
from typing import Any, Mapping, Sequence

import ml_collections


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
  """`base` with `changes` merged in, nested dicts key by key."""
  out = copy.deepcopy(dict(base))
  for key, value in changes.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = _merged(out[key], value)
    else:
      out[key] = value
  return out


_DEMO = {
    'model': {'features': 8, 'num_groups': 2, 'recurrences': 1, 'num_blocks': 2,
              'dtype': 'float32'},
    'data': {'patch_size': 32, 'batch_size': 8, 'unlabeled_batch_size': 8,
             'patches_per_image': 30, 'eval_batch_size': 2},
    'num_train_steps': 1200,
    'learning_rate': 2e-3,
    'lr_decay_epochs': (30, 45),  # 22 steps per epoch (supervised): steps 660 and 990
    'eval_every_epochs': 10,
    'checkpoint_every_steps': 200,
    'log_every_steps': 50,
    'num_eval_images': 2,
}

_LOL_CPU = {
    'model': {'features': 16, 'num_groups': 2, 'recurrences': 1, 'num_blocks': 2,
              'dtype': 'float32'},
    'data': {'patch_size': 32, 'batch_size': 8, 'unlabeled_batch_size': 8, 'eval_batch_size': 5},
    'num_train_steps': 4000,
    'learning_rate': 2e-3,
    'lr_decay_epochs': (11, 16.4),  # steps ~2,000 and ~3,000
    'eval_every_epochs': 2.74,  # about every 500 steps
    'checkpoint_every_steps': 500,
    'log_every_steps': 100,
    'num_eval_images': 0,
}

_LOL_CPU_LONG = _merged(_LOL_CPU, {'num_train_steps': 16000,
                                   'lr_decay_epochs': (43.7, 65.6, 76.5, 82.0),
                                   'eval_every_epochs': 5.48})

# Name -> overrides: nested dicts for the `model` and `data` groups, values for the top level.
SIZES = {
    # crnet.py and mcmt.py `demo`: CPU-sized, about 2 minutes on 2 cores.
    'demo': _DEMO,
    # mcmt.py `demo`: 3 steps per epoch (1 labeled image), learning rate halved at steps 480, 720.
    'mcmt_demo': _merged(_DEMO, {'num_train_steps': 800, 'lr_decay_epochs': (160, 240),
                                 'eval_every_epochs': 100}),
    # crnet.py, mcmt.py and lol.py `test`: tiny, for the tests (a few seconds); the default
    # data downscaled to 64 pixels, so that an evaluation takes milliseconds.
    'test': {
        'model': {'features': 4, 'num_groups': 2, 'recurrences': 1, 'num_blocks': 1,
                  'dtype': 'float32'},
        'data': {'patch_size': 16, 'batch_size': 4, 'unlabeled_batch_size': 4,
                 'patches_per_image': 2, 'eval_batch_size': 4, 'synthetic': {'max_side': 64}},
        'num_train_steps': 3,
        'eval_every_epochs': 0,
        'checkpoint_every_steps': 2,
        'log_every_steps': 1,
        'num_eval_images': 1,
    },
    # lol.py `cpu`: the label-limited regime that 2 CPU cores can train (C 16, 4,000 steps).
    'lol_cpu': _LOL_CPU,
    # lol.py `cpu_wide`: as `lol_cpu` with twice the features (C 32).
    'lol_cpu_wide': _merged(_LOL_CPU, {'model': {'features': 32}}),
    # lol.py `cpu_long`: as `lol_cpu` trained 4x longer (16,000 steps), the learning rate halved
    # at steps ~8,000, 12,000, 14,000 and 15,000 (ending at 1/16 of it), evaluation every ~1,000.
    'lol_cpu_long': _LOL_CPU_LONG,
    # lol.py `cpu_mean`: as `lol_cpu` with the layer attention's energy as a mean over the
    # pixels instead of a sum, so that whole test images see the softmax that patches trained.
    'lol_cpu_mean': _merged(_LOL_CPU, {'model': {'layer_attention_energy': 'mean'}}),
    # lol.py `cpu_long_mean`: `lol_cpu_long` with the energy as a mean.
    'lol_cpu_long_mean': _merged(_LOL_CPU_LONG, {'model': {'layer_attention_energy': 'mean'}}),
    # study.py `half`: the study's schedule over 50 epochs instead of 100.
    'study_half': {
        'num_epochs': 50,
        'lr_decay_epochs': (10, 20, 30, 45),
        'eval_every_epochs': 2,
    },
    # study.py `small`: the study at CPU scale (C 8), the paper's schedule otherwise.
    'study_small': {
        'model': {'features': 8, 'num_groups': 2, 'recurrences': 1, 'num_blocks': 2,
                  'dtype': 'float32'},
        'data': {'patch_size': 32, 'batch_size': 8, 'unlabeled_batch_size': 8},
        'eval_every_epochs': 10,
    },
    # study.py `cpu`: tiny (C 4), 4 steps: the tests and a CPU smoke run of the wiring.
    'study_cpu': {
        'model': {'features': 4, 'num_groups': 2, 'recurrences': 1, 'num_blocks': 1,
                  'dtype': 'float32'},
        'data': {'patch_size': 32, 'batch_size': 4, 'unlabeled_batch_size': 4,
                 'eval_batch_size': 4},
        'num_train_steps': 4,
        'learning_rate': 2e-3,
        'eval_every_epochs': 1,
        'checkpoint_every_steps': 2,
        'max_to_keep': 2,
        'log_every_steps': 2,
        'num_eval_images': 1,
    },
}


def parse_arg(arg: str | None, rows: Sequence[str],
              sizes: Sequence[str]) -> tuple[str | None, str | None]:
  """`'demo,mrn'` -> ('mrn', 'demo'): at most one row and one size; unknown tokens fail."""
  row = size = None
  for token in (t.strip() for t in (arg or '').split(',')):
    if not token:
      continue
    if token in rows:
      if row is not None:
        raise ValueError(f'config argument {arg!r}: two Table 2 rows ({row!r}, {token!r}); '
                         'give at most one')
      row = token
    elif token in sizes:
      if size is not None:
        raise ValueError(f'config argument {arg!r}: two sizes ({size!r}, {token!r})')
      size = token
    else:
      raise ValueError(f'config argument {arg!r}: unknown token {token!r}; known rows '
                       f'{sorted(rows)}, sizes {list(sizes)}')
  return row, size


def apply_row(config: ml_collections.ConfigDict, overrides) -> None:
  """A Table 2 row: (model, loss, data) overrides."""
  model, loss, data = overrides
  config.model.update(model)
  config.loss.update(loss)
  config.data.update(data)


def _update(node: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  for key, value in overrides.items():
    if isinstance(value, Mapping):
      _update(node[key], value)
    else:
      node[key] = value


def apply_size(config: ml_collections.ConfigDict, name: str | None) -> None:
  """Merges the entry `name` of `SIZES` into `config` (None: nothing)."""
  if name is None:
    return
  if name not in SIZES:
    raise ValueError(f'unknown size {name!r}; choose one of {list(SIZES)}')
  _update(config, SIZES[name])
