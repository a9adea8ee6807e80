"""Writing and loading model bundles (`schemas.bundle`): the decoder, its vocabulary and its config."""
import hashlib
import os
import tempfile
import typing

from schemas import backbones, fileio
from schemas import bundle as bundle_schema
from schemas import int8_model as int8_schema
from schemas.bundle import DEFAULT_NO_REPEAT_NGRAM_SIZE, BundleKeys, DecodingKeys
from schemas.records import MetadataKeys
from schemas.vocabulary import VOCAB_FILE, Vocabulary

DEFAULT_DECODING = {DecodingKeys.BEAM_WIDTH: 3, DecodingKeys.LENGTH_PENALTY: 0.0,
                    DecodingKeys.NO_REPEAT_NGRAM_SIZE: DEFAULT_NO_REPEAT_NGRAM_SIZE}


class DecodingSettings(typing.NamedTuple):
    """How to decode: the flags given, else the bundle's defaults (`Bundle.decoding_for`)."""
    beam_width: int
    length_penalty: float
    no_repeat_ngram_size: int


def check_int8_source(int8_source: str, metadata: dict) -> None:
    """Before training on int8 records: their int8 model must be there, complete, of the records' weights and the
    one metadata.json names (the bundle will carry it)."""
    info = int8_schema.read_info(int8_source)
    recorded = (metadata.get(MetadataKeys.INT8_MODEL) or {}).get("bin_sha256")
    if info["weights_sha256"] != metadata[MetadataKeys.WEIGHTS_SHA256]:
        raise ValueError(f"{int8_source} was quantized from other weights than the features' "
                         f"({info['weights_sha256'][:12]} vs {metadata[MetadataKeys.WEIGHTS_SHA256][:12]})")
    if recorded and info.get("bin_sha256") != recorded:
        raise ValueError(f"{int8_source} is not the int8 model the features came from (bin sha256 "
                         f"{str(info.get('bin_sha256'))[:12]}, metadata says {recorded[:12]})")


def export_bundle(model_dir: str, decoder, vocabulary: Vocabulary, metadata: dict, training: dict,
                  decoding: dict | None = None, int8_source: str | None = None) -> dict:
    """Writes decoder.keras, vocab.txt and bundle.json into model_dir; returns the config. The decoder's kind
    (merge or attention) is read from the model itself. Features from the int8 backend (``metadata``'s
    inference_backend): the int8 extractor in ``int8_source`` is copied into the bundle (``extractor_int8/``), so
    that the caption job computes the features the decoder was trained on."""
    from trainer import attention
    int8 = (metadata.get(MetadataKeys.INFERENCE_BACKEND) or "keras") == INT8_BACKEND
    if int8:  # checked before any file of the bundle is written
        if not int8_source:
            raise ValueError("features from the int8 backend, and no int8 extractor to put in the bundle")
        check_int8_source(int8_source, metadata)
    fileio.makedirs(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, bundle_schema.DECODER_FILE)
        decoder.save(local)
        weights_digest = backbones.weights_digest(decoder)
        with open(local, "rb") as handle:
            fileio.write_bytes(fileio.join(model_dir, bundle_schema.DECODER_FILE), handle.read())
    vocabulary.save(fileio.join(model_dir, VOCAB_FILE))
    identity = hashlib.sha256((weights_digest + vocabulary.to_text() + metadata[MetadataKeys.WEIGHTS_SHA256]
                               ).encode("utf-8")).hexdigest()
    config = {
        BundleKeys.FORMAT_VERSION: bundle_schema.ATTENTION_FORMAT_VERSION if attention.is_attention_decoder(decoder)
        else bundle_schema.FORMAT_VERSION,
        BundleKeys.MODEL_ID: "imcap-" + identity[:12],
        BundleKeys.BACKBONE: metadata[MetadataKeys.BACKBONE],
        BundleKeys.WEIGHTS: metadata[MetadataKeys.WEIGHTS],
        BundleKeys.WEIGHTS_SHA256: metadata[MetadataKeys.WEIGHTS_SHA256],
        BundleKeys.IMAGE_SIZE: metadata[MetadataKeys.IMAGE_SIZE],
        BundleKeys.PREPROCESSING: metadata[MetadataKeys.PREPROCESSING],
        BundleKeys.FEATURE_DIM: metadata[MetadataKeys.FEATURE_DIM],
        BundleKeys.MAX_LENGTH: metadata[MetadataKeys.MAX_LENGTH],
        BundleKeys.VOCAB_SIZE: len(vocabulary),
        BundleKeys.DECODER: bundle_schema.ATTENTION_DECODER if attention.is_attention_decoder(decoder)
        else bundle_schema.MERGE_DECODER,
        BundleKeys.GRID_SHAPE: metadata[MetadataKeys.GRID_SHAPE] if attention.is_attention_decoder(decoder) else None,
        BundleKeys.DECODING: dict(decoding or DEFAULT_DECODING),
        BundleKeys.INFERENCE_BACKEND: metadata.get(MetadataKeys.INFERENCE_BACKEND) or "keras",
        BundleKeys.TRAINING: training,
    }
    if int8:
        config[BundleKeys.INT8_MODEL] = metadata.get(MetadataKeys.INT8_MODEL)
        copy_int8_model(int8_source, fileio.join(model_dir, bundle_schema.INT8_DIR))
    fileio.write_json(fileio.join(model_dir, bundle_schema.CONFIG_FILE), config)
    return config


