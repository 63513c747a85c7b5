"""The load test's picture: throughput, queue depth and stage latency over the run, one PNG, drawn
from Prometheus range queries of the Grafana dashboard's own expressions (what an operator would
see on those panels, without Grafana)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from loadtests.prom import Prometheus, dashboard_queries, grafana_expr

# (axis title, dashboard panel, its query refs, scale, y unit, label values drawn (None: all))
PANELS = (
    ("Throughput", "Job transitions", ("A",), 60.0, "jobs / min", ("submitted", "succeeded")),
    ("Queue depth", "Queue depth", ("A", "B"), 1.0, "jobs", None),
    ("Stage latency (mean per job)", "Mean time per stage", ("A",), 1.0, "s", None),
    ("Queue wait and end to end p95", "Queue wait and end to end p95", ("A", "B"), 1.0, "s", None),
)


@dataclass(frozen=True)
class Window:
    """One measured phase: its name and wall-clock span (Unix seconds)."""

    name: str
    start: float
    end: float


def _expr(panel: str, ref: str, rate_interval_s: float) -> tuple[str, str]:
    """(PromQL, legend format) of a dashboard panel's query; the timeseries panel when a stat
    shares its title."""
    found = [q for q in dashboard_queries() if (q.panel, q.ref) == (panel, ref)]
    if not found:
        raise KeyError(f"the dashboard has no panel {panel!r} with query {ref}")
    return grafana_expr(found[-1].expr, rate_interval_s), found[-1].legend


def _label(legend: str, metric: dict[str, str]) -> str:
    """Grafana's legend format ({{label}}) filled from a series' labels."""
    out = legend
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def write_png(
    prom: Prometheus,
    windows: list[Window],
    path: Path,
    title: str,
    step_s: float = 1.0,
    rate_interval_s: float = 20.0,
) -> Path:
    """One row per entry of ``PANELS``, one column per phase (seconds since the phase started;
    the y axes shared along a row, so phases compare at a glance), into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(PANELS), len(windows)
    fig, grid = plt.subplots(
        rows, cols, figsize=(3.6 * cols + 2.4, 2.3 * rows), sharey="row", squeeze=False
    )
    palette = plt.get_cmap("tab10")
    colors: list[dict[str, object]] = [{} for _ in PANELS]  # a series keeps its colour per row
    handles: list[dict[str, object]] = [{} for _ in PANELS]
    for col, w in enumerate(windows):
        start, end = w.start - 5 * step_s, w.end + rate_interval_s / 2
        for row, (name, panel, refs, scale, unit, wanted) in enumerate(PANELS):
            ax = grid[row][col]
            for ref in refs:
                expr, legend = _expr(panel, ref, rate_interval_s)
                for series in prom.query_range(expr, start, end, step_s):
                    if wanted is not None and series["metric"].get("state") not in wanted:
                        continue
                    xs = [float(t) - w.start for t, _ in series["values"]]
                    ys = [float(v) * scale for _, v in series["values"]]
                    label = _label(legend, series["metric"])
                    if any(math.isfinite(y) for y in ys):
                        color = colors[row].setdefault(label, palette(len(colors[row]) % 10))
                        ax.plot(xs, ys, label=label, color=color, linewidth=1.1)
                        handles[row].setdefault(label, ax.lines[-1])
            ax.axvspan(0, w.end - w.start, color="0.5", alpha=0.1)
            ax.set_ylim(bottom=0)
            ax.tick_params(labelsize=7)
            if row == 0:
                ax.set_title(f"phase {w.name}", fontsize=10)
            if row == rows - 1:
                ax.set_xlabel("s since the phase started", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{name}\n({unit})", fontsize=8)
    for row, shown in enumerate(handles):  # one legend per row, for every phase's series
        if shown:
            grid[row][-1].legend(
                list(shown.values()),
                list(shown),
                fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                frameon=False,
            )
    fig.suptitle(title + " (shaded: the measured scenario)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
