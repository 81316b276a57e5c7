"""The input library on the models' side: opening it, borrowing from it, its files.

`open_library` turns the step's input (an association, a list of models or
files, a container, a library) into a `ModelLibrary`, copying nothing the
caller passed unless stpipe does; `borrow` names the file of a model that
cannot be read; `member_files` finds the files Dask workers can open.
stpipe's library has no public accessor for some of what is needed here
(whether it is on disk, its temporary files): those attributes are read
defensively.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import asdf
from jwst.datamodels import ModelContainer, ModelLibrary
from stdatamodels.jwst.datamodels import JwstDataModel
from stpipe.library import BorrowError, ClosedLibraryError, NoGroupID

__all__ = [
    "LEDGER_LOCK",
    "StepLibrary",
    "adopt",
    "association_of",
    "borrow",
    "dask_files",
    "is_on_disk",
    "member_files",
    "open_library",
    "reread",
]

log = logging.getLogger(__name__)

#: Serializes the library's borrow/shelve bookkeeping across threads.
LEDGER_LOCK = threading.Lock()


class StepLibrary(ModelLibrary):
    """A `ModelLibrary` whose read-only ``asn`` view is built once.

    The base class builds a read-only copy of the whole association each
    time ``asn`` is read, and reads it several times for every model it
    loads, so loading N models costs O(N^2) (minutes at N=1000). The
    association does not change after the library is created, so one copy
    serves every read. Used for the libraries this step creates.
    """

    @property
    def asn(self):
        """Association dictionary used to create the library (read-only)."""
        view = self.__dict__.get("_asn_view")
        if view is None:
            view = self.__dict__["_asn_view"] = super().asn
        return view

    def finalize_result(self, step, reference_files_used):
        """Run stpipe's last pass over the models (metadata, logs), re-reading quietly.

        An on-disk library's models are, by then, the temporary files this
        step wrote (validated as they were saved) or inputs it read and
        validated, so they are opened without validating them again
        (`reread`). When the step deferred its write-back to this pass
        (``defer``), that pass writes the results too.
        """
        deferred = self.__dict__.pop("_deferred", None)
        with reread():
            if deferred is not None:
                deferred(step, reference_files_used)
            else:
                super().finalize_result(step, reference_files_used)

    def defer(self, writes, finalize=None):
        """Hold each model's results until it is next saved.

        ``writes[index](model)`` is applied to model ``index`` every time it
        is borrowed, until it is shelved with ``modify=True`` (and so saved
        with the results). stpipe's last pass, which borrows and saves every
        model anyway, thus writes them; so does any other borrow before it
        (a post hook, or ``process`` called directly).

        Parameters
        ----------
        writes : dict of int to callable
            ``write(model)`` for the models with results.
        finalize : callable, optional
            ``finalize(step, reference_files_used)`` replaces stpipe's last
            pass; it must call ``step.finalize_result`` on every model and
            shelve it.
        """
        self.__dict__["_pending"] = dict(writes)
        if finalize is not None:
            self.__dict__["_deferred"] = finalize

    def borrow(self, index):
        """Borrow model ``index``, with its deferred results written (`defer`)."""
        model = super().borrow(index)
        write = self.__dict__.get("_pending", {}).get(index)
        if write is not None:
            try:
                write(model)
            except BaseException:
                super().shelve(model, index, modify=False)
                raise
        return model

    def shelve(self, model, index=None, modify=True):
        """Return a model; once saved, its deferred results are written (`defer`)."""
        pending = self.__dict__.get("_pending")
        if pending and modify and index is None:
            with contextlib.suppress(KeyError):
                index = self._ledger[model]
        super().shelve(model, index, modify=modify)
        if pending and modify:
            pending.pop(index, None)

    def _filename_to_group_id(self, filename):
        # Members without a group_id in the association are read when the
        # library is created; a file that cannot be read is named.
        try:
            return super()._filename_to_group_id(filename)
        except NoGroupID:
            raise
        except Exception as err:
            raise OSError(f"Cannot read {filename!r}: {type(err).__name__}: {err}") from err


def adopt(library):
    """Give a plain `ModelLibrary` the behaviour of `StepLibrary`, in place.

    `StepLibrary` adds no state, only a cached ``asn`` view and quiet
    re-reads, so a library jwst just built can take its class (the Image3
    pipeline builds its library with jwst's code).

    Parameters
    ----------
    library : ModelLibrary

    Returns
    -------
    ModelLibrary
        ``library``, now a `StepLibrary` if it was exactly a `ModelLibrary`.
    """
    if type(library) is ModelLibrary:
        library.__class__ = StepLibrary
    return library


def open_library(step, input_models, *, in_memory):
    """Open the step's input as a library.

    Parameters
    ----------
    step : Step
        The step (its ``prepare_output`` copies models as stpipe decides).
    input_models : str, Path, list, ModelContainer, ModelLibrary or DataModel
        The step's input.
    in_memory : bool
        Keep the models in memory (False: an association's members stay
        in their files and changed models go to temporary files).

    Returns
    -------
    ModelLibrary
        The library; ``holds_callers_models`` says whether it shares models
        with the caller (so that an error must put them back).

    Raises
    ------
    ValueError
        If the input is empty.
    """
    if isinstance(input_models, JwstDataModel):
        input_models = [input_models]
    output = step.prepare_output(input_models, open_models=False)
    if isinstance(output, ModelLibrary):
        return output
    on_disk = not in_memory
    if on_disk and isinstance(output, (ModelContainer, list, tuple)):
        is_models = isinstance(output, ModelContainer) or any(
            isinstance(m, JwstDataModel) for m in output
        )
        if is_models:
            log.info("in_memory=False has no effect on models already in memory.")
            on_disk = False
    if isinstance(output, (list, tuple)) and not output:
        raise ValueError("No images to process: the input is empty.")
    if on_disk and isinstance(output, (list, tuple)):
        # stpipe's library keeps only an association's members on disk.
        output = association_of(output)
    library = StepLibrary(output, on_disk=on_disk)
    # Not copied (the step runs in a pipeline): the caller sees them.
    library.holds_callers_models = _shares_models(input_models, output)
    return library


def _shares_models(given, opened):
    """Whether ``opened`` holds the content of models of ``given``.

    A `ModelContainer` made from a list of models wraps each in a new model
    object over the same tree and arrays, so the trees are compared.
    """
    if not isinstance(given, (ModelContainer, list, tuple)):
        return False
    if not isinstance(opened, (ModelContainer, list, tuple)):
        return False
    trees = {id(m.instance) for m in given if isinstance(m, JwstDataModel)}
    return any(isinstance(m, JwstDataModel) and id(m.instance) in trees for m in opened)


def borrow(library, index, *, again=False):
    """Borrow model ``index``; an error opening it names its file.

    ``library.borrow`` opens an association member on first use (and, for
    an on-disk library, on every use); a truncated or unreadable file
    otherwise surfaces as a bare numpy or FITS error. ``again``: the step
    read this model before in this run, so its file is not validated again
    (`reread`).
    """
    try:
        if again:
            with reread():
                return library.borrow(index)
        return library.borrow(index)
    except (BorrowError, ClosedLibraryError, MemoryError):
        raise
    except Exception as err:
        raise OSError(
            f"Cannot read image {index + 1} of {len(library)} "
            f"({_member_path(library, index)}): {type(err).__name__}: {err}"
        ) from err


def _member_path(library, index):
    """Name the file of association member ``index`` (or its index)."""
    try:
        expname = library.asn["products"][0]["members"][index]["expname"]
    except (KeyError, IndexError, TypeError):
        return f"member #{index}"
    asn_dir = getattr(library, "asn_dir", None)
    if asn_dir in (None, "None") or os.path.isabs(expname):
        return repr(str(expname))
    return repr(os.path.join(asn_dir, expname))


def member_files(library):
    """Absolute paths of the files holding the library's models, or None.

    A model already loaded in memory (a list of models, or an in-memory
    library that lent it out) may differ from its file, and so may
    anything not on a local path: then None. An on-disk library's
    temporary copy counts as the model's file. stpipe has no public
    accessor for these, so its attributes are read defensively.
    """
    temp = getattr(library, "_temp_filenames", None) or {}
    loaded = getattr(library, "_loaded_models", None)
    asn_dir = getattr(library, "_asn_dir", None)
    if loaded is None or asn_dir is None:
        return None
    try:
        members = library.asn["products"][0]["members"]
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    files = []
    for index in range(len(library)):
        if index in temp:
            path = temp[index]
        elif index in loaded:
            return None
        else:
            path = os.path.join(asn_dir, members[index]["expname"])
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(path):
            return None
        files.append(path)
    return files


def association_of(paths):
    """Make an association dictionary listing the files ``paths``.

    stpipe's library keeps models on disk only for an association; a list
    of file names becomes one, with absolute paths so that the members
    are found whatever the working directory. Group ids are read from the
    files by the library, as for an association file. A list holding
    anything but paths is returned unchanged (the library rejects it).
    """
    if not all(isinstance(p, (str, os.PathLike)) for p in paths):
        return paths
    members = [{"expname": os.path.abspath(os.fspath(p)), "exptype": "science"} for p in paths]
    return {"asn_id": "skymatch", "products": [{"name": "skymatch", "members": members}]}


def is_on_disk(library):
    """Whether ``library`` keeps its models in files (``on_disk=True``).

    stpipe has no public accessor for it; a library without the attribute
    is treated as in memory (nothing is lost but some memory headroom).
    """
    return bool(getattr(library, "_on_disk", False))


@contextlib.contextmanager
def reread():
    """Open, in this thread, files already read and validated in this run.

    The step reads each model up to three times (its WCS, its pixels, the
    write-back), and stpipe's last pass over a library the step created
    reads it once more. The first read validates the file against its
    schemas, as `stdatamodels` always does; the later reads (of the same
    unchanged file, or of the temporary copy validated as the write-back
    saved it) skip that validation, which is about half the time of
    opening a small model (asdf reloads the schemas for each file). asdf's
    configuration is per thread, so other threads are unaffected.
    """
    with asdf.config_context() as config:
        config.validate_on_read = False
        yield


def dask_files(library, options):
    """Return the members' files when the per-image passes can run on Dask, else None.

    The one place that decides whether Dask is used: a scheduler must be
    set, the comparison must measure each image on its own, and every
    model must be in a file the workers can open. Otherwise the step runs
    in this process, with a WARNING saying why.

    Parameters
    ----------
    library : ModelLibrary
    options : StepOptions

    Returns
    -------
    list of str or None
    """
    scheduler = options.execution.scheduler
    if scheduler is None or options.match is None:
        return None
    if not options.match.compare.runs_remotely:
        log.warning(
            "dask_scheduler=%r is not used with compare=%r: pixel differences need both "
            "images of a pair in one process; running here.",
            scheduler,
            options.match.compare.name,
        )
        return None
    files = member_files(library)
    if files is None:
        log.warning(
            "dask_scheduler=%r is not used: some images exist only in memory (models "
            "passed from Python or changed since they were read), so workers cannot "
            "open them; running in this process.",
            scheduler,
        )
    return files
