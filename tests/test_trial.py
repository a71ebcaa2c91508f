"""One single_trial(): sections, synthesis settings, validation, and keys that stay put."""
from __future__ import annotations

import dataclasses

import pytest

from kdsearch.data import list_categories
from kdsearch.errors import UserError, run_cli
from kdsearch.plan import plan
from kdsearch.synthesis import SynthesisConfig
from kdsearch.trial import TrainConfig, canonical_settings
from kdsearch.settings import single_trial


def test_resolve_layers_defaults_profile_and_settings() -> None:
    trial = single_trial("mrkd", "smoke", {"lr": 0.01, "train.epochs": 3})
    assert trial.train.method == "mrkd" and trial.train.epochs == 3 and trial.train.image_size == 64
    assert trial.method_config.lr == 0.01 and trial.method_config.alpha == 1.0  # the YAML's default
    assert trial.train.category == "weave"  # the profile's category
    assert single_trial("rd4ad", None, {}).train.category == list_categories("synthetic")[0]  # none asked: the first
    assert trial.synthesis == SynthesisConfig(kind="nsa", probability=1.0, foreground="none")
    with pytest.raises(dataclasses.FrozenInstanceError):
        trial.train = TrainConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        trial.train.epochs = 9  # type: ignore[misc]


def test_sections_spell_the_same_setting_one_way() -> None:
    nested = {"train": {"epochs": 2}, "method": {"lr": 0.1}, "synthesis": {"perlin_threshold": 0.3}}
    dotted = {"train.epochs": 2, "method.lr": 0.1, "synthesis.perlin_threshold": 0.3}
    bare = {"epochs": 2, "lr": 0.1, "synthesis.perlin_threshold": 0.3}
    assert canonical_settings("adps", nested) == canonical_settings("adps", dotted) == bare
    # A later layer wins whatever spelling either used.
    assert single_trial("adps", "smoke", {"method.patch_k": 4}).method_config.patch_k == 4


def test_synthesis_settings_reach_the_synthesizer_and_the_key(tmp_path) -> None:
    trial = single_trial("adps", "smoke", {"synthesis.perlin_threshold": 0.3, "synthesis.beta_range": [0.2, 0.8]})
    assert trial.synthesis.perlin_threshold == 0.3 and trial.synthesis.beta_range == (0.2, 0.8)
    assert trial.synthesis.kind == "draem" and trial.synthesis.probability == trial.method_config.anomaly_probability
    assert trial.identity["synthesis"]["beta_range"] == [0.2, 0.8] and trial.identity["synthesis"]["perlin_threshold"] == 0.3
    default = plan("adps", "k", profile="smoke", values="8", results_dir=tmp_path).trainings[0]
    same = plan("adps", "k", profile="smoke", values="8", results_dir=tmp_path,
                extra={"synthesis.perlin_threshold": 0.5}).trainings[0]
    changed = plan("adps", "k", profile="smoke", values="8", results_dir=tmp_path,
                   extra={"synthesis": {"perlin_threshold": 0.3}}).trainings[0]
    assert default.identity["synthesis"]["perlin_threshold"] == 0.5
    assert same.trial_key == default.trial_key  # the default, said aloud: the same trial
    assert changed.trial_key != default.trial_key and changed.identity["synthesis"]["perlin_threshold"] == 0.3


@pytest.mark.parametrize("settings, message", [
    ({"synthesis.perlin_threshold": 1.5}, "synthesis.perlin_threshold must be in (0, 1)"),
    ({"synthesis.perlin_min_scale": 6}, "perlin_min_scale < perlin_max_scale"),
    ({"synthesis.beta_range": [0.9, 0.1]}, "beta_range must be [low, high]"),
    ({"synthesis.texture_count": "many"}, "texture_count must be an integer"),
    ({"synthesis.kind": "nsa"}, "synthesis.kind is decided by adps's own fields"),
    ({"synthesis.nope": 1}, "unknown setting 'synthesis.nope' (synthesis fields: synthesis.texture_count,"),
    ({"synthesis.perlin": 0.3}, "did you mean synthesis.perlin_threshold or synthesis.perlin_min_scale"),
    ({"epoch": 3}, "unknown setting 'epoch'; did you mean epochs?"),
    ({"train.lr": 0.1}, "unknown setting 'train.lr'"),
    ({"patch_kk": 4}, "unknown setting 'patch_kk'"),
])
def test_bad_settings_are_user_errors(settings: dict, message: str) -> None:
    with pytest.raises(UserError) as caught:
        single_trial("adps", "smoke", settings)
    assert message in str(caught.value)


