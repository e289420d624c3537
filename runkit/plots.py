"""Figures drawn by the run itself (matplotlib, Agg backend): the accuracy-vs-angle curve that the rotation
robustness callback writes after the test pass, also used by the multi-run figure and the leaderboard."""

from __future__ import annotations

LINE_STYLES = ("-", "--", ":", "-.")


def curve_style(index: int) -> dict:
    """Colour and line style of the ``index``-th curve: past the 10 default colours, curves differ by line
    style too, so a figure of many families still tells them apart (the same family, the same look in both)."""
    return {"color": f"C{index % 10}", "ls": LINE_STYLES[index // 10 % len(LINE_STYLES)]}


def plot_rotation_robustness(curves: dict, path, title: str = "Accuracy under rotation") -> None:
    """Plot accuracy vs angle for one or several runs (``{label: result_dict}``) into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(curves) > 3  # a legend inside would cover the lower curves: put it below the axes
    fig, ax = plt.subplots(figsize=(6, 3.5 + (0.25 * len(curves) if many else 0)), dpi=120)
    for index, (label, r) in enumerate(curves.items()):
        ax.plot(
            r["angles"], [100 * a for a in r["accuracy"]], marker="o", markersize=3, label=label, **curve_style(index)
        )
    for quarter in (90, 180, 270):
        ax.axvline(quarter, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("rotation angle (degrees)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(0, 360)
    ax.set_xticks(range(0, 361, 45))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, ncol=2, frameon=False)
    else:
        ax.legend(loc="best", fontsize=8)  # the spot that hides the fewest points
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_learning_curves(curves: dict, path, title: str = "Validation accuracy while training", looks=None) -> None:
    """Validation accuracy against epoch (left) and against wall time (right, minutes since the run started,
    validation included), one curve per run or family: ``{label: {"epoch": [...], "val_acc": [...],
    "elapsed_s": [...]}}`` (``elapsed_s`` may hold ``None`` where a run did not log ``time/elapsed_s``).
    ``looks``: the labels of a companion figure, in its order; a curve found there gets the look it has there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    legend_rows = (len(curves) + 2) // 3
    height = 4.6 + 0.2 * legend_rows
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, height), dpi=120, sharey=True)
    looks = list(looks or curves)
    for index, (label, c) in enumerate(curves.items()):
        look = looks.index(label) if label in looks else len(looks) + index
        style = dict(marker="o", markersize=2.5, **curve_style(look))
        accuracy = [100 * a for a in c["val_acc"]]
        by_epoch.plot(c["epoch"], accuracy, label=label, **style)
        timed = [(t / 60, a) for t, a in zip(c["elapsed_s"], accuracy) if t is not None]
        if timed:
            by_time.plot(*zip(*timed), **style)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("validation accuracy (%)")
    by_time.set_xlabel("wall time (minutes, validation included)")
    by_time.set_xscale("log")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, (0.55 + 0.17 * legend_rows) / height, 1, 1))  # room for the legend below
    fig.savefig(path)
    plt.close(fig)
