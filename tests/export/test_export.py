"""Export (clean adapter folder) and merge (standalone model) on tiny models; the embedded model end to end."""

from __future__ import annotations

import json

import pytest

from tests.tiny import make_lora, make_run
from tuner.core.errors import ModelError, OutputExistsError, TunerError
from tuner.export.adapter import export_adapter
from tuner.export.hub import push_folder
from tuner.export.merge import merge_adapter
from tuner.export.modelfile import ollama_modelfile, template_gaps
from tuner.runs.adapters import locate_adapter


def logits(model, tokenizer, text="The capital of France is Paris."):
    import torch

    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


@pytest.fixture
def run_dir(tmp_path, tiny_llama_dir):
    return make_run(tmp_path, tiny_llama_dir)


def test_locate_adapter_run_checkpoint_and_errors(tmp_path, tiny_llama_dir):
    run = make_run(tmp_path, tiny_llama_dir)
    assert locate_adapter(run).adapter_dir == run / "adapter"
    assert locate_adapter(run).config["name"] == "identity"
    found = locate_adapter(run / "checkpoint-2")
    assert found.adapter_dir == run / "checkpoint-2" and found.run_dir == run
    no_final = make_run(tmp_path / "b", tiny_llama_dir, with_final=False)
    assert locate_adapter(no_final).adapter_dir == no_final / "checkpoint-4"
    with pytest.raises(TunerError, match="not a run folder"):
        locate_adapter(tmp_path)
    with pytest.raises(TunerError, match="no such folder"):
        locate_adapter(tmp_path / "missing")


