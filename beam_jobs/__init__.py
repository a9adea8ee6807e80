"""Apache Beam pipelines of the image-captioning system.

- `beam_jobs.extract_features`: a captioned image dataset -> Xception features + tokenized captions (TFRecords).
- `beam_jobs.tools.sample_dataset`: writes a small synthetic dataset in the Flickr8k layout (demo, tests).
"""
from trainer.cli import install_noise_filter

install_noise_filter()  # before Beam is imported: its GCP modules log "apitools not found" as they load
