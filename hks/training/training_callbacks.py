"""The Keras callbacks of one trial besides Keras' own: when its first step
ended, stopping at the end of an epoch on request (a trial taken away from
its MongoDB worker), each epoch's accuracy told to whoever watches (a
MongoDB worker's heartbeat), and the stopping rule of
hks/stopping/pruning.py (--prune)."""

import time

import numpy as np

from hks.core import console
from hks.stopping import pruning

with console.startup_noise_filtered():  # TensorFlow's C++ start-up lines, on every import
    import keras


class FirstStepTimer(keras.callbacks.Callback):
    """Notes when the first training step ends (after tracing and compiling)."""

    def __init__(self):
        super().__init__()
        self.ended_at = None

    def on_train_batch_end(self, batch, logs=None):
        if self.ended_at is None:
            self.ended_at = time.time()


class StopWhen(keras.callbacks.Callback):
    """Stops training at the end of an epoch once `asked()` is true."""

    def __init__(self, asked):
        super().__init__()
        self.asked = asked

    def on_epoch_end(self, epoch, logs=None):
        if self.asked():
            self.model.stop_training = True


class EpochReport(keras.callbacks.Callback):
    """After each epoch: `report(epoch, epochs, validation fine accuracy)`."""

    def __init__(self, report):
        super().__init__()
        self.report = report

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get("val_fine_outputs_accuracy")
        self.report(epoch + 1, self.params.get("epochs"),
                    None if accuracy is None else float(accuracy))


class PruningCallback(keras.callbacks.Callback):
    """Stops the trial at the end of an epoch when the stopping rule (a
    hks/stopping/pruning.py rule) says it is hopeless. `earlier` is the search's earlier
    trials (a list of pruning.Earlier, or of plain curves: completed
    trials), or a function returning them (None when it cannot: the last
    ones are kept), asked again every pruning.REFRESH_EPOCHS epochs (a
    MongoDB worker's trial, while other workers finish theirs)."""

    def __init__(self, rule, earlier, epochs):
        super().__init__()
        self.rule, self.epochs = rule, epochs
        self.source = earlier if callable(earlier) else None
        self.thresholds = rule.thresholds([] if self.source else list(earlier), epochs)
        self.curve, self.pruned_at, self.threshold = [], None, None
        self.every, self.next_refresh = pruning.REFRESH_EPOCHS, 0
        self.refresh(0)

    def refresh(self, epoch):
        """Read the earlier trials again; after a failed read (each costs
        MongoDB's timeout), wait twice as many epochs before the next one."""
        if self.source is None or epoch < self.next_refresh:
            return
        earlier = self.source()
        if earlier is None:
            self.every *= 2
        else:
            self.thresholds = self.rule.thresholds(earlier, self.epochs)
        self.next_refresh = epoch + self.every

    def on_epoch_end(self, epoch, logs=None):
        self.curve.append(float((logs or {}).get("val_fine_outputs_accuracy", np.nan)))
        self.refresh(epoch)
        if self.rule.below(self.curve, self.thresholds)[-1]:
            self.pruned_at, self.threshold = epoch + 1, float(self.thresholds[epoch])
            self.model.stop_training = True

    def result_keys(self):
        """What a result says about pruning: `pruned` and, if so, when, by
        which rule and below which threshold."""
        if self.pruned_at is None:
            return {"pruned": False}
        keys = {"pruned": True, "pruned_at_epoch": self.pruned_at,
                "pruned_by": self.rule.name, "pruned_below": self.threshold}
        if self.rule.name == "median":  # the key results had before there were other rules
            keys["pruned_below_median"] = self.threshold
        return keys


MedianStopping = PruningCallback  # its name when the median was the only rule