def test_export_writes_a_clean_adapter_plain_peft_loads(tmp_path, run_dir, tiny_llama_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "export"
    result = export_adapter(run_dir / "checkpoint-4", out)
    assert result.out_dir == out
    names = sorted(p.name for p in out.iterdir())
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names
    assert "README.md" in names and "config.yaml" in names and "tokenizer.json" in names
    assert not [n for n in names if "optimizer" in n or "trainer_state" in n or n.startswith(".")]
    assert not list(tmp_path.glob(".export.*")), "staging folder left behind"

    card = (out / "README.md").read_text()
    assert str(tiny_llama_dir) in card and "data/identity.jsonl" in card and "identity" in card
    assert "1.25" in card and "1.5" in card  # final train and eval loss

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    reference = make_lora(tiny_llama_dir)
    torch.testing.assert_close(logits(loaded, tokenizer), logits(reference, tokenizer))


def test_export_refuses_existing_folder_without_force(tmp_path, run_dir):
    out = tmp_path / "export"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(OutputExistsError):
        export_adapter(run_dir, out)
    assert (out / "mine.txt").read_text() == "user data"
    # Overwrite replaces only what tuner made: a folder of the user's files is never deleted.
    with pytest.raises(TunerError, match=r"holds files this output does not write \(mine.txt\)"):
        export_adapter(run_dir, out, force=True)
    assert (out / "mine.txt").read_text() == "user data"
    fresh = tmp_path / "fresh"
    export_adapter(run_dir, fresh)
    (fresh / "README.md").write_text("edited")
    export_adapter(run_dir, fresh, force=True)  # an earlier export is replaced whole
    assert (fresh / "README.md").read_text() != "edited" and (fresh / "adapter_config.json").is_file()
    with pytest.raises(TunerError, match="must not be"):
        export_adapter(run_dir, run_dir / "adapter", force=True)


def test_merged_logits_equal_base_plus_adapter(tmp_path, run_dir, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path / "merged"
    result = merge_adapter(
        str(tiny_llama_dir), run_dir, out, dtype="fp32", max_shard_size="100KB", verify=False
    )
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    unmerged = make_lora(tiny_llama_dir)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    expected = logits(unmerged, tokenizer)
    assert not torch.allclose(logits(base, tokenizer), expected, atol=1e-3), "adapter must change the output"
    torch.testing.assert_close(logits(merged, tokenizer), expected, atol=1e-5, rtol=1e-5)

    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation = GenerationConfig.from_pretrained(str(out))
    assert eot in generation.eos_token_id and eot in result.eos_token_ids
    assert "<|im_start|>" in tokenizer.chat_template
    modelfile = (out / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "TEMPLATE" in modelfile


def test_merge_in_fp16_is_close(tmp_path, run_dir, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged16"
    merge_adapter(str(tiny_llama_dir), run_dir / "adapter", out, dtype="bf16", verify=False)
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert merged.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    expected = logits(make_lora(tiny_llama_dir), tokenizer)
    torch.testing.assert_close(logits(merged.float(), tokenizer), expected, atol=0.05, rtol=0.05)


def test_merge_refuses_bad_input(tmp_path, run_dir, tiny_llama_dir):
    with pytest.raises(TunerError, match="not a size"):
        merge_adapter(str(tiny_llama_dir), run_dir, tmp_path / "m", max_shard_size="lots")
    quantized = tmp_path / "q"
    quantized.mkdir()
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="unquantized|full-precision"):
        merge_adapter(str(quantized), run_dir, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_ollama_template_reproduces_chatml(tiny_tokenizer):
    from tuner.chat.text import resolve_chat_template

    template = resolve_chat_template(tiny_tokenizer)
    gaps = template_gaps(template.render)
    assert gaps["user>end"] == "<|im_end|>\n<|im_start|>assistant\n"
    assert gaps["start>system"] == "<|im_start|>system\n"
    # The Go template only joins gaps by neighbouring roles: check that this reproduces the Jinja
    # rendering of a conversation it was not derived from.
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Thanks"},
    ]
    rebuilt, prev = "", "start"
    for message in conversation:
        rebuilt += gaps[f"{prev}>{message['role']}"] + message["content"]
        prev = message["role"]
    rebuilt += gaps["user>end"]
    assert rebuilt == template.render(conversation, add_generation_prompt=True)
    modelfile = ollama_modelfile(template)
    assert '{{ "<|im_end|>\\n<|im_start|>assistant\\n" }}' in modelfile
    assert modelfile.count('(eq .Role "user")') == 3


def test_every_named_template_translates_to_an_ollama_template(tiny_tokenizer):
    from tuner.data.templates import get_template, list_templates

    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Thanks"},
    ]
    for name in list_templates():
        template = get_template(name, tiny_tokenizer)
        gaps = template_gaps(template.render)
        assert gaps is not None, name
        rebuilt = "".join(
            gaps[f"{prev}>{m['role']}"] + m["content"]
            for prev, m in zip(["start", "system", "user", "assistant"], conversation, strict=True)
        )
        assert rebuilt + gaps["user>end"] == template.render(conversation, add_generation_prompt=True), name
    llama2 = ollama_modelfile(get_template("llama2_chat", tiny_tokenizer), bos_token="<s>")
    assert '{{ "[INST] " }}' in llama2 and '{{ " </s><s>[INST] " }}' in llama2  # BOS left to llama.cpp


def test_push_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunerError, match="HF_HUB_OFFLINE"):
        push_folder(tmp_path, "me/model")


def test_cli_export_and_merge(tmp_path, run_dir, tiny_llama_dir, capsys):
    from tuner.__main__ import main

    out = tmp_path / "cli-export"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    assert main(["export", str(run_dir), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    merged = tmp_path / "cli-merged"
    code = main(["merge", str(tiny_llama_dir), str(out), str(merged), "--dtype", "fp32", "--no-verify"])
    assert code == 0 and (merged / "config.json").is_file()
    assert main(["merge", str(tiny_llama_dir), str(out), str(tmp_path / "x"), "--push", "me/x"]) == 2
    assert "cannot upload" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_embedded_model_export_merge_reload(tmp_path, default_model_dir):
    """LoRA on the embedded model -> export -> merge (verified) -> plain transformers answers as base+adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tmp_path, default_model_dir, std=0.002)
    exported = tmp_path / "exported"
    export_adapter(run, exported)
    merged_dir = tmp_path / "merged"
    result = merge_adapter(
        str(default_model_dir), exported, merged_dir, dtype="fp32", verify_max_new_tokens=64
    )
    assert result.ended_on_end_of_turn and result.reply

    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32)
    unmerged = PeftModel.from_pretrained(base, str(exported)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, unmerged(**ids).logits, atol=2e-4, rtol=1e-4)
        a = merged.generate(**ids, max_new_tokens=24, do_sample=False)
        b = unmerged.generate(**ids, max_new_tokens=24, do_sample=False)
    assert a.tolist() == b.tolist()


def test_export_and_merge_on_a_full_disk_say_so_and_leave_no_folder(tmp_path, run_dir, tiny_llama_dir, monkeypatch, capsys):
    import errno
    import shutil

    import transformers.modeling_utils

    from tuner.__main__ import main
    from tuner.export import adapter as export_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[-1]))

    real_copy = shutil.copy2
    monkeypatch.setattr(export_module.shutil, "copy2", full)
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out)]) == 2
    assert "the disk is full; free some space" in capsys.readouterr().err
    monkeypatch.setattr(export_module.shutil, "copy2", real_copy)
    assert main(["export", str(run_dir), str(out)]) == 0

    def rust_full(*args, **kwargs):  # how safetensors reports ENOSPC: a text, not an OSError
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "x" })')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", rust_full)
    merged = tmp_path / "merged"
    code = main(["merge", str(tiny_llama_dir), str(out), str(merged), "--dtype", "fp32", "--no-verify"])
    assert code == 2 and "the disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".merged", "merged"))) == []


@pytest.mark.parametrize("size", ["0", 0, "0GB", "0.0MB"])
def test_a_zero_shard_size_is_refused(size):
    from tuner.export.merge import check_shard_size

    with pytest.raises(TunerError, match="must be more than 0"):
        check_shard_size(size)
