"""Running the per-image passes on a Dask cluster (the ``dask`` extra).

`DaskRunner` maps a function over items on the workers of a
``dask.distributed`` cluster and returns the results in order. The
functions and items must be picklable: they travel to worker processes,
which may be on other machines. Dask is imported only here, and only when
a runner is opened.
"""

from __future__ import annotations

import logging
import os

from .exceptions import MissingDependencyError

__all__ = ["DaskRunner", "check_scheduler"]

log = logging.getLogger(__name__)

#: How long to wait for a running scheduler to answer.
_CONNECT_TIMEOUT = "30s"

_DASK_EXTRA = (
    'pip install ".[dask]" in your skymatch_step checkout (or pip install "dask[distributed]")'
)


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


class DaskRunner:
    """Tasks on a ``dask.distributed`` cluster.

    Use as a context manager: a local cluster started here is stopped on
    exit, a connection to a running scheduler is closed (the cluster
    keeps running).

    Parameters
    ----------
    scheduler : str
        ``'local'``, a scheduler address or a scheduler file (see
        `check_scheduler`).
    workers : int
        Number of worker processes of a local cluster (one thread each).
    """

    def __init__(self, scheduler, workers):
        distributed = _require_distributed()
        self._cluster = None
        self.scheduler = scheduler
        try:
            if scheduler == "local":
                self._cluster = distributed.LocalCluster(
                    n_workers=max(1, int(workers)),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                self._client = distributed.Client(self._cluster, set_as_default=False)
            elif os.path.isfile(scheduler):
                self._client = distributed.Client(
                    scheduler_file=scheduler, timeout=_CONNECT_TIMEOUT, set_as_default=False
                )
            else:
                self._client = distributed.Client(
                    scheduler, timeout=_CONNECT_TIMEOUT, set_as_default=False
                )
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
        nworkers = len(self._client.scheduler_info().get("workers", {}))
        where = "a local cluster" if scheduler == "local" else f"the scheduler {scheduler}"
        log.info("Running the per-image passes on Dask: %s with %d worker(s).", where, nworkers)

    def _check_workers(self):
        """Fail early, naming the workers, if they cannot run this package."""
        from . import __version__

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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Disconnect, and stop a local cluster."""
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def map(self, func, items, *, on_result=None):
        """Apply ``func`` to every item on the workers.

        Parameters
        ----------
        func : callable
            A picklable function of one argument.
        items : iterable
            Picklable arguments.
        on_result : callable, optional
            Called in this process as ``on_result(index, result)`` as each
            result arrives (in completion order).

        Returns
        -------
        list
            ``func(item)`` for every item, in the order of ``items``.

        Raises
        ------
        Exception
            The first error raised by a task (the others are cancelled).
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
    from . import __version__

    return __version__
