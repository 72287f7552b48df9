"""The compiled executor: the same tick loop, with the model's tick forward run by compiled graphs.

Every forward shape the run needs is derived from the schedule before the first tick
(:mod:`executors.buckets`), each piece of the forward is captured once per bucket with ``torch.export``,
and one backend turns the exported programs into kernels:

- ``inductor``: ``torch.compile`` of the exported module (CPU or GPU); with ``engine_cache``,
  AOTInductor packages (``.pt2``) written to and loaded from the cache instead.
- ``tensorrt``: ``torch_tensorrt.dynamo.compile`` of the exported program on CUDA, precision from the
  module's dtype (cast the model to bf16/fp16), engines cached on disk and compiled programs saved and
  reloaded with ``torch_tensorrt.save`` / ``torch_tensorrt.load``.

Pieces per bucket (the model's own per-layer pieces, so the numbers are the eager model's):

    embed     tokens   latents (n, C, F, H, W), timestep sinusoid (n, 256) -> stream x, e, e0
    pre       tokens   x, e0, RoPE cos/sin -> q, k, v            (adaLN, norms, projections, RoPE)
    attend    attn     q (Tq, H, D), k/v (Tk, H, D) -> (Tq, dim)  (SDPA, no mask, never is_causal)
    post      tokens   x, y, e0, per-input prompt k/v -> x       (out proj, cross-attention, FFN)
    head      tokens   x, e -> velocity (n, C, F, H, W)

Weights are graph *inputs*, not constants: one ``pre`` graph serves every layer, so a run compiles
``#token buckets x 4 + #attention buckets`` graphs whatever the depth, and a cached artifact holds no
weights (a new checkpoint never invalidates or poisons the cache). K/V gathering and the per-layer
exchange hook (collectives) stay outside the graphs, between ``pre`` and ``attend``. Each attention
group's SDPA sees exactly its own keys, so no block mask is needed; none relies on ``is_causal``.

A shape outside the compiled set raises :class:`ExecutorError` instead of compiling mid-stream, and the
inductor graphs run under ``error_on_recompile``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade_sched.errors import ConfigError, ExecutorError
from cascade_sched.schedule import KVRef, Schedule
from executors.base import BlockCallback, RunOptions, RunResult
from executors.buckets import ATTENTION, TOKENS, Bucket, forward_buckets
from models.dit import (
    CausalWanDiT,
    Exchange,
    KVLookup,
    KVPair,
    TaskInput,
    TickOutput,
    WanBlock,
    _attend,
    _linear,
    gather_kv,
    sinusoidal_embedding,
)

BACKENDS = ("inductor", "tensorrt")
# `eager` runs the exported pieces uncompiled: the compiled executor's routing and decomposition without a
# compiler, for fast tests (not offered by the CLI).
_ALL_BACKENDS = (*BACKENDS, "eager")
TENSORRT_INSTALL = (
    "pip install torch-tensorrt --extra-index-url https://download.pytorch.org/whl/cu130 "
    "(the torch-tensorrt release that matches your torch minor; it pulls NVIDIA's TensorRT wheels)"
)

# Parameters each piece reads, as name prefixes (of the model for embed/head, of one block for pre/post).
_WEIGHTS = {
    "embed": ("patch_embedding", "time_embedding", "time_projection"),
    "pre": ("modulation", "norm1", "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.norm_q",
            "self_attn.norm_k"),
    "post": ("modulation", "self_attn.o", "norm3", "cross_attn.q", "cross_attn.norm_q", "cross_attn.o", "ffn"),
    "head": ("head",),
    "attend": (),
}
PIECES = {TOKENS: ("embed", "pre", "post", "head"), ATTENTION: ("attend",)}


def load_tensorrt() -> Any:
    """Import torch_tensorrt, or raise one ConfigError line (param ``backend``) saying how to install it.

    Importing it where its TensorRT libraries are missing raises a plain ``Exception``, not ImportError,
    so both are caught; nothing falls back to another backend.
    """
    try:
        import torch_tensorrt
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}"
        raise ConfigError(
            "backend", f"`--backend tensorrt` needs torch-tensorrt with NVIDIA's TensorRT libraries, which do not "
            f"load here ({reason}); install: {TENSORRT_INSTALL}, or use `--backend inductor`"
        ) from None
    return torch_tensorrt


def check_backend(backend: str, device: str | torch.device) -> None:
    """Fail early, with one line, when ``backend`` cannot run on ``device`` here."""
    if backend not in BACKENDS:
        raise ConfigError("backend", f"`--backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "tensorrt":
        load_tensorrt()
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            seen = "" if torch.cuda.is_available() else " (torch sees no CUDA device here)"
            raise ConfigError("device", f"`--backend tensorrt` runs on CUDA: pass `--device cuda`{seen}")


def _check_name(backend: str) -> None:
    if backend not in _ALL_BACKENDS:
        raise ConfigError("backend", f"`--backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")


# --- the pieces: the model's math, as fixed-shape tensor functions --------------------------------------
def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``models.dit._apply_rope`` in real arithmetic (no complex tensors: TensorRT has none)."""
    xr = x.to(cos.dtype).unflatten(-1, (-1, 2))  # (N, H, D/2, 2)
    a, b = xr[..., 0], xr[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)  # (N, H, D)


