"""Result JSON files turned back into hyperopt trials, so that TPE goes on
from them: --warm-start DIR adds a folder's results to a search, and a
resumed search takes back the result files written after results.pkl was
last saved (a search killed between the two). hyperopt stores a trial's draw
as the internal value of every label it used (the index of an hp.choice
option), so each stored hyperspace is inverted through the search space; one
that the space cannot have drawn is skipped with the reason."""

import os
from pathlib import Path

import hyperopt.pyll
import numpy as np
from hyperopt import JOB_STATE_DONE

from hks.core import storage


class SpaceMismatch(ValueError):
    """A stored hyperspace that the current search space cannot have drawn."""


def same_value(stored, option):
    """Equality that does not take True for 1 (use_BN vs nb_conv_pool_layers)."""
    if isinstance(stored, bool) or isinstance(option, bool):
        return type(stored) is type(option) and stored == option
    return stored == option


def encode_value(node, value, labels):
    """Record in `labels` (label -> internal value) what hyperopt must have
    drawn for `node` to evaluate to `value`: the option's index for hp.choice
    (and the draws inside the chosen option), the number for the others."""
    while node.name in ("float", "int"):
        node = node.pos_args[0]
    if node.name == "literal":
        if not same_value(value, node.obj):
            raise SpaceMismatch(f"{value!r} is not {node.obj!r}")
        return
    if node.name == "switch":  # hp.choice(label, options)
        label = node.pos_args[0].pos_args[0].obj
        for index, option in enumerate(node.pos_args[1:]):
            attempt = {}
            try:
                encode_value(option, value, attempt)
            except SpaceMismatch:
                continue
            labels.update(attempt, **{label: index})
            return
        raise SpaceMismatch(f"{label}: {value!r} is none of its choices")
    if node.name != "hyperopt_param":
        raise SpaceMismatch(f"cannot invert a {node.name!r} expression")
    label, distribution = node.pos_args[0].obj, node.pos_args[1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceMismatch(f"{label}: {value!r} is not a number")
    bounds = {k: distribution.arg[k].obj for k in ("low", "high") if k in distribution.arg}
    if distribution.name.endswith("loguniform"):
        bounds = {k: np.exp(v) for k, v in bounds.items()}
    q = distribution.arg["q"].obj if "q" in distribution.arg else 0
    low, high = bounds.get("low", -np.inf) - q, bounds.get("high", np.inf) + q
    if not low <= value <= high:
        raise SpaceMismatch(f"{label}: {value!r} is outside the search range")
    labels[label] = value


def misc_of(hype_space, tid, space):
    """hyperopt's `misc` for a trial that drew `hype_space` from `space`:
    `vals`/`idxs` hold one value per label the draw used and nothing for
    unused branches."""
    labels = {}
    missing = sorted(set(space) - set(hype_space))
    if missing:
        raise SpaceMismatch(f"no value for {', '.join(missing)}")
    for key, node in space.items():
        try:
            encode_value(node, hype_space[key], labels)
        except SpaceMismatch as err:
            where = "" if str(err).startswith(f"{key}:") else f"{key}: "
            raise SpaceMismatch(f"{where}{err}") from None
    every_label = {node.pos_args[0].obj for node in hyperopt.pyll.dfs(hyperopt.pyll.as_apply(space))
                   if node.name == "hyperopt_param"}
    return {"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
            "idxs": {label: [tid] if label in labels else [] for label in every_label},
            "vals": {label: [labels[label]] if label in labels else [] for label in every_label}}


def warm_start(trials, results_dir, space):
    """Add the trials of the result files in `results_dir` that `trials` does
    not hold yet (by model name) as finished trials, so that TPE goes on from
    them. Files that cannot be read or do not fit the search space are skipped
    with the reason. Returns the number added."""
    return add_result_files(trials, storage.result_files(results_dir), space)


def add_result_files(trials, paths, space):
    """warm_start for these result files."""
    known = {t["result"].get("model_name") for t in trials.trials}
    results = []
    for path in paths:
        try:
            result = storage.load_json_result(path)
            if result.get("model_name") in known:
                continue
            if result.get("status") not in ("ok", "fail"):
                raise SpaceMismatch(f"status {result.get('status')!r}")
            if result["status"] == "ok" and not isinstance(result.get("loss"), (int, float)):
                raise SpaceMismatch("no loss")
            misc_of(result.get("space") or {}, 0, space)  # check it fits before taking a trial id
        except (OSError, ValueError, AttributeError) as err:
            print(f"warm start: skipped {path}: {err}")
            continue
        known.add(result.get("model_name"))
        results.append(result)
    if not results:
        return 0
    tids = trials.new_trial_ids(len(results))
    docs = trials.new_trial_docs(tids, [None] * len(results), results,
                                 [misc_of(r["space"], tid, space) for r, tid in zip(results, tids)])
    for doc in docs:
        doc["state"] = JOB_STATE_DONE
    trials.insert_trial_docs(docs)
    trials.refresh()
    return len(docs)


def take_back(trials, config, space):
    """A search stopped (kill -9) after a trial's result file was written but
    before the trials file was: add the result files written since the trials
    file was last saved that it does not hold, so that every result file
    belongs to a trial and that trial is not trained again. Older files not
    in the search (another search's) are left to --warm-start. Returns the
    number added."""
    path = Path(config.trials_file)
    if not path.exists():
        return 0
    saved_at = path.stat().st_mtime
    known = {t["result"].get("model_name") for t in trials.trials}
    unsaved = [name for name in storage.result_files(config.results_dir)
               if Path(name).name[:-len(storage.RESULT_SUFFIX)] not in known
               and os.path.getmtime(name) >= saved_at]
    if len(unsaved) > 1:  # one trial at a time: a kill can leave one file unsaved, not more
        print(f"note: {len(unsaved)} result files in {config.results_dir}/ are newer than "
              f"{path} and not in it; a killed search leaves at most one, so they were left "
              f"alone (to add them: --warm-start {config.results_dir})")
        return 0
    for name in unsaved:
        print(f"taking back {name}: written after {path} was last saved")
    return add_result_files(trials, unsaved, space) if unsaved else 0
