"""What benchmark.py measures besides training: a folder's decoding, a
kept model's save, prediction and trip through GridFS (bench_files), the
plain Keras reference (reference_model). Never imports the search or a script."""
