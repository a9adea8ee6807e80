"""The OpenVINO feature backend computes the same features as Keras (same weights, other arithmetic)."""
import os

import numpy as np
import pytest

from beam_jobs.extract import job as extract_job
from schemas import int8_model as int8_schema
from schemas import records
from schemas.images import prepare_image
from tests.conftest import FLICKR8K_DIR, TEST_IMAGE_SIZE, local_test_pipeline, requires_flickr8k
from trainer import quantization
from trainer.features import INFERENCE_BACKENDS, FeatureSpec, OpenVinoExtractor, check_backend, load_feature_model

openvino = pytest.importorskip("openvino")


def _cosines(a, b):
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def pixels(sample_dataset):
    directory = os.path.join(sample_dataset, "Flicker8k_Dataset")
    return [prepare_image(open(os.path.join(directory, name), "rb").read(), TEST_IMAGE_SIZE)[0]
            for name in sorted(os.listdir(directory))[:6]]


@pytest.fixture(scope="module")
def keras_features(sample_dataset, sample_features):
    """Keras' features of the `pixels` images, as the extract job recorded them."""
    by_id = {record[records.IMAGE_ID]: record[records.IMAGE_FEATURES]
             for split in ("train", "dev", "test") for record in records.read_records(sample_features, split)}
    return np.stack([by_id[name] for name in sorted(os.listdir(os.path.join(sample_dataset, "Flicker8k_Dataset")))[:6]])


@pytest.fixture(scope="module")
def keras_model():
    from schemas import backbones
    return load_feature_model(backbones.XCEPTION, backbones.RANDOM_INIT, TEST_IMAGE_SIZE)


def _openvino_features(keras_model, precision, pixels):
    """The backend the handler builds for ``precision`` (`inference.INFERENCE_BACKENDS`), on one Keras model."""
    from schemas import backbones
    from trainer.features import traced_forward
    model, _ = keras_model
    compiled = OpenVinoExtractor(openvino.convert_model(traced_forward(model, TEST_IMAGE_SIZE)), precision)
    return compiled(backbones.preprocess(backbones.XCEPTION, np.stack(pixels))), compiled


@pytest.mark.integration
def test_openvino_f32_matches_keras(pixels, keras_features, keras_model):
    openvino_features, model = _openvino_features(keras_model, INFERENCE_BACKENDS["openvino-f32"], pixels)
    assert model.precision == "f32"
    np.testing.assert_allclose(openvino_features, keras_features, rtol=1e-3, atol=1e-7)
    assert _cosines(openvino_features, keras_features).min() >= 0.99999


def test_openvino_default_precision_is_within_tolerance(pixels, keras_features, keras_model):
    openvino_features, model = _openvino_features(keras_model, INFERENCE_BACKENDS["openvino"], pixels)
    assert model.precision in ("bf16", "f32", "f16")
    assert _cosines(openvino_features, keras_features).min() >= 0.999


@pytest.mark.integration
def test_extract_job_with_openvino_records_match(sample_dataset, sample_features, tmp_path):
    """With --spatial_grid the compiled network has two outputs (vector, map): both must land where Keras' do."""
    output_dir = str(tmp_path / "ov")
    extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", output_dir, "--weights", "none",
                          "--image_size", str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--inference_backend",
                          "openvino-f32", "--spatial_grid", "full"], test_pipeline=local_test_pipeline())
    assert records.read_records(output_dir, "dev")
    grid = (3, 3, 2048)
    for split in ("train", "dev", "test"):
        mine, theirs = records.read_records(output_dir, split, grid), records.read_records(sample_features, split, grid)
        assert [r[records.CAPTION_IDS] for r in mine] == [r[records.CAPTION_IDS] for r in theirs]
        cosines = _cosines(np.stack([r[records.IMAGE_FEATURES] for r in mine]),
                           np.stack([r[records.IMAGE_FEATURES] for r in theirs]))
        assert cosines.min() >= 0.99999
        mine_grids, their_grids = (np.stack([r[records.IMAGE_GRID] for r in rows]).astype(np.float32)
                                   for rows in (mine, theirs))
        assert mine_grids.shape == their_grids.shape == (len(theirs), *grid)
        np.testing.assert_allclose(mine_grids, their_grids, atol=2e-3 * np.abs(their_grids).max())  # float16 storage


