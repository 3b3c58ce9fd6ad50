"""Hand-over stage: a manifest of saved images with licences, and the files to cite them."""

FORMATS = ("parquet", "csv", "jsonl")  # of the manifest; here so --help needs no pyarrow
