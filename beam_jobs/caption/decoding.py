"""The caption job's decoding step: image features -> caption rows, batched by RunInference.

    rows = keyed_features | GenerateCaptions(CaptionModelHandler(model_dirs, beam_width, length_penalty), model_id)
"""
import logging
from typing import Any, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from schemas import records, tables
from trainer import cli
from trainer.bundle import load_bundles


class CaptionModelHandler(ModelHandler[Any, tuple, Any]):
    """Image features -> (caption, log_prob, attention), decoded in batches with a model bundle or an ensemble of
    bundles; ``attention`` is the hypothesis' weights over the grid per word when ``attention_maps``, else None.

    Features are pooled vectors [D] for a merge bundle, `records.SpatialFeatures` for one that reads grids. The
    bundles (`trainer.bundle.load_bundles`: decoders, vocabulary, config) are loaded once per worker process.
    """

    def __init__(self, model_dirs, beam_width: int, length_penalty: float, *, min_batch_size: int = 1,
                 max_batch_size: int = 128, attention_maps: bool = False, no_repeat_ngram_size: int = 0):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._model_dirs = [model_dirs] if isinstance(model_dirs, str) else list(model_dirs)
        self._beam_width = beam_width
        self._length_penalty = length_penalty
        self._no_repeat_ngram_size = no_repeat_ngram_size
        self._attention_maps = attention_maps

    def load_model(self):
        cli.quiet_tensorflow()
        bundle = load_bundles(self._model_dirs)
        logging.info("loaded caption bundle %s on a worker", bundle.model_id)
        return bundle.decoder

    def run_inference(self, batch: Sequence[Any], model, inference_args: Optional[dict] = None):
        hypotheses = model.hypotheses(stack_features(batch), self._beam_width, self._length_penalty,
                                      batch_size=len(batch), no_repeat_ngram_size=self._no_repeat_ngram_size)
        return [(model.to_text(hypothesis), hypothesis.log_prob,
                 hypothesis.attention if self._attention_maps else None) for hypothesis in hypotheses]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(sum(part.nbytes for part in features) if isinstance(features, records.SpatialFeatures)
                   else features.nbytes for features in batch)

    def get_metrics_namespace(self) -> str:
        return "imcap_captions"


def stack_features(batch: Sequence[Any]):
    """Per-image features -> one batch: [B, D], or `records.SpatialFeatures` of [B, D] and [B, g, g, D]."""
    if batch and isinstance(batch[0], records.SpatialFeatures):
        return records.SpatialFeatures(np.stack([features.vector for features in batch]),
                                       np.stack([features.grid for features in batch]))
    return np.stack(batch)


@beam.ptransform_fn
@beam.typehints.with_output_types(tables.CaptionRow)
def GenerateCaptions(features, handler: ModelHandler, model_id: str):  # pylint: disable=invalid-name
    """(`ImageKey`, features) -> `schemas.tables.CaptionRow`, decoded in batches by the bundle's decoder."""
    return (features
            | "Decode" >> RunInference(KeyedModelHandler(handler))
            | "CaptionRows" >> beam.Map(_caption_row, model_id))


def _caption_row(keyed: tuple, model_id: str) -> tables.CaptionRow:
    """(`ImageKey`, (caption, log_prob[, attention])) -> the image's caption row."""
    key, (caption, log_prob, *attention) = keyed
    return tables.caption_row(key.uri, caption, log_prob, model_id, key.width, key.height,
                              attention[0] if attention else None, key.sample)
