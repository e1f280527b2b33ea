"""How far a long run has come, and how long it still takes.

- `Progress`: training's rate and ETA (train steps and evaluations counted apart), for the log
  lines of `train.train_and_evaluate`.
- `Bar` (and `track`, a loop over items with a bar): enhance, evaluate and export show on stderr

      enhance  12/40 [######..............]  30% ETA 41s

  redrawn in place when stderr is a terminal, and otherwise (a log file, CI) printed as a few
  plain lines, at each quarter of the work, the last one at 100%. A run of a single item shows
  nothing.
- `format_duration`: `41s`, `2m05s`, `1h02m03s`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, TextIO, TypeVar

T = TypeVar('T')


def format_duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


class Progress:
  """Steps/s of the train steps alone, and an ETA that adds the evaluations still to come.

  `log(step, now)` closes the interval since the previous log. Its reported rate is its steps over
  its time less the evaluations and checkpoint saves in it (`busy`). The ETA's rate comes from the
  intervals that held neither an evaluation nor a save (nor the first step, which compiles); the
  remaining evaluations are priced at their measured duration (the first one, which compiles, only
  when it is the only one measured). So the ETA does not jump after each evaluation.
  """

  def __init__(self, start_step: int, total_steps: int, now: float,
               evaluations_left: Callable[[int], int]):
    self.total_steps = total_steps
    self.evaluations_left = evaluations_left  # step -> evaluations at steps >= step
    self._step, self._time = start_step, now
    self._busy, self._clean = 0.0, False  # the first interval compiles: not clean
    self._rate_steps, self._rate_time = 0, 0.0  # clean intervals
    self._train_steps, self._train_time = 0, 0.0  # every interval but the first, less busy time
    self._first = True
    self.eval_seconds: list[float] = []

  def busy(self, seconds: float, evaluation: bool = False) -> None:
    """An evaluation or a checkpoint save of `seconds` happened in the current interval."""
    self._busy += max(0.0, seconds)
    self._clean = False
    if evaluation:
      self.eval_seconds.append(seconds)

  def log(self, step: int, now: float) -> tuple[float, float]:
    """(steps/s of the train steps since the last log, seconds left), and a new interval."""
    steps = step - self._step
    train_time = max(now - self._time - self._busy, 1e-9)
    rate = steps / train_time
    if self._clean:
      self._rate_steps += steps
      self._rate_time += now - self._time
    if not self._first:
      self._train_steps += steps
      self._train_time += train_time
    if self._rate_steps:
      steady = self._rate_steps / max(self._rate_time, 1e-9)
    elif self._train_steps:
      steady = self._train_steps / max(self._train_time, 1e-9)
    else:
      steady = rate
    evals = self.eval_seconds[1:] or self.eval_seconds
    per_eval = sum(evals) / len(evals) if evals else 0.0
    left = (self.total_steps - step) / max(steady, 1e-9) + per_eval * self.evaluations_left(step)
    self._step, self._time, self._busy, self._clean, self._first = step, now, 0.0, True, False
    return rate, left


class Bar:
  """A progress bar with an ETA on `stream` (stderr by default); see the module docstring.

  `update(n)` counts `n` more items done; `close()` ends the bar (a newline on a terminal). The
  ETA prices each remaining item at the mean time of those done after the first (the first one
  compiles), or at the first one's time while it is the only one done.

  Args:
    label: the first word of the line (`enhance`).
    total: the number of items; 0 or 1 shows nothing.
    stream: where to write (default: `sys.stderr` at construction).
    enabled: False shows nothing.
    lines: the plain lines of a stream that is not a terminal (at each 1/lines of the work).
    width: the characters between the brackets.
    interval: the least seconds between two redraws on a terminal (the last one is always drawn).
    clock: seconds, monotonic (tests pass their own).
  """

  def __init__(self, label: str, total: int, *, stream: TextIO | None = None,
               enabled: bool = True, lines: int = 4, width: int = 20, interval: float = 0.1,
               clock: Callable[[], float] = time.monotonic):
    self.label, self.total = label, int(total)
    self.stream = sys.stderr if stream is None else stream
    self.enabled = enabled and self.total > 1
    self.lines, self.width, self.interval, self.clock = max(1, lines), width, interval, clock
    try:
      self.tty = bool(self.stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
      self.tty = False
    self.done = 0
    self._start = clock()
    self._first_done: float | None = None  # when the first item finished
    self._shown = 0  # plain lines written (not a terminal)
    self._drawn_at: float | None = None  # last redraw (terminal)
    self._drawn_width = 0
    self._closed = False

  def seconds_left(self, now: float) -> float:
    """The ETA in seconds (see the class docstring)."""
    if not self.done:
      return 0.0
    if self.done > 1 and self._first_done is not None:
      per_item = (now - self._first_done) / (self.done - 1)
    else:
      per_item = (now - self._start) / self.done
    return per_item * (self.total - self.done)

  def text(self, now: float) -> str:
    """The bar's line: `label  done/total [###.....]  pct% ETA 41s` (`in 1m05s` once done)."""
    filled = self.width * self.done // self.total
    percent = 100 * self.done // self.total
    when = (f'in {format_duration(now - self._start)}' if self.done >= self.total
            else f'ETA {format_duration(self.seconds_left(now))}')
    count = f'{self.done:>{len(str(self.total))}}/{self.total}'
    return (f'{self.label}  {count} [{"#" * filled}{"." * (self.width - filled)}] '
            f'{percent:3d}% {when}')

  def update(self, n: int = 1) -> None:
    now = self.clock()
    self.done = min(self.total, self.done + n)
    if self._first_done is None and self.done:
      self._first_done = now
    if not self.enabled or self._closed:
      return
    last = self.done >= self.total
    if self.tty:
      if last or self._drawn_at is None or now - self._drawn_at >= self.interval:
        line = self.text(now)
        self._write('\r' + line + ' ' * max(0, self._drawn_width - len(line)))
        self._drawn_width, self._drawn_at = len(line), now
      if last:
        self.close()
    else:
      step = self.lines * self.done // self.total  # the 1/lines marks passed
      if step > self._shown:
        self._shown = step
        self._write(self.text(now) + '\n')

  def close(self) -> None:
    """Ends the bar: on a terminal, the line is kept and the cursor goes to the next one."""
    if self._closed:
      return
    self._closed = True
    if self.enabled and self.tty and self._drawn_at is not None:
      self._write('\n')

  def _write(self, text: str) -> None:
    try:
      self.stream.write(text)
      self.stream.flush()
    except (OSError, ValueError):  # a closed or broken stream: the run goes on without a bar
      self.enabled = False

  def __enter__(self) -> 'Bar':
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def track(items: Iterable[T], label: str, total: int | None = None, **kwargs: Any
          ) -> Iterator[T]:
  """Yields `items`, counting each one done on a `Bar` (kwargs) when the loop asks for the next.

  The bar is closed when the loop ends, normally or not (an item that raised is not counted).
  """
  items = list(items) if total is None and not hasattr(items, '__len__') else items
  bar = Bar(label, len(items) if total is None else total, **kwargs)  # type: ignore[arg-type]
  with bar:
    for item in items:
      yield item
      bar.update()
