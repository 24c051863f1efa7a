"""Where a trial trains: in a process of its own (the default), or in the
caller's process (--in-process).

TensorFlow keeps every traced graph until its process ends (about 15 MB a
trial even after clear_session), and a trial killed for using too much memory
must not take the search along: so each trial trains in a fresh process. Its
imports (TensorFlow takes about 8 s) are paid while the trial before trains:
every trial but the search's last starts the process of the next one (the
spare).

    result = train_in_child(hype_space, settings)   # a result dict
    stop_spare()                                     # when the search is over

Both train functions turn any error into a failed result, except a missing
data set (dataset.DatasetError: every trial would fail) and Ctrl-C.
"""

import dataclasses
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading

from hks.core import console
from hks.data import dataset

# neural_net (Keras, TensorFlow: seconds) is imported by the trial process and
# by train_here, not by whoever merely imports this module.


@dataclasses.dataclass
class TrialProcess:
    """A child process waiting for one trial: `tasks` sends it the trial,
    `results` receives ("ready" | "result" | "dataset_error", payload)."""
    process: multiprocessing.Process
    tasks: multiprocessing.connection.Connection
    results: multiprocessing.connection.Connection

    def close(self):
        """End the process (a waiting one reads end-of-file and exits)."""
        self.tasks.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.results.close()


_spare = None  # the TrialProcess prestarted for the next trial, or None
_more = True  # whether a trial may follow the one being trained (see expect_more)
_running = None  # the TrialProcess training now, or None
# Set when the trial being trained must stop at the end of its epoch and leave
# no result (a MongoDB worker whose trial was given to another worker).
abandoned = threading.Event()
# How far the trial being trained has got ({} before its first epoch): what a
# MongoDB worker's heartbeat shows in the trial's job (analyze_results.py --mongo).
progress = {}


def note_epoch(epoch, epochs, accuracy):
    """The trial reached the end of `epoch` (of `epochs`) with this validation
    fine accuracy (None if not measured): kept in `progress`."""
    best = progress.get("best")
    if accuracy is not None and (best is None or accuracy > best):
        best = accuracy
    progress.update(epoch=epoch, epochs=epochs, accuracy=accuracy, best=best)


