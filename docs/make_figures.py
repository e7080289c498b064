"""Draw the padding figures of the docs (run by `nox -s docs`; PNGs in docs/figures).

Every figure is computed with eqxconv itself: the padding each string resolves to,
and the values each `padding_mode` puts in the border.
"""

from pathlib import Path

import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import eqxconv  # noqa: E402
from eqxconv._ops import pad  # noqa: E402
from eqxconv._padding import normalise_padding, resolve_padding  # noqa: E402


FIGURES = Path(__file__).parent / "figures"
INPUT, KERNEL, STRIDE = 8, 3, 2


def _cell(ax, x, y, text, colour):
    ax.add_patch(Rectangle((x, y), 0.9, 0.9, facecolor=colour, edgecolor="black"))
    ax.text(x + 0.45, y + 0.45, text, ha="center", va="center", fontsize=9)


def padding_strings() -> None:
    """Which inputs each output reads, for each padding string (1D, k=3, stride 2)."""
    strings = ["VALID", "SAME", "SAME_LOWER", "CAUSAL"]
    fig, axes = plt.subplots(len(strings), 1, figsize=(8, 2.2 * len(strings)))
    for ax, string in zip(axes, strings):
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
                Rectangle((start - 0.05, 1.45), KERNEL, 1.0, fill=False, lw=2,
                          edgecolor=f"C{o}")
            )  # fmt: skip
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
    for ax, mode in zip(axes, modes):
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


if __name__ == "__main__":
    FIGURES.mkdir(exist_ok=True)
    padding_strings()
    padding_modes()
    print(f"figures written to {FIGURES}")