def test_unknown_backend_fails_fast():
    with pytest.raises(ValueError, match="--inference_backend tpu"):
        check_backend("tpu")


# -- int8 (NNCF post-training quantization) -------------------------------------------------------------------

nncf = pytest.importorskip("nncf")
INT8_COSINE = 0.97  # random-init weights at 71 px; the genuine weights on real photos: see the test below


@pytest.fixture(scope="module")
def int8_model(sample_dataset, tmp_path_factory):
    """The int8 extractor of the random-init weights at 71 px, calibrated on the sample train photos."""
    from beam_jobs.tools import quantize
    output_dir = str(tmp_path_factory.mktemp("int8"))
    info = quantize.run(["--dataset_dir", sample_dataset, "--weights", "none", "--image_size", str(TEST_IMAGE_SIZE),
                         "--calibration_images", "6", "--output_dir", output_dir])
    return output_dir, info


@pytest.mark.integration
def test_quantize_records_its_calibration_and_weights(int8_model, keras_model, sample_dataset):
    from beam_jobs.extract.discovery import read_split_list, resolve_layout
    output_dir, info = int8_model
    written = sorted(os.listdir(output_dir))
    assert written == sorted([int8_schema.MODEL_XML, int8_schema.MODEL_BIN, int8_schema.INFO_FILE])
    saved = int8_schema.read_info(output_dir)
    assert saved == info and saved["weights_sha256"] == keras_model[1] and saved["image_size"] == TEST_IMAGE_SIZE
    train = read_split_list(resolve_layout(sample_dataset).split_files["train"])
    calibration = saved["calibration"]
    assert calibration["images"] == calibration["requested"] == 6 and calibration["candidates"] == len(train) == 8
    assert len(set(calibration["names"])) == 6 and set(calibration["names"]) <= set(train)  # train photos only
    assert calibration["skipped"] == []
    # The same seed samples the same photos; another seed, others.
    assert quantization.sample(train, 6, 0) == quantization.sample(train, 6, 0) != quantization.sample(train, 6, 1)


def test_int8_features_are_within_tolerance_of_keras(int8_model, pixels, keras_features):
    from beam_jobs.features import FeatureExtractorHandler
    handler = FeatureExtractorHandler(FeatureSpec("xception", "none", TEST_IMAGE_SIZE, int8_model[1]["weights_sha256"],
                                                  "openvino-int8", int8_model=int8_model[0]))
    model = handler.load_model()
    assert model.description.startswith("openvino (int8")
    features = np.stack(handler.run_inference(pixels, model))
    assert features.shape == keras_features.shape
    cosines = _cosines(features, keras_features)
    assert cosines.min() >= INT8_COSINE
    assert not np.array_equal(features, keras_features)  # it is another arithmetic, not Keras in disguise
    spatial = FeatureExtractorHandler(FeatureSpec("xception", "none", TEST_IMAGE_SIZE, backend="openvino-int8",
                                                  grid=3, int8_model=int8_model[0]))
    both = spatial.run_inference(pixels, spatial.load_model())
    np.testing.assert_array_equal(np.stack([item.vector for item in both]), features)  # one network, two outputs
    assert both[0].grid.shape == (3, 3, 2048)


