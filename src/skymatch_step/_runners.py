"""Where the per-item work runs: in this thread, threads, processes or Dask.

Every runner has the same interface: ``map(func, items, on_result=None)``
returns ``[func(item) for item in items]`` in the order of ``items``,
calling ``on_result(index, result)`` as each result arrives; ``remote``
says whether the items travel to other processes (they must then be
picklable); runners are context managers that release their workers.
``items`` may be a generator: local runners start each item as soon as it
is produced, so work overlaps with producing the next one.

Which runner serves which pass is decided once, by `Execution.open`:

- ``geometry``: the footprint intersections (spherical-geometry is pure
  Python, so they run in worker processes);
- ``pixels``: the per-image pixel pass (numpy releases the GIL, so threads
  in this process; or the workers of a Dask cluster, which open the
  images from their files).

Results never depend on the runner or the number of workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._version import __version__
from .exceptions import MissingDependencyError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

__all__ = [
    "DaskRunner",
    "Execution",
    "ProcessRunner",
    "Runner",
    "Runners",
    "SerialRunner",
    "ThreadRunner",
    "check_scheduler",
    "n_workers",
]

log = logging.getLogger(__name__)

#: How long to wait for a running Dask scheduler to answer.
_CONNECT_TIMEOUT = "30s"

_DASK_EXTRA = (
    'pip install ".[dask]" in your skymatch_step checkout (or pip install "dask[distributed]")'
)


class Runner:
    """Base of the runners: ``map`` in this thread, one item after the other."""

    #: Whether items and results travel to other processes.
    remote = False
    #: Number of items worked on at once.
    workers = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Release the workers (nothing to do here)."""

    def map(self, func: Callable, items: Iterable, *, on_result: Callable | None = None) -> list:
        """Apply ``func`` to every item; return the results in the order of ``items``.

        Parameters
        ----------
        func : callable
            A function of one argument.
        items : iterable
            The arguments; a generator is consumed as the work goes on.
        on_result : callable, optional
            Called as ``on_result(index, result)`` as each result arrives.

        Returns
        -------
        list
        """
        out = []
        for k, item in _numbered(items):
            out.append(func(item))
            if on_result is not None:
                on_result(k, out[k])
        return out


#: The runner of a pass that is not worth spreading out.
SerialRunner = Runner


def _numbered(items):
    """Yield ``(k, item)``, holding no reference to an item after its turn.

    (``enumerate`` may reuse its result tuple, which then keeps the last
    item alive while the next one is produced.)
    """
    k = 0
    for item in items:
        yield k, item
        del item
        k += 1  # noqa: SIM113


class _PoolRunner(Runner):
    """A runner over a `concurrent.futures` executor, started on first use."""

    def __init__(self, workers):
        self.workers = max(1, int(workers))
        self._pool = None
        self._failed = False

    def close(self):
        """Stop the workers (pending items are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _start(self):
        raise NotImplementedError

    def map(self, func, items, *, on_result=None):
        if self.workers <= 1:
            return super().map(func, items, on_result=on_result)
        futures = []
        try:
            for item in items:
                futures.append(self._submit(func, item))
            out = []
            for k, future in enumerate(futures):
                out.append(future.result())
                futures[k] = None
                if on_result is not None:
                    on_result(k, out[k])
        finally:
            for future in futures:
                if future is not None:
                    future.cancel()
        return out

    def _submit(self, func, item):
        """Start one item on the pool; run it here when there is no pool."""
        if self._pool is None and not self._failed:
            self._start()
        if self._pool is None or self._failed:
            return _Done(func(item))
        return self._pool.submit(func, item)


class _Done:
    """A result computed in this thread, in place of a future."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def result(self):
        """Return the value."""
        return self.value

    def cancel(self):
        """Nothing to cancel."""


class ThreadRunner(_PoolRunner):
    """Threads of this process (for numpy work, which releases the GIL).

    Items start in the order given, so an item may wait for the work of an
    earlier one (the pixel differences rely on it).

    Parameters
    ----------
    workers : int
        Number of threads; 1 runs every item in the calling thread.
    """

    def _start(self):
        self._pool = ThreadPoolExecutor(max_workers=self.workers)

    def map(self, func, items, *, on_result=None):
        if self.workers <= 1:
            return super().map(func, items, on_result=on_result)
        items = list(items)
        if len(items) < 2:
            return Runner.map(self, func, items, on_result=on_result)
        return super().map(func, items, on_result=on_result)


