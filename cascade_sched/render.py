"""Pictures of a schedule: a tick x device text grid and the same as a PNG (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cascade_sched.outputs import save_figure

if TYPE_CHECKING:
    from cascade_sched.schedule import Schedule


def _cells(schedule: Schedule) -> dict[tuple[int, int], str]:
    cells: dict[tuple[int, int], list[str]] = {}
    for t in schedule.tasks:
        cells.setdefault((t.tick, t.device), []).append(t.name)
    return {k: "+".join(v) for k, v in cells.items()}


def render_grid(
    schedule: Schedule,
    mark: tuple[int, int] | None = None,
    ticks: range | None = None,
) -> str:
    """The tick x device grid, one row per tick, cells like ``B3S1`` (``+`` joins a device's batch).

    ``mark=(tick, device)`` brackets that cell and ends its row with ``<-- ERROR HERE``; ``ticks``
    limits the rows shown (long schedules are cut around the mark).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> print(render_grid(build_schedule(CascadeSpec(num_blocks=2, timesteps=(1000,), lag=1, num_devices=2))))
    tick | d0   | d1
    -----+------+-----
       0 | B0S0 | .
       1 | B0S1 | B1S0
       2 | .    | B1S1
    """
    cells = _cells(schedule)
    # The mark may name an empty cell (a missing task), even past the last task: draw it too.
    marked = [mark] if mark is not None else []
    n_ticks = max((k[0] for k in [*cells, *marked]), default=-1) + 1
    n_dev = max(schedule.num_devices, max((k[1] + 1 for k in [*cells, *marked]), default=0))
    if ticks is None:
        ticks = range(n_ticks)
        if mark is not None and n_ticks > 40:
            ticks = range(max(0, mark[0] - 6), min(n_ticks, mark[0] + 7))
    width = [
        max([4, len(f"d{d}") + 2, *(len(cells.get((n, d), ".")) + (4 if mark == (n, d) else 2) for n in ticks)])
        for d in range(n_dev)
    ]
    tw = max(4, len(str(ticks.stop - 1)))  # the tick column, as wide as its largest number
    header = "tick".rjust(tw) + " | " + " | ".join(f"d{d}".ljust(width[d] - 2) for d in range(n_dev))
    lines = [header.rstrip(), "-" * (tw + 1) + "+-" + "-+-".join("-" * (w - 2) for w in width)]
    if ticks.start > 0:
        lines.append("  ...")
    for n in ticks:
        row = []
        for d in range(n_dev):
            text = cells.get((n, d), ".")
            if mark == (n, d):
                text = f"[{text}]"
            row.append(text.ljust(width[d] - 2))
        line = f"{n:{tw}d} | " + " | ".join(row)
        if mark is not None and mark[0] == n:
            line += "  <-- ERROR HERE"
        lines.append(line.rstrip())
    if ticks.stop < n_ticks:
        lines.append("  ...")
    return "\n".join(lines)


def draw_grid(schedule: Schedule, path: str, title: str | None = None) -> None:
    """Draw the tick x device grid as a PNG: one coloured cell per task (colour = block, shade = stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n_dev, n_ticks = schedule.num_devices, schedule.num_ticks
    n_stages = schedule.num_stages
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * n_ticks, 40), 1.2 + 0.6 * n_dev))
    cmap = plt.get_cmap("tab10")
    batch: dict[tuple[int, int], int] = {}
    for t in schedule.tasks:
        k = batch.get((t.tick, t.device), 0)
        batch[(t.tick, t.device)] = k + 1
    seen: dict[tuple[int, int], int] = {}
    for t in schedule.tasks:
        count = batch[(t.tick, t.device)]
        k = seen.get((t.tick, t.device), 0)
        seen[(t.tick, t.device)] = k + 1
        h = 0.8 / count
        y = t.device - 0.4 + k * h
        alpha = 0.35 + 0.65 * (t.stage + 1) / n_stages
        ax.add_patch(Rectangle((t.tick, y), 0.95, h * 0.95, color=cmap(t.block % 10), alpha=alpha))
        if n_ticks <= 60:
            ax.text(t.tick + 0.47, y + h * 0.47, f"B{t.block}S{t.stage}", ha="center", va="center", fontsize=7)
    ax.set_xlim(0, n_ticks)
    ax.set_ylim(n_dev - 0.5, -0.5)
    ax.set_yticks(range(n_dev), [f"d{d}" for d in range(n_dev)])
    ax.set_xlabel("tick")
    spec = schedule.spec
    ax.set_title(
        title
        or f"{spec.num_blocks} blocks, S={n_stages}, lag={spec.lag if spec.lag is not None else n_stages}, "
        f"{spec.attention}, {n_dev} device(s), placement={spec.placement}"
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
