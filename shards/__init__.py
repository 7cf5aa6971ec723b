"""Data in and out: raw corpora -> WebDataset shards -> streamed batches -> features."""
