"""The nightly workflow (.github/workflows/nightly.yml) parses, covers the matrix the
issue asks for, and calls only lab commands that exist."""
import re
import subprocess

import yaml

from harness import units
from harness.paths import REPO

WORKFLOW = REPO / ".github" / "workflows" / "nightly.yml"


def load() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def run_steps(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_it_runs_nightly_and_on_demand():
    workflow = load()
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True.
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    assert workflow["env"]["CI"] == "true"


def test_the_matrix_covers_guests_chains_and_filesystems():
    jobs = load()["jobs"]
    assert jobs["scenarios"]["strategy"]["matrix"]["guest"] == ["debian", "fcos"]
    assert len(jobs["scenarios"]["strategy"]["matrix"]["shard"]) > 1
    matrix = jobs["matrix"]["strategy"]["matrix"]
    assert matrix["guest"] == ["debian", "fcos"]
    assert sorted(matrix["chain"]) == sorted(units.CHAINS)
    assert sorted(matrix["fs"]) == sorted(units.FILESYSTEMS)


def test_every_job_uploads_reports_and_artifacts_even_on_failure():
    for name, job in load()["jobs"].items():
        uploads = [step for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact@")]
        assert uploads, name
        assert uploads[0]["if"] == "always()"
        paths = uploads[0]["with"]["path"]
        assert "reports/" in paths and "artifacts" in paths


def test_fcos_jobs_download_the_image_and_the_scenarios_require_it():
    jobs = load()["jobs"]
    for job in jobs.values():
        download = "\n".join(run_steps(job))
        assert "download -s stable -p qemu -f qcow2.xz" in download
        assert "UNITCHAOS_FCOS_IMAGE=" in download
    assert "UNITCHAOS_REQUIRE_FCOS=1" in "\n".join(run_steps(jobs["scenarios"]))


def test_lab_commands_used_by_the_workflow_exist():
    used = set()
    for job in load()["jobs"].values():
        used |= set(re.findall(r"\./lab (\w+)", "\n".join(run_steps(job))))
    assert used
    for command in used:
        # An unknown command makes ./lab exit 2 before installing anything; a known one
        # would go on to install packages, so the check stops at the root test.
        done = subprocess.run(["bash", "-c", f"grep -E '^    {command}\\)' {REPO / 'lab'}"],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"./lab has no '{command}' command"
