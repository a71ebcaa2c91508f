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
