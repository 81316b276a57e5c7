"""From offsets and each group's own sky to every image's sky terms.

The last step of `match`: the matched offsets are anchored (to the lowest
or highest, over all groups or per connected set), the ``global`` level is
the lowest sky left after them, and every image gets its group's terms, or
a reason why its sky could not be determined.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["anchor", "group_local", "group_reason", "group_terms", "groups_left_out", "report_sets"]

log = logging.getLogger(__name__)


def group_local(measurements, members):
    """Lowest sky among each group's members (None where unmeasurable)."""
    out = []
    for idx in members:
        vals = [measurements[k].local[0] for k in idx if measurements[k].local is not None]
        out.append(min(vals) if vals else None)
    return out


def anchor(deltas, sets, match_down):
    """Shift the offsets so that the lowest (or highest) is zero.

    With ``sets`` (``anchor_sets``), each connected set is shifted on its
    own; otherwise one shift applies to all (jwst). In place.
    """
    finite = np.isfinite(deltas)
    if not finite.any():
        return
    pick = np.min if match_down else np.max
    if sets is None:
        deltas[finite] -= pick(deltas[finite])
        return
    for label in np.unique(sets[finite]):
        where = finite & (sets == label)
        deltas[where] -= pick(deltas[where])


def group_terms(skymethod, group_local, deltas, sets):
    """Return the sky terms of every group and whether they could be determined."""
    has_local = np.array([v is not None for v in group_local], dtype=bool)
    matched = np.isfinite(deltas)
    # Offsets as Python floats (jwst's type), so that sums and subtractions
    # round as they do there.
    offsets = [float(d) if ok else 0.0 for d, ok in zip(deltas, matched, strict=True)]
    if skymethod == "local":
        return [(v,) for v in group_local], has_local
    if skymethod == "match":
        return [(d,) for d in offsets], matched
    # 'global' and 'global+match': lowest sky left after the offsets (a
    # group left out of the matching keeps offset 0, as in jwst), over all
    # groups or, with anchored sets, over each set.
    minsky = _global_levels(group_local, offsets, sets)
    if skymethod == "global":
        ok = has_local & np.array([m is not None for m in minsky], dtype=bool)
        return [(m,) for m in minsky], ok
    terms = []
    ok = np.zeros(len(offsets), dtype=bool)
    for g, (d, m) in enumerate(zip(offsets, minsky, strict=True)):
        if m is not None:
            terms.append((d, m))
            ok[g] = has_local[g] or matched[g]
        else:
            terms.append((d,))
            ok[g] = matched[g]
    return terms, ok


def _global_levels(group_local, offsets, sets):
    """Global level of each group: the lowest sky left after the offsets."""
    n = len(group_local)
    if sets is not None and len(sets) == 0:
        sets = None
    keys = [0] * n if sets is None else [int(s) for s in sets]
    lowest: dict = {}
    for key, v, d in zip(keys, group_local, offsets, strict=True):
        if v is not None:
            left = v - d
            lowest[key] = left if key not in lowest else min(lowest[key], left)
    if sets is None:
        if 0 in lowest:
            log.info("Global sky level: %.6g", lowest[0])
        else:
            log.warning("Unable to compute a global sky level: no image has a measurable sky.")
    else:
        for key in sorted(lowest):
            log.info("Global sky level of set %d: %.6g", key, lowest[key])
    return [lowest.get(key) for key in keys]


def report_sets(sets, deltas, members, names, anchored=False):
    """Warn when the overlapping groups form several disconnected sets."""
    solved = np.isfinite(deltas)
    labels = sorted(set(sets[solved].tolist()))
    if len(labels) > 1:
        desc = []
        for lab in labels:
            imgs = [names[k] for g in np.flatnonzero((sets == lab) & solved) for k in members[g]]
            shown = ", ".join(imgs[:3]) + (", ..." if len(imgs) > 3 else "")
            desc.append(f"[{shown}] ({len(imgs)} images)")
        if anchored:
            log.info(
                "The images form %d sets that do not overlap each other: %s. Each set is "
                "anchored on its own (anchor_sets=True).",
                len(labels),
                "; ".join(desc),
            )
            return
        log.warning(
            "The images form %d sets that do not overlap each other: %s. Sky levels are "
            "matched within each set only; the sets may be offset from each other "
            "(anchor_sets=True gives each set its own reference level).",
            len(labels),
            "; ".join(desc),
        )


def groups_left_out(records, ngroups):
    """Why the fit left out every pair of a group ('' if it kept one or had none)."""
    used = np.zeros(ngroups, dtype=bool)
    why = [set() for _ in range(ngroups)]
    for r in records:
        for g in (r.a, r.b):
            if r.rejected:
                why[g].add(r.rejected)
            else:
                used[g] = True
    return [" and ".join(sorted(w)) if w and not u else "" for w, u in zip(why, used, strict=True)]


def group_reason(skymethod, left_out=""):
    if left_out and "match" in skymethod:
        return f"the fit left out all its overlapping pairs ({left_out})"
    if skymethod == "match":
        return "its group does not overlap any other group with usable pixels"
    return "no sky statistic could be computed from its group's usable pixels"
