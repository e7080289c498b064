"""Developer sessions: `nox -s tests`, `lint`, `examples` and `docs`."""

from pathlib import Path

import nox


nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests", "examples", "docs"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, on two workers."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check and pyright over the whole repository."""
    session.install("-e", ".[test,lint,examples]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("pyright")


@nox.session
def examples(session: nox.Session) -> None:
    """Every example script, each asserting its own result."""
    session.install("-e", ".[examples]")
    for script in sorted(Path("examples").glob("*.py")):
        session.run("python", str(script))


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with `mkdocs build --strict`."""
    session.install("-e", ".[docs]")
    session.run("python", "docs/make_figures.py")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
