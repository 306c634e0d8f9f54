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


def test_the_unit_options_are_drop_ins_that_systemd_accepts_and_the_guest_gets(tmp_path):
    import tarfile

    from harness import units
    options = {label: changes["dropins"] for label, changes in bench.SURVEY.items() if "dropins" in changes}
    assert options
    for dropins in options.values():
        packed = units.pack(units.Variant(), tmp_path / "units.tar", extra=dropins)
        with tarfile.open(tmp_path / "units.tar") as tar:
            names = tar.getnames()
        assert all(rel in names and packed[rel] == text for rel, text in dropins.items())
    misspelt = {"unitchaos-health.service.d/90-survey.conf": "[Unit]\nAfterr=ecs-agent.service\n"}
    with pytest.raises(UserError, match="systemd-analyze rejects"):
        units.pack(units.Variant(), tmp_path / "bad.tar", extra=misspelt)
