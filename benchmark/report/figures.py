"""The report's figures, each saved as PNG and SVG (or PNG alone, smaller: report --compact); every function
returns the file stem it wrote."""

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from benchmark.report.stats import MIN_SEEDS, Estimate, layer_order  # noqa: E402


@dataclass(frozen=True)
class FigureFolder:
    """Where the figures go, in which formats and at what resolution: the page shows the PNG and links to the
    last format (the SVG, when there is one). palette: PNGs reduced to 256 colours (a colormap has no more) —
    about a third of the size."""

    path: Path
    formats: tuple[str, ...] = ("png", "svg")
    dpi: int = 110
    palette: bool = False

    @property
    def link(self) -> str:
        return self.formats[-1]


# what results/ publishes: under 5 MB for a sweep of 8 drivers, or of 12 (driver, protocol) pairs
COMPACT = {"formats": ("png",), "dpi": 72, "palette": True}


def _save(fig, out: FigureFolder, stem: str) -> str:
    for fmt in out.formats:
        path = out.path / f"{stem}.{fmt}"
        fig.savefig(path, dpi=out.dpi, bbox_inches="tight")
        if fmt == "png" and out.palette:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
            rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    plt.close(fig)
    return stem


def _stem(kind: str, driver: str, protocol: str | None) -> str:
    """A figure's file stem: one per driver, and per protocol where a report holds several."""
    return f"{kind}_{driver}" + (f"_{protocol}" if protocol else "")


def accuracy_matrix(R: np.ndarray, driver: str, n: int, out: FigureFolder, protocol: str | None = None) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(R * 100, vmin=0, vmax=100, cmap="viridis")
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            ax.text(j, i, f"{R[i, j] * 100:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if R[i, j] < 0.6 else "black")
    ax.set_xticks(range(R.shape[1]))
    ax.set_yticks(range(R.shape[0]))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(f"accuracy matrix R[i, j] (%), driver {driver}{f', protocol {protocol}' if protocol else ''}, "
                 f"mean of {n} seed{'s' if n != 1 else ''}")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, out, _stem("accuracy_matrix", driver, protocol))


def accuracy_curves(curves: dict[str, list[Estimate]], out: FigureFolder) -> str:
    """ACC after each task per driver; the 95% band only where a driver has MIN_SEEDS seeds or more (from two
    seeds a t-interval is wider than the axis)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    tasks = np.arange(max(len(estimates) for estimates in curves.values()))
    for driver, estimates in curves.items():
        x = tasks[:len(estimates)]
        mean = np.array([e.mean for e in estimates]) * 100
        n = estimates[0].n
        banded = n >= MIN_SEEDS
        ax.plot(x, mean, marker="o", markersize=3,
                label=f"{driver} (n={n}{'' if banded else f', no band: n < {MIN_SEEDS}'})")
        if banded:
            ax.fill_between(x, [e.low * 100 for e in estimates], [e.high * 100 for e in estimates], alpha=0.2)
    ax.set_xticks(tasks)
    ax.set_xlabel("after training task")
    ax.set_ylabel("mean test accuracy over tasks seen (%)")
    ax.set_title(f"ACC after each task, mean over seeds with 95% t-interval (n ≥ {MIN_SEEDS})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "acc_curves")


def _grid(summary: pd.DataFrame, a: str, b: str, method: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = summary[(summary.estimator_a == a) & (summary.estimator_b == b) & (summary.method == method)]
    layers = layer_order(rows.layer)
    tasks = sorted(set(rows.task))
    grid = rows.pivot_table(index="layer", columns="task", values="mean").reindex(index=layers, columns=tasks)
    # half the interval, where there are seeds enough for one worth showing
    rows = rows.assign(h=((rows.ci_high - rows.ci_low) / 2).where(rows.n >= MIN_SEEDS))
    half = rows.pivot_table(index="layer", columns="task", values="h", dropna=False)
    return layers, grid.to_numpy(), half.reindex(index=layers, columns=tasks).to_numpy()


def correlation_surfaces(summary: pd.DataFrame, pairs: list[tuple[str, str]], driver: str, title: str,
                         out: FigureFolder, protocol: str | None = None) -> str:
    """The paper's Fig. 1–7: Pearson correlation as a surface over (layer, task), one panel per pair."""
    columns = 4
    rows = int(np.ceil(len(pairs) / columns))
    fig = plt.figure(figsize=(4.2 * columns, 3.6 * rows))
    for k, (a, b) in enumerate(pairs):
        layers, grid, _ = _grid(summary, a, b, "pearson")
        ax = fig.add_subplot(rows, columns, k + 1, projection="3d")
        X, Y = np.meshgrid(np.arange(grid.shape[1]), np.arange(len(layers)))
        ax.plot_surface(X, Y, grid, cmap="coolwarm", vmin=-1, vmax=1, edgecolor="k", linewidth=0.2)
        ax.set_zlim(-1, 1)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_xlabel("task", fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set_title(f"{a} – {b}", fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out, _stem("correlation_surfaces", driver, protocol))


def correlation_heatmaps(summary: pd.DataFrame, pairs: list[tuple[str, str]], driver: str, title: str,
                         out: FigureFolder, protocol: str | None = None) -> str:
    """Pearson and Spearman side by side per pair, each cell the mean over seeds ± half the 95% interval (where
    there are MIN_SEEDS seeds or more)."""
    # constrained layout keeps the suptitle clear of the first row's titles (tight_layout ignores it)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(13, 1.25 * len(pairs) + 1), squeeze=False, layout="constrained")
    for k, (a, b) in enumerate(pairs):
        for m, method in enumerate(("pearson", "spearman")):
            layers, grid, half = _grid(summary, a, b, method)
            ax = axes[k, m]
            ax.imshow(grid, vmin=-1, vmax=1, cmap="coolwarm", aspect="auto")
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    text = f"{grid[i, j]:.2f}" + ("" if np.isnan(half[i, j]) else f"\n±{half[i, j]:.2f}")
                    ax.text(j, i, text, ha="center", va="center", fontsize=6)
            ax.set_yticks(range(len(layers)), layers, fontsize=7)
            ax.set_xticks(range(grid.shape[1]), range(grid.shape[1]), fontsize=7)
            ax.set_title(f"{a} – {b}, {method}", fontsize=9)
    axes[-1, 0].set_xlabel("task")
    axes[-1, 1].set_xlabel("task")
    fig.suptitle(title, fontsize=11)
    return _save(fig, out, _stem("correlation_heatmaps", driver, protocol))
