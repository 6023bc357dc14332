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
    ]
}
