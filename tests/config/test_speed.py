"""The speed settings: seven typed settings read once from the environment, each with its variable,
its default and the measurement behind the default."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tuner.config.speed import SpeedSettings, reference
from tuner.core.errors import TunerError

REPO_RESULTS = "bench/results/"


def test_the_defaults_without_any_variable():
    assert SpeedSettings.from_env({}).as_dict() == {
        "attention": "tuner",
        "fused_lora": True,
        "seeded_dropout": "on",
        "dropout_product": False,
        "rebuild_activations": False,
        "cuda_graphs": True,
        "liger": "wide",
        "lean_steps": True,
        "kbit_upcast": False,
        "gpu_memory_gib": None,
    }
    assert SpeedSettings.from_env({}).changed() == {}


def test_each_variable_sets_its_setting_and_nothing_else():
    environ = {
        "TUNER_ATTENTION": "SDPA ",
        "TUNER_FUSED_LORA": "off",
        "TUNER_CUDA_GRAPHS": "off",
        "TUNER_LIGER": "on",
        "TUNER_LEAN_STEPS": "off",
        "TUNER_KBIT_UPCAST": "on",
        "TUNER_REBUILD_ACTIVATIONS": "on",
        "TUNER_DROPOUT_PRODUCT": "on",
        "TUNER_GPU_MEMORY_GIB": "12",
        "TUNER_VARLEN": "off",  # a switch of before: no longer read
    }
    assert SpeedSettings.from_env(environ).changed() == {
        "attention": "sdpa",
        "fused_lora": False,
        "cuda_graphs": False,
        "liger": "on",
        "lean_steps": False,
        "kbit_upcast": True,
        "dropout_product": True,
        "rebuild_activations": True,
        "gpu_memory_gib": 12.0,
    }


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TUNER_LIGER", "maybe", "TUNER_LIGER='maybe': use one of wide, on, off"),
        ("TUNER_FUSED_LORA", "yes", "TUNER_FUSED_LORA='yes': use one of on, off"),
        ("TUNER_SEEDED_DROPOUT", "eager", "TUNER_SEEDED_DROPOUT='eager': use one of on, always, off"),
        ("TUNER_ATTENTION", "flash", "TUNER_ATTENTION='flash': use one of tuner, sdpa"),
        ("TUNER_GPU_MEMORY_GIB", "eighty", "TUNER_GPU_MEMORY_GIB='eighty': give the GiB of GPU memory"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_to_give(variable, value, message):
    with pytest.raises(TunerError, match=re.escape(message)):
        SpeedSettings.from_env({variable: value})


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SpeedSettings().liger = "off"


def test_every_setting_says_what_it_does_and_what_was_measured_with_its_results_file():
    rows = reference()
    assert [row["setting"] for row in rows] == [f.name for f in dataclasses.fields(SpeedSettings)]
    for row in rows:
        assert row["env"].startswith("TUNER_") and row["does"] and REPO_RESULTS in row["measured"], row
