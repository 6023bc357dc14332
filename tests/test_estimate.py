"""The memory estimate against recorded GPU measurements (bench/results): within 15% of the whole-device
memory a run used, which is what decides whether it fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.estimate import Hardware, estimate, shape_from_config

REPO = Path(__file__).resolve().parent.parent
H100 = Hardware(device="cuda", name="NVIDIA H100 80GB HBM3", memory_gib=79.2, cpu_count=16)
# Llama-2-7B's config.json values (the benchmark's random-init shape).
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}


# Runs that measured one configuration per process: their whole-device figure is not inflated by the
# memory an earlier configuration of the same process left behind.
ONE_PER_PROCESS = {"2026-11-28-h100-80gb-hbm3.json", "2026-11-28-h100-80gb-hbm3-profile.json"}


def measured_rows(files=None):
    rows = []
    for path in sorted((REPO / "bench" / "results").glob("*.json")):
        if files is not None and path.name not in files:
            continue
        for row in json.loads(path.read_text()):
            if (
                row.get("model") == "llama2-7b"
                and row.get("method") == "qlora"
                and row.get("tool") == "tuner"
                and not row.get("error")
                and not row.get("invalid")
                and row.get("device_used_gib")
            ):
                rows.append(row)
    return rows


def test_lora_parameter_count_matches_peft():
    from tuner.estimate import lora_params

    # peft reported 159,907,840 trainable parameters for r64 on all linear layers of Llama-2-7B.
    assert lora_params(shape_from_config(LLAMA2_7B), 64) == 159_907_840


def _estimate(row):
    config = {
        "method": "qlora",
        "max_length": row["seq"],
        "batch_size": 1,
        "lora_r": 64,
        "gradient_checkpointing": row.get("checkpointing") not in (None, "none", "off"),
    }
    return estimate(config, shape_from_config(LLAMA2_7B), H100)


def _label(row):
    return f"{row['seq']}-{row.get('variant') or 'default'}-{row.get('checkpointing')}"


@pytest.mark.parametrize("row", measured_rows(), ids=_label)
def test_estimate_within_15_percent_of_measured_peak_allocated(row):
    got, measured = _estimate(row).allocated_gib, row["peak_gib"]
    assert abs(got - measured) / measured <= 0.15, (got, measured)


@pytest.mark.parametrize("row", measured_rows(ONE_PER_PROCESS), ids=_label)
def test_estimate_within_15_percent_of_measured_device_memory(row):
    got, measured = _estimate(row).total_gib, row["device_used_gib"]
    assert abs(got - measured) / measured <= 0.15, (got, measured)
