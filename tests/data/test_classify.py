"""Bring your own data: text classification from a class folder or a CSV, preprocessing
filters, the task registry, and the classifier's records, analysis and report."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from rnnprobe.analysis.runs import summarise_run
from rnnprobe.cli.main import main
from rnnprobe.data import names, tasks
from rnnprobe.data.classify import ClassifyTask
from rnnprobe.data.corpus import corpus_from_text, preprocess_text
from rnnprobe.data.tasks import Batch, Task, register_task, task_from_config
from rnnprobe.data.textdata import read_labelled, stratified_split
from rnnprobe.errors import RnnprobeError
from rnnprobe.records.store import load_run
from rnnprobe.report.pages import build_report
from rnnprobe.study.spec import expand, spec_from_dict
from rnnprobe.training import config as config_module
from rnnprobe.training.config import build_config
from rnnprobe.training.loop import train_run

# Synthetic "languages": each draws syllables from its own inventory and ends in one of its
# own suffixes, so a name's letters (above all its ending) give its class away.
STYLES = {
    "Italic": (["ro", "ma", "li", "ni", "co", "ta", "be", "lu"], ["ini", "etti", "ano", "ello"]),
    "Nordic": (["sv", "en", "ber", "lun", "da", "kj", "ol", "ha"], ["sen", "son", "berg"]),
    "Slavic": (["vo", "ko", "zh", "ra", "mi", "lo", "bo", "pe"], ["ov", "ova", "ski", "enko"]),
    "Nippon": (["ka", "to", "mi", "ya", "shi", "ro", "na", "su"], ["moto", "shita", "uchi"]),
    "Gaelic": (["mac", "ai", "gh", "ll", "ea", "dh", "ow", "fi"], ["agh", "ey", "an", "ach"]),
}
SIZES = (150, 70, 50, 40, 30)  # majority class 150 / 340 = 44 %
FAST = {
    "device": "cpu",
    "task.name": "classify",
    "model.hidden_size": 32,
    "model.embedding_dim": 16,
    "train.batch_size": 32,
    "train.lr": 1e-2,
    "train.steps": 120,
    "train.eval_every": 60,
    "train.eval_batches": 50,
    "flush_every": 60,
    "checkpoint_every": 120,
    "probes.hidden": "never",
    "probes.spectra": "never",
    "probes.lyapunov": "never",
    "probes.reach": "never",
    "probes.weight_grads": "never",
}


def write_names(folder: Path, sizes=SIZES, seed: int = 0) -> Path:
    """Write one ``<Language>.txt`` per style, ``sizes[i]`` generated names each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for (name, (syllables, suffixes)), n in zip(STYLES.items(), sizes, strict=False):
        names = [
            "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) + rng.choice(suffixes)
            for _ in range(n)
        ]
        (folder / f"{name}.txt").write_text("\n".join(x.capitalize() for x in names) + "\n")
    return folder


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classify run on the synthetic names, and its report directory."""
    root = tmp_path_factory.mktemp("classify")
    data = write_names(root / "names")
    config = build_config({**FAST, "task.data": str(data)})
    result = train_run(config, root / "run", progress=False)
    assert result.status == "done"
    return root / "run", build_report(root / "run", root / "report")


def test_classify_run_beats_the_majority_baseline_clearly(trained):
    run_dir, _ = trained
    run = load_run(run_dir)
    task = run.table("task").iloc[0]
    assert task["name"] == "classify" and task["kind"] == "many_to_one_classification"
    assert task["baseline_metric"] == pytest.approx(150 / 340, abs=0.01)
    summary = summarise_run(run)
    assert summary.final_metric >= summary.baseline_metric + 0.35, summary.final_metric
    assert summary.loss_ratio < 0.5
    scores = summary.classes
    assert scores.accuracy == pytest.approx(summary.final_metric)  # one number, two records
    assert scores.names == sorted(STYLES) and scores.majority == "Italic"
    assert scores.step == summary.steps == 120


def test_classes_and_confusion_records_cover_the_validation_split(trained):
    run = load_run(trained[0])
    classes, confusion = run.table("classes"), run.table("confusion")
    assert list(classes["name"]) == sorted(STYLES)
    assert classes["valid_examples"].sum() == 34 and classes["train_examples"].sum() == 306
    assert (classes["truncated"] == 0).all() and (classes["dropped"] == 0).all()
    assert sorted(confusion["step"].unique()) == [60, 120]
    for _, at in confusion.groupby("step"):
        assert len(at) == 25 and at["count"].sum() == 34  # every cell, zeros kept
        per_true = at.groupby("true")["count"].sum().to_numpy()
        assert list(per_true) == list(classes["valid_examples"])


def test_report_shows_the_confusion_matrix_and_per_class_accuracy(trained):
    _, report = trained
    assert (report / "confusion.png").stat().st_size > 5000
    text = (report / "README.md").read_text()
    assert "## Classes" in text and "confusion.png" in text and "Validation accuracy" in text
    assert "(always 'Italic')" in text
    summary = pd.read_csv(report / "summary.csv")
    assert {"baseline_metric", "balanced_accuracy"} <= set(summary.columns)


def test_csv_and_tsv_take_named_columns(tmp_path):
    (tmp_path / "a.csv").write_text('label,words\npos,"good, fine"\nneg,bad\npos,great\n\n')
    examples = read_labelled(tmp_path / "a.csv", text_column="words")
    assert examples.classes == ("neg", "pos")
    assert examples.texts == ("good, fine", "bad", "great") and examples.labels == (1, 0, 1)
    (tmp_path / "b.tsv").write_text("text\tlabel\nuno\tes\none\ten\n")
    assert read_labelled(tmp_path / "b.tsv").classes == ("en", "es")
    (tmp_path / "c.csv").write_text("text,label\na,10\nb,2\nc,1\n")
    assert read_labelled(tmp_path / "c.csv").classes == ("1", "2", "10")  # numeric order


def _folder_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize(
    "make, named, words",
    [
        (lambda p: p / "missing", "missing", "not found"),
        (lambda p: _folder_with(p, {}), "data", "no <class>.txt files"),
        (lambda p: _folder_with(p, {"A.txt": b"x\n", "B.txt": b""}), "B.txt", "empty"),
        (lambda p: _folder_with(p, {"A.txt": b"x\n", "B.txt": b"\n \n"}), "B.txt", "only white"),
        (lambda p: _folder_with(p, {"A.txt": b"x\ny\n"}), "data", "one class only"),
        (lambda p: _folder_with(p, {"A.txt": b"x\n", "B.txt": b"caf\xe9\n"}), "B.txt", "UTF-8"),
        (lambda p: _folder_with(p, {"t.csv": b"words,label\na,b\n"}) / "t.csv", "t.csv", "'text'"),
        (lambda p: _folder_with(p, {"t.csv": b"text,label\na,\n"}) / "t.csv", "line 2", "empty"),
        (lambda p: _folder_with(p, {"t.json": b"{}"}) / "t.json", "t.json", ".csv/.tsv"),
    ],
)
def test_bad_data_is_a_one_line_error_naming_the_file(tmp_path, make, named, words):
    path = make(tmp_path)
    with pytest.raises(RnnprobeError) as excinfo:
        ClassifyTask.from_path(path)
    message = one_line(excinfo)
    assert named in message and words in message, message


def test_bad_data_through_the_cli_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(
        main, ["train", "--task", "classify", "--data", str(tmp_path / "nope"), "--steps", "1"]
    )
    assert result.exit_code == 2
    assert "classification data not found" in result.output
    result = CliRunner().invoke(main, ["train", "--task", "classify", "--steps", "1"])
    assert result.exit_code == 2 and "needs --data" in result.output


def test_train_help_lists_the_data_options():
    text = CliRunner().invoke(main, ["train", "--help"]).output
    for flag in ("--data", "--text-column", "--label-column", "--valid-fraction"):
        assert flag in text
    assert "--lowercase" in text and "letters-space" in text


def test_stratified_split_keeps_each_class_share_and_follows_the_seed():
    labels = [0] * 50 + [1] * 30 + [2] * 20 + [3] * 1
    train, valid = stratified_split(labels, 0.1, torch.Generator().manual_seed(0))
    y = torch.tensor(labels)
    assert torch.bincount(y[valid], minlength=4).tolist() == [5, 3, 2, 0]
    assert sorted(torch.cat([train, valid]).tolist()) == list(range(len(labels)))
    again = stratified_split(labels, 0.1, torch.Generator().manual_seed(0))
    other = stratified_split(labels, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(valid, again[1]) and not torch.equal(valid, other[1])


def test_examples_longer_than_seq_len_are_truncated_and_counted(tmp_path):
    folder = _folder_with(tmp_path, {"A.txt": b"abcdefgh\nab\nabc\n", "B.txt": b"xy\nxyzxyz\n"})
    task = ClassifyTask.from_path(folder, seq_len=4, valid_fraction=0.5)
    assert task.steps == 4 and task.data.truncated == (1, 1)
    rows = task.class_rows()
    assert rows["truncated"] == [1, 1] and rows["mean_length"] == pytest.approx([13 / 3, 4.0])
    batch = task.sample(6, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (6, 4) and batch.lengths.max() <= 4
    assert (batch.inputs[batch.mask.logical_not()] == 0).all()  # pad id 0 after the lengths


def test_letters_space_with_lowercase_keeps_27_symbols():
    text = "The Time-Machine, 1895!\nBy H. G. Wells — café"
    clean = preprocess_text(text, lowercase=True, charset="letters-space")
    assert clean == "the time machine by h g wells cafe"
    assert set(clean) <= set("abcdefghijklmnopqrstuvwxyz ")
    # accents folded; ø has no base letter and the dash is not ASCII: each becomes a space
    assert preprocess_text("Ünïcødé — ok\n", charset="ascii") == "Unic de   ok\n"
    corpus = corpus_from_text(clean * 20, valid_fraction=0.1)
    assert corpus.vocab_size <= 29  # <pad>, <unk>, space and a-z at most


def test_lm_config_applies_the_corpus_filters(tmp_path):
    (tmp_path / "t.txt").write_text("Hello, World! " * 200)
    settings = {"task.name": "lm", "task.corpus": str(tmp_path / "t.txt"), "task.seq_len": 8}
    plain = task_from_config(build_config(settings))
    filtered = task_from_config(
        build_config({**settings, "task.lowercase": True, "task.charset": "letters-space"})
    )
    assert set(filtered.corpus.vocab.tokens[2:]) == set("helowrd ")
    assert plain.corpus.vocab_size > filtered.corpus.vocab_size


def test_new_settings_at_their_default_leave_the_run_id_unchanged():
    import hashlib
    import json

    config = build_config({"task.seq_len": 7})
    old = {k: v for k, v in config.flat().items() if k != "device"}
    for key in config_module.LATER_KEYS:
        old.pop(key)
    expected = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:10]
    assert config.run_id() == expected
    lowercased = build_config({"task.name": "lm", "task.seq_len": 7, "task.lowercase": True})
    assert lowercased.run_id() != build_config({"task.name": "lm", "task.seq_len": 7}).run_id()


@dataclass(frozen=True)
class ParityTask(Task):
    """The docstring example of ``register_task``: is the number of ones odd?"""

    name: ClassVar[str] = "parity"
    kind: ClassVar[str] = "many_to_one_classification"
    metric: ClassVar[str] = "accuracy"
    seq_len: int = 10
    input_size = 3  # ids: 0 padding, 1 a zero, 2 a one
    output_size = 2
    baseline_loss = math.log(2)
    baseline_metric = 0.5
    baseline_description = "chance: ln 2 nats, accuracy 1/2"

    def sample(self, batch_size, generator):
        bits = torch.randint(0, 2, (batch_size, self.seq_len), generator=generator)
        return Batch(bits + 1, bits.sum(1) % 2)


@pytest.fixture
def registry(monkeypatch):
    """Register tasks for one test only."""
    monkeypatch.setattr(tasks, "_FACTORIES", dict(tasks._FACTORIES))
    monkeypatch.setattr(names, "_registered", list(names._registered))


def test_a_registered_task_trains_like_a_built_in_one(tmp_path, registry):
    with pytest.raises(RnnprobeError, match=r"task\.name must be one of"):
        build_config({"task.name": "parity"})
    register_task("parity", lambda config: ParityTask(seq_len=config.task.seq_len))
    assert "parity" in names.task_names()
    settings = {**FAST, "task.name": "parity", "task.seq_len": 3, "train.steps": 20}
    result = train_run(build_config(settings), tmp_path / "run", progress=False)
    assert result.status == "done"
    run = load_run(tmp_path / "run")
    assert run.table("task")["name"].iloc[0] == "parity"
    assert run.table("confusion")["count"].sum() > 0  # a many-to-one classifier's records
    assert (build_report(tmp_path / "run", tmp_path / "report") / "confusion.png").is_file()
    spec = spec_from_dict({"task": {"name": "parity", "seq_len": 3}, "sweep": {"seed": [0, 1]}})
    assert [point.config.task.name for point in expand(spec)] == ["parity", "parity"]


def test_registering_checks_the_name_the_factory_and_its_task(registry):
    with pytest.raises(RnnprobeError, match="built-in"):
        register_task("copy", lambda config: ParityTask())
    with pytest.raises(RnnprobeError, match="lowercase"):
        register_task("Parity Task", lambda config: ParityTask())
    with pytest.raises(RnnprobeError, match="not callable"):
        register_task("parity", ParityTask())
    register_task("parity", lambda config: ParityTask())
    with pytest.raises(RnnprobeError, match="already registered"):
        register_task("parity", lambda config: ParityTask())
    register_task("odd", lambda config: ParityTask())
    with pytest.raises(RnnprobeError, match="named 'parity'"):
        task_from_config(build_config({"task.name": "odd"}))
    register_task("odd", lambda config: "not a task", replace=True)
    with pytest.raises(RnnprobeError, match="not a rnnprobe Task"):
        task_from_config(build_config({"task.name": "odd"}))


def test_classify_batches_are_training_rows_and_eval_is_the_fixed_validation_split(tmp_path):
    task = ClassifyTask.from_path(write_names(tmp_path / "names"), seed=3)
    same = ClassifyTask.from_path(tmp_path / "names", seed=3)  # a resumed run rebuilds it
    assert torch.equal(task.data.train_ids, same.data.train_ids)
    assert task.data.vocab == same.data.vocab
    first = task.sample(16, torch.Generator().manual_seed(0))
    again = task.sample(16, torch.Generator().manual_seed(0))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    evals = task.eval_batches(10)
    assert [len(b.targets) for b in evals] == [10, 10, 10, 4]
    assert torch.equal(torch.cat([b.targets for b in evals]), task.data.valid_labels)
    assert task.eval_batches(10, num_batches=2)[1].inputs.shape[0] == 10
    assert isinstance(evals[0], Batch) and evals[0].lengths is not None


def test_confusion_plots_take_empty_frames_without_raising():
    import matplotlib.pyplot as plt

    from rnnprobe.report import plots_classes

    for draw in (plots_classes.plot_confusion, plots_classes.plot_class_accuracy):
        ax = draw(pd.DataFrame())
        assert "no data" in ax.texts[0].get_text()
        plt.close(ax.figure)


def test_class_files_with_an_upper_case_suffix_are_classes(tmp_path):
    folder = _folder_with(tmp_path, {"A.TXT": b"x\ny\n", "B.txt": b"z\nw\n", ".C.txt": b"v\n"})
    task = ClassifyTask.from_path(folder)  # HEAD: one class only (B)
    assert task.data.classes == ("A", "B")
