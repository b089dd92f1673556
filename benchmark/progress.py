"""Progress of a long command (`run`'s cells, `tune`'s trials): a tqdm bar on a terminal; anywhere else — stderr
redirected to a log file, `nohup … &`, a CI job — one line per finished item, because tqdm hides its bar there
and a log file would otherwise show nothing for an hour."""

import sys
import time

from tqdm import tqdm


def duration(seconds: float) -> str:
    """'4.2 s', '3 min 05 s', '1 h 02 min': short enough for a log line, exact enough to plan by."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Items (cells, trials) made of steps (tasks; a trial is one step).

    On a terminal: tqdm's bar over the steps, as before. Elsewhere: a line when the work starts and one per
    finished item — `<unit> <done>/<total> <what happened>; about <time> left` — the time left being the mean
    wall time of the items finished by this process times the items still to do."""

    def __init__(self, unit: str, total: int, done: int = 0, steps_per_item: int = 1, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.lines = not (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.unit, self.total, self.done = unit, total, done
        self.done_here, self.started = 0, time.monotonic()
        self.steps_per_item = steps_per_item
        self.bar = tqdm(total=total * steps_per_item, initial=done * steps_per_item, file=self.stream,
                        unit="task" if steps_per_item > 1 else unit, disable=self.lines, dynamic_ncols=True)

    def say(self, line: str) -> None:
        """A line in the log (not on a terminal, where the bar shows the same)."""
        if self.lines:
            print(line, file=self.stream, flush=True)

    def describe(self, text: str) -> None:
        self.bar.set_description(text)

    def step(self) -> None:
        self.bar.update(1)

    def item_done(self, what: str, steps_skipped: int = 0) -> None:
        """An item finished (or failed, `steps_skipped` of its steps never run): the bar catches up, the log gets
        its line."""
        self.bar.update(steps_skipped)
        self.done += 1
        self.done_here += 1
        left = self.total - self.done
        per_item = (time.monotonic() - self.started) / self.done_here
        eta = f"about {duration(per_item * left)} left" if left else "all done"
        self.say(f"{self.unit} {self.done}/{self.total} {what}; {eta}")

    def close(self) -> None:
        self.bar.close()
