"""The pictures analyze_results.py draws, each returned as PNG bytes: the
hyperparameters' scatter matrix, the optimization history, the learning
curves of the top trials, and the stopping rules' trade-off of
--replay-pruning. Figures are drawn by matplotlib's Agg canvas without
pyplot, so importing this module switches no global backend."""

import io

import numpy as np

from hks.core import storage

DPI = 80
PANEL_INCHES = 1.3  # one panel of the scatter matrix


def new_figure(width, height):
    """A matplotlib Figure drawn by Agg. Not registered with pyplot: no global
    backend is switched for whoever imports this module, and there is nothing
    to close (the figure goes with its last reference)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def png(figure):
    """The figure as PNG bytes (analyze_results.py writes them atomically)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def scatter_matrix(data, labels):
    """The lower triangle of a scatter matrix of `data`'s columns (encoded
    hyperparameters, then the fine and coarse accuracies, so the last two
    rows show each accuracy against each hyperparameter; `labels`: the
    category names of encoded columns); histograms on the diagonal; colour =
    fine accuracy. The upper triangle would only mirror it, at twice the
    drawing time."""
    from matplotlib.ticker import MaxNLocator
    fine = data["fine_best_accuracy"]
    n_hparams = len([c for c in data.columns if not c.endswith("_best_accuracy")])
    n = len(data.columns)
    figure = new_figure(PANEL_INCHES * n + 1.2, PANEL_INCHES * n + 1.2)
    grid = figure.add_gridspec(n, n, left=1.0 / figure.get_figwidth(), right=0.98,
                               bottom=1.1 / figure.get_figheight(), top=0.94,
                               wspace=0.08, hspace=0.08)
    limits = {c: axis_limits(data[c], c in labels) for c in data.columns}
    whole = {c: bool((data[c].dropna() % 1 == 0).all()) for c in data.columns}
    points = None
    for i, y_name in enumerate(data.columns):
        for j, x_name in enumerate(data.columns[:i + 1]):
            ax = figure.add_subplot(grid[i, j])
            x, y = data[x_name], data[y_name]
            if i == j:
                draw_histogram(ax, x, limits[x_name])
            else:
                known = x.notna() & y.notna()  # a conditional's NaN: left out
                points = ax.scatter(x[known], y[known], c=fine[known], s=12, cmap="viridis",
                                    vmin=fine.min(), vmax=fine.max(), edgecolors="none")
            ax.set_xlim(limits[x_name])
            ax.set_ylim(limits[y_name])
            for axis, name, outer in ((ax.xaxis, x_name, i == n - 1),
                                      (ax.yaxis, y_name, j == 0)):
                if not outer:
                    axis.set_ticks([])  # ticks on the outer panels only: much faster
                elif name in labels:
                    axis.set_ticks(range(len(labels[name])), labels[name])
                else:
                    axis.set_major_locator(MaxNLocator(3, integer=whole[name]))
            if i == n - 1:
                ax.set_xlabel(x_name, fontsize=7)
                ax.tick_params(axis="x", labelsize=6, length=2, labelrotation=45)
            if j == 0:
                ax.set_ylabel(y_name, fontsize=7)
                ax.tick_params(axis="y", labelsize=6, length=2)
    if points is not None:
        bar = figure.add_axes([0.55, 0.85, 0.4, 0.015])
        figure.colorbar(points, cax=bar, orientation="horizontal", label="fine accuracy")
    figure.suptitle(f"{len(data)} successful trials: the {n_hparams} hyperparameters "
                    "most related to fine accuracy (|Spearman|)")
    return png(figure)


def axis_limits(values, categorical):
    if categorical:
        return -0.5, values.max() + 0.5
    low, high = values.min(), values.max()
    pad = (high - low) * 0.06 or abs(high) * 0.06 or 0.5
    return low - pad, high + pad


def draw_histogram(ax, values, limits):
    """A histogram drawn in the variable's own range, so that the diagonal
    panel's y axis shares its row's scale (as pandas' scatter_matrix does)."""
    values = values.dropna()
    counts, edges = np.histogram(values, bins=min(10, max(1, values.nunique())),
                                 range=limits)
    heights = counts / max(counts.max(), 1) * (limits[1] - limits[0]) * 0.9
    ax.bar(edges[:-1], heights, width=np.diff(edges), bottom=limits[0], align="edge",
           color="0.6", edgecolor="white")


