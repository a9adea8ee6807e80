"""Log lines libraries write at every run that say nothing about the run, filtered out of every command's logs.

Installed when `schemas` is first imported, i.e. before any module of the project imports Beam (`schemas.fileio`).
"""
import logging


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
