"""A standalone merged model: a LoRA adapter merged into its unquantized base (``python -m tuner merge``).

Split out of ``tuner.export``, which still re-exports every name here. Like an export, the merged
model is written into a hidden staging folder beside the output and renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tuner.chat.generate import greedy_answers
from tuner.chat.load import chat_tokenizer
from tuner.chat.text import resolve_chat_template, single_token_id, stop_token_ids
from tuner.core.errors import ModelError, TunerError
from tuner.core.io import check_output, staging_folder
from tuner.export.gguf import GGUF_NAME, check_type, write_gguf
from tuner.export.gguf_tokenizer import adds_bos
from tuner.export.modelfile import ollama_modelfile
from tuner.models.lazy_deepspeed import load_deepspeed_only_when_used
from tuner.models.load import load_tokenizer, release, resolve_model_path
from tuner.runs.adapters import locate_adapter

log = logging.getLogger(__name__)

MODELFILE = "Modelfile"
VERIFY_PROMPT = "Hello! Who are you? Answer in one sentence."


@dataclass
class MergeResult:
    out_dir: Path
    dtype: str
    template: str
    eos_token_ids: list[int]
    reply: str | None = None  # the verification reply, None when verification was skipped
    ended_on_end_of_turn: bool | None = None
    gguf: str | None = None  # the GGUF file's name in out_dir, when one was written


_SHARD_RE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)$", re.IGNORECASE)


def check_shard_size(value: str | int) -> str | int:
    """``2GB``, ``500MB`` or a number of bytes; anything else is a user error."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        if int(value) <= 0:  # 0 would mean one file per tensor, or an endless loop of empty shards
            raise TunerError(f"max shard size {value}: must be more than 0; use e.g. 2GB or 500MB")
        return int(value)
    if isinstance(value, str) and _SHARD_RE.match(value.strip()):
        if float(re.match(r"[\d.]+", value.strip()).group()) <= 0:
            raise TunerError(f"max shard size {value}: must be more than 0; use e.g. 2GB or 500MB")
        return value.strip().upper().replace(" ", "")
    raise TunerError(f"max shard size '{value}' is not a size; use e.g. 2GB, 500MB or a number of bytes")


