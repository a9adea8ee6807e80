"""Caption normalization rules, shared by the extract job, the trainer and evaluation.

The rules follow the usual Flickr8k/COCO evaluation protocol:

1. lowercase;
2. remove punctuation characters (``string.punctuation``) -- so ``dog's`` becomes ``dogs`` and ``dog 's``
   becomes ``dog s``;
3. split on whitespace;
4. drop tokens that contain a digit;
5. keep every other token, one-letter words such as ``a`` included (the seed tutorial drops them; that throws
   away the most frequent word of the corpus and makes generated captions ungrammatical).

Training sequences wrap the tokens in ``START_TOKEN`` and ``END_TOKEN``. Neither can appear in a normalized
caption because normalization strips ``<`` and ``>``.
"""
import string

START_TOKEN = "<start>"
END_TOKEN = "<end>"

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def caption_tokens(caption: str) -> list[str]:
    """Returns the normalized tokens of a raw caption (without start/end tokens)."""
    text = caption.lower().translate(_PUNCTUATION_TABLE)
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
