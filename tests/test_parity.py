"""``python -m kdsearch.parity``: the comparison with the authors' code, and its bad input."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from torch import nn

from kdsearch import parity
from kdsearch.errors import UserError, run_cli


def test_a_missing_or_foreign_checkout_is_an_error_that_says_what_to_pass(tmp_path, capsys) -> None:
    assert run_cli(parity.main, ["--method", "rd4ad", "--official", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder; pass a checkout of the authors' repository" in capsys.readouterr().err
    assert run_cli(parity.main, ["--method", "rd4ad", "--official", str(tmp_path)]) == 2
    assert "resnet.py does not exist" in capsys.readouterr().err
    (tmp_path / "resnet.py").write_text("raise ImportError('needs something else')\n")
    (tmp_path / "de_resnet.py").write_text("\n")
    assert run_cli(parity.main, ["--method", "rd4ad", "--official", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot import" in err and "needs something else" in err


def test_weights_that_do_not_fit_are_named() -> None:
    with pytest.raises(UserError, match=r"decoder.stages.0.weight: shape \(4, 3, 1, 1\) against the authors' \(4, 2, 1, 1\)"):
        parity._copy_in_order(nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(2, 4, 1, bias=False), "decoder.stages.0")
    with pytest.raises(UserError, match="kdsearch has 2 tensors, the authors' module 1"):
        parity._copy_in_order(nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1, bias=False), "x")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("KDSEARCH_OFFICIAL_RD4AD"), reason="set KDSEARCH_OFFICIAL_RD4AD to a checkout")
def test_rd4ad_is_bit_identical_to_the_authors_code() -> None:
    rows = dict(parity.compare("rd4ad", Path(os.environ["KDSEARCH_OFFICIAL_RD4AD"]), "resnet18", 128, 2, 0))
    assert rows["gradients"] == 0 and rows["parameters after one Adam step"] == 0
    assert rows["anomaly map (their test.py's rule, float64 Gaussian)"] < 1e-6
    assert rows["init: largest |log(std ratio)| of trained convs, kdsearch/authors"] < 0.1
