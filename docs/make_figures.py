"""Draw the figures of the docs (run by `nox -s docs`; PNGs in docs/figures).

The padding figures are computed with eqxconv itself: the padding each string
resolves to, and the values each `padding_mode` puts in the border. Each benchmark
figure is read from `docs/benchmarks.md`, the one copy of the numbers: the ratios
(time / the table's reference) of the forward+backward table in the section that
shows the figure, as the `benchmarks/` scripts printed them.
"""

import re
from pathlib import Path

import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import eqxconv  # noqa: E402
from eqxconv._args import normalise_padding, PaddingMode  # noqa: E402
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
    modes: list[PaddingMode] = ["ZEROS", "REFLECT", "REPLICATE", "CIRCULAR"]
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


# Ratios far above the reference would squash every other bar on a linear axis:
# where some ratio exceeds this bound by more than a quarter, bars stop at the bound,
# hatched, with their value written beside them.
RATIO_CAP = 3.0


def _tables(section: str) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, reference, columns, rows of cells) for every `**title**` table of a
    section, `reference` being what its ratios divide by ("time / equinox")."""
    tables = []
    pattern = r"\*\*(.+?)\*\*[^\n]*?\(ratio: ([^)]*)\)[^\n]*\n\n((?:\|.*\n?)+)"
    for title, reference, body in re.findall(pattern, section):
        lines = [line.strip().strip("|").split("|") for line in body.splitlines()]
        columns = [c.strip() for c in lines[0][1:]]
        rows = [[cell.strip() for cell in cells] for cells in lines[2:]]
        tables.append((title, reference, columns, rows))
    return tables


def _ratio(cell: str) -> float | None:
    """The ratio a table cell prints, `39.82 ms (1.00x)` -> 1.0; None if empty."""
    number = re.search(r"\(([\d.]+)x\)", cell)
    return float(number.group(1)) if number else None


def _ratio_bars(path: Path, title: str, reference: str, columns, rows) -> None:
    """Grouped horizontal bars of the ratios of one table, on a linear axis from 0."""
    # "lax best" repeats the fastest raw-lax column, which already has its own bar.
    keep = [i for i, column in enumerate(columns) if column != "lax best"]
    ratios = [[_ratio(row[1 + i]) for i in keep] for row in rows]
    largest = max(r for row in ratios for r in row if r is not None)
    cap = largest if largest <= 1.25 * RATIO_CAP else RATIO_CAP
    limit = cap * 1.3  # room for the numbers right of the longest bars
    height = 0.8 / len(keep)
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.22 * len(keep) * len(rows)))
    for j in range(len(keep)):
        for r, row in enumerate(ratios):
            ratio = row[j]
            if ratio is None:  # not measured (an empty cell)
                continue
            y = r + j * height
            clipped = ratio > cap
            ax.barh(
                y,
                min(ratio, cap),
                height=height,
                color=f"C{j}",
                hatch="//" if clipped else None,
                edgecolor="white" if clipped else None,
            )
            end = cap if clipped else ratio
            text = f"{ratio:.2f}x" + (" (bar cut)" if clipped else "")
            ax.text(
                end + limit * 0.01,
                y,
                text,
                va="center",
                fontsize=8,
                # Keeps the line at 1.0 from striking through the number.
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3},
            )
    ax.axvline(1.0, color="black", lw=1, zorder=0.5)
    ax.set_xlim(0, limit)
    ax.set_yticks([r + 0.4 - height / 2 for r in range(len(rows))])
    ax.set_yticklabels([row[0] for row in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"{title}: {reference} (line at 1.0; shorter is faster)", fontsize=10)
    # Legend entries follow the bars' top-to-bottom order within each group; drawn
    # apart from the bars, so that a column empty in some rows still has its entry.
    handles = [Rectangle((0, 0), 1, 1, color=f"C{j}") for j in range(len(keep))]
    ax.legend(
        handles,
        [columns[i] for i in keep],
        fontsize=9,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def benchmark_bars() -> None:
    """The figure each section of docs/benchmarks.md shows, from that section's first
    forward+backward table, so that the page's numbers are the figure's."""
    page = (Path(__file__).parent / "benchmarks.md").read_text()
    for section in re.split(r"\n## ", page)[1:]:
        figure = re.search(r"\]\(figures/(bench_\w+\.png)\)", section)
        if figure is None:
            continue
        for title, reference, columns, rows in _tables(section):
            compact = title.replace(" ", "")
            if "forward+backward" in compact or "fwd+bwd" in compact:
                if "compile" not in title and "memory" not in title:
                    _ratio_bars(
                        FIGURES / figure.group(1), title, reference, columns, rows
                    )
                    break
        else:
            raise ValueError(f"no forward+backward table for {figure.group(1)}")


if __name__ == "__main__":
    FIGURES.mkdir(exist_ok=True)
    padding_strings()
    padding_modes()
    benchmark_bars()
    print(f"figures written to {FIGURES}")
