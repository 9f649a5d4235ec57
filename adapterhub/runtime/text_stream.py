"""A request's generated tokens as text that can be sent piece by piece, cut at its stop strings.

Text is decoded from all of a request's tokens each time (a token's text depends on its neighbours: byte-level
BPE splits a character over several tokens, SentencePiece drops or keeps a leading space), and only the part
that is final is released: nothing that ends in an incomplete character (U+FFFD), and nothing that could still
become the start of a stop string. When the request ends (``finish``), an incomplete character at the end can no
longer complete and is dropped: an answer cut by ``max_tokens`` inside a character ends with the last whole one
(``complete_text`` does the same for text decoded in one go). transformers' ``TextIteratorStreamer`` releases at
word boundaries and knows no stop strings, and ``generate``'s ``stop_strings`` needs a whole generate call, so
this is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

INCOMPLETE = "\ufffd"


@dataclass
class TextStream:
    tokenizer: PreTrainedTokenizerBase
    stop: tuple[str, ...] = ()
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # everything decoded so far, cut at a stop string once one is found
    sent: int = 0  # characters of ``text`` already released
    stopped: bool = False

    def add(self, token: int) -> str:
        """Take one more token; return the text that became final (may be empty)."""
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.stop:
            at = self.text.find(stop, max(0, self.sent - len(stop)))
            if at != -1:
                self.text, self.stopped = self.text[:at], True
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """The text held back so far, less an incomplete character at its end: the request ended, nothing more can
        complete it."""
        return self._release(final=True)

    @property
    def released(self) -> str:
        """All the text released so far."""
        return self.text[: self.sent]

    def _release(self, final: bool) -> str:
        end = len(complete_text(self.text))
        if not final:
            end -= max((_overlap(self.text[:end], stop) for stop in self.stop), default=0)
        end = max(end, self.sent)
        piece, self.sent = self.text[self.sent : end], end
        return piece


def complete_text(text: str) -> str:
    """``text`` without the replacement characters a decoder wrote at its end for an incomplete character."""
    return text.rstrip(INCOMPLETE)


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that is a beginning of ``stop`` (shorter than all of it)."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
