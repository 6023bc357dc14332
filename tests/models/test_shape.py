"""Model shapes read from config.json: what a missing key means is what the model's config class says."""

from __future__ import annotations

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
