"""What the tick loop conditions on: RunOptions' embeddings and text encoder, each text encoded once,
the default stand-in for test models only, the decode thread's overlap, and the rank-0 sharing."""

from __future__ import annotations

import threading

import pytest
import torch
from exec_support import tiny_model
from torch import Tensor

from apps.generate.decode_thread import DecodeWorker
from cascade_sched import CascadeSpec, ConfigError, build_schedule
from executors.base import RunOptions
from executors.feed import Declaration, Stream, StreamView
from executors.reference import ReferenceExecutor
from models import CausalWanDiT
from models.prompts import StandInEncoder, TextEncoder, default_text_encoder, text_embedding


class Counting:
    """A TextEncoder that counts what it is asked to encode."""

    name = "counting"

    def __init__(self, model: CausalWanDiT) -> None:
        self.inner = StandInEncoder(model.config)
        self.calls: list[str] = []

    def encode(self, text: str) -> Tensor:
        self.calls.append(text)
        return self.inner.encode(text)

    def close(self) -> None:
        return None


def test_the_protocol_is_structural() -> None:
    model = tiny_model()
    assert isinstance(Counting(model), TextEncoder) and isinstance(StandInEncoder(model.config), TextEncoder)


def test_each_text_is_encoded_once_and_the_encoder_is_what_conditions() -> None:
    model = tiny_model()
    spec = CascadeSpec(num_blocks=4, lag=2, switches=((1, 1), (2, 2), (3, 1)))
    enc = Counting(model)
    opts = RunOptions(prompt="a fox", prompts={1: "a cube", 2: "a fox"}, text_encoder=enc)
    got = ReferenceExecutor().run(build_schedule(spec), model, opts).stacked()
    assert sorted(enc.calls) == ["a cube", "a fox"]  # ids 0 and 2 share a text
    want = ReferenceExecutor().run(build_schedule(spec), model, RunOptions(prompt="a fox", prompts={1: "a cube",
                                                                                                    2: "a fox"}))
    assert torch.equal(got, want.stacked())


def test_pre_encoded_embeddings_win_over_the_text() -> None:
    model = tiny_model()
    schedule = build_schedule(CascadeSpec(num_blocks=2, lag=1))
    fox = text_embedding("a fox in the snow", model.config)
    by_embedding = ReferenceExecutor().run(schedule, model, RunOptions(prompt="ignored", embeddings={0: fox}))
    by_text = ReferenceExecutor().run(schedule, model, RunOptions(prompt="a fox in the snow"))
    other = ReferenceExecutor().run(schedule, model, RunOptions(prompt="ignored"))
    assert torch.equal(by_embedding.stacked(), by_text.stacked())
    assert not torch.equal(by_embedding.stacked(), other.stacked())


def test_prompts_typed_while_streaming_go_through_the_encoder() -> None:
    model = tiny_model()
    enc = Counting(model)
    opts = RunOptions(prompt="a fox", text_encoder=enc)

    def hook(tick: int, view: StreamView) -> Declaration | None:
        if tick == 1:
            opts.prompts[1] = "a red ball"
            return Declaration(switch=1)
        return Declaration(end=True) if view.declared >= 4 else None

    ReferenceExecutor().run(Stream(CascadeSpec(num_blocks=2, lag=1)), model, opts, hook=hook)
    assert enc.calls == ["a fox", "a red ball"]


def test_only_test_models_default_to_the_stand_in() -> None:
    cfg = tiny_model().config
    assert isinstance(default_text_encoder(cfg), StandInEncoder)
    real = CausalWanDiT(cfg.replace(name="wan2.1-1.3b"), seed=0)  # a real model's name, tiny shapes
    with pytest.raises(ConfigError, match=r"needs real text conditioning: pass --text-encoder DIR") as info:
        ReferenceExecutor().run(build_schedule(CascadeSpec(num_blocks=1)), real, RunOptions())
    assert info.value.param == "text_encoder"
    ReferenceExecutor().run(build_schedule(CascadeSpec(num_blocks=1)), real,
                            RunOptions(text_encoder=StandInEncoder(cfg)))  # asked for explicitly


class Gated:
    """A decoder that cannot finish block 0 until the tick loop has handed over block 2."""

    name = "gated"

    def __init__(self) -> None:
        self.third = threading.Event()

    def decode_block(self, latent: Tensor) -> list[int]:
        if not self.third.wait(timeout=30):
            raise TimeoutError("the tick loop never got past block 0: decoding is not off its thread")
        return [0] * 9


def test_decoding_overlaps_the_next_blocks() -> None:
    """The decode runs on its own thread: block 0 decodes while blocks 1 and 2 denoise (deterministically:
    the decoder waits for block 2, which a decode on the tick loop's thread would deadlock)."""
    dec = Gated()
    worker = DecodeWorker(dec, None)
    model = tiny_model()

    def on_block(block: int, x0: Tensor) -> None:
        worker.submit(block, x0)
        if block == 2:
            dec.third.set()

    ReferenceExecutor().run(build_schedule(CascadeSpec(num_blocks=3, lag=1)), model, RunOptions(), on_block)
    worker.close()
    assert sorted(worker.decoded) == [0, 1, 2]
    events = worker.events(0.0, 0)
    assert [e.name for e in events] == ["decode B0", "decode B1", "decode B2"]
    assert all(e.track == "decode" for e in events)


def test_a_decode_failure_is_one_error_at_the_next_block() -> None:
    class Broken:
        def decode_block(self, latent: Tensor) -> None:
            raise RuntimeError("VAE exploded")

    worker = DecodeWorker(Broken(), None)
    worker.submit(0, torch.zeros(1))
    with pytest.raises(Exception, match="decoding block 0 failed: RuntimeError: VAE exploded"):
        worker.close()


def share_on_rank(payload: int, rank: int, world: int) -> list[float]:
    """Rank function: rank 0 makes 8 MB of embeddings (a umT5-XXL prompt's size); every rank gets them."""
    import torch.distributed as dist

    from apps.sources import share_from_rank0

    mine = {0: torch.randn(512, 4096, generator=torch.Generator().manual_seed(payload))} if rank == 0 else None
    got = share_from_rank0(mine, rank, world)
    sums = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(sums, got[0].double().sum().reshape(1))
    return [float(x) for x in sums]


@pytest.mark.slow
def test_rank0_encodes_and_every_rank_receives_the_same_tensor() -> None:
    from executors.launch import spawn

    sums = spawn(share_on_rank, 11, 3, timeout_s=60)
    want = float(torch.randn(512, 4096, generator=torch.Generator().manual_seed(11)).double().sum())
    assert sums == [want] * 3
