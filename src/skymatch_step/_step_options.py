"""The step's parameters as one checked object: `StepOptions`.

Built once from the step (`StepOptions.from_step`) before any model is
opened: every parameter is checked there, so that a bad value stops the
step before any work. It holds the engine's options (`MatchOptions`), how
the work may be spread (`Execution`) and what only the models' side needs
(DQ flags, subtraction, grouping, masks, sky list, diagnostics).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._diagnostics import check_diagnostics_prefix
from ._model_inputs import parse_dqbits
from ._options import MatchOptions, check_stepsize
from ._runners import Execution, check_scheduler, n_workers
from ._statistics import SkyStatistics

__all__ = ["GROUPINGS", "StepOptions"]

#: How images are grouped into sky groups.
GROUPINGS = ("exposure", "image")


@dataclass(frozen=True)
class StepOptions:
    """Everything the step's run needs from its parameters.

    Attributes
    ----------
    skymethod : str
        Including ``'user'`` (handled by the step, not the engine).
    match : MatchOptions or None
        The engine's options; None for ``skymethod='user'``.
    execution : Execution
        Workers and Dask scheduler.
    subtract : bool
    dqbits : int or None
        DQ flags to ignore.
    grouping : {'exposure', 'image'}
    skymask : str or None
        The sky mask list (checked to exist).
    skylist : str or None
    diagnostics : str or None
        The diagnostics prefix, resolved against ``output_dir``.
    diagnostics_plot : bool
    in_memory : bool
    """

    skymethod: str
    match: MatchOptions | None
    execution: Execution
    subtract: bool = False
    dqbits: int | None = None
    grouping: str = "exposure"
    skymask: str | None = None
    skylist: str | None = None
    diagnostics: str | None = None
    diagnostics_plot: bool = True
    in_memory: bool = True

    @classmethod
    def from_step(cls, step):
        """Check the step's parameters and gather them.

        Parameters
        ----------
        step : SkymatchStep

        Returns
        -------
        StepOptions

        Raises
        ------
        ValueError
            Naming the bad parameter and its valid values.
        MissingDependencyError
            When an optional dependency asked for is missing (Dask, matplotlib).
        """
        execution = Execution(
            workers=n_workers(step.maximum_cores), scheduler=check_scheduler(step.dask_scheduler)
        )
        user = step.skymethod == "user"
        check_stepsize(step.stepsize)  # for every method, as jwst's parameter files allow
        match = None if user else _match_options(step)
        if step.grouping not in GROUPINGS:
            raise ValueError(
                f"Unknown grouping {step.grouping!r}; valid choices are {', '.join(GROUPINGS)}."
            )
        if step.skymask and not os.path.isfile(os.path.expanduser(step.skymask)):
            raise ValueError(f"skymask file {step.skymask!r} does not exist.")
        return cls(
            skymethod=step.skymethod,
            match=match,
            execution=execution,
            subtract=bool(step.subtract),
            dqbits=None if user else parse_dqbits(step.dqbits),
            grouping=step.grouping,
            skymask=step.skymask,
            skylist=step.skylist,
            diagnostics=None if user else _diagnostics_prefix(step),
            diagnostics_plot=bool(step.diagnostics_plot),
            in_memory=bool(step.in_memory),
        )


def _match_options(step):
    stats = SkyStatistics(
        skystat=step.skystat,
        lower=step.lower,
        upper=step.upper,
        nclip=step.nclip,
        lsigma=step.lsigma,
        usigma=step.usigma,
        binwidth=step.binwidth,
    )
    return MatchOptions(
        skymethod=step.skymethod,
        match_down=step.match_down,
        stats=stats,
        stepsize=step.stepsize,
        compare=step.compare,
        anchor_sets=step.anchor_sets,
        min_pair_pixels=step.min_pair_pixels,
        reject_sigma=step.reject_sigma,
        reject_iterations=step.reject_iterations,
        sky_model=step.sky_model,
    )


def _diagnostics_prefix(step):
    """Where to write the fit diagnostics (None: nowhere), checked up front.

    A relative prefix is taken in ``output_dir`` when that is set.
    """
    if not step.diagnostics:
        return None
    prefix = os.path.expanduser(step.diagnostics)
    if step.output_dir and not os.path.isabs(prefix):
        prefix = os.path.join(step.output_dir, prefix)
    check_diagnostics_prefix(prefix, plot=step.diagnostics_plot)
    return prefix
