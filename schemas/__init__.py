"""The data contracts between the stages of the image-captioning system.

Every file one stage writes and another reads is defined here, once:

- `captions`: caption normalization rules and the start/end tokens.
- `vocabulary`: the vocabulary file format (`vocab.txt`) and reserved ids.
- `images`: how image bytes become the pixels a backbone sees (decoding, EXIF, colour modes, size limits,
  resizing) and the error classes of images that cannot be used.
- `backbones`: the feature extractor (Xception) and what identifies its weights.
- `records`: the TFRecord feature spec and the layout of the extract job's output directory.
- `tables`: the Parquet schemas of the caption job's outputs and of error rows.
- `bundle`: the model bundle the trainer writes and the caption job reads.

- `fileio`: the file layer: every path of every stage goes through Beam's FileSystems.

Stages import from here; they never re-declare a format.
"""
from schemas.logs import install_noise_filter

install_noise_filter()  # before Beam is imported: its GCP modules log "apitools not found" as they load
