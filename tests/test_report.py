"""The HTML report and the timeline picture, from outcomes captured from real lab runs
(tests/fixtures/runs: `unitchaos run FAULT --keep-artifacts`, the big logs left out),
checked as a browser lays them out (headless Chromium)."""
import json
import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import cli
from harness.evidence import report, timeline_svg

RUNS = Path(__file__).parent / "fixtures" / "runs"
SVG = "{http://www.w3.org/2000/svg}"


def _outcomes() -> list[tuple[Path, dict]]:
    return [(d, json.loads((d / "outcome.json").read_text())) for d in report.collect([RUNS])]


def test_the_fixtures_are_real_runs_of_both_outcomes_that_matter():
    outcomes = {(out["experiment"], out["fs"]): out for _, out in _outcomes()}
    yank = outcomes[("yank", "xfs")]
    assert yank["health_check_lies"] and not yank["container_start_ok"]
    assert outcomes[("unplug", "xfs")]["units"]["ecs-agent.service"] in ("inactive", "failed")


def test_the_timeline_picture_has_a_lane_per_witness_and_a_span_per_health_answer():
    directory, outcome = next((d, o) for d, o in _outcomes() if o["experiment"] == "yank" and o["fs"] == "xfs")
    samples = json.loads((directory / "health.json").read_text())["samples"]
    svg = ET.fromstring(timeline_svg.render(outcome["timeline"], "yank", samples=samples))
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    for lane, *_ in timeline_svg.LANES:
        assert lane in texts
    spans = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "answer"]
    assert len(spans) == len(samples)
    assert [r.get("fill") == timeline_svg.OK for r in spans].count(False) == len(
        [s for s in samples if s["status"] != 200])
    # The deep check's spans turn red once it fails; the stock check's never do.
    deep = [s for s in samples if s["check"] == "deep"]
    assert any(s["status"] != 200 for s in deep)
    assert all(s["status"] == 200 for s in samples if s["check"] == "stock")
    titles = " ".join(t.text or "" for t in svg.iter(f"{SVG}title"))
    assert "Filesystem has been shut down" in titles  # the kernel's word is on the picture


def test_the_picture_places_events_in_time_order_on_one_axis():
    _, outcome = _outcomes()[0]
    svg = ET.fromstring(timeline_svg.render(outcome["timeline"]))
    ticks = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "tick"]
    values, xs = [float(t.text) for t in ticks], [float(t.get("x")) for t in ticks]
    assert values == sorted(values) and xs == sorted(xs) and len(ticks) >= 3 and 0.0 in values


def test_report_names_every_experiment_and_links_only_to_files_that_exist(tmp_path):
    out = report.write(report.collect([RUNS]), tmp_path / "report.html")
    page = out.read_text()
    assert page.count('<section class="experiment"') == len(_outcomes())
    hrefs = re.findall(r'href="([^"#][^"]*)"', page)
    assert hrefs
    for href in hrefs:
        assert (tmp_path / href).exists(), href
    # Self-contained: nothing for the browser to fetch.
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(|\ssrc=", page)


@pytest.mark.parametrize("argv, message", [
    (["report", "/nonexistent-run", "-o", "x.html"], "/nonexistent-run is not a directory"),
    (["report", "{empty}", "-o", "x.html"], "no outcome.json in"),
    (["report", str(RUNS), "-o", "/nonexistent-dir/x.html"], "/nonexistent-dir is not a directory"),
    (["report", str(RUNS)], "-o/--output"),
    (["demo", "--report", "/nonexistent-dir/x.html"], "/nonexistent-dir is not a directory"),
    (["report", "{damaged}", "-o", "{tmp}/x.html"], "is not an experiment's outcome (no experiment, chain"),
    (["report", "{unreadable}", "-o", "{tmp}/x.html"], "cannot read"),
])
def test_report_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "outcome.json").write_text('{"fault": "yank"}')
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "outcome.json").write_text("{not json")
    argv = [a.replace("{empty}", str(tmp_path / "empty")).replace("{tmp}", str(tmp_path))
            .replace("{damaged}", str(tmp_path / "damaged")).replace("{unreadable}", str(tmp_path / "unreadable"))
            for a in argv]
    (tmp_path / "empty").mkdir()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


# -- in a real browser -----------------------------------------------------------

# Measures the page as laid out, and writes the answer into the DOM for --dump-dom.
PROBE = """<script>
window.addEventListener("load", () => {
  const svgs = [...document.querySelectorAll("svg.timeline")].map(s => {
    const r = s.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; });
  const rows = document.querySelectorAll("table.findings tbody tr").length;
  const overflow = document.documentElement.scrollWidth - document.documentElement.clientWidth;
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify({svgs, rows, overflow, imgs: document.images.length});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI must check the report in a browser, but chromium is not installed "
                    "(apt-get install chromium)", pytrace=False)
    pytest.skip("chromium not installed (apt-get install chromium)")


def _headless(browser: str, tmp_path: Path, *args: str) -> str:
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1600", *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=120)
    finally:
        # Chromium's helpers are in its session: none may outlive the test.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return out


def test_report_renders_in_chromium_with_every_timeline_laid_out(tmp_path):
    browser = _chromium()
    out = report.write(report.collect([RUNS]), tmp_path / "report.html")
    probed = tmp_path / "probed.html"
    probed.write_text(out.read_text().replace("</body>", PROBE + "</body>"))
    dom = _headless(browser, tmp_path, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, dom[-500:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    outcomes = _outcomes()
    assert seen["rows"] == len(outcomes)
    with_faults = [o for _, o in outcomes if o["timeline"]]
    assert len(seen["svgs"]) == len(with_faults)
    for width, height in seen["svgs"]:
        assert width > 600 and height > 200  # laid out at a readable size, not collapsed
    assert seen["overflow"] <= 0  # nothing sticks out sideways at 1280 px
    assert seen["imgs"] == 0  # pictures are inline SVG: no image to break

    shot = tmp_path / "report.png"
    _headless(browser, tmp_path, f"--screenshot={shot}", out.as_uri())
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (1280, 1600)
