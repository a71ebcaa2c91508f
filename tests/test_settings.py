"""A trial's settings: one ordered list of layers, each value with the layer it came from."""
from __future__ import annotations

import pytest

from kdsearch.ablate import main as ablate_main
from kdsearch.errors import UserError, run_cli
from kdsearch.search_axis import check_search_validation
from kdsearch.settings import explain, settings_for, single_trial
from kdsearch.spaces import load_search_space
from kdsearch.trial import canonical_settings, resolve


def test_later_layers_win_and_each_value_names_its_layer():
    space = load_search_space("adps")
    settings = settings_for("adps", profile="quick", space=space, user={"patch_k": 2, "epochs": 3, "method.lr": 0.01},
                            command_line={"category": "washer", "seed": 1}, axis=space.axis("k"), value="8")
    values = settings.values
    assert (values["patch_k"], settings.source_of("patch_k")) == (8, "axis k · row 8")  # the row beats --set
    assert (values["epochs"], settings.source_of("epochs")) == (3, "--set")  # --set beats the profile
    assert (values["lr"], settings.source_of("lr")) == (0.01, "--set")  # one spelling, whatever the user wrote
    assert (values["image_size"], settings.source_of("image_size")) == (128, "profile quick")
    assert settings.source_of("fusion") == "default" and "fusion" not in values
    assert settings.source_of("category") == "command line"
    # Explicit: what the user or the axis asked for, never what the profile sets.
    assert {"patch_k", "epochs", "lr", "category", "seed"} <= settings.explicit
    assert "image_size" not in settings.explicit and "backbone" not in settings.explicit
    trial = resolve(settings)
    assert (trial.method_config.patch_k, trial.train.epochs, trial.train.category) == (8, 3, "washer")


def test_a_profile_s_category_layer_applies_to_the_first_category_when_none_is_named():
    settings = settings_for("mrkd", profile="paper")
    assert settings.source_of("category") == "first category of mvtec"
    first = settings.values["category"]
    per_category = load_search_space("mrkd").profiles["paper"]["per_category"][first]
    name = next(iter(canonical_settings("mrkd", per_category)))
    assert settings.source_of(name) == f"profile paper · category {first}"
    # The same trial as naming the category on the command line.
    named = resolve(settings_for("mrkd", profile="paper", command_line={"category": first}))
    assert resolve(settings).identity == named.identity


def test_a_search_validates_every_epoch_on_held_out_images_unless_a_later_layer_undoes_it():
    space = load_search_space("rd4ad")
    axis = next(a for a in space.axes.values() if not a.is_grid)
    settings = settings_for("rd4ad", profile="paper", space=space, axis=axis, value=1e-3)
    assert space.profile("paper")["val_fraction"] == 0
    assert settings.values["val_fraction"] == 0.1 and settings.source_of("val_fraction") == "search validation"
    assert settings.source_of(axis.param) == f"axis {axis.name} · search sample"
    check_search_validation(axis, settings)
    undone = settings_for("rd4ad", profile="paper", space=space, user={"val_every": 2}, axis=axis, value=1e-3)
    with pytest.raises(UserError, match=r"remove val_every=2 \(--set\)"):
        check_search_validation(axis, undone)


def test_one_trial_refuses_an_explicit_setting_it_ignores_and_the_layers_alone_do_not():
    with pytest.raises(UserError, match="mask_ratio is set but nothing uses it"):
        single_trial("mrkd", None, {"flm": False, "mask_ratio": 0.3})
    trial = resolve(settings_for("mrkd", user={"flm": False, "mask_ratio": 0.3}))
    assert "mask_ratio" in trial.inert_settings and "mask_ratio" in trial.settings.explicit


def test_explain_prints_every_field_once_with_its_layer():
    trial = single_trial("adps", "smoke", {"patch_k": 4})
    lines = [line.split() for line in explain(trial)]
    assert ["patch_k", "=", "4", "←", "--set"] in lines
    assert ["epochs", "=", "1", "←", "profile", "smoke"] in lines
    assert ["eval_batch_size", "=", "32", "←", "default", "(TrainConfig)"] in lines
    import dataclasses

    fields = len(dataclasses.fields(trial.train)) - 1 + len(dataclasses.fields(trial.method_config)) + len(
        dataclasses.fields(trial.synthesis))
    assert sum("←" in line for line in lines) == fields  # every field once (the method's name heads its section)
    assert sum(line == ["adps:"] for line in lines) == 1 and ["synthesis:"] in lines


def test_dry_run_explain_names_each_row_s_layer(capsys, tmp_path):
    args = ["--paper", "adps", "--axis", "k", "--profile", "smoke", "--results", str(tmp_path)]
    assert run_cli(ablate_main, [*args, "--dry-run", "--explain", "--set", "epochs=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["patch_k", "=", "1", "←", "axis", "k", "·", "row", "1"] for line in out)
    assert any(line.split() == ["epochs", "=", "2", "←", "--set"] for line in out)
    assert "  row 16 differs: patch_k = 16  ← axis k · row 16" in out
    assert run_cli(ablate_main, [*args, "--explain"]) == 2
    assert "--explain goes with --dry-run" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
