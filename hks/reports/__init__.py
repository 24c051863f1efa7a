"""What the analysis shows: the table of trials (results_table), the plots
(analysis_plots), the pruning replay's report (replay_report), TensorBoard's
HParams dashboard (tensorboard_hparams). Never imports Keras, the model, the
trials' processes or MongoDB."""
