"""imcap: image captioning as batch, distributed data-processing jobs (Apache Beam + TensorFlow/Keras)."""
from setuptools import find_packages, setup

# Why each dependency is here:
#   tensorflow/keras   Xception feature extractor, tf.data trainer, LSTM decoder (Keras 3 on the TF backend)
#   apache-beam        the batch jobs; [tfrecord] is Beam's extra for TFRecord I/O
#   google-crc32c      Beam's fast CRC32C for TFRecord writes (crcmod alone is pure Python and slow)
#   pillow             image decoding (EXIF, every colour mode, decompression-bomb checks)
# Security floors: pillow>=12.3.0 fixes every published Pillow advisory (up to the 13 CVE-2026-5xxxx of 12.3.0,
# among them decompression bombs and out-of-bounds reads in image plugins); keras>=3.15.1 fixes every published
# Keras 3 advisory (safe_mode bypasses CVE-2025-1550/-8747/-9905/CVE-2026-12481, HDF5 CVE-2026-0897/-1669/-12480,
# path traversals CVE-2025-12058/-12060/GHSA-hqp4-2352-xf5r/CVE-2026-12479) plus 3.15.1's .keras asset
# decompression-bomb check.
#   numpy, pyarrow     arrays; Parquet outputs
#   tqdm               progress bars of the command-line tools that loop outside Beam
#   nltk               corpus BLEU with the standard definition (the trainer's evaluation)
#   tensorboard        the trainer's TensorBoard logs (TensorFlow 2.21 no longer installs it)
#   matplotlib         the trainer's training-curve PNG
#   openvino, nncf     the default feature backend on CPU workers: Xception quantized to int8 (NNCF post-training
#                      quantization, calibrated at launch) and run by OpenVINO, 3.5x Keras float32 at the same
#                      caption quality (BENCHMARKS.md, feature backends); also the bfloat16/f32 OpenVINO backends
#   pycocoevalcap      CIDEr-D, the caption metric of record next to BLEU (the COCO evaluation's own code; a
#                      104 MB wheel because it bundles Java tools for SPICE and METEOR that imcap does not run)
# Why each upper bound (a new release is admitted once the whole suite passes on it; the newest admitted versions
# were tested side by side with the oldest in a second venv, docs/development.md):
#   tensorflow<2.22    each minor release changes oneDNN numerics and the Keras/tf.data pairing the trainer's
#                      resume and determinism tests hold to; 2.22 is not released
#   keras<4, numpy<3   the next major versions
#   apache-beam<2.79   beam_jobs.runtime.LocalRunner extends Beam's FnApiRunner and beam_jobs.sinks Beam's private
#                      _ParquetSink/_TFRecordSink: internals that change between minor releases (2.77 and 2.78 pass)
#   pillow<14          schemas.images squashes non-RGB pictures a block at a time in the order of Pillow's two
#                      bilinear passes, whose rule changed in 13 (schemas.images.down_first knows 12's and 13's);
#                      a next major version may change it again (tests/schemas/test_images.py would say so)
#   python<3.13        the suite runs on 3.11 (CI) and 3.12 (checked here); 3.13 wheels of TensorFlow 2.21, Beam 2.78
#                      and OpenVINO resolve, but the suite has not been run on it
INSTALL_REQUIRES = [
    "tensorflow>=2.20,<2.22",
    "keras>=3.15.1,<4",
    "apache-beam[tfrecord]>=2.77,<2.79",
    "google-crc32c>=1.5",
    "pillow>=12.3.0,<14",
    "numpy>=1.26,<3",
    "pyarrow>=15",
    "tqdm>=4.66",
    "nltk>=3.9",
    "tensorboard>=2.18",
    "matplotlib>=3.8",
    "pycocoevalcap>=1.2",
    "openvino>=2025.0",
    "nncf>=3.0",
]

setup(
    name="imcap",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["beam_jobs", "beam_jobs.*", "trainer", "trainer.*", "schemas", "schemas.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # pytest-xdist: the suite on every core (2 here: about 2.3x less wall time than one process); pandas and
        # duckdb: the README's examples of reading the caption job's tables run in the tests; webdataset: the tests
        # write WebDataset shards with the library's own writer
        "test": ["pytest>=8", "pytest-xdist>=3.5", "pandas>=2", "duckdb>=1.0", "webdataset>=0.2", "ruff>=0.6"],
        # OpenVINO is now installed by default; the extra stays so that 'imcap[openvino]' still installs
        "openvino": [],
        # gs:// paths and the Dataflow runner
        "gcp": ["apache-beam[gcp,tfrecord]>=2.77,<2.79"],
        # NVIDIA GPUs on Linux: TensorFlow's CUDA/cuDNN wheels (about 2.8 GB to download); run the jobs and
        # imcap-predict with --inference_backend keras on GPU workers (docs/backends.md, GPUs)
        "gpu": ["tensorflow[and-cuda]>=2.20,<2.22"],
    },
    entry_points={
        "console_scripts": [
            "imcap-extract=beam_jobs.extract.job:main",
            "imcap-sample-data=beam_jobs.tools.sample_dataset:main",
            "imcap-demo=beam_jobs.tools.demo:main",
            "imcap-caption=beam_jobs.caption.job:main",
            "imcap-gallery=beam_jobs.tools.gallery:main",
            "imcap-quantize=beam_jobs.tools.quantize:main",
            "imcap-weights=beam_jobs.tools.weights:main",
            "imcap-recipe=beam_jobs.tools.recipe:main",
            "imcap-train=trainer.task:main",
            "imcap-scst=trainer.scst:main",
            "imcap-evaluate=trainer.evaluate:main",
            "imcap-predict=trainer.predict:main",
        ],
    },
)