def merge_dtype(base_path: str, dtype: str):
    """The torch dtype to merge in: asked for, or with ``auto`` the dtype in the base's config.json."""
    import torch

    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype in table:
        return table[dtype]
    if dtype != "auto":
        raise TunerError(f"unknown dtype '{dtype}'; use fp16, bf16, fp32 or auto")
    try:
        config = json.loads((Path(base_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return torch.float16
    named = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    return named.get(str(config.get("dtype") or config.get("torch_dtype")), torch.float16)


def _refuse_quantized_base(base_path: str) -> None:
    config_path = Path(base_path) / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return
        if config.get("quantization_config"):
            raise ModelError(
                f"{base_path} is a quantized model; merging needs the original full-precision weights "
                "(a QLoRA adapter merges onto the unquantized base, e.g. the hub model it was trained from)"
            )


def nonfinite_parameters(model) -> list[str]:
    """Names of parameters holding NaN or infinity (a merge that overflowed the dtype)."""
    import torch

    bad = []
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad


def merge_adapter(
    base: str,
    adapter: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "auto",
    max_shard_size: str | int = "2GB",
    template: str | None = None,
    force: bool = False,
    verify: bool = True,
    verify_prompt: str = VERIFY_PROMPT,
    verify_max_new_tokens: int = 128,
    trust_remote_code: bool = False,
    gguf: str | None = None,
) -> MergeResult:
    """Merge a LoRA adapter into an unquantized base model and save it as a standalone model.

    The base is always loaded in full precision ``dtype`` on the CPU, also for QLoRA adapters
    (merging into 4-bit weights would round the adapter away). The output holds sharded
    safetensors, the tokenizer with the chat template, a generation config whose eos ids include the
    template's end-of-turn token, and an Ollama ``Modelfile``. With ``verify`` the saved folder is
    reloaded and answers one question; the reply must end on the end-of-turn token. With ``gguf``
    (f16, bf16, f32 or q8_0) the folder also gets ``model.gguf`` (tuner.export.gguf), which the
    Modelfile names.

    Raises:
        ModelError: non-finite merged weights, an adapter that does not fit the base, or a reply
            that did not end on the end-of-turn token (the merged folder is kept in that case).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM


    load_deepspeed_only_when_used()  # save_pretrained would import it, unused, for an isinstance check
    if gguf:
        check_type(gguf)
    found = locate_adapter(adapter)
    out_dir = Path(out_dir)
    base_path = resolve_model_path(base)
    check_output(out_dir, force, found.adapter_dir, Path(base_path) if Path(base_path).exists() else None)
    shard = check_shard_size(max_shard_size)
    _refuse_quantized_base(base_path)
    torch_dtype = merge_dtype(base_path, dtype)
    dtype_name = str(torch_dtype).replace("torch.", "")


    tokenizer = chat_tokenizer(base, found.adapter_dir, trust_remote_code)
    chat_template = resolve_chat_template(tokenizer, template or found.config.get("template"))
    tokenizer.chat_template = chat_template.chat_template
    eos_ids = stop_token_ids(tokenizer, chat_template)

    log.info("loading %s in %s on the CPU", base, dtype_name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load the base model '{base}': {exc}") from exc
    try:
        model = PeftModel.from_pretrained(model, str(found.adapter_dir))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"the adapter {found.adapter_dir} does not fit {base} ({exc}); "
            f"it was trained on {found.base_model or 'an unknown base'}"
        ) from exc
    try:
        model = model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # peft's safe_merge raises when a merged layer has NaNs
        raise ModelError(f"merging produced invalid weights ({exc}); try --dtype fp32") from exc
    bad = nonfinite_parameters(model)
    if bad:
        raise ModelError(
            f"merged weights are not finite in {len(bad)} tensor(s) (first: {bad[0]}); "
            "the merge overflowed the dtype: try --dtype bf16 or fp32"
        )
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    with staging_folder(out_dir, force) as staging:
        model.save_pretrained(str(staging), max_shard_size=shard)
        tokenizer.save_pretrained(str(staging))
        (staging / MODELFILE).write_text(
            ollama_modelfile(chat_template, bos_token=tokenizer.bos_token if adds_bos(tokenizer) else None),
            encoding="utf-8",
        )
        release(model)
        model = None
        result = MergeResult(out_dir, dtype_name, chat_template.name, eos_ids)
        if gguf:
            result.gguf = write_gguf(staging, staging / GGUF_NAME, kind=gguf, template=chat_template).path.name
        if verify:
            result.reply, result.ended_on_end_of_turn = verify_merged(
                staging, chat_template, prompt=verify_prompt, max_new_tokens=verify_max_new_tokens
            )
    log.info("merged %s + %s -> %s", base, found.adapter_dir, out_dir)
    if verify and not result.ended_on_end_of_turn:
        raise ModelError(
            f"the merged model was saved to {out_dir}, but its test reply did not end on the "
            f"end-of-turn token {chat_template.end_of_turn!r} within {verify_max_new_tokens} tokens "
            f"(reply: {result.reply[:200]!r}). Check that --template matches the one used in training"
        )
    return result


def verify_merged(folder: Path, chat_template, *, prompt: str, max_new_tokens: int) -> tuple[str, bool]:
    """Reload a saved model with plain transformers, answer ``prompt`` greedily (tuner.chat.generate).

    Returns (reply without special tokens, whether the answer ended on the end-of-turn token).
    """
    from transformers import AutoModelForCausalLM


    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    try:
        [answer] = greedy_answers(model, tokenizer, chat_template, [prompt], max_new_tokens=max_new_tokens)
    finally:
        release(model)
    eot = single_token_id(tokenizer, chat_template.end_of_turn)
    ended = answer.stop_id == eot if eot is not None else answer.finished
    return answer.text, ended
