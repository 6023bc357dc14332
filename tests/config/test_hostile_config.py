"""Configs as users (and attackers) write them: foreign key names, typos, overflowing numbers,
repeated --set keys, and YAML crafted to explode."""

from __future__ import annotations

import time

import pytest

from tuner.__main__ import main
from tuner.config.files import apply_overrides, config_from_dict, load_config
from tuner.core.errors import ConfigError

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
evaluation_inputs: [*i,*i,*i,*i,*i,*i,*i,*i,*i]
"""


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config(path)
    assert main(["validate-config", str(path)]) == 1
    assert "expands to more than" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="expands to more than"):
        apply_overrides(
            {},
            [
                "evaluation_inputs="
                + "[&a [x,x,x,x,x,x,x,x,x,x], "
                + ", ".join(
                    f"&{n} [" + ",".join([f"*{p}"] * 10) + "]"
                    for p, n in zip("abcdef", "bcdefg", strict=True)
                )
                + "]"
            ],
        )
    assert time.monotonic() - started < 10  # unbounded, this took minutes and gigabytes


def test_an_oversized_config_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("system: " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="too large for a config"):
        load_config(path)


@pytest.mark.parametrize(
    "key, ours",
    [
        ("learning_rate", "lr"),
        ("num_train_epochs", "max_epochs"),
        ("per_device_train_batch_size", "batch_size"),
        ("gradient_accumulation_steps", "accumulative_counts"),
        ("lora_rank", "lora_r"),
        ("cutoff_len", "max_length"),
        ("lerning_rate", "lr"),  # a misspelling of the foreign name
        ("gradient_accumulation_step", "accumulative_counts"),
        ("max_lenght", "max_length"),  # a misspelling of ours
    ],
)
def test_foreign_and_misspelled_keys_get_a_did_you_mean(key, ours):
    with pytest.raises(ConfigError) as error:
        config_from_dict({"data_path": "a.jsonl", key: 1})
    assert f"{key}: unknown key; did you mean '{ours}'" in str(error.value)


def test_an_overflowing_number_says_so_not_got_str():
    for value in ("1e999", "-1e999", ".nan"):
        with pytest.raises(ConfigError) as error:
            apply_overrides(config_from_dict({"data_path": "a.jsonl"}), [f"lr={value}"])
        assert "lr: " in str(error.value) and "not a finite number" in str(error.value)
        assert "got str" not in str(error.value)


def test_a_repeated_set_key_is_refused_not_silently_the_last(tmp_path):
    with pytest.raises(ConfigError, match="--set lr given more than once"):
        apply_overrides({"data_path": "a.jsonl"}, ["lr=1e-4", "max_steps=3", "lr=2e-4"])
