"""What the analysis shows: the plots (analysis_plots) and TensorBoard's
HParams dashboard (tensorboard_hparams).
Never imports Keras, the model, the trials' processes or MongoDB."""
