"""Which options `unitchaos bench --survey --only` measures (no guest is booted here)."""
import pytest

from harness.runs import bench
from harness.errors import UserError

DEFAULT = next(iter(bench.SURVEY))


def test_only_keeps_the_default_first_and_the_options_named():
    chosen = bench.survey_options(["cpu max", "mitigations"])
    assert list(chosen) == [DEFAULT, "-cpu max", "kernel: mitigations=off",
                            "kernel: mitigations=off systemd.show_status=0"]
    assert chosen["-cpu max"] == {"cpu_model": "max"}


def test_without_only_every_option_is_measured():
    assert list(bench.survey_options()) == list(bench.SURVEY)


def test_words_that_name_no_option_are_refused_with_the_choices():
    with pytest.raises(UserError, match="no survey option matches nothing.*-cpu max"):
        bench.survey_options(["nothing"])
