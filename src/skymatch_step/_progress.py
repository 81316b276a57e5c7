"""Progress lines for long passes: counts and elapsed time at the INFO level."""

from __future__ import annotations

import math
import threading
import time

__all__ = ["Progress"]


class Progress:
    """Log how far a pass over ``total`` items has gone.

    On passes of at least ``min_total`` items, a line is logged each time
    another fifth of them is done; every pass logs one line when it
    finishes. Each line gives the count and the time since the pass
    started. Thread-safe.

    Parameters
    ----------
    logger : logging.Logger
        Where to log.
    action : str
        What is done to each item, in the past tense (``"Measured"``).
    total : int
        Number of items.
    noun : str, optional
        The items (plural).
    min_total : int, optional
        Smallest pass that gets intermediate lines.
    """

    def __init__(self, logger, action, total, noun="images", *, min_total=20):
        self._log = logger
        self._action = action
        self._total = int(total)
        self._noun = noun
        self._done = 0
        self._every = math.ceil(self._total / 5) if self._total >= min_total else 0
        self._start = time.perf_counter()
        self._lock = threading.Lock()

    @property
    def elapsed(self):
        """Seconds since the pass started."""
        return time.perf_counter() - self._start

    def advance(self, count=1):
        """Count ``count`` more items done; log if a fifth more are.

        Parameters
        ----------
        count : int, optional
        """
        with self._lock:
            before = self._done
            self._done += count
            done = self._done
        if self._every and done < self._total and done // self._every > before // self._every:
            self._log.info(
                "%s %d of %d %s (%.1f s).",
                self._action,
                done,
                self._total,
                self._noun,
                self.elapsed,
            )

    def finish(self, detail=""):
        """Log the closing line of the pass.

        Parameters
        ----------
        detail : str, optional
            Appended to the line (e.g. ``", 120 overlapping"``).
        """
        self._log.info(
            "%s %d %s%s in %.1f s.", self._action, self._total, self._noun, detail, self.elapsed
        )
