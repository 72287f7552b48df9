"""The compiled executor: the same tick loop, with the model's tick forward run by compiled graphs.

Every forward shape the run needs is derived from the schedule before the first tick
(:mod:`executors.buckets`), each piece of the forward is captured once per bucket with ``torch.export``,
and one backend turns the exported programs into kernels:

- ``inductor``: ``torch.compile`` of the exported module (CPU or GPU); with ``engine_cache``,
  AOTInductor packages (``.pt2``) written to and loaded from the cache instead.
- ``tensorrt``: ``torch_tensorrt.dynamo.compile`` of the exported program on CUDA, precision from the
  module's dtype (cast the model to bf16/fp16), engines cached on disk and compiled programs saved and
  reloaded with ``torch_tensorrt.save`` / ``torch_tensorrt.load``.

The tick is the model's own ``CausalWanDiT.forward_tick``, run by the shared tick loop; this executor only
swaps its pieces (:class:`GraphKernels`, a :class:`models.dit.TickKernels`) for graphs exported from the
model's own methods, in the forms graphs need (``graph_forms``: RoPE as real cos/sin, since TensorRT has no complex
tensors; cross-attention batched over inputs, so any mix of prompts runs one graph). Pieces per bucket:

    embed     tokens   CausalWanDiT.embed_tick: latents (n, C, F, H, W), sinusoid (n, freq_dim) -> x, e, e0
    pre       tokens   WanBlock.modulate + pre_attention: x, e0, RoPE cos/sin -> q, k, v
    attend    attn     models.attention.attend: q (Tq, H, D), k/v (Tk, H, D) -> (Tq, dim)  (no mask)
    post      tokens   WanBlock.modulate + post_attention: x, y, e0, per-input prompt k/v -> x
    head      tokens   Head + CausalWanDiT.unpatchify: x, e -> velocity (n, C, F, H, W)

Weights are graph *inputs*, not constants: one ``pre`` graph serves every layer, so a run compiles
``#token buckets x 4 + #attention buckets`` graphs whatever the depth, and a cached artifact holds no
weights (a new checkpoint never invalidates or poisons the cache). K/V gathering and the per-layer
exchange hook (collectives) stay outside the graphs, between ``pre`` and ``attend``. Each attention
group's SDPA sees exactly its own keys, so no block mask is needed; none relies on ``is_causal``.

A shape outside the compiled set raises :class:`ExecutorError` instead of compiling mid-stream, and the
inductor graphs run under ``error_on_recompile``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from cascade_sched.errors import ConfigError, ExecutorError
from cascade_sched.schedule import Schedule
from executors.base import BlockCallback, Executor, RunOptions, RunResult, Work
from executors.buckets import ATTENTION, TOKENS, Bucket, forward_buckets
from executors.feed import Stream, StreamHook
from models.attention import CrossKV, KVPair, Rope, attend
from models.dit import CausalWanDiT
from models.layers import WanBlock, act_dtype

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

CompileProgress = Callable[[Sequence[Bucket], str], Iterable[Bucket]]
"""``progress(buckets, label)`` yields the buckets it is given, in order, while it shows how far compiling has
got (an app's progress bar); the compiled executor calls it around its compile loop."""


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


def refuse_layers() -> None:
    """The compiled executor does not run layer rings yet: one ConfigError naming ``--placement``."""
    raise ConfigError("placement", "`--placement` layers runs with `--executor reference` or `--executor "
                                   "distributed`; the compiled executor compiles whole-model forwards only (block "
                                   "or stage placement)")


def _check_name(backend: str) -> None:
    if backend not in _ALL_BACKENDS:
        raise ConfigError("backend", f"`--backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")


# --- the pieces: the model's own methods, with flat tensor inputs for export ---------------------------------
def _embed(m: CausalWanDiT, latents: Tensor, temb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``CausalWanDiT.embed_tick``: latents (n, C, F, H, W), sinusoids (n, freq_dim) -> x, e, e0."""
    return m.embed_tick(list(latents.unbind(0)), temb)


def _pre(blk: WanBlock, x: Tensor, e0: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``WanBlock.pre_attention`` with its modulation, RoPE in the real form: q, k, v each (N, H, D)."""
    return blk.pre_attention(x, blk.modulate(e0), (cos, sin))


def _post(blk: WanBlock, x: Tensor, y: Tensor, e0: Tensor, pk: Tensor, pv: Tensor) -> Tensor:
    """``WanBlock.post_attention`` with its modulation, cross-attention batched over the inputs (pk, pv:
    (n, L_text, H, D), each input's own prompt), so any mix of prompts in a tick runs the same graph."""
    return blk.post_attention(x, y, blk.modulate(e0), (pk, pv))


def _head(m: CausalWanDiT, x: Tensor, e: Tensor, *, n: int) -> Tensor:
    """Head and unpatchify of n equal inputs: x (G, P, dim), e (G, dim) -> velocity (n, C, F, H, W)."""
    return torch.stack(m.unpatchify(m.head(x, e), [x.shape[0] // n] * n))


def _attention(_: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The model's attention kernel (``models.attention.attend``): q (Tq, H, D) on k, v (Tk, H, D)."""
    return attend(q, k, v)


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
    """The compiled graphs of one :class:`CausalWanDiT`, one set per bucket, and the :class:`GraphKernels`
    that run them as the pieces of the model's own ``forward_tick`` (``model.forward_tick(...,
    kernels=cm.kernels)``). Call :meth:`prepare` with the run's buckets before the first tick.
    """

    def __init__(self, model: CausalWanDiT, backend: str = "inductor", cache_dir: str | Path | None = None,
                 *, progress: CompileProgress | None = None, label: str = "compile") -> None:
        _check_name(backend)
        self.model, self.backend, self.progress, self.label = model, backend, progress, label
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.graphs: dict[tuple[str, Bucket], Callable[..., Any]] = {}
        self.compile_s: dict[Bucket, float] = {}  # export + compile (or load) seconds per bucket
        self.loaded: set[Bucket] = set()  # buckets whose every artifact came from the cache
        cfg = model.config
        self.tokens_per_block = cfg.tokens_per_block
        blk0 = model.block(0)
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
        self.kernels = GraphKernels(self)
        if backend == "tensorrt":
            self._trt = load_tensorrt()

    # -- building ----------------------------------------------------------------------------------------
    def _head_piece(self, n: int) -> Piece:
        return Piece("head", self.model, functools.partial(_head, n=n), 2)

    def _examples(self, piece: str, bucket: Bucket) -> tuple[Tensor, ...]:
        """Inputs of ``piece`` at ``bucket`` (zeros; shapes and dtypes are what matter), weights included."""
        m, cfg = self.model, self.model.config
        dev, wd = m.device, m.dtype
        act = act_dtype(wd)
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
            return self._load_artifact(path)
        except Exception as e:
            raise ExecutorError(f"cannot load the compiled artifact {path} ({type(e).__name__}: {e}); "
                                "delete it to rebuild") from e

    def _load_artifact(self, path: Path) -> Callable[..., Any]:
        if self.backend == "tensorrt":
            return cast(Callable[..., Any], self._trt.load(str(path)).module())
        from torch import _inductor as inductor

        return cast(Callable[..., Any], inductor.aoti_load_package(str(path)))

    def prepare(self, buckets: Iterable[Bucket]) -> dict[Bucket, float]:
        """Compile (or load) every piece of every bucket not compiled yet; returns seconds per new bucket."""
        todo = sorted(set(buckets) - set(self.compile_s), key=lambda b: (b.kind, b.queries, b.keys))
        steps: Iterable[Bucket] = todo
        if self.progress is not None and todo:
            steps = self.progress(todo, f"{self.label} ({self.backend})")
        new: dict[Bucket, float] = {}
        with warnings.catch_warnings():  # torch's own deprecation notices (FutureWarning) while it exports,
            warnings.simplefilter("ignore", FutureWarning)  # packages and unpickles tree specs: not the user's
            for bucket in steps:
                start = time.perf_counter()
                all_loaded = True
                for piece in PIECES[bucket.kind]:
                    self.graphs[(piece, bucket)], loaded = self._build(piece, bucket)
                    all_loaded &= loaded
                if all_loaded and self.cache_dir is not None:
                    self.loaded.add(bucket)
                new[bucket] = self.compile_s[bucket] = time.perf_counter() - start
        return new

    def _graph(self, piece: str, bucket: Bucket) -> Callable[..., Any]:
        fn = self.graphs.get((piece, bucket))
        if fn is None:
            have = ", ".join(sorted({str(b) for _, b in self.graphs})) or "none"
            raise ExecutorError(f"the tick needs bucket {bucket} ({piece}), which was not compiled before the run "
                                f"(compiled: {have}); the compiled executor never compiles mid-stream")
        return fn


class GraphKernels:
    """The tick's pieces (:class:`models.dit.TickKernels`) as a :class:`CompiledModel`'s graphs: each
    call looks up the graph of its shape's bucket (an uncompiled shape raises, never compiles) and passes
    that layer's weights. The forms are the graphs' (``graph_forms``): RoPE as (cos, sin), batched
    cross-attention."""

    graph_forms = True

    def __init__(self, cm: CompiledModel) -> None:
        self.cm = cm

    def _stream(self, piece: str, x: Tensor) -> Callable[..., Any]:
        return self.cm._graph(piece, Bucket(TOKENS, x.shape[0] * x.shape[1]))

    def embed(self, latents: Sequence[Tensor], temb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cm.model.config
        if any(lat.shape[1] != cfg.frames_per_block for lat in latents):
            raise ExecutorError(f"the compiled executor runs whole blocks of {cfg.frames_per_block} latent frames, "
                                f"got {[tuple(lat.shape) for lat in latents]}")
        graph = self.cm._graph("embed", Bucket(TOKENS, len(latents) * self.cm.tokens_per_block))
        out = graph(torch.stack(list(latents)), temb, *self.cm._weights["embed"][0])
        return cast(tuple[Tensor, Tensor, Tensor], out)

    def pre(self, layer: int, x: Tensor, e0: Tensor, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        cos, sin = rope
        q, k, v = self._stream("pre", x)(x, e0, cos, sin, *self.cm._weights["pre"][layer])
        return q.contiguous(), k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        graph = self.cm._graph("attend", Bucket(ATTENTION, q.shape[0], k.shape[0]))
        return cast(Tensor, graph(q.contiguous(), k.contiguous(), v.contiguous()))

    def post(self, layer: int, x: Tensor, y: Tensor, e0: Tensor, cross: CrossKV) -> Tensor:
        pk, pv = cast(KVPair, cross)
        return cast(Tensor, self._stream("post", x)(x, y, e0, pk, pv, *self.cm._weights["post"][layer]))

    def head(self, x: Tensor, e: Tensor, frames: Sequence[int]) -> Sequence[Tensor]:
        return cast(Tensor, self._stream("head", x)(x, e, *self.cm._weights["head"][0])).unbind(0)


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
                 progress: CompileProgress | None = None) -> None:
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

        if schedule.spec.placement == "layers":
            refuse_layers()
        if self.backend == "tensorrt":
            check_backend(self.backend, model.device)
        distributed = dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        from executors.distributed import rank_device

        devices = [rank_device(schedule.spec, rank)] if distributed else range(schedule.num_devices)
        cm = self.compiled_model(model, rank)
        new = cm.prepare(forward_buckets(schedule, devices, cm.tokens_per_block))
        if new:
            self.compile_s = new
        return cm

    def run(self, work: Work, model: CausalWanDiT, options: RunOptions,
            on_block: BlockCallback | None = None, hook: StreamHook | None = None) -> RunResult:
        """The model's own tick loop, its pieces run by this process's graphs: in one process every device
        (as the reference executor), inside a process group this rank's (as the distributed one)."""
        import torch.distributed as dist

        from executors.distributed import DistributedExecutor
        from executors.reference import ReferenceExecutor

        if isinstance(work, Stream):  # its forward shapes are not known before it runs
            raise ExecutorError("the compiled executor runs whole schedules (its shapes are compiled before the "
                                "first tick); run a stream with the reference or the distributed executor")
        schedule = work
        cm = self.prepare(schedule, model)
        inner: Executor = (DistributedExecutor(kernels=cm.kernels) if dist.is_initialized()
                           else ReferenceExecutor(kernels=cm.kernels))
        with contextlib.ExitStack() as stack:
            if self.backend == "inductor" and self.engine_cache is None:  # a new shape raises, never compiles
                stack.enter_context(torch._dynamo.config.patch(error_on_recompile=True))
            return inner.run(schedule, model, options, on_block, hook=hook)


__all__ = ["BACKENDS", "Bucket", "CompiledExecutor", "CompiledModel", "Piece", "check_backend", "load_tensorrt",
           "refuse_layers"]
