"""The incident timeline as a picture: one lane per witness (the fault, QEMU, the kernel,
systemd, each health check, the load balancer and scaling group) on one time axis in
seconds from the fault.

Plain SVG text, no drawing library: the picture is a few dozen shapes, and SVG inlines
into the HTML report and opens in any browser. Every marker carries the full event as a
tooltip (<title>); labels are shortened to fit.
"""
import math
import re
from xml.sax.saxutils import escape

from . import findings
from .. import kernel_log

# (lane title, colour, does an event of SOURCE belong here?)
LANES = [
    ("fault", "#d73a49", lambda s: s == "fault"),
    ("QEMU (QMP)", "#6f42c1", lambda s: s == "qmp"),
    ("kernel", "#e36209", lambda s: s == "kernel"),
    ("systemd units", "#005cc5", lambda s: s == "systemd"),
    ("stock check", None, lambda s: s == "stock check"),
    ("deep check", None, lambda s: s == "deep check"),
    ("LB / scaling", "#24292e", lambda s: s.endswith(" LB") or "scaling" in s),
]
CHECK_LANES = {"stock check", "deep check"}


def lanes_for(events: list[dict], samples: list[dict] | None) -> list[tuple]:
    """LANES with one check lane per check seen (a chain file names its own checks)."""
    names = list(dict.fromkeys([s["check"] for s in samples or []] +
                               [e["source"].removesuffix(" check") for e in events if e["source"].endswith(" check")]))
    if not names or set(names) <= {"stock", "deep"}:
        return LANES
    checks = [(f"{name} check", None, lambda s, n=f"{name} check": s == n) for name in names]
    return LANES[:4] + checks + LANES[-1:]
OK, FAILING, SILENT = "#2e9d4f", "#d73a49", "#8a1c1c"

# Kernel messages by how much they tell (the first is shown when several coincide).
TELLING = findings.KERNEL_KINDS

LONG_RUN, LINEAR = 30.0, 3.0
WIDTH = 1100
LABEL_W = 118
LANE_H = 38
TOP = 34
AXIS_H = 30
CHAR_W = 6.4
MAX_LABEL = 60  # average width of an 11 px sans-serif character: enough to keep labels apart


