"""`ConfigError` and the predicates the config checks share.

Each config field is checked once, before anything runs, by the module that reads it:
`input_pipeline.check_config` (`method` and the `data` fields), `models.create_model` (the `model`
fields) and `train.validate_config` (the training fields; it calls the other two).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ConfigError(ValueError):
  """A config value that cannot work (the key and the value are named), found before running."""


def need(ok: bool, message: str) -> None:
  """Raises ConfigError(message) unless `ok`."""
  if not ok:
    raise ConfigError(message)


def is_int(v: Any) -> bool:
  """An integer (numpy's too), not a bool."""
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
  """An integer or a float (numpy's too), not a bool."""
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
