"""The caption decoder: tf.data input from the extract job's records, the CNN-RNN merge model, training,
decoding (greedy and beam search), evaluation (BLEU) and the model bundle.

- `trainer.task`: ``python -m trainer.task --data_dir FEATURES --model_dir MODEL`` trains and writes a bundle.
- `trainer.evaluate`: corpus BLEU of a bundle on a split.
- `trainer.predict`: captions for image files (runs the feature extractor itself).
"""
