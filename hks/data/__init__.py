"""The images a trial trains on: which data set --dataset names (dataset) and
its readers (CIFAR archives, folders of images, the synthetic set).
Imports only hks.core; never Keras, the model or those who load data."""
