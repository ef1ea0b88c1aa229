"""The train-throughput benchmark's two runs take turns step by step, and both finish."""

from __future__ import annotations

import threading

from rnnprobe.bench.step import _Turns
from rnnprobe.training.callbacks import Callback
from rnnprobe.training.loop import train_run
from tests.support.runs import tiny


class Log(Callback):
    def __init__(self, name: str, log: list[tuple[str, int]]) -> None:
        self.name, self.log = name, log

    def on_step_end(self, trainer, result):
        self.log.append((self.name, trainer.step))


def test_two_runs_alternate_steps_until_the_shorter_one_ends(tmp_path):
    turns = {"a": _Turns(), "b": _Turns()}
    turns["a"].partner, turns["b"].partner = turns["b"], turns["a"]
    turns["a"].turn.set()
    log: list[tuple[str, int]] = []
    steps = {"a": 5, "b": 3}
    results = {}

    def train(name: str) -> None:
        config = tiny(train__steps=steps[name], seed=7)
        callbacks = [Log(name, log), turns[name]]  # the log entry is made before the handover
        results[name] = train_run(config, tmp_path / name, progress=False, callbacks=callbacks)

    threads = [threading.Thread(target=train, args=(name,)) for name in turns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [r.status for r in results.values()] == ["done", "done"]
    assert log == [
        ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3), ("a", 4), ("a", 5),
    ]  # fmt: skip
