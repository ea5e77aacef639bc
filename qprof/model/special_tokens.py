"""The end-of-generation token set of a GGUF vocabulary, derived by the rule llama.cpp's vocabulary loader uses.

llama.cpp stops generation at any token in its EOG set. It builds that set from three sources
(src/llama-vocab.cpp, `load`):

1. special ids from metadata: `tokenizer.ggml.{eos,eot,eom}_token_id` and the fill-in-the-middle
   pad / repo / file-separator ids `tokenizer.ggml.fim_{pad,rep,sep}_token_id`. An id outside the
   vocabulary is ignored. Without an eos key the vocabulary type's default applies (SentencePiece
   "llama": 2, byte-level BPE "gpt2": 11) when the vocabulary is that large.
2. FIM ids the metadata does not give are found by token text (`<|fim_pad|>`, `<reponame>`, ...).
3. every token whose text is one of the usual turn / text terminators (`<|im_end|>`, `<|endoftext|>`,
   `<|eot_id|>`, `<|end|>`, ...), whatever its token type.

Two exceptions follow: `<|end|>` is not EOG in vocabularies that also end turns with `<|return|>` /
`<|call|>` (or `<|calls|>` / `<|flush|>`), and `</s>` is not EOG next to gemma-4's `<|tool_response>`.
For SmolLM2 the rule gives ids 0 (`<|endoftext|>`), 2 (`<|im_end|>`, also eos) and 4 (`<reponame>`, FIM repo).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Token texts that end generation by themselves (rule 3).
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
})

# Fill-in-the-middle tokens that are EOG, found by text when the metadata does not name them (rule 2).
FIM_TEXTS: dict[str, tuple[str, ...]] = {
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

SPECIAL_ID_KEYS = {name: f"tokenizer.ggml.{name}_token_id" for name in ("eos", "eot", "eom", *FIM_TEXTS)}
DEFAULT_EOS = {"llama": 2, "gpt2": 11}  # llama.cpp's eos for each vocabulary type when no key says otherwise


def _metadata_id(meta: dict[str, Any], key: str, n_vocab: int) -> int | None:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None  # absent; a wrongly typed value is refused earlier, by check_tokenizer_metadata
    return value if 0 <= value < n_vocab else None


def special_ids(meta: dict[str, Any], tokens: Sequence[str]) -> dict[str, int]:
    """eos / eot / eom / fim_pad / fim_rep / fim_sep -> id, for those this vocabulary has (rules 1 and 2)."""
    n_vocab = len(tokens)
    out: dict[str, int] = {}
    for name, key in SPECIAL_ID_KEYS.items():
        found = _metadata_id(meta, key, n_vocab)
        if found is None and name == "eos" and key not in meta:
            default = DEFAULT_EOS.get(str(meta.get("tokenizer.ggml.model")))
            found = default if default is not None and default < n_vocab else None
        if found is None and name in FIM_TEXTS:
            # the lowest id with a candidate text (llama.cpp takes whichever its hash map yields first)
            found = next((i for i, text in enumerate(tokens) if text in FIM_TEXTS[name]), None)
        if found is not None:
            out[name] = found
    return out


def eog_ids(meta: dict[str, Any], tokens: Sequence[str]) -> frozenset[int]:
    """Every id at which llama.cpp would stop generating with this vocabulary."""
    last_id = {text: i for i, text in enumerate(tokens) if text in EOG_TEXTS}  # llama.cpp maps a text to its last id
    ids = set(last_id.values()) | set(special_ids(meta, tokens).values())
    texts = {tokens[i] for i in ids}
    has_call = "<|call|>" in texts or "<|calls|>" in texts
    if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
        ids.discard(last_id["<|end|>"])
    if "</s>" in texts and "<|tool_response>" in texts:
        ids.discard(last_id["</s>"])
    return frozenset(ids)
