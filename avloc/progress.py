"""Progress lines, one format for training, data conversion and prediction:

  <what> <done>/<total> (<percent>%) | <detail> | <rate> <unit>/s [<rate> <other>/s] | ETA <time>

Rates and the ETA are measured over the interval since the previous line.
"""

import time


def format_duration(seconds: float) -> str:
  """'1h05m' from an hour on, else '3m07s'."""
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class Progress:
  """Formats the progress lines of `total` units of work.

  timed_from_start: measure the first line's rate from construction (conversion,
  prediction), or give the first line no rate (training: its first interval holds the
  compilation). per_unit: other rates shown, {name: count per unit}, e.g. {'samples':
  batch size} for steps.
  """

  def __init__(self, what: str, total: int, unit: str, done: int = 0,
               timed_from_start: bool = True, per_unit: dict[str, float] | None = None):
    self.what = what
    self.total = total
    self.unit = unit
    self.per_unit = per_unit or {}
    self._last = (time.monotonic(), done) if timed_from_start else None

  def line(self, done: int, detail: str = '') -> str:
    """The line for `done` units finished."""
    now = time.monotonic()
    parts = [f'{self.what} {done}/{self.total} ({100.0 * done / max(self.total, 1):.0f}%)']
    if detail:
      parts.append(detail)
    if self._last is not None and done > self._last[1] and now > self._last[0]:
      rate = (done - self._last[1]) / (now - self._last[0])
      rates = [f'{rate:.2f} {self.unit}/s'] + [
          f'{rate * count:.1f} {name}/s' for name, count in self.per_unit.items()]
      parts += [' '.join(rates), f'ETA {format_duration((self.total - done) / rate)}']
    self._last = (now, done)
    return ' | '.join(parts)
