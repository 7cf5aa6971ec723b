"""Tools beside the fine-tuning product, not imported by it: the results benchmark on the synthetic corpus
(``python finetune/tools/results.py``: pretraining, heads, device-shift and semi-supervised tables, mean +- std over
seeds)."""