def _check_decoder_matches(model, config: dict, model_dir: str) -> None:
    """decoder.keras must be the model bundle.json describes (a hand-edited or mixed-up bundle would otherwise fail
    deep inside decoding, or decode nonsense)."""
    from trainer import attention
    found = bundle_schema.ATTENTION_DECODER if attention.is_attention_decoder(model) else bundle_schema.MERGE_DECODER
    problems = []
    if found != bundle_schema.decoder_kind(config):
        problems.append(f"decoder.keras holds the {found} decoder, bundle.json says "
                        f"{bundle_schema.decoder_kind(config)}")
    inputs = {tensor.name.split(":")[0]: tuple(tensor.shape) for tensor in model.inputs}
    if found == bundle_schema.ATTENTION_DECODER and problems == []:
        grid = bundle_schema.grid_shape(config)
        expected = (None, grid[0] * grid[1], grid[2])
        if inputs.get(attention.GRID_INPUT) != expected:
            problems.append(f"decoder.keras reads grids of shape {inputs.get(attention.GRID_INPUT)}, bundle.json's "
                            f"grid_shape {list(grid)} means {expected}")
    elif found == bundle_schema.MERGE_DECODER and problems == []:
        from trainer.model import FEATURES_INPUT
        if inputs.get(FEATURES_INPUT) != (None, config[BundleKeys.FEATURE_DIM]):
            problems.append(f"decoder.keras reads vectors of shape {inputs.get(FEATURES_INPUT)}, bundle.json's "
                            f"feature_dim is {config[BundleKeys.FEATURE_DIM]}")
    if model.outputs[0].shape[-1] != config[BundleKeys.VOCAB_SIZE]:
        problems.append(f"decoder.keras predicts {model.outputs[0].shape[-1]} tokens, bundle.json's vocab_size is "
                        f"{config[BundleKeys.VOCAB_SIZE]}")
    if problems:
        raise ValueError(f"{model_dir}: decoder.keras does not match bundle.json ({'; '.join(problems)}): a "
                         "damaged or hand-assembled bundle; export it again with trainer.task")


INT8_BACKEND = int8_schema.BACKEND


def copy_int8_model(source: str, target: str) -> None:
    """Copies an int8 extractor directory (extractor.xml/.bin, quantization.json) between any filesystems."""
    int8_schema.read_info(source)  # a complete one, or a clear error
    if source.rstrip("/") == target.rstrip("/"):
        return
    fileio.makedirs(target)
    for name in (int8_schema.MODEL_XML, int8_schema.MODEL_BIN, int8_schema.INFO_FILE):
        fileio.write_bytes(fileio.join(target, name), fileio.read_bytes(fileio.join(source, name)))


