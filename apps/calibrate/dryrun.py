"""Full-size dry runs on the CPU: the engine's own tick loop on the real 1.3B and 14B geometry, with no GPU,
no weights and no memory, so a shape or memory error at full size shows before any GPU is at hand.

The model is built on PyTorch's ``meta`` device (every parameter has its shape and dtype, no storage) and the
engine runs it unchanged: the reference executor's tick loop, or each rank's tick loop of a multi-rank
placement, one thread per rank in this process, joined by :class:`ThreadTransport` (the engine's
:class:`~executors.transport.Transport`, moving the messages of the plan as meta tensors: the receiver
allocates the buffer the real transport would, of the shape it expects, and a message whose shape differs
is an error). Two things differ from a GPU run, both stated here and nowhere hidden:

- attention runs as the GPU's fused kernels run it (``aten._scaled_dot_product_flash_attention``: the
  output and its log-sum-exp, no score matrix); the meta device would otherwise take PyTorch's math path,
  which materialises the scores and which no GPU run takes;
- a copy off the meta device (a clean latent handed to the host) gives an uninitialised host tensor of the
  same shape and dtype: there is no data to copy.

What the engine allocates is counted by :class:`LiveBytes` (every new storage an operation returns, until
it is freed), split by :class:`MeasuringKernels` (the engine's :class:`~models.dit.TickKernels` seam, the
model's own kernels wrapped) into the K/V (the pool's versions, the K/V each forward computes, the peers'
K/V received) and the rest of each forward's working set (activations). :func:`compare` sets these against
the simulator's memory model (:func:`simulator.memory.memory_report`) for the same schedule, at the tick
the simulator finds each device's peak.

``python -m apps.calibrate.dryrun`` prints the tables docs/validation.md carries.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from cascade_sched.errors import ExecutorError
from cascade_sched.schedule import KVRef, Schedule, build_schedule
from cascade_sched.spec import CascadeSpec
from cascade_sched.trace import TraceEvent
from cascade_sched.transfers import HiddenSend, KVSend, LatentSend
from executors.base import RunOptions, TickLoop
from executors.transport import LocalTransport, Mail, Transport, hidden_message
from models.config import ModelSlice, get_config
from models.dit import CausalWanDiT, EagerKernels, KVPair
from models.dtypes import torch_dtype
from models.prompts import StandInEncoder
from models.sampler import latent_dtype

__all__ = [
    "DryRun",
    "LiveBytes",
    "MeasuringKernels",
    "RankMemory",
    "ThreadTransport",
    "compare",
    "dry_run",
    "format_table",
    "forward_bytes",
    "main",
    "meta_model",
]

_aten = torch.ops.aten
KV, OTHER = "kv", "other"


class _FusedAttention(TorchFunctionMode):
    """SDPA on meta tensors as the GPU's fused kernel allocates (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args[0].device.type == "meta" and not kwargs \
                and len(args) == 3:
            return _aten._scaled_dot_product_flash_attention(*args)[0]
        return func(*args, **kwargs)


class LiveBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch: TorchDispatchMode is not annotated
    """Bytes of the meta storages that operations create, while they live, by tag (``kv`` or ``other``).

    A storage is counted when an operation first returns it and none of the operation's inputs holds it
    (a view or an in-place result is not new memory), and uncounted when it is freed. ``on_alloc`` runs
    after every new storage (:class:`MeasuringKernels` follows its peaks there).
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # torch: TorchDispatchMode is not annotated
        self.live = {KV: 0, OTHER: 0}
        self.peak = 0  # of both tags together
        self._tags: dict[int, tuple[str, int]] = {}
        self.on_alloc: Callable[[], None] | None = None

    def _add(self, storage: Any) -> None:
        key = id(storage)
        if key in self._tags:
            return
        n = int(storage.nbytes())
        self._tags[key] = (OTHER, n)
        self.live[OTHER] += n
        self.peak = max(self.peak, self.live[KV] + self.live[OTHER])
        weakref.finalize(storage, self._free, key)
        if self.on_alloc is not None:
            self.on_alloc()

    def _free(self, key: int) -> None:
        tag, n = self._tags.pop(key)
        self.live[tag] -= n

    def tag(self, tensors: Sequence[Tensor], tag: str) -> None:
        """Count the storages of ``tensors`` under ``tag`` from now on (those this mode never saw: no change)."""
        for t in tensors:
            key = id(t.untyped_storage())
            old = self._tags.get(key)
            if old is not None and old[0] != tag:
                self.live[old[0]] -= old[1]
                self.live[tag] += old[1]
                self._tags[key] = (tag, old[1])

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is _aten._to_copy.default and args[0].device.type == "meta" \
                and torch.device(kwargs.get("device") or "meta").type != "meta":
            src = args[0]  # off the meta device: nothing to copy (module docstring)
            return torch.empty(src.shape, dtype=kwargs.get("dtype") or src.dtype, device=kwargs["device"])
        out = func(*args, **kwargs)
        if _allocates(func):
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, Tensor) and t.device.type == "meta":
                    self._add(t.untyped_storage())
        return out


@functools.cache
def _allocates(func: Any) -> bool:
    """Whether an operation's results are new storage: none of them is a view of an input or an input
    written in place (the schema's alias annotations)."""
    return all(r.alias_info is None for r in func._schema.returns)


@dataclass
class ForwardMemory:
    """What one forward of a rank held: ``kv`` the K/V bytes at their peak during it (the pool's versions,
    the K/V it computed, the peers' K/V received), ``activations`` the peak of everything else it
    allocated, beyond what was held before it began."""

    tick: int
    tasks: int
    kv: int = 0
    activations: int = 0


class MeasuringKernels(EagerKernels):
    """The model's own kernels (:class:`~models.dit.EagerKernels`), each forward's memory recorded: at its
    start the pool's versions are tagged K/V; each layer's keys and values are tagged K/V as ``pre`` makes
    them; every allocation updates the forward's peaks (:class:`ForwardMemory`). A forward starts at the
    embedding, or, on a layer ring's later stages, at the first layer the slice holds (the received hidden
    state and the tick's context are counted with what was live before it)."""

    def __init__(self, model: CausalWanDiT, live: LiveBytes, pool_tensors: Callable[[], list[Tensor]],
                 ticks: Sequence[tuple[int, int]]) -> None:
        super().__init__(model)
        self.live, self.pool_tensors = live, pool_tensors
        self._ticks = list(ticks)  # (tick, local tasks) of every forward of this rank, in order
        self.forwards: list[ForwardMemory] = []
        self._base = 0
        live.on_alloc = self._peak

    def _peak(self) -> None:
        if self.forwards:
            f = self.forwards[-1]
            f.kv = max(f.kv, self.live.live[KV])
            f.activations = max(f.activations, self.live.live[OTHER] - self._base)

    def _begin(self) -> None:
        tick, tasks = self._ticks[len(self.forwards)]
        self.live.tag(self.pool_tensors(), KV)
        self._base = self.live.live[OTHER]
        self.forwards.append(ForwardMemory(tick, tasks, kv=self.live.live[KV]))

    def embed(self, latents: Sequence[Tensor], temb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self._begin()  # the entry's forward starts with its embedding
        return super().embed(latents, temb)

    def pre(self, layer: int, x: Tensor, e0: Tensor, rope: Any) -> tuple[Tensor, Tensor, Tensor]:
        part = self.model.part
        if layer == part.first and not part.entry:  # a later ring stage's forward starts at its first layer
            self._begin()
        q, k, v = super().pre(layer, x, e0, rope)
        self.live.tag([k, v], KV)
        self._peak()
        return q, k, v


class _Hub:
    """The messages between the rank threads: put by the sender, taken by the receiver (which waits)."""

    def __init__(self, timeout_s: float) -> None:
        self._box: dict[tuple[Any, ...], tuple[tuple[int, ...], torch.dtype]] = {}
        self._cv = threading.Condition()
        self.timeout_s = timeout_s
        self.failed: BaseException | None = None

    def put(self, key: tuple[Any, ...], t: Tensor) -> None:
        with self._cv:
            self._box[key] = (tuple(t.shape), t.dtype)
            self._cv.notify_all()

    def take(self, key: tuple[Any, ...]) -> tuple[tuple[int, ...], torch.dtype]:
        with self._cv:
            if not self._cv.wait_for(lambda: key in self._box or self.failed is not None, self.timeout_s):
                raise ExecutorError(f"dry run: message {key} never came within {self.timeout_s:.0f} s")
            if key not in self._box:
                raise ExecutorError(f"dry run: a peer failed before sending {key}")
            return self._box.pop(key)

    def fail(self, e: BaseException) -> None:
        with self._cv:
            self.failed = e
            self._cv.notify_all()


class ThreadTransport:
    """The engine's :class:`~executors.transport.Transport` for one rank of a run whose ranks are threads of
    this process: the plan's messages, in its order, each as its tensor's shape and dtype. The receiver
    allocates the buffer the distributed transport allocates (keys and values of one block and layer, one
    block's latent), and a message of another shape is an :class:`ExecutorError`."""

    def __init__(self, rank: int, hub: _Hub, model: CausalWanDiT, live: LiveBytes) -> None:
        cfg = model.config
        self.rank, self.hub, self.live = rank, hub, live
        self.device, self.dtype = model.device, model.dtype
        self.kv_shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
        self.latent_shape, self.latent_dtype = cfg.latent_shape(), latent_dtype(model.dtype)
        self.hidden_shape, self.hidden_dtype = hidden_message(cfg, model.dtype)  # one forward member
        self.layers = cfg.num_layers

    def _receive(self, key: tuple[Any, ...], shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        got = self.hub.take(key)
        if got != (tuple(shape), dtype):
            raise ExecutorError(f"rank {self.rank}: message {key} is {got[0]} {got[1]}, expected {tuple(shape)} {dtype}")
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _kv(self, key: tuple[Any, ...]) -> KVPair:
        k = self._receive((*key, "k"), self.kv_shape, self.dtype)
        v = self._receive((*key, "v"), self.kv_shape, self.dtype)
        self.live.tag([k, v], KV)
        return k, v

    def exchange(self, tick: int, layer: int, sends: Sequence[KVSend],
                 local: Mapping[KVRef, KVPair]) -> dict[KVRef, KVPair]:
        received: dict[KVRef, KVPair] = {}
        sends = [m for m in sends if layer in m.layers(self.layers)]
        for m in sends:
            if m.src == self.rank:
                k, v = local[m.ref]
                self.hub.put(("gang", tick, layer, m.ref, m.dst, "k"), k)
                self.hub.put(("gang", tick, layer, m.ref, m.dst, "v"), v)
        for m in sends:
            if m.dst == self.rank and m.ref not in received:
                received[m.ref] = self._kv(("gang", tick, layer, m.ref, m.dst))
        return received

    def post(self, tick: int, kv: Sequence[KVSend], latents: Sequence[LatentSend], hops: Sequence[HiddenSend],
             outbox: Mail) -> Mail:
        inbox = Mail()
        for m in kv:
            if m.src == self.rank:
                for layer, (k, v) in zip(m.layers(self.layers), outbox.kv[m.ref], strict=True):
                    self.hub.put(("past", tick, layer, m.ref, m.dst, "k"), k)
                    self.hub.put(("past", tick, layer, m.ref, m.dst, "v"), v)
        for ls in latents:
            if ls.src == self.rank:
                self.hub.put(("latent", tick, ls.block, ls.purpose, ls.dst), outbox.latents[(ls.block, ls.purpose)])
        for h in hops:
            if h.src == self.rank:
                for i, piece in enumerate(outbox.hidden[(h.block, h.stage)]):
                    self.hub.put(("hidden", tick, h.block, h.stage, h.dst, i), piece)
        for m in kv:
            if m.dst == self.rank:
                inbox.kv[m.ref] = [self._kv(("past", tick, layer, m.ref, m.dst)) for layer in m.layers(self.layers)]
        for ls in latents:
            if ls.dst == self.rank:
                inbox.latents[(ls.block, ls.purpose)] = self._receive(("latent", tick, ls.block, ls.purpose, ls.dst),
                                                                      self.latent_shape, self.latent_dtype)
        for h in hops:
            if h.dst == self.rank:
                inbox.hidden[(h.block, h.stage)] = [
                    self._receive(("hidden", tick, h.block, h.stage, h.dst, i), self.hidden_shape, self.hidden_dtype)
                    for i in range(h.members)]
        return inbox

    def wait_kv(self, ref: KVRef, layer: int) -> None:
        return None  # every message is taken in post

    def check_adopt(self, tick: int, sent: Sequence[Sequence[KVSend]], needed: Sequence[Sequence[KVSend]]) -> None:
        raise ExecutorError("a dry run runs one fixed schedule")

    def finish(self) -> None:
        return None

    def events(self, t0: float) -> list[TraceEvent]:
        return []


def meta_model(name: str, dtype: str = "bfloat16", resolution: tuple[int, int] | None = None,
               part: ModelSlice | None = None) -> CausalWanDiT:
    """The preset ``name`` (or its slice ``part``) on the meta device in ``dtype``: every parameter's shape,
    no storage."""
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch_dtype(dtype))
        with torch.device("meta"):
            return CausalWanDiT(get_config(name, resolution=resolution), seed=None, part=part).eval()
    finally:
        torch.set_default_dtype(before)


@dataclass
class RankMemory:
    """One rank's dry run: its weights and every forward's memory. ``rank`` names the schedule device it
    ran (under placement ``layers`` the distributed executor's rank differs: :func:`~executors.distributed.device_rank`)."""

    rank: int
    weights: int
    forwards: list[ForwardMemory] = field(default_factory=list)
    latents: int = 0  # clean latents this rank returned (the decode rank: every block)

    def at(self, tick: int) -> ForwardMemory | None:
        return next((f for f in self.forwards if f.tick == tick), None)


@dataclass
class DryRun:
    """A schedule run on the meta device: per rank, what the engine allocated; and the wall time."""

    model: str
    dtype: str
    schedule: Schedule
    ranks: list[RankMemory]
    wall_s: float


def _rank(schedule: Schedule, model: CausalWanDiT, rank: int, devices: Sequence[int], transport: Transport,
          live: LiveBytes) -> RankMemory:
    """One rank's tick loop on the meta device, its memory measured."""
    local = set(devices)
    count: collections.Counter[int] = collections.Counter()  # tick -> local forward members (a ring's segments)
    for gang in schedule.gangs:
        for task in gang:
            for r, (device, _, _) in enumerate(schedule.segments(task)):
                if device in local:
                    count[task.tick + r] += 1
    ticks = sorted(count.items())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    options = RunOptions(text_encoder=StandInEncoder(model.config))
    holder: dict[str, TickLoop] = {}

    def pool_tensors() -> list[Tensor]:
        pool = holder["loop"].pool
        return [t for ref in pool.refs() for pair in pool.layers(ref) for t in pair]

    kernels = MeasuringKernels(model, live, pool_tensors, ticks)
    with _FusedAttention(), live:
        loop = holder["loop"] = TickLoop(schedule, model, options, devices, transport, rank=rank, kernels=kernels)
        result = loop.run()
    return RankMemory(rank, weights, kernels.forwards, latents=len(result.latents))


def dry_run(model: str, spec: CascadeSpec, dtype: str = "bfloat16", timeout_s: float = 600.0) -> DryRun:
    """Run ``spec`` with ``model`` on the meta device (module docstring): the reference executor's tick loop
    for one device, else one tick loop per device on its own thread, each holding what the distributed
    executor's rank for that device holds (the whole model, or under placement ``layers`` its ring stage's
    slice: :func:`~executors.distributed.rank_slice`). Results are per schedule device. Raises the first
    rank's failure."""
    from executors.distributed import device_rank, rank_slice

    schedule = build_schedule(spec)
    config = get_config(model)
    parts = [rank_slice(spec, config, device_rank(spec, d)) for d in range(schedule.num_devices)]
    t0 = time.perf_counter()
    n = schedule.num_devices
    if n == 1:
        ranks = [_rank(schedule, meta_model(model, dtype, part=parts[0]), 0, [0], LocalTransport(), LiveBytes())]
        return DryRun(model, dtype, schedule, ranks, time.perf_counter() - t0)
    hub = _Hub(timeout_s)
    out: dict[int, RankMemory] = {}
    errors: dict[int, BaseException] = {}
    models = [meta_model(model, dtype, part=parts[d]) for d in range(n)]  # the default dtype it sets is global

    def run(rank: int) -> None:
        try:
            m = models[rank]
            live = LiveBytes()
            out[rank] = _rank(schedule, m, rank, [rank], ThreadTransport(rank, hub, m, live), live)
        except BaseException as e:  # reported on the caller's thread
            errors[rank] = e
            hub.fail(e)

    threads = [threading.Thread(target=run, args=(r,), name=f"dry-rank{r}", daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        first = min(errors, key=lambda r: (isinstance(errors[r], ExecutorError) and "peer failed" in str(errors[r]), r))
        raise errors[first]
    return DryRun(model, dtype, schedule, [out[r] for r in range(n)], time.perf_counter() - t0)


def forward_bytes(model: str, dtype: str, batch: int, context_blocks: int) -> int:
    """Peak bytes a device holds for one tick forward of ``model`` as the kit measures it
    (:func:`apps.calibrate.profiling.synthetic_tick`: ``batch`` tasks over ``context_blocks`` blocks), dry-run
    on the meta device: the weights, the context's K/V, the prompt's cross-attention K/V and the forward's
    peak. The GPU kit's pre-flight (does it fit?) and its prediction of the measured peak."""
    from apps.calibrate.profiling import register_prompt, synthetic_tick

    m = meta_model(model, dtype)
    register_prompt(m)
    weights = sum(p.numel() * p.element_size() for p in m.parameters())
    live = LiveBytes()
    with _FusedAttention(), live, torch.inference_mode():
        tasks, lookup = synthetic_tick(m, batch, context_blocks)
        m.forward_tick(tasks, lookup)
    return weights + live.peak


# --- against the simulator's memory model -------------------------------------------------------------------
PARTS = ("weights", "kv", "activations")
TOLERANCE = 0.10  # the agreement issue 26 asks of the engine and the memory model


@dataclass(frozen=True)
class Comparison:
    """One rank at the simulator's peak tick for its device: each part as the engine allocated it and as the
    simulator prices it (bytes)."""

    rank: int
    tick: int
    tasks: int
    engine: dict[str, int]
    simulator: dict[str, int]

    def error(self, part: str) -> float:
        """(engine - simulator) / simulator."""
        sim = self.simulator[part]
        return (self.engine[part] - sim) / sim if sim else float("inf") if self.engine[part] else 0.0


def compare(run: DryRun) -> list[Comparison]:
    """Every rank of ``run`` against :func:`simulator.memory.memory_report` of the same schedule and model
    (weights; K/V = committed + in flight, the exchange buffers included; activations), at the tick the
    simulator finds that device's peak."""
    from simulator.catalog import get_model
    from simulator.cluster import Cluster
    from simulator.memory import memory_report
    from simulator.workload import build_workload

    size = torch.tensor([], dtype=torch_dtype(run.dtype)).element_size()
    report = memory_report(build_workload(run.schedule, get_model(run.model), dtype_bytes=size),
                           Cluster.of("h100-sxm", run.schedule.num_devices), dtype_bytes=size)
    out = []
    for r in run.ranks:
        d = report.devices[r.rank]
        f = r.at(d.peak_tick)
        if f is None:
            raise ExecutorError(f"rank {r.rank} ran no forward at tick {d.peak_tick}, the simulator's peak")
        p = d.parts
        out.append(Comparison(r.rank, d.peak_tick, f.tasks,
                              {"weights": r.weights, "kv": f.kv, "activations": f.activations},
                              {"weights": p["weights"], "kv": p["committed_kv"] + p["inflight_kv"],
                               "activations": p["activations"]}))
    return out


def format_table(run: DryRun, rows: Sequence[Comparison]) -> str:
    """The markdown table: per rank and part, engine and simulator GB and the error."""
    spec = run.schedule.spec
    lag = "sequential" if spec.lag is None else f"lag {spec.lag}"
    head = (f"{run.model} at {'x'.join(map(str, get_config(run.model).resolution))}, {run.dtype}, {lag}, window "
            f"{spec.window}, {spec.num_blocks} blocks, {spec.num_devices} device(s) by {spec.placement}: "
            f"{run.schedule.num_ticks} ticks in {run.wall_s:.1f} s")
    lines = [head, "", "| device | tick | tasks | part | engine GB | simulator GB | error % |",
             "|---:|---:|---:|---|---:|---:|---:|"]
    for c in rows:
        for part in PARTS:
            lines.append(f"| {c.rank} | {c.tick} | {c.tasks} | {part} | {c.engine[part] / 1e9:.3f} | "
                         f"{c.simulator[part] / 1e9:.3f} | {100 * c.error(part):+.1f} |")
    return "\n".join(lines)


CASES: tuple[tuple[str, CascadeSpec], ...] = (
    ("wan2.1-1.3b", CascadeSpec(num_blocks=8, window=7)),
    ("wan2.1-1.3b", CascadeSpec(num_blocks=8, window=7, lag=1, num_devices=5)),
    ("wan2.1-14b", CascadeSpec(num_blocks=8, window=7)),
    ("wan2.1-14b", CascadeSpec(num_blocks=8, window=7, lag=1, num_devices=5)),
    ("wan2.1-1.3b", CascadeSpec(num_blocks=8, window=7, lag=1)),
    ("wan2.1-1.3b", CascadeSpec(num_blocks=8, window=7, lag=1, num_devices=4, placement="layers", stage_stride=4,
                                num_layers=30)),
)
"""The dry runs the test suite and docs/validation.md carry: each model's sequential schedule on one device
(the reference executor) and lag 1 on 5 devices by block (five ranks), lag 1 on one device (five tasks
per forward: the GPU kit's step 1), and a layer ring of 4 (each rank its slice, hidden states handed round
the ring). Eight blocks fill the window of 7."""


def main() -> int:
    """Print every case's table (``python -m apps.calibrate.dryrun``)."""
    for model, spec in CASES:
        run = dry_run(model, spec)
        print(format_table(run, compare(run)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
