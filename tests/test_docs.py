"""Every Python snippet in README.md and docs/ runs as written.

The snippets of one page run in order in one namespace, as a reader would run them.
"""

import pydoc
import re
from pathlib import Path

import pytest

import eqxconv
from eqxconv._help import plain


ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _snippets(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if _snippets(p)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_page_snippets_run(page):
    namespace = {}
    for code in _snippets(page):
        exec(compile(code, str(page), "exec"), namespace)


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _table(text: str) -> list[str]:
    """The lines of the first table in `text`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(
        (i for i in range(start, len(lines)) if not lines[i].startswith("|")), None
    )
    return lines[start:end]


def test_home_page_repeats_readme():
    """README is the source of truth for the set-up commands and the feature table;
    the docs home page repeats them word for word."""
    readme = (ROOT / "README.md").read_text()
    home = (ROOT / "docs" / "index.md").read_text()
    commands = re.findall(r"```bash\n.*?```", _section(readme, "Set-up"), re.S)
    assert len(commands) == 2  # the main example's and the test suite's
    for command in commands:
        assert command in _section(home, "Set-up")
    assert _table(_section(home, "Features")) == _table(_section(readme, "Features"))


def test_every_example_is_listed():
    """README and the docs' Examples page name every script in examples/."""
    readme = _section((ROOT / "README.md").read_text(), "Documentation and examples")
    page = (ROOT / "docs" / "examples.md").read_text()
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert f"`{script.name}`" in readme, script.name
        assert f"`{script.name}`" in page, script.name


def test_cross_references_read_as_their_text():
    doc = "as for [`eqxconv.conv`][], [the op][eqxconv.conv], [a page](padding.md)"
    assert plain(doc) == "as for `eqxconv.conv`, the op, [a page](padding.md)"


@pytest.mark.parametrize("name", [n for n in dir(eqxconv) if not n.startswith("_")])
def test_help_shows_no_cross_reference_syntax(name):
    """The docstrings' mkdocstrings cross-references become plain text in help()."""
    text = pydoc.plain(pydoc.render_doc(getattr(eqxconv, name)))
    assert "][" not in text
