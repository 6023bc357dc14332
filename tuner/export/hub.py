"""Uploading a folder to the Hugging Face Hub, with clear errors offline or without a token."""

from __future__ import annotations

import os
from pathlib import Path

from tuner.core.errors import TunerError


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_token() -> str:
    """The Hugging Face token to upload with; TunerError when offline or not logged in.

    Called before a long merge, so that a missing login is reported before the work, not after.
    """
    if _offline():
        raise TunerError(
            "cannot upload: HF_HUB_OFFLINE is set (no network). Unset it on a machine with network "
            "access and log in with `hf auth login`, or upload the folder later"
        )
    import huggingface_hub

    token = huggingface_hub.get_token()
    if not token:
        raise TunerError("cannot upload: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")
    return token


def push_folder(folder: str | Path, repo_id: str, *, private: bool = True) -> str:
    """Upload ``folder`` to the Hugging Face Hub as model repo ``repo_id`` (created private if new).

    Returns the repo URL. Raises TunerError when offline, without a token, or when the upload fails.
    """
    token = hub_token()
    import huggingface_hub

    api = huggingface_hub.HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload with tuner")
    except Exception as exc:  # network and hub errors: say what happened, not a traceback
        raise TunerError(f"upload to {repo_id} failed: {exc}") from None
    return str(url)
