"""The search's trials: each trained in a process of its own (trial_process),
the best ones' models kept (kept_models), result files turned back into
trials (warm_start). Imports neural_net only inside the trial's process;
never MongoDB, the reports or a script other than neural_net."""
