"""Spatial features and the attention decoder: grids in the records, training, decoding with attention weights,
ensembles, and the caption job serving attention bundles and ensembles."""
import json
import os

import keras
import numpy as np
import pytest

from schemas import backbones, records
from schemas.records import MetadataKeys
from schemas.vocabulary import END_ID, RESERVED_TOKENS, START_ID, Vocabulary
from tests.conftest import TEST_IMAGE_SIZE, local_test_pipeline, write_feature_records
from tests.conftest import TINY_CAPTIONS as TINY
from trainer import attention, evaluate, task
from trainer.bundle import Bundle, Ensemble, export_bundle, load_bundles
from trainer.decoding import CaptionDecoder

GRID = (2, 2, 8)


# -- grids in the records ---------------------------------------------------------------------------------------
def test_grid_pooling_matrix_is_adaptive_average_pooling():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 10, 10, 3)).astype(np.float32)
    pooled = backbones.pool_grid(maps, 5)
    expected = maps.reshape(2, 5, 2, 5, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(backbones.pool_grid(maps, 10), maps)
    odd = backbones.pool_grid(maps, 3)  # bins 0-3, 3-7, 6-10 (overlapping, as AdaptiveAvgPool2d)
    np.testing.assert_allclose(odd[:, 1, 2], maps[:, 3:7, 6:10].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backbones.pool_grid(maps, 1)[:, 0, 0], maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot be pooled"):
        backbones.grid_pooling_matrix(3, 4)


@pytest.mark.integration
def test_spatial_extractor_gives_the_pooled_model_s_vector_and_its_map():
    model = backbones.build_feature_extractor(backbones.XCEPTION, backbones.RANDOM_INIT, TEST_IMAGE_SIZE)
    spatial = backbones.build_feature_extractor(backbones.XCEPTION, backbones.RANDOM_INIT, TEST_IMAGE_SIZE,
                                                spatial=True)
    assert backbones.weights_digest(model) == backbones.weights_digest(spatial)
    pixels = np.random.default_rng(1).uniform(-1, 1, size=(2, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3)).astype(np.float32)
    vector, feature_map = spatial.predict_on_batch(pixels)
    np.testing.assert_array_equal(vector, model.predict_on_batch(pixels))
    assert feature_map.shape == (2, 3, 3, 2048)
    np.testing.assert_allclose(feature_map.mean(axis=(1, 2)), vector, rtol=1e-5, atol=1e-9)


@pytest.mark.integration
def test_extract_job_writes_grids_that_round_trip_through_the_spec(sample_features):
    import tensorflow as tf

    from trainer import data
    metadata = data.read_metadata(sample_features)
    grid = records.grid_shape(metadata)
    assert grid == (3, 3, 2048) and metadata[MetadataKeys.GRID_BYTES_PER_IMAGE] == 3 * 3 * 2048 * 2
    decoded = records.read_records(sample_features, "train", grid)
    assert len(decoded) == 8
    by_id = {record[records.IMAGE_ID]: record for record in decoded}
    for record in data.grid_dataset(sample_features, "train", 2048, grid).as_numpy_iterator():
        expected = by_id[record[records.IMAGE_ID].decode()]
        assert record[records.IMAGE_GRID].dtype == np.float16 and record[records.IMAGE_GRID].shape == (9, 2048)
        np.testing.assert_array_equal(record[records.IMAGE_GRID], expected[records.IMAGE_GRID].reshape(9, 2048))
        np.testing.assert_array_equal(record[records.IMAGE_FEATURES], expected[records.IMAGE_FEATURES])
    for record in decoded:  # the vector is the mean of the full map; the grid keeps it to float16 precision
        vector = record[records.IMAGE_FEATURES]
        mean = record[records.IMAGE_GRID].astype(np.float32).mean(axis=(0, 1))
        assert np.abs(mean - vector).max() <= 2e-3 * np.abs(vector).max()
    # A record without the grid is rejected by the grid spec (not silently zero-filled).
    plain = records.encode_example("x.jpg", "train", np.zeros(2048, np.float32), ["a"], [[START_ID, END_ID]])
    with pytest.raises(tf.errors.InvalidArgumentError):
        data.parse_grid_record(plain.SerializeToString(), 2048, grid)


@pytest.mark.integration
def test_extract_job_pools_the_grid_and_checks_its_size(sample_dataset, sample_features, tmp_path, capsys):
    from beam_jobs.extract import job as extract_job
    out = str(tmp_path / "pooled")
    extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", out, "--weights", "none",
                          "--image_size", str(TEST_IMAGE_SIZE), "--spatial_grid", "2", "--inference_backend", "keras"],
                         test_pipeline=local_test_pipeline())
    from trainer import data
    metadata = data.read_metadata(out)
    assert records.grid_shape(metadata) == (2, 2, 2048)
    pooled = records.read_records(out, "dev", (2, 2, 2048))
    full = {r[records.IMAGE_ID]: r for r in records.read_records(sample_features, "dev", (3, 3, 2048))}
    assert len(pooled) == 2
    for record in pooled:  # the 3x3 map pooled to 2x2 (overlapping 2x2 bins), from the same forward pass
        expected = backbones.pool_grid(full[record[records.IMAGE_ID]][records.IMAGE_GRID][None].astype(np.float32), 2)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(record[records.IMAGE_GRID].astype(np.float32), expected[0], atol=2e-3 * scale)
        np.testing.assert_array_equal(record[records.IMAGE_FEATURES], full[record[records.IMAGE_ID]][
            records.IMAGE_FEATURES])
    with pytest.raises(ValueError, match="the grid can be at most 3"):
        extract_job.run(["--dataset_dir", sample_dataset, "--output_dir", str(tmp_path / "big"),
                              "--weights", "none", "--image_size", str(TEST_IMAGE_SIZE), "--spatial_grid", "4"])
    with pytest.raises(SystemExit):
        extract_job.parse_args(["--output_dir", "x", "--spatial_grid", "0"])
    assert "--spatial_grid" in capsys.readouterr().err


