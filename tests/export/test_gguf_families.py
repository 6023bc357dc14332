"""GGUF export of the families whose llama.cpp layout differs from Llama 3's: Mistral 7B v0.3 (llama
architecture, SentencePiece vocabulary), Gemma 2 and Gemma 3 (norms stored plus one, tied output,
soft-capping and sliding-window keys), Phi-3.5 and Phi-4-mini (fused qkv / gate_up, partial rotary,
long-context rope factors; SentencePiece and GPT-4o-split BPE vocabularies).

Each family is a tiny random model built here (tests/tiny.py, no hub) with its kind of tokenizer and
its preset's chat template. Where transformers loads the architecture back from a GGUF (Mistral,
Gemma 2, Gemma 3, Phi-3.5) its logits must equal the source model's within the type's tolerance.
Phi-4-mini's shape is what transformers' GGUF loader cannot read back (it reads neither
rope.dimension_count nor rope scaling for phi3), so its file is read with ``gguf.GGUFReader``: tensor
names, shapes and dequantized values against the source weights (in llama.cpp's layout, written out
here independently), and the metadata keys; every family gets that check too. For every family: the
GGUF's tokenizer gives the training prompt's ids, the chat template in the metadata renders training's
prompt, its end-of-turn token is the end-of-generation token, and a merge of a LoRA run with ``--gguf``
writes the merged weights (the merged model's logits back through transformers; Phi-4-mini's fused qkv)
and a Modelfile with the family's template and stops. What llama.cpp would run differently is refused.
llama.cpp itself reads these files in test_gguf_llama_cpp.py (given a llama.cpp build)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tiny import GGUF_FAMILIES, make_run, save_family_model
from tuner.export.gguf import TOLERANCE, write_gguf

CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is the capital of France? 12345 你好 and more words"},
]
ROUND_TRIP = ("mistral", "gemma2", "gemma3", "phi3_5")  # transformers loads these archs back from a GGUF
SENTENCEPIECE = ("mistral", "gemma2", "gemma3", "phi3_5")
ARCH = {"mistral": "llama", "gemma2": "gemma2", "gemma3": "gemma3", "phi3_5": "phi3", "phi4_mini": "phi3"}


class Source:
    """A tiny family model folder, its tokenizer, training's template and prompt, and its logits."""

    def __init__(self, name, folder):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tuner.data.templates import get_template

        self.name, self.folder = name, folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.template = get_template(GGUF_FAMILIES[name]["template"], self.tokenizer)
        self.prompt = self.template.render(CONVERSATION, add_generation_prompt=True)
        self.ids = self.tokenizer(self.prompt, add_special_tokens=False)["input_ids"]
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            self.logits = model(input_ids=torch.tensor([self.ids])).logits
        self.config = model.config
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    made = {}

    def get(name) -> Source:
        if name not in made:
            # not named after the family: transformers reads a GGUF named exactly "mistral" as its own
            # mistral type, which its GGUF loader then cannot map
            made[name] = Source(name, save_family_model(name, tmp_path_factory.mktemp(name) / "model"))
        return made[name]

    return get


