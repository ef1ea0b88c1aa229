"""The command line: bad input gets one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from rnnprobe.analysis.runs import summarise_run
from rnnprobe.cli.main import main
from rnnprobe.records.store import load_run


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "binary.dat").write_bytes(b"\x7fELF\x00\x01\x02")
    (tmp_path / "short.txt").write_text("hello world")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--task", "lm", "--corpus", "{tmp}/missing.txt"], "not found"),
        (["--task", "lm", "--corpus", "{tmp}/empty.txt"], "empty"),
        (["--task", "lm", "--corpus", "{tmp}/latin1.txt"], "not UTF-8"),
        (["--task", "lm", "--corpus", "{tmp}/binary.dat"], "binary"),
        (["--task", "lm", "--corpus", "{tmp}"], "directory"),
        (["--seq-len", "0"], "--seq-len must be at least 1"),
        (["--task", "lm", "--corpus", "{tmp}/short.txt", "--seq-len", "50"], "too long"),
        (["--task", "sorting"], "'sorting' is not one of"),
        (["--bogus", "1"], "No such option"),
        (["--set", "train.bogus=1"], "unknown setting 'train.bogus'; valid:"),
        (["--set", "train.lr=__import__('os')"], "not a literal of type float"),
        (["--bptt", "random:x"], "invalid bptt"),
        (["--lr", "inf"], "train.lr must be a finite number"),
        (["--init-gain", "nan"], "model.init_gain must be a finite number"),
        (["--lr", "1e300"], "train.lr must be a finite number below 1e30"),
        (["--momentum", "1.5"], "train.momentum must lie in [0, 1)"),
        (["--probes-typo", "x"], "No such option"),
        (["--resume", "{tmp}"], "not an rnnprobe run directory"),
    ],
)
def test_train_bad_input_gets_one_line_and_nonzero_exit(bad_files, tmp_path, args, needle):
    args = [a.replace("{tmp}", str(bad_files)) for a in args]
    out = [] if "--resume" in args else ["--out", str(tmp_path / "run"), "--steps", "1"]
    line = one_error_line(invoke(["train", *args, *out, "--no-progress"]))
    assert needle in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    line = one_error_line(invoke(["train", "--device", "cuda", "--out", str(tmp_path / "r")]))
    assert "CUDA is not available" in line


def test_unknown_command_and_bare_call():
    assert "No such command" in one_error_line(invoke(["frobnicate"]))
    assert invoke([]).exit_code == 0


def test_train_then_sample_from_the_language_model(tmp_path):
    run = tmp_path / "lm"
    args = [
        "train",
        "--task",
        "lm",
        "--max-chars",
        "20000",
        "--steps",
        "3",
        "--hidden-size",
        "16",
        "--seq-len",
        "16",
        "--device",
        "cpu",
        "--out",
        str(run),
        "--no-progress",
    ]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert str(run) in result.output and "baseline" in result.output
    summary = summarise_run(load_run(run))  # the closing line shows the analysis' numbers
    bits = re.search(r"Metric: bits per character ([\d.]+) \(baseline ([\d.]+)\)", result.output)
    assert bits is not None, result.output
    assert float(bits[1]) == pytest.approx(summary.final_metric, rel=1e-3)
    assert float(bits[2]) == pytest.approx(summary.baseline_metric, rel=1e-3)
    report = invoke(["report", str(run), "-o", str(tmp_path / "report")])  # the same line there
    assert report.exit_code == 0, report.output
    assert f"- {bits[0]}." in (tmp_path / "report" / "README.md").read_text()  # HEAD: absent
    sampled = invoke(["sample", str(run), "--prime", "def ", "--length", "20"])
    assert sampled.exit_code == 0 and sampled.output.startswith("def ")
    assert "<unk>" not in sampled.output
    line = one_error_line(invoke(["sample", str(tmp_path)]))
    assert "not an rnnprobe run directory" in line


def test_sampling_a_non_language_model_run_is_refused(tmp_path):
    run = tmp_path / "copy"
    assert (
        invoke(
            [
                "train",
                "--steps",
                "2",
                "--hidden-size",
                "8",
                "--device",
                "cpu",
                "--out",
                str(run),
                "--no-progress",
            ]
        ).exit_code
        == 0
    )
    assert "needs lm" in one_error_line(invoke(["sample", str(run)]))


def test_train_refuses_a_directory_holding_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    line = one_error_line(invoke(["train", "--out", str(tmp_path), "--steps", "1"]))
    assert str(tmp_path) in line


def test_console_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rnnprobe", "train", "--seq-len", "0"],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_readme_documents_every_record_column():
    from pathlib import Path

    from rnnprobe.records.schema import STANDARD_TABLES

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for table, columns in STANDARD_TABLES.items():
        assert f"**{table}**" in readme
        for column, meaning in columns.items():
            assert f"| `{column}` | {meaning} |" in readme, (table, column)


STARTUP_PROBE = """
import sys
from rnnprobe.cli.main import main

