"""The machinery behind the scripts at the repository's root, a folder per
concern (docs/layout.md says which and where a new file goes). The model
stays in neural_net.py and the search in hyperopt_optimize.py, at the top."""
