from __future__ import annotations

from tuner.data.templates.base import BOS, EOS, ChatTemplate

_CHATML = dict(
    system="<|im_start|>system\n{system}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    separator="\n",
)


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in [
        ChatTemplate(
            name="default",
            description="readable ### System / ### User / ### Assistant blocks, ended by the tokenizer's EOS",
            bos=BOS,
            system="### System:\n{system}\n\n",
            user="### User:\n{content}\n\n",
            # A single newline before the answer: byte-level BPEs tokenize "\n\n" differently when
            # text follows it, which would break the prompt-is-a-prefix guarantee of encoding.
            assistant_prefix="### Assistant:\n",
            end_of_turn=EOS,
            separator="\n\n",
            stop_words=(EOS, "### User:"),
        ),
        ChatTemplate(
            name="chatml",
            description="ChatML (<|im_start|>role ... <|im_end|>), no default system prompt",
            stop_words=("<|im_end|>",),
            **_CHATML,
        ),
        ChatTemplate(
            name="qwen_chat",
            description="Qwen / Qwen2 ChatML with Qwen's default system prompt",
            default_system="You are a helpful assistant.",
            stop_words=("<|im_end|>", "<|endoftext|>"),
            **_CHATML,
        ),
        ChatTemplate(
            name="internlm_chat",
            description="InternLM (v1) chat: <|User|>:...<eoh> <|Bot|>:...<eoa>",
            bos="<s>",
            system="<|System|>:{system}\n",
            user="<|User|>:{content}<eoh>\n",
            assistant_prefix="<|Bot|>:",
            end_of_turn="<eoa>",
            separator="\n",
            stop_words=("<eoa>",),
        ),
        ChatTemplate(
            name="internlm2_chat",
            description="InternLM2 chat: <s> + ChatML",
            bos="<s>",
            stop_words=("<|im_end|>",),
            **_CHATML,
        ),
        ChatTemplate(
            name="llama2_chat",
            description="Llama 2 chat: <s>[INST] <<SYS>> ... <</SYS>> ... [/INST] answer </s>",
            user="<s>[INST] {content} [/INST]",
            user_with_system="<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]",
            answer=" {content} ",
            end_of_turn="</s>",
            stop_words=("</s>",),
        ),
        ChatTemplate(
            name="llama3_chat",
            description="Llama 3 instruct: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
            bos="<|begin_of_text|>",
            system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            end_of_turn="<|eot_id|>",
            stop_words=("<|eot_id|>", "<|end_of_text|>"),
        ),
        # Qwen3 is one model with a thinking switch; tuner makes it a choice of template, so that
        # training and chat agree on it. Thinking off is Qwen3's own enable_thinking=False: every
        # answer starts after an empty <think></think> block, which the model was taught to read
        # as "answer directly".
        ChatTemplate(
            name="qwen3_chat",
            description="Qwen3, thinking off: ChatML, each answer after an empty <think></think> block",
            system=_CHATML["system"],
            user=_CHATML["user"],
            assistant_prefix="<|im_start|>assistant\n<think>\n\n</think>\n\n",
            end_of_turn="<|im_end|>",
            separator="\n",
            stop_words=("<|im_end|>", "<|endoftext|>"),
        ),
        ChatTemplate(
            name="qwen3_thinking",
            description="Qwen3, thinking on: ChatML; the model writes its own <think>...</think> first "
            "(answers in the data must carry it)",
            stop_words=("<|im_end|>", "<|endoftext|>"),
            **_CHATML,
        ),
        # Gemma 2 and 3 have no system role: the system prompt opens the first user turn.
        ChatTemplate(
            name="gemma_chat",
            description="Gemma 2/3: <start_of_turn>user ... <end_of_turn> <start_of_turn>model ...",
            bos="<bos>",
            user="<start_of_turn>user\n{content}<end_of_turn>\n",
            user_with_system="<start_of_turn>user\n{system}\n\n{content}<end_of_turn>\n",
            assistant_prefix="<start_of_turn>model\n",
            end_of_turn="<end_of_turn>",
            separator="\n",
            stop_words=("<end_of_turn>", "<eos>"),
        ),
        ChatTemplate(
            name="phi3_chat",
            description="Phi-3 / Phi-3.5: <|system|> / <|user|> / <|assistant|> blocks ended by <|end|>",
            system="<|system|>\n{system}<|end|>\n",
            user="<|user|>\n{content}<|end|>\n",
            assistant_prefix="<|assistant|>\n",
            end_of_turn="<|end|>",
            separator="\n",
            stop_words=("<|end|>", "<|endoftext|>"),
        ),
        ChatTemplate(
            name="phi4_mini_chat",
            description="Phi-4-mini: <|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|> (no newlines)",
            system="<|system|>{system}<|end|>",
            user="<|user|>{content}<|end|>",
            assistant_prefix="<|assistant|>",
            end_of_turn="<|end|>",
            stop_words=("<|end|>", "<|endoftext|>"),
        ),
        # Mistral's own template puts the system prompt in the last user turn; in tuner it opens the
        # first (the same text for the single-turn samples most data sets hold).
        ChatTemplate(
            name="mistral_chat",
            description="Mistral 7B Instruct v0.3: <s>[INST] question[/INST] answer</s>",
            bos="<s>",
            user="[INST] {content}[/INST]",
            user_with_system="[INST] {system}\n\n{content}[/INST]",
            answer=" {content}",
            end_of_turn="</s>",
            stop_words=("</s>",),
        ),
    ]
}
