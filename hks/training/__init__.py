"""What neural_net.py trains with besides Keras' own: the device and the
precision (device), the trial's callbacks (training_callbacks).
Imports Keras; never the trials, the search or MongoDB."""
