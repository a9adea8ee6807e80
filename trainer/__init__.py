"""The models, without Beam: what the jobs run inside their steps, and the trainer's own commands.

- `features`, `quantization`: the image feature extractor (Keras, OpenVINO, int8) and its int8 quantization.
- `data`, `model`, `attention`: tf.data input from the extract job's records; the merge and attention decoders.
- `task` (imcap-train), `scst` (imcap-scst): teacher-forced training, then self-critical fine-tuning.
- `decoding`, `evaluate` (imcap-evaluate): greedy and beam search; BLEU and CIDEr-D on a split.
- `bundle`: the model bundle (decoder, vocabulary, config naming the feature extractor) and ensembles.
- `predict` (imcap-predict): captions for a few image files without Beam; `pictures`: where each word looked.
- `cli`: what every command shares (flags, logging, a quiet TensorFlow).
"""
