"""A deterministic SentencePiece-style ("llama") vocabulary for synthetic models, as GGUF tokenizer keys.

Layout follows Llama/Mistral: <unk>, <s>, </s>, the 256 byte-fallback tokens <0x00>..<0xFF>, then
pieces. Every multi-character piece's prefix is also a piece, so the merges that transformers
recovers from the scores reach every piece, and any text round-trips (unknown characters fall
back to bytes).
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from qprof.errors import QprofError

SPACE = "\u2581"  # SentencePiece's visible space
UNK, BOS, EOS = 0, 1, 2
N_BYTE_TOKENS = 256
# gguf TokenType values
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_BYTE = 1, 2, 3, 6

# Common English words first, so small vocabularies still tokenize ordinary text into whole words.
_COMMON_WORDS_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who its now find long down day did get "
    "come made may part created model answer question hello world token text quick brown fox jumps over lazy "
    "dog who are you help assistant user system name trained language"
)
COMMON_WORDS = tuple(_COMMON_WORDS_TEXT.split())
# Letters weighted roughly by English frequency, for the seeded filler words.
_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
_LETTER_WEIGHTS = np.array(
    [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0,
     0.8, 0.15, 0.15, 0.1, 0.07]
)  # fmt: skip
SINGLE_CHARS = SPACE + string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation


def byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


def _pieces(n_pieces: int, seed: int) -> list[str]:
    """Ordered pieces: single characters, then prefix-closed words (common first, then seeded)."""
    pieces: dict[str, None] = dict.fromkeys(SINGLE_CHARS)

    def add_word(word: str) -> None:
        for spelled in (SPACE + word, word):
            for end in range(2, len(spelled) + 1):
                pieces.setdefault(spelled[:end])

    for word in COMMON_WORDS:
        add_word(word)
    for word in COMMON_WORDS:
        add_word(word.capitalize())
    rng = np.random.default_rng(seed)
    probs = _LETTER_WEIGHTS / _LETTER_WEIGHTS.sum()
    while len(pieces) < n_pieces:
        length = int(rng.integers(2, 9))
        add_word("".join(rng.choice(list(_LETTERS), size=length, p=probs)))
    return list(pieces)[:n_pieces]


def min_vocab_size() -> int:
    return 3 + N_BYTE_TOKENS + len(SINGLE_CHARS)


def synthetic_vocab(n_vocab: int, seed: int = 0) -> dict[str, Any]:
    """GGUF `tokenizer.*` metadata for an n_vocab-token llama (SentencePiece BPE) vocabulary."""
    if n_vocab < min_vocab_size():
        raise QprofError(f"synthetic vocabulary needs at least {min_vocab_size()} tokens, got {n_vocab}")
    tokens = ["<unk>", "<s>", "</s>"] + [byte_token(b) for b in range(N_BYTE_TOKENS)]
    types = [TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL] + [TYPE_BYTE] * N_BYTE_TOKENS
    scores = [0.0] * len(tokens)
    pieces = _pieces(n_vocab - len(tokens), seed)
    tokens += pieces
    types += [TYPE_NORMAL] * len(pieces)
    # SentencePiece scores: higher merges first; shorter pieces come first in the list, so they rank higher.
    scores += [-float(i) for i in range(len(pieces))]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": BOS,
        "tokenizer.ggml.eos_token_id": EOS,
        "tokenizer.ggml.unknown_token_id": UNK,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": True,
        "tokenizer.chat_template": MISTRAL_CHAT_TEMPLATE,
    }


# Mistral-Instruct's [INST] format, so chat code paths have a template to apply on synthetic models too.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
