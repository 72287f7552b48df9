"""Pictures of a schedule: a tick x device text grid and the same as a PNG (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cascade_sched.outputs import save_figure

if TYPE_CHECKING:
    from cascade_sched.schedule import Schedule


def _occupancy(schedule: Schedule) -> dict[tuple[int, int], list[str]]:
    """(tick, device) -> the tasks it runs then: a task entering a ring at tick n runs on its r-th
    segment's device at tick n + r (one cell, at its own tick and device, outside placement ``layers``)."""
    cells: dict[tuple[int, int], list[str]] = {}
    if schedule.spec.ring_size == 1 and not schedule.custom_segments:
        for t in schedule.tasks:
            cells.setdefault((t.tick, t.device), []).append(t.name)
        return cells
    for t in schedule.tasks:
        for r, (d, _, _) in enumerate(schedule.segments(t) or ((t.device, 0, None),)):
            cells.setdefault((t.tick + r, d), []).append(t.name)
    return cells


def _cells(schedule: Schedule) -> dict[tuple[int, int], str]:
    return {k: "+".join(v) for k, v in _occupancy(schedule).items()}


def device_labels(schedule: Schedule, n_dev: int) -> list[str]:
    """``d3``, or under placement ``layers`` ``d3 [23,30)``: the device and the layers it runs."""
    if schedule.spec.ring_size == 1:
        return [f"d{d}" for d in range(n_dev)]
    ranges = schedule.spec.layer_ranges
    held = {d: ranges[d % len(ranges)] for d in range(n_dev)}  # the ring's split; an edit may move a device
    for t in schedule.tasks:
        for d, first, end in schedule.segments(t):
            held[d] = (first, end)
    return [f"d{d} [{held[d][0]},{held[d][1]})" for d in range(n_dev)]


def render_grid(
    schedule: Schedule,
    mark: tuple[int, int] | None = None,
    ticks: range | None = None,
) -> str:
    """The tick x device grid, one row per tick, cells like ``B3S1`` (``+`` joins a device's batch).

    Under placement ``layers`` a cell holds the tasks the device runs at that tick (a task entering a ring
    at tick n is on its r-th device at n + r) and each column names its device's layer range.

    ``mark=(tick, device)`` brackets that cell and ends its row with ``<-- ERROR HERE``; ``ticks``
    limits the rows shown (long schedules are cut around the mark).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> print(render_grid(build_schedule(CascadeSpec(num_blocks=2, timesteps=(1000,), lag=1, num_devices=2))))
    tick | d0   | d1
    -----+------+-----
       0 | B0S0 | .
       1 | B0S1 | B1S0
       2 | .    | B1S1
    >>> print(render_grid(build_schedule(CascadeSpec(num_blocks=2, timesteps=(1000,), lag=1, num_devices=2,
    ...                                               placement="layers", stage_stride=2, num_layers=4))))
    tick | d0 [0,2) | d1 [2,4)
    -----+----------+---------
       0 | B0S0     | .
       1 | B1S0     | B0S0
       2 | B0S1     | B1S0
       3 | B1S1     | B0S1
       4 | .        | B1S1
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
    labels = device_labels(schedule, n_dev)
    width = [
        max([4, len(labels[d]) + 2, *(len(cells.get((n, d), ".")) + (4 if mark == (n, d) else 2) for n in ticks)])
        for d in range(n_dev)
    ]
    tw = max(4, len(str(ticks.stop - 1)))  # the tick column, as wide as its largest number
    header = "tick".rjust(tw) + " | " + " | ".join(labels[d].ljust(width[d] - 2) for d in range(n_dev))
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
    """Draw the tick x device grid as a PNG: one coloured cell per task (colour = block, shade = stage).
    Under placement ``layers`` every device a task passes through gets a cell at its tick, the rows name
    the devices' layer ranges and a thin line follows each task through its ring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n_dev, n_ticks = schedule.num_devices, schedule.num_ticks
    n_stages = schedule.num_stages
    ring = schedule.spec.ring_size > 1
    fig, ax = plt.subplots(figsize=(min(max(8.0, 2 + 0.45 * n_ticks), 40), 1.5 + (0.75 if ring else 0.6) * n_dev))
    cmap = plt.get_cmap("tab10")
    occupancy = _occupancy(schedule)
    seen: dict[tuple[int, int], int] = {}
    for t in schedule.tasks:
        segs = schedule.segments(t) or ((t.device, 0, None),)
        centres = []
        for r, (d, _, _) in enumerate(segs):
            cell = (t.tick + r, d)
            count = len(occupancy[cell])
            k = seen.get(cell, 0)
            seen[cell] = k + 1
            h = 0.8 / count
            y = d - 0.4 + k * h
            alpha = 0.35 + 0.65 * (max(t.stage, 0) + 1) / n_stages
            ax.add_patch(Rectangle((t.tick + r, y), 0.95, h * 0.95, color=cmap(t.block % 10), alpha=alpha))
            centres.append((t.tick + r + 0.47, y + h * 0.47))
            if n_ticks <= 60:
                ax.text(t.tick + r + 0.47, y + h * 0.47, t.name, ha="center", va="center",
                        fontsize=7 if count == 1 else 6)
        if ring and len(centres) > 1 and n_ticks <= 120:
            xs, ys = zip(*centres, strict=True)
            ax.plot(xs, ys, color=cmap(t.block % 10), linewidth=0.8, alpha=0.6, zorder=0)
    ax.set_xlim(0, n_ticks)
    ax.set_ylim(n_dev - 0.5, -0.5)
    ax.set_yticks(range(n_dev), device_labels(schedule, n_dev))
    ax.set_xlabel("tick (one forward pass of every task in it)")
    ax.set_ylabel("device")
    spec = schedule.spec
    where = f"{n_dev} device(s), placement={spec.placement}"
    if ring:
        where = f"{spec.rings} ring(s) x {spec.ring_size} devices, placement=layers, stride {spec.stage_stride}"
    ax.set_title(
        title
        or f"cascade schedule: {spec.num_blocks} blocks, S={n_stages}, lag="
        f"{spec.lag if spec.lag is not None else spec.tick_span}, {spec.attention}, window "
        f"{spec.window or 'unbounded'}, {where}",
        fontsize=9,
    )
    # The legend: what a cell's colour and shade mean, in a row below the axes (over no cell).
    legend = [Rectangle((0, 0), 1, 1, color=cmap(b % 10), alpha=0.8, label=f"block {b}")
              for b in range(min(spec.num_blocks, 3))]
    legend += [Rectangle((0, 0), 1, 1, color="0.3", alpha=0.35 + 0.65 / n_stages, label="first stage (light)"),
               Rectangle((0, 0), 1, 1, color="0.3", alpha=1.0, label="last stage (dark); cell BbSs = block b, "
                         "stage s")]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
    save_figure(fig, path, dpi=120)
    plt.close(fig)
