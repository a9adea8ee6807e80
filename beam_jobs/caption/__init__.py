"""The caption job: image files, lists and archives -> captions in Parquet, every failure an error row.

    inputs      globs and list files resolved to files, then chosen on URIs alone (resume)
    archives/   tar and zip readers that account for every member; work units of an archive's members
    reading     files and work units read and decoded into pixels on the workers
    decoding    features -> caption rows (the bundle's decoder, batched by RunInference)
    outputs     the captions/, errors/ and checkpoint/ tables of the output directory; resume and overwrite
    job         flags, the checks at launch, the pipeline (``python -m beam_jobs.caption_images``)
"""
