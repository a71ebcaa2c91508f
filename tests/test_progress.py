"""The sweep's progress line: counts, the ETA's two sources, terminal and log behaviour."""
from __future__ import annotations

import io

import pytest

from kdsearch.progress import LOG_INTERVAL_S, NO_ESTIMATE, SweepProgress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(total=20, estimate=600.0, live=False, enabled=True):
    clock, stream = FakeClock(), io.StringIO()
    return SweepProgress(total, estimate, stream=stream, live=live, enabled=enabled, clock=clock), clock, stream


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (42.4, "42 s"), (425, "7 min 05 s"), (7380, "2 h 03 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_starts_from_the_cost_model_and_follows_finished_trainings():
    progress, clock, _ = _progress(total=20, estimate=600.0)
    assert progress.eta_seconds() == (600.0, "cost model")
    clock.now += 30  # start-up (Ray) is not training: the model's clock starts with the first trial
    assert progress.eta_seconds() == (600.0, "cost model")
    progress.trial_started("a")
    progress.trial_started("b")
    progress.trial_started("b")  # a restart: still one training
    clock.now += 100
    assert progress.eta_seconds() == (500.0, "cost model")
    assert (progress.running, progress.remaining) == (2, 18)
    clock.now += 20  # both took 120 s, two at a time
    progress.trial_finished("a", ok=True)
    progress.trial_finished("b", ok=False)
    eta, basis = progress.eta_seconds()
    assert eta == pytest.approx(18 * 120 / 2) and basis == "from 2 finished"
    text = progress.text()
    assert "trainings 1/20 done · 0 running · 1 failed · 18 to go · 2 min 30 s elapsed · ETA 18 min 00 s" in text
    # Two more start; 50 s into them, 70 s of each are expected to be left.
    progress.trial_started("c")
    progress.trial_started("d")
    clock.now += 50
    eta, _ = progress.eta_seconds()
    assert eta == pytest.approx((2 * 70 + 16 * 120) / 2)
    # An ETA does not grow while nothing finishes: it counts the running trainings down.
    clock.now += 40
    assert progress.eta_seconds()[0] == pytest.approx((2 * 30 + 16 * 120) / 2)


def test_no_estimate_without_a_throughput_until_one_finishes():
    progress, clock, _ = _progress(estimate=None)
    assert progress.eta_seconds() == (None, NO_ESTIMATE)
    assert "ETA ? (unknown until a training finishes, or until `python -m kdsearch.bench --save`" in progress.text()
    progress.trial_started("a")
    clock.now += 30
    progress.trial_finished("a")
    assert progress.eta_seconds()[0] == pytest.approx(19 * 30)


def test_a_log_gets_the_first_line_at_once_then_at_most_one_per_interval():
    progress, clock, stream = _progress(live=False)
    progress.update(force=True)  # what start() prints before any trial runs
    assert stream.getvalue().count("\n") == 1 and stream.getvalue().startswith("kdsearch: trainings 0/20 done")
    progress.trial_started("a")
    clock.now += LOG_INTERVAL_S - 1
    progress.trial_finished("a")
    progress.update()
    assert stream.getvalue().count("\n") == 1
    clock.now += 1
    progress.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "1/20 done" in lines[1]
    assert "\r" not in stream.getvalue()


def test_a_terminal_line_is_redrawn_in_place_below_the_trial_lines():
    progress, _, stream = _progress(live=True)
    progress.update()
    assert stream.getvalue().startswith("\r\033[Ktrainings 0/20")
    out = io.StringIO()
    progress.write("ok  weave k=1", out)
    assert out.getvalue() == "ok  weave k=1\n"
    # cleared before the trial line, drawn again after it
    assert stream.getvalue().count("\r\033[K") == 3 and stream.getvalue().endswith("(cost model)")
    progress.close()
    assert stream.getvalue().endswith("\n")


def test_quiet_prints_nothing_but_trial_lines_still_pass_through():
    progress, _, stream = _progress(live=True, enabled=False)
    progress.start()
    progress.trial_started("a")
    out = io.StringIO()
    progress.write("ok  weave", out)
    progress.close()
    assert stream.getvalue() == "" and out.getvalue() == "ok  weave\n"


def test_start_prints_a_line_at_once_and_close_stops_the_clock():
    progress, _, stream = _progress(live=False)
    progress.start()
    try:
        assert "ETA 10 min 00 s (cost model)" in stream.getvalue()
    finally:
        progress.close()
    assert progress._thread is None


def test_a_pickled_copy_keeps_the_counts_and_prints_nothing():
    import pickle

    progress, _, stream = _progress(live=False)
    progress.start()
    progress.trial_started("a")
    copy = pickle.loads(pickle.dumps(progress))
    progress.close()
    assert (copy.total, copy.running, copy.enabled) == (20, 1, False)
    copy.trial_finished("a")
    copy.update(force=True)
    assert copy.done == 1 and stream.getvalue().count("\n") == 1
