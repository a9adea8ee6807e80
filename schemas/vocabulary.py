"""The vocabulary file format: ``vocab.txt``, plain UTF-8 text, one token per line, the line index is the id.

The first four lines are reserved, in this order:

====  ===========  =====================================================
 id    token        meaning
====  ===========  =====================================================
 0     ``<pad>``    padding; never predicted, masked out of the loss
 1     ``<unk>``    any word not in the vocabulary
 2     ``<start>``  first input token of every caption sequence
 3     ``<end>``    last target token of every caption sequence
====  ===========  =====================================================

The remaining lines are the words, most frequent first, ties in alphabetical order, so the same captions always
give the same file.
"""
import collections
from typing import Iterable, Mapping

from schemas import fileio
from schemas.captions import END_TOKEN, START_TOKEN

PAD_TOKEN = "<pad>"
UNKNOWN_TOKEN = "<unk>"
RESERVED_TOKENS = (PAD_TOKEN, UNKNOWN_TOKEN, START_TOKEN, END_TOKEN)
PAD_ID, UNKNOWN_ID, START_ID, END_ID = range(len(RESERVED_TOKENS))

VOCAB_FILE = "vocab.txt"


def ordered_words(word_counts: Mapping[str, int], min_count: int) -> list[str]:
    """Words with at least ``min_count`` occurrences, most frequent first, ties alphabetical."""
    kept = [(count, word) for word, count in word_counts.items()
            if count >= min_count and word not in RESERVED_TOKENS]
    return [word for count, word in sorted(kept, key=lambda item: (-item[0], item[1]))]


class Vocabulary:
    """Maps tokens to ids and back. Build with `from_word_counts` or `load`."""

    def __init__(self, tokens: Iterable[str]):
        self.tokens = tuple(tokens)
        if self.tokens[:len(RESERVED_TOKENS)] != RESERVED_TOKENS:
            raise ValueError(f"a vocabulary must start with the reserved tokens {RESERVED_TOKENS}, "
                             f"got {self.tokens[:len(RESERVED_TOKENS)]}")
        self._ids = {token: index for index, token in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            duplicates = [t for t, n in collections.Counter(self.tokens).items() if n > 1]
            raise ValueError(f"duplicate tokens in vocabulary: {duplicates[:5]}")

    @classmethod
    def from_word_counts(cls, word_counts: Mapping[str, int], min_count: int = 1) -> "Vocabulary":
        return cls(RESERVED_TOKENS + tuple(ordered_words(word_counts, min_count)))

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def id_of(self, token: str) -> int:
        return self._ids.get(token, UNKNOWN_ID)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.id_of(token) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def to_text(self) -> str:
        return "".join(f"{token}\n" for token in self.tokens)

    @classmethod
    def from_text(cls, text: str, source: str = "vocabulary") -> "Vocabulary":
        tokens = text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        for line_number, token in enumerate(tokens, start=1):
            if not token or token != token.strip() or " " in token:
                raise ValueError(f"{source}:{line_number}: a vocabulary line must hold exactly one token "
                                 f"without spaces, got {token!r}")
        try:
            return cls(tokens)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def save(self, path: str) -> None:
        fileio.write_text(path, self.to_text())

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        return cls.from_text(fileio.read_text(path), source=path)
