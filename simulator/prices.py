"""Every price a simulated run needs, computed once before it runs, and each device's agenda.

:class:`Prices` turns a :class:`~simulator.workload.Workload` and a cost model into seconds: each batch's
compute (tick overhead + forward) and sampler steps, each gang's per-layer exchange, each past send and
latent message on the wire, each block's decode and each prompt's encoding. It also lays out, per device,
the ticks at which the device has something to do (:class:`AgendaItem`), which is all the engine walks.

Where decoding runs is a :class:`DecodePlan` (:func:`decode_plan` parses the user's choice).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from cascade_sched.errors import ConfigError
from simulator.cluster import Cluster
from simulator.cost import ENCODE_SOURCE, CostModel, RooflineCost, encode_seconds, slice_seconds
from simulator.workload import Workload

PLACEMENTS = ("inline", "stream", "gpu")


class DecodePlan(NamedTuple):
    """Where blocks are decoded (and prompts encoded): ``placement`` ``inline`` (between the ticks of
    denoising device ``device``), ``stream`` (a second stream of ``device``) or ``gpu`` (a GPU of its own,
    ``device`` == the number of denoising devices)."""

    placement: str
    device: int

    @property
    def extra_gpus(self) -> int:
        """GPUs the decoder occupies beyond the denoising devices."""
        return 1 if self.placement == "gpu" else 0

    def describe(self) -> str:
        where = {"inline": f"inline on d{self.device}", "stream": f"second stream of d{self.device}",
                 "gpu": f"its own GPU (d{self.device})"}
        return where[self.placement]


def decode_plan(decode: str | int, device: int, num_devices: int) -> DecodePlan:
    """Parse ``decode`` (``inline``, ``stream``, ``gpu``; ``own`` = ``gpu``; a device index ``N`` or ``dN`` =
    ``inline`` on that device) with ``device`` the denoising device it uses.

    >>> decode_plan("gpu", 0, 5), decode_plan("d2", 0, 5)
    (DecodePlan(placement='gpu', device=5), DecodePlan(placement='inline', device=2))
    """
    if isinstance(decode, str):
        text = decode.strip().lower()
        if text == "own":
            text = "gpu"
        if text.removeprefix("d").isdigit():
            decode = int(text.removeprefix("d"))
        elif text in PLACEMENTS:
            if text == "gpu":
                return DecodePlan("gpu", num_devices)
            decode = text
        else:
            raise ConfigError("decode", f"`decode` must be one of {', '.join(PLACEMENTS)} or a device index, "
                                        f"got {decode!r}")
    placement = "inline"
    if isinstance(decode, str):
        placement = decode
    else:
        device = decode
    if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < num_devices:
        raise ConfigError("decode", f"`decode` device must be between 0 and {num_devices - 1}, got {device!r}")
    return DecodePlan(placement, device)


class AgendaItem(NamedTuple):
    """What one device does at one tick, in this order: encode prompts (``texts``), run its batch
    (``batch``, or -1), pass the tick, meet its latent messages, hand clean latents to a decoder that is
    not this device's main loop (``ready``), decode blocks inline (``decodes``)."""

    tick: int
    batch: int
    texts: tuple[int, ...]
    latents: tuple[int, ...]
    ready: tuple[int, ...]
    decodes: tuple[int, ...]


