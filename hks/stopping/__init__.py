"""Stopping hopeless trials early: the rules (pruning, and learned with its
fitted table), their replay on learning curves (pruning_replay, of results
or curve_files) and the study across searches that chose the default.
Imports only hks.core; never Keras, the model, the trials or MongoDB."""
