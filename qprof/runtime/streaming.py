"""Print generated text as the tokens arrive, without splitting a UTF-8 character or repeating text.

Detokenizing one id at a time is wrong for byte-level BPE (a character can span tokens) and for
SentencePiece (a word's leading space depends on what precedes it), so the stream decodes every
id so far and writes only what was added, once the text no longer ends in a partial character.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"  # what decode() yields for the first bytes of a character split across tokens


class TextStream:
    def __init__(self, tokenizer, write: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.write = write
        self.ids: list[int] = []
        self.printed = ""  # the text written so far

    def push(self, token_id: int) -> None:
        self.ids.append(token_id)
        self._emit(final=False)

    def finish(self) -> str:
        """Write what is left (a trailing partial character included) and return the whole answer."""
        self._emit(final=True)
        return self.printed

    def _emit(self, final: bool) -> None:
        # the answer as shown: stripped at both ends, so trailing whitespace waits for the text after it
        text = self.tokenizer.decode(self.ids).strip()
        if not final and (text.endswith(REPLACEMENT) or not text.startswith(self.printed)):
            return  # wait for the rest of the character, or for the decoder to settle on a prefix
        if not text.startswith(self.printed):
            return  # the decoder rewrote earlier text: what is shown stands
        new = text[len(self.printed):]
        if new:
            self.write(new)
            self.printed += new
