"""Bad input: every user mistake or damaged file gets one line on stderr and the right exit code.

The contract these cases check (for the CLI, run in-process with click's CliRunner):

- stderr holds exactly one non-empty line, starting with ``rnnprobe``, naming the problem; no
  ``Traceback`` and never ``internal error`` (the catch-all for unforeseen exceptions);
- exit 2 for usage errors (a bad option or value, a missing / unreadable / non-UTF-8 / empty
  input file, a bad study spec, an output directory that cannot be written or is in use, a
  configuration too large for memory), 1 for damaged records that cannot be recovered;
- damage that can be recovered from (a truncated ``status.json``, a truncated newest
  checkpoint beside a sound older one) is recovered from: exit 0, and the run finishes.

The library API raises ``rnnprobe.errors.RnnprobeError`` (naming the path), never a pyarrow,
json or torch error.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import traceback
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import rnnprobe.records.store
import rnnprobe.study.spec
import rnnprobe.training.config
import rnnprobe.training.loop
from rnnprobe.cli.main import main
from rnnprobe.errors import RnnprobeError

# -- helpers ------------------------------------------------------------------------------

UNWRITABLE = "/sys/rnnprobe-bad-input"  # EPERM even for root, unlike a chmod-ed directory
TWO_64 = str(2**64)

# Tiny, fast settings: a wrongly accepted case trains for a fraction of a second, not minutes.
QUIET_PROBES = [
    "--spectra", "never",
    "--lyapunov", "never",
    "--reach", "never",
    "--hidden", "never",
    "--weight-grads", "never",
]  # fmt: skip
TINY = [
    "--seq-len", "3",
    "--hidden-size", "4",
    "--embedding-dim", "4",
    "--steps", "6",
    "--batch-size", "2",
    "--eval-every", "3",
    "--eval-batches", "1",
    "--flush-every", "2",
    "--checkpoint-every", "2",
    *QUIET_PROBES,
    "--device", "cpu",
]  # fmt: skip

# A message carrying a memory estimate: a size with its unit ("needs 14.0 TiB").
MEMORY = re.compile(r"\d[\d.,]*\s*(?:[KMGTPE]i?B|bytes)\b", re.IGNORECASE)

CORPUS_TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of "
    "incredulity, it was the season of Light, it was the season of Darkness.\n"
) * 12


class Smuggled:
    """A custom class: a checkpoint holding one is refused by torch.load(weights_only=True)."""

    def __init__(self) -> None:
        self.payload = "not a tensor"


def invoke(args, env=None):
    """Run the CLI in-process; return click's result."""
    argv = [str(a) for a in args]
    return CliRunner().invoke(main, argv, env=env, catch_exceptions=True, prog_name="rnnprobe")


def no_escape(result) -> None:
    """Fail with the traceback if an exception escaped the CLI instead of a clean exit."""
    error = result.exception
    if error is not None and not isinstance(error, SystemExit):
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        pytest.fail(
            f"exception escaped the CLI: {type(error).__name__}: {error}\n{tb[-3000:]}\n"
            f"stderr: {result.stderr!r}"
        )


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def check_clean(result) -> None:
    """No escaped exception, no traceback, no internal error, at most one rnnprobe line."""
    no_escape(result)
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, f"hit the catch-all: {result.stderr!r}"
    lines = stderr_lines(result)
    assert len(lines) <= 1, f"{len(lines)} lines on stderr: {result.stderr!r}"
    if lines:
        assert lines[0].startswith("rnnprobe"), f"stderr line not from rnnprobe: {lines[0]!r}"


def one_error(result, code: int | tuple[int, ...], needle=None) -> str:
    """Assert one clean error line and exit ``code``; return the line.

    ``needle`` (the problem the line must name): a substring, a tuple of alternative
    substrings, or a compiled pattern; case-insensitive.
    """
    no_escape(result)
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, f"hit the catch-all: {result.stderr!r}"
    codes = code if isinstance(code, tuple) else (code,)
    assert result.exit_code in codes, (
        f"exit {result.exit_code}, not {code}; stderr: {result.stderr[-500:]!r}"
    )
    check_clean(result)
    lines = stderr_lines(result)
    assert len(lines) == 1, f"expected one line on stderr, got none; stdout: {result.stdout!r}"
    line = lines[0]
    if isinstance(needle, re.Pattern):
        assert needle.search(line), f"{needle.pattern!r} not in {line!r}"
    elif isinstance(needle, tuple):  # any of these spellings
        assert any(n.lower() in line.lower() for n in needle), f"none of {needle} in {line!r}"
    elif needle is not None:
        assert str(needle).lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def checkpoints(run_dir: Path) -> list[Path]:
    files = (run_dir / "checkpoints").glob("step-*.pt")
    return sorted(files, key=lambda p: int(p.stem.split("-")[1]))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def set_status(run_dir: Path, status: str, step: int) -> None:
    record = {"status": status, "step": step, "error": None, "updated": "2020-01-01T00:00:00"}
    (run_dir / "status.json").write_text(json.dumps(record))


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Never write into the repository; never turn errors into tracebacks on request."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNNPROBE_TRACEBACK", raising=False)


