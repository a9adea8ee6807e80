"""Caption normalization rules, shared by the extract job, the trainer and evaluation.

The rules follow the usual Flickr8k/COCO evaluation protocol:

1. lowercase;
2. remove punctuation characters (``string.punctuation``) -- so ``dog's`` becomes ``dogs`` and ``dog 's``
   becomes ``dog s``;
3. characters that are not printable split words if they are control characters or separators (``d\\x00og`` is
   ``d og``), and are removed if they are invisible format, private-use, surrogate or unassigned code points
   (``\\u202eevil``, a right-to-left override, is ``evil``; a zero-width space inside a word joins it): every
   token is a printable word;
4. split on whitespace;
5. drop tokens that contain a digit;
6. keep every other token, one-letter words such as ``a`` included (the seed tutorial drops them; that throws
   away the most frequent word of the corpus and makes generated captions ungrammatical).

Captions longer than ``DEFAULT_MAX_CAPTION_WORDS`` words after normalization are not training data (a table's
stray paragraph, a 1 MB cell): the extract job leaves them out and counts them (``--max_caption_words``).

Training sequences wrap the tokens in ``START_TOKEN`` and ``END_TOKEN``. Neither can appear in a normalized
caption because normalization strips ``<`` and ``>``.
"""
import string
import unicodedata

START_TOKEN = "<start>"
END_TOKEN = "<end>"
# Flickr8k's longest caption has 38 words and COCO's 49 (after normalization); 50 keeps every one of them.
DEFAULT_MAX_CAPTION_WORDS = 50

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_SEPARATING_CATEGORIES = ("Cc", "Zl", "Zp", "Zs")  # control characters and separators: between words


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else
                   " " if unicodedata.category(character) in _SEPARATING_CATEGORIES else ""
                   for character in text)


def caption_tokens(caption: str) -> list[str]:
    """Returns the normalized tokens of a raw caption (without start/end tokens)."""
    text = _printable(caption.lower().translate(_PUNCTUATION_TABLE))
    return [token for token in text.split() if not any(character.isdigit() for character in token)]


def normalize_caption(caption: str) -> str:
    """Returns the cleaned caption: normalized tokens joined by single spaces (may be empty)."""
    return " ".join(caption_tokens(caption))


def with_boundaries(tokens: list[str]) -> list[str]:
    """Wraps normalized tokens in the start and end tokens, as the decoder is trained on them."""
    return [START_TOKEN, *tokens, END_TOKEN]


def strip_boundaries(tokens: list[str]) -> list[str]:
    """Removes start/end tokens (and anything after the end token) from a decoded token sequence."""
    out = []
    for token in tokens:
        if token == END_TOKEN:
            break
        if token != START_TOKEN:
            out.append(token)
    return out
