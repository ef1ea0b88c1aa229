"""A run's parts, built from its config: task, model, optimizer, generators, validation batches.

:func:`build_run` draws from the RNGs in a fixed order (the task, then ``torch.manual_seed``
and the weights, then the generators of ``rnnprobe.seeds``), so the same config gives the same
run on every call, and a checkpoint only has to restore the generators' states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rnnprobe.core.device import resolve_device
from rnnprobe.core.initialisation import init_recurrent_weights
from rnnprobe.core.models import ElmanRNN, RNNClassifier, RNNLanguageModel, RNNRegressor
from rnnprobe.data.tasks import Batch, Task, task_from_config
from rnnprobe.data.truncation import Truncation
from rnnprobe.errors import RnnprobeError
from rnnprobe.seeds import derived_seed
from rnnprobe.training import config as config_names
from rnnprobe.training.config import ModelConfig, RunConfig
from rnnprobe.training.memory import check_fits, estimate_run

__all__ = ["DTYPES", "OPTIMIZERS", "RunParts", "build_model", "build_run", "make_optimizer"]

# The names are the config's choices (config.DTYPES, config.OPTIMIZERS), in their order.
DTYPES = dict(zip(config_names.DTYPES, (torch.float32, torch.float64), strict=True))
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = dict(
    zip(
        config_names.OPTIMIZERS,
        (torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop, torch.optim.Adagrad),
        strict=True,
    )
)
PER_STEP = ("lm", "per_step_classification")


def build_model(task: Task, config: ModelConfig) -> nn.Module:
    """Return the model ``task`` needs: an LM-style per-step model, a classifier or a regressor."""
    layers, nonlinearity = config.layers, config.nonlinearity
    if task.kind in PER_STEP:
        vocab_size = task.vocab_size
        if vocab_size is None:  # every per-step task reads tokens
            raise RnnprobeError(f"task kind {task.kind!r} needs token inputs")
        return RNNLanguageModel(
            vocab_size,
            config.embedding_dim,
            config.hidden_size,
            padding_idx=0,
            num_layers=layers,
            nonlinearity=nonlinearity,
        )
    if task.kind == "many_to_one_classification":
        return RNNClassifier(
            task.output_size,
            config.hidden_size,
            vocab_size=task.vocab_size,
            embedding_dim=config.embedding_dim,
            num_layers=layers,
            nonlinearity=nonlinearity,
        )
    if task.kind == "regression":
        return RNNRegressor(
            1,
            config.hidden_size,
            input_size=task.input_size,
            num_layers=layers,
            nonlinearity=nonlinearity,
        )
    raise RnnprobeError(f"task kind {task.kind!r} has no model")


def make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """Return a fresh optimizer of the run's kind and learning rate over ``model``'s weights."""
    cfg = config.train
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    return OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.lr)


@dataclass
class RunParts:
    """Everything a run trains with; ``rnn`` is the model's recurrent stack."""

    config: RunConfig
    device: torch.device
    dtype: torch.dtype
    task: Task
    truncation: Truncation
    model: nn.Module
    rnn: ElmanRNN
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]  # the trainable ones: clipping and the finite guard see these
    data_generator: torch.Generator  # the training batches
    cut_generator: torch.Generator  # random BPTT cuts
    eval_batches: list[Batch]

    @property
    def carries_state(self) -> bool:
        """Whether each batch continues the last one's sequences (``lm --sampling sequential``)."""
        return getattr(self.task, "sampling", "random") == "sequential"

    def on_device(self, batch: Batch) -> Batch:
        """Return ``batch`` on the run's device, float features in the run's dtype."""
        batch = batch.to(self.device)
        if not batch.inputs.is_floating_point():
            return batch
        inputs, targets = batch.inputs.to(self.dtype), batch.targets.to(self.dtype)
        return Batch(inputs, targets, batch.lengths, batch.continues)


def build_run(config: RunConfig) -> RunParts:
    """Return a run's parts at initialisation; refuse a run that cannot fit in memory."""
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    task = task_from_config(config)
    check_fits(estimate_run(config, task), device)  # before allocating
    truncation = Truncation.parse(config.train.bptt)
    torch.manual_seed(config.seed)
    model = build_model(task, config.model)
    rnn = next(m for m in model.modules() if isinstance(m, ElmanRNN))
    m = config.model
    init_recurrent_weights(rnn, m.init, gain=m.init_gain, radius=m.init_radius)
    model.to(device, dtype)
    optimizer = make_optimizer(model, config)
    return RunParts(
        config=config,
        device=device,
        dtype=dtype,
        task=task,
        truncation=truncation,
        model=model,
        rnn=rnn,
        optimizer=optimizer,
        params=[p for p in model.parameters() if p.requires_grad],
        data_generator=torch.Generator().manual_seed(config.seed),
        cut_generator=torch.Generator().manual_seed(derived_seed(config.seed, "cuts")),
        eval_batches=task.eval_batches(
            config.train.batch_size,
            num_batches=config.train.eval_batches or None,  # 0: the whole split
            seed=derived_seed(config.seed, "evals"),
        ),
    )
