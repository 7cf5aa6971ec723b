"""Fine-tuning of a pretrained encoder for scene classification: heads (mean pooling, layer-wise weighted sums),
metrics and reports, and the training loop.

Import from the submodules (``from finetune.heads import build_head``); this file stays empty of imports so that
``import finetune.heads`` does not pull in matplotlib or the trainer.
"""
