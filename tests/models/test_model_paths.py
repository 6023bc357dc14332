"""What a model path says when it is not a model folder."""

from __future__ import annotations

import pytest

from tuner.core.errors import ModelError
from tuner.models.load import resolve_model_path


def test_a_model_path_that_is_a_file_says_it_is_a_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(
        ModelError, match="is a file, not a model folder; give the folder that holds config.json"
    ):
        resolve_model_path(str(weights))
    with pytest.raises(ModelError, match="no config.json in this folder"):
        resolve_model_path(str(tmp_path))
