"""The sizes of the models tuner's presets name, from each model's published config.json.

``tuner estimate PRESET`` and the Presets tab's estimate need a model's sizes before the model is
downloaded (offline, or to decide whether to download it at all). These are the config.json values
the estimate reads, copied from the model repositories; a downloaded or local config.json always
wins (tuner.models.shape.model_shape). Keys are hub ids as the presets spell them.
"""

from __future__ import annotations

KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
    "head_dim",
)


def _c(hidden, layers, heads, kv, inter, vocab, tie, context, head_dim=None) -> dict:
    return dict(
        zip(
            KEYS,
            (hidden, layers, heads, kv, inter, vocab, tie, context, head_dim or hidden // heads),
            strict=True,
        )
    )


PUBLISHED: dict[str, dict] = {
    # InternLM (v1) and InternLM2
    "internlm/internlm-chat-7b": _c(4096, 32, 32, 32, 11008, 103168, False, 2048),
    "internlm/internlm2-chat-7b": _c(4096, 32, 32, 8, 14336, 92544, False, 32768),
    "internlm/internlm2-7b": _c(4096, 32, 32, 8, 14336, 92544, False, 32768),
    "internlm/internlm2-chat-1_8b": _c(2048, 24, 16, 8, 8192, 92544, False, 32768),
    # Llama 3.1 / 3.2
    "meta-llama/Llama-3.1-8B-Instruct": _c(4096, 32, 32, 8, 14336, 128256, False, 131072),
    "meta-llama/Llama-3.2-1B-Instruct": _c(2048, 16, 32, 8, 8192, 128256, True, 131072),
    "meta-llama/Llama-3.2-3B-Instruct": _c(3072, 28, 24, 8, 8192, 128256, True, 131072),
    # Qwen2.5 and Qwen3
    "Qwen/Qwen2.5-0.5B-Instruct": _c(896, 24, 14, 2, 4864, 151936, True, 32768),
    "Qwen/Qwen2.5-1.5B-Instruct": _c(1536, 28, 12, 2, 8960, 151936, True, 32768),
    "Qwen/Qwen2.5-7B-Instruct": _c(3584, 28, 28, 4, 18944, 152064, False, 32768),
    "Qwen/Qwen3-1.7B": _c(2048, 28, 16, 8, 6144, 151936, True, 40960, 128),
    "Qwen/Qwen3-8B": _c(4096, 36, 32, 8, 12288, 151936, False, 40960, 128),
    # Gemma 2 / 3 (text-only sizes; Gemma 3 1B is text-only)
    "google/gemma-2-2b-it": _c(2304, 26, 8, 4, 9216, 256000, True, 8192, 256),
    "google/gemma-3-1b-it": _c(1152, 26, 4, 1, 6912, 262144, True, 32768, 256),
    # Phi-3.5 / Phi-4 mini
    "microsoft/Phi-3.5-mini-instruct": _c(3072, 32, 32, 32, 8192, 32064, False, 131072),
    "microsoft/Phi-4-mini-instruct": _c(3072, 32, 24, 8, 8192, 200064, True, 131072),
    # Mistral 7B v0.3
    "mistralai/Mistral-7B-Instruct-v0.3": _c(4096, 32, 32, 8, 14336, 32768, False, 32768),
}