def history(frame, ok, ordered_by_id):
    """Fine accuracy per trial in order, the running best, failed trials."""
    figure = new_figure(10, 4.5)
    ax = figure.subplots()
    fine = frame["fine_best_accuracy"].where(ok)
    full, pruned = ok & ~frame["pruned"], ok & frame["pruned"]
    ax.scatter(frame["trial"][full], fine[full], s=18, label="trial (best epoch)")
    if pruned.any():
        ax.scatter(frame["trial"][pruned], fine[pruned], s=18, facecolors="none",
                   edgecolors="C0", label=f"pruned trial, best before it stopped ({pruned.sum()})")
    ax.step(frame["trial"], fine.cummax().ffill(), where="post", color="C1",
            label="best so far")
    if (~ok).any():
        ax.scatter(frame["trial"][~ok], np.zeros((~ok).sum()), marker="x", color="red",
                   s=40, label=f"failed ({(~ok).sum()})")
    ax.set_xlabel("trial, in the order written" + (
        " (files copied together: by id)" if ordered_by_id else ""))
    ax.set_ylabel("fine accuracy")
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    figure.tight_layout()
    return png(figure)


def learning_curves(trials, frame, ok, top):
    """Validation fine accuracy per epoch of the top trials; pruned trials
    end with a cross where they stopped, and those outside the top are drawn
    in grey behind them."""
    figure = new_figure(10, 6)
    ax = figure.subplots()
    best = frame[ok].sort_values("fine_best_accuracy", ascending=False, kind="stable").head(top)
    others = frame[ok & frame["pruned"] & ~frame.index.isin(best.index)]
    for number, (index, row) in enumerate(others.iterrows()):
        curve = storage.val_fine_curve(trials[index]["result"])
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, color="0.75", linewidth=0.8,
                    label=f"other pruned trials ({len(others)})" if number == 0 else None)
            ax.plot(len(curve), curve[-1], "x", color="0.6", markersize=5)
    for index, row in best.iterrows():
        curve = storage.val_fine_curve(trials[index]["result"])
        if curve:
            label = f"{row['fine_best_accuracy']:.4f} {row['model_name']}"
            lines = ax.plot(range(1, len(curve) + 1), curve, linewidth=1,
                            label=label + (f" (pruned at {len(curve)})" if row["pruned"] else ""))
            if row["pruned"]:
                ax.plot(len(curve), curve[-1], "x", color=lines[0].get_color(), markersize=8)
    if ax.lines:
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no per-epoch history in these results", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation fine accuracy")
    ax.set_title(f"Learning curves of the top {len(best)} trials")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return png(figure)


def replay(points):
    """Speed-up to the best trial against epochs saved: one point per rule
    and setting of `points` ((label or None, pruning_replay.judge figures)),
    the labelled ones named beside them."""
    figure = new_figure(9, 6)
    ax = figure.subplots()
    for number, (label, f) in enumerate(points):
        x, y = f["epochs_saved_fraction"] * 100, f["time_to_best_speedup"]
        kept = f["best_kept_fraction"] >= 0.99 and f["searches_without_best_fraction"] <= 0.01
        ax.plot(x, y, "o" if kept else "x", color="C0" if kept else "C3",
                markersize=7 if label else 5)
        rule = f["rule"]
        text = (label.split(":")[0] if label else ", ".join(f"{v}" for v in rule.values()))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                    color="black" if label else "0.4")
    ax.axhline(1, color="0.6", linestyle="--", linewidth=0.8)
    ax.axhline(3, color="C2", linestyle=":", linewidth=0.8)  # a third of the GPU time
    ax.annotate("3x: the best in a third of the epochs", (0, 3), textcoords="offset points",
                xytext=(2, 3), fontsize=7, color="C2")
    ax.set_xlabel("epochs saved (%)")
    ax.set_ylabel("speed-up to the best trial (x, mean epochs)")
    ax.set_xlim(-5, 110)
    ax.set_title(f"Stopping rules on {points[0][1]['trials']} trials: o kept the best in 99% of "
                 "orders and searches, x did not", fontsize=10)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return png(figure)

