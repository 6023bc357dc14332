"""A merged model as one GGUF file for llama.cpp and Ollama, written with the ``gguf`` package.

What goes in: every weight (2-D weights in the chosen type, norms and biases in F32), the model's
shape, the tokenizer (tokens, token types, merges or scores, special token ids, whether BOS is
added) and the chat template that training used, with its end-of-turn token as llama.cpp's
end-of-generation token. The tokenizer's part is tuner.export.gguf_tokenizer's, the rotary
parameters' tuner.export.gguf_rope's.

Facts about the format carried over from llama.cpp's own converter (convert_hf_to_gguf.py and
gguf-py): the tensor names (through gguf-py's ``TensorNameMap``), the metadata keys, and the weight
layouts each architecture wants: the ``llama`` architecture stores Q and K rows permuted for its
rotary layout (Qwen, Gemma and Phi-3 are not); Gemma's RMSNorm weights are stored plus one (llama.cpp
multiplies by the weight, transformers by one plus it); Phi-3's fused qkv_proj / gate_up_proj are
stored fused (attn_qkv / ffn_up); Phi-3's long-context rope travels as rope_factors_long/short.

Families (:data:`FAMILIES`, by transformers ``model_type``): Llama 3.x, SmolLM2, Mistral (llama),
Qwen2/2.5 and Qwen3, Gemma 2 (gemma2), Gemma 3 text models (gemma3), Phi-3/3.5 and Phi-4-mini (phi3).
Tokenizers: byte-level BPE (``gpt2``) and SentencePiece-style BPE with byte fallback (``llama``).
What llama.cpp would run differently from transformers is refused with the reason, never written.
Quantizing to ``q4_k_m`` needs llama.cpp's ``llama-quantize`` (gguf-py has no K-quant encoder);
:func:`quantize_hint` says how.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tuner.chat.text import resolve_chat_template
from tuner.core.errors import ModelError, TunerError
from tuner.export.gguf_rope import (
    global_rope,
    phi3_original_context,
    phi3_rope,
    rope_factors,
    rope_kind,
    rope_theta,
    sliding_rope_theta,
)
from tuner.export.gguf_tokenizer import CONVERTER, gguf_name, vocabulary, write_vocabulary

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


@dataclass(frozen=True)
class Family:
    """How one transformers ``model_type`` is laid out in a GGUF."""

    arch: str  # llama.cpp's architecture name
    permute_qk: bool = False  # Q/K rows in the llama architecture's rotary order
    norm_plus_one: bool = False  # RMSNorm weights stored as 1 + w (Gemma)
    output_tensor: bool = True  # False: llama.cpp always reuses token_embd as the output (Gemma 2)


FAMILIES = {
    "llama": Family("llama", permute_qk=True),
    "mistral": Family("llama", permute_qk=True),  # llama.cpp runs Mistral 7B as the llama architecture
    "qwen2": Family("qwen2"),
    "qwen3": Family("qwen3"),
    "gemma2": Family("gemma2", norm_plus_one=True, output_tensor=False),
    "gemma3_text": Family("gemma3", norm_plus_one=True),
    "phi3": Family("phi3"),
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


def gguf_weights(folder: Path, config, family: Family, names):
    """(GGUF name, float32 array) of every weight, in the layout llama.cpp wants for ``family``."""
    heads = config.num_attention_heads
    kv_heads = config.num_key_value_heads or heads
    tied = getattr(config, "tie_word_embeddings", False)
    for name, array in read_weights(folder):
        if name.endswith("rotary_emb.inv_freq") or (
            name == "lm_head.weight" and (tied or not family.output_tensor)
        ):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ModelError(f"GGUF export: no llama.cpp name for the weight {name!r} ({family.arch})")
        if family.permute_qk and name.endswith(("q_proj.weight", "k_proj.weight")):
            array = permute_rows(array, heads if "q_proj" in name else kv_heads)
        if family.norm_plus_one and name.endswith("norm.weight"):
            array = array + 1.0
        yield target, array


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


# --------------------------------------------------------------------------------- architecture


def family_of(config) -> Family:
    """The family of a model config, or a clear refusal naming the family, the reason and what to do."""
    model_type = config.model_type
    if model_type == "gemma3":
        raise ModelError(
            "GGUF export: this Gemma 3 is the vision-language model (Gemma3ForConditionalGeneration, "
            "model_type gemma3): tuner writes Gemma 3 text models (gemma-3-1b, model_type gemma3_text) "
            f"only; use {CONVERTER} (with --mmproj for the vision tower) for this model"
        )
    if model_type not in FAMILIES:
        raise ModelError(
            f"GGUF export knows {', '.join(sorted(FAMILIES))}, not {model_type!r}; "
            f"use {CONVERTER} for this model"
        )
    family = FAMILIES[model_type]
    refusal = _runs_differently(config, family)
    if refusal:
        raise ModelError(f"GGUF export refuses this {model_type} model: {refusal}")
    return family


def _runs_differently(config, family: Family) -> str | None:
    """Why llama.cpp would compute something else than transformers for this config, or None."""
    heads = config.num_attention_heads
    layers = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    model_type = config.model_type
    if model_type == "mistral":
        window = getattr(config, "sliding_window", None)
        if window and window < config.max_position_embeddings:
            return (
                f"it attends through a sliding window of {window} tokens, which llama.cpp's llama "
                "architecture does not do (answers would change past that length); Mistral 7B v0.2/v0.3 "
                "have none (sliding_window null in config.json)"
            )
    if family.arch in ("gemma2", "gemma3"):
        # llama.cpp computes Gemma's query scale itself: 1/sqrt(hidden/heads) for the 27B models
        # (46 layers for Gemma 2, 62 for Gemma 3), else 1/sqrt(head_dim); it reads no key for it.
        big = layers == (46 if family.arch == "gemma2" else 62)
        expected = config.hidden_size // heads if big else head_dim
        scalar = getattr(config, "query_pre_attn_scalar", None)
        if scalar is not None and scalar != expected:
            return (
                f"query_pre_attn_scalar is {scalar}, but llama.cpp scales Gemma's queries by 1/sqrt({expected}) "
                "for this shape (it reads no key for it): every attention would differ. The released Gemma "
                f"checkpoints all match; {CONVERTER} would write the same mismatch"
            )
        period = 2 if family.arch == "gemma2" else 6
        wanted = [
            "full_attention" if (index + 1) % period == 0 else "sliding_attention" for index in range(layers)
        ]
        layer_types = list(getattr(config, "layer_types", None) or wanted)
        if getattr(config, "sliding_window", None) and layer_types != wanted:
            return (
                f"its layers alternate sliding and full attention as {layer_types}, but llama.cpp fixes the "
                f"pattern for {family.arch}: {wanted} (a later llama.cpp reads a per-layer pattern; tuner writes the "
                "released models' one only)"
            )
        if family.arch == "gemma2" and not (config.attn_logit_softcapping and config.final_logit_softcapping):
            return (
                "it turns attention or final logit soft-capping off, and llama.cpp's gemma2 always applies both "
                f"(attn {config.attn_logit_softcapping}, final {config.final_logit_softcapping})"
            )
        if family.arch == "gemma2" and not getattr(config, "tie_word_embeddings", True):
            return (
                "its lm_head is not tied to the embeddings, and llama.cpp's gemma2 always uses the embeddings"
            )
        if family.arch == "gemma3":
            if getattr(config, "attn_logit_softcapping", None):
                return "it caps attention logits, which llama.cpp's gemma3 does not do"
            sliding = sliding_rope_theta(config)
            if sliding != 10000.0:
                return (
                    f"its sliding layers' rope theta is {sliding}; llama.cpp builds that predate the "
                    "rope.freq_base_swa key run Gemma 3's sliding layers at 10000 (all released Gemma 3 use 10000)"
                )
    return None


def _write_shape(writer, config, family: Family, head_dim: int) -> list:
    """The architecture's metadata keys; returns the extra (name, array) tensors it needs."""
    import gguf

    heads = config.num_attention_heads
    extra = []
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope_theta(config)))
    writer.add_vocab_size(config.vocab_size)
    if family.arch in ("gemma2", "gemma3"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        window = getattr(config, "sliding_window", None)
        if family.arch == "gemma2":
            writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
            writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
            # llama.cpp's gemma2 always slides (4096 when the key is missing): no window is the context
            writer.add_sliding_window(int(window or config.max_position_embeddings))
        else:
            if getattr(config, "final_logit_softcapping", None):
                writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
            if window:
                writer.add_sliding_window(int(window))
                writer.add_rope_freq_base_swa(sliding_rope_theta(config))
            params = global_rope(config)
            kind = rope_kind(params)
            if kind == "linear":
                writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                writer.add_rope_scaling_factor(float(params["factor"]))
            elif kind != "default":
                raise ModelError(
                    f"GGUF export: Gemma 3 rope scaling {kind!r} is not supported; use {CONVERTER}"
                )
        return extra
    if family.arch == "phi3":
        partial = getattr(config, "partial_rotary_factor", None) or global_rope(config).get(
            "partial_rotary_factor", 1.0
        )
        rope_dims = int(partial * config.hidden_size) // heads
        writer.add_rope_dimension_count(rope_dims)
        writer.add_rope_scaling_orig_ctx_len(phi3_original_context(config))
        # llama.cpp tells Phi-4-mini (no window) from Phi-3 by a zero window
        writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))
        longrope = phi3_rope(config, rope_dims)
        if longrope is not None:
            attn_factor, long, short = longrope
            writer.add_rope_scaling_attn_factors(attn_factor)
            extra += [
                (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", long),
                (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", short),
            ]
        return extra
    # llama / mistral / qwen2 / qwen3
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    factors = rope_factors(config, head_dim)
    if factors is not None:  # llama.cpp reads Llama 3.1+'s long-context rope from this tensor
        extra.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors))
    return extra


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
    family = family_of(config)
    arch = family.arch
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    chat_template = template or resolve_chat_template(tokenizer, None)
    vocab = vocabulary(folder, tokenizer, config.vocab_size)

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    names = gguf.get_tensor_name_map(_model_arch(arch), config.num_hidden_layers)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        name = Path(str(getattr(config, "_name_or_path", "")) or folder.name).name or folder.name
        writer.add_name(gguf_name(name, tokenizer, vocab, chat_template))
        writer.add_file_type(int(gguf.LlamaFileType[TYPES[kind][1]]))
        extra = _write_shape(writer, config, family, head_dim)
        write_vocabulary(writer, vocab, tokenizer, chat_template)

        count = 0
        for name, array in extra:
            writer.add_tensor(name, array)
            count += 1
        for target, array in gguf_weights(folder, config, family, names):
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
