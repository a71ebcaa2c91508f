"""The teacher cache (``teacher_cache``) gives the trained weights and metrics bit for bit.

For every method it applies to, a training at the smoke profile made longer (three epochs,
so that the second and third take every full batch from the cache, and eleven images in
batches of four, so that each epoch ends on a smaller batch the step computes itself) runs
with the cache on and off, in fp32 and in bf16 (``auto`` on this CPU), and the trained
state and the metrics must be equal; so must they on two DDP ranks (gloo), where each rank
caches the images its shard brings it. A changed teacher, precision, image size or image
content misses the cache.
"""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import kdsearch.loop as loop_module
from kdsearch.errors import UserError
from kdsearch.loop import fit_and_evaluate
from kdsearch.nn import FrozenTeacher
from kdsearch.teacher_cache import TeacherCache, TeacherKey, bytes_per_image, content_keys, teacher_cache_wanted
from kdsearch.settings import single_trial

LONGER = {"epochs": 3, "batch_size": 4, "max_train_images": 12, "device": "cpu"}


def _train(method: str, cache: str, precision: str, memory_format: str = "channels_last", **settings):
    trial = single_trial(method, "smoke", {**LONGER, "teacher_cache": cache, "precision": precision,
                                      "memory_format": memory_format, **settings})
    caches = []
    build = loop_module.build_teacher_cache

    def recording(*args, **kwargs):
        made = build(*args, **kwargs)
        caches.append(made)
        return made

    loop_module.build_teacher_cache = recording
    try:
        state = {}

        def keep(record, checkpoint):
            if record["epoch"] == trial.train.epochs:
                state.update(checkpoint()["model"])

        outcome = fit_and_evaluate(trial, progress=False, on_epoch=keep)
    finally:
        loop_module.build_teacher_cache = build
    return outcome, state, caches[0]


CASES = [("rd4ad", "bf16", {}), ("rd4ad", "fp32", {"memory_format": "contiguous"}), ("mrkd", "bf16", {}),
         ("dskd", "fp32", {}), ("dmdd", "bf16", {}), ("dskd", "bf16", {"structure": "t_d"})]


@pytest.mark.parametrize(("method", "precision", "settings"), CASES[:2])
def test_cache_on_and_off_train_bit_identical_weights_and_metrics(method, precision, settings):
    _check_identical(method, precision, settings)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "precision", "settings"), CASES[2:])
def test_cache_on_and_off_train_bit_identical_weights_and_metrics_every_method(method, precision, settings):
    _check_identical(method, precision, settings)