@pytest.mark.integration
def test_extract_and_caption_jobs_run_on_int8(int8_model, sample_dataset, sample_features, sample_bundle, tmp_path):
    from beam_jobs.caption import job as caption_job
    from schemas import fileio
    from tests.support.builders import read_outputs
    output_dir = str(tmp_path / "int8")
    extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", output_dir, "--weights", "none",
                          "--image_size", str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--inference_backend",
                          "openvino-int8", "--int8_model", int8_model[0], "--spatial_grid", "full"],
                         test_pipeline=local_test_pipeline())
    metadata = fileio.read_json(os.path.join(output_dir, records.METADATA_FILE))
    assert metadata[records.MetadataKeys.INFERENCE_BACKEND] == "openvino-int8"
    assert metadata[records.MetadataKeys.INT8_MODEL]["bin_sha256"] == int8_model[1]["bin_sha256"]
    assert metadata[records.MetadataKeys.INT8_MODEL]["calibration"]["images"] == 6
    for split in ("train", "dev", "test"):
        mine, theirs = records.read_records(output_dir, split), records.read_records(sample_features, split)
        assert [r[records.IMAGE_ID] for r in mine] == [r[records.IMAGE_ID] for r in theirs]
        assert _cosines(np.stack([r[records.IMAGE_FEATURES] for r in mine]),
                        np.stack([r[records.IMAGE_FEATURES] for r in theirs])).min() >= INT8_COSINE
    photos = os.path.join(sample_dataset, "Flicker8k_Dataset")
    prefix = str(tmp_path / "captions" / "run")
    caption_job.run(["--model_dir", sample_bundle, "--input", photos, "--output", prefix, "--weights", "none",
                        "--inference_backend", "openvino-int8", "--int8_model", int8_model[0]],
                       test_pipeline=local_test_pipeline())
    captions, errors = read_outputs(prefix)
    assert len(captions) == len(os.listdir(photos)) and all(row["caption"] for row in captions) and not errors


