"""The anchor_kl_weight key (tuner.train.anchor): a number >= 0, refused with a reason where the
adapter-off model is not the base model (a full fine-tune, PiSSA) or there are no conversations."""

from __future__ import annotations

import pytest

from tuner.config.files import load_config
from tuner.config.schema import TrainConfig
from tuner.config.validate import validate


def problems(**keys):
    return [p for p in validate(TrainConfig(data_path="d.jsonl", **keys), check_files=False) if "anchor" in p]


def test_off_by_default_and_any_number_from_zero_is_accepted():
    assert TrainConfig().anchor_kl_weight == 0.0
    for weight in (0, 0.0, 0.5, 1, 4.0):
        assert problems(anchor_kl_weight=weight) == []


@pytest.mark.parametrize(
    "weight, says",
    [
        (-0.5, "must be a number >= 0"),
        (float("nan"), "must be a number >= 0"),
        (float("inf"), "must be a number >= 0"),
        ("1", "expected number, got str"),
        (True, "expected number, got bool"),
    ],
)
def test_a_wrong_value_is_named(weight, says):
    (problem,) = problems(anchor_kl_weight=weight)
    assert problem.startswith("anchor_kl_weight: ") and says in problem


@pytest.mark.parametrize(
    "keys, says",
    [
        ({"method": "full"}, "needs method lora or qlora"),
        ({"lora_init": "pissa"}, "lora_init pissa changes the base weights"),
        ({"task": "pretrain", "data_format": "pretrain"}, "task pretrain has none"),
    ],
)
def test_refused_where_the_adapter_off_model_is_not_the_base(keys, says):
    (problem,) = problems(anchor_kl_weight=1.0, **keys)
    assert says in problem
    assert problems(anchor_kl_weight=0.0, **keys) == []  # off: nothing to refuse


def test_the_key_reads_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data_path: d.jsonl\nanchor_kl_weight: 0.5\n", encoding="utf-8")
    assert load_config(path).anchor_kl_weight == 0.5
    assert load_config(path, overrides=["anchor_kl_weight=2"]).anchor_kl_weight == 2


def test_anchor_answers_is_one_of_its_modes_and_kl_needs_the_weight():
    assert TrainConfig().anchor_answers == "auto"
    for how in ("auto", "text", "off"):
        assert problems(anchor_answers=how) == []
    assert problems(anchor_answers="kl", anchor_kl_weight=2.0) == []
    (problem,) = problems(anchor_answers="kl")
    assert problem == "anchor_answers: kl needs anchor_kl_weight > 0 (the weight of the KL term)"
    (problem,) = problems(anchor_answers="of")
    assert problem.startswith("anchor_answers: 'of' is not one of auto, text, kl, off") and "off" in problem