def _check_identical(method, precision, settings):
    on, on_state, cache = _train(method, "on", precision, **settings)
    off, off_state, no_cache = _train(method, "off", precision, **settings)
    assert no_cache is None and cache is not None
    # Served for real: every full batch of epochs 2 and 3 came from the cache.
    assert cache.hits > 0 and cache.split_exact
    assert on_state.keys() == off_state.keys()
    different = [k for k in on_state if not torch.equal(on_state[k], off_state[k])]
    assert not different
    assert on.metrics == off.metrics
    assert [r["loss"] for r in on.epoch_records] == [r["loss"] for r in off.epoch_records]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_rank(rank: int, port: int, folder: str, method: str, precision: str) -> None:
    # Twelve images on two ranks in batches of three: each rank's six fill two full batches
    # an epoch, and every epoch reshuffles which six a rank gets, so later epochs meet images
    # the rank cached earlier and others it has not seen yet.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for cache in ("on", "off"):
            outcome, state, made = _train(method, cache, precision, batch_size=3)
            torch.save({"status": str(outcome.status), "model": state, "metrics": outcome.metrics,
                        "losses": [r["loss"] for r in outcome.epoch_records],
                        "images": [r["images"] for r in outcome.epoch_records],
                        "hits": None if made is None else made.hits,
                        "misses": None if made is None else made.misses,
                        "split_exact": None if made is None else made.split_exact},
                       Path(folder) / f"{cache}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(("method", "precision"), [("rd4ad", "bf16"), ("dmdd", "bf16")])
def test_cache_on_and_off_train_bit_identical_weights_and_metrics_on_two_ddp_ranks(tmp_path, method, precision):
    mp.spawn(_ddp_rank, args=(_free_port(), str(tmp_path), method, precision), nprocs=2, join=True)
    for rank in range(2):
        on, off = (torch.load(tmp_path / f"{cache}{rank}.pt", weights_only=True) for cache in ("on", "off"))
        assert on["status"] == off["status"] == "ok"
        assert off["hits"] is None and on["split_exact"]
        # The epoch's 12 images, 6 per rank; each rank served later epochs' images it had cached.
        assert on["images"] == [12, 12, 12] and on["hits"] > 0 and on["misses"] > 0
        assert on["model"].keys() == off["model"].keys()
        assert not [k for k in on["model"] if not torch.equal(on["model"][k], off["model"][k])]
        assert on["losses"] == off["losses"] and on["metrics"] == off["metrics"]


def test_auto_is_on_where_it_applies_and_off_with_compile_or_nothing_to_cache():
    assert teacher_cache_wanted(single_trial("rd4ad", "smoke"))
    assert teacher_cache_wanted(single_trial("dmdd", "smoke"))
    assert not teacher_cache_wanted(single_trial("rd4ad", "smoke", {"compile": True}))
    assert teacher_cache_wanted(single_trial("rd4ad", "smoke", {"compile": True, "teacher_cache": "on"}))
    assert not teacher_cache_wanted(single_trial("adps", "smoke"))
    assert not teacher_cache_wanted(single_trial("dskd", "smoke", {"structure": "e_d"}))
    # The training key ignores it: the weights are the same.
    assert (single_trial("rd4ad", "smoke", {"teacher_cache": "off"}).training_identity
            == single_trial("rd4ad", "smoke").training_identity)


def test_on_and_off_read_from_yaml_and_set_as_yaml_booleans_are_the_setting():
    from kdsearch.config import parse_assignments

    for value, meant in (("off", "off"), ("on", "on"), ("false", "off"), ("auto", "auto")):
        trial = single_trial("rd4ad", "smoke", parse_assignments([f"teacher_cache={value}"]))
        assert trial.train.teacher_cache == meant


def test_setting_it_where_nothing_is_cached_is_refused():
    with pytest.raises(UserError, match="teacher_cache is set but nothing uses it"):
        single_trial("adps", "smoke", {"teacher_cache": "on"})
    with pytest.raises(UserError, match="normal_rotation"):
        single_trial("dmdd", "smoke", {"teacher_cache": "on", "synthesis.normal_rotation": 0.3})
    with pytest.raises(UserError, match="teacher_cache must be auto, on or off"):
        single_trial("rd4ad", "smoke", {"teacher_cache": "yes"})


class _Counting(torch.nn.Module):
    def __init__(self, teacher: FrozenTeacher) -> None:
        super().__init__()
        self.teacher, self.calls = teacher, 0

    def forward(self, images):
        self.calls += 1
        return self.teacher(images)


def _key(**changes) -> TeacherKey:
    base = TeacherKey("resnet18", (1, 2, 3), 1.5, "opencv_area", 32, "fp32", "contiguous", "cpu")
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("change", [{"backbone": "resnet34"}, {"weights": 2.5}, {"precision": "bf16"},
                                    {"image_size": 64}, {"preprocessing": "rd4ad_code"}, {"levels": (1, 2)},
                                    {"memory_format": "channels_last"}])
def test_a_changed_teacher_or_numerics_misses_and_the_same_hits(change):
    torch.manual_seed(0)
    teacher = _Counting(FrozenTeacher("resnet18", "none", (1, 2, 3)))
    uint8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    batch = {"image": uint8.float() / 255}
    store: dict = {}
    keys = content_keys(uint8)
    first = TeacherCache(teacher, _key(), keys, rows=4, store=store)
    computed = first.features(batch, (0, 1, 2, 3))
    assert teacher.calls == 1 and first.misses == 4
    same = TeacherCache(teacher, _key(), keys, rows=4, store=store)
    served = same.features(batch, (0, 1, 2, 3))
    assert teacher.calls == 1 and same.hits == 4
    assert all(torch.equal(a, b) for a, b in zip(computed, served))
    TeacherCache(teacher, _key(**change), keys, rows=4, store=store).features(batch, (0, 1, 2, 3))
    assert teacher.calls == 2


def test_changed_image_content_misses_and_a_smaller_batch_is_left_to_the_step():
    torch.manual_seed(0)
    teacher = _Counting(FrozenTeacher("resnet18", "none", (1, 2, 3)))
    uint8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    store: dict = {}
    TeacherCache(teacher, _key(), content_keys(uint8), rows=4, store=store).features(
        {"image": uint8.float() / 255}, (0, 1, 2, 3))
    changed = uint8.clone()
    changed[2, 0, 0, 0] ^= 1
    cache = TeacherCache(teacher, _key(), content_keys(changed), rows=4, store=store)
    cache.features({"image": changed.float() / 255}, (0, 1, 2, 3))
    assert teacher.calls == 2 and cache.misses == 1 and cache.hits == 3
    assert cache.features({"image": changed[:3].float() / 255}, (0, 1, 2)) is None
    assert teacher.calls == 2


def test_size_per_image_is_the_feature_pyramid_in_bf16():
    teacher = FrozenTeacher("wide_resnet50_2", "none", (1, 2, 3))
    # 256·64² + 512·32² + 1024·16² values, two bytes each: 3.67 MB.
    assert bytes_per_image(teacher, 256, "bf16") == 3_670_016
    assert bytes_per_image(teacher, 256, "fp32") == 2 * 3_670_016
