"""Probe schedules: parsing, firing steps and one-line errors."""

import pytest

from rnnprobe.errors import RnnprobeError
from rnnprobe.probes.schedule import Schedule


def test_every_always_never_fire_where_expected():
    assert [s for s in range(25) if Schedule.parse("every:10").fires(s)] == [0, 10, 20]
    assert all(Schedule.parse("always").fires(s) for s in range(5))
    assert not any(Schedule.parse("never").fires(s) for s in range(5))


def test_log_schedule_fires_at_rounded_powers():
    assert [s for s in range(70) if Schedule.parse("log:2").fires(s)] == [0, 1, 2, 4, 8, 16, 32, 64]
    assert [s for s in range(30) if Schedule.parse("log:3").fires(s)] == [0, 1, 3, 9, 27]
    assert [s for s in range(12) if Schedule.parse("log:1.5").fires(s)] == [0, 1, 2, 3, 4, 6, 8]


def test_schedule_round_trips_through_its_string():
    for text in ("always", "never", "every:7", "log:2"):
        assert str(Schedule.parse(text)) == text


@pytest.mark.parametrize(
    "text", ["every:0", "every:-3", "every:2.5", "log:1", "log:0", "every", "sometimes", "log:x"]
)
def test_bad_schedules_raise_one_line_errors(text):
    with pytest.raises(RnnprobeError) as info:
        Schedule.parse(text)
    assert "\n" not in str(info.value)


def test_negative_step_is_rejected():
    with pytest.raises(RnnprobeError):
        Schedule.parse("always").fires(-1)
