"""The vocabulary of the extract job, counted inside the pipeline from the train split's captions only.

    vocabulary = items | BuildVocabulary(min_word_count, vocab_tokens=None)   # one VocabularyInfo

Word counts are a CombineFn (merged across workers), so the vocabulary scales with the data and never sees dev or
test words; ``vocab_tokens`` (from ``--vocab_file``) replaces the counting. The longest caption, in token ids with
``<start>`` and ``<end>``, is measured over every split (the decoder must be able to produce any of them).
"""
import typing

import apache_beam as beam

from beam_jobs.dataset_read import WorkItem
from schemas.vocabulary import Vocabulary

VOCAB_SPLIT = "train"


class VocabularyInfo(typing.NamedTuple):
    tokens: tuple  # the vocabulary, id = index (`schemas.vocabulary`)
    max_length: int  # ids in the longest caption of any split, <start> and <end> included


class CountWords(beam.CombineFn):
    """Word counts of cleaned captions (a dict), merged across workers."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, caption_text):
        for word in caption_text.split():
            accumulator[word] = accumulator.get(word, 0) + 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for word, count in accumulator.items():
                merged[word] = merged.get(word, 0) + count
        return merged

    def extract_output(self, accumulator):
        return accumulator


def _longest(item: WorkItem) -> int:
    return 2 + max(len(caption.split()) for caption in item.captions)


@beam.ptransform_fn
@beam.typehints.with_input_types(WorkItem)
@beam.typehints.with_output_types(VocabularyInfo)
def BuildVocabulary(items, min_word_count: int, vocab_tokens: tuple | None = None):  # pylint: disable=invalid-name
    """`WorkItem`s -> one `VocabularyInfo`."""
    if vocab_tokens:
        tokens = items.pipeline | "FromFile" >> beam.Create([tuple(vocab_tokens)])
    else:
        tokens = (items
                  | "TrainItems" >> beam.Filter(lambda item: item.split == VOCAB_SPLIT)
                  | "TrainCaptions" >> beam.FlatMap(lambda item: item.captions)
                  | "CountWords" >> beam.CombineGlobally(CountWords())
                  | "Vocabulary" >> beam.Map(lambda counts: Vocabulary.from_word_counts(counts, min_word_count).tokens))
    max_length = (items
                  | "CaptionLengths" >> beam.Map(_longest)
                  | "MaxLength" >> beam.CombineGlobally(lambda lengths: max(lengths, default=0)))
    return (tokens
            | "WithMaxLength" >> beam.Map(lambda vocabulary, longest: VocabularyInfo(tuple(vocabulary), int(longest)),
                                          beam.pvalue.AsSingleton(max_length)))
