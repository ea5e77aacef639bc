"""Tokenizer built from a GGUF's metadata (SentencePiece "llama" or byte-level BPE "gpt2"), with chat templates.

The vocabulary is turned into a `tokenizers.Tokenizer` by transformers' own GGUF conversion
(`convert_gguf_tokenizer`), so qprof has no BPE of its own. On top of it this module adds what
llama.cpp does and that conversion leaves to the caller: the pre-tokenizer split named by
`tokenizer.ggml.pre`, the SentencePiece space prefix from `tokenizer.ggml.add_space_prefix`,
BOS per `tokenizer.ggml.add_bos_token`, the set of end-of-generation ids (qprof.model.special_tokens),
and the chat template.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from qprof.errors import MalformedModelError, UnsupportedError
from qprof.model.special_tokens import eog_ids
from qprof.model.tokenizer_keys import check_tokenizer_metadata

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# Split regexes llama.cpp uses for `tokenizer.ggml.pre` values that transformers' table lacks.
# The second pattern is GPT-2's, which `ByteLevel(use_regex=True)` applies by itself.
_DIGITS_THEN_GPT2 = ("digits", "gpt2")
_GPT2_ONLY = ("gpt2",)
PRE_TOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    "smollm": _DIGITS_THEN_GPT2,
    "starcoder": _DIGITS_THEN_GPT2,
    "refact": _DIGITS_THEN_GPT2,
    "command-r": _DIGITS_THEN_GPT2,
    "codeshell": _DIGITS_THEN_GPT2,
    "exaone": _DIGITS_THEN_GPT2,
    "minerva-7b": _DIGITS_THEN_GPT2,
    "gpt-2": _GPT2_ONLY,
    "gpt2": _GPT2_ONLY,
    "default": _GPT2_ONLY,
    "mpt": _GPT2_ONLY,
    "olmo": _GPT2_ONLY,
    "jais": _GPT2_ONLY,
}

def _transformers_conversion():
    """(metadata-key -> dict-key mapping, convert_gguf_tokenizer) from whichever transformers is installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the conversion needs no hub; never let it try
    try:  # transformers >= 5
        from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

        return GGUF_TOKENIZER_MAPPING["tokenizer"], convert_gguf_tokenizer
    except ImportError:  # transformers 4.x keeps the same function in integrations.ggml
        from transformers.integrations import ggml

        table = getattr(ggml, "GGUF_TOKENIZER_MAPPING", None) or ggml.GGUF_TO_TRANSFORMERS_MAPPING
        return table["tokenizer"], ggml.convert_gguf_tokenizer


@contextmanager
def _quiet_transformers():
    """No progress bars or warnings from the conversion (transformers 4.x draws one while deriving merges)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _set_pre_tokenizer(backend, kind: str, pre: str | None) -> str:
    """Apply llama.cpp's split for `pre` where transformers did not; returns a note of what was used."""
    from tokenizers import Regex, pre_tokenizers

    if kind != "gpt2" or pre is None:
        return "sentencepiece" if kind == "llama" else "default"
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        GGUF_PRE_TOKENIZER_SPLITS = {}
    if pre in GGUF_PRE_TOKENIZER_SPLITS:
        return f"{pre} (transformers)"
    steps = PRE_TOKENIZER_SPLITS.get(pre)
    if steps is None:
        return f"{pre} (unknown to qprof; GPT-2 split used)"
    parts = []
    if "digits" in steps:
        parts.append(pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"))
    parts.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(parts)
    return pre


def _set_space_prefix(backend, add_space_prefix: bool) -> None:
    """SentencePiece vocabularies, spaced as llama.cpp does it.

    llama.cpp writes spaces as '▁' and, when tokenizer.ggml.add_space_prefix is true (the default),
    puts one '▁' before every run of text that starts the input or follows a special token. A
    normalizer does exactly that, because special tokens are split out before it runs. (transformers
    5's Metaspace adds none when the text already starts with a space, nor after special tokens.)
    """
    from tokenizers import decoders, normalizers

    escape = normalizers.Replace(" ", "\u2581")
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), escape]) if add_space_prefix else escape
    backend.pre_tokenizer = None
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)