def fields(path) -> dict:
    import gguf

    return {key: field.contents() for key, field in gguf.GGUFReader(str(path)).fields.items()}


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_logits_match_after_a_transformers_round_trip(sources, name, kind):
    from transformers import AutoModelForCausalLM

    source = sources(name)
    path = write_gguf(source.folder, source.folder / f"{kind}.gguf", kind=kind, force=True).path
    model = AutoModelForCausalLM.from_pretrained(str(source.folder), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        got = model.eval()(input_ids=torch.tensor([source.ids])).logits
    worst = (got - source.logits).abs().max().item()
    assert worst <= TOLERANCE[kind], f"{name} {kind}: logits differ by {worst}"
    if kind != "f32":
        assert worst > 0  # the type was really applied


def _expected_tensors(source: Source) -> dict:
    """GGUF name -> array as llama.cpp wants it, from the source weights (written out per family
    here, independently of tuner.export.gguf)."""

    config, name = source.config, source.name
    prefix = "model.layers.{}."
    per_layer = {
        "input_layernorm.weight": "attn_norm",
        "self_attn.o_proj.weight": "attn_output",
        "mlp.down_proj.weight": "ffn_down",
    }
    if name.startswith("phi"):
        per_layer |= {
            "self_attn.qkv_proj.weight": "attn_qkv",
            "mlp.gate_up_proj.weight": "ffn_up",
            "post_attention_layernorm.weight": "ffn_norm",
        }
    else:
        per_layer |= {
            "self_attn.q_proj.weight": "attn_q",
            "self_attn.k_proj.weight": "attn_k",
            "self_attn.v_proj.weight": "attn_v",
            "mlp.gate_proj.weight": "ffn_gate",
            "mlp.up_proj.weight": "ffn_up",
        }
    if name.startswith("gemma"):
        per_layer |= {
            "post_attention_layernorm.weight": "post_attention_norm",
            "pre_feedforward_layernorm.weight": "ffn_norm",
            "post_feedforward_layernorm.weight": "post_ffw_norm",
        }
    elif name == "mistral":
        per_layer["post_attention_layernorm.weight"] = "ffn_norm"
    if name == "gemma3":
        per_layer |= {"self_attn.q_norm.weight": "attn_q_norm", "self_attn.k_norm.weight": "attn_k_norm"}
    expected = {"token_embd.weight": source.weights["model.embed_tokens.weight"]}
    expected["output_norm.weight"] = source.weights["model.norm.weight"]
    if not config.tie_word_embeddings:
        expected["output.weight"] = source.weights["lm_head.weight"]
    for layer in range(config.num_hidden_layers):
        for hf, gg in per_layer.items():
            expected[f"blk.{layer}.{gg}.weight"] = source.weights[prefix.format(layer) + hf]
    out = {}
    for key, tensor in expected.items():
        array = tensor.float().numpy()
        if name.startswith("gemma") and key.endswith("norm.weight"):
            array = array + 1.0  # llama.cpp multiplies by the stored weight, transformers by 1 + weight
        if name == "mistral" and (".attn_q." in key or ".attn_k." in key):
            heads = config.num_attention_heads if ".attn_q." in key else config.num_key_value_heads
            half = array.shape[0] // heads // 2  # llama's rotary halves interleaved, per head
            array = array.reshape(heads, 2, half, -1).transpose(0, 2, 1, 3).reshape(array.shape)
        out[key] = array
    if name == "phi4_mini":
        rope = config.rope_parameters
        out["rope_factors_long.weight"] = np.array(rope["long_factor"], dtype=np.float32)
        out["rope_factors_short.weight"] = np.array(rope["short_factor"], dtype=np.float32)
    return out


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
@pytest.mark.parametrize("name", sorted(GGUF_FAMILIES))
def test_tensors_are_the_source_weights_in_llama_cpp_layout(sources, name, kind):
    import gguf

    source = sources(name)
    path = write_gguf(source.folder, source.folder / f"read-{kind}.gguf", kind=kind, force=True).path
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    expected = _expected_tensors(source)
    assert sorted(tensors) == sorted(expected)
    for key, want in expected.items():
        tensor = tensors[key]
        assert tuple(int(n) for n in reversed(tensor.shape)) == want.shape, key  # ggml lists dims inner first
        got = gguf.dequantize(tensor.data, tensor.tensor_type).reshape(want.shape)
        if kind == "f32" or want.ndim == 1:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=key)
        else:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0, key
            scale = np.abs(want).max(axis=-1, keepdims=True) / 127  # Q8_0: 8 bits per value per block
            assert (np.abs(got - want) <= scale + 1e-6).all(), key