def test_damaged_grids_and_grid_shapes_are_named_not_reshaped(tmp_path):
    import tensorflow as tf

    from trainer import data
    grid = np.ones((2, 2, 8), np.float16)
    good = records.encode_example("ok.jpg", "train", records.SpatialFeatures(np.ones(8, np.float32), grid), ["a"],
                                  [[START_ID, END_ID]]).SerializeToString()
    short = records.encode_example("short.jpg", "train",
                                   records.SpatialFeatures(np.ones(8, np.float32), grid[:1]), ["a"],
                                   [[START_ID, END_ID]]).SerializeToString()
    assert data.parse_grid_record(good, 8, GRID)[records.IMAGE_GRID].shape == (4, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)image_grid of the record below is not 64 bytes.*"
                                                              r"short\.jpg"):
        data.parse_grid_record(short, 8, GRID)
    with pytest.raises(ValueError, match="short.jpg: image_grid holds 32 bytes, not the 64 of a 2x2x8"):
        records.decode_example(short, GRID)
    # metadata.json (and a bundle's config) must give [rows, columns, depth] with the vectors' depth.
    for shape, message in (([2, 2, 7], "has depth 7, but the pooled vectors have 8"), ([2, 2], "is not \\[rows"),
                           (["a", 2, 8], "is not \\[rows"), ([2, 0, 8], "is not \\[rows"),
                           ([2.5, 2, 8], "is not \\[rows")):
        with pytest.raises(ValueError, match=message):
            records.grid_shape({MetadataKeys.GRID_SHAPE: shape, MetadataKeys.FEATURE_DIM: 8})
    assert records.grid_shape({MetadataKeys.GRID_SHAPE: [2, 2, 8], MetadataKeys.FEATURE_DIM: 8}) == GRID
    # Values float16 cannot hold are refused when grids are stored, not written as inf.
    assert records.stored_grid(np.full(GRID, 6e4, np.float32)).dtype == np.float16
    with pytest.raises(ValueError, match="beyond float16's range \\(largest magnitude 7e\\+04"):
        records.stored_grid(np.full(GRID, 7e4, np.float32))


# -- the decoder --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_grid_records(tmp_path_factory):
    rng = np.random.default_rng(0)
    items = []
    for name, caption in TINY.items():
        grid = rng.normal(size=GRID).astype(np.float16)
        items.append((name, records.SpatialFeatures(grid.astype(np.float32).mean(axis=(0, 1)), grid), [caption]))
    directory = str(tmp_path_factory.mktemp("tiny_grid_records"))
    write_feature_records(directory, {"train": items, "dev": items}, feature_dim=GRID[2], grid_shape=GRID)
    return directory


