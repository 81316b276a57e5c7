"""Sphinx configuration for skymatch_step."""

from importlib.metadata import version as _version

project = "skymatch_step"
author = "skymatch_step developers"
copyright = "2026, skymatch_step developers"
release = _version("skymatch-step")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "sphinx.ext.mathjax",
    "sphinx_automodapi.automodapi",
]
automodapi_toctreedirnm = "api"
automodsumm_inherited_members = False
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
autodoc_typehints = "none"
exclude_patterns = ["_build"]
html_theme = "alabaster"

# Nitpicky, so that references to our own API cannot rot. Builds run
# offline (no intersphinx), so names from other packages cannot resolve:
# they are listed here instead of being silently accepted everywhere.
nitpicky = True
nitpick_ignore_regex = [
    ("py:.*", r"(numpy|np|astropy|gwcs|stpipe|stdatamodels|jwst|spherical_geometry|configobj)\..*"),
    ("py:.*", r"(ndarray|SphericalPolygon|ImageModel|ModelLibrary|ModelContainer|DataModel)"),
    (
        "py:.*",
        r"(array-like|callable|optional|object"
        r"|tuple of .*|list of .*|sequence of .*|iterable of .*)",
    ),
    ("py:.*", r"(int|float|str|bool|dict|list|tuple|None|Path|pathlib\.Path|Any|Callable)"),
    ("py:.*", r"(Cap|OverlapRegion|collections\.abc\..*|typing\..*|Sequence)"),
    ("py:obj", r"(True|False|None)"),
    ("py:.*", r"skymatch_step\.(step|pipeline)\.(Step|Image3Pipeline|JwstStep)"),
    # Bases of public classes: the standard library's, and private helpers.
    ("py:class", r"abc\.ABC"),
    ("py:class", r"skymatch_step\._\w+\._\w+"),
]
