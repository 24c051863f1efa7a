"""What benchmark.py measures besides training: a folder's decoding, a
kept model's save and prediction (bench_files), the plain Keras reference
(reference_model). Never imports the search, MongoDB or a script."""
