"""A merged model as one GGUF file for llama.cpp and Ollama, written with the ``gguf`` package.

What goes in: every weight (2-D weights in the chosen type, norms and biases in F32), the model's
shape, the tokenizer (tokens, token types, merges, special token ids, whether BOS is added) and the
chat template that training used, with its end-of-turn token as llama.cpp's end-of-generation
token. The tokenizer is described as the model was trained with it: the pre-tokenizer name is read
off the folder's tokenizer.json (a split regex llama.cpp knows by name), never guessed.

Facts about the format carried over from llama.cpp's own converter (convert_hf_to_gguf.py): the
tensor names (through gguf-py's ``TensorNameMap``), the metadata keys, and that the ``llama``
architecture stores Q and K rows permuted for its rotary layout (Qwen2/3 are not).

Families: those whose transformers ``model_type`` is in :data:`ARCHITECTURES` and whose tokenizer is
byte-level BPE (Llama 3.x, Qwen2/2.5/3, SmolLM2). Others get a clear error naming llama.cpp's
converter. Quantizing to ``q4_k_m`` needs llama.cpp's ``llama-quantize`` (gguf-py has no K-quant
encoder); :func:`quantize_hint` says how.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tuner.chat.text import resolve_chat_template, single_token_id
from tuner.core.errors import ModelError, TunerError

log = logging.getLogger(__name__)

# --type -> (GGML type of 2-D weights, general.file_type); names as llama.cpp spells them.
TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
# Worst logit difference against the merged model that tests/export/test_gguf.py accepts, per type.
TOLERANCE = {"f32": 1e-4, "f16": 2e-2, "bf16": 1e-1, "q8_0": 1e-1}
# transformers model_type -> (GGUF architecture, Q/K rows permuted as llama.cpp's llama arch wants)
ARCHITECTURES = {
    "llama": ("llama", True),
    "mistral": ("llama", True),  # llama.cpp runs Mistral 7B as the llama architecture
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
}
# Split regexes of byte-level BPE tokenizers -> llama.cpp's pre-tokenizer name for them.
PRE_TOKENIZERS = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
}
GGUF_NAME = "model.gguf"


@dataclass
class GgufResult:
    path: Path
    architecture: str
    type: str
    tensors: int
    chat_template: str | None
    eot_token: str | None


def quantize_hint(path: Path) -> str:
    return (
        f"for q4_k_m, write f16 and quantize with llama.cpp: llama-quantize {path} "
        f"{path.with_name(path.stem + '-q4_k_m.gguf')} Q4_K_M"
    )


def check_type(kind: str, out_path: str | Path = GGUF_NAME) -> None:
    """Refuse a GGUF type tuner cannot write, before any work is done."""
    if kind not in TYPES:
        hint = (
            f"; {quantize_hint(Path(out_path))}"
            if kind.lower().startswith(("q4", "q5", "q6", "q3", "q2"))
            else ""
        )
        raise TunerError(f"GGUF type {kind!r} is not one of {', '.join(TYPES)}{hint}")


# ------------------------------------------------------------------------------------ tokenizer


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for how this byte-level BPE tokenizer splits text before merging."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own regex inside ByteLevel (llama.cpp's name for it has the hyphen)
    splits = [step for step in steps if step.get("type") == "Split"]
    if len(splits) == 1 and kinds[-1] == "ByteLevel":
        regex = (splits[0].get("pattern") or {}).get("Regex")
        if regex in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[regex]
    raise ModelError(
        f"the tokenizer splits text in a way tuner cannot name for llama.cpp ({json.dumps(pre)[:200]}); "
        "use llama.cpp's convert_hf_to_gguf.py for this model"
    )


def vocabulary(folder: Path, tokenizer, vocab_size: int):
    """(tokens by id, token types, merges, pre-tokenizer name) of a byte-level BPE tokenizer, padded
    to the model's ``vocab_size`` with unused placeholder tokens."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no tokenizer.json; GGUF export needs a fast (tokenizers) tokenizer")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ModelError(
            f"GGUF export writes byte-level BPE tokenizers (Llama 3, Qwen, SmolLM2); this one is "
            f"{model.get('type')}{' with byte fallback (SentencePiece)' if model.get('byte_fallback') else ''}: "
            "use llama.cpp's convert_hf_to_gguf.py for this model"
        )
    # The split the loaded tokenizer really does: transformers 5 may replace tokenizer.json's own
    # with the model class's (Qwen2Tokenizer does), and training used the loaded one.
    pre = pre_tokenizer_name(json.loads(tokenizer.backend_tokenizer.to_str()))
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ModelError(
            f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embeddings"
        )
    special = {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    added = {int(i) for i in tokenizer.added_tokens_decoder}
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[index])
            types.append(
                gguf.TokenType.CONTROL
                if index in special
                else gguf.TokenType.USER_DEFINED
                if index in added
                else gguf.TokenType.NORMAL
            )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, pre


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a text by itself (llama.cpp then does the same)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


# -------------------------------------------------------------------------------------- weights


