"""jwst's Image3 pipeline with this package's skymatch step."""

from __future__ import annotations

import logging
import os
from typing import ClassVar

from jwst.datamodels import ModelLibrary
from jwst.pipeline import Image3Pipeline
from stpipe.step import get_disable_crds_steppars

from .step import SkymatchStep, _Library

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

    The library the pipeline creates from its input builds its read-only
    association view once, as the step's own libraries do (jwst's rebuilds
    it several times per model borrowed, which is O(N^2) in every step of
    the pipeline). A `ModelLibrary` passed in is used as it is.
    """

    step_defs: ClassVar[dict] = {**Image3Pipeline.step_defs, "skymatch": SkymatchStep}

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
            # _Library adds no state, only a cached ``asn`` view, so the
            # library jwst just built can take its class.
            library.__class__ = _Library
        return library

    @staticmethod
    def get_stpipe_loggers():
        """Name the loggers whose messages stpipe shows, this package's included.

        Returns
        -------
        tuple of str
        """
        return ("skymatch_step", *Image3Pipeline.get_stpipe_loggers())


def _crds_configured():
    """Whether the user has pointed CRDS at a server or a local cache."""
    return bool(os.environ.get("CRDS_SERVER_URL") or os.environ.get("CRDS_PATH"))