class ProcessRunner(_PoolRunner):
    """Worker processes (for pure-Python work such as spherical geometry).

    A daemonic process (e.g. a `multiprocessing.Pool` worker), which may
    not start processes, or one where worker processes cannot be started,
    runs the items itself, with an INFO message; the results are the same.

    Parameters
    ----------
    workers : int
        Number of worker processes; 1 runs every item in the calling thread.
    """

    def _start(self):
        if multiprocessing.current_process().daemon:
            log.info(
                "Working in this process: it is a daemonic process (e.g. a "
                "multiprocessing.Pool worker), which cannot start workers."
            )
            self._failed = True
            return
        try:
            self._pool = ProcessPoolExecutor(max_workers=self.workers)
        except (OSError, ImportError, NotImplementedError, RuntimeError) as err:
            self._unavailable(err)

    def _submit(self, func, item):
        try:
            return super()._submit(func, item)
        except (OSError, NotImplementedError, RuntimeError) as err:
            # e.g. no semaphores or process limit reached: the same results
            # without workers, only slower.
            self._unavailable(err)
            return _Done(func(item))

    def _unavailable(self, err):
        # Items already started finish in the pool; the rest run here.
        log.info("Working in this process: cannot start worker processes (%s).", err)
        self._failed = True


def check_scheduler(value):
    """Check a ``dask_scheduler`` value before any work.

    Parameters
    ----------
    value : str or None
        None (run in this process), ``'local'`` (start a local cluster),
        the address of a running scheduler (``tcp://host:8786``) or the
        path of a scheduler file.

    Returns
    -------
    str or None
        The value, with a scheduler file path expanded; None for None or
        an empty string.

    Raises
    ------
    ValueError
        If the value is none of these.
    MissingDependencyError
        If a scheduler is asked for and ``dask.distributed`` is not
        installed.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"dask_scheduler={value!r} must be a string or None.")
    value = value.strip()
    _require_distributed()
    if value == "local":
        return value
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        return path
    if "://" in value or _is_host_port(value):
        return value
    raise ValueError(
        f"dask_scheduler={value!r} is not valid: use None (run in this process), 'local' "
        "(a local cluster of maximum_cores workers), the address of a running "
        "dask.distributed scheduler (such as 'tcp://host:8786') or the path of an "
        "existing scheduler file."
    )


def _is_host_port(value):
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit())


def _require_distributed():
    try:
        import distributed
    except ImportError as err:
        raise MissingDependencyError(
            f"Running on Dask (dask_scheduler) needs dask.distributed, which is not "
            f"installed ({err}). Install the 'dask' extra: {_DASK_EXTRA}, or leave "
            f"dask_scheduler unset to run in this process."
        ) from err
    return distributed


class DaskRunner(Runner):
    """Items on the workers of a ``dask.distributed`` cluster (the ``dask`` extra).

    A local cluster started here is stopped on `close`; a connection to a
    running scheduler is closed (the cluster keeps running). Dask is
    imported only when such a runner is made.

    Parameters
    ----------
    scheduler : str
        ``'local'``, a scheduler address or a scheduler file (see
        `check_scheduler`).
    workers : int
        Number of worker processes of a local cluster (one thread each).
    """

    remote = True

    def __init__(self, scheduler, workers):
        distributed = _require_distributed()
        self._cluster = None
        self._client = None
        self.scheduler = scheduler
        try:
            self._client = self._connect(distributed, scheduler, workers)
        except (OSError, TimeoutError) as err:
            self.close()
            raise OSError(
                f"Cannot reach the Dask scheduler {scheduler!r}: {type(err).__name__}: {err}"
            ) from err
        try:
            self._client.wait_for_workers(1, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as err:
            self.close()
            raise OSError(
                f"The Dask scheduler {scheduler!r} has no workers (waited {_CONNECT_TIMEOUT})."
            ) from err
        self._check_workers()
        self.workers = len(self._client.scheduler_info().get("workers", {}))
        where = "a local cluster" if scheduler == "local" else f"the scheduler {scheduler}"
        log.info("Running the per-image passes on Dask: %s with %d worker(s).", where, self.workers)

    def _connect(self, distributed, scheduler, workers):
        if scheduler == "local":
            self._cluster = distributed.LocalCluster(
                n_workers=max(1, int(workers)),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            return distributed.Client(self._cluster, set_as_default=False)
        if os.path.isfile(scheduler):
            return distributed.Client(
                scheduler_file=scheduler, timeout=_CONNECT_TIMEOUT, set_as_default=False
            )
        return distributed.Client(scheduler, timeout=_CONNECT_TIMEOUT, set_as_default=False)

    def _check_workers(self):
        """Fail early, naming the workers, if they cannot run this package."""
        try:
            versions = self._client.run(_worker_version)
        except Exception as err:
            self.close()
            raise RuntimeError(
                f"The Dask workers of {self.scheduler!r} cannot run skymatch_step "
                f"({type(err).__name__}: {err}); install it where they run."
            ) from err
        other = {w: v for w, v in versions.items() if v != __version__}
        if other:
            self.close()
            raise RuntimeError(
                f"The Dask workers of {self.scheduler!r} run another skymatch_step "
                f"version than this process ({__version__}): {other}."
            )

    def close(self):
        """Disconnect, and stop a local cluster."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def map(self, func, items, *, on_result=None):
        """Apply ``func`` to every item on the workers (see `Runner.map`).

        ``func`` and the items must be picklable. The first error raised by
        a task is raised here; the other tasks are cancelled.
        """
        from distributed import as_completed

        items = list(items)
        futures = self._client.map(func, items, pure=False)
        index = {f.key: k for k, f in enumerate(futures)}
        out = [None] * len(items)
        try:
            for future in as_completed(futures, loop=self._client.loop):
                k = index[future.key]
                out[k] = future.result()
                future.release()
                if on_result is not None:
                    on_result(k, out[k])
        except BaseException:
            self._client.cancel(futures)
            raise
        return out


