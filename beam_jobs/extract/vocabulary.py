"""The vocabulary of the extract job, counted inside the pipeline from the train split's captions only.

    vocabulary = items | BuildVocabulary(min_word_count, vocab_tokens=None)   # one VocabularyInfo

Word counts are a CombineFn (merged across workers), so the vocabulary scales with the data and never sees dev or
test words; ``vocab_tokens`` (from ``--vocab_file``) replaces the counting. The longest caption, in token ids with
``<start>`` and ``<end>``, is measured over every split (the decoder must be able to produce any of them).
"""
import typing

import apache_beam as beam

from beam_jobs.extract.reading import WorkItem
from schemas.vocabulary import Vocabulary

VOCAB_SPLIT = "train"


class VocabularyInfo(typing.NamedTuple):
    tokens: tuple  # the vocabulary, id = index (`schemas.vocabulary`)
    max_length: int  # ids in the longest caption of any split, <start> and <end> included


class SumCounts(beam.CombineFn):
    """{key: total} over all inputs, merged across workers; subclasses say what an input counts (`counts_of`)."""

    def counts_of(self, element):
        raise NotImplementedError

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, element):
        for key, count in self.counts_of(element):
            accumulator[key] = accumulator.get(key, 0) + count
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for key, count in accumulator.items():
                merged[key] = merged.get(key, 0) + count
        return merged

    def extract_output(self, accumulator):
        return accumulator


class CountWords(SumCounts):
    """Word counts of cleaned captions (a dict)."""

    def counts_of(self, caption_text):
        return ((word, 1) for word in caption_text.split())


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
