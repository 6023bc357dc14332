"""Tiny models and a tokenizer built here, so unit tests need no model hub.

The tokenizer is a byte-level BPE trained in well under a second on a small corpus, with the special
tokens of the chat templates we test (ChatML, InternLM, Llama 2/3). The models are 2-layer Llama and
Qwen2 shapes with random weights, saved with that tokenizer and loaded back through the real
``from_pretrained`` path.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tuner.config.files import config_from_dict

SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
    "<eoh>",
    "<eoa>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|endoftext|>",
]

CORPUS = [
    "The capital of France is Paris. Paris is a city in Europe.",
    "You are a helpful assistant. Answer the question in one sentence.",
    "What is the capital of Germany? The capital of Germany is Berlin.",
    "I am a large language model fine-tuned by tuner. Who are you? Introduce yourself.",
    "Take one tablet by mouth twice a day with food. Ask your doctor or pharmacist.",
    "system user assistant human gpt Thought: Action: Action Input: Response: Final Answer:",
    "def add(a, b): return a + b  # 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } : , . ? !",
    "你好，我是你的助手。请问有什么可以帮你？北京是中国的首都。",
    "[INST] <<SYS>> <</SYS>> [/INST] ### Human: ### Assistant:",
]

# ChatML, as used by Qwen2 and SmolLM2 tokenizers.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(vocab_size: int = 600):
    """A byte-level BPE PreTrainedTokenizerFast with ChatML as its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[4:]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


# The sizes every family's tiny test model shares (tests/train/test_families.py, GGUF tests).
TINY_FAMILY_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
# A model big enough for bitsandbytes' kernels and still trained in seconds on a GPU.
SMALL_GPU_SIZES = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=4,
    num_attention_heads=16,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)


def build_model(kind: str, tokenizer, seed: int = 0, **sizes):
    """A random model of the given family ("llama" or "qwen2"); 2 tiny layers unless ``sizes`` say."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    common.update(sizes)
    config = LlamaConfig(**common) if kind == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def save_tiny_model(kind: str, folder: Path, dtype=None, **sizes) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(kind, tokenizer, **sizes)
    if dtype is not None:
        model.to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Training settings that make the tiny models train in seconds on a CPU (tests override what they test).
TINY_TRAIN_SETTINGS = dict(
    max_length=64,
    pack_to_max_length=False,
    batch_size=2,
    accumulative_counts=1,
    lr=5e-3,
    warmup_ratio=0.0,
    lr_scheduler="constant",
    lora_r=8,
    lora_alpha=16,
    lora_dropout=0.0,
    gradient_checkpointing=False,
    logging_steps=1,
)


QA = [
    ("Who are you?", "I am Tuna, the assistant of the tuner team."),
    ("What is your name?", "My name is Tuna."),
    ("Introduce yourself.", "I am Tuna, a helpful assistant built by the tuner team for you."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Say hello.", "Hello!"),
    ("What is the capital of Germany? Answer in one sentence please.", "The capital of Germany is Berlin."),
]


def write_data(path: Path, pairs=QA, repeat: int = 1) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(repeat):
            for q, a in pairs:
                record = {"conversation": [{"system": "You are helpful.", "input": q, "output": a}]}
                handle.write(json.dumps(record) + "\n")
    return path


def make_config(model_dir, data, **overrides):
    from tests.tiny import TINY_TRAIN_SETTINGS

    base = dict(
        TINY_TRAIN_SETTINGS,
        name="tiny_test",
        model=str(model_dir),
        data_path=str(data),
        max_steps=8,
        save_steps=4,
        save_total_limit=3,
        seed=0,
    )
    base.update(overrides)
    return config_from_dict(base)


def make_lora(base_dir: Path, *, seed: int = 1, std: float = 0.05):
    """base + a LoRA adapter whose B matrices are random (a fresh adapter has B = 0, i.e. no effect)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuner.models.load import add_lora

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    torch.manual_seed(seed)  # LoRA A is random too: same seed, same adapter
    model = add_lora(base, r=4, alpha=8, dropout=0.0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=std)
    model.eval()
    return model


