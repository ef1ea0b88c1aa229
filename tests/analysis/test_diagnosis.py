"""Diagnosis of constructed runs whose regime and outcome are known, per phase, and of studies."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from rnnprobe.analysis.diagnosis import (
    analyse_study,
    diagnose_run,
    diagnose_study,
    study_table,
    variance_explained,
)
from rnnprobe.analysis.runs import (
    DecayFit,
    PhaseMeasures,
    RunSummary,
    StudySummary,
    summarise_run,
)
from rnnprobe.records.store import load_run
from rnnprobe.report.terminal import format_run_summary
from tests.support.records import write_run


def diagnose(tmp_path, **options):
    return diagnose_run(summarise_run(load_run(write_run(tmp_path / "r", **options))))


@pytest.mark.parametrize(
    "decay, regime",
    [
        (0.5, "vanishing"),  # 0.5^16: halves every step, T = 16
        (1.3, "exploding"),  # 1.3^16 ≈ 66 ≥ 16
        (1.1, "chaotic"),  # λ₁ = ln 1.1 = +0.095 but 1.1^16 ≈ 4.6: not yet exploding
        (1.0, "edge of chaos"),  # λ₁ = 0
        (0.97, "stable"),  # λ₁ = −0.03, 0.97^16 ≈ 0.61: reaches across the sequence
    ],
)
def test_gradient_regime_is_named_in_every_phase(tmp_path, decay, regime):
    d = diagnose(tmp_path, decay=decay, seq_len=16)
    assert [d.regime(p) for p in ("init", "training", "end")] == [regime] * 3
    assert d.phases["init"].step == "step 1" and d.phases["end"].step == "step 40"
    assert regime in d.headline


def test_regime_changes_between_phases_are_told_apart(tmp_path):
    d = diagnose(tmp_path, decay=1.3, decay_end=0.5, seq_len=16)
    assert d.regime("init") == "exploding" and d.regime("end") == "vanishing"
    lines = d.lines()
    assert any(line.startswith("Init (step 1): exploding") for line in lines)
    assert any(line.startswith("End (step 40): vanishing") for line in lines)


def test_vanishing_is_found_from_adjoint_ratios_without_reach(tmp_path):
    tables = ("task", "steps", "adjoints", "health")
    d = diagnose(tmp_path, decay=0.5, seq_len=40, tables=tables)
    assert d.regime("init") == "vanishing" and d.regime("end") == "vanishing"
    assert d.summary.phase("end").decay.source == "adjoints"
    assert d.summary.phase("end").decay.rate_per_step == pytest.approx(0.5, rel=0.1)
    assert "adjoint ratios" in " ".join(d.lines())


def test_clipped_bursts_are_exploding_during_training(tmp_path):
    d = diagnose(tmp_path, decay=0.97, seq_len=16, clip="norm", grad_growth=1000.0)
    assert d.regime("init") == "stable" and d.regime("training") == "exploding"
    assert "held down by clipping" in " ".join(d.phases["training"].reasons)
    unclipped = diagnose(tmp_path / "u", decay=0.97, seq_len=16, clip="none", grad_growth=1000.0)
    assert unclipped.regime("training") == "exploding"
    assert "grew ×" in " ".join(unclipped.phases["training"].reasons)
    calm = diagnose(tmp_path / "calm", decay=0.97, seq_len=16, clip="norm", grad_growth=1.0)
    assert calm.regime("training") == "stable"


@pytest.mark.parametrize(
    "options, result",
    [
        ({"loss_ratio": 0.1}, "solved"),
        ({"loss_ratio": 0.6}, "learning"),
        ({"loss_ratio": 1.0}, "did not learn"),
        ({"loss_ratio": 0.1, "diverge_at": 10}, "diverged"),
        ({"loss_ratio": 0.1, "steps": 3}, "untrained"),
    ],
)
def test_training_outcome(tmp_path, options, result):
    d = diagnose(tmp_path, decay=0.97, **options)
    assert d.outcome == result and f"Outcome: {result}" in d.headline
    assert "baseline" in d.outcome_reason or result == "diverged"


def test_a_language_model_is_learning_never_solved(tmp_path):
    path = write_run(tmp_path / "r", decay=0.97, loss_ratio=0.1)
    run = load_run(path)
    run.tables["task"] = run.table("task").assign(kind="lm")
    assert diagnose_run(summarise_run(run)).outcome == "learning"


def test_irnn_says_mean_field_does_not_apply(tmp_path):
    d = diagnose(tmp_path, decay=1.0, nonlinearity="relu",
                 settings={"model.init": "identity"})  # fmt: skip
    text = " ".join(d.lines())
    assert "mean-field theory does not apply: the identity init" in text
    assert "√χ" not in text


def test_gaussian_init_compares_mean_field_with_the_init_phase(tmp_path):
    d = diagnose(tmp_path, decay=0.9, decay_end=0.5, settings={"model.init": "gaussian"})
    line = next(x for x in d.lines() if "mean-field" in x)
    assert "√χ = 0.918" in line and "measured at init (step 1) 0.89" in line  # √χ = 1.02 × 0.9
    assert "ratio 0.98" in line


def test_minus_infinite_lyapunov_is_a_note_not_a_number(tmp_path):
    path = write_run(tmp_path / "r", decay=0.97, nonlinearity="relu")
    run = load_run(path)
    lyap = run.table("lyapunov")
    run.tables["lyapunov"] = lyap.assign(exponent=lyap["exponent"].where(lyap["step"] < 40,
                                                                         -math.inf))  # fmt: skip
    d = diagnose_run(summarise_run(run))
    assert math.isnan(d.summary.phase("end").lyapunov_max)
    text = " ".join(d.lines())
    assert "every unit was off" in text and "-inf" not in text and "−∞ per step" not in text


def test_run_without_records_is_unknown(tmp_path):
    d = diagnose(tmp_path, tables=(), status="running")
    assert d.outcome in ("untrained", "unknown") and not d.phases


def write_study(path, cells, *, seeds=(0, 1), name="demo"):
    """Write a study whose runs are write_run(**cells[value]) for each axis value and seed."""
    runs = []
    for value, options in cells.items():
        for seed in seeds:
            rid = f"g{value}-s{seed}"
            write_run(path / "runs" / rid, seed=seed, init_gain=value,
                      settings={"model.init": "gaussian"}, **options)  # fmt: skip
            axes = {"model.init_gain": value, "seed": seed}
            runs.append({"id": rid, "axes": axes, "status": "done", "error": None})
    axes = {"model.init_gain": list(cells), "seed": list(seeds)}
    index = {"name": name, "question": "where is the edge?", "axes": axes, "runs": runs}
    (path / "study.json").write_text(json.dumps(index))
    return path


def test_study_answer_names_outcomes_effects_mean_field_and_the_edge(tmp_path):
    cells = {
        0.5: {"decay": 0.5, "loss_ratio": 1.0},
        1.0: {"decay": 0.99, "loss_ratio": 0.1},
        2.0: {"decay": 1.3, "loss_ratio": 0.6},
    }
    a = analyse_study(write_study(tmp_path, cells, seeds=(0, 1, 2)))
    answer = "\n".join(a.diagnosis.answer)
    assert "solved: init_gain = 1.0" in answer and "did not learn: init_gain = 0.5" in answer
    assert "model.init_gain changes loss/baseline" in answer
    # numeric order and spread over seeds
    assert answer.index("0.5: ") < answer.index("1.0: ") < answer.index("2.0: ")
    assert "measured decay per step follows the mean-field √χ" in answer
    assert "λ₁ at init crosses 0 between model.init_gain = 1.0" in answer
    assert "seed" not in answer.replace("over seeds", "")
    lines = "\n".join(a.diagnosis.lines)
    assert "Outcomes (9 runs): 3 solved, 3 learning, 3 did not learn." in lines


def test_an_axis_without_an_effect_is_never_said_to_matter(tmp_path):
    cells = {0.5: {"decay": 0.9, "loss_ratio": 0.5}, 1.0: {"decay": 0.9, "loss_ratio": 0.5}}
    a = analyse_study(write_study(tmp_path, cells))
    answer = "\n".join(a.diagnosis.answer)
    assert "changes" not in answer and "explaining" not in answer
    assert not a.diagnosis.effects["matters"].any()


def test_effects_need_enough_runs():
    table = pd.DataFrame({"a": [1, 2], "loss_ratio": [0.1, 0.9], "outcome": ["solved"] * 2,
                          "mean_field_applies": False, "lyapunov_max_init": math.nan,
                          "seq_len": 10, "half_life_end": 1.0})  # fmt: skip
    study = StudySummary("s", "", "", ["a"], [0], [])
    assert not diagnose_study(study, table).effects["matters"].any()


def test_variance_explained_is_one_for_a_perfect_axis_and_zero_for_noise():
    df = pd.DataFrame({"a": [1, 1, 2, 2], "b": [1, 2, 1, 2], "y": [0.1, 0.1, 0.9, 0.9]})
    assert variance_explained(df, "a", "y")[0] == pytest.approx(1.0)
    assert variance_explained(df, "b", "y")[0] == pytest.approx(0.0)
    assert math.isnan(variance_explained(df.head(2), "a", "y")[0])  # too few runs


def test_study_table_carries_the_diagnosis_beside_the_numbers(tmp_path):
    cells = {0.5: {"decay": 0.5}, 2.0: {"decay": 1.3}}
    a = analyse_study(write_study(tmp_path, cells))
    assert list(a.table["regime_init"]) == ["vanishing"] * 2 + ["exploding"] * 2
    again = study_table(a.study, a.diagnoses)
    pd.testing.assert_frame_equal(a.table, again)


def test_diverged_configurations_are_named_and_left_out_of_loss_effects(tmp_path):
    cells = {
        0.5: {"decay": 0.5, "loss_ratio": 1.0},
        1.0: {"decay": 0.99, "loss_ratio": 0.1},
        2.0: {"decay": 1.3, "loss_ratio": 0.0, "diverge_at": 10, "status": "diverged"},
    }
    a = analyse_study(write_study(tmp_path, cells))
    answer = "\n".join(a.diagnosis.answer)
    assert (
        "diverged: init_gain = 2.0 (2 runs: first non-finite loss or gradient at step 10, "
        "stopped at step 10)" in answer
    )
    assert "2.0: " not in answer.partition("changes loss/baseline")[2].split("\n")[0]
    assert "2 diverged run(s) are left out" in "\n".join(a.diagnosis.lines)


def test_the_start_loss_is_step_ones_as_the_loss_panel_shows(tmp_path):
    d = diagnose(tmp_path, decay=0.97)
    first = d.summary.initial_loss
    assert first == load_run(tmp_path / "r").table("steps")["loss"].iloc[0]
    assert f"(training loss at step 1: {first:.4g} = " in d.outcome_reason
    assert "at the start" not in d.outcome_reason


def test_a_diverged_run_names_the_onset_and_the_stop(tmp_path):
    path = write_run(tmp_path / "r", decay=0.97, diverge_at=20, status="diverged")
    run = load_run(path)
    steps = run.table("steps")
    run.tables["steps"] = steps.assign(loss=steps["loss"].where(steps["step"] < 12))
    d = diagnose_run(summarise_run(run))
    assert d.outcome_reason == (
        "the run stopped on non-finite values at step 20; its first non-finite loss or "
        "gradient was at step 12"
    )


def summary(run_id, settings, *, rate_end=0.5, rate_init=0.9, steps=100, seq_len=10.0,
            **fields):  # fmt: skip
    """A finished run whose gradient decays by ``rate_*`` per step (T steps) at init and end."""

    def phase(name, step, rate):
        half = math.log(2) / -math.log(rate) if rate < 1 else math.inf
        return PhaseMeasures(name, (step,), DecayFit(rate, half, shape="exponential"))

    phases = {"init": phase("init", 1, rate_init), "end": phase("end", steps, rate_end)}
    return RunSummary(run_id, settings, "done", steps=steps, seq_len=seq_len, final_loss=0.5,
                      baseline_loss=1.0, loss_ratio=0.5, phases=phases, **fields)  # fmt: skip


def study_answer(runs, axes) -> str:
    seeds = sorted({r.settings["seed"] for r in runs})
    study = StudySummary("s", "", "", axes, seeds, runs)
    table = study_table(study, [diagnose_run(r) for r in runs])
    return "\n".join(diagnose_study(study, table).answer)


def test_the_answer_quotes_a_diverged_configurations_onset_not_only_its_stop():
    runs = [summary(f"n{k}", {"train.clip": "none", "seed": k}, divergence_step=21,
                    first_nonfinite_step=2, nonfinite_steps=20) for k in range(3)]  # fmt: skip
    runs += [summary(f"c{k}", {"train.clip": "norm", "seed": k}) for k in range(3)]
    answer = study_answer(runs, ["train.clip"])
    assert (
        "clip = none (3 runs: first non-finite loss or gradient at step 2, stopped at step 21)"
        in answer
    )


def test_grown_or_capped_half_lives_are_counted_never_averaged():
    # level x: three gradients grow (half-life ∞, capped at 8 T for η²), one halves in 0.74 T
    rates = {"x": [1.01, 1.01, 1.01, 0.9102], "y": [0.5] * 4}
    runs = [summary(f"{a}{k}", {"a": a, "seed": k}, rate_end=r)
            for a, level in rates.items() for k, r in enumerate(level)]  # fmt: skip
    answer = study_answer(runs, ["a"])
    assert "a = x: 7.37 steps (0.74 T) in 1 of 4 runs; grows in 3 of 4 runs" in answer
    # one fit at x is no level mean: no claim that a changes the half-life, and no η² that a
    # value standing in for the grown ones would set
    assert "a changes the half-life" not in answer
    capped = 2 ** np.mean([3, 3, 3, np.log2(math.log(2) / -math.log(0.9102) / 10)])
    assert f"{capped:.2g} T" not in answer and "no decay" not in answer


def test_a_half_life_changes_with_an_axis_in_steps_not_over_t():
    # lm_text: one decay per step (one half-life in steps) at every T; over T it falls 8×
    runs = [summary(f"{t}{k}", {"task.seq_len": t, "seed": k}, rate_end=0.7 + 0.01 * k,
                    seq_len=float(t)) for t in (16, 128) for k in range(3)]  # fmt: skip
    answer = study_answer(runs, ["task.seq_len"])
    assert "task.seq_len changes the half-life" not in answer
    # a real change: decay 0.5 against 0.9 per step, in steps 1 against 6.6
    runs = [summary(f"{r}{k}", {"model.init_gain": r, "seed": k}, rate_end=r * (1 + 0.001 * k))
            for r in (0.5, 0.9) for k in range(3)]  # fmt: skip
    answer = study_answer(runs, ["model.init_gain"])
    assert (
        "model.init_gain changes the half-life at the end (in steps) (η² = 1.00, 6 runs" in answer
    )
    assert "0.5: 1 step ×/÷ 1 (0.1 T); 0.9: 6.64 steps ×/÷ 1 (0.66 T)" in answer


def test_mean_field_counts_initial_networks_not_runs():
    # train.clip leaves the initial network unchanged; model.init_gain does not
    runs = [summary(f"{g}{c}{k}", {"model.init_gain": g, "train.clip": c, "seed": k},
                    predicted_decay=0.9 * (1 + 0.01 * k), mean_field_applies=True)
            for g in (1.0, 2.0) for c in ("none", "norm", "value") for k in (0, 1)]  # fmt: skip
    answer = study_answer(runs, ["model.init_gain", "train.clip"])
    assert "(mean ± sd over 4 initial networks, 12 runs; " in answer


def test_a_study_measured_at_init_only_says_nothing_about_the_end(tmp_path):
    cells = {0.5: {"decay": 0.5, "steps": 1}, 2.0: {"decay": 1.3, "steps": 1}}
    a = analyse_study(write_study(tmp_path, cells))
    answer = "\n".join(a.diagnosis.answer)
    assert "at the end" not in answer and "no decay" not in answer
    assert set(a.table["outcome"]) == {"untrained"} and a.table["regime_end"].isna().all()
    assert "λ₁ at init crosses 0 between model.init_gain = 0.5" in answer


@pytest.mark.parametrize(
    "seq_len, settings, noted, advice",
    [
        (200, {}, True, True),  # 0.5^126 … 0.5^149: float32 subnormals
        (200, {"train.flush_denormals": True}, True, False),  # a GPU run that asked: no advice
        (200, {"dtype": "float64"}, False, False),  # float64's start below 2.2e-308
        (40, {}, False, False),  # 0.5^39 ≈ 1.8e-12: normal numbers
    ],
)
def test_subnormal_adjoints_are_noted_with_what_flushes_them(
    tmp_path, seq_len, settings, noted, advice
):
    tables = ("task", "steps", "adjoints", "health")
    d = diagnose(tmp_path, decay=0.5, seq_len=seq_len, tables=tables, settings=settings)
    note = [line for line in d.lines() if "subnormal" in line]
    assert bool(note) == noted
    if noted:
        share = d.summary.subnormal_share
        head = (
            f"{share:.1%} of the recorded adjoint norms are subnormal numbers (below 1.2e-38; "
            "decay fits leave them out)"
        )
        tail = (
            ": on a CPU the steps through them run several times slower, and there "
            "--flush-denormals true reads them as 0"
        )
        assert 0 < share < 1 and note == [head + (tail if advice else "")]
        assert ("--flush-denormals true" in format_run_summary(tmp_path / "r")) == advice


def test_a_configuration_without_a_fit_is_named_in_the_half_life_answer():
    import dataclasses

    def unfitted(run):
        end = PhaseMeasures("end", (100,), DecayFit(math.nan, math.nan, shape="not exponential"))
        return dataclasses.replace(run, phases={**run.phases, "end": end})

    runs = [summary(f"x{k}", {"a": "x", "seed": k}) for k in range(2)]
    runs += [unfitted(summary(f"y{k}", {"a": "y", "seed": k})) for k in range(2)]
    answer = study_answer(runs, ["a"])
    assert "a = x: 1 step ×/÷ 1 (0.1 T); a = y: no exponential fit." in answer


def test_a_training_median_says_how_many_probe_steps_it_takes(tmp_path):
    # probes at steps 2, 4, 8, 16, 32 between init (1) and end (40): five fits and five λ₁
    d = diagnose(tmp_path, decay=0.5, seq_len=16)
    training = d.phases["training"]
    assert training.step == "steps 2–32"
    text = " ".join(training.reasons)
    assert "reach fit, median of 5 probe steps, R²" in text
    assert "per step (median of 5 probe steps)" in text
    # one step, one measurement: no median to speak of
    assert "median" not in " ".join(d.phases["end"].reasons)


def test_clipping_bursts_are_training_steps_not_the_initial_networks_gradient():
    from rnnprobe.analysis.runs import _clipping

    # seq_len ae6d638e11: 269× the threshold at step 1 (init), at most 55× after it
    steps = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [1.0] * 4,
                          "clipped": [True, True, False, True],
                          "grad_norm_pre_clip": [269.0, 55.0, 0.5, 2.0]})  # fmt: skip
    rate, burst = _clipping(steps, "norm", 1.0)
    assert rate == pytest.approx(2 / 3) and burst == pytest.approx(55.0)


def test_a_pre_flossed_run_is_kept_from_mean_field_for_its_flossing_not_its_init():
    flossed = summary("f", {"train.floss": "pre:200", "seed": 0}, init="default",
                      predicted_decay=0.52, pre_floss_updates=200)  # fmt: skip
    notes = " ".join(diagnose_run(flossed).notes)
    assert "step 1 follows 200 pre-flossing updates" in notes
    assert "not i.i.d." not in notes  # the default init is i.i.d.


def test_a_study_names_the_settings_every_run_shares():
    from types import SimpleNamespace

    from rnnprobe.training.config import RunConfig

    base = RunConfig().flat()
    runs = [SimpleNamespace(settings={**base, "train.clip": c, "seed": k, "model.init_gain": 2.0,
                                      "probes.top_k": 8})
            for c in ("none", "value") for k in (0, 1)]  # fmt: skip
    fixed = StudySummary("s", "", "", ["train.clip"], [0, 1], runs).fixed_settings()
    assert fixed["model.init_gain"] == 2.0  # not the default
    assert fixed["train.lr"] == base["train.lr"] and "task.name" in fixed  # always named
    assert "train.clip" not in fixed and "seed" not in fixed  # swept
    assert "probes.top_k" not in fixed and "task.charset" not in fixed  # no probe, a default
    keys = list(fixed)
    assert keys[0].startswith("task.") and keys[-1].startswith("train.")
    unclipped = [SimpleNamespace(settings={**base, "train.clip": "none"})]
    assert "train.clip_value" not in StudySummary("s", "", "", [], [0], unclipped).fixed_settings()


def test_the_init_tally_says_which_runs_were_pre_flossed():
    runs = [summary(f"{f}{k}", {"train.floss": f, "seed": k}, pre_floss_updates=200 * (f != "none"))
            for f in ("none", "pre") for k in (0, 1)]  # fmt: skip
    study = StudySummary("s", "", "", ["train.floss"], [0, 1], runs)
    lines = diagnose_study(study, study_table(study, [diagnose_run(r) for r in runs])).lines
    init = next(line for line in lines if line.startswith("Gradients at init"))
    assert init.endswith("Of these, 2 runs' step 1 follows pre-flossing.")


def test_a_flat_fit_is_not_extrapolated_over_the_sequence():
    # truncated at K = 4: distances 1–3 only, 0.95 per step there; T = 100
    run = summary("k4", {"seed": 0}, seq_len=100.0)
    flat = DecayFit(0.95, math.inf, shape="flat", d_min=1.0, d_max=3.0, source="reach")
    run.phases["end"] = PhaseMeasures("end", (100,), flat)
    verdict = diagnose_run(run).phases["end"]
    assert verdict.regime != "vanishing"  # 0.95^100 would say so, with a half-life of ∞
    assert "flat: under 2× over distances 1–3" in " ".join(verdict.reasons)
    assert "reaches across the sequence" not in " ".join(verdict.reasons)


def test_an_answer_taken_while_runs_go_on_says_it_is_partial():
    runs = [summary("a", {"a": 1, "seed": 0}), summary("b", {"a": 2, "seed": 0})]
    runs[1] = replace(runs[1], status="running")
    answer = study_answer(runs, ["a"])
    assert answer.startswith("Partial: 1 of 2 runs are not done (1 running);")
    assert not study_answer(runs[:1], ["a"]).startswith("Partial")


def test_the_truncation_answer_gives_the_norm_ratio_as_measured_and_never_calls_it_a_share():
    from rnnprobe.analysis.diagnosis import _truncation_answer

    table = pd.DataFrame(
        {
            "train.bptt": [4, 4, 16, 16],
            "seed": [0, 1, 0, 1],
            "truncation_dropped_training": [1.1, 1.3, 0.2, 0.4],  # above 1: the parts oppose
            "truncation_cosine_training": [0.1, 0.3, 0.9, 0.95],
        }
    )
    (line,) = _truncation_answer(table, ["train.bptt"])
    assert line.startswith("Truncated against full BPTT of the same batches (training phase")
    assert "‖full − truncated‖ / ‖full‖ (a ratio of norms, not a share)" in line
    assert line.endswith("bptt = 4: 1.2 and cosine 0.2; bptt = 16: 0.3 and cosine 0.93.")
    assert "share of" not in line and "dropped" not in line


def test_an_effect_is_read_only_where_every_level_has_a_value():
    # irnn_adding: init = identity has a half-life only at T = 100 (flat at T = 10), where
    # default's is short; at T = 10 default's is long. Pooled, identity's mean stands at
    # T = 100 alone and default's mixes both T: the effect must be read at T = 100 only.
    runs = [summary(f"d{t}{k}", {"model.init": "default", "task.seq_len": t, "seed": k},
                    rate_end=(0.5 if t == 100 else 0.93) + 0.001 * k, seq_len=float(t))
            for t in (10, 100) for k in range(2)]  # fmt: skip
    runs += [summary(f"i{t}{k}", {"model.init": "identity", "task.seq_len": t, "seed": k},
                     rate_end=(0.94 + 0.001 * k) if t == 100 else 1.0, seq_len=float(t))
             for t in (10, 100) for k in range(2)]  # fmt: skip
    for r in runs[4:6]:  # identity at T = 10: flat, no half-life
        r.phases["end"] = replace(r.phases["end"], decay=DecayFit(1.0, math.inf, shape="flat"))
    answer = study_answer(runs, ["model.init", "task.seq_len"])
    line = next(x for x in answer.split("\n") if x.startswith("model.init changes the half-life"))
    assert "(η² = 1.00, 4 runs; " in line  # T = 100 only: HEAD took 6 runs, T = 10 pooled in
    assert "; only seq_len = 100, where every level has a value): default: 1 step" in line
    balanced = study_answer(runs[:4] + [summary(f"j{k}", {"model.init": "identity",
                            "task.seq_len": t, "seed": k}, rate_end=0.99 - 0.001 * k,
                            seq_len=float(t)) for t in (10, 100) for k in range(2)],
                            ["model.init", "task.seq_len"])  # fmt: skip
    assert "where every level has a value" not in balanced


def test_the_regime_tallies_name_their_phase_in_words():
    runs = [summary(f"r{k}", {"a": a, "seed": k}) for a in ("x", "y") for k in range(2)]
    seeds = sorted({r.settings["seed"] for r in runs})
    study = StudySummary("s", "", "", ["a"], seeds, runs)
    table = study_table(study, [diagnose_run(r) for r in runs])
    lines = diagnose_study(study, table).lines
    starts = [line.split(" (")[0] for line in lines if line.startswith("Gradients")]
    assert starts == ["Gradients at init", "Gradients at the end"]  # HEAD: 'at end'