@pytest.mark.parametrize("name", sorted(GGUF_FAMILIES))
def test_tokenizer_template_and_stops_in_the_metadata(sources, name):
    import gguf
    from jinja2 import Environment
    from transformers import AutoTokenizer

    source = sources(name)
    tokenizer = source.tokenizer
    path = write_gguf(source.folder, source.folder / "meta.gguf", kind="f16", force=True).path
    meta = fields(path)
    arch = ARCH[name]
    assert meta["general.architecture"] == arch
    # the chat template training used, rendering the same prompt; its end of turn ends generation
    rendered = (
        Environment()
        .from_string(meta["tokenizer.chat_template"])
        .render(messages=CONVERSATION, add_generation_prompt=True)
    )
    assert rendered == source.prompt
    assert meta["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids(source.template.end_of_turn)
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is (tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id)
    if name in SENTENCEPIECE:
        assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.pre"] == "default"
        types = meta["tokenizer.ggml.token_type"]
        assert types.count(gguf.TokenType.BYTE) == 256 and types.count(gguf.TokenType.UNKNOWN) == 1
        assert (
            len(meta["tokenizer.ggml.scores"])
            == len(meta["tokenizer.ggml.tokens"])
            == source.config.vocab_size
        )
        # a ▁ in front of text only where training's tokenizer puts one after a special token
        assert meta["tokenizer.ggml.add_space_prefix"] is False
        assert "tokenizer.ggml.merges" not in meta
    else:
        assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-4o"
    # the GGUF's own tokenizer (as transformers rebuilds it from the metadata) gives training's ids
    from_gguf = AutoTokenizer.from_pretrained(str(source.folder), gguf_file=path.name)
    assert from_gguf(source.prompt, add_special_tokens=False)["input_ids"] == source.ids
    # llama.cpp strips the whitespace after special tokens only for a "phi3" name: Phi-3.5's markers
    # strip it in training, the others keep it
    assert ("phi3" in meta["general.name"].lower()) is (name == "phi3_5")

    config, key = source.config, arch + "."
    if name.startswith("gemma"):
        assert meta[key + "attention.key_length"] == meta[key + "attention.value_length"] == 256
        assert meta[key + "attention.sliding_window"] == config.sliding_window == 8
    if name == "gemma2":
        assert meta[key + "attn_logit_softcapping"] == config.attn_logit_softcapping == 50.0
        assert meta[key + "final_logit_softcapping"] == config.final_logit_softcapping == 30.0
    if name == "gemma3":
        assert meta[key + "rope.freq_base"] == 1_000_000.0 and meta[key + "rope.freq_base_swa"] == 10_000.0
        assert key + "final_logit_softcapping" not in meta
    if name.startswith("phi"):
        partial = getattr(config, "partial_rotary_factor", 1.0)
        assert meta[key + "rope.dimension_count"] == int(partial * 64) // 4
        assert meta[key + "attention.sliding_window"] == 0
    if name == "phi4_mini":
        assert meta[key + "rope.dimension_count"] == 12
        assert meta[key + "rope.scaling.original_context_length"] == 256
        assert meta[key + "rope.scaling.attn_factor"] == pytest.approx((1 + 2 / 8) ** 0.5)  # 1024/256 = 2**2


@pytest.mark.parametrize("name", sorted(GGUF_FAMILIES))
def test_merge_writes_the_gguf_and_a_modelfile_with_the_family_template(tmp_path, sources, name):
    from tuner.export.merge import merge_adapter

    source = sources(name)
    run = make_run(tmp_path, source.folder)
    template = GGUF_FAMILIES[name]["template"]
    out = merge_adapter(
        str(source.folder),
        run,
        tmp_path / "merged",
        dtype="fp32",
        verify=False,
        gguf="f32",
        template=template,
    ).out_dir
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./model.gguf" in modelfile and 'TEMPLATE """' in modelfile
    # the Go template ends the prompt on the family's assistant prefix; the stops are its own
    assert json.dumps(source.template.assistant_prefix, ensure_ascii=False)[1:-1] + '" }}' in modelfile
    stops = [
        json.loads(line.split(" ", 2)[2])
        for line in modelfile.splitlines()
        if line.startswith("PARAMETER stop")
    ]
    assert stops == list(dict.fromkeys([source.template.end_of_turn, *source.template.stop_words]))
    meta = fields(out / "model.gguf")
    assert meta["general.architecture"] == ARCH[name] and meta["general.file_type"] == 0  # ALL_F32
    assert meta["tokenizer.chat_template"] == source.template.chat_template
    assert meta["tokenizer.ggml.eot_token_id"] == source.tokenizer.convert_tokens_to_ids(
        source.template.end_of_turn
    )
    # the file holds the merged weights: the merged model's logits (which the adapter moved away
    # from the base's), or for Phi-4-mini its fused qkv weight
    import gguf
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([source.ids])
    with torch.no_grad():
        expected = merged(input_ids=ids).logits
    assert (expected - source.logits).abs().max() > 1e-3
    if name in ROUND_TRIP:
        from_gguf = AutoModelForCausalLM.from_pretrained(
            str(out), gguf_file="model.gguf", dtype=torch.float32
        )
        with torch.no_grad():
            got = from_gguf.eval()(input_ids=ids).logits
        assert (got - expected).abs().max() <= TOLERANCE["f32"]
    else:
        qkv = {t.name: t for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}["blk.0.attn_qkv.weight"]
        want = merged.state_dict()["model.layers.0.self_attn.qkv_proj.weight"].numpy()
        assert np.array_equal(np.asarray(qkv.data).reshape(want.shape), want)


# --------------------------------------------------------------------------------------- refusals


def _config(model_type, **options):
    from transformers import AutoConfig

    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return AutoConfig.for_model(model_type, **{**sizes, **options})


@pytest.mark.parametrize(
    ("model_type", "options", "reason"),
    [
        ("gemma2", dict(head_dim=16), "query_pre_attn_scalar is 256"),  # llama.cpp scales by 1/sqrt(16)
        ("gemma2", dict(head_dim=256, tie_word_embeddings=False), "lm_head is not tied"),
        ("gemma2", dict(head_dim=256, final_logit_softcapping=None), "always applies both"),
        (
            "gemma3_text",
            dict(head_dim=256, layer_types=["full_attention"] * 2),
            "llama.cpp fixes the pattern",
        ),
        ("gemma3_text", dict(head_dim=256, attn_logit_softcapping=50.0), "caps attention logits"),
        ("mistral", dict(sliding_window=64, max_position_embeddings=512), "sliding window of 64"),
        ("gemma3", dict(), "vision-language"),
        ("gpt2", dict(), "not 'gpt2'"),
    ],
)
def test_what_llama_cpp_would_run_differently_is_refused(model_type, options, reason):
    from tuner.core.errors import ModelError
    from tuner.export.gguf import family_of

    config = _config(model_type, **options) if model_type != "gemma3" else _gemma3_multimodal()
    with pytest.raises(ModelError, match=reason) as caught:
        family_of(config)
    assert "convert_hf_to_gguf" in str(caught.value) or "llama.cpp" in str(caught.value)


def _gemma3_multimodal():
    from transformers import Gemma3Config

    return Gemma3Config()


def test_a_refused_model_leaves_no_file(tmp_path, sources):
    import shutil

    from tuner.core.errors import ModelError

    folder = tmp_path / "gemma2"
    shutil.copytree(sources("gemma2").folder, folder, ignore=shutil.ignore_patterns("*.gguf"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "query_pre_attn_scalar": 144}))
    with pytest.raises(ModelError, match="Gemma 2|gemma2"):
        write_gguf(folder, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def _copy_with_strip(sources, name, folder, tokens, rstrip):
    """A copy of a family's model folder whose added ``tokens`` strip (or keep) the whitespace after them."""
    import shutil

    shutil.copytree(sources(name).folder, folder, ignore=shutil.ignore_patterns("*.gguf"))
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    for token in data["added_tokens"]:
        if token["content"] in tokens:
            token["rstrip"] = rstrip
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    for token in (config.get("added_tokens_decoder") or {}).values():
        if token["content"] in tokens:
            token["rstrip"] = rstrip
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_strip_rules_llama_cpp_cannot_follow_are_refused(tmp_path, sources):
    # a tokenizer that strips the whitespace after <|user|> but not after <|end|>, both followed by "\n"
    # in its template: llama.cpp can only strip after all control tokens (its Phi-3 rule) or none
    from tuner.core.errors import ModelError

    folder = _copy_with_strip(sources, "phi3_5", tmp_path / "phi", ("<|end|>",), rstrip=False)
    with pytest.raises(ModelError, match="strips the whitespace"):
        write_gguf(folder, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_strip_flags_matter_only_where_the_template_puts_whitespace(tmp_path, sources):
    # Phi-4-mini's template puts no whitespace after its markers: stripping or not gives the same ids,
    # so markers that strip are written as they are, and no "phi3" goes in the name (llama.cpp's Phi-3
    # rule needs <unk>, <s> and </s>, which this vocabulary lacks: it would not even load the file)
    from tests.tiny import PHI3_CHAT

    folder = _copy_with_strip(sources, "phi4_mini", tmp_path / "phi3-mini-4", PHI3_CHAT, rstrip=True)
    path = write_gguf(folder, tmp_path / "x.gguf").path
    assert "phi3" not in fields(path)["general.name"].lower()


def test_added_tokens_past_the_embeddings_are_left_out(tmp_path, sources, caplog):
    # Gemma 3 1B's tokenizer has <image_soft_token> at 262144, one past its 262144 embeddings: the GGUF
    # leaves it out (as llama.cpp's converter does) instead of refusing the model
    import shutil

    from transformers import AutoTokenizer

    source = sources("gemma3")
    folder = tmp_path / "gemma3"
    shutil.copytree(source.folder, folder, ignore=shutil.ignore_patterns("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<image_soft_token>"]}, replace_extra_special_tokens=False
    )
    tokenizer.save_pretrained(str(folder))
    assert tokenizer.convert_tokens_to_ids("<image_soft_token>") == source.config.vocab_size
    path = write_gguf(folder, tmp_path / "x.gguf", kind="f32").path
    meta = fields(path)
    assert len(meta["tokenizer.ggml.tokens"]) == source.config.vocab_size
    assert "<image_soft_token>" not in meta["tokenizer.ggml.tokens"] and "<image_soft_token>" in caplog.text
