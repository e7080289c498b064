"""Draw the figures of the docs (run by `nox -s docs`; PNGs in docs/figures).

The padding figures are computed with eqxconv itself: the padding each string
resolves to, and the values each `padding_mode` puts in the border. The benchmark
figures plot the forward+backward tables that the `benchmarks/` scripts printed and
that `docs/benchmarks.md` holds.
"""

import re
from pathlib import Path

import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import eqxconv  # noqa: E402
from eqxconv._args import normalise_padding  # noqa: E402
from eqxconv._geometry import resolve_padding  # noqa: E402
from eqxconv._padding import pad  # noqa: E402


FIGURES = Path(__file__).parent / "figures"
INPUT, KERNEL, STRIDE = 8, 3, 2


def _cell(ax, x, y, text, colour):
    ax.add_patch(Rectangle((x, y), 0.9, 0.9, facecolor=colour, edgecolor="black"))
    ax.text(x + 0.45, y + 0.45, text, ha="center", va="center", fontsize=9)


def padding_strings() -> None:
    """Which inputs each output reads, for each padding string (1D, k=3, stride 2)."""
    strings = ["VALID", "SAME", "SAME_LOWER", "CAUSAL"]
    fig, axes = plt.subplots(len(strings), 1, figsize=(8, 2.2 * len(strings)))
    for ax, string in zip(axes, strings, strict=True):
        padding, _ = normalise_padding(string, "ZEROS", 1)
        ((low, high),) = resolve_padding(padding, (INPUT,), (KERNEL,), (STRIDE,), (1,))
        (out,) = eqxconv.conv_output_shape(
            (INPUT,), KERNEL, stride=STRIDE, padding=string
        )
        for i in range(low + INPUT + high):
            inside = low <= i < low + INPUT
            label = f"x{i - low}" if inside else "0"
            _cell(ax, i, 1.5, label, "white" if inside else "#ddd")
        for o in range(out):
            start = o * STRIDE
            ax.add_patch(
                Rectangle(
                    (start - 0.05, 1.45),
                    KERNEL,
                    1.0,
                    fill=False,
                    lw=2,
                    edgecolor=f"C{o}",
                )
            )
            _cell(ax, start + (KERNEL - 1) / 2, 0, f"y{o}", "#cde")
        ax.set_title(
            f"padding={string!r}: pads ({low}, {high}), {INPUT} in -> {out} out "
            f"(kernel {KERNEL}, stride {STRIDE})",
            fontsize=10,
        )
        ax.set_xlim(-0.5, low + INPUT + high + 0.5)
        ax.set_ylim(-0.3, 2.7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(FIGURES / "padding_strings.png", dpi=90)
    plt.close(fig)


def padding_modes() -> None:
    """The border each padding_mode writes around 1 2 3 4 5, padded by 3 each side."""
    modes = ["ZEROS", "REFLECT", "REPLICATE", "CIRCULAR"]
    x = jnp.arange(1.0, 6.0)[None]
    fig, axes = plt.subplots(len(modes), 1, figsize=(8, 1.2 * len(modes)))
    for ax, mode in zip(axes, modes, strict=True):
        padded = pad(x, ((3, 3),), mode)[0]
        for i, value in enumerate(padded.tolist()):
            inside = 3 <= i < 8
            _cell(ax, i, 0, f"{value:g}", "white" if inside else "#fdb")
        ax.set_title(f"padding_mode={mode!r}", fontsize=10)
        ax.set_xlim(-0.2, 11.2)
        ax.set_ylim(-0.2, 1.1)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(FIGURES / "padding_modes.png", dpi=90)
    plt.close(fig)


def _tables(markdown: str) -> dict[str, tuple[list[str], list[list[float | None]]]]:
    """`**title**` -> (columns, rows of milliseconds) for every table in a page."""
    tables = {}
    for title, body in re.findall(r"\*\*(.+?)\*\*.*?\n\n((?:\|.*\n)+)", markdown):
        lines = [line.strip().strip("|").split("|") for line in body.splitlines()]
        columns = [c.strip() for c in lines[0][1:]]
        rows = []
        for cells in lines[2:]:
            values = []
            for cell in cells[1:]:
                number = re.match(r"\s*([\d.]+) (?:ms|MiB)", cell)
                values.append(float(number.group(1)) if number else None)
            rows.append([cells[0].strip(), *values])
        tables.setdefault(title, (columns, rows))
    return tables


def benchmark_bars() -> None:
    """One log-scale bar chart per forward+backward table of docs/benchmarks.md."""
    page = (Path(__file__).parent / "benchmarks.md").read_text()
    sections = re.split(r"\n## ", page)[1:]
    for section in sections:
        family = section.split(" ", 1)[0].lower()
        for title, (columns, rows) in _tables(section).items():
            compact = title.replace(" ", "")
            is_backward = "forward+backward" in compact or "fwd+bwd" in compact
            if not is_backward or "compile" in title or "memory" in title:
                continue
            keep = [i for i, c in enumerate(columns) if c not in ("lax best",)]
            fig, ax = plt.subplots(figsize=(10, 1.2 + 0.18 * len(keep) * len(rows)))
            height = 0.8 / len(keep)
            for j, i in enumerate(keep):
                ys = [r + j * height for r in range(len(rows))]
                values = [row[1 + i] or 0.0 for row in rows]
                ax.barh(ys, values, height=height, label=columns[i], color=f"C{j}")
            ax.set_yticks([r + 0.4 - height / 2 for r in range(len(rows))])
            ax.set_yticklabels([str(row[0]) for row in rows], fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("forward+backward, ms (log scale; shorter is faster)")
            ax.invert_yaxis()
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            fig.tight_layout()
            fig.savefig(FIGURES / f"bench_{family}.png", dpi=80)
            plt.close(fig)
            break


if __name__ == "__main__":
    FIGURES.mkdir(exist_ok=True)
    padding_strings()
    padding_modes()
    benchmark_bars()
    print(f"figures written to {FIGURES}")