class Prices:
    """The seconds of everything in a workload, and each device's agenda (see the module docstring).

    Under placement ``layers`` a batch is one device's layer range (``Batch.part``), priced by
    :func:`~simulator.cost.slice_seconds`; a ring hop (``Workload.hops``) costs the link's latency plus its
    bytes at the achieved bandwidth: with ``overlap`` (a second stream, as StreamDiffusionV2 sends) it runs
    beside the sender's next batch and the receiver waits for its arrival; without, the sender sends it
    before anything else (``hop_out``). With ``video_input`` the first device of a block's ring encodes its
    input frames before the forward that holds the block's first stage (``encode``).
    """

    def __init__(self, w: Workload, cluster: Cluster, cost: CostModel, plan: DecodePlan, overlap: bool,
                 frames: int, first_frames: int, video_input: bool = False) -> None:
        self.overlap = overlap
        geometry = w.geometry
        self.layers = layers = geometry.num_layers
        self.layer_overlap = (layers - 1) / layers  # a reader's compute that can hide a streamed version
        n_dev = w.num_devices
        q = geometry.tokens_per_block
        slow = [cluster.slowdown(d) for d in range(n_dev)] + [1.0]
        shared = cluster.contention if cluster.host_cores is None else 1.0
        tick_s = cost.tick_s()
        self.notes: list[str] = []

        # 1. Batches: the tick overhead and one forward per distinct shape (and layer range), the sampler per
        #    task count, the encoding of the blocks a ring's first device takes in (video input).
        fwd: dict[tuple[tuple[int, ...], Any], float] = {}
        smp: dict[int, float] = {}
        nb = len(w.batches)
        self.compute = [0.0] * nb
        self.sample = [0.0] * nb
        self.tick_part = [0.0] * nb
        self.encode = [0.0] * nb
        self.batch_overlap = [self.layer_overlap] * nb  # per batch: the share of its compute a stream can hide
        by_share = False
        for i, b in enumerate(w.batches):
            part = b.part
            f = fwd.get((b.contexts, part))  # as the batch lists them; a new shape is priced in sorted order
            if f is None:
                key = b.contexts if len(b.contexts) == 1 else tuple(sorted(b.contexts))
                f, share = slice_seconds(cost, q, key, part, layers) if key else (0.0, False)
                fwd[(b.contexts, part)] = f
                by_share = by_share or share
            s = smp.get(b.n_denoise)
            if s is None:
                s = smp[b.n_denoise] = cost.sample_s(b.n_denoise) if b.n_denoise else 0.0
            factor = slow[b.device]
            if shared > 1.0 and len(w.tick_batches[b.tick]) > 1:
                factor *= shared
            if factor == 1.0:
                self.compute[i], self.tick_part[i], self.sample[i] = tick_s + f, tick_s, s
            else:
                self.compute[i], self.tick_part[i], self.sample[i] = (tick_s + f) * factor, tick_s * factor, s * factor
            if part is not None:
                n = part.end - part.first
                self.batch_overlap[i] = (n - 1) / n
                if video_input and part.entry:
                    self.encode[i] = sum(encode_seconds(cost, j) for j, v in b.refs if v == 0) * factor
            elif video_input:
                self.encode[i] = sum(encode_seconds(cost, j) for j, v in b.refs if v == 0) * factor
        self.batches = w.batches
        if by_share:
            self.notes.append(f"{cost.name} prices a whole forward: a device's layer range costs the whole forward "
                              "times its share of the layers (est)")
        if video_input:
            how = ENCODE_SOURCE if isinstance(cost, RooflineCost) else f"priced by the {cost.name} cost model"
            self.notes.append(f"video input: each block's frames are encoded on its ring's first device before its "
                              f"first stage ({how})")

        # 2. Gangs: the per-layer exchange of their layer range, the gang's length and what compute does not hide.
        self.joint = w.schedule.spec.attention != "stale"
        self.gang_comm: dict[int, float] = {}
        self.gang_len: dict[int, float] = {}
        self.exposed: dict[int, float] = {}
        self.gang_layers: dict[int, int] = {}
        size = w.layer_kv_bytes
        per_layer: dict[tuple[tuple[tuple[int, int], int], ...], float] = {}  # many ticks share one pattern
        for gk, g in w.gangs.items():
            pattern = tuple(sorted(g.sends.items()))
            one = per_layer.get(pattern)
            n = g.layers or layers
            if one is None:
                one = per_layer[pattern] = self._layer_exchange(cluster, g.sends, size)
            c = one * n
            compute = max(self.compute[w.batch_at[(g.tick, d)]] for d in g.devices)
            length = max(compute, c) + c / n if overlap else compute + c
            self.gang_comm[gk] = c
            self.gang_len[gk] = length
            self.exposed[gk] = length - compute
            self.gang_layers[gk] = n

        # 3. Messages after a tick: past sends grouped by sender and tick (they share its port), latents.
        #    Per pair of devices, (latency, per-pair and per-port seconds per byte) once.
        msg = size // 2
        pairs: dict[tuple[int, int], tuple[float, float, float]] = {}

        def pair(src: int, dst: int, nbytes: int) -> tuple[float, float, float]:
            got = pairs.get((src, dst))
            if got is None:
                link = cluster.link(src, dst)
                deg = max(cluster.degradation(src) if src < n_dev else 1.0,
                          cluster.degradation(dst) if dst < n_dev else 1.0)
                if link.bandwidth_Bps == math.inf:
                    got = (0.0, 0.0, 0.0)
                else:
                    got = (link.latency_s, deg / link.achieved_Bps(nbytes), deg / link.port_rate)
                pairs[(src, dst)] = got
            return got

        group: dict[tuple[int, int], float] = {}
        sizes = [w.past_nbytes(ps) for ps in w.past]
        for ps, tick, nbytes in zip(w.past, w.past_tick, sizes, strict=True):
            key = (ps.src, tick)
            group[key] = group.get(key, 0.0) + nbytes
        self.past_s = []
        for ps, tick, nbytes in zip(w.past, w.past_tick, sizes, strict=True):
            lat, per_pair, per_port = pair(ps.src, ps.dst, msg)
            self.past_s.append(lat + max(nbytes * per_pair, group[(ps.src, tick)] * per_port))
        # Ring hops: one message per forward member; serialised on the sender's stream unless overlapped.
        hidden = w.sizes.hidden if w.sizes is not None else 0
        self.hop_s: list[float] = []
        self.hop_out = [0.0] * nb
        for h in w.hops:
            lat, per_pair, _ = pair(h.src, h.dst, hidden)
            wire = lat + h.members * hidden * per_pair
            self.hop_s.append(wire)
            if not overlap:
                self.hop_out[h.batch] += wire
        latent_pairs: dict[tuple[int, int], float] = {}
        self.latent_s = []
        for m in w.latents:
            t = latent_pairs.get((m.src, m.dst))
            if t is None:
                link = cluster.link(m.src, m.dst)
                deg = max(cluster.degradation(m.src) if m.src < n_dev else 1.0,
                          cluster.degradation(m.dst) if m.dst < n_dev else 1.0)
                t = latent_pairs[(m.src, m.dst)] = link.latency_s + link.wire_s(w.latent_bytes) * deg
            self.latent_s.append(t)

        # 4. Decoding and prompts.
        dec_slow = slow[plan.device] if plan.device < n_dev else 1.0
        blocks = w.schedule.num_blocks
        self.decode = [cost.decode_s(b, first_frames if b == 0 else frames) * dec_slow for b in range(blocks)]
        self.text = cost.text_s() * dec_slow if w.texts else 0.0
        cfg = geometry.config
        emb = cfg.text_len * cfg.text_dim * 2
        self.text_move_s = []
        for job in w.texts:
            if job.device == plan.device:
                self.text_move_s.append(0.0)
                continue
            link = cluster.link(plan.device, job.device)
            self.text_move_s.append(link.latency_s + link.wire_s(emb))
        self.agenda = self._agenda(w, plan)
        self.agenda_ticks = [[item.tick for item in a] for a in self.agenda]

    def _layer_exchange(self, cluster: Cluster, sends: dict[tuple[int, int], int], size: int) -> float:
        """Seconds of one layer's exchange: one message group, the slowest of every device's per-peer and
        per-port transfer in and out, plus the link's latency."""
        out_port: dict[int, float] = {}
        in_port: dict[int, float] = {}
        slowest = 0.0
        latency = 0.0
        for (src, dst), n in sends.items():
            link = cluster.link(src, dst)
            if link.bandwidth_Bps == math.inf:
                continue
            deg = max(cluster.degradation(src), cluster.degradation(dst))
            latency = max(latency, link.latency_s)
            slowest = max(slowest, n * size / (link.achieved_Bps(size) / deg))
            port = n * size / (link.port_rate / deg)
            out_port[src] = out_port.get(src, 0.0) + port
            in_port[dst] = in_port.get(dst, 0.0) + port
        busiest = max([slowest, *out_port.values(), *in_port.values()])
        return latency + busiest if busiest > 0 or latency > 0 else 0.0

    @staticmethod
    def _agenda(w: Workload, plan: DecodePlan) -> list[list[AgendaItem]]:
        n_dev = w.num_devices
        sched = w.schedule
        # per device: tick -> [batch, texts, latents, ready, decodes]; a list is made on its first entry
        items: list[dict[int, list[Any]]] = [{} for _ in range(n_dev)]

        def add(d: int, tick: int, slot: int, value: int) -> None:
            """Add ``value`` to slot ``slot`` of ``d``'s item at ``tick`` (slot 0: only make the item)."""
            entry = items[d].get(tick)
            if entry is None:
                entry = items[d][tick] = [-1, None, None, None, None]
            if slot:
                if entry[slot] is None:
                    entry[slot] = [value]
                else:
                    entry[slot].append(value)

        for d, batches in enumerate(w.device_batches[:n_dev]):
            mine = items[d]
            for bi in batches:
                mine[w.batches[bi].tick] = [bi, None, None, None, None]
        for mi, m in enumerate(w.latents):
            for d in (m.src, m.dst):
                if d < n_dev:
                    add(d, m.tick, 2, mi)
        for job, t in enumerate(w.texts):
            if t.tick > 0:
                add(t.device, t.tick - 1, 0, -1)
            if plan.placement != "gpu":
                add(plan.device, t.tick, 1, job)
        k = sched.spec.num_denoise
        for blk in range(sched.num_blocks):
            tick = sched.decode_ready_tick(blk)
            if plan.placement == "inline":
                add(plan.device, tick, 4, blk)
            elif plan.placement == "stream":
                add(plan.device, tick, 3, blk)
            else:  # the latent reaches the decoder's GPU when its sender's message is done
                segs = sched.segments(sched.task(blk, k - 1))
                add(segs[-1][0] if segs else sched.task(blk, k - 1).device, tick, 3, blk)
        out = []
        none: tuple[int, ...] = ()
        new = tuple.__new__  # an AgendaItem without NamedTuple's Python-level __new__
        for d in range(n_dev):
            mine = items[d]
            out.append([new(AgendaItem, (tick, e[0], tuple(e[1]) if e[1] else none, tuple(e[2]) if e[2] else none,
                                         tuple(e[3]) if e[3] else none, tuple(e[4]) if e[4] else none))
                        for tick, e in sorted(mine.items())])
        return out

    BATCH_PARTS = ("tick", "forward", "cache", "exchange", "sample", "hop", "encode")

    def split(self, bi: int, forward: float, extra: float, sample: float, hop: float = 0.0,
              encode: float = 0.0) -> tuple[float, ...]:
        """One batch's time by part (``BATCH_PARTS``): tick overhead, denoise forwards and cache passes (by
        their share of the members), the exchange (and waiting for peers) the forward did not hide, the
        sampler, the ring hop sent on the compute stream, the encoding of input video."""
        b = self.batches[bi]
        tick = min(self.tick_part[bi], forward)
        rest = forward - tick
        n = len(b.contexts) or 1
        return (tick, rest * (n - b.n_cache) / n, rest * b.n_cache / n, extra, sample, hop, encode)
