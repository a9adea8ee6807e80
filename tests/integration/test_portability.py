"""Dataflow readiness, checked offline: both pipelines serialize through the portable Runner API with the
options Dataflow would get, and what the graph references is what the user gave (no launcher-local copies)."""
import base64
import binascii
import bz2
import os
import tempfile
import zlib

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from beam_jobs.caption import archives, outputs
from beam_jobs.caption import job as caption_job
from beam_jobs.extract import job as extract_job
from beam_jobs.extract.datasets import load_datasets, output_splits
from schemas import fileio
from trainer.features import FeatureSpec

# The options a Dataflow launch carries, minus --runner=DataflowRunner itself: constructing that runner contacts
# Google Cloud (credentials, the temp bucket), which is out of reach offline. The graph does not depend on it.
DATAFLOW_FLAGS = ["--project=example-project", "--region=europe-west1", "--temp_location=gs://example-bucket/tmp",
                  "--setup_file=./setup.py", "--machine_type=n2-standard-8"]
REMOTE_WEIGHTS = "gs://example-bucket/weights/xception_imagenet_notop.weights.h5"


def _decoded(payload: bytes) -> bytes:
    """A DoFn payload as workers receive it is base64 of a bz2- (or zlib-) compressed pickle; return the pickle."""
    try:
        raw = base64.b64decode(payload, validate=True)
    except binascii.Error:
        return payload
    for decompress in (bz2.decompress, zlib.decompress):
        try:
            return decompress(raw)
        except (OSError, ValueError, zlib.error):
            continue
    return raw


def _round_trip(pipeline: beam.Pipeline) -> bytes:
    """Serialize the graph, restore it, and return everything a worker would unpickle, decoded, for inspection."""
    proto = pipeline.to_runner_api()
    wire = proto.SerializeToString()
    restored = beam.Pipeline.from_runner_api(
        beam_runner_api_pb2.Pipeline.FromString(wire), pipeline.runner, pipeline._options)  # noqa: SLF001
    assert restored.to_runner_api().components.transforms.keys() == proto.components.transforms.keys()
    blobs = [wire]
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            pardo = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            blobs.append(_decoded(pardo.do_fn.payload))
    return b"\n".join(blobs)


def _extract_config(sample_dataset):
    datasets = load_datasets([sample_dataset])
    return extract_job.ExtractConfig(
        datasets=tuple(datasets), splits=tuple(output_splits(datasets)), output_dir="gs://example-bucket/features",
        features=FeatureSpec("xception", REMOTE_WEIGHTS, 299, "0" * 64), feature_dim=2048, min_batch_size=8,
        max_batch_size=32, min_word_count=5, vocab_tokens=None, num_shards=0, max_image_pixels=10 ** 8)


def test_extract_pipeline_serializes_for_dataflow(sample_dataset):
    pipeline = beam.Pipeline(options=PipelineOptions(DATAFLOW_FLAGS))
    extract_job.build_pipeline(pipeline, _extract_config(sample_dataset))
    serialized = _round_trip(pipeline)
    assert REMOTE_WEIGHTS.encode() in serialized
    assert b"gs://example-bucket/features" in serialized


def test_workers_get_the_remote_weights_not_the_launchers_copy(sample_dataset, other_weights, tmp_path,
                                                               monkeypatch):
    """The launcher copies remote weights to local disk to check them (`inference.localize`); the graph it builds
    must still name the remote file, which every worker can reach."""
    from tests.support import prefixfs
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the copies go here, and only this test's
    local = other_weights
    remote = "prefixfs://weights-bucket/w.weights.h5"
    prefixfs.put(remote, open(local, "rb").read())
    args, _ = extract_job.parse_args(["--dataset_dir", sample_dataset, "--output_dir", str(tmp_path / "out"),
                                           "--weights", remote, "--image_size", "71"])
    config = extract_job.prepare(args)
    copies = [name for name in os.listdir(tempfile.gettempdir()) if name.startswith("imcap-")
              and name.endswith("w.weights.h5")]
    assert copies  # the launcher did make its local copy...
    pipeline = beam.Pipeline(options=PipelineOptions(DATAFLOW_FLAGS))
    extract_job.build_pipeline(pipeline, config)
    serialized = _round_trip(pipeline)
    assert remote.encode() in serialized
    for copy in copies:  # ...and no worker is told to read it
        assert copy.encode() not in serialized


@pytest.mark.parametrize("resume", [False, True])
def test_caption_pipeline_serializes_for_dataflow(resume):
    config = caption_job.CaptionConfig(
        inputs=("gs://example-bucket/photos/*.jpg", "gs://example-bucket/batches/*.tar.gz"),
        output_dir="gs://example-bucket/captions/run", model_dirs=("gs://example-bucket/model",), model_id="imcap-0",
        features=FeatureSpec("xception", REMOTE_WEIGHTS, 299, "0" * 64, grid=10), attention_maps=True, beam_width=3,
        length_penalty=0.0, no_repeat_ngram_size=2, min_batch_size=8, max_batch_size=32, decode_batch_size=128,
        max_image_pixels=10 ** 8,
        limits=archives.Limits(), read_threads=2, unit_members=32, num_shards=0, checkpoint_rows=500,
        existing=outputs.ExistingOutputs(
            committed=(("gs://example-bucket/captions/run/captions/run1-00000-of-00001.parquet", "captions", 1),)
            if resume else (),
            checkpoint_parts=(f"gs://example-bucket/captions/run/checkpoint/captions-{'0' * 20}.parquet",)
            if resume else (),
            leftovers=()))
    pipeline = beam.Pipeline(options=PipelineOptions(DATAFLOW_FLAGS))
    caption_job.build_pipeline(pipeline, config)
    serialized = _round_trip(pipeline)
    for reference in (REMOTE_WEIGHTS, "gs://example-bucket/model", "gs://example-bucket/captions/run"):
        assert reference.encode() in serialized


def test_a_remote_file_replaced_under_its_name_is_copied_again(tmp_path, monkeypatch):
    """`fileio.local_copy` keeps local copies of remote weights; a new file at the same URI must not be served
    from the copy of the old one (the launcher would check, and a local worker use, stale weights), and the old
    copy goes. A name with glob characters is that file, not a pattern."""
    import time

    from tests.support import prefixfs
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    remote = "prefixfs://weights-bucket/replaced[1].weights.h5"
    prefixfs.put("prefixfs://weights-bucket/replaced1.weights.h5", b"another file that the glob would match")
    prefixfs.put(remote, b"the first weights")
    first = fileio.local_copy(remote)
    assert open(first, "rb").read() == b"the first weights" and fileio.local_copy(remote) == first  # copied once
    time.sleep(0.01)
    prefixfs.put(remote, b"the other weights")  # the same size: only the modification time tells
    second = fileio.local_copy(remote)
    assert second != first and open(second, "rb").read() == b"the other weights"
    prefixfs.put(remote, b"the third weights, longer")
    third = fileio.local_copy(remote)
    assert open(third, "rb").read() == b"the third weights, longer"
    assert os.listdir(tmp_path) == [os.path.basename(third)]  # older copies removed