codes = []
for args in sys.argv[1:]:
    try:
        main(args.split())
    except SystemExit as done:
        codes.append(done.code)
heavy = sorted(m for m in ("torch", "pandas", "pyarrow", "matplotlib") if m in sys.modules)
print(codes, heavy, file=sys.stderr)
"""


def test_help_version_and_usage_errors_start_without_torch_or_pandas():
    """``rnnprobe --help``/``--version`` and refused options never load the heavy libraries."""
    calls = [
        "--help",
        "--version",
        "train --help",
        "study --help",
        "report --help",
        "sample --help",
        "bench --help",
        "export --help",
        "watch --help",
        "fixed-points --help",
        "replay --help",
        "train --bogus",
        "train --seq-len 0",
        "train --seed 18446744073709551616",
        "train --adjoints every:inf",
        "study --steps 0 --steps 2",
        "study --nonlinearity sigmoid",
        "sample some/run --length 0",
        "bench --hidden-size 0",
    ]
    done = subprocess.run(
        [sys.executable, "-c", STARTUP_PROBE, *calls], capture_output=True, text=True, check=True
    )
    codes, heavy = done.stderr.splitlines()[-1].rsplit("] ", 1)
    assert codes == "[" + ", ".join(["0"] * 11 + ["2"] * 8), done.stderr
    assert heavy == "[]", done.stderr


def test_bench_prints_each_step_time_and_its_ratios_with_the_gemm_floor():
    tiny = "--seq-len 6 --hidden-size 16 --layers 2 --batch-size 3 --vocab-size 12"
    result = invoke(f"bench {tiny} --embedding-dim 4 --repeats 3 --threads 1".split())
    assert result.exit_code == 0, result.output
    header, line = result.output.strip().splitlines()
    assert header.endswith("recording adjoints; eager scans")
    pattern = (
        r"T=6 +step: rnnprobe +([\d.]+) ms +nn\.RNN +([\d.]+) ms +GEMM floor +([\d.]+) ms +"
        r"ratio to nn\.RNN: rnnprobe ([\d.]+), floor ([\d.]+) +peak memory: rnnprobe +([\d.]+) MB"
        r" +nn\.RNN +([\d.]+) MB +ratio ([\d.]+)"
    )
    match = re.fullmatch(pattern, line)
    assert match, line
    elman, reference, floor, ratio, floor_ratio = map(float, match.groups()[:5])
    assert min(elman, reference, floor) > 0 and ratio > 0 and floor_ratio > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--steps", "2", "--set", "train.steps=3"],
         "train.steps is given twice: --steps 2 and --set train.steps=3"),
    ],
)  # fmt: skip
def test_train_refuses_a_nonsense_thread_count_and_a_setting_given_twice(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", "-o", str(tmp_path / "r"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--corpus", "missing.txt"], "--corpus applies to --task lm only, not copy"),
        (["--task", "lm", "--num-classes", "5"], "--num-classes applies to --task recall only"),
        (
            ["--task", "adding", "--lowercase", "true"],
            "--lowercase applies to --task lm or classify",
        ),
    ],
)
def test_an_option_of_another_task_is_refused_not_ignored(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", "-o", str(tmp_path / "r"), "--steps", "2", *args])
    assert result.exit_code == 2 and message in result.output


def test_messages_name_the_flag_the_file_and_the_missing_path(tmp_path):
    from rnnprobe.errors import shorten

    negative = CliRunner().invoke(main, ["train", "--lr", "-1", "-o", str(tmp_path / "r")])
    assert negative.exit_code == 2 and "--lr must be positive, got -1.0" in negative.output
    resumed = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "gone")])
    assert resumed.exit_code == 2 and "gone: no such file or directory" in resumed.output
    spec = tmp_path / "seq0.toml"
    spec.write_text('name = "s0"\n[task]\nseq_len = 0\n')
    study = CliRunner().invoke(main, ["study", str(spec), "--out", str(tmp_path / "s")])
    assert study.exit_code == 2 and f"{spec}: --seq-len must be at least 1" in study.output
    cut = shorten("failed finding central directory. miniz error. If you are using a custom " * 3)
    assert len(cut) <= 120 and cut.endswith("…") and not cut.endswith(" …")
    assert cut[:-1].split()[-1] in "failed finding central directory. miniz error. If you are using"


def test_a_mistyped_setting_names_the_setting_meant(tmp_path):
    result = CliRunner().invoke(main, ["study", "--set", "train.stepz=3", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown setting 'train.stepz'; did you mean train.steps?" in result.output
