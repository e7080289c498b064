"""Every Python snippet in README.md and docs/ runs as written.

The snippets of one page run in order in one namespace, as a reader would run them.
"""

import re
from pathlib import Path

import pytest


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
