"""Memory housekeeping while models are read from files one at a time.

Used when a library keeps its models on disk (``in_memory=False``): a
model the library drops is freed at once, and the memory of its arrays is
given back to the operating system, so that the step holds one model per
worker at any time however many it reads.
"""

from __future__ import annotations

import contextlib
import gc

__all__ = ["FREEZING", "quick_collections", "release", "trim_heap"]


class _Freezing:
    """Whether `quick_collections` froze the objects of the process.

    ``settled`` counts the models `release` has settled since. The state is
    the process's, like the garbage collector's.
    """

    active = False
    settled = 0


FREEZING = _Freezing()


#: Models settled between two full collections of everything frozen.
_SWEEP_EVERY = 100


def release(on_disk, *, settle=False, pixels=None):
    """Free what a model released by an on-disk library held.

    Data models contain reference cycles, so a model dropped by an on-disk
    library is only freed by the cyclic garbage collector, which runs on
    object counts, not bytes: left to itself, several models' arrays
    (about 100 MB each for NIRCam) could pile up. Collecting right away
    keeps one model per worker in memory. Nothing to do in memory.

    ``settle``: the caller holds no other model (a pass over the models
    in one thread), so what survives the collection is kept for the rest
    of the step; it is frozen too, so that each collection walks only what
    was made since, not everything read so far (which made a pass over N
    models take time in N^2). A frozen object that later becomes cyclic
    garbage is never collected while frozen (asdf keeps the schema
    resolvers of the last 128 files read and drops the oldest one for
    each new file), so every `_SWEEP_EVERY` settled models everything is
    unfrozen and collected once: a bounded amount of such garbage at any
    time, for a full walk per `_SWEEP_EVERY` models.

    ``pixels``: the size of the model's images, for `trim_heap`.
    """
    if on_disk:
        gc.collect()
        if settle and FREEZING.active:
            FREEZING.settled += 1
            if FREEZING.settled % _SWEEP_EVERY == 0:
                gc.unfreeze()
                gc.collect()
            gc.freeze()
        trim_heap(pixels)


def trim_heap(pixels=None):
    """Give the memory of freed arrays back to the operating system.

    Image arrays (16 MB each for 2048x2048 float32) fall under glibc's
    adaptive mmap threshold, so they are carved from the heap; once freed,
    small long-lived objects allocated in between keep the heap from
    shrinking, and with an on-disk library the process would grow by
    several MB per image read. ``malloc_trim`` releases the free pages.
    It walks the whole heap, so for small images (``pixels``, the size of
    the image just freed) it runs once their arrays add up to
    ``_TRIM_PIXELS`` (a 128x128 image does not need it; a 2048x2048 one
    does every time). A no-op where the C library has no ``malloc_trim``.
    """
    if _MALLOC_TRIM is None:
        return
    if pixels is not None:
        _TRIMMING.pending += int(pixels)
        if _TRIMMING.pending < _TRIM_PIXELS:
            return
    _TRIMMING.pending = 0
    _MALLOC_TRIM(0)


class _Trimming:
    """Image pixels freed since the heap was last trimmed."""

    pending = 0


_TRIMMING = _Trimming()

#: Pixels of freed images (about 6 arrays each) after which the heap is trimmed.
_TRIM_PIXELS = 1 << 21


def _load_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


@contextlib.contextmanager
def quick_collections(enabled):
    """Make the garbage collections of `release` cheap while the step runs.

    A full collection walks every tracked object of the process (about
    70 ms after jwst is imported); freezing the objects that exist when
    the step starts leaves only the step's own to walk. Not done when the
    caller has frozen objects itself, since unfreezing would release
    theirs too.
    """
    if not enabled or gc.get_freeze_count():
        yield
        return
    gc.collect()  # garbage frozen now could never be collected
    gc.freeze()
    FREEZING.active, FREEZING.settled = True, 0
    try:
        yield
    finally:
        FREEZING.active = False
        gc.unfreeze()
