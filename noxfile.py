"""Developer sessions: `nox -s tests`, `lint`, `examples` and `docs`.

The one list of what is checked: README's test command runs the `tests` session and
`.ci/run` then runs the others. What each session installs comes from
`pyproject.toml` (extras and PEP 735 dependency groups).

`nox` gives each session a virtualenv of its own under `.nox/`. `nox --no-venv`
instead installs into, and runs in, the virtualenv that nox itself runs from (the
README's `.venv`): CI does so, to install jax and torch once rather than per session.
"""

import sys
from pathlib import Path

import nox


nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests", "examples", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install(session: nox.Session, *, extras: str, groups: tuple[str, ...]) -> str:
    """Install the package with `extras` and the dependency `groups`; returns the
    path of the session's Python interpreter, which runs every command."""
    requirements = [
        "-e",
        f".[{extras}]" if extras else ".",
        *nox.project.dependency_groups(PYPROJECT, *groups),
    ]
    if session.venv_backend != "none":
        session.install(*requirements)
        return str(Path(session.bin) / "python")
    # `nox --no-venv`: nox refuses `session.install` here, as it would modify the
    # global environment, so this installs with pip, and only inside a virtualenv.
    if sys.prefix == sys.base_prefix:
        session.error(
            "`nox --no-venv` installs into the virtualenv nox runs from, but nox runs "
            f"from {sys.prefix}, which is not one: run e.g. `.venv/bin/nox --no-venv`"
        )
    session.run(sys.executable, "-m", "pip", "install", "--quiet", *requirements)
    return sys.executable


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, on two workers (`nox -s tests -- -k conv` for a subset)."""
    python = _install(session, extras="torch", groups=("test",))
    session.run(python, "-m", "pytest", "-n", "2", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check and pyright over the whole repository."""
    python = _install(session, extras="examples,torch", groups=("test", "lint"))
    session.run(python, "-m", "ruff", "check", ".")
    session.run(python, "-m", "ruff", "format", "--check", ".")
    session.run(python, "-m", "pyright", "--pythonpath", python)


@nox.session
def examples(session: nox.Session) -> None:
    """Every example script, each asserting its own result."""
    python = _install(session, extras="examples,torch", groups=())
    for script in sorted(Path("examples").glob("*.py")):
        session.run(python, str(script))


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into `site/` with `mkdocs build --strict`."""
    python = _install(session, extras="", groups=("docs",))
    session.run(python, "docs/make_figures.py")
    session.run(
        python, "-m", "mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"}
    )
