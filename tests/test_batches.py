"""Training batches: seeded epochs, equal step counts on every DDP rank."""
from __future__ import annotations

import torch

from kdsearch.batches import TrainBatches


def test_every_rank_takes_the_same_number_of_steps() -> None:
    images = torch.zeros((300, 3, 1, 1), dtype=torch.uint8)
    for n in range(2, 301):
        for batch_size in range(2, 33):
            for workers in range(1, 9):
                if n < 2 * workers:
                    continue  # every rank needs at least two images
                lengths = {len(TrainBatches(images[:n], batch_size, 0, None, rank, workers)) for rank in range(workers)}
                assert len(lengths) == 1, (n, batch_size, workers, lengths)


def test_ranks_draw_disjoint_shards_of_one_permutation_with_full_batches() -> None:
    # Distinct pixel values identify the images (normalisation keeps them distinct).
    images = torch.arange(23, dtype=torch.uint8).view(23, 1, 1, 1).expand(23, 3, 1, 1).contiguous()
    for workers, batch_size in ((2, 4), (3, 2), (4, 5), (1, 4)):
        seen: list[float] = []
        counts = []
        for rank in range(workers):
            batches = list(TrainBatches(images, batch_size, 7, None, rank, workers))
            assert all(len(b["image"]) >= 2 for b in batches)
            values = [float(x) for b in batches for x in b["image"][:, 0, 0, 0]]
            counts.append(len(values))
            seen += values
        assert len(set(counts)) == 1 and counts[0] <= 23 // workers
        assert len(set(seen)) == len(seen)  # no image on two ranks


def test_eleven_images_batch_four_two_workers_agree() -> None:
    images = torch.zeros((11, 3, 1, 1), dtype=torch.uint8)
    # 5 images per rank: one batch of 4; the trailing single image is dropped on both.
    assert [len(TrainBatches(images, 4, 0, None, rank, 2)) for rank in range(2)] == [1, 1]


def test_a_single_process_keeps_every_image_of_the_epoch() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 1, 1).contiguous()
    batches = TrainBatches(images, 4, 0, None)
    pixels = torch.cat([b["image"][:, 0, 0, 0] for b in batches])
    assert len(pixels) == 10 and len(set(pixels.tolist())) == 10


def test_prefetched_yields_the_same_batches_and_raises_producer_errors() -> None:
    import threading

    import pytest

    from kdsearch.batches import prefetched
    from kdsearch.synthesis import AnomalySynthesizer, SynthesisConfig

    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)

    def epoch_batches():
        return TrainBatches(images, 4, 3, AnomalySynthesizer(SynthesisConfig(kind="nsa")))

    plain = list(epoch_batches())
    ahead = list(prefetched(epoch_batches(), 2))
    assert len(plain) == len(ahead) == 3
    for a, b in zip(plain, ahead):
        assert all(torch.equal(a[k], b[k]) for k in a)

    def broken():
        yield {"image": torch.zeros(1)}
        raise RuntimeError("synthesis broke")

    with pytest.raises(RuntimeError, match="synthesis broke"):
        list(prefetched(broken(), 2))
    before = threading.active_count()
    for _ in prefetched(iter(epoch_batches()), 1):
        break  # an abandoned epoch stops its producer
    assert threading.active_count() == before


def test_nsa_gives_the_same_batch_for_any_number_of_workers() -> None:
    import numpy as np

    from kdsearch.synthesis import nsa_synthesize

    images = torch.rand(6, 3, 48, 48)
    outputs = [nsa_synthesize(images, images, np.random.default_rng(5), workers=w) for w in (1, 4)]
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert outputs[0][1].sum() > 0


def test_prefetched_on_cuda_hands_each_batch_over_through_an_event_on_the_producers_stream(monkeypatch) -> None:
    """The CUDA handoff protocol, with torch.cuda's stream API replaced by recorders (no GPU needed)."""
    import contextlib
    import threading

    from kdsearch import batches as batches_module

    log: list[tuple] = []
    state = threading.local()

    class FakeStream:
        def __init__(self, name: str) -> None:
            self.name = name

        def wait_event(self, event) -> None:
            log.append(("wait", self.name, event.batch))

    side_streams: list[FakeStream] = []

    class FakeEvent:
        def record(self, stream) -> None:
            # The batch just made is the last one the producer put out.
            self.batch = produced[-1]
            log.append(("record", stream.name, self.batch, getattr(state, "stream", None)))

    @contextlib.contextmanager
    def fake_stream_context(stream):
        state.stream = stream.name
        yield
        state.stream = None

    def new_stream(device=None):
        stream = FakeStream(f"side:{device}")
        side_streams.append(stream)
        return stream

    consumer = FakeStream("default")
    recorded: list[tuple[int, str]] = []
    monkeypatch.setattr(torch.cuda, "Stream", new_stream)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "stream", fake_stream_context)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: consumer)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: recorded.append((int(self[0]), stream.name)),
                        raising=False)

    produced: list[int] = []

    def batches():
        for index in range(3):
            produced.append(index)
            yield {"image": torch.full((2,), index), "anomaly_mask": torch.full((2,), index)}

    device = torch.device("cuda", 1)
    got = [int(batch["image"][0]) for batch in batches_module.prefetched(batches(), 2, device)]
    assert got == [0, 1, 2] and [s.name for s in side_streams] == ["side:cuda:1"]
    # Each batch's event is recorded on the producer's stream, from inside its stream context.
    assert [entry for entry in log if entry[0] == "record"] == [("record", "side:cuda:1", i, "side:cuda:1") for i in range(3)]
    # The consumer's stream waits for each batch's event before the batch is used, in order.
    assert [entry for entry in log if entry[0] == "wait"] == [("wait", "default", i) for i in range(3)]
    # Every tensor of every batch is recorded on the consumer's stream.
    assert recorded == [(i, "default") for i in range(3) for _ in range(2)]
    log.clear()
    # A CPU device keeps the plain path: no stream, no event.
    assert [int(b["image"][0]) for b in batches_module.prefetched(batches(), 2, torch.device("cpu"))] == [0, 1, 2]
    assert log == [] and len(side_streams) == 1