@pytest.mark.integration
def test_int8_flags_fail_fast_with_what_to_do(int8_model, other_weights, sample_dataset, sample_bundle, tmp_path):
    from beam_jobs.caption import job as caption_job
    from beam_jobs.tools import quantize
    with pytest.raises(ValueError, match="needs --int8_model DIR: .* was trained on keras features and has no int8"):
        caption_job.run(["--model_dir", sample_bundle, "--input", sample_dataset, "--output", str(tmp_path / "c"),
                            "--weights", "none", "--inference_backend", "openvino-int8"])
    with pytest.raises(ValueError,
                       match="--int8_model is the model of --inference_backend openvino-int8, not of keras"):
        check_backend("keras", int8_model[0])
    base = ["--dataset_dir", sample_dataset, "--output_dir", str(tmp_path / "out"), "--image_size",
            str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--inference_backend", "openvino-int8"]
    with pytest.raises(ValueError, match="quantized from another extractor.*weights sha256"):
        extract_job.run(base + ["--weights", other_weights, "--int8_model", int8_model[0]])
    with pytest.raises(ValueError, match="quantized from another extractor.*image size 71, not 80"):
        extract_job.run(base[:-5] + ["80", "--min_word_count", "1", "--inference_backend", "openvino-int8",
                                          "--weights", "none", "--int8_model", int8_model[0]])
    with pytest.raises(ValueError, match="no quantization.json there, so no int8 model; write one with"):
        extract_job.run(base + ["--weights", "none", "--int8_model", str(tmp_path)])
    assert not os.path.exists(tmp_path / "out")  # refused before anything was written
    with pytest.raises(quantize.QuantizationError, match="matches no image file"):
        quantize.run(["--images", str(tmp_path / "nothing" / "*.jpg"), "--output_dir", str(tmp_path / "q"),
                      "--weights", "none", "--image_size", str(TEST_IMAGE_SIZE)])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(quantize.QuantizationError, match="none of the 1 calibration photos"):
        quantize.run(["--images", str(broken), "--output_dir", str(tmp_path / "q"), "--weights", "none",
                      "--image_size", str(TEST_IMAGE_SIZE)])


GENUINE_WEIGHTS = os.environ.get("IMCAP_XCEPTION_WEIGHTS",
                                 os.path.expanduser("~/.cache/imcap/xception_imagenet_notop.weights.h5"))
REAL_COSINE = {"openvino-f32": 0.99999, "openvino": 0.999, "openvino-int8": 0.97}  # stated in the README


@pytest.mark.integration
@requires_flickr8k()
@pytest.mark.skipif(not os.path.exists(GENUINE_WEIGHTS), reason="the genuine ImageNet Xception weights are not on "
                    "this machine (python ../shared/tools/get_xception_weights.py writes them)")
def test_every_backend_stays_within_its_tolerance_on_real_photos(tmp_path):
    """Genuine weights at 299 px, 8 Flickr8k dev photos; int8 calibrated on 24 train photos (the product's default
    is 300: BENCHMARKS.md, feature backends measures it on 128 dev photos)."""
    from beam_jobs.extract.discovery import read_split_list, resolve_layout
    from beam_jobs.features import FeatureExtractorHandler
    from beam_jobs.tools import quantize
    layout = resolve_layout(FLICKR8K_DIR)
    dev = read_split_list(layout.split_files["dev"])[:8]
    photos = [prepare_image(open(os.path.join(layout.images_dir, name), "rb").read(), 299)[0] for name in dev]
    quantize.run(["--dataset_dir", FLICKR8K_DIR, "--weights", GENUINE_WEIGHTS, "--calibration_images", "24",
                  "--output_dir", str(tmp_path / "int8")])
    features = {}
    for backend in ("keras", *REAL_COSINE):
        handler = FeatureExtractorHandler(FeatureSpec(
            "xception", GENUINE_WEIGHTS, 299, backend=backend,
            int8_model=str(tmp_path / "int8") if backend == "openvino-int8" else None))
        features[backend] = np.stack(handler.run_inference(photos, handler.load_model()))
    for backend, tolerance in REAL_COSINE.items():
        assert _cosines(features[backend], features["keras"]).min() >= tolerance, backend


@pytest.mark.integration
def test_the_default_path_is_int8_from_extract_to_caption(sample_dataset, sample_bundle, tmp_path, capsys):
    """--inference_backend auto: the extract job calibrates an int8 model on its train photos and keeps it with the
    records, the bundle trained on them carries it, and the caption job computes its features with it."""
    from beam_jobs.caption import job as caption_job
    from schemas import bundle as bundle_schema
    from schemas import fileio
    from trainer import task
    from trainer.bundle import Bundle, load_bundles
    features = str(tmp_path / "features")
    extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", features, "--weights", "none",
                          "--image_size", str(TEST_IMAGE_SIZE), "--min_word_count", "1",
                          "--calibration_images", "5"], test_pipeline=local_test_pipeline())
    metadata = fileio.read_json(os.path.join(features, records.METADATA_FILE))
    assert metadata[records.MetadataKeys.INFERENCE_BACKEND] == "openvino-int8"
    assert metadata[records.MetadataKeys.INT8_MODEL]["calibration"]["images"] == 5
    assert metadata[records.MetadataKeys.INT8_MODEL]["calibration"]["source"] == "train split of the dataset"
    model_dir = str(tmp_path / "model")
    task.train(task.parse_args(["--data_dir", features, "--model_dir", model_dir, "--epochs", "1", "--units", "16",
                                "--embedding_dim", "8", "--verbose", "0"]))
    bundle = Bundle(model_dir, with_decoder=False)
    assert bundle.inference_backend == "openvino-int8"
    assert bundle.config["int8_model"]["bin_sha256"] == metadata[records.MetadataKeys.INT8_MODEL]["bin_sha256"]
    assert sorted(os.listdir(os.path.join(model_dir, bundle_schema.INT8_DIR))) == sorted(os.listdir(
        os.path.join(features, bundle_schema.INT8_DIR)))
    args, _ = caption_job.parse_args(["--model_dir", model_dir, "--input", sample_dataset, "--output",
                                         str(tmp_path / "c" / "run"), "--weights", "none"])
    config = caption_job.prepare(args)
    assert (config.features.backend, config.features.int8_model) == ("openvino-int8", bundle.int8_model)
    caption_job.run(["--model_dir", model_dir, "--input", os.path.join(sample_dataset, "Flicker8k_Dataset"),
                        "--output", str(tmp_path / "run" / "c"),
                        "--weights", "none"], test_pipeline=local_test_pipeline())
    from tests.support.builders import read_outputs
    from trainer import predict
    captions, errors = read_outputs(str(tmp_path / "run" / "c"))
    rows = {row["image_uri"]: row["caption"] for row in captions}
    assert len(rows) == 12 and not errors
    photos = sorted(rows)[:4]  # trainer.predict runs the bundle's int8 model too: the same captions
    assert [caption for _, caption, _, _ in predict.caption_files(photos, model_dir, weights="none")] == \
        [rows[photo] for photo in photos]
    args.inference_backend = "keras"  # an explicit backend wins, in the job and in imcap-predict (GPU workers)
    assert caption_job.prepare(args).features.backend == "keras"
    capsys.readouterr()
    assert predict.main(["--model_dir", model_dir, "--weights", "none", "--inference_backend", "keras",
                         "--batch_size", "3", *photos]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == photos
    assert predict.load_bundle_extractor(bundle.config, "none", "keras").spec.backend == "keras"
    with pytest.raises(ValueError, match="trained on features of different extractors"):
        load_bundles([model_dir, sample_bundle], with_decoder=False)
    # A rerun over the same directory is refused without --overwrite, extractor_int8/ included.
    with pytest.raises(ValueError, match="already holds the output of a run"):
        extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", features, "--weights", "none",
                              "--image_size", str(TEST_IMAGE_SIZE)])