def abandon():
    """Stop the trial being trained at the end of its current epoch, in this
    process or in its trial process (SIGUSR1); the caller writes nothing for it."""
    abandoned.set()
    trial = _running
    if trial is not None and trial.process.pid:
        try:
            os.kill(trial.process.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass  # it has just finished


def expect_more(more):
    """Whether another trial may follow the next one in this process. The
    search says False before its last trial (--max-evals), which then starts
    no spare: its imports would be wasted."""
    global _more
    _more = more


def train_here(hype_space, settings, called_at=None, data_notices=True, earlier=None,
               on_epoch=None):
    """Train one model in this process and free it; errors become failed
    results. `earlier`: the earlier trials' curves, for pruning (see
    neural_net.build_and_train). `data_notices`: say the data set's notices
    and where trials train (False in a trial process: its search says them).
    `on_epoch` hears each epoch (default: note_epoch, in this process)."""
    import neural_net  # first: it quiets TensorFlow's start-up
    from hks.training import device
    import keras
    console.say_once("device", device.device_line(), data_notices)
    if on_epoch is None:
        progress.clear()
    try:
        model, _, result = neural_net.build_and_train(hype_space, config=settings,
                                                      called_at=called_at,
                                                      data_notices=data_notices,
                                                      earlier=earlier,
                                                      stop_when=abandoned.is_set,
                                                      on_epoch=on_epoch or note_epoch)
        if not abandoned.is_set():
            keep_model(model, result, settings, earlier)
        del model
    except neural_net.DatasetError:
        raise
    except Exception as err:  # a bad architecture, out of memory, ...
        result = neural_net.failure_result(hype_space, err)
    finally:
        keras.backend.clear_session()
        gc.collect()
    return result


def keep_model(model, result, settings, earlier):
    """--keep-models: save the model when it is among the best (kept_models);
    a save that fails is a warning, the trial's result stands."""
    from hks.trials import kept_models
    try:
        kept_models.keep_if_among_best(model, result, settings, earlier)
    except Exception as err:  # disk full, a Keras saving error: never fail the trial
        print(f"warning: could not keep the model of {result.get('model_name')} in "
              f"{kept_models.models_dir(settings.results_dir)}/ ({err}); its result is "
              "kept as usual.", flush=True)


def train_in_child(hype_space, settings, called_at=None, earlier=None):
    """Train one model in a trial process (the spare started during the
    previous trial, or a new one), starting the next trial's spare meanwhile.
    A trial process that dies (out-of-memory killer) is a failed result."""
    global _spare
    task = (hype_space, settings, called_at, os.getcwd(), earlier)  # cwd: a worker moves per job
    progress.clear()
    trial = take_spare()
    try:
        trial.tasks.send(task)
    except OSError:  # the spare died while it waited (broken pipe): start afresh
        trial.close()
        trial = start()
        trial.tasks.send(task)
    global _running
    _running = trial
    if abandoned.is_set():  # abandon() came before _running was set
        abandon()
    try:
        _spare = start() if _more else None
        kind, payload = receive_result(trial.results)
    except EOFError:  # the child died without answering
        trial.process.join()
        trial.close()
        if trial.process.exitcode == console.EXIT_INTERRUPTED:  # Ctrl-C reached it first
            raise KeyboardInterrupt from None
        return died_result(hype_space, trial.process.exitcode)
    except BaseException:  # Ctrl-C: do not leave processes training or waiting
        trial.process.terminate()
        trial.close()
        stop_spare(at_once=True)
        raise
    finally:
        _running = None
    trial.close()
    if kind == "dataset_error":
        raise dataset.DatasetError(payload)
    return payload


def died_result(hype_space, exitcode):
    import neural_net
    return neural_net.failure_result(hype_space, ChildProcessError(
        f"the trial's process died with exit code {exitcode} (a negative code is the "
        "signal that killed it: -9 is usually the out-of-memory killer)"))


def start():
    """A fresh process that imports neural_net, says "ready", then waits for one trial."""
    context = multiprocessing.get_context("spawn")
    task_receive, task_send = context.Pipe(duplex=False)
    result_receive, result_send = context.Pipe(duplex=False)
    # The child starts with Ctrl-C ignored, and child_main listens again (when
    # the search does): a Ctrl-C while spawn re-imports the main script would
    # print a traceback from that import; the search ends the child anyway.
    heard = signal.getsignal(signal.SIGINT)  # None: set outside Python, left alone
    ignore = heard is not None and threading.current_thread() is threading.main_thread()
    child = context.Process(target=child_main, name="hks-trial", daemon=True,
                            args=(task_receive, result_send, heard != signal.SIG_IGN))
    try:
        if ignore:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        child.start()
    finally:
        if ignore:
            signal.signal(signal.SIGINT, heard)
    task_receive.close()
    result_send.close()
    return TrialProcess(child, task_send, result_receive)


def take_spare():
    """The prestarted trial process if it is still alive, else a new one."""
    global _spare
    spare, _spare = _spare, None
    if spare is not None and spare.process.is_alive():
        return spare
    if spare is not None:
        spare.close()
    return start()


def has_spare():
    """Whether a prestarted trial process is waiting."""
    return _spare is not None


def wait_for_spare(timeout=120.0):
    """Wait until the spare trial process has done its imports (benchmark)."""
    if _spare is not None:
        multiprocessing.connection.wait([_spare.results], timeout)


def stop_spare(at_once=False):
    """End the spare trial process, if any (the search is over). `at_once`
    (Ctrl-C): do not wait for it to finish starting up."""
    global _spare
    if _spare is not None:
        if at_once:
            _spare.process.terminate()
        _spare.close()
        _spare = None


def receive_result(results):
    """The trial's ("result" | "dataset_error", payload), after "ready", whose
    payload (where trials train: device.device_line) is said once per
    process, so the search and the MongoDB worker say it without importing
    TensorFlow, and after "epoch" messages (note_epoch's arguments)."""
    while True:
        kind, payload = results.recv()
        if kind == "ready":
            console.say_once("device", payload)
        elif kind == "epoch":
            note_epoch(*payload)
        else:
            return kind, payload


def child_main(task_receive, result_send, hear_ctrl_c=True):
    """What a trial's process runs: import, say so, wait for the trial, train
    it, send the result back."""
    threading.Thread(target=exit_with_parent, daemon=True).start()
    signal.signal(signal.SIGUSR1, lambda *_: abandoned.set())  # see abandon()
    try:
        if hear_ctrl_c:  # ignored by start() until now
            signal.signal(signal.SIGINT, signal.default_int_handler)
        import neural_net  # noqa: F401  (Keras and TensorFlow, loaded before the trial)
        from hks.training import device
        result_send.send(("ready", device.device_line()))
        try:
            hype_space, settings, called_at, cwd, earlier = task_receive.recv()
        except EOFError:  # the search ended without needing this process
            return
        os.chdir(cwd)  # TensorBoard/ and weights/ are relative to the trial's folder
        try:
            # The search process has told the user about the data set once already.
            result_send.send(("result", train_here(
                hype_space, settings, called_at, data_notices=False, earlier=earlier,
                on_epoch=lambda *epoch: result_send.send(("epoch", epoch)))))
        except neural_net.DatasetError as err:
            result_send.send(("dataset_error", str(err)))
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(console.EXIT_INTERRUPTED)  # quietly: the search process reports it
    finally:
        result_send.close()
        sys.stdout.flush()


def exit_with_parent():
    """In a trial's process: stop when the search process is gone (kill -9),
    instead of training on for nobody."""
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    os._exit(console.EXIT_INTERRUPTED)