@pytest.mark.integration
def test_attention_decoder_overfits_a_tiny_set_and_decodes_its_captions(tiny_grid_records, tmp_path):
    model_dir = str(tmp_path / "model")
    task.train(task.parse_args([  # --decoder auto (the default) on records with grids: the attention decoder
        "--data_dir", tiny_grid_records, "--model_dir", model_dir, "--epochs", "40",
        "--learning_rate", "0.02", "--patience", "40", "--verbose", "0", "--embedding_dim", "32", "--units", "64",
        "--attention_dim", "16", "--dropout", "0", "--batch_size", "3"]))
    with open(os.path.join(model_dir, task.HISTORY_FILE), encoding="utf-8") as handle:
        history = json.load(handle)
    assert history[-1]["loss"] < history[0]["loss"] / 10
    bundle = Bundle(model_dir)
    assert bundle.config["decoder"] == "attention" and bundle.grid_shape == GRID
    from trainer import data
    _, features, references = data.references(tiny_grid_records, "train", GRID[2], GRID)
    assert [text for text, _ in bundle.decoder.caption(features, beam_width=1)] == [r[0] for r in references]
    result = evaluate.evaluate(tiny_grid_records, model_dir, "dev", beam_width=3)
    assert result["bleu_4"] == pytest.approx(1.0) and result["cider_d"] > 5.0
    # The command line: an ensemble of the bundle with itself decodes the same captions, saved under its own name.
    assert evaluate.main(["--data_dir", tiny_grid_records, "--model_dir", model_dir, "--model_dir", model_dir,
                          "--beam_width", "2"]) == 0
    saved = [name for name in os.listdir(model_dir) if name.startswith("eval_dev_beam2_imcap-ensemble-")]
    assert len(saved) == 1
    with open(os.path.join(model_dir, saved[0]), encoding="utf-8") as handle:
        ensemble = json.load(handle)
    assert ensemble["members"] == [bundle.model_id] * 2 and ensemble["bleu_4"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pooled vector"):
        bundle.decoder.caption(features.vector)


@pytest.mark.integration
def test_attention_needs_grids_in_the_records(tmp_path):
    rng = np.random.default_rng(0)
    items = [(name, rng.normal(size=16).astype(np.float32), [caption]) for name, caption in TINY.items()]
    write_feature_records(str(tmp_path / "plain"), {"train": items})
    with pytest.raises(ValueError, match="--spatial_grid"):
        task.train(task.parse_args(["--data_dir", str(tmp_path / "plain"), "--model_dir", str(tmp_path / "m"),
                                    "--decoder", "attention"]))
    for flag, value in (("--attention_dim", "64"), ("--cache_dir", str(tmp_path / "cache"))):
        with pytest.raises(ValueError, match=f"{flag} is for --decoder attention"):
            task.train(task.parse_args(["--data_dir", str(tmp_path / "plain"), "--model_dir", str(tmp_path / "m"),
                                        flag, value]))
    # --decoder auto (the default) on records without grids: the merge decoder, recorded as such.
    task.train(task.parse_args(["--data_dir", str(tmp_path / "plain"), "--model_dir", str(tmp_path / "merge"),
                                "--epochs", "1", "--verbose", "0", "--units", "8", "--embedding_dim", "8"]))
    assert Bundle(str(tmp_path / "merge")).config["decoder"] == "merge"


def test_auto_decoder_says_why_a_merge_only_flag_is_refused_on_records_with_grids(tiny_grid_records, tmp_path):
    with pytest.raises(ValueError, match="--decoder auto chose attention.*pass --decoder merge"):
        task.train(task.parse_args(["--data_dir", tiny_grid_records, "--model_dir", str(tmp_path / "m"),
                                    "--length_buckets"]))


def test_an_interrupted_run_resumes_only_with_its_own_settings(tmp_path):
    run_file = str(tmp_path / task.RUN_FILE)
    first = task.parse_args(["--data_dir", "d", "--model_dir", "m", "--decoder", "attention"])
    task._check_resumed_run(run_file, first, resume=False)
    # Bounds of the run may change; what defines the model or its best score may not.
    task._check_resumed_run(run_file, task.parse_args(["--data_dir", "d", "--model_dir", "m", "--decoder",
                                                       "attention", "--epochs", "13", "--patience", "5"]), True)
    changed = task.parse_args(["--data_dir", "d", "--model_dir", "m", "--decoder", "attention",
                               "--select_by", "cider_d", "--seed", "3"])
    with pytest.raises(ValueError, match="--select_by loss -> cider_d; --seed 0 -> 3.*--restart"):
        task._check_resumed_run(run_file, changed, resume=True)
    task._check_resumed_run(run_file, changed, resume=False)  # a fresh run records its own settings
    task._check_resumed_run(run_file, changed, resume=True)


@pytest.mark.integration
def test_a_bundle_whose_decoder_is_not_its_config_is_refused(attention_bundle, tmp_path):
    import shutil
    for edit, message in (
            (lambda c: c.update(decoder="merge", grid_shape=None),
             "holds the attention decoder, bundle.json says merge"),
            (lambda c: c.update(grid_shape=[1, 1, c["feature_dim"]]), "reads grids of shape \\(None, 9, 2048\\)"),
            (lambda c: c.update(grid_shape=[3, 3, 16]), "has depth 16, but the pooled vectors have 2048")):
        copy = str(tmp_path / f"copy{len(os.listdir(tmp_path))}")
        shutil.copytree(attention_bundle, copy)
        with open(os.path.join(copy, "bundle.json"), encoding="utf-8") as handle:
            config = json.load(handle)
        edit(config)
        with open(os.path.join(copy, "bundle.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        with pytest.raises(ValueError, match=message):
            Bundle(copy)


def _random_attention_model(seed, words=("a", "dog", "cat", "runs"), end_bias=0.0, global_input=True):
    """A random decoder made decisive: sharper output distributions and attention than at initialization."""
    keras.utils.set_random_seed(seed)
    vocabulary = Vocabulary(RESERVED_TOKENS + tuple(words))
    config = attention.AttentionConfig(vocab_size=len(vocabulary), grid_shape=GRID, embedding_dim=8, units=16,
                                       attention_dim=8, dropout=0.0, global_input=global_input)
    model = attention.build_attention_decoder(config)
    grid_attention = model.get_layer(attention.ATTENTION)
    grid_attention.query.set_weights([kernel * 8.0 for kernel in grid_attention.query.get_weights()])
    kernel, bias = model.get_layer(attention.LOGITS).get_weights()
    bias[END_ID] += end_bias
    model.get_layer(attention.LOGITS).set_weights([kernel * 6.0, bias])
    return model, vocabulary


def _grids(count, seed=1):
    grid = np.random.default_rng(seed).normal(size=(count, GRID[0], GRID[1], GRID[2])).astype(np.float16)
    return records.SpatialFeatures(grid.astype(np.float32).mean(axis=(1, 2)), grid)


@pytest.mark.parametrize("ending, global_input", [("free", True), ("late", True), ("free", False)])
def test_beam_search_with_attention_matches_the_training_graph_and_weights_sum_to_one(ending, global_input):
    # "late": <end> made unlikely, so hypotheses run long and beams reorder many times on the way. Without the
    # global input: the decoders of bundles trained before it.
    model, vocabulary = _random_attention_model(0, words=("a", "dog", "cat", "runs", "on", "the", "grass", "red"),
                                                end_bias=-3.0 if ending == "late" else 0.0, global_input=global_input)
    decoder = CaptionDecoder(model, vocabulary, max_length=9)
    looks = keras.Model(model.inputs, model.get_layer(attention.ATTENTION).output[1])
    features = _grids(6)
    lengths = []
    for width in (1, 3):
        for row, hypothesis in enumerate(decoder.beam_search(features, beam_width=width)):
            ids = list(hypothesis.token_ids)
            targets = ids + ([END_ID] if hypothesis.finished else [])
            inputs = np.array([[START_ID] + ids[:len(targets) - 1]], np.int32)
            logits = model.predict_on_batch([features.grid[row:row + 1].reshape(1, 4, GRID[2]),
                                             np.zeros(1, np.int32), inputs])[0]
            log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
                logits.max(-1, keepdims=True)
            assert hypothesis.log_prob == pytest.approx(sum(log_probs[t, k] for t, k in enumerate(targets)), abs=1e-4)
            assert hypothesis.attention.shape == (len(targets), 4)
            np.testing.assert_allclose(hypothesis.attention.sum(axis=1), 1.0, atol=1e-5)
            # The weights are those of the training graph's attention layer on the same sequence, word by word.
            weights = looks.predict_on_batch([features.grid[row:row + 1].reshape(1, 4, GRID[2]),
                                              np.zeros(1, np.int32), inputs])[0]
            np.testing.assert_allclose(hypothesis.attention, weights[:len(targets)], atol=1e-5)
            lengths.append(len(targets))
    assert max(lengths) >= (8 if ending == "late" else 2)
    # Beam search found other captions than greedy decoding for some images (its own bookkeeping was exercised).
    assert any(b.token_ids != g.token_ids for b, g in zip(decoder.beam_search(features, 3), decoder.greedy(features)))


def _export(model, vocabulary, directory, sha="abc"):
    metadata = {"backbone": "xception", "weights": "none", "weights_sha256": sha, "image_size": 71,
                "preprocessing": "xception", "feature_dim": GRID[2], "max_length": 7, "grid_shape": list(GRID)}
    export_bundle(directory, model, vocabulary, metadata, training={})
    return directory


@pytest.mark.integration
def test_ensembles_of_one_and_of_two(tmp_path):
    first = _export(*_random_attention_model(0), str(tmp_path / "first"))
    second = _export(*_random_attention_model(1), str(tmp_path / "second"))
    features = _grids(12, seed=2)
    single = Bundle(first).decoder.caption(features, 3)
    assert Ensemble([first]).decoder.caption(features, 3) == single
    assert Ensemble([first]).model_id == Bundle(first).model_id
    pair = load_bundles([first, second])
    assert isinstance(pair, Ensemble) and pair.model_id.startswith("imcap-ensemble-")
    assert pair.config["members"] == [Bundle(first).model_id, Bundle(second).model_id]
    both = pair.decoder.caption(features, 3)
    assert both != single and both != Bundle(second).decoder.caption(features, 3)
    assert load_bundles([first, second]).decoder.caption(features, 3) == both  # deterministic
    # The averaged log-probabilities: the ensemble's greedy first word maximizes the mean of the members' (over the
    # words a decoder may generate), and its attention is the mean of the members'.
    hypotheses = pair.decoder.greedy(features)
    start = np.full((12, 1), START_ID, np.int32)
    members = [Bundle(first).decoder_model, Bundle(second).decoder_model]
    grids = features.grid.reshape(12, 4, GRID[2])
    logits = [m.predict_on_batch([grids, np.arange(12, dtype=np.int32), start])[:, 0] for m in members]
    first_ids = [h.token_ids[0] if h.token_ids else END_ID for h in hypotheses]
    never = [Vocabulary(RESERVED_TOKENS).id_of(token) for token in ("<pad>", "<start>", "<unk>")]
    scores = np.mean([z - np.log(np.exp(z).sum(-1, keepdims=True)) for z in logits], axis=0)
    scores[:, never] = -np.inf
    assert first_ids == list(scores.argmax(axis=1))
    looks = [keras.Model(m.inputs, m.get_layer(attention.ATTENTION).output[1]) for m in members]
    first_looks = np.mean([model.predict_on_batch([grids, np.arange(12, dtype=np.int32), start])[:, 0]
                           for model in looks], axis=0)
    np.testing.assert_allclose([h.attention[0] for h in hypotheses], first_looks, atol=1e-5)
    # A merge bundle and an attention bundle on the same features ensemble too (each reads what it needs).
    from trainer import model as model_lib
    keras.utils.set_random_seed(3)
    merge = model_lib.build_decoder(model_lib.DecoderConfig(vocab_size=8, feature_dim=GRID[2], embedding_dim=8,
                                                            units=16, dropout=0.0))
    kernel, bias = merge.get_layer(model_lib.LOGITS).get_weights()
    merge.get_layer(model_lib.LOGITS).set_weights([kernel * 30.0, bias])  # decisive, so it sways the ensemble
    mixed = _export(merge, Bundle(first).vocabulary, str(tmp_path / "merge"))
    mixed_pair = load_bundles([first, mixed])
    assert len(mixed_pair.decoder.caption(features, 2)) == 12
    # The merge member reads the pooled vectors, the attention member the grids: the ensemble's first words are the
    # argmax of the mean of their log-probabilities computed that way.
    merge_logits = Bundle(mixed).decoder_model.predict_on_batch([features.vector, start])[:, 0]
    mixed_scores = np.mean([z - np.log(np.exp(z).sum(-1, keepdims=True)) for z in (logits[0], merge_logits)], axis=0)
    mixed_scores[:, never] = -np.inf
    assert [h.token_ids[0] if h.token_ids else END_ID for h in mixed_pair.decoder.greedy(features)] == \
        list(mixed_scores.argmax(axis=1))
    alone = logits[0].copy()
    alone[:, never] = -np.inf
    assert list(mixed_scores.argmax(axis=1)) != list(alone.argmax(axis=1))  # not the attention member's alone
    other = _export(*_random_attention_model(2), str(tmp_path / "other"), sha="def")
    with pytest.raises(ValueError, match="same features"):
        load_bundles([first, other])


# -- the caption job ------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_caption_job_serves_an_attention_bundle_and_an_ensemble(sample_dataset, sample_features, sample_bundle,
                                                                attention_bundle, tmp_path):
    """Real Xception and decoders on the workers: each photo gets the caption the bundle (or the ensemble of the
    attention and the merge bundle) gives to the extract job's features of that photo."""
    from beam_jobs.caption import job as caption_job
    from schemas import tables
    from tests.support.builders import argv, read_outputs
    dev = records.read_records(sample_features, "dev", (3, 3, 2048))
    paths = [os.path.join(sample_dataset, "Flicker8k_Dataset", record[records.IMAGE_ID]) for record in dev]
    features = records.SpatialFeatures(np.stack([r[records.IMAGE_FEATURES] for r in dev]),
                                       np.stack([r[records.IMAGE_GRID] for r in dev]))
    for model_dirs in ([attention_bundle], [attention_bundle, sample_bundle]):
        prefix = str(tmp_path / f"captions{len(model_dirs)}")
        extra = [item for model_dir in model_dirs[1:] for item in ("--model_dir", model_dir)]
        caption_job.run(argv(paths, model_dirs[0], prefix, "--weights", "none", "--beam_width", "2", *extra),
                           test_pipeline=local_test_pipeline())
        captions, errors = read_outputs(prefix)
        assert not errors and len(captions) == len(paths)
        bundle = load_bundles(model_dirs)
        expected = bundle.decoder.caption(  # the job decodes with the bundle's n-gram blocking
            features, 2, no_repeat_ngram_size=bundle.decoding_for().no_repeat_ngram_size)
        got = {row[tables.IMAGE_URI]: row for row in captions}
        for path, (text, log_prob) in zip(paths, expected):
            assert got[path][tables.CAPTION] == text
            assert got[path][tables.LOG_PROB] == pytest.approx(log_prob, abs=1e-3)
            assert got[path][tables.MODEL_ID] == bundle.model_id


@pytest.mark.integration
def test_attention_pictures_from_predict_and_the_gallery(sample_dataset, attention_bundle, sample_bundle, tmp_path):
    from PIL import Image

    from beam_jobs.caption import job as caption_job
    from beam_jobs.tools import gallery
    from schemas import images, tables
    from tests.support.builders import argv, read_outputs
    from trainer import pictures, predict
    photos = os.path.join(sample_dataset, "Flicker8k_Dataset")
    paths = [os.path.join(photos, name) for name in sorted(os.listdir(photos))[:2]]
    pictures_dir = str(tmp_path / "looks")
    os.makedirs(tmp_path / "elsewhere")
    namesake = str(tmp_path / "elsewhere" / os.path.basename(paths[0]))
    with open(paths[0], "rb") as source, open(namesake, "wb") as target:
        target.write(source.read())
    results = predict.caption_files(paths + [namesake, paths[1]], attention_bundle, weights="none",
                                    attention_png=pictures_dir)
    assert [error for *_, error in results] == [None] * 4 and results[3][1:] == results[1][1:]
    names = sorted(os.listdir(pictures_dir))
    stem = os.path.splitext(os.path.basename(paths[0]))[0]
    assert len(names) == 3 and f"{stem}.png" in names and f"{stem}-2.png" in names  # same name twice: numbered
    words = results[0][1].split()
    with Image.open(os.path.join(pictures_dir, f"{stem}.png")) as picture:
        rows = -(-(len(words) + 1) // pictures.COLUMNS)
        assert picture.size == (pictures.COLUMNS * pictures.PANEL, rows * (pictures.PANEL + pictures.LABEL_HEIGHT))

    prefix = str(tmp_path / "captions")
    caption_job.run(argv(paths, attention_bundle, prefix, "--weights", "none", "--attention_maps"),
                       test_pipeline=local_test_pipeline())
    captions, errors = read_outputs(prefix)
    assert not errors and len(captions) == 2
    decoder = Bundle(attention_bundle).decoder
    extractor = predict.load_bundle_extractor(Bundle(attention_bundle).config, "none")
    dev = {}
    for path in paths:
        with open(path, "rb") as handle:
            pixels, _ = images.prepare_image(handle.read(), TEST_IMAGE_SIZE)
        dev[os.path.basename(path)] = extractor(pixels[None])
    for row in captions:
        attention_rows = np.asarray(row[tables.ATTENTION])
        # each word, then <end> (unless the caption was cut at the bundle's max_length)
        assert attention_rows.shape[1] == 9 and attention_rows.shape[0] - len(row[tables.CAPTION].split()) in (0, 1)
        np.testing.assert_allclose(attention_rows.sum(axis=1), 1.0, atol=1e-5)
        beam_width, length_penalty, no_repeat = Bundle(attention_bundle).decoding_for()  # the bundle's defaults
        expected = decoder.hypotheses(dev[os.path.basename(row[tables.IMAGE_URI])], beam_width, length_penalty,
                                      no_repeat_ngram_size=no_repeat)[0]
        assert decoder.to_text(expected) == row[tables.CAPTION]
        np.testing.assert_allclose(attention_rows, expected.attention, atol=1e-4)
        assert len(attention_rows) == expected.length
    page = gallery.render(captions, errors, limit=10, size=96, title="t")
    assert page.count("where each word looked") == 2 and page.count("data:image/png;base64,") == 2
    with pytest.raises(ValueError, match="--attention_maps needs an attention bundle"):
        caption_job.run(argv(paths, sample_bundle, str(tmp_path / "m"), "--weights", "none", "--attention_maps"))
    with pytest.raises(ValueError, match="--attention_png needs an attention bundle"):
        predict.caption_files(paths, sample_bundle, weights="none", attention_png=pictures_dir)


@pytest.mark.integration
def test_select_by_dev_cider_keeps_the_epoch_with_the_best_captions(tiny_grid_records, tmp_path):
    model_dir = str(tmp_path / "model")
    summary = task.train(task.parse_args([
        "--data_dir", tiny_grid_records, "--model_dir", model_dir, "--decoder", "attention", "--epochs", "12",
        "--learning_rate", "0.02", "--patience", "12", "--verbose", "0", "--embedding_dim", "16", "--units", "32",
        "--attention_dim", "8", "--dropout", "0", "--batch_size", "3", "--select_by", "cider_d",
        "--lr_decay", "0.5"]))
    with open(os.path.join(model_dir, task.HISTORY_FILE), encoding="utf-8") as handle:
        history = json.load(handle)
    scores = [row[task.CIDER_MONITOR] for row in history]
    assert len(scores) == 12 and max(scores) > scores[0]
    assert summary["best_epoch"] == 1 + scores.index(max(scores))
    # The bundle holds that epoch's weights: its greedy dev captions score what was logged for it.
    result = evaluate.evaluate(tiny_grid_records, model_dir, "dev", beam_width=1)
    assert result["cider_d"] == pytest.approx(max(scores), abs=1e-6)
    # --lr_decay 0.5: the rate halves after every epoch without a better dev CIDEr-D (Keras' ReduceLROnPlateau,
    # min_delta 1e-4), down to learning_rate / 16.
    expected, rate, best = [], 0.02, -np.inf
    for score in scores:
        expected.append(rate)
        if score - 1e-4 > best:
            best = score
        else:
            rate = max(rate * 0.5, 0.02 / 16)
    assert [row["learning_rate"] for row in history] == pytest.approx(expected, rel=1e-5)
    assert min(expected) < 0.02  # the tiny set plateaus: the rule above was exercised
    with pytest.raises(ValueError, match="--select_by cider_d scores captions of the nothere split"):
        task.train(task.parse_args(["--data_dir", tiny_grid_records, "--model_dir", str(tmp_path / "m2"),
                                    "--select_by", "cider_d", "--decoder", "attention", "--eval_split", "nothere"]))


# -- self-critical training -----------------------------------------------------------------------------------
def test_corpus_cider_is_pycocoevalcap_cider_with_the_corpus_statistics():
    from trainer.scst import CorpusCider
    references = [["a dog runs on the grass", "a brown dog running", "the dog plays outside"],
                  ["a man rides a red bike", "a cyclist on a road", "a man on a bicycle"],
                  ["two children play in the water", "kids splash in a pool", "children swimming"]]
    captions = ["a dog runs in the grass", "a man rides a bike", "a dog in the water"]
    scores = CorpusCider(references).scores(captions, references)
    assert scores.mean() == pytest.approx(evaluate.cider_score(references, captions), rel=1e-9)
    assert scores[0] > scores[2] > 0 and scores.shape == (3,)
    # Other statistics (a larger corpus) give other scores for the same captions: the corpus is what is fixed.
    larger = CorpusCider(references + [["a dog"], ["a dog on the grass"], ["a man"]])
    assert not np.allclose(larger.scores(captions, references), scores)
    # A caption's score does not depend on the batch it is scored in (pycocoevalcap would take the corpus size,
    # ref_len, from the batch), and scoring leaves the corpus's n-gram table as it was.
    cider = CorpusCider(references)
    table = dict(cider._document_frequency)
    assert [cider.scores([caption], [refs])[0] for caption, refs in zip(captions, references)] == \
        pytest.approx(scores.tolist(), rel=1e-12)
    cider.scores(["an unseen zebra gallops", "purple elephants dance"], references[:2])
    assert cider._document_frequency == table


def test_sampling_is_repeatable_and_scored_as_the_training_graph_would():
    import tensorflow as tf

    from trainer.scst import sequence_batch
    model, vocabulary = _random_attention_model(5, words=("a", "dog", "cat", "runs", "on", "the"))
    decoder = CaptionDecoder(model, vocabulary, max_length=7)
    features = _grids(8, seed=3)
    first = decoder.sample(features, tf.random.Generator.from_seed(1))
    assert first == decoder.sample(features, tf.random.Generator.from_seed(1))
    assert first != decoder.sample(features, tf.random.Generator.from_seed(2))
    inputs, targets, mask = sequence_batch([h.token_ids for h in first], [h.finished for h in first])
    logits = model.predict_on_batch([features.grid.reshape(8, 4, GRID[2]), np.arange(8, dtype=np.int32), inputs])
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    chosen = np.take_along_axis(log_probs, targets[..., None], axis=2)[..., 0]
    np.testing.assert_allclose((chosen * mask).sum(axis=1), [h.log_prob for h in first], atol=1e-4)
    assert mask.sum(axis=1).tolist() == [h.length for h in first]


@pytest.mark.integration
@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_a_self_critical_update_moves_a_caption_s_probability_with_its_advantage(advantage):
    import tensorflow as tf

    from trainer.scst import CorpusCider, SelfCriticalTrainer, sequence_batch
    model, vocabulary = _random_attention_model(6, words=("a", "dog", "cat", "runs", "on", "the"))
    trainer = SelfCriticalTrainer(model, vocabulary, 7, CorpusCider([["a dog"]]), learning_rate=0.01, samples=1,
                                  baseline="greedy")
    features = _grids(2, seed=4)
    captions = trainer.decoder.sample(features, tf.random.Generator.from_seed(3))
    inputs, targets, mask = sequence_batch([h.token_ids for h in captions], [h.finished for h in captions])
    grids = tf.constant(features.grid.reshape(2, 4, GRID[2]).astype(np.float32))
    index = tf.constant(np.arange(2, dtype=np.int32))

    def log_prob():
        logits = model.predict_on_batch([grids, index, inputs])
        log_probs = tf.nn.log_softmax(logits).numpy()
        return (np.take_along_axis(log_probs, targets[..., None], axis=2)[..., 0] * mask).sum(axis=1)

    start = log_prob()
    trainer._update(grids, index, tf.constant(inputs), tf.constant(targets), tf.constant(mask),
                    tf.constant(np.array([advantage, 0.0], np.float32)))
    moved = log_prob() - start
    assert moved[0] * advantage > 1e-3  # the sampled caption's log-probability went the advantage's way


@pytest.mark.integration
def test_scst_fine_tunes_an_attention_bundle_on_dev_cider(tiny_grid_records, tmp_path):
    from trainer import scst
    initial = str(tmp_path / "initial")
    task.train(task.parse_args([
        "--data_dir", tiny_grid_records, "--model_dir", initial, "--decoder", "attention", "--epochs", "6",
        "--learning_rate", "0.02", "--patience", "6", "--verbose", "0", "--embedding_dim", "16", "--units", "32",
        "--attention_dim", "8", "--dropout", "0", "--batch_size", "3"]))
    tuned = str(tmp_path / "tuned")
    summary = scst.train(scst.parse_args([
        "--data_dir", tiny_grid_records, "--init_model_dir", initial, "--model_dir", tuned, "--epochs", "4",
        "--patience", "4", "--learning_rate", "0.01", "--samples", "4", "--images_per_batch", "3"]))
    history = summary["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]
    best = max(row["dev_cider_d_greedy"] for row in history)
    assert summary["best_dev_cider_d_greedy"] == best
    bundle = Bundle(tuned)
    assert bundle.config["training"]["scst"]["init_model_id"] == Bundle(initial).model_id
    assert bundle.grid_shape == GRID
    # The id names the weights: the initial ones again when no SCST epoch beat them on dev.
    assert (bundle.model_id == Bundle(initial).model_id) == (summary["best_epoch"] == 0)
    result = evaluate.evaluate(tiny_grid_records, tuned, "dev", beam_width=1)
    assert result["cider_d"] == pytest.approx(best, abs=1e-6)  # the bundle is the best epoch's
    with pytest.raises(ValueError, match="merge bundle"):
        merge = str(tmp_path / "merge")
        task.train(task.parse_args(["--data_dir", tiny_grid_records, "--model_dir", merge, "--epochs", "1",
                                    "--verbose", "0", "--units", "8", "--embedding_dim", "8", "--decoder", "merge"]))
        scst.train(scst.parse_args(["--data_dir", tiny_grid_records, "--init_model_dir", merge,
                                    "--model_dir", str(tmp_path / "x")]))
    # Records of another extractor (here: claiming int8 features) would give a bundle labelled with an extractor
    # it was not fine-tuned on.
    import shutil

    from schemas import fileio
    int8_records = str(tmp_path / "int8_records")
    shutil.copytree(tiny_grid_records, int8_records)
    metadata = fileio.read_json(os.path.join(int8_records, records.METADATA_FILE))
    metadata.update({records.MetadataKeys.INFERENCE_BACKEND: "openvino-int8",
                     records.MetadataKeys.INT8_MODEL: {"bin_sha256": "0" * 64}})
    fileio.write_json(os.path.join(int8_records, records.METADATA_FILE), metadata)
    with pytest.raises(ValueError, match="holds int8 features and .* was trained on float features"):
        scst.train(scst.parse_args(["--data_dir", int8_records, "--init_model_dir", initial,
                                    "--model_dir", str(tmp_path / "y")]))
