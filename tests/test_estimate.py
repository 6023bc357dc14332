"""The memory estimate against recorded GPU measurements (bench/results): within 15% of the whole-device
memory a run used, which is what decides whether it fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.estimate import Hardware, estimate, shape_from_config

REPO = Path(__file__).resolve().parent.parent
H100 = Hardware(device="cuda", name="NVIDIA H100 80GB HBM3", memory_gib=79.2, cpu_count=16)
# The config.json values of the benchmark's random-init shapes (bench/README.md).
SHAPES = {
    "llama2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    "qwen2.5-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}
LLAMA2_7B = SHAPES["llama2-7b"]


# Runs that measured one configuration per process: their whole-device figure is not inflated by the
# memory an earlier configuration of the same process left behind.
ONE_PER_PROCESS = {
    "2026-11-28-h100-80gb-hbm3.json",
    "2026-11-28-h100-80gb-hbm3-profile.json",
    "2026-11-28-h100-80gb-hbm3-defaults.json",
    "2026-11-28-h100-80gb-hbm3-long-context.json",
}


def measured_rows(files=None):
    rows = []
    for path in sorted((REPO / "bench" / "results").glob("*.json")):
        if files is not None and path.name not in files:
            continue
        for row in json.loads(path.read_text()):
            if (
                row.get("model") in SHAPES
                and row.get("tool") == "tuner"
                and not row.get("error")
                and not row.get("invalid")
                and row.get("device_used_gib")
            ):
                rows.append(row)
    return rows


def test_lora_parameter_count_matches_peft():
    from tuner.estimate import lora_params

    # peft reported these trainable parameter counts for r64 on all linear layers (bench rows).
    assert lora_params(shape_from_config(SHAPES["llama2-7b"]), 64) == 159_907_840
    assert lora_params(shape_from_config(SHAPES["llama3-8b"]), 64) == 167_772_160


def _estimate(row):
    config = {
        "method": row["method"],
        "max_length": row.get("sample_len") or row["seq"],
        "tokens_per_step": row["seq"],
        "batch_size": 1,
        "lora_r": 64,
        "gradient_checkpointing": row.get("checkpointing") not in (None, "none", "off"),
    }
    switches = row.get("switches") or {}
    liger = bool(row.get("tuner_liger") or row.get("liger"))
    upcast = switches.get("TUNER_KBIT_UPCAST", "on") == "on"  # rows before the switch: peft's upcast
    return estimate(config, shape_from_config(SHAPES[row["model"]]), H100, liger=liger, upcast=upcast)


def _label(row):
    return f"{row['model']}-{row['method']}-{row['seq']}-{row.get('variant') or 'default'}-{row.get('checkpointing')}"


def test_every_recorded_shape_is_checked():
    assert {r["model"] for r in measured_rows()} == set(SHAPES)


@pytest.mark.parametrize("row", measured_rows(), ids=_label)
def test_estimate_within_15_percent_of_measured_peak_allocated(row):
    got, measured = _estimate(row).allocated_gib, row["peak_gib"]
    assert abs(got - measured) / measured <= 0.15, (got, measured)


@pytest.mark.parametrize("row", measured_rows(ONE_PER_PROCESS), ids=_label)
def test_estimate_within_15_percent_of_measured_device_memory(row):
    got, measured = _estimate(row).total_gib, row["device_used_gib"]
    assert abs(got - measured) / measured <= 0.15, (got, measured)