def _embed(m: CausalWanDiT, latents: Tensor, temb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """latents (n, C, F, H, W), sinusoid (n, freq_dim) -> x (G, P, dim), e (G, dim), e0 (G, 6, dim)."""
    x = m.embed(list(latents.unbind(0)))  # (G, P, dim), activation dtype
    e = m.time_embedding(temb)  # (n, dim)
    e0 = m.time_projection(e).unflatten(1, (6, -1))  # (n, 6, dim)
    frames = latents.shape[2] // m.config.patch_size[0]
    return x, e.to(x.dtype).repeat_interleave(frames, 0), e0.to(x.dtype).repeat_interleave(frames, 0)


def _pre(blk: WanBlock, x: Tensor, e0: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``WanBlock.pre_attention`` (with its modulation) on x (G, P, dim); q, k, v each (N, H, D)."""
    shift, scale = blk.modulate(e0)[:2]
    h = torch.addcmul(shift, blk.norm1(x), 1 + scale).flatten(0, 1)  # (N, dim)
    attn = blk.self_attn
    wdtype = attn.q.weight.dtype
    q = attn.norm_q(_linear(attn.q, h)).unflatten(-1, (blk.num_heads, -1))  # (N, H, D)
    k = attn.norm_k(_linear(attn.k, h)).unflatten(-1, (blk.num_heads, -1))  # (N, H, D)
    v = _linear(attn.v, h).unflatten(-1, (blk.num_heads, -1))  # (N, H, D)
    return _rope(q, cos, sin).to(wdtype), _rope(k, cos, sin).to(wdtype), v.to(wdtype)


def _post(blk: WanBlock, x: Tensor, y: Tensor, e0: Tensor, pk: Tensor, pv: Tensor) -> Tensor:
    """``WanBlock.post_attention`` on x (G, P, dim) and the self-attention output y (N, dim), with each
    input's own prompt: pk, pv (n, L_text, H, D). The cross-attention is one batched SDPA over inputs
    (each query row sees its prompt's keys, as the eager per-prompt SDPA), so any mix of prompts in a
    tick runs the same graph."""
    _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = blk.modulate(e0)
    act, n = x.dtype, pk.shape[0]
    x = torch.addcmul(x, _linear(blk.self_attn.o, y).to(act).view_as(x), gate_msa)
    ca = blk.cross_attn
    c = blk.norm3(x).flatten(0, 1)  # (N, dim)
    q = ca.norm_q(_linear(ca.q, c)).unflatten(-1, (blk.num_heads, -1)).to(ca.q.weight.dtype)  # (N, H, D)
    q = q.unflatten(0, (n, -1)).transpose(1, 2)  # (n, H, T, D)
    out = F.scaled_dot_product_attention(q, pk.transpose(1, 2), pv.transpose(1, 2))  # (n, H, T, D)
    out = out.transpose(1, 2).flatten(2).flatten(0, 1)  # (N, dim)
    x = x + _linear(ca.o, out).to(act).view_as(x)
    h = torch.addcmul(shift_mlp, blk.norm2(x), 1 + scale_mlp)  # (G, P, dim)
    ffn0, ffn2 = cast(nn.Linear, blk.ffn[0]), cast(nn.Linear, blk.ffn[2])
    f = _linear(ffn2, blk.ffn[1](_linear(ffn0, h)))
    return torch.addcmul(x, f.to(act), gate_mlp)


def _head(m: CausalWanDiT, x: Tensor, e: Tensor, *, n: int) -> Tensor:
    """Head and unpatchify: x (G, P, dim), e (G, dim) -> velocity (n, C, F, H, W), activation dtype."""
    frames = x.shape[0] // n
    return torch.stack(m.unpatchify(m.head(x, e), [frames] * n)).to(x.dtype)


def _attention(_: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA of q (Tq, H, D) on k, v (Tk, H, D), no mask: (Tq, H*D), the eager model's ``_attend``."""
    return _attend(q, k, v)


class _Bound(nn.Module):
    """``fn(module, *inputs)`` as a module, so ``functional_call`` can swap ``module``'s weights."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.m = module
        self.fn = fn

    def forward(self, *inputs: Tensor) -> Any:
        return self.fn(self.m, *inputs)


class Piece(nn.Module):
    """One piece with the weights it reads as trailing inputs: ``piece(*activations, *weights)``.

    The template module is not a submodule, so ``torch.export`` lifts no parameter: the exported graph
    is weight-free and serves every layer (pass that layer's :meth:`weights`).
    """

    def __init__(self, name: str, template: nn.Module, fn: Callable[..., Any], n_inputs: int) -> None:
        super().__init__()
        object.__setattr__(self, "_bound", _Bound(template, fn))
        self.name, self.n_inputs = name, n_inputs
        prefixes = _WEIGHTS[name]
        self.weight_names = [k for k, _ in template.named_parameters()
                             if any(k == p or k.startswith(p + ".") for p in prefixes)]

    def weights(self, module: nn.Module) -> tuple[Tensor, ...]:
        """``module``'s tensors for this piece's weight inputs, in order (shared storage, no copy)."""
        params = dict(module.named_parameters())
        return tuple(params[k].detach() for k in self.weight_names)

    def forward(self, *args: Tensor) -> Any:
        acts, ws = args[: self.n_inputs], args[self.n_inputs:]
        params = {"m." + k: w for k, w in zip(self.weight_names, ws, strict=True)}
        bound = cast(nn.Module, self._bound)
        return torch.func.functional_call(bound, params, tuple(acts), strict=False)


# --- compiling and loading ---------------------------------------------------------------------------------
class CompiledModel:
    """A :class:`CausalWanDiT` whose ``forward_tick`` runs compiled graphs, one set per bucket.

    Everything else (config, dtype, device, prompts, blocks) is the wrapped model's, so the shared
    :class:`~executors.base.TickLoop` and the distributed transport take it in place of the model.
    Call :meth:`prepare` with the run's buckets before the first tick.
    """

    def __init__(self, model: CausalWanDiT, backend: str = "inductor", cache_dir: str | Path | None = None,
                 *, progress: bool = False, label: str = "compile") -> None:
        _check_name(backend)
        self.model, self.backend, self.progress, self.label = model, backend, progress, label
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.graphs: dict[tuple[str, Bucket], Callable[..., Any]] = {}
        self.compile_s: dict[Bucket, float] = {}  # export + compile (or load) seconds per bucket
        self.loaded: set[Bucket] = set()  # buckets whose every artifact came from the cache
        self._prompt_cache: dict[tuple[int, ...], tuple[list[list[KVPair]], list[KVPair]]] = {}
        cfg = model.config
        self.tokens_per_block = cfg.tokens_per_block
        blk0 = cast(WanBlock, model.blocks[0])
        self.pieces = {
            "embed": Piece("embed", model, _embed, 2),
            "pre": Piece("pre", blk0, _pre, 4),
            "post": Piece("post", blk0, _post, 5),
            "attend": Piece("attend", nn.Module(), _attention, 3),
        }
        self._weights: dict[str, list[tuple[Tensor, ...]]] = {
            "embed": [self.pieces["embed"].weights(model)],
            "pre": [self.pieces["pre"].weights(b) for b in model.blocks],
            "post": [self.pieces["post"].weights(b) for b in model.blocks],
            "head": [self._head_piece(1).weights(model)],
            "attend": [()],
        }
        if backend == "tensorrt":
            self._trt = load_tensorrt()

    def __getattr__(self, name: str) -> Any:  # only for names this class lacks: the model's
        return getattr(self.__dict__["model"], name)

    # -- building ----------------------------------------------------------------------------------------
    def _head_piece(self, n: int) -> Piece:
        return Piece("head", self.model, functools.partial(_head, n=n), 2)

    def _examples(self, piece: str, bucket: Bucket) -> tuple[Tensor, ...]:
        """Inputs of ``piece`` at ``bucket`` (zeros; shapes and dtypes are what matter), weights included."""
        m, cfg = self.model, self.model.config
        dev, wd = m.device, m.dtype
        act = torch.float32 if wd in (torch.bfloat16, torch.float16) else wd
        h, d = cfg.num_heads, cfg.head_dim
        if piece == "attend":
            return (torch.zeros(bucket.queries, h, d, dtype=wd, device=dev),
                    torch.zeros(bucket.keys, h, d, dtype=wd, device=dev),
                    torch.zeros(bucket.keys, h, d, dtype=wd, device=dev))
        n = bucket.queries // self.tokens_per_block
        g, p = n * cfg.frames_per_block // cfg.patch_size[0], cfg.tokens_per_frame
        x = torch.zeros(g, p, cfg.dim, dtype=act, device=dev)
        e0 = torch.zeros(g, 6, cfg.dim, dtype=act, device=dev)
        if piece == "embed":
            acts: tuple[Tensor, ...] = (torch.zeros(n, *cfg.latent_shape(), dtype=wd, device=dev),
                                        torch.zeros(n, cfg.freq_dim, dtype=wd, device=dev))
            return acts + self._weights["embed"][0]
        if piece == "pre":
            cs = torch.ones(g * p, 1, d // 2, dtype=act, device=dev)
            return (x, e0, cs, cs.clone(), *self._weights["pre"][0])
        if piece == "post":
            text = torch.zeros(n, cfg.text_len, h, d, dtype=wd, device=dev)
            y = torch.zeros(g * p, cfg.dim, dtype=wd, device=dev)
            return (x, y, e0, text, text.clone(), *self._weights["post"][0])
        return (x, torch.zeros(g, cfg.dim, dtype=act, device=dev), *self._weights["head"][0])

    def _artifact(self, piece: str, bucket: Bucket) -> Path | None:
        """The cache path of one compiled piece: keyed by everything that shapes the graph, not weights."""
        if self.cache_dir is None or self.backend == "eager":
            return None
        m = self.model
        key = json.dumps({"piece": piece, "bucket": list(bucket), "config": m.config.to_dict(),
                          "dtype": str(m.dtype), "device": m.device.type, "torch": torch.__version__,
                          "backend": self.backend, "trt": getattr(getattr(self, "_trt", None), "__version__", "")},
                         sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        ext = "ep" if self.backend == "tensorrt" else "pt2"
        return self.cache_dir / f"{piece}-{bucket}-{digest}.{ext}"

    def _build(self, piece: str, bucket: Bucket) -> tuple[Callable[..., Any], bool]:
        """Export, compile (or load) one piece at one bucket; returns (callable, loaded from cache)."""
        module = self._head_piece(bucket.queries // self.tokens_per_block) if piece == "head" else self.pieces[piece]
        example = self._examples(piece, bucket)
        path = self._artifact(piece, bucket)
        if path is not None and path.exists():
            return self._load(path), True
        with torch.no_grad():
            ep = torch.export.export(module, example)
        lifted = [s.target for s in ep.graph_signature.input_specs if s.kind.name != "USER_INPUT"]
        if lifted:  # a weight the piece reads but _WEIGHTS does not list would be frozen into the graph
            raise ExecutorError(f"piece {piece!r} captured model state as constants: {lifted}")
        if self.backend == "eager":
            return ep.module(), False
        if self.backend == "tensorrt":
            return self._compile_tensorrt(ep, example, path), False
        if path is not None:
            from torch import _inductor as inductor

            path.parent.mkdir(parents=True, exist_ok=True)
            inductor.aoti_compile_and_package(ep, package_path=str(path))
            return self._load(path), False
        fn = torch.compile(ep.module().forward, backend="inductor", dynamic=False, fullgraph=True)
        with torch.no_grad():
            fn(*example)  # compile now, not at the first tick
        return fn, False

    def _compile_tensorrt(self, ep: Any, example: tuple[Tensor, ...], path: Path | None) -> Callable[..., Any]:
        trt = self._trt
        options: dict[str, Any] = {"arg_inputs": list(example), "min_block_size": 1}
        if self.cache_dir is not None:
            options.update(cache_built_engines=True, reuse_cached_engines=True,
                           engine_cache_dir=str(self.cache_dir / "engines"))
        gm = trt.dynamo.compile(ep, **options)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            trt.save(gm, str(path), output_format="exported_program", arg_inputs=list(example))
        return cast(Callable[..., Any], gm)

    def _load(self, path: Path) -> Callable[..., Any]:
        try:
            if self.backend == "tensorrt":
                return cast(Callable[..., Any], self._trt.load(str(path)).module())
            from torch import _inductor as inductor

            return cast(Callable[..., Any], inductor.aoti_load_package(str(path)))
        except Exception as e:
            raise ExecutorError(f"cannot load the compiled artifact {path} ({type(e).__name__}: {e}); "
                                "delete it to rebuild") from e

    def prepare(self, buckets: Iterable[Bucket]) -> dict[Bucket, float]:
        """Compile (or load) every piece of every bucket not compiled yet; returns seconds per new bucket."""
        todo = sorted(set(buckets) - set(self.compile_s), key=lambda b: (b.kind, b.queries, b.keys))
        bar = None
        if self.progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="bucket", desc=f"{self.label} ({self.backend})", file=sys.stderr,
                       dynamic_ncols=True)
        new: dict[Bucket, float] = {}
        try:
            for bucket in todo:
                if bar is not None:
                    bar.set_postfix_str(str(bucket))
                start = time.perf_counter()
                all_loaded = True
                for piece in PIECES[bucket.kind]:
                    self.graphs[(piece, bucket)], loaded = self._build(piece, bucket)
                    all_loaded &= loaded
                if all_loaded and self.cache_dir is not None:
                    self.loaded.add(bucket)
                new[bucket] = self.compile_s[bucket] = time.perf_counter() - start
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return new

    def _graph(self, piece: str, bucket: Bucket) -> Callable[..., Any]:
        fn = self.graphs.get((piece, bucket))
        if fn is None:
            have = ", ".join(sorted({str(b) for _, b in self.graphs})) or "none"
            raise ExecutorError(f"the tick needs bucket {bucket} ({piece}), which was not compiled before the run "
                                f"(compiled: {have}); the compiled executor never compiles mid-stream")
        return fn

    # -- the tick -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward_tick(self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None = None) -> TickOutput:
        """``CausalWanDiT.forward_tick`` with the same arguments, results and exchange calls."""
        if self.backend == "inductor" and self.cache_dir is None:
            with torch._dynamo.config.patch(error_on_recompile=True):
                return self._forward_tick(tasks, kv, exchange)
        return self._forward_tick(tasks, kv, exchange)

    def _forward_tick(self, tasks: Sequence[TaskInput], kv: KVLookup, exchange: Exchange | None) -> TickOutput:
        m, cfg = self.model, self.model.config
        if not tasks:
            return m.forward_tick(tasks, kv, exchange)  # no compute: only the per-layer exchange calls
        device, tpb = m.device, self.tokens_per_block
        keys = [m._check_task(i, t) for i, t in enumerate(tasks)]
        refs: list[KVRef] = [(t.ref[0], t.ref[1]) for t in tasks]
        if len(set(refs)) != len(refs):
            raise ExecutorError(f"a tick cannot compute one version twice: {refs}")
        if any(t.latent.shape[1] != cfg.frames_per_block for t in tasks):
            raise ExecutorError(f"the compiled executor runs whole blocks of {cfg.frames_per_block} latent frames, "
                                f"got {[tuple(t.latent.shape) for t in tasks]}")
        ranges = [(i * tpb, (i + 1) * tpb) for i in range(len(tasks))]
        groups: dict[tuple[KVRef, ...], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(tuple(key), []).append(i)
        stream = Bucket(TOKENS, len(tasks) * tpb)
        attn = {ks: self._graph("attend", Bucket(ATTENTION, len(mem) * tpb, len(ks) * tpb))
                for ks, mem in groups.items()}
        embed, pre, post = self._graph("embed", stream), self._graph("pre", stream), self._graph("post", stream)
        head = self._graph("head", stream)
        prompt_kv = self._prompt_kv([t.prompt for t in tasks])

        # 1. Embeddings: the sinusoid (float64) and RoPE angles are tables computed outside the graphs.
        latents = torch.stack([t.latent.to(device) for t in tasks])  # (n, C, F, H, W)
        t64 = torch.tensor([float(t.timestep) for t in tasks], dtype=torch.float64, device=device)
        temb = sinusoidal_embedding(cfg.freq_dim, t64).to(m.dtype)  # (n, freq_dim)
        x, e, e0 = embed(latents, temb, *self._weights["embed"][0])
        pt = cfg.patch_size[0]
        pos = torch.cat([torch.arange(cfg.frames_per_block // pt, dtype=torch.float64) + t.frame_offset // pt
                         for t in tasks])  # (G,)
        freqs = m.rope(pos)  # (N, 1, D/2) complex
        cos, sin = freqs.real.contiguous(), freqs.imag.contiguous()

        # 2. Layers: compiled pre, K/V routing and exchange in Python, compiled attention per group, post.
        out_kv: list[list[KVPair]] = [[] for _ in tasks]
        for layer in range(len(m.blocks)):
            q, k, v = pre(x, e0, cos, sin, *self._weights["pre"][layer])
            q = q.contiguous()
            local = {refs[i]: (k[a:b], v[a:b]) for i, (a, b) in enumerate(ranges)}
            for i in range(len(tasks)):
                out_kv[i].append(local[refs[i]])
            peers = exchange(layer, local) if exchange is not None else {}
            if len(groups) == 1:
                (ks, _), = groups.items()
                y = attn[ks](q, *self._gather(ks, layer, local, peers, kv, q.dtype))
            else:
                y = q.new_empty(q.shape[0], cfg.dim)
                for ks, members in groups.items():
                    qs = torch.cat([q[ranges[i][0]:ranges[i][1]] for i in members])
                    o = attn[ks](qs, *self._gather(ks, layer, local, peers, kv, q.dtype))
                    for j, i in enumerate(members):
                        y[ranges[i][0]:ranges[i][1]] = o[j * tpb:(j + 1) * tpb]
            x = post(x, y, e0, *prompt_kv[layer], *self._weights["post"][layer])

        # 3. Head and unpatchify, in one graph.
        velocity = head(x, e, *self._weights["head"][0])
        return TickOutput(velocity=list(velocity.unbind(0)), kv=out_kv)

    def _prompt_kv(self, prompts: Sequence[Hashable]) -> list[KVPair]:
        """Per layer, the inputs' prompt K/V stacked (n, L_text, H, D); reused while the prompts of the
        tick and the model's cached prompt K/V stay the same (re-registering a prompt makes new ones)."""
        sources = [self.model.prompt_kv(p) for p in prompts]
        key = tuple(id(s) for s in sources)
        hit = self._prompt_cache.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], sources, strict=True)):
            return hit[1]
        stacked = [(torch.stack([s[layer][0] for s in sources]), torch.stack([s[layer][1] for s in sources]))
                   for layer in range(len(self.model.blocks))]
        if len(self._prompt_cache) >= 4:
            self._prompt_cache.pop(next(iter(self._prompt_cache)))
        self._prompt_cache[key] = (sources, stacked)  # holding `sources` keeps their ids from being reused
        return stacked

    @staticmethod
    def _gather(key_refs: Sequence[KVRef], layer: int, local: dict[KVRef, KVPair], peers: dict[KVRef, KVPair],
                kv: KVLookup, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The eager model's gather (``models.dit.gather_kv``), contiguous for a compiled graph's input."""
        k, v = gather_kv(key_refs, layer, local, peers, kv, dtype)
        return k.contiguous(), v.contiguous()


# --- the executor ------------------------------------------------------------------------------------------
class CompiledExecutor:
    """Runs a schedule through the shared tick loop with a :class:`CompiledModel`.

    In one process it runs every device of the schedule (like the reference executor); inside an
    initialised process group it runs this rank's device (like the distributed executor), and each rank
    compiles, or loads from ``engine_cache/rank{r}``, its own graphs. Compiled models are kept per model,
    so a second run compiles only the buckets the first did not.

    >>> from cascade_sched import CascadeSpec, build_schedule
    >>> from models import get_config
    >>> ex = CompiledExecutor("inductor")
    >>> r = ex.run(build_schedule(CascadeSpec(num_blocks=1, timesteps=(1000,))),
    ...            CausalWanDiT(get_config("tiny")), RunOptions())  # doctest: +SKIP
    """

    name = "compiled"

    def __init__(self, backend: str = "inductor", engine_cache: str | Path | None = None, *,
                 progress: bool = False) -> None:
        _check_name(backend)
        if backend == "tensorrt":
            load_tensorrt()
        self.backend, self.progress = backend, progress
        self.engine_cache = Path(engine_cache) if engine_cache is not None else None
        self._compiled: dict[int, CompiledModel] = {}
        self.compile_s: dict[Bucket, float] = {}  # seconds per bucket of the last prepare that compiled any

    def compiled_model(self, model: CausalWanDiT, rank: int = 0) -> CompiledModel:
        """The :class:`CompiledModel` of ``model`` on this rank (created once, then reused)."""
        cm = self._compiled.get(id(model))
        if cm is None or cm.model is not model:
            cache = self.engine_cache / f"rank{rank}" / self.backend if self.engine_cache is not None else None
            cm = CompiledModel(model, self.backend, cache, progress=self.progress, label=f"compile rank {rank}")
            self._compiled[id(model)] = cm
        return cm

    def prepare(self, schedule: Schedule, model: CausalWanDiT) -> CompiledModel:
        """Compile (or load) every bucket this process needs for ``schedule``; :meth:`run` calls it, and
        calling it first keeps compile time out of the run's clock. Returns the compiled model."""
        import torch.distributed as dist

        if self.backend == "tensorrt":
            check_backend(self.backend, model.device)
        distributed = dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        devices = [rank] if distributed else range(schedule.num_devices)
        cm = self.compiled_model(model, rank)
        new = cm.prepare(forward_buckets(schedule, devices, cm.tokens_per_block))
        if new:
            self.compile_s = new
        return cm

    def run(self, schedule: Schedule, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None) -> RunResult:
        import torch.distributed as dist

        from executors.distributed import DistributedExecutor
        from executors.reference import ReferenceExecutor

        cm = self.prepare(schedule, model)
        inner = DistributedExecutor() if dist.is_initialized() else ReferenceExecutor()
        return inner.run(schedule, cast(CausalWanDiT, cm), options, on_block)


__all__ = ["BACKENDS", "Bucket", "CompiledExecutor", "CompiledModel", "Piece", "check_backend", "load_tensorrt"]
