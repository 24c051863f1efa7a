"""Old pickles, new homes. Until 2026-12 every module stood at the
repository's root, and hyperopt pickled the search's objective into MongoDB
under those names (`mongo_search.worker_objective`, `flags.TrialSettings`):
a worker of today could not unpickle an experiment created then.
`allow_old_pickles()` lets such a name find its module's new home, so that
an experiment (or a results.pkl) made before the move is resumed. A module
of that name that really exists (your own flags.py, say) wins."""

import importlib
import importlib.abc
import importlib.util
import sys

# The root modules that moved into the package, and where they are now.
MOVED = {
    "flags": "hks.core.flags", "dataset": "hks.data.dataset",
    "cifar_archives": "hks.data.cifar_archives", "image_folders": "hks.data.image_folders",
    "synthetic_data": "hks.data.synthetic_data", "data_types": "hks.data.data_types",
    "device": "hks.training.device", "training_callbacks": "hks.training.training_callbacks",
    "trial_process": "hks.trials.trial_process", "kept_models": "hks.trials.kept_models",
    "warm_start": "hks.trials.warm_start", "pruning": "hks.stopping.pruning",
    "pruning_replay": "hks.stopping.pruning_replay", "mongo_compat": "hks.mongo.mongo_compat",
    "mongo_settings": "hks.mongo.mongo_settings", "mongo_search": "hks.mongo.mongo_search",
    "analysis_plots": "hks.reports.analysis_plots",
    "tensorboard_hparams": "hks.reports.tensorboard_hparams",
    "bench_files": "hks.bench.bench_files", "reference_model": "hks.bench.reference_model",
}


class _NewHome(importlib.abc.Loader):
    """Loads an old name as the module at its new home (one module, two names)."""

    def __init__(self, new_name):
        self.new_name = new_name

    def create_module(self, spec):
        return importlib.import_module(self.new_name)

    def exec_module(self, module):
        pass  # imported already, under its new name


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Asked last (after every real module of that name): a moved module's old name."""

    def find_spec(self, name, path=None, target=None):
        if path is None and name in MOVED:
            return importlib.util.spec_from_loader(name, _NewHome(MOVED[name]))
        return None


def allow_old_pickles():
    """Let the old names of moved modules import (once per process)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
