"""rnnprobe: see, measure and compare vanishing and exploding gradients in recurrent networks."""

from rnnprobe.capture import Capture, capture
from rnnprobe.config import RunConfig, build_config
from rnnprobe.errors import RecordError, RnnprobeError
from rnnprobe.instrument import Instrumented, instrument
from rnnprobe.model import ElmanRNN, RNNClassifier, RNNLanguageModel, RNNRegressor
from rnnprobe.store import load_run
from rnnprobe.train import train_run

__all__ = [
    "Capture",
    "ElmanRNN",
    "Instrumented",
    "RNNClassifier",
    "RNNLanguageModel",
    "RNNRegressor",
    "RecordError",
    "RnnprobeError",
    "RunConfig",
    "build_config",
    "capture",
    "instrument",
    "load_run",
    "train_run",
]
