"""Read back what hks/reports/tensorboard_hparams.py and Keras' TensorBoard callback
wrote: event files, and the hyperparameters and final metrics of one HParams
run. With the tensorboard package only (no TensorFlow)."""


def read_events(folder):
    """The events of a run folder, read with the tensorboard package (no TensorFlow)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        reader = pywrap_tensorflow.PyRecordReader_New(str(path).encode())
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:
                break
            events.append(event_pb2.Event.FromString(reader.record()))
    return events


def run_contents(folder):
    """({hparam: python value}, {metric tag: value}) of one HParams run."""
    from tensorboard.plugins.hparams import metadata
    hparams, scalars = {}, {}
    for event in read_events(folder):
        for value in event.summary.value:
            if value.tag == metadata.SESSION_START_INFO_TAG:
                info = metadata.parse_session_start_info_plugin_data(
                    value.metadata.plugin_data.content)
                hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
            elif value.HasField("simple_value"):
                scalars[value.tag] = value.simple_value
    return hparams, scalars
