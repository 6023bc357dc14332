"""Loading helpers for a chat session: the adapter folder, the settings of the run that trained it,
the tokenizer to chat with and the model's context window.

``tuner.chat.ChatSession`` calls these when it loads; ``TOKENIZER_FILES`` and ``chat_tokenizer``
are re-exported by ``tuner.chat`` (``tuner.export`` imports them from there).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tuner.models.load import load_tokenizer, with_pad_token
from tuner.runs.adapters import locate_adapter

# Logged under tuner.chat, the name these messages had before this module was split out of it.
log = logging.getLogger("tuner.chat")

# Files that mark a folder as holding a saved tokenizer (an exported adapter or a run's adapter/).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


# -------------------------------------------------------------------------------- loading helpers


def adapter_folder(path: Path) -> Path:
    """Accept an adapter folder, a checkpoint or a run folder (its final adapter or last checkpoint)."""

    return locate_adapter(path).adapter_dir


def saved_setting(adapter_dir: Path | None, key: str) -> str | None:
    """A setting (template, system) of the run that trained the adapter, when the adapter folder sits
    in (or was exported from) a run."""
    if adapter_dir is None:
        return None

    return locate_adapter(adapter_dir).config.get(key)


def chat_tokenizer(model_name: str, adapter_dir: Path | None, trust_remote_code: bool):
    """The adapter's saved tokenizer (it carries the training chat template) or the base model's."""

    if adapter_dir is not None and any((adapter_dir / f).is_file() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            log.warning(
                "could not load the tokenizer saved with the adapter (%s); using the base model's", exc
            )
        else:
            return with_pad_token(tokenizer)
    return load_tokenizer(model_name, trust_remote_code=trust_remote_code)


def model_context_window(model, tokenizer) -> int:
    """Tokens the model handles: its config's max_position_embeddings, or the tokenizer's limit if smaller."""
    config = getattr(model, "config", None)
    sizes = [getattr(config, "max_position_embeddings", None)]
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**7:  # tokenizers without a limit report ~1e30
        sizes.append(limit)
    sizes = [s for s in sizes if isinstance(s, int) and s > 0]
    return min(sizes) if sizes else 2048