def _worker_version():
    from ._version import __version__

    return __version__


def n_workers(maximum_cores):
    """Return the number of workers for a ``maximum_cores`` value (jwst's convention).

    Parameters
    ----------
    maximum_cores : str or int
        A positive integer, or ``'none'``/``'one'``, ``'quarter'``,
        ``'half'`` or ``'all'`` of the cores this process may use.

    Returns
    -------
    int
        At most the number of cores available (a larger number is capped,
        with an INFO message).

    Raises
    ------
    ValueError
        For any other value.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        available = os.cpu_count() or 1
    value = str(maximum_cores).strip().lower()
    if value in ("none", "one"):  # stcal's words for "no parallel processing"
        return 1
    fractions = {"all": 1.0, "half": 0.5, "quarter": 0.25}
    if value in fractions:
        return max(1, int(available * fractions[value]))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(
            f"maximum_cores={maximum_cores!r} is not valid: use a positive integer, "
            "'none', 'one', 'quarter', 'half' or 'all'."
        )
    if n > available:
        log.info(
            "maximum_cores=%d: this process may use %d core(s); using %d.", n, available, available
        )
    return min(n, available)


@dataclass(frozen=True)
class Runners:
    """The runner of each pass (see the module docstring).

    Attributes
    ----------
    geometry : Runner
        Footprint intersections.
    pixels : Runner
        The per-image passes over the pixels (and, on Dask, over the files).
    """

    geometry: Runner
    pixels: Runner


@dataclass(frozen=True)
class Execution:
    """How the work may be spread: the number of workers and a Dask scheduler.

    Parameters
    ----------
    workers : int
        Worker processes for the geometry and threads for the pixels (or
        the number of workers of a local Dask cluster).
    scheduler : str or None
        Where the per-image passes run on Dask (see `check_scheduler`);
        None runs them in this process.
    """

    workers: int = 1
    scheduler: str | None = None

    def __post_init__(self):
        workers = self.workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r} must be a positive integer.")

    @contextmanager
    def open(self, *, remote: bool = False) -> Iterator[Runners]:
        """Start the runners; stop them on exit.

        Parameters
        ----------
        remote : bool
            Whether the per-image passes may run on the Dask scheduler
            (the caller checked that the images can be opened there).

        Yields
        ------
        Runners
        """
        with ExitStack() as stack:
            geometry = stack.enter_context(ProcessRunner(self.workers))
            if remote and self.scheduler is not None:
                pixels = stack.enter_context(DaskRunner(self.scheduler, self.workers))
            else:
                pixels = stack.enter_context(ThreadRunner(self.workers))
            yield Runners(geometry=geometry, pixels=pixels)
