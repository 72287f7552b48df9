"""The SimPy simulator of Block Cascading: predict FPS, first frame, jitter, memory and traffic of a
``Schedule`` on a cluster before buying GPUs, and plan the GPU count.

>>> from cascade_sched import CascadeSpec, build_schedule
>>> from simulator import Cluster, UniformCost, simulate
>>> r = simulate(build_schedule(CascadeSpec(num_blocks=3)), Cluster.of("h100-sxm", 1), UniformCost(0.1), "tiny")
>>> round(r.makespan_s, 6)  # one device: the sum of all task times
1.5

The simulator consumes a schedule and never re-derives its tasks or reads; see docs/simulator.md.
"""

from __future__ import annotations

from simulator.catalog import (
    GPU,
    GPUS,
    LINKS,
    MODELS,
    Baseline,
    Cluster,
    Link,
    ModelGeometry,
    get_gpu,
    get_link,
    get_model,
)
from simulator.cost import CostModel, Efficiency, RooflineCost, UniformCost, fit_baseline, make_cost
from simulator.engine import simulate
from simulator.memory import MemoryReport, memory_report
from simulator.profile import FORMAT as PROFILE_FORMAT
from simulator.profile import ForwardPoint, Profile, ProfileCost
from simulator.result import SimResult
from simulator.workload import Workload, build_workload

__all__ = [
    "GPU",
    "GPUS",
    "LINKS",
    "MODELS",
    "PROFILE_FORMAT",
    "Baseline",
    "Cluster",
    "CostModel",
    "Efficiency",
    "ForwardPoint",
    "Link",
    "MemoryReport",
    "ModelGeometry",
    "Profile",
    "ProfileCost",
    "RooflineCost",
    "SimResult",
    "UniformCost",
    "Workload",
    "build_workload",
    "fit_baseline",
    "get_gpu",
    "get_link",
    "get_model",
    "make_cost",
    "memory_report",
    "simulate",
]
