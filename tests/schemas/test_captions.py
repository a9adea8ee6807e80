from schemas.captions import (
    END_TOKEN,
    START_TOKEN,
    caption_tokens,
    normalize_caption,
    strip_boundaries,
    with_boundaries,
)


def test_lowercases_and_strips_punctuation():
    assert normalize_caption("A dog's ball, on the GRASS!") == "a dogs ball on the grass"


def test_keeps_one_letter_words():
    assert caption_tokens("A man in a red shirt .") == ["a", "man", "in", "a", "red", "shirt"]


def test_drops_tokens_with_digits():
    assert caption_tokens("2 dogs and 3rd place in 1999 x5") == ["dogs", "and", "place", "in"]


def test_split_apostrophe_token_becomes_one_letter_word():
    # Flickr8k tokenizes "dog 's"; punctuation removal leaves "s", which is kept like any one-letter word.
    assert caption_tokens("A dog 's tail") == ["a", "dog", "s", "tail"]


def test_whitespace_is_collapsed_and_empty_caption_is_empty():
    assert normalize_caption("  two\tspaces   here \n") == "two spaces here"
    assert normalize_caption("123 ... !!") == ""


def test_boundaries_round_trip():
    tokens = ["a", "dog"]
    wrapped = with_boundaries(tokens)
    assert wrapped == [START_TOKEN, "a", "dog", END_TOKEN]
    assert strip_boundaries(wrapped) == tokens
    assert strip_boundaries([START_TOKEN, "a", END_TOKEN, "junk"]) == ["a"]


def test_boundary_tokens_cannot_come_out_of_normalization():
    assert START_TOKEN not in caption_tokens(f"{START_TOKEN} a {END_TOKEN}")
