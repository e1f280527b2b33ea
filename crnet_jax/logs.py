"""What a run prints: one line per fact of ours, the libraries' routine notes only on request.

`quiet_libraries(verbosity)` (main.py calls it first; `train.train_and_evaluate` too, for Python
users) installs one filter on absl's logger and handler. With absl's `--verbosity` below 1 (the
default 0) it drops:

- every INFO (and DEBUG) record logged from a file outside this repository: jax's backend probing
  ("Unable to initialize backend 'tpu'"), TFDS's "Load dataset info", orbax's checkpoint manager
  and restore notes;
- the library warnings that say nothing to a user: orbax's read-only manager notes
  ("CheckpointManagerOptions.read_only=True ...", "Given directory is read only");
- TFDS's notes about custom configs, OpenCV and variant folders.

Every other warning and error stays, a library's error as one line, without its traceback (our
own error line follows, naming the cause and what to do). `--verbosity=1` (or `-v 1`) removes the filter and shows
everything, debug lines included. TFDS's "Downloading and preparing dataset" print is replaced by
our own "Building ..." line in `datasets/base.py` (nothing is downloaded).
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Warnings of libraries that a user can do nothing about (message prefixes).
HARMLESS_WARNINGS = (
    'CheckpointManagerOptions.read_only=True',
    'Given directory is read only',
)
# Notes of TFDS that absl logs at INFO or WARNING level from its own files (message prefixes).
TFDS_NOTES = ('Using custom data configuration', 'OpenCV is not installed', 'Variant folder ')


class LibraryFilter(std_logging.Filter):
  """Keeps our records, and the libraries' warnings and errors (less the harmless ones)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    msg = str(record.msg)
    if any(msg.startswith(p) for p in TFDS_NOTES):
      return False
    path = os.path.abspath(str(getattr(record, 'pathname', '') or ''))
    ours = path.startswith(REPO + os.sep) and os.sep + 'site-packages' + os.sep not in path
    if record.levelno >= std_logging.ERROR:
      if not ours and record.exc_info:
        # A library's error (e.g. orbax's background save failing because the workdir was
        # deleted) stays one line: our own error line says what happened and what to do.
        record.exc_info, record.exc_text = None, None
      return True
    if ours:
      return True
    if record.levelno < std_logging.WARNING:
      return False
    return not any(msg.startswith(p) for p in HARMLESS_WARNINGS)


_FILTER = LibraryFilter()


def _targets() -> list[std_logging.Filterer]:
  """absl's logger (records of absl.logging) and absl's handler (records of python loggers)."""
  targets: list[std_logging.Filterer] = [logging.get_absl_logger()]
  handler = logging.get_absl_handler()
  if handler is not None:
    targets.append(handler)
  return targets


def quiet_libraries(verbosity: int | None = None) -> None:
  """Installs `LibraryFilter` (once) when `verbosity` < 1, removes it otherwise.

  Args:
    verbosity: absl's verbosity (`--verbosity`: 0 = INFO, the default; 1 and more = DEBUG);
      None reads the current one (`absl.logging.get_verbosity()`).
  """
  verbosity = logging.get_verbosity() if verbosity is None else int(verbosity)
  for target in _targets():
    if verbosity >= 1:
      target.removeFilter(_FILTER)
    elif _FILTER not in target.filters:
      target.addFilter(_FILTER)
