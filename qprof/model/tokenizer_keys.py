"""Type checks of every `tokenizer.*` metadata key, run when a model is loaded (before anything uses them).

A GGUF may store any key with any value type. A special-token id written as a string, or a chat
template written as an integer, loads fine and then breaks the tokenizer deep inside generation;
here it becomes one line that names the key, the type it has and the type it needs. The expected
types are llama.cpp's (gguf-py's writer uses the same ones); any integer type is accepted where
llama.cpp reads a uint32, and any number where it reads a float32.
"""

from __future__ import annotations

from typing import Any

from qprof.errors import MalformedModelError

STRING, INTEGER, BOOLEAN = "string", "integer", "boolean"
STRINGS, NUMBERS, INTEGERS = "array of strings", "array of numbers", "array of integers"

# Exact keys, then key prefixes (chat templates come in named variants).
TOKENIZER_KEYS: dict[str, str] = {
    "tokenizer.ggml.model": STRING,
    "tokenizer.ggml.pre": STRING,
    "tokenizer.ggml.tokens": STRINGS,
    "tokenizer.ggml.scores": NUMBERS,
    "tokenizer.ggml.token_type": INTEGERS,
    "tokenizer.ggml.token_type_count": INTEGER,
    "tokenizer.ggml.merges": STRINGS,
    "tokenizer.ggml.added_tokens": STRINGS,
    "tokenizer.ggml.precompiled_charsmap": INTEGERS,
    "tokenizer.ggml.add_bos_token": BOOLEAN,
    "tokenizer.ggml.add_eos_token": BOOLEAN,
    "tokenizer.ggml.add_sep_token": BOOLEAN,
    "tokenizer.ggml.add_space_prefix": BOOLEAN,
    "tokenizer.ggml.remove_extra_whitespaces": BOOLEAN,
    "tokenizer.chat_templates": STRINGS,
    "tokenizer.huggingface.json": STRING,
    "tokenizer.rwkv.world": STRING,
}
TOKENIZER_KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("tokenizer.chat_template", STRING),  # the default template and tokenizer.chat_template.<name>
)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECKS = {
    STRING: lambda v: isinstance(v, str),
    INTEGER: _is_int,
    BOOLEAN: lambda v: isinstance(v, bool),
    STRINGS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    NUMBERS: lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
    INTEGERS: lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
}


def expected_type(key: str) -> str | None:
    """What type `key` must have, or None for a key qprof does not read (left alone)."""
    if key in TOKENIZER_KEYS:
        return TOKENIZER_KEYS[key]
    if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
        return INTEGER  # bos, eos, eot, eom, unknown, padding, seperator, mask, fim_*, prefix/suffix/middle
    for prefix, kind in TOKENIZER_KEY_PREFIXES:
        if key == prefix or key.startswith(prefix + "."):
            return kind
    return None


def describe(value: Any) -> str:
    """'string '12'', 'integer 7', 'array of integer', ... for an error message (short)."""
    if isinstance(value, list):
        kinds = sorted({type(x).__name__ for x in value[:1000]}) or ["nothing"]
        return f"array of {'/'.join(_PY_NAMES.get(k, k) for k in kinds)}"
    text = repr(value)
    return f"{_PY_NAMES.get(type(value).__name__, type(value).__name__)} {text[:40]}{'...' if len(text) > 40 else ''}"


_PY_NAMES = {"str": "string", "int": "integer", "float": "float", "bool": "boolean", "NoneType": "nothing"}


def check_tokenizer_metadata(meta: dict[str, Any], name: str) -> None:
    """Refuse the first tokenizer key whose value has the wrong type; `name` (the file) starts the message."""
    for key, value in meta.items():
        kind = expected_type(key)
        if kind is not None and value is not None and not _CHECKS[kind](value):
            article = "an" if kind[0] in "aeiou" else "a"
            raise MalformedModelError(
                f"{name}: metadata key {key!r} must be {article} {kind}, got {describe(value)}")
