"""Tools beside the pretraining product, not imported by it: the official-style SSAST/AST and Audio-MAE reference
models (``reference_ssast``, ``reference_mae``: the baselines the tests and the benchmark check ours against) and the
training-step benchmark (``python pretrain/tools/bench.py``, with its timing helpers in ``bench_steps``)."""
