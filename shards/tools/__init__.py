"""Tools beside the data product, not imported by it: the input-pipeline benchmark (``python shards/tools/bench.py``:
decode + crop per worker, batched fbank against the per-clip kaldi loop) and the synthetic-corpus report
(``python shards/tools/synthetic_report.py``: how fast the corpus renders and how hard it is)."""