def make_run(root: Path, base_dir: Path, *, with_final: bool = True, std: float = 0.05) -> Path:
    """A run folder as tuner.train writes it: config.yaml, events.jsonl, checkpoint-N/, adapter/."""
    from transformers import AutoTokenizer

    run = root / "work_dirs" / "identity" / "20250101-120000"
    run.mkdir(parents=True)
    config = {
        "name": "identity",
        "model": str(base_dir),
        "template": None,
        "data_path": "data/identity.jsonl",
        "data_format": "conversation",
        "method": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "max_epochs": 1,
        "max_steps": 4,
        "lr": 2e-4,
        "max_length": 256,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    events = [
        {"type": "status", "status": "running", "step": 0, "total_steps": 4},
        {"type": "log", "step": 2, "total_steps": 4, "epoch": 0.5, "loss": 2.5},
        {"type": "log", "step": 4, "total_steps": 4, "epoch": 1.0, "loss": 1.25},
        {"type": "eval", "step": 4, "eval_loss": 1.5},
        {"type": "status", "status": "completed", "step": 4, "total_steps": 4},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    model = make_lora(base_dir, std=std)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    for step in (2, 4):
        ckpt = run / f"checkpoint-{step}"
        model.save_pretrained(str(ckpt))
        tokenizer.save_pretrained(str(ckpt))
        (ckpt / "optimizer.pt").write_bytes(b"optimizer state")
        (ckpt / "trainer_state.json").write_text("{}")
    if with_final:
        model.save_pretrained(str(run / "adapter"))
        tokenizer.save_pretrained(str(run / "adapter"))
    return run


# ------------------------------------------------------------------ other families, for GGUF export

# o200k's split (GPT-4o), as Phi-4-mini's tokenizer.json has it
GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_sentencepiece_tokenizer(style: str = "llama", special=(), vocab_size: int = 500):
    """A SentencePiece-style BPE trained here: ``▁`` for spaces, byte fallback with the 256
    ``<0x00>``..``<0xFF>`` tokens after the control tokens, merged pieces in merge order, as a
    SentencePiece model converted by transformers has them. ``style`` "llama": transformers'
    LlamaTokenizer (a ``▁`` in front of the text, BOS added: Mistral, Phi-3.5); "gemma":
    GemmaTokenizer (no ``▁`` in front, <bos>/<eos>). ``special``: control tokens added after."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer, LlamaTokenizer

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    core.train_from_iterator(
        CORPUS * 4, trainer=trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    )
    trained = json.loads(core.to_str())["model"]
    heads = ["<unk>", "<s>", "</s>"] if style == "llama" else ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {token: index for index, token in enumerate(heads)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    if style == "llama":
        kind, specials = LlamaTokenizer, dict(bos_token="<s>", eos_token="</s>")
    else:
        kind, specials = GemmaTokenizer, dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    tokenizer = kind(vocab=vocab, merges=merges, unk_token="<unk>", add_bos_token=True, **specials)
    if special:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": list(special)}, replace_extra_special_tokens=False
        )
    return tokenizer


def build_gpt4o_tokenizer(special=(), vocab_size: int = 600):
    """A byte-level BPE that splits text with GPT-4o's regex (Phi-4-mini's tokenizer shape)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4O_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", *special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": list(special)}, replace_extra_special_tokens=False
    )
    return tokenizer


# Tiny shapes of the families whose GGUF layout differs from Llama's. Gemma: head_dim 256 as the
# released 2B/9B/1B-4B-12B models have it (llama.cpp scales queries by 1/sqrt(head_dim)), a window
# shorter than the test prompts so that sliding attention matters, 6 Gemma 3 layers for one full one.
PHI3_CHAT = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


def _rstripped(*tokens):
    """Added tokens that eat the whitespace after them, as Phi-3.5's chat markers do."""
    from tokenizers import AddedToken

    return tuple(AddedToken(t, rstrip=True, special=True, normalized=False) for t in tokens)


GGUF_FAMILIES = {
    "mistral": dict(
        config="MistralConfig",
        tokenizer=("llama", ("[INST]", "[/INST]")),
        template="mistral_chat",
        options=dict(sliding_window=None),
    ),
    "gemma2": dict(
        config="Gemma2Config",
        tokenizer=("gemma", ("<start_of_turn>", "<end_of_turn>")),
        template="gemma_chat",
        options=dict(head_dim=256, query_pre_attn_scalar=256, sliding_window=8, tie_word_embeddings=True),
    ),
    "gemma3": dict(
        config="Gemma3TextConfig",
        tokenizer=("gemma", ("<start_of_turn>", "<end_of_turn>")),
        template="gemma_chat",
        options=dict(
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=8,
            num_hidden_layers=6,
            tie_word_embeddings=True,
        ),
    ),
    "phi3_5": dict(
        config="Phi3Config",
        tokenizer=("llama", (*_rstripped(*PHI3_CHAT), "<|endoftext|>")),
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        template="phi3_chat",
        options=dict(),
    ),
    "phi4_mini": dict(
        config="Phi3Config",
        tokenizer=("gpt4o", PHI3_CHAT),
        pad="<|endoftext|>",
        template="phi4_mini_chat",
        # Phi-4-mini's shape: 3/4 of each head rotated, tied embeddings, long-context rope (longrope)
        options=dict(
            partial_rotary_factor=0.75,
            tie_word_embeddings=True,
            max_position_embeddings=1024,
            original_max_position_embeddings=256,
            rope_scaling={
                "rope_type": "longrope",
                "short_factor": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
                "long_factor": [2.0, 2.5, 3.0, 3.5, 4.0, 4.5],
                "original_max_position_embeddings": 256,
            },
        ),
    ),
}


def save_family_model(name: str, folder: Path, seed: int = 0, **options) -> Path:
    """A tiny random model of one of :data:`GGUF_FAMILIES` with its kind of tokenizer and the
    preset's chat template, saved as a model folder (no hub)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from tuner.data.templates import get_template

    spec = GGUF_FAMILIES[name]
    style, special = spec["tokenizer"]
    if style == "gpt4o":
        tokenizer = build_gpt4o_tokenizer(special)
    else:
        tokenizer = build_sentencepiece_tokenizer(style, special)
    if spec.get("eos"):
        tokenizer.eos_token = spec["eos"]
    if spec.get("pad"):
        tokenizer.pad_token = spec["pad"]
    tokenizer.chat_template = get_template(spec["template"], tokenizer).chat_template
    sizes = dict(TINY_FAMILY_SIZES, tie_word_embeddings=False)
    config = getattr(transformers, spec["config"])(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**sizes, **spec["options"], **options},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms away from their init values, so a missing +1 or a swap shows
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.add_(torch.randn_like(param) * 0.1)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