def permute_rows(weight, heads: int):
    """llama.cpp's layout of a Q or K weight for the llama architecture: within each head, the
    two halves of the rotary dimensions interleaved."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def read_weights(folder: Path):
    """(name, float32 numpy array) for every weight in the folder's safetensors files."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} has no .safetensors weights (merge the adapter first: tuner merge)")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no iterator
                yield name, handle.get_tensor(name).float().numpy()


def encoded(array, kind: str):
    """(data, raw GGML type or None) of one tensor in the file; 1-D tensors and rows that do not fill
    whole Q8_0 blocks stay F32 / F16, as llama.cpp's converter keeps them."""
    import gguf
    import numpy as np

    if array.ndim < 2 or kind == "f32":
        return array.astype(np.float32), None
    if kind == "f16":
        return array.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType[TYPES[kind][0]]
    if kind == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return array.astype(np.float16), None
    return gguf.quants.quantize(array, qtype), qtype


# ----------------------------------------------------------------------------------------- write


def write_gguf(
    folder: str | Path, out_path: str | Path, *, kind: str = "f16", template=None, force: bool = False
) -> GgufResult:
    """Write the model in ``folder`` (a merged model: config.json, safetensors, tokenizer) as one
    GGUF file ``out_path``. ``template``: the ChatTemplate training used (default: the folder's
    tokenizer chat template), stored as ``tokenizer.chat_template``; its end-of-turn token becomes
    the end-of-generation token, so llama.cpp stops where training taught the model to.
    """
    import gguf
    from transformers import AutoConfig, AutoTokenizer


    check_type(kind, out_path)
    folder, out_path = Path(folder), Path(out_path)
    if out_path.exists() and not force:
        raise TunerError(f"{out_path} exists; pass --force (in the app: tick Overwrite) to replace it")
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type not in ARCHITECTURES:
        raise ModelError(
            f"GGUF export knows {', '.join(sorted(ARCHITECTURES))}, not {config.model_type!r}; "
            "use llama.cpp's convert_hf_to_gguf.py for this model"
        )
    arch, permute = ARCHITECTURES[config.model_type]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    chat_template = template or resolve_chat_template(tokenizer, None)
    tokens, types, merges, pre = vocabulary(folder, tokenizer, config.vocab_size)

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    names = gguf.get_tensor_name_map(_model_arch(arch), config.num_hidden_layers)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(Path(str(getattr(config, "_name_or_path", "")) or folder.name).name or folder.name)
        writer.add_file_type(int(gguf.LlamaFileType[TYPES[kind][1]]))
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(float(_rope_theta(config)))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        for token_id, add in (
            (tokenizer.bos_token_id, writer.add_bos_token_id),
            (tokenizer.eos_token_id, writer.add_eos_token_id),
            (tokenizer.unk_token_id, writer.add_unk_token_id),
            (tokenizer.pad_token_id, writer.add_pad_token_id),
        ):
            if token_id is not None:
                add(token_id)
        writer.add_add_bos_token(adds_bos(tokenizer))
        writer.add_add_eos_token(False)
        eot = single_token_id(tokenizer, chat_template.end_of_turn)
        if eot is not None:
            writer.add_eot_token_id(eot)
        if chat_template.chat_template:
            writer.add_chat_template(chat_template.chat_template)

        count = 0
        factors = rope_factors(config, head_dim)
        if factors is not None:  # llama.cpp reads Llama 3.1+'s long-context rope from this tensor
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
            count += 1
        tied = getattr(config, "tie_word_embeddings", False)
        for name, array in read_weights(folder):
            if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                continue
            target = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise ModelError(f"GGUF export: no llama.cpp name for the weight {name!r} ({arch})")
            if permute and name.endswith(("q_proj.weight", "k_proj.weight")):
                array = permute_rows(array, heads if "q_proj" in name else kv_heads)
            data, raw = encoded(array, kind)
            writer.add_tensor(target, data, raw_dtype=raw)
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s (%s, %s, %d tensors)", out_path, arch, kind, count)
    return GgufResult(out_path, arch, kind, count, chat_template.chat_template, chat_template.end_of_turn)


def _model_arch(name: str):
    import gguf

    return {value: key for key, value in gguf.MODEL_ARCH_NAMES.items()}[name]


def _rope_parameters(config) -> dict:
    # transformers 5 keeps them in rope_parameters; older configs as rope_theta + rope_scaling
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    return params


def _rope_theta(config) -> float:
    return _rope_parameters(config)["rope_theta"]


def rope_factors(config, head_dim: int):
    """Per-frequency rope factors of Llama 3.1+'s rope scaling (rope_type llama3), as llama.cpp's
    ``rope_freqs`` tensor holds them; None for plain rope. Other scalings are refused."""
    import math

    import numpy as np

    params = _rope_parameters(config)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return None
    if kind != "llama3":
        raise ModelError(
            f"GGUF export: rope scaling {kind!r} is not supported; use llama.cpp's convert_hf_to_gguf.py"
        )
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    freqs = 1.0 / (params["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            out.append(1.0)
        elif wavelen > old_context / low:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)
