"""The Beam jobs of imcap, and the commands around them.

    extract/   imcap-extract (python -m beam_jobs.extract_features): captioned datasets -> features + captions
    (TFRecords)
    caption/   imcap-caption (python -m beam_jobs.caption_images): photos, lists, archives -> captions (Parquet)
    tools/     imcap-demo, imcap-sample-data, imcap-gallery, imcap-quantize: commands that are not Beam jobs

What both jobs share: `runtime` (Beam options, the local runner, counters, the end-of-run report), `elements` (what
crosses the steps), `naming` (URIs of files, archive members and list entries), `sinks` (shard writers that touch
nothing they did not write), `features` (image bytes -> pixels -> features under RunInference; the extractor itself
is `trainer.features`) and `models` (the seam through which tests pass fake models). The jobs import `trainer` and
`schemas`; neither imports the jobs.
"""
import schemas  # noqa: F401  (installs the filter of known log noise before Beam is imported)
