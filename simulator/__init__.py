"""The SimPy simulator of Block Cascading: predict FPS, first frame, stalls, memory and traffic of a
``Schedule`` on a cluster before buying GPUs, and plan the GPU count.

>>> from cascade_sched import CascadeSpec, build_schedule
>>> from simulator import Cluster, UniformCost, simulate
>>> r = simulate(build_schedule(CascadeSpec(num_blocks=3)), Cluster.of("h100-sxm", 1), UniformCost(0.1), "tiny")
>>> round(r.makespan_s, 6)  # one device: the sum of all task times
1.5

The simulator costs the core's ``TransferPlan`` and re-derives nothing from the schedule; every cost
names its source. See docs/simulator.md.
"""

from __future__ import annotations

from simulator.catalog import (
    GPU,
    GPUS,
    LINKS,
    MODELS,
    Baseline,
    Decoder,
    Link,
    ModelGeometry,
    TextEncoder,
    get_gpu,
    get_link,
    get_model,
)
from simulator.cluster import Cluster, MemoryMargin
from simulator.cost import CostModel, Overhead, RooflineCost, UniformCost, fit_baseline, make_cost
from simulator.engine import simulate
from simulator.memory import MemoryReport, memory_report
from simulator.prices import DecodePlan, decode_plan
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
    "DecodePlan",
    "Decoder",
    "ForwardPoint",
    "Link",
    "MemoryMargin",
    "MemoryReport",
    "ModelGeometry",
    "Overhead",
    "Profile",
    "ProfileCost",
    "RooflineCost",
    "SimResult",
    "TextEncoder",
    "UniformCost",
    "Workload",
    "build_workload",
    "decode_plan",
    "fit_baseline",
    "get_gpu",
    "get_link",
    "get_model",
    "make_cost",
    "memory_report",
    "simulate",
]
