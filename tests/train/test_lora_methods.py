"""LoRA variants as config keys: DoRA, rsLoRA and PiSSA initialisation train through tuner's engine,
and the saved adapter on the original base gives the same logits as the merged model. PiSSA's saved
adapter is the plain LoRA that fits the original base (tuner.models.pissa)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny import make_config, write_data
from tuner.config.schema import TrainConfig
from tuner.config.validate import validate


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "keys, peft_keys",
    [
        ({"use_dora": True}, {"use_dora": True, "r": 8}),
        ({"use_rslora": True}, {"use_rslora": True, "r": 8}),
        ({"lora_init": "pissa"}, {"init_lora_weights": True, "r": 16, "lora_alpha": 32}),
    ],
    ids=["dora", "rslora", "pissa"],
)
def test_variant_trains_and_merged_equals_unmerged(tmp_path, tiny_llama_dir, keys, peft_keys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuner.export.merge import merge_adapter
    from tuner.train.run import train

    data = write_data(tmp_path / "d.jsonl")
    config = make_config(
        tiny_llama_dir, data, max_steps=2, save_steps=10, output_dir=str(tmp_path / "run"), **keys
    )
    result = train(config)
    assert result.status == "completed"
    adapter = result.output_dir
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert {k: saved[k] for k in peft_keys} == peft_keys

    ids = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    plain = logits(base, ids)
    unmerged = logits(PeftModel.from_pretrained(base, str(adapter)).eval(), ids)
    assert not torch.allclose(unmerged, plain, atol=1e-4), "two steps must change the model"
    merged_dir = merge_adapter(
        str(tiny_llama_dir), adapter, tmp_path / "merged", dtype="fp32", verify=False
    ).out_dir
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    torch.testing.assert_close(logits(merged, ids), unmerged, atol=1e-4, rtol=1e-4)


def test_pissa_saved_as_lora_equals_the_trained_pissa_model(tmp_path, tiny_llama_dir):
    # The live PiSSA model runs on the residual base; its saved adapter, converted, must give the same
    # logits on the original base, loaded without redoing the SVD.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuner.models.load import add_lora
    from tuner.models.pissa import initial_adapter, save_as_lora

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    model = add_lora(model, r=4, alpha=8, dropout=0.0, init="pissa", rslora=True)
    torch.manual_seed(0)
    with torch.no_grad():  # stands in for training: every LoRA weight moves
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.05)
    model.eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11]])
    expected = logits(model, ids)
    model.save_pretrained(str(tmp_path / "adapter"))
    save_as_lora(tmp_path / "adapter", initial_adapter(model))
    original = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    reloaded = PeftModel.from_pretrained(original, str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=1e-4, rtol=1e-4)
    with reloaded.disable_adapter():  # the original base was left as it was (no SVD residual)
        torch.testing.assert_close(
            logits(reloaded, ids),
            logits(
                AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval(), ids
            ),
        )


def test_validator_explains_the_variants():
    def problems(**keys):
        return validate(TrainConfig(data_path="x.jsonl", **keys), check_files=False)

    assert problems(use_dora=True, use_rslora=True) == []
    assert any("use method lora (or qlora) with use_dora: true" in p for p in problems(method="dora"))
    assert any("lora_init: pissa" in p for p in problems(method="pissa"))
    assert any("full-precision base" in p for p in problems(method="qlora", lora_init="pissa"))
    assert any("not one of default, pissa" in p for p in problems(lora_init="olora"))
    assert any("method full" in p for p in problems(method="full", use_dora=True))
    assert any("pick one" in p for p in problems(use_dora=True, lora_init="pissa"))