class Bundle:
    """A loaded bundle: ``config``, ``vocabulary``, the Keras ``decoder_model`` and a ready `CaptionDecoder`
    (``decoder``). ``with_decoder=False`` reads the config and vocabulary only (no TensorFlow)."""

    def __init__(self, model_dir: str, with_decoder: bool = True):
        config_path = fileio.join(model_dir, bundle_schema.CONFIG_FILE)
        if not fileio.exists(config_path):
            raise FileNotFoundError(f"{config_path}: no such file; --model_dir must be a directory written by "
                                    "trainer.task (decoder.keras, vocab.txt, bundle.json)")
        self.model_dir = model_dir
        self.config = bundle_schema.check_config(fileio.read_json(config_path), config_path)
        self.vocabulary = Vocabulary.load(fileio.join(model_dir, VOCAB_FILE))
        if len(self.vocabulary) != self.config[BundleKeys.VOCAB_SIZE]:
            raise ValueError(f"{model_dir}: vocab.txt has {len(self.vocabulary)} tokens, bundle.json says "
                             f"{self.config[BundleKeys.VOCAB_SIZE]}")
        self.decoder_model = self.decoder = None
        if with_decoder:
            self.decoder_model = load_decoder(fileio.join(model_dir, bundle_schema.DECODER_FILE))
            _check_decoder_matches(self.decoder_model, self.config, model_dir)
            from trainer.decoding import CaptionDecoder
            self.decoder = CaptionDecoder(self.decoder_model, self.vocabulary, self.config[BundleKeys.MAX_LENGTH])

    @property
    def model_id(self) -> str:
        return self.config[BundleKeys.MODEL_ID]

    @property
    def decoding(self) -> dict:
        return self.config[BundleKeys.DECODING]

    @property
    def grid_shape(self) -> tuple | None:
        """The [g, g, D] grid the decoder reads (attention), or None (merge: the pooled vector)."""
        return bundle_schema.grid_shape(self.config)

    @property
    def members(self) -> list:
        return [self]

    @property
    def inference_backend(self) -> str:
        """The extractor backend of the features it was trained on (keras, or openvino-int8 with `int8_model`)."""
        return bundle_schema.inference_backend(self.config)

    @property
    def int8_model(self) -> str | None:
        """The int8 extractor inside the bundle (openvino-int8 bundles), else None."""
        if self.inference_backend != INT8_BACKEND:
            return None
        path = fileio.join(self.model_dir, bundle_schema.INT8_DIR)
        if not fileio.exists(fileio.join(path, int8_schema.INFO_FILE)):
            raise ValueError(f"{self.model_dir}: bundle.json says its features came from the int8 backend, and "
                             f"{bundle_schema.INT8_DIR}/ is missing or incomplete: copy the whole bundle directory")
        return path

    def decoding_for(self, beam_width: int | None = None, length_penalty: float | None = None,
                     no_repeat_ngram_size: int | None = None) -> DecodingSettings:
        """The settings given, else the bundle's defaults (a bundle written before n-gram blocking existed gets the
        product's default, `schemas.bundle.DEFAULT_NO_REPEAT_NGRAM_SIZE`)."""
        return DecodingSettings(
            beam_width or self.decoding[DecodingKeys.BEAM_WIDTH],
            self.decoding[DecodingKeys.LENGTH_PENALTY] if length_penalty is None else length_penalty,
            self.decoding.get(DecodingKeys.NO_REPEAT_NGRAM_SIZE, DEFAULT_NO_REPEAT_NGRAM_SIZE)
            if no_repeat_ngram_size is None else no_repeat_ngram_size)


ENSEMBLE_PREFIX = "imcap-ensemble-"


