"""rnnprobe: see, measure and compare vanishing and exploding gradients in recurrent networks.

The names below are imported on first use: the command line starts without loading torch.
"""

from typing import TYPE_CHECKING

from rnnprobe._lazy import lazy_exports

if TYPE_CHECKING:
    from rnnprobe.capture import Capture, capture
    from rnnprobe.config import RunConfig, build_config
    from rnnprobe.errors import RecordError, RnnprobeError
    from rnnprobe.instrument import Instrumented, instrument
    from rnnprobe.model import ElmanRNN, RNNClassifier, RNNLanguageModel, RNNRegressor
    from rnnprobe.store import load_run
    from rnnprobe.train import train_run

_EXPORTS = {
    "Capture": "capture",
    "capture": "capture",
    "RunConfig": "config",
    "build_config": "config",
    "RecordError": "errors",
    "RnnprobeError": "errors",
    "Instrumented": "instrument",
    "instrument": "instrument",
    "ElmanRNN": "model",
    "RNNClassifier": "model",
    "RNNLanguageModel": "model",
    "RNNRegressor": "model",
    "load_run": "store",
    "train_run": "train",
}
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
__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