def _train_fixture(out: Path, *extra: str) -> Path:
    result = invoke(["train", *TINY, *extra, "--no-progress", "--out", out])
    no_escape(result)
    assert result.exit_code == 0, result.output
    assert status_of(out)["status"] == "done"
    assert len(checkpoints(out)) == 2, "fixtures need a newest and an older checkpoint"
    return out


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory) -> Path:
    """A finished 6-step copy run with checkpoints at steps 4 and 6."""
    return _train_fixture(tmp_path_factory.mktemp("fixture") / "copy")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A finished 6-step character language-model run on a small corpus."""
    root = tmp_path_factory.mktemp("fixture")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS_TEXT, encoding="utf-8")
    return _train_fixture(root / "lm", "--task", "lm", "--corpus", str(corpus))


@pytest.fixture
def files(tmp_path) -> Path:
    """Bad input files and directories under ``tmp_path``."""
    (tmp_path / "file.txt").write_text("a plain file, not a directory\n")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("café crème brûlée, ".encode("latin-1") * 50)
    (tmp_path / "binary.dat").write_bytes(b"\x7fELF\x00\x01\x02\x03" * 40)
    specs = {
        "notoml.toml": "this is = = not [toml\n",
        "unknown_key.toml": 'colour = "red"\n',
        "unknown_section.toml": "[optimiser]\nlr = 0.1\n",
        "unknown_model.toml": "[model]\nwibble = 3\n",
        "wrong_type.toml": '[train]\nsteps = "many"\n',
        "empty_sweep.toml": '[sweep]\n"task.seq_len" = []\n',
        "sweep_not_list.toml": '[sweep]\n"task.seq_len" = 5\n',
        "nan_lr.toml": "[train]\nlr = nan\n",
        "zero_seeds.toml": "seeds = 0\n",
        "empty.toml": "",
    }
    for name, text in specs.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.toml").write_bytes('name = "café"\n'.encode("latin-1"))
    return tmp_path


# -- the argument table -------------------------------------------------------------------
# {tmp}: the test's tmp_path with the `files` above; {copy} / {lm}: the module's runs.

T = ["train", *TINY, "--no-progress", "--out", "{tmp}/run"]
BIG = ["train", "--steps", "1", "--device", "cpu", "--no-progress", "--out", "{tmp}/run"]
S = [
    "study",
    "--out", "{tmp}/study",
    "--no-report",
    "--jobs", "1",
    "--device", "cpu",
    "--steps", "2",
    "--hidden-size", "4",
    "--embedding-dim", "4",
    "--batch-size", "2",
    "--seq-len", "3",
    "--eval-batches", "1",
    *QUIET_PROBES,
]  # fmt: skip
B = [
    "bench",
    "--device", "cpu",
    "--suite", "core",
    "--repeats", "1",
    "--seq-len", "2",
    "--hidden-size", "4",
    "--layers", "1",
    "--batch-size", "2",
    "--vocab-size", "8",
    "--embedding-dim", "4",
]  # fmt: skip
R = ["report", "-o", "{tmp}/rep"]
LM = ["train", *TINY, "--no-progress", "--out", "{tmp}/run", "--task", "lm"]


def case(id_: str, argv: list[str], code: int, needle):
    return pytest.param(argv, code, needle, id=id_)


CASES = [
    # train: sizes too large for memory, refused before allocating, with an estimate
    case("train-hidden-size-1e9", [*BIG, "--hidden-size", "1000000000"], 2, MEMORY),
    case("train-batch-size-1e9", [*BIG, "--batch-size", "1000000000"], 2, MEMORY),
    case("train-seq-len-1e9", [*BIG, "--seq-len", "1000000000"], 2, MEMORY),
    # train: seed range [0, 2^64)
    case("train-seed-2**64", [*T, "--seed", TWO_64], 2, "--seed"),
    case("train-seed-negative", [*T, "--seed", "-1"], 2, "--seed"),
    case("train-set-seed-2**64", [*T, "--set", f"seed={TWO_64}"], 2, "seed"),
    # train: probe schedules
    case("train-set-reach-every-inf", [*T, "--set", "probes.reach=every:inf"], 2, "every:inf"),
    case("train-set-reach-every-nan", [*T, "--set", "probes.reach=every:nan"], 2, "every:nan"),
    case("train-set-reach-log-inf", [*T, "--set", "probes.reach=log:inf"], 2, "log:inf"),
    case("train-set-spectra-log-nan", [*T, "--set", "probes.spectra=log:nan"], 2, "log:nan"),
    case("train-reach-every-inf", [*T, "--reach", "every:inf"], 2, "every:inf"),
    case("train-hidden-every-nan", [*T, "--hidden", "every:nan"], 2, "every:nan"),
    case("train-lyapunov-log-inf", [*T, "--lyapunov", "log:inf"], 2, "log:inf"),
    case("train-reach-every-0", [*T, "--reach", "every:0"], 2, "every:0"),
    case("train-hidden-log-1", [*T, "--hidden", "log:1"], 2, "log:1"),
    case("train-spectra-bogus", [*T, "--spectra", "bogus"], 2, "bogus"),
    case("train-weight-grads-every-neg", [*T, "--weight-grads", "every:-3"], 2, "every:-3"),
    case("train-adjoints-every-1.5", [*T, "--adjoints", "every:1.5"], 2, "every:1.5"),
    case("train-products-every-empty", [*T, "--products", "every:"], 2, "every:"),
    # train: learning rate and other floats
    case("train-lr-inf", [*T, "--lr", "inf"], 2, "lr"),
    case("train-lr-nan", [*T, "--lr", "nan"], 2, "lr"),
    case("train-lr-0", [*T, "--lr", "0"], 2, "lr"),
    case("train-lr-negative", [*T, "--lr", "-1"], 2, "lr"),
    case("train-set-lr-1e999", [*T, "--set", "train.lr=1e999"], 2, "lr"),
    case("train-momentum-1.5", [*T, "--momentum", "1.5"], 2, "momentum"),
    case("train-init-gain-nan", [*T, "--init-gain", "nan"], 2, "gain"),
    case("train-clip-value-negative", [*T, "--clip", "norm", "--clip-value", "-1"], 2, "clip"),
    # train: counts that must be at least 1
    case("train-seq-len-0", [*T, "--seq-len", "0"], 2, "--seq-len"),
    case("train-steps-0", [*T, "--steps", "0"], 2, "--steps"),
    case("train-batch-size-0", [*T, "--batch-size", "0"], 2, "--batch-size"),
    case("train-hidden-size-negative", [*T, "--hidden-size", "-5"], 2, "--hidden-size"),
    case("train-layers-0", [*T, "--layers", "0"], 2, "--layers"),
    case("train-eval-every-0", [*T, "--eval-every", "0"], 2, "--eval-every"),
    case("train-flush-every-0", [*T, "--flush-every", "0"], 2, "--flush-every"),
    case("train-checkpoint-every-0", [*T, "--checkpoint-every", "0"], 2, "--checkpoint-every"),
    case("train-max-chars-0", [*LM, "--max-chars", "0"], 2, "--max-chars"),
    case("train-num-classes-0", [*T, "--task", "recall", "--num-classes", "0"], 2, "classes"),
    case("train-lyapunov-warmup-neg", [*T, "--lyapunov-warmup", "-1"], 2, "warmup"),
    case("train-bptt-random-x", [*T, "--bptt", "random:x"], 2, "random:x"),
    case("train-bptt-0", [*T, "--bptt", "0"], 2, "bptt"),
    # train: click usage errors
    case("train-nonlinearity-sigmoid", [*T, "--nonlinearity", "sigmoid"], 2, "sigmoid"),
    case("train-task-nope", [*T, "--task", "nope"], 2, "nope"),
    case("train-dtype-float16", [*T, "--dtype", "float16"], 2, "float16"),
    case("train-unknown-option", [*T, "--bogus-option", "1"], 2, "--bogus-option"),
    case("train-steps-not-int", [*T, "--steps", "abc"], 2, "abc"),
    case("train-variable-length-maybe", [*T, "--variable-length", "maybe"], 2, "maybe"),
    case("train-device-quantum", [*T, "--device", "quantum"], 2, "quantum"),
    # train: --set
    case("train-set-without-equals", [*T, "--set", "train.lr"], 2, "train.lr"),
    case("train-set-unknown-key", [*T, "--set", "train.nosuch=1"], 2, "train.nosuch"),
    case("train-set-not-literal", [*T, "--set", "train.lr=__import__('os')"], 2, "literal"),
    case(
        "train-set-exit-not-evaluated",
        [*T, "--set", "train.steps=__import__('sys').exit(0)"],
        2,
        "literal",
    ),
    case("train-set-wrong-type", [*T, "--set", "train.steps=2.5"], 2, "train.steps"),
    case("train-set-seed-negative", [*T, "--set", "seed=-1"], 2, "seed"),
    # train: paths
    case("train-out-unwritable", [*T, "--out", f"{UNWRITABLE}/x"], 2, UNWRITABLE),
    case("train-out-is-a-file", [*T, "--out", "{tmp}/file.txt"], 2, "file.txt"),
    case("train-corpus-missing", [*LM, "--corpus", "{tmp}/missing.txt"], 2, "missing.txt"),
    case("train-corpus-empty", [*LM, "--corpus", "{tmp}/empty.txt"], 2, "empty"),
    case("train-corpus-not-utf8", [*LM, "--corpus", "{tmp}/latin1.txt"], 2, "UTF-8"),
    case("train-corpus-binary", [*LM, "--corpus", "{tmp}/binary.dat"], 2, "binary"),
    case("train-corpus-directory", [*LM, "--corpus", "{tmp}/emptydir"], 2, "directory"),
    case("train-resume-not-a-run", ["train", "--resume", "{tmp}/emptydir"], 2, "emptydir"),
    case("train-resume-missing", ["train", "--resume", "{tmp}/nothere"], 2, "nothere"),
    case("train-resume-a-file", ["train", "--resume", "{tmp}/file.txt"], 2, "file.txt"),
    case(
        "train-resume-with-options", ["train", "--resume", "{clone}", "--steps", "9"], 2, "resume"
    ),
    # study: spec files
    case("study-spec-missing", [*S, "{tmp}/missing.toml"], 2, "missing.toml"),
    case("study-spec-directory", [*S, "{tmp}/emptydir"], 2, "emptydir"),
    case("study-spec-not-toml", [*S, "{tmp}/notoml.toml"], 2, "TOML"),
    case("study-spec-not-utf8", [*S, "{tmp}/latin1.toml"], 2, "latin1.toml"),
    case("study-spec-empty", [*S, "{tmp}/empty.toml"], 2, "empty.toml"),
    case("study-spec-unknown-key", [*S, "{tmp}/unknown_key.toml"], 2, "colour"),
    case("study-spec-unknown-section", [*S, "{tmp}/unknown_section.toml"], 2, "optimiser"),
    case("study-spec-unknown-model-setting", [*S, "{tmp}/unknown_model.toml"], 2, "wibble"),
    case("study-spec-wrong-type", [*S, "{tmp}/wrong_type.toml"], 2, "train.steps"),
    case("study-spec-empty-sweep", [*S, "{tmp}/empty_sweep.toml"], 2, "task.seq_len"),
    case("study-spec-sweep-not-list", [*S, "{tmp}/sweep_not_list.toml"], 2, "task.seq_len"),
    case("study-spec-nan-lr", [*S, "{tmp}/nan_lr.toml"], 2, "lr"),
    case("study-spec-zero-seeds", [*S, "{tmp}/zero_seeds.toml"], 2, "seeds"),
    # study: options
    case("study-set-without-equals", [*S, "--set", "train.lr"], 2, "train.lr"),
    case("study-set-unknown-key", [*S, "--set", "train.nosuch=1"], 2, "train.nosuch"),
    case("study-set-not-literal", [*S, "--set", "train.lr=__import__('os')"], 2, "literal"),
    case("study-set-and-flag", [*S, "--set", "train.steps=5"], 2, "train.steps"),
    case("study-jobs-0", [*S, "--jobs", "0"], 2, "--jobs"),
    case("study-jobs-negative", [*S, "--jobs", "-2"], 2, "--jobs"),
    case("study-seeds-0", [*S, "--seeds", "0"], 2, "seeds"),
    case("study-seed-and-seeds", [*S, "--seed", "1", "--seeds", "2"], 2, "--seeds"),
    case("study-seed-2**64", [*S, "--seed", TWO_64], 2, "--seed"),
    case("study-seq-len-0", [*S, "--seq-len", "0"], 2, "--seq-len"),
    case("study-repeated-axis", [*S, "--seq-len", "4", "--seq-len", "4"], 2, "repeat"),
    case("study-lr-nan", [*S, "--lr", "nan"], 2, "lr"),
    case("study-reach-every-inf", [*S, "--reach", "every:inf"], 2, "every:inf"),
    case("study-hidden-size-1e9", [*S, "--hidden-size", "1000000000"], 2, MEMORY),
    case(
        "study-executor-ray-bad-address",
        [*S, "--executor", "ray", "--address", "nothere"],
        2,
        "nothere",
    ),
    case("study-executor-unknown", [*S, "--executor", "slurm"], 2, "slurm"),
    case("study-out-unwritable", [*S, "--out", f"{UNWRITABLE}/st"], 2, UNWRITABLE),
    case("study-out-is-a-file", [*S, "--out", "{tmp}/file.txt"], 2, "file.txt"),
    case("study-unknown-option", [*S, "--frobnicate"], 2, "--frobnicate"),
    # report
    case("report-missing-path", [*R, "{tmp}/nothere"], 2, "nothere"),
    case("report-empty-directory", [*R, "{tmp}/emptydir"], 2, "emptydir"),
    case("report-path-is-a-file", [*R, "{tmp}/file.txt"], 2, "file.txt"),
    case("report-no-path", ["report"], 2, "PATH"),
    case(
        "report-output-unwritable", ["report", "{copy}", "-o", f"{UNWRITABLE}/rep"], 2, UNWRITABLE
    ),
    case("report-output-is-a-file", ["report", "{copy}", "-o", "{tmp}/file.txt"], 2, "file.txt"),
    # sample
    case("sample-non-lm-run", ["sample", "{copy}"], 2, "lm"),
    case("sample-missing-run", ["sample", "{tmp}/nothere"], 2, "nothere"),
    case("sample-not-a-run", ["sample", "{tmp}/emptydir"], 2, "emptydir"),
    case("sample-length-0", ["sample", "{lm}", "--length", "0"], 2, "--length"),
    case("sample-length-negative", ["sample", "{lm}", "--length", "-3"], 2, "--length"),
    case("sample-temperature-0", ["sample", "{lm}", "--temperature", "0"], 2, "--temperature"),
    case("sample-temperature-nan", ["sample", "{lm}", "--temperature", "nan"], 2, "--temperature"),
    case("sample-temperature-inf", ["sample", "{lm}", "--temperature", "inf"], 2, "--temperature"),
    case(
        "sample-temperature-negative", ["sample", "{lm}", "--temperature", "-1"], 2, "--temperature"
    ),
    case("sample-seed-2**64", ["sample", "{lm}", "--seed", TWO_64], 2, "--seed"),
    case("sample-seed-negative", ["sample", "{lm}", "--seed", "-1"], 2, "--seed"),
    # bench
    case("bench-seq-len-0", [*B, "--seq-len", "0"], 2, "--seq-len"),
    case("bench-repeats-0", [*B, "--repeats", "0"], 2, "--repeats"),
    case("bench-threads-0", [*B, "--threads", "0"], 2, "--threads"),
    case("bench-hidden-size-0", [*B, "--hidden-size", "0"], 2, ("--hidden-size", "hidden_size")),
    case("bench-layers-0", [*B, "--layers", "0"], 2, ("--layers", "num_layers")),
    case("bench-batch-size-0", [*B, "--batch-size", "0"], 2, ("--batch-size", "batch_size")),
    case("bench-vocab-size-0", [*B, "--vocab-size", "0"], 2, ("--vocab-size", "vocab_size")),
    case(
        "bench-embedding-dim-0",
        [*B, "--embedding-dim", "0"],
        2,
        ("--embedding-dim", "embedding_dim"),
    ),
    case("bench-hidden-size-1e9", [*B, "--hidden-size", "1000000000"], 2, MEMORY),
    case("bench-suite-nope", [*B, "--suite", "nope"], 2, "nope"),
    case("bench-device-quantum", [*B, "--device", "quantum"], 2, "quantum"),
    case("bench-nonlinearity-sigmoid", [*B, "--nonlinearity", "sigmoid"], 2, "sigmoid"),
    # the group
    case("unknown-command", ["frobnicate"], 2, "frobnicate"),
]


@pytest.mark.parametrize(("argv", "code", "needle"), CASES)
def test_bad_arguments_get_one_line_and_exit_code(request, files, argv, code, needle):
    joined = " ".join(argv)
    places = {"{tmp}": str(files)}
    for name in ("copy", "lm"):
        if "{" + name + "}" in joined:
            places["{" + name + "}"] = str(request.getfixturevalue(f"{name}_run"))
    if "{clone}" in joined:  # a copy of the copy run, for a case that might write into it
        places["{clone}"] = str(shutil.copytree(request.getfixturevalue("copy_run"), files / "c"))
    args = []
    for arg in argv:
        for key, value in places.items():
            arg = arg.replace(key, value)
        args.append(arg)
    # A memory case refused only after trying to allocate would fail here with an
    # allocator error (or an internal error), not with the estimate.
    one_error(invoke(args), code, needle)


# -- corpora ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["aaaa", "a" * 400], ids=["aaaa", "a*400"])
def test_one_character_corpus_is_an_error_or_a_finite_baseline(tmp_path, text):
    corpus = tmp_path / "one.txt"
    corpus.write_text(text)
    run = tmp_path / "run"
    argv = ["train", *TINY, "--no-progress", "--task", "lm", "--corpus", corpus]
    result = invoke([*argv, "--seq-len", "2", "--out", run])
    check_clean(result)
    assert not re.search(r"\bnan\b", result.output, re.IGNORECASE), result.output
    if result.exit_code != 0:
        one_error(result, 2, "one.txt")
        return
    baseline = rnnprobe.records.store.load_run(run).table("task")["baseline_loss"]
    assert len(baseline) == 1 and math.isfinite(baseline.iloc[0]), baseline


def test_seed_just_below_2_64_is_accepted(tmp_path):
    result = invoke([*T[:-1], tmp_path / "run", "--steps", "1", "--seed", str(2**64 - 1)])
    check_clean(result)
    assert result.exit_code == 0, result.stderr


# -- output directories in use ------------------------------------------------------------


def test_train_out_holding_another_run_is_refused(copy_run, tmp_path):
    run = tmp_path / "taken"
    shutil.copytree(copy_run, run)
    before = (run / "config.json").read_bytes()
    result = invoke([*T[:-1], run, "--seed", "7"])
    one_error(result, 2, str(run))
    assert (run / "config.json").read_bytes() == before, "the other run was overwritten"


# -- damaged run records ------------------------------------------------------------------


def test_resuming_a_finished_run_says_there_is_nothing_to_train(copy_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(copy_run, run)
    before = (run / "status.json").read_bytes()
    result = invoke(["train", "--resume", run, "--no-progress"])
    assert result.exit_code == 0, result.stderr
    # HEAD printed the closing lines alone, as if it had trained
    assert result.stderr == f"rnnprobe: {run} had already finished: nothing to train\n"
    assert result.stdout.startswith(f"run done after 6 steps: {run}")
    assert (run / "status.json").read_bytes() == before


def test_truncated_status_json_resumes_as_interrupted(copy_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(copy_run, run)
    checkpoints(run)[-1].unlink()  # resume from step 4, so steps 5-6 are trained again
    (run / "status.json").write_text('{"status": "ru')
    result = invoke(["train", "--resume", run, "--no-progress"])
    check_clean(result)
    assert result.exit_code == 0, result.stderr
    assert status_of(run)["status"] == "done"
    steps = rnnprobe.records.store.load_run(run).table("steps")["step"].tolist()
    assert steps == [1, 2, 3, 4, 5, 6], steps


def test_truncated_newest_checkpoint_resumes_from_the_older(copy_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(copy_run, run)
    truncate(checkpoints(run)[-1])
    set_status(run, "interrupted", 6)
    result = invoke(["train", "--resume", run, "--no-progress"])
    check_clean(result)
    assert result.exit_code == 0, result.stderr
    status = status_of(run)
    assert (status["status"], status["step"]) == ("done", 6), status
    steps = rnnprobe.records.store.load_run(run).table("steps")["step"].tolist()
    assert steps == [1, 2, 3, 4, 5, 6], steps


def test_truncated_newest_checkpoint_still_samples(lm_run, tmp_path):
    run = tmp_path / "lm"
    shutil.copytree(lm_run, run)
    truncate(checkpoints(run)[-1])
    result = invoke(["sample", run, "--length", "5", "--prime", "it "])
    check_clean(result)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("it ")


def _smuggle(path: Path) -> None:
    torch.save({"step": 6, "state": {"model": Smuggled()}, "table_parts": {}}, path)


def _wrong_structure(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


CHECKPOINT_DAMAGE = {
    "unsafe-pickle": _smuggle,
    "wrong-structure": _wrong_structure,
    "garbage-bytes": lambda p: p.write_bytes(b"this is not a torch checkpoint" * 10),
    "empty-file": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE), ids=str)
def test_sample_with_every_checkpoint_damaged(lm_run, tmp_path, damage):
    run = tmp_path / "lm"
    shutil.copytree(lm_run, run)
    for path in checkpoints(run):
        CHECKPOINT_DAMAGE[damage](path)
    result = invoke(["sample", run, "--length", "5"])
    line = one_error(result, 1, "checkpoint")
    assert "weights_only" not in line, f"torch's advice leaked: {line!r}"


def test_resume_with_only_unsafe_checkpoints(copy_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(copy_run, run)
    for path in checkpoints(run):
        _smuggle(path)
    set_status(run, "interrupted", 6)
    result = invoke(["train", "--resume", run, "--no-progress"])
    check_clean(result)
    assert "weights_only" not in result.stderr, result.stderr
    assert result.exit_code in (0, 1), result.stderr
    if result.exit_code == 0:  # started over from step 0 (the tables are sound)
        assert status_of(run)["status"] == "done"
    else:
        one_error(result, 1, "checkpoint")


CONFIG_DAMAGE = {
    "truncated": lambda p: truncate(p),
    "json-list": lambda p: p.write_text("[1, 2, 3]"),
    "binary": lambda p: p.write_bytes(b"\xff\xfe\x00garbage\x80"),
}


@pytest.mark.parametrize("command", ["report", "resume", "sample"])
@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE), ids=str)
def test_damaged_config_json(lm_run, tmp_path, damage, command):
    run = tmp_path / "run"
    shutil.copytree(lm_run, run)
    set_status(run, "interrupted", 6)
    CONFIG_DAMAGE[damage](run / "config.json")
    argv = {
        "report": ["report", run, "-o", tmp_path / "rep"],
        "resume": ["train", "--resume", run, "--no-progress"],
        "sample": ["sample", run, "--length", "5"],
    }[command]
    result = invoke(argv)
    one_error(result, 1, "config.json")


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE), ids=str)
def test_load_run_with_damaged_config_raises_rnnprobe_error(copy_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(copy_run, run)
    CONFIG_DAMAGE[damage](run / "config.json")
    with pytest.raises(RnnprobeError, match=r"config\.json"):
        rnnprobe.records.store.load_run(run)


def _corrupt_part(copy_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(copy_run, run)
    part = sorted((run / "tables" / "steps").glob("part-*.parquet"))[0]
    part.write_bytes(b"PAR1 this is not a parquet file at all " * 8)
    return run, part


def test_report_on_a_corrupt_parquet_part(copy_run, tmp_path):
    run, part = _corrupt_part(copy_run, tmp_path)
    result = invoke(["report", run, "-o", tmp_path / "rep"])
    one_error(result, 1, str(part))


def test_load_run_on_a_corrupt_parquet_part_names_the_path(copy_run, tmp_path):
    run, part = _corrupt_part(copy_run, tmp_path)
    with pytest.raises(RnnprobeError) as raised:
        rnnprobe.records.store.load_run(run)
    assert str(part) in str(raised.value)


def test_read_table_on_a_corrupt_parquet_part_names_the_path(copy_run, tmp_path):
    run, part = _corrupt_part(copy_run, tmp_path)
    with pytest.raises(RnnprobeError) as raised:
        rnnprobe.records.store.read_table(run, "steps")
    assert str(part) in str(raised.value)


def test_resume_over_a_corrupt_newest_parquet_part(copy_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(copy_run, run)
    newest = sorted((run / "tables" / "steps").glob("part-*.parquet"))[-1]
    newest.write_bytes(b"garbage")
    set_status(run, "interrupted", 6)
    result = invoke(["train", "--resume", run, "--no-progress"])
    check_clean(result)
    assert result.exit_code in (0, 1), result.stderr
    if result.exit_code == 0:  # recovered: the records read back whole
        assert status_of(run)["status"] == "done"
        assert rnnprobe.records.store.load_run(run).table("steps")["step"].tolist() == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]
    else:
        one_error(result, 1, "part-")


# -- damaged study index ------------------------------------------------------------------


def _corrupt_study(tmp_path: Path) -> Path:
    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)
    (out / "study.json").write_text('{"name": "study", "runs": [{"id": "ab')
    return out


def test_report_on_a_corrupt_study_json(tmp_path):
    out = _corrupt_study(tmp_path)
    result = invoke(["report", out, "-o", tmp_path / "rep"])
    one_error(result, 1, "study.json")


def test_study_on_a_corrupt_study_json(tmp_path):
    out = _corrupt_study(tmp_path)
    result = invoke([*S[:2], out, *S[3:]])
    line = one_error(result, (0, 1), "study.json")
    if result.exit_code == 0:  # rebuilt: the index must be sound again
        assert isinstance(json.loads((out / "study.json").read_text()), dict), line


# -- the library API ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        pytest.param({"seed": 2**64}, "seed", id="seed-2**64"),
        pytest.param({"seed": -1}, "seed", id="seed-negative"),
        pytest.param({"probes.reach": "every:inf"}, "every:inf", id="reach-every-inf"),
        pytest.param({"probes.hidden": "log:nan"}, "log:nan", id="hidden-log-nan"),
        pytest.param({"train.lr": float("nan")}, "lr", id="lr-nan"),
        pytest.param({"train.nosuch": 1}, "train.nosuch", id="unknown-key"),
        pytest.param({"train.steps": "5"}, "train.steps", id="steps-a-string"),
        pytest.param({"train.steps": True}, "train.steps", id="steps-a-bool"),
        pytest.param({"task.seq_len": 0}, "seq", id="seq-len-0"),
    ],
)
def test_build_config_refuses(settings, needle):
    with pytest.raises(RnnprobeError) as raised:
        rnnprobe.training.config.build_config(settings)
    assert needle.lower() in str(raised.value).lower()
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        pytest.param("missing.toml", "missing.toml", id="missing"),
        pytest.param("emptydir", "emptydir", id="directory"),
        pytest.param("notoml.toml", "notoml.toml", id="not-toml"),
        pytest.param("latin1.toml", "latin1.toml", id="not-utf8"),
        pytest.param("unknown_key.toml", "colour", id="unknown-key"),
        pytest.param("unknown_model.toml", "wibble", id="unknown-model-setting"),
        pytest.param("wrong_type.toml", "train.steps", id="wrong-type"),
        pytest.param("empty_sweep.toml", "task.seq_len", id="empty-sweep"),
    ],
)
def test_load_spec_refuses(files, name, needle):
    with pytest.raises(RnnprobeError) as raised:
        rnnprobe.study.spec.load_spec(files / name)
    assert needle in str(raised.value)


def test_set_value_is_never_evaluated(monkeypatch):
    monkeypatch.delenv("RNNPROBE_EVALUATED", raising=False)
    text = "train.lr=__import__('os').environ.__setitem__('RNNPROBE_EVALUATED', '1')"
    with pytest.raises(RnnprobeError, match="literal"):
        rnnprobe.training.config.parse_assignment(text)
    assert "RNNPROBE_EVALUATED" not in os.environ


def test_train_run_refuses_a_huge_model_before_allocating(tmp_path):
    with pytest.raises(RnnprobeError) as raised:
        config = rnnprobe.training.config.build_config(
            {"model.hidden_size": 10**9, "device": "cpu"}
        )
        rnnprobe.training.loop.train_run(config, tmp_path / "run", progress=False)
    assert MEMORY.search(str(raised.value)), str(raised.value)


def test_train_run_resume_of_a_non_run_raises_rnnprobe_error(tmp_path):
    config = rnnprobe.training.config.build_config({"train.steps": 1, "device": "cpu"})
    (tmp_path / "notarun").mkdir()
    with pytest.raises(RnnprobeError, match="notarun"):
        rnnprobe.training.loop.train_run(config, tmp_path / "notarun", resume=True, progress=False)


def test_load_run_of_a_missing_path_raises_rnnprobe_error(tmp_path):
    with pytest.raises(RnnprobeError, match="nothere"):
        rnnprobe.records.store.load_run(tmp_path / "nothere")


def test_read_table_refuses_a_path_like_table_name(copy_run):
    with pytest.raises(RnnprobeError):
        rnnprobe.records.store.read_table(copy_run, "../config")


# -- directories in use by another process, and interrupts ---------------------------------


@pytest.fixture
def hold_lock():
    """Return a function holding ``directory``'s writer lock from another process."""
    import subprocess
    import sys

    from rnnprobe.records.lock import LOCK_NAME

    holders = []

    def hold(directory: Path) -> None:
        code = (
            "import fcntl, os, sys; "
            f"fd = os.open({str(directory / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT, 0o644); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        holders.append(proc)
        assert proc.stdout.readline().strip() == "held"

    yield hold
    for proc in holders:
        proc.stdin.close()  # the holder reads EOF and exits, dropping the lock
        proc.wait(timeout=10)
        proc.stdout.close()


def test_resume_of_a_run_in_use_is_refused(copy_run, tmp_path, hold_lock):
    run = tmp_path / "run"
    shutil.copytree(copy_run, run)
    set_status(run, "interrupted", 6)
    hold_lock(run)
    result = invoke(["train", "--resume", run, "--no-progress"])
    one_error(result, 2, "in use")
    assert status_of(run)["status"] == "interrupted", "the run was written while in use"


def test_study_out_in_use_is_refused(tmp_path, hold_lock):
    out = tmp_path / "busy"
    out.mkdir()
    hold_lock(out)
    result = invoke([*S[:2], out, *S[3:]])
    one_error(result, 2, "in use")
    assert not (out / "runs").exists()


def test_interrupt_exits_130(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rnnprobe.training.loop, "train_run", interrupted)
    result = invoke([*T[:-1], tmp_path / "run"])
    one_error(result, 130, "interrupt")
