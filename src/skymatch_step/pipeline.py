"""jwst's Image3 pipeline with this package's skymatch step."""

from __future__ import annotations

import logging
import os
from typing import ClassVar

from jwst.datamodels import ModelLibrary
from jwst.pipeline import Image3Pipeline
from stpipe.step import get_disable_crds_steppars

from ._library import adopt
from .step import SkymatchStep

__all__ = ["SkymatchImage3Pipeline"]

log = logging.getLogger(__name__)


class SkymatchImage3Pipeline(Image3Pipeline):
    """``calwebb_image3`` with `SkymatchStep` as its ``skymatch`` step.

    Everything else (steps, parameters, outputs) is jwst's
    ``Image3Pipeline``. Registered with stpipe as ``skymatch_image3``.

    CRDS parameter reference files are used for the other steps only when
    CRDS is configured (``CRDS_SERVER_URL`` or ``CRDS_PATH`` is set) and
    ``STPIPE_DISABLE_CRDS_STEPPARS`` does not disable them; otherwise the
    pipeline runs offline with default parameters.

    Without CRDS, the steps that need reference files (in jwst 3.0.0 only
    ``source_catalog``, which reads ``apcorr`` and ``abvegaoffset``) are
    skipped, with a warning naming them, so that the pipeline still writes
    its ``_crf`` and ``_i2d`` products offline. A step still runs when the
    caller set its ``skip`` parameter (e.g.
    ``--steps.source_catalog.skip=false``) or gave an override for each of
    its reference files (``override_<reftype>``).

    jwst's ``tweakreg`` can only correct WCSs built by jwst's
    ``assign_wcs`` (with a ``v2v3`` frame); when the input's WCSs have no
    such frame (simulated files, say), ``tweakreg`` is skipped with a
    warning instead of stopping the pipeline with tweakwcs's
    "Unsupported WCS structure" error, unless the caller set its ``skip``.

    The library the pipeline creates from its input builds its read-only
    association view once, as the step's own libraries do (jwst's rebuilds
    it several times per model borrowed, which is O(N^2) in every step of
    the pipeline). A `ModelLibrary` passed in is used as it is.
    """

    step_defs: ClassVar[dict] = {**Image3Pipeline.step_defs, "skymatch": SkymatchStep}

    def __init__(self, name=None, parent=None, config_file=None, _validate_kwds=True, **kws):
        super().__init__(
            name=name, parent=parent, config_file=config_file, _validate_kwds=_validate_kwds, **kws
        )
        # Keywords given directly name what the caller chose; a validated
        # configuration (``from_config_section``) holds every default, so
        # there the choice is read before validation.
        self._chosen_skips = _steps_with_skip(kws) if _validate_kwds else frozenset()

    @classmethod
    def from_config_section(cls, config, parent=None, name=None, config_file=None):
        """Create the pipeline from a configuration, remembering the skips it sets.

        Parameters
        ----------
        config : configobj.Section
            Pipeline parameters, with a ``steps`` section for its steps.
        parent : Step or None, optional
            The parent step.
        name : str or None, optional
            Name of the instance.
        config_file : str or None, optional
            File the configuration came from.

        Returns
        -------
        SkymatchImage3Pipeline
        """
        chosen = _steps_with_skip(config)
        pipeline = super().from_config_section(
            config, parent=parent, name=name, config_file=config_file
        )
        pipeline._chosen_skips = chosen
        return pipeline

    def run(self, *args):
        """Run the pipeline; without CRDS, first skip the steps needing reference files.

        Parameters
        ----------
        *args
            The input (an association, a `ModelLibrary`, ...).

        Returns
        -------
        object
            What jwst's ``Image3Pipeline`` returns.
        """
        self._skip_steps_needing_references()
        return super().run(*args)

    def _skip_steps_needing_references(self):
        """Without CRDS, skip the steps that would ask it for reference files.

        Steps whose ``skip`` the caller set, and steps given an override
        for each of their reference files, are left as they are.
        """
        if _crds_configured():
            return
        chosen = getattr(self, "_chosen_skips", frozenset())
        skipped = []
        for name in self.step_defs:
            step = getattr(self, name)
            reftypes = list(step.reference_file_types)
            if step.skip or not reftypes or name in chosen:
                continue
            if all(step.get_ref_override(reftype) is not None for reftype in reftypes):
                continue
            step.skip = True
            skipped.append(f"{name} ({', '.join(reftypes)})")
        if skipped:
            log.warning(
                "CRDS is not configured (neither CRDS_SERVER_URL nor CRDS_PATH is set): "
                "skipping the step(s) that need CRDS reference files: %s. To run them, "
                "configure CRDS (e.g. CRDS_SERVER_URL=https://jwst-crds.stsci.edu and "
                "CRDS_PATH=$HOME/crds_cache), or set their 'skip' parameter explicitly "
                "(e.g. --steps.source_catalog.skip=false) with override_<reftype> files.",
                "; ".join(skipped),
            )

    @classmethod
    def get_config_from_reference(cls, dataset, disable=None, crds_observatory=None):
        """CRDS parameters of the pipeline's steps, when CRDS is configured.

        Parameters
        ----------
        dataset : DataModel, ModelLibrary, str or dict
            Input used to select the parameter reference files.
        disable : bool or None, optional
            Skip CRDS; otherwise ``STPIPE_DISABLE_CRDS_STEPPARS`` decides.
        crds_observatory : str or None, optional
            Observatory name, when ``dataset`` is a dict.

        Returns
        -------
        configobj.ConfigObj
        """
        if not get_disable_crds_steppars(disable) and not _crds_configured():
            log.info("CRDS is not configured: running %s with default parameters.", cls.__name__)
            return cls._empty_config()
        return super().get_config_from_reference(
            dataset, disable=disable, crds_observatory=crds_observatory
        )

    def _load_input_as_library(self, input_data):
        library = super()._load_input_as_library(input_data)
        if library is not input_data and type(library) is ModelLibrary:
            adopt(library)
            self._skip_tweakreg_without_v2v3(library)
        return library

    def _skip_tweakreg_without_v2v3(self, library):
        """Skip tweakreg, with a warning, if the first image's WCS has no v2v3 frame."""
        chosen = getattr(self, "_chosen_skips", frozenset())
        if self.tweakreg.skip or "tweakreg" in chosen or len(library) == 0:
            return
        with library:
            model = library.borrow(0)
            try:
                wcs = model.meta.wcs
                frames = list(wcs.available_frames) if wcs is not None else []
                name = model.meta.filename
            finally:
                library.shelve(model, 0, modify=False)
        if "v2v3" not in frames:
            self.tweakreg.skip = True
            log.warning(
                "Skipping tweakreg: the WCS of %s has no 'v2v3' frame (frames: %s), which "
                "tweakreg needs (WCSs made by jwst's assign_wcs have one; simulated ones do "
                "not). Set --steps.tweakreg.skip=false to run it anyway.",
                name,
                ", ".join(map(str, frames)) or "none",
            )

    @staticmethod
    def get_stpipe_loggers():
        """Name the loggers whose messages stpipe shows, this package's included.

        Returns
        -------
        tuple of str
        """
        return ("skymatch_step", *Image3Pipeline.get_stpipe_loggers())


def _steps_with_skip(config):
    """Names of the steps whose ``skip`` parameter ``config`` sets.

    Parameters
    ----------
    config : dict-like
        Pipeline parameters as given (``{"steps": {"name": {...}}}``).

    Returns
    -------
    frozenset of str
    """
    steps = config.get("steps") or {}
    return frozenset(name for name, pars in steps.items() if pars and "skip" in pars)


def _crds_configured():
    """Whether the user has pointed CRDS at a server or a local cache."""
    return bool(os.environ.get("CRDS_SERVER_URL") or os.environ.get("CRDS_PATH"))