def test_synthesis_a_trial_ignores_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(UserError, match=r"synthesis.nsa_mode is set but nothing uses it: the anomalies are DRAEM's"):
        plan("adps", "k", profile="smoke", extra={"synthesis.nsa_mode": "mixed"}, results_dir=tmp_path)
    with pytest.raises(UserError, match=r"synthesis.perlin_threshold is set but nothing uses it: rd4ad makes no"):
        plan("rd4ad", "backbone", profile="smoke", extra={"synthesis.perlin_threshold": 0.3}, results_dir=tmp_path)
    # MRKD's alpha = 0 row makes no anomalies: a note for that row, not an error.
    job = plan("mrkd", "alpha", profile="smoke", extra={"synthesis.nsa_mode": "mixed"}, results_dir=tmp_path)
    assert any(note.startswith("synthesis.nsa_mode is ignored by row 0") for note in job.warnings), job.warnings


def test_train_cli_sets_a_synthesis_field_and_refuses_a_bad_one(capsys) -> None:
    from kdsearch.train import main

    base = ["--method", "mrkd", "--profile", "smoke", "--epochs", "1", "--json"]
    assert run_cli(main, [*base, "--set", "synthesis.nsa_num_patches=[1, 1]"]) == 0
    assert run_cli(main, [*base, "--set", "synthesis.grabcut_iterations=5"]) == 2
    assert "synthesis.grabcut_iterations is set but nothing uses it: the foreground is 'none'" in capsys.readouterr().err


def test_a_search_space_axis_can_vary_a_synthesis_field(tmp_path, monkeypatch) -> None:
    import yaml

    from kdsearch.spaces import SEARCH_SPACES_ENV, spaces_dir

    raw = yaml.safe_load((spaces_dir() / "adps.yaml").read_text())
    raw["axes"] = {"perlin": {"table": "threshold", "param": "synthesis.perlin_threshold", "values": [0.3, 0.5]},
                   "opacity": {"table": "beta", "values": {"faint": {"synthesis": {"beta_range": [0.1, 0.3]}},
                                                           "paper": {}}}}
    folder = tmp_path / "spaces"
    folder.mkdir()
    (folder / "adps.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv(SEARCH_SPACES_ENV, str(folder))
    perlin = plan("adps", "perlin", profile="smoke", results_dir=tmp_path)
    assert [t.trial.synthesis.perlin_threshold for t in perlin.trainings] == [0.3, 0.5]
    assert [t.value_numeric for t in perlin.trainings] == [0.3, 0.5]
    opacity = plan("adps", "opacity", profile="smoke", results_dir=tmp_path)
    assert [t.trial.synthesis.beta_range for t in opacity.trainings] == [(0.1, 0.3), (0.0, 0.8)]
    keys = {t.trial_key for t in perlin.trainings + opacity.trainings}
    assert len(keys) == 4


def test_a_trials_configs_cannot_change_under_its_key() -> None:
    from kdsearch.methods import create_method

    trial = single_trial("mrkd", "smoke", {"backbone": "resnet18"})
    method = create_method(trial.train.method, trial.train.image_size, trial.method_config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.config.gaussian_sigma = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        trial.synthesis.nsa_num_patches = (1, 1)
    assert method.config.gaussian_sigma == 4.0 and trial.synthesis.nsa_num_patches == (1, 4)
