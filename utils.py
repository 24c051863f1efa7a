"""The helpers the original's utils.py offered, for your own scripts and
notebooks: the trials' result files (`load_best_hyperspace`,
`load_best_result`, `load_results`, `print_json`, `save_json_result`, ...)
and the settings (`TrialSettings`, `SearchSettings`).

They live in the package now (hks/core/storage.py, console.py and
hks/core/flags.py); every name this module had before the move is still here, so
scripts written against it keep working:

    import utils
    space = utils.load_best_hyperspace("results")
"""

from hks.core.console import (EXIT_INTERRUPTED, NO_DRIVER_NOISE, NVIDIA_DRIVER,  # noqa: F401
                              QUIET_MARK, STARTUP_NOISE, data_line, progress_line, pruned_text,
                              quiet_tensorflow_logs, raise_interrupt, say_once,
                              startup_noise_filtered)
from hks.core.flags import (RESULTS_DIR, Config, MachineSettings, SearchSettings,  # noqa: F401
                            TrialSettings)
from hks.core.storage import (ACCURACY_DECIMALS, DATASET_SUFFIX, FAILED_PREFIX,  # noqa: F401
                              FILE_MODE, RESULT_SUFFIX, SPACE_SUFFIX, TENSORBOARD_DIR,
                              VAL_FINE_KEYS, WEIGHTS_DIR, WEIGHTS_SUFFIX, atomic_pickle,
                              atomic_write, best_trial, is_number, load_best_hyperspace,
                              load_best_result, load_json_result, load_results, model_id,
                              model_name_for, os_error_text, print_json, result_files,
                              result_path, result_to_json, save_json_result, to_plain,
                              val_fine_curve)