def render(events: list[dict], title: str = "", end: float | None = None,
           samples: list[dict] | None = None) -> str:
    """An SVG document for EVENTS ({"t", "source", "event"}, as timeline.build makes them).
    END is where the picture stops (default: a little after the last event). With SAMPLES
    (health.json's: {"check", "t", "status", "latency_ms", "why"}) the check lanes show
    every answer; without, the changes of answer among EVENTS."""
    times = [e["t"] for e in events] or [0.0]
    start = min(0.0, math.floor(min(times)))
    stop = max(1.0, end if end is not None else max(times))
    stop = start + (stop - start) * 1.04 + 0.5
    plot_w = WIDTH - LABEL_W - 16
    lanes = lanes_for(events, samples)
    height = TOP + LANE_H * len(lanes) + AXIS_H
    # A long run (systemd reacting for minutes) squeezes the first seconds, where most
    # happens: past LINEAR seconds the axis turns logarithmic.
    scale = _symlog if stop - start > LONG_RUN else (lambda t: t)

    def x(t: float) -> float:
        return round(LABEL_W + (scale(t) - scale(start)) / (scale(stop) - scale(start)) * plot_w, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" role="img" class="timeline" '
           f'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="11">',
           f"<title>{escape(title or 'incident timeline')}</title>",
           f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>']
    if title:
        out.append(f'<text x="8" y="20" font-size="13" font-weight="600" fill="#24292e">{escape(title)}</text>')
    out += _legend()
    out += _axis(start, stop, x, height, len(lanes), logarithmic=stop - start > LONG_RUN)
    for index, (lane, colour, belongs) in enumerate(lanes):
        top = TOP + index * LANE_H
        mid = top + LANE_H / 2
        out.append(f'<rect x="0" y="{top}" width="{WIDTH}" height="{LANE_H}" '
                   f'fill="{"#f6f8fa" if index % 2 == 0 else "#ffffff"}" fill-opacity="0.7"/>')
        out.append(f'<text x="8" y="{mid + 4}" fill="#24292e" font-weight="600">{escape(lane)}</text>')
        mine = [e for e in events if belongs(e["source"])]
        if colour is None:  # a check's lane
            name = lane.removesuffix(" check")
            spans = (_sample_spans([s for s in samples if s["check"] == name and s.get("t") is not None], stop)
                     if samples else _event_spans(mine, stop))
            out += _check_lane(spans, x, top, start)
        else:
            out += _marker_lane(mine, x, mid, colour)
    out.append(f'<line x1="{x(0)}" x2="{x(0)}" y1="{TOP - 4}" y2="{TOP + LANE_H * len(lanes)}" '
               f'stroke="{LANES[0][1]}" stroke-width="1.5" stroke-dasharray="4 3"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _symlog(t: float) -> float:
    return math.copysign(math.log1p(abs(t) / LINEAR), t)


def _legend() -> list[str]:
    parts, left = [], WIDTH - 16
    for label, colour in reversed([("200 OK", OK), ("error status", FAILING), ("no answer", SILENT)]):
        left -= len(label) * CHAR_W + 26
        parts.append(f'<rect x="{left}" y="11" width="12" height="10" fill="{colour}"/>'
                     f'<text x="{left + 16}" y="20" fill="#586069">{label}</text>')
    left -= 200
    parts.append(f'<path d="M{left} 11 L{left + 5} 16 L{left} 21 L{left - 5} 16 Z" fill="#586069"/>'
                 f'<text x="{left + 9}" y="20" fill="#586069">event (hover for the full text)</text>')
    return parts


def _axis(start: float, stop: float, x, height: int, lane_count: int, logarithmic: bool) -> list[str]:
    base = TOP + LANE_H * lane_count
    parts = [f'<line x1="{LABEL_W}" x2="{WIDTH - 16}" y1="{base}" y2="{base}" stroke="#6a737d"/>']
    if logarithmic:
        ticks = [t for t in (-2, -1, 0, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200) if start <= t <= stop]
    else:
        step = _nice_step((stop - start) / 10)
        ticks, tick = [], math.ceil(start / step) * step
        while tick <= stop:
            ticks.append(tick)
            tick = round(tick + step, 6)
    for tick in ticks:
        parts.append(f'<line x1="{x(tick)}" x2="{x(tick)}" y1="{TOP}" y2="{base + 4}" stroke="#e1e4e8"/>')
        parts.append(f'<text class="tick" x="{x(tick)}" y="{base + 16}" text-anchor="middle" fill="#586069">{tick:g}</text>')
    note = f" (logarithmic after {LINEAR:g} s)" if logarithmic else ""
    parts.append(f'<text x="{WIDTH - 16}" y="{height - 2}" text-anchor="end" fill="#586069">'
                 f"seconds from the fault{note}</text>")
    return parts


def _nice_step(raw: float) -> float:
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _marker_lane(events: list[dict], x, mid: float, colour: str) -> list[str]:
    """A diamond per event; events closer than a marker's width share one, labelled with
    the most telling of them and how many more there are."""
    parts = []
    clusters: list[list[dict]] = []
    for event in events:
        if clusters and x(event["t"]) - x(clusters[-1][0]["t"]) < 6:
            clusters[-1].append(event)
        else:
            clusters.append([event])
    positions = [x(c[0]["t"]) for c in clusters]
    # Two rows of labels: beside the marker while the label fits before the next marker,
    # else in the row below the markers, where it may run on past them.
    beside_end = below_end = -1.0
    last_text = None
    marker_y = mid - 5
    for i, (cluster, px) in enumerate(zip(clusters, positions)):
        tip = "\n".join(f"{e['t']:+.2f} s  {e['source']}: {e['event']}" for e in cluster)
        fill = _event_colour(cluster, colour)
        parts.append(f'<g><title>{escape(tip)}</title>'
                     f'<path d="M{px} {marker_y - 5} L{px + 5} {marker_y} L{px} {marker_y + 5} L{px - 5} {marker_y} Z" '
                     f'fill="{fill}" stroke="#ffffff" stroke-width="1"/></g>')
        more = f" (+{len(cluster) - 1})" if len(cluster) > 1 else ""
        text = short(_most_telling(cluster))
        if text == last_text:
            continue  # The same words again (I/O error after I/O error): the marker says enough.
        last_text = text
        room = int(((positions[i + 1] if i + 1 < len(positions) else WIDTH - 8) - px - 12) / CHAR_W) - len(more)
        if px > beside_end and room >= len(text):
            y, x0 = marker_y + 4, px + 8
        elif px - 4 > below_end:
            text, y, x0 = _fit(text, min(MAX_LABEL, int((WIDTH - 8 - px) / CHAR_W)) - len(more)), mid + 12, px - 4
        elif px > beside_end and room >= 12:
            text, y, x0 = _fit(text, room), marker_y + 4, px + 8
        else:
            continue  # No room: the marker's tooltip and the text timeline have it.
        text += more
        parts.append(f'<text x="{x0}" y="{y}" fill="#24292e">{escape(text)}</text>')
        if y == mid + 12:
            below_end = x0 + len(text) * CHAR_W + 6
        else:
            beside_end = x0 + len(text) * CHAR_W + 6
    return parts


def _event_colour(cluster: list[dict], colour: str) -> str:
    # A load balancer's verdict reads at a glance: red for unhealthy, green for healthy.
    verdicts = {e["event"] for e in cluster if e["source"].endswith(" LB")}
    if "target unhealthy" in verdicts:
        return FAILING
    if "target healthy" in verdicts:
        return OK
    return colour


def _most_telling(cluster: list[dict]) -> dict:
    def rank(event: dict) -> int:
        if event["event"] == "target unhealthy":  # the verdict that matters
            return -1
        kinds = kernel_log.classify(event["event"]) if event["source"] == "kernel" else []
        return min((TELLING.index(k) for k in kinds if k in TELLING), default=len(TELLING))
    return min(cluster, key=rank)


def _sample_spans(samples: list[dict], stop: float) -> list[tuple[float, float, object, str]]:
    """(from, to, status, tooltip) per answer, each lasting until the next one."""
    spans = []
    for i, sample in enumerate(samples):
        until = samples[i + 1]["t"] if i + 1 < len(samples) else min(stop, sample["t"] + 1.0)
        why = f" ({sample['why']})" if sample.get("why") else ""
        tip = f"{sample['t']:+.2f} s: {_answer(sample['status'])} in {sample.get('latency_ms', '?')} ms{why}"
        spans.append((sample["t"], until, sample["status"], tip))
    return spans


def _event_spans(events: list[dict], stop: float) -> list[tuple[float, float, object, str]]:
    answers = [(e["t"], e["event"].removeprefix("answers ")) for e in events]
    return [(t, answers[i + 1][0] if i + 1 < len(answers) else stop,
             None if answer == "None" else int(answer) if answer.isdigit() else answer,
             f"{t:+.2f} s: answers {answer}")
            for i, (t, answer) in enumerate(answers)]


def _answer(status) -> str:
    return "200 OK" if status == 200 else "no answer" if status is None else str(status)


def _check_lane(spans, x, top: float, start: float) -> list[str]:
    """A check's answers as coloured spans; runs of the same answer carry one label."""
    parts = []
    run_start = None
    for i, (t0, t1, status, tip) in enumerate(spans):
        x0, x1 = x(max(t0, start)), x(t1)
        colour = OK if status == 200 else SILENT if status is None else FAILING
        parts.append(f'<g><title>{escape(tip)}</title>'
                     f'<rect class="answer" x="{x0}" y="{top + 10}" width="{max(1.0, round(x1 - x0 - 0.5, 1))}" '
                     f'height="{LANE_H - 20}" fill="{colour}"/></g>')
        run_start = x0 if run_start is None else run_start
        if i + 1 == len(spans) or spans[i + 1][2] != status:
            text = _answer(status)
            if x1 - run_start > len(text) * CHAR_W + 8:
                parts.append(f'<text x="{run_start + 5}" y="{top + LANE_H / 2 + 4}" fill="#ffffff" '
                             f'pointer-events="none">{escape(text)}</text>')
            run_start = None
    return parts


_HEX = re.compile(r"\b([0-9a-f]{8})[0-9a-f]{8,}")
_UNIT_WORDS = re.compile(r"^(\S+): (Deactivated successfully|Failed with result '[^']+'|Main process exited.*|"
                         r"Unit is bound to inactive unit.*)")


def short(event: dict) -> str:
    """A few words for EVENT's label."""
    text = _HEX.sub(r"\1…", event["event"])  # overlay mount ids and the like
    if event["source"] == "qmp":
        return text.split(" ", 1)[0]
    if event["source"] == "systemd":
        text = re.sub(r" - .*$", "", text)  # "Stopping docker.service - Docker ..." -> "Stopping docker.service"
        match = _UNIT_WORDS.match(text)
        if match:
            return f"{match.group(1)} {match.group(2).split(' ', 1)[0].lower()}"
        return text.rstrip(".")
    if event["source"] == "kernel":
        return re.sub(r"(I/O error, dev \w+), sector.*", r"\1", text)
    if event["source"].endswith(" LB"):
        return f"{event['source'].removesuffix(' LB')}: {text.removeprefix('target ')}"
    return text


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:max(1, chars - 1)].rstrip() + "…"
