import pytest

from schemas.vocabulary import END_ID, PAD_ID, RESERVED_TOKENS, START_ID, UNKNOWN_ID, Vocabulary


def test_reserved_ids_come_first():
    vocab = Vocabulary.from_word_counts({"dog": 3})
    assert vocab.tokens[:4] == RESERVED_TOKENS
    assert (PAD_ID, UNKNOWN_ID, START_ID, END_ID) == (0, 1, 2, 3)
    assert vocab.id_of("dog") == 4


def test_order_is_frequency_then_alphabetical_and_independent_of_input_order():
    counts = {"zebra": 2, "apple": 2, "dog": 5, "cat": 1}
    vocab = Vocabulary.from_word_counts(counts)
    reversed_counts = dict(reversed(list(counts.items())))
    assert vocab.tokens[4:] == ("dog", "apple", "zebra", "cat")
    assert Vocabulary.from_word_counts(reversed_counts) == vocab


def test_min_count_maps_rare_words_to_unknown():
    vocab = Vocabulary.from_word_counts({"dog": 5, "cat": 1}, min_count=2)
    assert "cat" not in vocab.tokens
    assert vocab.encode(["dog", "cat"]) == [4, UNKNOWN_ID]


def test_file_round_trip(tmp_path):
    vocab = Vocabulary.from_word_counts({"a": 9, "dog": 3, "runs": 3})
    path = str(tmp_path / "vocab.txt")
    vocab.save(path)
    assert open(path, encoding="utf-8").read().splitlines()[4:] == ["a", "dog", "runs"]
    assert Vocabulary.load(path) == vocab


def test_malformed_file_names_the_line(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("<pad>\n<unk>\n<start>\n<end>\ntwo words\n")
    with pytest.raises(ValueError, match=r"vocab.txt:5: .*one token"):
        Vocabulary.load(str(path))
    path.write_text("dog\ncat\n")
    with pytest.raises(ValueError, match="reserved tokens"):
        Vocabulary.load(str(path))
