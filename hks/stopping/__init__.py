"""Stopping hopeless trials early: the rules (pruning) and their replay on
complete learning curves (pruning_replay).
Imports only hks.core; never Keras, the model, the trials or MongoDB."""