@dataclass
class Tokenizer:
    """Text <-> token ids for one GGUF model."""

    backend: Any = field(repr=False)  # tokenizers.Tokenizer
    kind: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str] = field(repr=False)
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    chat_template: str | None = field(default=None, repr=False)
    pre_tokenizer: str = "default"
    eog_ids: frozenset[int] = frozenset()

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def bos_token(self) -> str:
        return self.tokens[self.bos_id] if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self.tokens[self.eos_id] if self.eos_id is not None else ""

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; control tokens written in the text (e.g. '<|im_start|>') stay whole."""
        ids = list(self.backend.encode(text, add_special_tokens=False).ids)
        add_bos = self.add_bos if add_bos is None else add_bos
        if add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat template applied to `messages` (jinja, with transformers' conventions)."""
        if not self.chat_template:
            raise UnsupportedError("this model has no chat template (tokenizer.chat_template); use --no-chat")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise MalformedModelError(f"chat template failed: {str(exc).splitlines()[0]}") from None

    def encode_prompt(self, prompt: str, chat: bool = True) -> list[int]:
        """Ids for a user prompt: through the chat template when `chat` and the model has one.

        A rendered template usually writes BOS itself; add it only if the template did not.
        """
        if chat and self.chat_template:
            return self.encode(self.render_chat([{"role": "user", "content": prompt}]))
        return self.encode(prompt)


def tokenizer_from_metadata(meta: dict[str, Any], name: str = "model") -> Tokenizer:
    """Build the tokenizer a GGUF's metadata describes; `name` labels error messages."""
    check_tokenizer_metadata(meta, name)  # load_model has done it for files; plain dicts get it here
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not kind or not tokens:
        raise MalformedModelError(f"{name}: no tokenizer in metadata (tokenizer.ggml.model / tokenizer.ggml.tokens)")
    if kind not in ("llama", "gpt2"):
        raise UnsupportedError(f"{name}: tokenizer type {kind!r} is not supported; supported: llama, gpt2")
    if kind == "llama" and meta.get("tokenizer.ggml.scores") is None:
        raise MalformedModelError(f"{name}: SentencePiece tokenizer without tokenizer.ggml.scores")
    if kind == "gpt2" and meta.get("tokenizer.ggml.merges") is None:
        raise MalformedModelError(f"{name}: BPE tokenizer without tokenizer.ggml.merges")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if meta.get(key) is not None and len(meta[key]) != len(tokens):
            raise MalformedModelError(f"{name}: {key} has {len(meta[key])} entries for {len(tokens)} tokens")

    mapping, convert = _transformers_conversion()
    tdict = {dst: meta[f"tokenizer.{src}"] for src, dst in mapping.items() if f"tokenizer.{src}" in meta}
    arch = str(meta.get("general.architecture", "llama"))
    try:
        with _quiet_transformers():
            backend, _ = convert(arch, tdict)
    except Exception as exc:  # noqa: BLE001 -- any converter failure means a malformed vocabulary
        raise MalformedModelError(f"{name}: cannot build tokenizer: {str(exc).splitlines()[0]}") from None
    if kind == "llama":
        _set_space_prefix(backend, bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    pre_note = _set_pre_tokenizer(backend, kind, meta.get("tokenizer.ggml.pre"))

    def token_id(key: str) -> int | None:
        v = meta.get(key)  # an integer (checked above); ids outside the vocabulary are ignored, as llama.cpp does
        return v if v is not None and 0 <= v < len(tokens) else None

    # llama.cpp adds BOS to a SentencePiece vocabulary unless told otherwise, never to BPE by default
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    return Tokenizer(
        backend=backend,
        kind=kind,
        tokens=list(tokens),
        bos_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_id=token_id("tokenizer.ggml.eos_token_id"),
        add_bos=add_bos,
        chat_template=meta.get("tokenizer.chat_template"),
        pre_tokenizer=pre_note,
        eog_ids=eog_ids(meta, tokens),
    )


def load_tokenizer(model) -> Tokenizer:
    """The tokenizer of a loaded qprof GGUFModel."""
    return tokenizer_from_metadata(model.metadata, model.path.name)
