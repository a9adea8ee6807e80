"""The extract job: captioned image datasets -> backbone features + tokenized captions (TFRecords), per split.

    layouts     the caption files of each dataset layout, parsed into one shape
    discovery   finding and checking a dataset in any layout (imcap-extract --dataset_dir)
    datasets    several datasets as one input: names, ids, splits
    reading     captions, splits and image files joined per image in the pipeline; their pixels and features
    vocabulary  the vocabulary, counted in the pipeline from the train split
    writing     record shards, errors.parquet, vocab.txt and metadata.json
    job         flags, the checks at launch, the pipeline (``python -m beam_jobs.extract_features``)
"""
