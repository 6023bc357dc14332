"""Model shapes read from config.json: what a missing key means is what the model's config class says."""

from __future__ import annotations

import json

import pytest

from tuner.models.shape import shape_from_config

GEMMA_2_2B = {  # google/gemma-2-2b-it's config.json: no tie_word_embeddings key
    "model_type": "gemma2",
    "hidden_size": 2304,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 9216,
    "vocab_size": 256000,
    "head_dim": 256,
}


@pytest.mark.parametrize("model_type", ["gemma", "gemma2", "gemma3_text"])
def test_a_gemma_config_without_the_tie_key_is_tied_as_its_config_class_says(model_type):
    import transformers

    config_class = transformers.AutoConfig.for_model(model_type).__class__
    assert config_class().tie_word_embeddings  # what transformers builds from such a file
    tied = shape_from_config({**GEMMA_2_2B, "model_type": model_type})
    untied = shape_from_config({**GEMMA_2_2B, "model_type": model_type, "tie_word_embeddings": False})
    assert tied.tied and not untied.tied
    assert untied.params - tied.params == 256000 * 2304  # the embedding counted once, not twice


def test_a_llama_config_without_the_tie_key_is_untied():
    llama = {**GEMMA_2_2B, "model_type": "llama"}
    assert not shape_from_config(llama).tied


class _Hub:
    """huggingface_hub.hf_hub_download as on a machine whose hub is unreachable and whose cache holds
    only ``cached`` (id -> config dict): records every call, and whether it would have gone online."""

    def __init__(self, tmp_path, cached: dict):
        self.tmp_path, self.cached, self.calls = tmp_path, cached, []

    def __call__(self, repo_id, filename, local_files_only=False, **_):
        self.calls.append((repo_id, local_files_only))
        if repo_id in self.cached:
            path = self.tmp_path / repo_id.replace("/", "--") / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.cached[repo_id]))
            return str(path)
        raise OSError("offline" if local_files_only else "connection timed out")


def test_a_preset_models_shape_needs_no_network_and_a_cached_config_wins(tmp_path, monkeypatch):
    import huggingface_hub

    from tuner.models.published import PUBLISHED
    from tuner.models.shape import model_shape

    model = "internlm/internlm2-chat-7b"
    hub = _Hub(tmp_path, cached={})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    assert model_shape(model) == shape_from_config(PUBLISHED[model])
    assert hub.calls == [(model, True)]  # the cache only: an unreachable hub is never waited on
    # a config.json in the cache is read first (a local copy may be a newer revision)
    hub = _Hub(tmp_path, cached={model: {**PUBLISHED[model], "num_hidden_layers": 7}})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    assert model_shape(model).layers == 7 and hub.calls == [(model, True)]


def test_an_unknown_hub_id_is_downloaded_or_named_in_the_error(tmp_path, monkeypatch):
    import huggingface_hub

    from tuner.core.errors import ModelError
    from tuner.models.shape import model_shape

    online = {**GEMMA_2_2B}
    hub = _Hub(tmp_path, cached={})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    with pytest.raises(ModelError, match="someone/unknown-7b: no config.json found locally"):
        model_shape("someone/unknown-7b")
    assert hub.calls == [("someone/unknown-7b", True), ("someone/unknown-7b", False)]

    def download(repo_id, filename, local_files_only=False, **_):
        if local_files_only:
            raise OSError("not cached")
        path = tmp_path / "downloaded.json"
        path.write_text(json.dumps(online))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert model_shape("someone/gemma-like").hidden == 2304