@pytest.mark.integration
def test_an_int8_model_kept_in_the_output_directory_is_an_input_not_an_output(int8_model, sample_dataset,
                                                                                sample_features, tmp_path):
    """imcap-quantize --output_dir OUT/extractor_int8, then the extract job into OUT with that model: nothing of
    it is deleted, with or without --overwrite; an extractor_int8/ left there by a run is an output (refused)."""
    import shutil

    from schemas import bundle as bundle_schema
    from schemas import fileio
    from schemas import int8_model as int8_schema
    from trainer import task
    out = tmp_path / "out"
    shutil.copytree(int8_model[0], out / bundle_schema.INT8_DIR)
    argv = ["--dataset_dir", sample_dataset, "--output_dir", str(out), "--weights", "none", "--image_size",
            str(TEST_IMAGE_SIZE), "--min_word_count", "1", "--int8_model", str(out / bundle_schema.INT8_DIR)]
    for extra in ([], ["--overwrite"]):  # auto with --int8_model: int8
        extract_job.run(argv + extra, test_pipeline=local_test_pipeline())
        metadata = fileio.read_json(str(out / records.METADATA_FILE))
        assert metadata[records.MetadataKeys.INT8_MODEL]["bin_sha256"] == int8_model[1]["bin_sha256"]
        if not extra:
            for name in os.listdir(out):  # the outputs of the run, except the model, for the next round
                if name != bundle_schema.INT8_DIR:
                    os.remove(out / name)
    with pytest.raises(ValueError, match="already holds the output of a run"):
        extract_job.run(argv[:-2] + ["--output_dir", str(out)])  # extractor_int8/ not given: an output
    # A damaged copy: the bin of another model is named, at training (before any epoch) and on a worker.
    damaged = tmp_path / "damaged"
    shutil.copytree(int8_model[0], damaged)
    (damaged / int8_schema.MODEL_BIN).write_bytes((damaged / int8_schema.MODEL_BIN).read_bytes()[:-4] + b"\0\0\0\0")
    from beam_jobs.features import FeatureExtractorHandler
    with pytest.raises(ValueError, match="is not the one its quantization.json describes"):
        FeatureExtractorHandler(FeatureSpec("xception", "none", TEST_IMAGE_SIZE, backend="openvino-int8",
                                            int8_model=str(damaged))).load_model()
    shutil.rmtree(out / bundle_schema.INT8_DIR)
    with pytest.raises(ValueError, match="no quantization.json there"):
        task.train(task.parse_args(["--data_dir", str(out), "--model_dir", str(tmp_path / "m"), "--epochs", "1"]))
    assert not os.path.exists(tmp_path / "m" / "bundle.json")


def test_the_int8_model_is_never_calibrated_on_an_evaluation_split(sample_dataset, sample_features, tmp_path):
    from beam_jobs.extract.discovery import resolve_layout
    layout = resolve_layout(sample_dataset)
    with pytest.raises(ValueError, match="no train split to calibrate the int8 model on: pass --int8_model"):
        extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", str(tmp_path / "o"), "--weights",
                              "none", "--image_size", str(TEST_IMAGE_SIZE), "--split_file",
                              f"test={layout.split_files['test']}", "--vocab_file",
                              os.path.join(sample_features, "vocab.txt")])
