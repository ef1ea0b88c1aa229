"""rnnprobe: see, measure and compare vanishing and exploding gradients in recurrent networks."""

from rnnprobe.errors import RnnprobeError
from rnnprobe.model import ElmanRNN, RNNClassifier, RNNLanguageModel, RNNRegressor

__all__ = [
    "ElmanRNN",
    "RNNClassifier",
    "RNNLanguageModel",
    "RNNRegressor",
    "RnnprobeError",
]
