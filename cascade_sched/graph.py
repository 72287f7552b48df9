"""The schedule as a networkx DAG of tasks, and the graph questions asked of it."""

from __future__ import annotations

from typing import Any

import networkx as nx

from cascade_sched.schedule import KVRef, Schedule, TaskKind


def to_networkx(schedule: Schedule) -> nx.DiGraph[KVRef]:
    """A DiGraph whose nodes are task refs ``(block, stage)``.

    Edges: the latent chain ``(b, s) -> (b, s+1)`` (kind ``latent``), every KV read of a version
    produced at an earlier tick (kind ``kv``, from the task that wrote it: a recache task ``(p, -1)`` for
    re-encoded versions), and a recache task's clean-latent inputs (kind ``latent``). Same-tick reads are joint attention inside a gang, not
    dependencies; each node carries ``tick``, ``device``, ``kind``, ``timestep`` and ``gang`` (= tick).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> g = to_networkx(build_schedule(CascadeSpec(num_blocks=2)))
    >>> g.number_of_nodes(), nx.is_directed_acyclic_graph(g)
    (10, True)
    """
    g: nx.DiGraph[KVRef] = nx.DiGraph()
    for t in schedule.tasks:
        g.add_node(t.ref, tick=t.tick, device=t.device, kind=str(t.kind), timestep=t.timestep, gang=t.tick)
    k = schedule.spec.num_denoise
    for t in schedule.tasks:
        if t.kind == TaskKind.RECACHE:  # it runs on the clean latents of the blocks it re-encodes
            for j, _ in t.replaces:
                g.add_edge((j, k - 1), t.ref, kind="latent")
            continue
        if t.stage > 0:
            g.add_edge((t.block, t.stage - 1), t.ref, kind="latent")
        for ref in t.reads:
            producer = schedule.producer(ref)
            if producer.tick < t.tick:
                g.add_edge(producer.ref, t.ref, kind="kv")
    return g


def critical_path(schedule: Schedule, graph: nx.DiGraph[KVRef] | None = None) -> list[KVRef]:
    """The longest dependency chain in tasks (every task costs one tick).

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> len(critical_path(build_schedule(CascadeSpec(num_blocks=3))))  # sequential: 3 blocks x 5 stages
    15
    """
    g = graph if graph is not None else to_networkx(schedule)
    path: list[Any] = nx.dag_longest_path(g)
    return [(int(p[0]), int(p[1])) for p in path]


def wavefronts(schedule: Schedule, graph: nx.DiGraph[KVRef] | None = None) -> list[list[KVRef]]:
    """Tasks grouped by ``nx.topological_generations``: each generation could run all at once."""
    g = graph if graph is not None else to_networkx(schedule)
    return [sorted(gen) for gen in nx.topological_generations(g)]
