"""The sizes of the models tuner's presets name, from each model's published config.json.

``tuner estimate PRESET`` and the Presets tab's estimate need a model's sizes before the model is
downloaded (offline, or to decide whether to download it at all). These are the config.json values
the estimate reads, copied from the model repositories; a downloaded or local config.json always
wins (tuner.models.shape.model_shape). Keys are hub ids as the presets spell them.

Each entry's "checked:" comment names where its values were checked (issue 21), every value agreeing:
hf.co/ORG/NAME is a Hugging Face repository's config.json (@ a revision where given); "mlc-llm
model_preset.py" is mlc-ai/mlc-llm python/mlc_llm/model/model_preset.py @ d1ea69a (verbatim config.json
copies); "torchtune" is pytorch/torchtune torchtune/models/*/_model_builders.py @ bd2a0fc; "litgpt" is
Lightning-AI/litgpt litgpt/config.py @ 2685705 (its padded_vocab_size is config.json's vocab_size).
"""

from __future__ import annotations

KEYS = (
    "model_type",
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


def _c(model_type, hidden, layers, heads, kv, inter, vocab, tie, context, head_dim=None) -> dict:
    return dict(
        zip(
            KEYS,
            (model_type, hidden, layers, heads, kv, inter, vocab, tie, context, head_dim or hidden // heads),
            strict=True,
        )
    )


PUBLISHED: dict[str, dict] = {
    # InternLM (v1) and InternLM2
    # checked: hf.co/internlm/internlm-chat-7b@278b13c config.json; mlc-llm model_preset.py 'internlm'
    "internlm/internlm-chat-7b": _c("internlm", 4096, 32, 32, 32, 11008, 103168, False, 2048),
    # checked: hf.co/internlm/internlm2-chat-7b@ef825b6 config.json; hf.co/chujiezheng/internlm2-chat-7b-ExPO (a copy)
    "internlm/internlm2-chat-7b": _c("internlm2", 4096, 32, 32, 8, 14336, 92544, False, 32768),
    # checked: hf.co/internlm/internlm2-7b@1358c2f config.json; hf.co/jetson-models/internlm2-7b-4-bit (a copy)
    "internlm/internlm2-7b": _c("internlm2", 4096, 32, 32, 8, 14336, 92544, False, 32768),
    # checked: copies in fine-tunes of it: hf.co/recogna-nlp/internlm2-chat-1_8b-ultracabrita, hf.co/Henrychur/MMedLM2-1_8B (config.json)
    "internlm/internlm2-chat-1_8b": _c("internlm2", 2048, 24, 16, 8, 8192, 92544, False, 32768),
    # Llama 3.1 / 3.2
    # checked: mlc-llm model_preset.py 'llama3_1_8b'; torchtune llama3_1_8b()
    "meta-llama/Llama-3.1-8B-Instruct": _c("llama", 4096, 32, 32, 8, 14336, 128256, False, 131072),
    # checked: mlc-llm model_preset.py 'llama3_2_1b'; torchtune llama3_2_1b()
    "meta-llama/Llama-3.2-1B-Instruct": _c("llama", 2048, 16, 32, 8, 8192, 128256, True, 131072),
    # checked: mlc-llm model_preset.py 'llama3_2_3b'; torchtune llama3_2_3b()
    "meta-llama/Llama-3.2-3B-Instruct": _c("llama", 3072, 28, 24, 8, 8192, 128256, True, 131072),
    # Qwen2.5 and Qwen3
    # checked: hf.co/Jonathanmann/qwen-sms-3400 config.json (a copy); torchtune qwen2_5_0_5b()
    "Qwen/Qwen2.5-0.5B-Instruct": _c("qwen2", 896, 24, 14, 2, 4864, 151936, True, 32768),
    # checked: hf.co/onnx-community/Qwen2.5-1.5B-Instruct config.json; torchtune qwen2_5_1_5b_instruct()
    "Qwen/Qwen2.5-1.5B-Instruct": _c("qwen2", 1536, 28, 12, 2, 8960, 151936, True, 32768),
    # checked: NVIDIA/Fuser benchmarks/python/rope_ops.py@c8817e0; torchtune qwen2_5_7b_instruct()
    "Qwen/Qwen2.5-7B-Instruct": _c("qwen2", 3584, 28, 28, 4, 18944, 152064, False, 32768),
    # checked: mlc-llm model_preset.py 'qwen3_1.7b'; torchtune qwen3_1_7b_instruct()
    "Qwen/Qwen3-1.7B": _c("qwen3", 2048, 28, 16, 8, 6144, 151936, True, 40960, 128),
    # checked: hf.co/thejaminator/qwen-hook-layer-9@478fb72 (config.json copied from Qwen/Qwen3-8B); torchtune qwen3_8b_instruct()
    "Qwen/Qwen3-8B": _c("qwen3", 4096, 36, 32, 8, 12288, 151936, False, 40960, 128),
    # Gemma 2 / 3 (text-only sizes; Gemma 3 1B is text-only)
    # checked: mlc-llm model_preset.py 'gemma2_2b'; torchtune gemma2_2b(). No tie_word_embeddings key: Gemma2Config's default (True)
    "google/gemma-2-2b-it": _c("gemma2", 2304, 26, 8, 4, 9216, 256000, True, 8192, 256),
    # checked: mlc-llm model_preset.py 'gemma3_1b_it'; litgpt config.py Gemma-3-1b-it. No tie_word_embeddings key: Gemma3TextConfig's default (True)
    "google/gemma-3-1b-it": _c("gemma3_text", 1152, 26, 4, 1, 6912, 262144, True, 32768, 256),
    # Phi-3.5 / Phi-4 mini
    # checked: NVIDIA/Fuser benchmarks/python/rope_ops.py@c8817e0; mlc-llm model_preset.py 'phi-3_5'
    "microsoft/Phi-3.5-mini-instruct": _c("phi3", 3072, 32, 32, 32, 8192, 32064, False, 131072),
    # checked: mlc-llm model_preset.py 'phi-4' (_name_or_path Phi-4-mini-instruct); litgpt config.py
    "microsoft/Phi-4-mini-instruct": _c("phi3", 3072, 32, 24, 8, 8192, 200064, True, 131072),
    # Mistral 7B v0.3
    # checked: mlc-llm model_preset.py 'mistral_7b_v03'; litgpt config.py Mistral-7B-Instruct-v0.3
    "mistralai/Mistral-7B-Instruct-v0.3": _c("mistral", 4096, 32, 32, 8, 14336, 32768, False, 32768),
}
