"""`python tests/launcher.py ARGS` runs `main.py ARGS`, with pause points for the kill tests.

With `$CRNET_TEST_PAUSE_IN` set to `WHERE@STEP`, the run prints the line
`CRNET_TEST_PAUSED WHERE STEP` on stderr at that point and waits there, so that a test can kill
or signal it at a moment it chooses (tests/test_kill_resume.py, tests/test_workdir_safety.py):

- `step@N`: right after train step N is dispatched, before anything of it is logged or saved;
- `eval@N`: right after the evaluation of step N is computed, before it is logged (and before
  the best checkpoint and the latest checkpoint of step N are saved);
- `save@N`: while the latest checkpoint of step N is saved, with every file written to its
  temporary folder but the folder not yet committed (renamed to `checkpoints/N`).

The wait ends after an hour, or as soon as a stop is requested (SIGTERM, SIGINT: the run then
goes on to save and stop). Without the variable this is `main.py`. The points are installed by
wrapping library functions (nothing in the library knows about them): the jitted train step
(`train.compiled_functions`), `evaluation.evaluate`, the stop handler
(`train.StopSignals._handle`) and orbax's commit of a temporary checkpoint folder.
"""

import dataclasses
import os
import sys
import threading
import time

PAUSE_ENV = 'CRNET_TEST_PAUSE_IN'
PAUSE_MARKER = 'CRNET_TEST_PAUSED'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WAKE = threading.Event()


def pause(spec: str, where: str, step: int) -> None:
  """When `spec` is `f'{where}@{step}'`: prints the marker and waits (see the docstring)."""
  if spec == f'{where}@{step}':
    print(f'{PAUSE_MARKER} {where} {step}', file=sys.stderr, flush=True)
    deadline = time.monotonic() + 3600
    while not _WAKE.is_set() and time.monotonic() < deadline:
      _WAKE.wait(0.1)


def install(spec: str) -> None:
  """Installs the pause point of `spec` ('' installs nothing)."""
  if not spec:
    return
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from crnet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from crnet_jax import evaluation  # pylint: disable=g-import-not-at-top
  from crnet_jax import train  # pylint: disable=g-import-not-at-top

  last_step = [None]  # the step of the last train step dispatched

  compiled_functions = train.compiled_functions

  def paused_compiled_functions(*args, **kwargs):
    fns = compiled_functions(*args, **kwargs)

    def train_step(state, batch):
      if last_step[0] is None:  # the first step of this run: read the start step once
        last_step[0] = int(jax.device_get(state.step))
      last_step[0] += 1
      out = fns.train_step(state, batch)
      pause(spec, 'step', last_step[0])
      return out

    return dataclasses.replace(fns, train_step=train_step)

  train.compiled_functions = paused_compiled_functions

  evaluate = evaluation.evaluate

  def paused_evaluate(*args, **kwargs):
    out = evaluate(*args, **kwargs)
    if last_step[0] is not None:
      pause(spec, 'eval', last_step[0])
    return out

  evaluation.evaluate = paused_evaluate

  handle = train.StopSignals._handle  # pylint: disable=protected-access

  def handle_and_wake(self, signum, frame):
    _WAKE.set()  # a stop ends the wait; the run goes on to save and stop
    handle(self, signum, frame)

  train.StopSignals._handle = handle_and_wake  # pylint: disable=protected-access

  rename = ocp.path.atomicity.AtomicRenameTemporaryPath
  finalize = rename.finalize

  async def paused_finalize(self):
    final = self.get_final()
    if final.parent.name == checkpointing.LATEST_DIR and final.name.isdigit():
      pause(spec, 'save', int(final.name))
    return await finalize(self)

  rename.finalize = paused_finalize


if __name__ == '__main__':
  sys.path.insert(0, REPO)
  install(os.environ.get(PAUSE_ENV, ''))
  from absl import app  # pylint: disable=g-import-not-at-top
  import main  # pylint: disable=g-import-not-at-top
  app.run(main.main, flags_parser=main.parse_flags)
