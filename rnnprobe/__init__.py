"""rnnprobe: see, measure and compare vanishing and exploding gradients in recurrent networks.

The names below are imported on first use: the command line starts without loading torch.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from rnnprobe._lazy import lazy_exports

if TYPE_CHECKING:
    from rnnprobe.analysis.diagnosis import analyse_run, analyse_study
    from rnnprobe.analysis.runs import RunSummary, summarise_run
    from rnnprobe.core.capture import Capture, capture
    from rnnprobe.core.instrument import Instrumented, instrument
    from rnnprobe.core.models import ElmanRNN, RNNClassifier, RNNLanguageModel, RNNRegressor
    from rnnprobe.data.tasks import Batch, Task, register_task
    from rnnprobe.errors import RecordError, RnnprobeError
    from rnnprobe.records.store import load_run
    from rnnprobe.training.callbacks import Callback
    from rnnprobe.training.config import RunConfig, build_config
    from rnnprobe.training.loop import RunResult, Trainer, train_run
    from rnnprobe.training.step import StepResult

try:
    __version__ = version("rnnprobe")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Capture": "core.capture",
    "capture": "core.capture",
    "RunConfig": "training.config",
    "build_config": "training.config",
    "RecordError": "errors",
    "RnnprobeError": "errors",
    "Instrumented": "core.instrument",
    "instrument": "core.instrument",
    "ElmanRNN": "core.models",
    "RNNClassifier": "core.models",
    "RNNLanguageModel": "core.models",
    "RNNRegressor": "core.models",
    "load_run": "records.store",
    "train_run": "training.loop",
    "Callback": "training.callbacks",
    "RunResult": "training.loop",
    "RunSummary": "analysis.runs",
    "analyse_run": "analysis.diagnosis",
    "analyse_study": "analysis.diagnosis",
    "Trainer": "training.loop",
    "StepResult": "training.step",
    "summarise_run": "analysis.runs",
    "Batch": "data.tasks",
    "Task": "data.tasks",
    "register_task": "data.tasks",
}
__all__ = [
    "Batch",
    "Callback",
    "Capture",
    "ElmanRNN",
    "Instrumented",
    "RNNClassifier",
    "RNNLanguageModel",
    "RNNRegressor",
    "RecordError",
    "RnnprobeError",
    "RunConfig",
    "RunResult",
    "RunSummary",
    "StepResult",
    "Task",
    "Trainer",
    "__version__",
    "analyse_run",
    "analyse_study",
    "build_config",
    "capture",
    "instrument",
    "load_run",
    "register_task",
    "summarise_run",
    "train_run",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
