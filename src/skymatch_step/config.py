"""The parameter files shipped with the package, and the ``skymatch-config`` command.

The files of the repository's ``config/`` directory are installed with the
package, so they can be used from any installation::

    skymatch-config                                  # list them
    strun "$(skymatch-config skymatch_step_sparse_local)" my_asn.json
    skymatch-config skymatch_step_sparse_local --copy  # editable copy here

``python -m skymatch_step.config`` runs the same command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["config_names", "config_path", "main"]

_SUFFIX = ".asdf"


def _directory():
    """Directory holding the parameter files: installed, or the source checkout's."""
    here = Path(__file__).resolve().parent
    installed = here / "parameter_files"
    if installed.is_dir():
        return installed
    # Source tree (src layout), e.g. an editable install or PYTHONPATH=src.
    return here.parent.parent / "config"


def config_names():
    """Names of the shipped parameter files, without the ``.asdf`` suffix.

    Returns
    -------
    list of str
        Sorted names, e.g. ``["skymatch_step_default", ...]``.
    """
    directory = _directory()
    if not directory.is_dir():
        return []
    return sorted(p.name[: -len(_SUFFIX)] for p in directory.glob(f"*{_SUFFIX}"))


def config_path(name):
    """Path of a shipped parameter file.

    Parameters
    ----------
    name : str
        File name, with or without the ``.asdf`` suffix.

    Returns
    -------
    pathlib.Path
        Absolute path of the installed file (read it, or give it to
        ``strun``; copy it before editing).

    Raises
    ------
    ValueError
        If no shipped file has that name; the message lists the names.
    """
    stem = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
    names = config_names()
    if stem not in names:
        raise ValueError(
            f"No parameter file named {name!r}; available: {', '.join(names) or '(none found)'}"
        )
    return _directory() / f"{stem}{_SUFFIX}"


def _describe(path):
    """First line of the comment block that opens the file's YAML."""
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="skymatch-config",
        description=(
            "Without NAME, list the parameter files shipped with skymatch_step. With NAME, "
            "print the path of that file (for strun), or copy it with --copy."
        ),
    )
    p.add_argument("name", nargs="?", help="parameter file name (with or without .asdf)")
    p.add_argument(
        "--copy",
        nargs="?",
        const=".",
        default=None,
        metavar="DIR",
        help="copy the file into DIR (default: the current directory) and print the copy's path",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing copy")
    return p.parse_args(argv)


def main(argv=None):
    """Run the ``skymatch-config`` command.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0 on success, 2 for an unknown name or a copy that
        would overwrite a file).
    """
    args = _parse(argv)
    if args.name is None:
        if args.copy is not None:
            print("skymatch-config: --copy needs a NAME", file=sys.stderr)
            return 2
        for name in config_names():
            path = config_path(name)
            print(f"{name:32s} {_describe(path)}\n{'':32s} {path}")
        return 0
    try:
        source = config_path(args.name)
    except ValueError as err:
        print(f"skymatch-config: {err}", file=sys.stderr)
        return 2
    if args.copy is None:
        print(source)
        return 0
    directory = Path(args.copy)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / source.name
    if target.exists() and not args.force:
        print(f"skymatch-config: {target} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    # Copy under a temporary name, then rename: no half-written file.
    fd, tmp = tempfile.mkstemp(prefix=f".{source.name}.", dir=directory)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(target.resolve())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
