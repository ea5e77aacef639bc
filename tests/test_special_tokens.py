"""The end-of-generation set follows llama.cpp's rule; every tokenizer key is type-checked when a model loads."""

from __future__ import annotations

import pytest
from tiny_gguf import sp_metadata

from qprof.errors import MalformedModelError
from qprof.model.special_tokens import eog_ids, special_ids
from qprof.model.tokenizer_keys import check_tokenizer_metadata, expected_type


def _bpe(tokens: list[str], **keys) -> dict:
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, **keys}


def test_smollm2_vocabulary_head_gives_llama_cpps_set():
    """SmolLM2's first tokens and keys: llama.cpp stops at 0, 2 and 4 (<reponame> is the FIM repo token)."""
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "a", "b",
              "c", "d", "e", "f"]
    meta = _bpe(tokens, **{"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                           "tokenizer.ggml.padding_token_id": 2})
    assert eog_ids(meta, tokens) == {0, 2, 4}
    assert special_ids(meta, tokens) == {"eos": 2, "fim_rep": 4}


def test_metadata_ids_count_and_out_of_range_ones_are_ignored():
    tokens = [f"t{i}" for i in range(20)]
    meta = _bpe(tokens, **{"tokenizer.ggml.eos_token_id": 3, "tokenizer.ggml.eot_token_id": 5,
                           "tokenizer.ggml.eom_token_id": 99, "tokenizer.ggml.fim_sep_token_id": 7,
                           "tokenizer.ggml.fim_pad_token_id": 8})
    assert eog_ids(meta, tokens) == {3, 5, 7, 8}


def test_terminator_texts_count_whatever_their_token_type():
    tokens = ["<s>", "</s>", "x", "<|eot_id|>", "<end_of_turn>", "<|end_of_text|>", "<|eom_id|>", "y"]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.token_type": [1] * len(tokens)}  # all NORMAL: llama.cpp overrides them to CONTROL
    assert eog_ids(meta, tokens) == {1, 3, 4, 5, 6}


def test_default_eos_per_vocabulary_type_without_a_key():
    tokens = [f"t{i}" for i in range(12)]
    assert eog_ids({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens}, tokens) == {2}
    assert eog_ids(_bpe(tokens), tokens) == {11}
    assert eog_ids(_bpe(tokens[:5]), tokens[:5]) == set()  # the default is outside a 5-token vocabulary


def test_end_is_not_eog_beside_return_and_call_and_s_not_beside_tool_response():
    harmony = ["<|return|>", "<|call|>", "<|end|>", "z"]
    assert eog_ids(_bpe(harmony, **{"tokenizer.ggml.eos_token_id": 0}), harmony) == {0, 1}
    phi = ["<|end|>", "<|endoftext|>", "q"]
    assert eog_ids(_bpe(phi, **{"tokenizer.ggml.eos_token_id": 1}), phi) == {0, 1}
    gemma = ["</s>", "<|tool_response>", "<eos>", "w"]
    assert eog_ids(_bpe(gemma, **{"tokenizer.ggml.eos_token_id": 2}), gemma) == {1, 2}


@pytest.mark.parametrize("key, value, needle", [
    ("tokenizer.ggml.eos_token_id", "2", "'tokenizer.ggml.eos_token_id' must be an integer, got string '2'"),
    ("tokenizer.ggml.bos_token_id", 1.0, "must be an integer, got float 1.0"),
    ("tokenizer.ggml.padding_token_id", True, "must be an integer, got boolean True"),
    ("tokenizer.chat_template", 7, "'tokenizer.chat_template' must be a string, got integer 7"),
    ("tokenizer.chat_template.tool_use", [1], "must be a string, got array of integer"),
    ("tokenizer.ggml.add_bos_token", 1, "'tokenizer.ggml.add_bos_token' must be a boolean, got integer 1"),
    ("tokenizer.ggml.model", 3, "'tokenizer.ggml.model' must be a string"),
    ("tokenizer.ggml.tokens", [1, 2], "'tokenizer.ggml.tokens' must be an array of strings, got array of integer"),
    ("tokenizer.ggml.scores", ["a"], "'tokenizer.ggml.scores' must be an array of numbers"),
    ("tokenizer.ggml.token_type", [1.5], "'tokenizer.ggml.token_type' must be an array of integers"),
    ("tokenizer.ggml.merges", "a b", "'tokenizer.ggml.merges' must be an array of strings, got string"),
])
def test_every_tokenizer_key_is_type_checked(key, value, needle):
    meta = sp_metadata()
    meta[key] = value
    with pytest.raises(MalformedModelError) as info:
        check_tokenizer_metadata(meta, "bad.gguf")
    msg = str(info.value)
    assert msg.startswith("bad.gguf: ") and needle in msg and "\n" not in msg


def test_unknown_tokenizer_keys_are_left_alone():
    assert expected_type("tokenizer.ggml.something_new") is None
    assert expected_type("general.name") is None
    check_tokenizer_metadata({**sp_metadata(), "tokenizer.ggml.something_new": [1, "x"]}, "ok.gguf")
