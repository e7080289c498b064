"""Docstrings as `help()` shows them.

The docstrings are written for the docs site, where mkdocstrings turns
``[`eqxconv.conv`][]`` into a link; in a terminal the brackets are noise. The site
reads the source files (griffe's static analysis), not the `__doc__` attributes, so
stripping the brackets from the attributes at import leaves the site's links intact.
"""

import inspect
import re
import sys


# `[text][]` and `[text][identifier]`, but not `[text](url)`.
_CROSS_REFERENCE = re.compile(r"\[([^\[\]\n]+)\]\[[^\[\]\s]*\]")


def plain(doc: str) -> str:
    """`doc` with each cross-reference replaced by its text."""
    return _CROSS_REFERENCE.sub(r"\1", doc)


def _strip(obj: object) -> None:
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str) and "][" in doc:
        try:
            obj.__doc__ = plain(doc)
        except (AttributeError, TypeError):  # a read-only __doc__: left as written
            pass


def strip_cross_references(package: str) -> None:
    """Strip the docstrings of the loaded modules of `package`, of the classes and
    functions they define, and of those classes' members."""
    for name, module in list(sys.modules.items()):
        if name != package and not name.startswith(package + "."):
            continue
        _strip(module)
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != name:
                continue  # imported from elsewhere: stripped where it is defined
            _strip(obj)
            if inspect.isclass(obj):
                for member in vars(obj).values():
                    _strip(member)
                    _strip(getattr(member, "fget", None))  # a property's getter
