"""The ``skymatch`` step: sky levels of overlapping images, for stpipe.

The step is the models' side of the package and reads as its phases:
options (`StepOptions`, checked once), open the inputs (`open_library`,
`ModelInputs`), the engine (`match`), write back (`write_back`). What
each phase needs lives in a module of its own; see ``docs/design.rst``.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from jwst.stpipe import Step

from ._diagnostics import write_diagnostics
from ._engine import match
from ._library import StepLibrary, dask_files, is_on_disk, open_library
from ._memory import quick_collections
from ._model_inputs import ModelInputs
from ._step_options import StepOptions
from ._writeback import (
    defer_write_back,
    log_levels,
    updates_from_result,
    user_sky_updates,
    write_back,
)

__all__ = ["SkyMatchStep", "SkymatchStep"]

log = logging.getLogger(__name__)


class SkymatchStep(Step):
    """Compute, equalize or subtract the sky background of overlapping images.

    The parameters, their defaults and the results written to each model
    (``meta.background.method/level/subtracted`` and
    ``meta.cal_step.skymatch``) are those of ``jwst.skymatch.SkyMatchStep``,
    plus ``maximum_cores`` for parallel processing (results do not depend
    on it) and options that go beyond jwst's step (``compare``,
    ``anchor_sets``, ``grouping``, pair rejection, ``skymask``,
    ``diagnostics``), whose defaults keep jwst's results. This step never
    reads a CRDS parameter reference file.
    """

    class_alias = "skymatch"

    spec = """
        # General sky matching parameters:
        skymethod = option('local', 'global', 'match', 'global+match', 'user', default='match') # sky computation method
        match_down = boolean(default=True) # adjust sky to lowest measured value?
        subtract = boolean(default=False) # subtract computed sky from image data?
        skylist = string(default=None) # Filename pointing to list of (imagename skyval) pairs

        # Image's bounding polygon parameters:
        stepsize = integer(default=None) # Max vertex separation

        # Sky statistics parameters:
        skystat = option('median', 'midpt', 'mean', 'mode', default='mode') # sky statistics
        dqbits = string(default='~DO_NOT_USE+NON_SCIENCE') # "good" DQ bits
        lower = float(default=None) # Lower limit of "good" pixel values
        upper = float(default=None) # Upper limit of "good" pixel values
        nclip = integer(min=0, default=5) # number of sky clipping iterations
        lsigma = float(min=0.0, default=4.0) # Lower clipping limit, in sigma
        usigma = float(min=0.0, default=4.0) # Upper clipping limit, in sigma
        binwidth = float(min=0.0, default=0.1) # Bin width for 'mode' and 'midpt' `skystat`, in sigma

        # Memory management:
        in_memory = boolean(default=True) # If False, preserve memory using temporary files

        # Parallel processing (not in jwst's step):
        maximum_cores = string(default='all') # cores to use: an integer, 'none', 'quarter', 'half' or 'all'

        # Sky matching beyond jwst's step (the defaults give jwst's results):
        compare = option('statistics', 'differences', default='statistics') # compare overlaps by each image's sky statistic (jwst) or by pixel differences at the same sky positions
        sky_model = option('constant', 'plane', default='constant') # each group's sky: one level (jwst) or a plane on the sky (needs compare='differences')
        anchor_sets = boolean(default=False) # give each set of overlapping images its own zero (match) or global level (global+match)
        grouping = option('exposure', 'image', default='exposure') # one sky level per exposure (group_id) or per image
        min_pair_pixels = integer(min=1, default=1) # leave out of the fit pairs measured on fewer usable pixels
        reject_sigma = float(min=0.0, default=None) # leave out of the fit, one at a time, pairs whose normalized residual exceeds this (None: keep all)
        reject_iterations = integer(min=1, default=10) # most pairs rejected as outliers
        skymask = string(default=None) # file of (image name, FITS mask) pairs; nonzero mask pixels are usable
        diagnostics = string(default=None) # file prefix for fit diagnostics: <prefix>_pairs.ecsv, <prefix>_images.ecsv, <prefix>.png
        diagnostics_plot = boolean(default=True) # with diagnostics, also write the PNG plot (needs the 'plot' extra)

        # Scale-out (not in jwst's step):
        dask_scheduler = string(default=None) # measure the images on Dask: 'local' (a cluster of maximum_cores workers), a scheduler address (tcp://host:8786) or a scheduler file; None runs in this process
    """  # noqa: E501

    reference_file_types: ClassVar[list] = []

    # -- stpipe integration ------------------------------------------------
    @classmethod
    def get_config_from_reference(cls, dataset, disable=None, crds_observatory=None):
        """Return no parameters: this step has no CRDS parameter reference.

        A class named ``SkymatchStep`` would otherwise look up
        ``pars-skymatchstep``, which belongs to jwst's step.
        """
        log.debug("%s has no CRDS parameter reference file; using defaults.", cls.__name__)
        return cls._empty_config()

    @classmethod
    def _get_config_from_parameters(cls, crds_parameters, crds_observatory):
        return cls._empty_config()

    @classmethod
    def _get_crds_parameters(cls, dataset):
        # stpipe asks for these before every run even though no CRDS lookup
        # follows; jwst's version opens a library on an association just to
        # read the first member's metadata. Nothing is read here.
        return {}, "jwst"

    @staticmethod
    def get_stpipe_loggers():
        """Name the loggers whose messages stpipe shows, this package's included.

        Returns
        -------
        tuple of str
        """
        return ("skymatch_step", *Step.get_stpipe_loggers())

    # -- processing --------------------------------------------------------
    def process(self, input_models):
        """Compute the sky of the input images and record or subtract it.

        Parameters
        ----------
        input_models : str, Path, list, ModelContainer, ModelLibrary or DataModel
            An association file, a list of models or files, a container or
            a library of 2-D images with WCSs.

        Returns
        -------
        ModelLibrary
            The models with ``meta.background`` and
            ``meta.cal_step.skymatch`` set (and the sky subtracted when
            ``subtract`` is True). A `ModelLibrary` input is updated in
            place; other inputs are copied first.
        """
        options = StepOptions.from_step(self)
        library = open_library(self, input_models, in_memory=options.in_memory)
        if len(library) == 0:
            raise ValueError("No images to process: the input is empty.")
        # Only models the caller holds are seen again after an error; a
        # library of copies or of files this step opened is dropped.
        undo = library is input_models or getattr(library, "holds_callers_models", False)
        on_disk = is_on_disk(library)
        with quick_collections(on_disk):
            if options.skymethod == "user":
                if self.diagnostics:
                    log.warning("No fit diagnostics with skymethod='user': nothing is fitted.")
                updates = user_sky_updates(library, options.skylist, subtract=options.subtract)
            else:
                result = self._match(library, options)
                updates = updates_from_result(result, options.skymethod, subtract=options.subtract)
                if options.diagnostics:
                    # Before any model changes: a failure here changes nothing.
                    unit = next((m.unit for m in result.ids if m.unit), None)
                    write_diagnostics(
                        result, options.diagnostics, plot=options.diagnostics_plot, unit=unit
                    )
            if on_disk and not undo and isinstance(library, StepLibrary):
                # The step's own on-disk library: written in stpipe's last
                # pass, which reads and saves every model anyway.
                defer_write_back(library, updates, subtract=options.subtract)
                return library
            write_back(library, updates, subtract=options.subtract, on_disk=on_disk, undo=undo)
        log_levels(updates)
        return library

    @staticmethod
    def _match(library, options):
        """Run the engine on the library's models (read here or on Dask)."""
        files = dask_files(library, options)
        with options.execution.open(remote=files is not None) as runners, library:
            inputs = ModelInputs(library, options, runners.pixels, files)
            return match(inputs, options.match, runners=runners)


#: jwst's name for the step class, for scripts that switch imports.
SkyMatchStep = SkymatchStep
