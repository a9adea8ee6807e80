"""What every imcap command shares at start-up: logging, and a TensorFlow that does not shout.

TensorFlow's C++ layers print start-up lines straight to the process's stderr before any logging is set up
(``oneDNN custom operations are on``, ``Could not find cuda drivers``, ``E0000 ... failed call to cuInit`` on a
machine without a GPU, and ``oneDNN supports DT_HALF only ...`` at the first float16 op): alarming, and noise in every log. `quiet_tensorflow` imports TensorFlow and Keras and
initializes the devices with that stderr redirected (its lines are shown if the import fails); set
``IMCAP_VERBOSE=1`` to see them. Beam's import logs ``apitools not found`` when the GCP extras are absent, which
only matters to gs:// users (who install ``imcap[gcp]``); `KnownNoise` drops it.
"""
import argparse
import logging
import os
import sys
import tempfile

VERBOSE_ENV = "IMCAP_VERBOSE"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_quiet_done = False


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


class KnownNoise(logging.Filter):
    """Messages libraries log at every run that say nothing about the run."""
    PREFIXES = (
        "apitools not found",  # Beam's GCP modules, when google-apitools (imcap[gcp]) is not installed
        # Beam 2.77's RunInference, on every batch, when torch is absent (its `resource` import is tied to torch)
        "Resource module is not available",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def install_noise_filter() -> None:
    root = logging.getLogger()
    if not any(isinstance(existing, KnownNoise) for existing in root.filters):
        root.addFilter(KnownNoise())


def quiet_tensorflow() -> None:
    """Imports TensorFlow and Keras and initializes the devices with C++ start-up output silenced (once)."""
    global _quiet_done
    if _quiet_done or verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import importlib
            importlib.import_module("keras")
            tf = importlib.import_module("tensorflow")
            tf.config.list_physical_devices()
            # The first float16 op of a process prints "oneDNN supports DT_HALF only on platforms with AVX-512"
            # (even on CPUs that have it); the spatial grids are float16, so that line is said here, once.
            tf.cast(tf.constant([0.0], tf.float16), tf.float32)
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    _quiet_done = True


def setup_logging(level: int = logging.INFO, fmt: str = LOG_FORMAT) -> None:
    """The root logger at ``level`` with one format, even if a library configured it while being imported."""
    # force: Beam's GCP modules log "apitools not found" at import time, which configures the root logger at WARNING
    logging.basicConfig(level=level, format=fmt, force=True)
    install_noise_filter()


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


EXPECTED_FAILURES = (ValueError, FileNotFoundError)  # what a user can fix: a bad flag, a missing file, ...


def exit_status(action) -> int:
    """Runs a command's ``action()`` and returns its exit status: an int it returns is the status, anything else
    (None, a summary, a result) is 0; 2 with the error as one log line (no traceback) when it raises one of
    `EXPECTED_FAILURES`."""
    try:
        status = action()
    except EXPECTED_FAILURES as error:
        logging.error("%s", error)
        return 2
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


positive_int = _int_at_least(1, "a positive integer")  # argparse types of every command
non_negative_int = _int_at_least(0, "an integer >= 0")

