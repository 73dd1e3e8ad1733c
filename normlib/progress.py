"""Progress of a notebook's trials: a tqdm bar in the notebook, and the status file the pipeline reads.

When the pipeline runs a notebook it names a status file in NORMLIB_PROGRESS; every run_trials call of the
notebook's process adds to it: trials total / cached (read from the cache, or asked twice in one call) /
trained here (their keys, and per kind of trial their count and seconds) / shared (trained in this run by
another notebook, which owned the key), the hosts that trained them, and when it started. The pipeline
shows trials done of the total while the notebook runs; the cost chapter reads the files afterwards.
"""
import json
import math
import os
import time

from normlib.paths import write_atomic


def expect(n):
    """Announce n trials that later run_trials calls of this process will ask for (e.g. runs that depend
    on earlier results), so that the pipeline's progress shows the whole total from the start."""
    path = os.environ.get("NORMLIB_PROGRESS")
    if path:
        s = Progress.state(path)
        s["expected"] += n
        s["total"] += n


class Progress:
    """The bar and the status file of one run_trials call (module docstring); counts accumulate over every
    call of the process."""

    _state = {}  # status file -> running totals of this process

    def __init__(self, total, cached, show=True):
        self.bar = None
        if show and total > cached:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=cached, desc=f"{total} trials ({cached} cached)")
        self.path = os.environ.get("NORMLIB_PROGRESS")
        if self.path:
            s = self.state(self.path)
            taken = min(s["expected"], total)  # trials announced by expect() are in the total already
            s["expected"] -= taken
            s["total"] += total - taken
            s["cached"] += cached
            self.last = 0.0
            self._write(force=True)

    @classmethod
    def state(cls, path):
        return cls._state.setdefault(path, {"total": 0, "cached": 0, "trained": 0, "shared": 0, "hosts": {},
                                            "train_seconds": 0.0, "kinds": {}, "keys": [], "started": time.time(),
                                            "expected": 0})

    def update(self, n, ran_on, key="", kind="trial"):
        """One trial trained here (n: how many items of the call it answers; the copies beyond the first
        count as reused)."""
        if self.bar is not None:
            self.bar.update(n)
        if self.path:
            s = self._state[self.path]
            s["trained"] += 1
            s["cached"] += n - 1
            s["keys"].append(key)
            host = ran_on.get("host", "?")
            s["hosts"][host] = s["hosts"].get(host, 0) + 1
            seconds = ran_on.get("seconds", 0.0)
            seconds = seconds if math.isfinite(seconds) else 0.0
            s["train_seconds"] += seconds
            count, total = s["kinds"].get(kind, (0, 0.0))
            s["kinds"][kind] = (count + 1, total + seconds)
            self._write()

    def shared(self, n):
        """n trials another notebook of this run trained (this one waited for them)."""
        if self.bar is not None:
            self.bar.update(n)
        if self.path:
            self._state[self.path]["shared"] += n
            self._write()

    def _write(self, force=False):
        now = time.time()
        if force or now - self.last >= 1.0:
            self.last = now
            try:
                write_atomic(self.path, json.dumps({**self._state[self.path], "updated": now}))
            except OSError:
                pass  # progress is a courtesy; a trial never fails for it

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.path:
            self._write(force=True)