class Ensemble(Bundle):
    """Several bundles trained on the same features and vocabulary, decoding as one: at each step of greedy or
    beam search the members' next-token log-probabilities are averaged (`trainer.decoding.CaptionDecoder`).

    ``config`` is the first member's, with the ensemble's ``model_id`` ("imcap-ensemble-" + 12 hex digits of a
    digest of the members' ids in order) and ``members``; an attention member makes the ensemble read grids. The
    decoding defaults are the first member's."""

    def __init__(self, model_dirs, with_decoder: bool = True):  # pylint: disable=super-init-not-called
        if not model_dirs:
            raise ValueError("an ensemble needs at least one --model_dir")
        self._members = [Bundle(model_dir, with_decoder=False) for model_dir in model_dirs]
        first = self._members[0]
        for member in self._members[1:]:
            for key in (BundleKeys.BACKBONE, BundleKeys.WEIGHTS_SHA256, BundleKeys.IMAGE_SIZE):
                if member.config[key] != first.config[key]:
                    raise ValueError(f"{member.model_dir} and {first.model_dir} differ in {key} "
                                     f"({member.config[key]} vs {first.config[key]}): an ensemble's bundles must be "
                                     "trained on the same features")
            mine, theirs = (int8_schema.identity(bundle.config) for bundle in (member, first))
            if mine != theirs:  # Keras and OpenVINO float features are interchangeable (cosine >= 0.999); int8 not
                raise ValueError(f"{member.model_dir} and {first.model_dir} were trained on features of different "
                                 f"extractors ({f'int8 {mine[:12]}' if mine else 'float'} vs "
                                 f"{f'int8 {theirs[:12]}' if theirs else 'float'}): an ensemble's bundles must be "
                                 "trained on the same features")
            if member.vocabulary.tokens != first.vocabulary.tokens:
                raise ValueError(f"{member.model_dir} and {first.model_dir} have different vocabularies: an "
                                 "ensemble's bundles must be trained on the same records")
        grids = {member.grid_shape for member in self._members if member.grid_shape}
        if len(grids) > 1:
            raise ValueError(f"the attention bundles of the ensemble read different grids ({sorted(grids)})")
        ids = [member.model_id for member in self._members]
        self.model_dir = model_dirs[0]
        self.vocabulary = first.vocabulary
        self.config = dict(first.config)
        self.config[BundleKeys.MODEL_ID] = ENSEMBLE_PREFIX + hashlib.sha256(
            "\n".join(ids).encode("utf-8")).hexdigest()[:12] if len(ids) > 1 else ids[0]
        self.config[BundleKeys.MEMBERS] = ids
        self.config[BundleKeys.MAX_LENGTH] = max(member.config[BundleKeys.MAX_LENGTH] for member in self._members)
        if grids:
            self.config[BundleKeys.DECODER] = bundle_schema.ATTENTION_DECODER
            self.config[BundleKeys.GRID_SHAPE] = list(grids.pop())
        self.decoder_model = self.decoder = None
        if with_decoder:
            from trainer.decoding import CaptionDecoder
            models = [load_decoder(fileio.join(member.model_dir, bundle_schema.DECODER_FILE))
                      for member in self._members]
            self.decoder_model = models[0]
            self.decoder = CaptionDecoder(models, self.vocabulary, self.config[BundleKeys.MAX_LENGTH])

    @property
    def members(self) -> list:
        return list(self._members)


def load_bundles(model_dirs, with_decoder: bool = True) -> Bundle:
    """The bundle of one --model_dir, or the `Ensemble` of several."""
    model_dirs = [model_dirs] if isinstance(model_dirs, str) else list(model_dirs)
    if len(model_dirs) == 1:
        return Bundle(model_dirs[0], with_decoder=with_decoder)
    return Ensemble(model_dirs, with_decoder=with_decoder)


def load_decoder(path: str):
    import keras

    from trainer import attention  # noqa: F401  (registers the attention decoder's layers with Keras)
    if not fileio.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    return keras.saving.load_model(fileio.local_copy(path), compile=False)  # Keras opens local files only


def feature_weights_for(config: dict, override: str | None) -> str:
    """The --weights spec that rebuilds the bundle's feature extractor (its sha256 is checked after loading)."""
    if override:
        return override
    recorded = config[BundleKeys.WEIGHTS]
    if recorded.startswith("file:"):
        raise ValueError(f"this bundle was trained on features from a local weights file ({recorded[5:]}); pass "
                         "--weights PATH with that file")
    return recorded


def check_feature_weights(config: dict, digest: str, weights: str) -> None:
    expected = config[BundleKeys.WEIGHTS_SHA256]
    if digest != expected:
        raise ValueError(f"--weights {weights} gives a {config[BundleKeys.BACKBONE]} with weights sha256 "
                         f"{digest[:12]}, but the bundle was trained on features of weights {expected[:12]} "
                         f"({config[BundleKeys.WEIGHTS]}); captions would be meaningless. Pass the same weights.")
