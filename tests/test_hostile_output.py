"""Hostile data in the outputs (issue 11): ids and summaries are shown as data, never read as
rich markup, escape sequences, mathtext or Slack mentions, and the report's work is bounded by
its input, whatever the timestamps and amounts of a hand-made alerts file."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from pydantic import SecretStr
from rich.console import Console

from monitor.channels import ConsoleChannel, SlackChannel
from monitor.cli.main import main
from monitor.core.alerts import Alert
from monitor.core.text import printable
from monitor.paging.notification import Notification
from monitor.report import ReportError, build_report
from monitor.report.charts import (
    MAX_BARS,
    chart_dead_letters,
    chart_over_time,
    chart_scores,
    chart_top,
    plain_text,
    time_bins,
)
from monitor.report.data import load_alerts
from tests.builders import encode, event
from tests.fake_services import make_alert, running, slack

REPO = Path(__file__).resolve().parent.parent
MARKUP = ["[/bold]", "[link=https://evil.example]pay[/link]", "[red]x", ":warning:"]
# (id, what it must be shown as): escape sequences, bidi override, a fake second line.
CONTROLS = [
    ("\x1b]8;;https://evil\x1b\\pay", "\\x1b]8;;https://evil\\x1b\\pay"),
    ("\x1b[2J", "\\x1b[2J"),
    ("T\u202e99", "T\\u202e99"),
    ("T1\n[critical] forged", "T1\\n[critical] forged"),
    ("T\x9b2J\x7f", "T\\x9b2J\\x7f"),
]


# --- the console: replay summary (through `posmon replay`) and the console channel -----------


def replay_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], terminals: list[str]
) -> tuple[int, str]:
    """`posmon replay` of one large-amount attempt per terminal (the alert's summary names the
    terminal), and what it printed."""
    events = tmp_path / "events.jsonl"
    lines = encode(event("auth_request", i, amount=2_000_000, terminal=t, ref=f"R{i}")
                   for i, t in enumerate(terminals))  # fmt: skip
    events.write_bytes(b"\n".join(lines) + b"\n")
    status = main(["replay", str(events), "--alerts", str(tmp_path / "alerts.jsonl")])
    return status, capsys.readouterr().out


@pytest.mark.parametrize("terminal", MARKUP)
def test_replay_summary_shows_markup_ids_as_written(
    terminal: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per alert, as written
    status, out = replay_summary(tmp_path, capsys, [terminal])
    assert status == 0
    assert f"at terminal {terminal}, at or above" in out


def test_replay_summary_on_a_terminal_emits_no_hyperlink_and_no_escape_of_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich writes as to a terminal: its own styles only
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminals = [*MARKUP, *(raw for raw, _ in CONTROLS)]
    status, out = replay_summary(tmp_path, capsys, terminals)
    assert status == 0
    assert "\x1b[1m" in out  # rich did style the output: it believed it wrote to a terminal
    assert "\x1b]" not in out  # no OSC at all: no hyperlink, whether from markup or the data
    assert "\x1b[2J" not in out and "\u202e" not in out and "\x9b" not in out
    assert "forged" not in out.replace("\\n[critical] forged", "")  # no line of its own


@pytest.mark.parametrize(("terminal", "shown"), CONTROLS)
def test_replay_summary_escapes_control_characters(
    terminal: str,
    shown: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    status, out = replay_summary(tmp_path, capsys, [terminal])
    assert status == 0
    assert "\x1b" not in out  # not a terminal: rich writes no escape, and the data none either
    assert out.isprintable() or set(c for c in out if not c.isprintable()) == {"\n"}
    assert f"at terminal {shown}, at or above" in out


def test_console_channel_shows_ids_as_data() -> None:
    out = io.StringIO()
    channel = ConsoleChannel(Console(file=out, width=500, force_terminal=True))
    alerts = [make_alert(i, terminal=t) for i, t in enumerate([*MARKUP, *(r for r, _ in CONTROLS)])]
    group = Notification("trigger", tuple(alerts), "g", summary="[/bold] <x> \x1b[2J")
    assert channel.send(group).status == "delivered"
    text = out.getvalue()
    assert "\x1b]" not in text and "\x1b[2J" not in text and "\u202e" not in text
    for terminal in MARKUP:
        assert f"at terminal {terminal} after" in text
    for _, shown in CONTROLS:
        assert f"at terminal {shown} after" in text


def test_printable_masks_card_numbers_before_escaping() -> None:
    # A no-break space inside a card number: escaped first, the number would be cut in two.
    assert "4111" not in printable("card 4111\u00a01111 1111 1111 end")
    assert printable("tok_ab..cd [/b] é ü 東京") == "tok_ab..cd [/b] é ü 東京"  # unchanged


# --- Slack ------------------------------------------------------------------------------------


def test_slack_text_and_blocks_show_mentions_and_links_literally(client: httpx.Client) -> None:
    hostile = "<!channel> <https://evil.example|refund> & <@U123>"
    alert = make_alert(terminal=hostile)
    single = Notification("trigger", (alert,), alert.alert_id)
    group = Notification(
        "trigger", (alert, make_alert(1, terminal=hostile)), "g", summary=f"2 at {hostile}"
    )
    with running(slack) as service:
        channel = SlackChannel(SecretStr(f"{service.url}/services/T/B/x"), client=client)
        assert channel.send(single).status == "delivered"
        assert channel.send(group).status == "delivered"
        bodies = [r.json() for r in service.requests()]
    shown = "&lt;!channel&gt; &lt;https://evil.example|refund&gt; &amp; &lt;@U123&gt;"
    for body in bodies:
        texts = [body["text"], *(b["text"]["text"] for b in body["blocks"])]
        assert shown in body["text"]
        for text in texts:
            assert "<!channel>" not in text and "<https://evil" not in text and "<@" not in text
    assert sum(shown in t["text"]["text"] for t in bodies[1]["blocks"]) == 3  # head, 2 alerts


# --- the report: plain-text labels -------------------------------------------------------------


def alerts_file(path: Path, alerts: list[Alert], extra: Sequence[str] = ()) -> Path:
    path.write_text("".join(a.model_dump_json() + "\n" for a in alerts) + "".join(extra))
    return path


MATH = ["$\\frac{$", "$x^{2}$", "\\$a$b$", "$\\input{/etc/passwd}$"]


def test_report_draws_mathtext_ids_as_plain_text(tmp_path: Path) -> None:
    alerts = [make_alert(i, merchant=m, terminal=m) for i, m in enumerate(MATH)]
    page = build_report(alerts_file(tmp_path / "a.jsonl", alerts), tmp_path / "out")
    html = page.read_text()
    assert "$\\frac{$" in html and (page.parent / "top_merchants.png").stat().st_size > 5_000
    with plain_text():
        figure = chart_top(alerts, "merchant")
        assert figure is not None
        FigureCanvasAgg(figure)
        figure.savefig(io.BytesIO(), format="png")  # tick labels are made here
    texts = figure.findobj(Text)
    labels = {t.get_text() for t in texts}
    assert set(MATH) <= labels  # each id drawn as written
    assert all(not t.get_parse_math() and not t.get_usetex() for t in texts)


def test_report_dead_letter_reasons_are_bounded_and_plain(tmp_path: Path) -> None:
    dlq = tmp_path / "dlq.jsonl"
    reasons = [*MATH, *(f"reason-{i}" for i in range(5_000)), "x" * 100_000]
    dlq.write_text("".join(json.dumps({"reason": r}) + "\n" for r in reasons))
    started = time.perf_counter()
    page = build_report(
        alerts_file(tmp_path / "a.jsonl", [make_alert()]), tmp_path / "out", dead_letters=dlq
    )
    assert time.perf_counter() - started < 20
    assert (page.parent / "dead_letters.png").exists()
    with plain_text():
        figure = chart_dead_letters(Counter(reasons))
        FigureCanvasAgg(figure)
        figure.savefig(io.BytesIO(), format="png")
    ticks = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert len(ticks) == 10 and max(len(t) for t in ticks) <= 40


def test_report_html_shows_control_characters_escaped(tmp_path: Path) -> None:
    alerts = [make_alert(i, merchant=raw) for i, (raw, _) in enumerate(CONTROLS)]
    html = build_report(alerts_file(tmp_path / "a.jsonl", alerts), tmp_path / "out").read_text()
    assert "\x1b" not in html and "\u202e" not in html and "\x9b" not in html
    assert "T\\u202e99" in html


# --- the report: bounded work ------------------------------------------------------------------

T_NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def timed_report(alerts: Path, out: Path) -> tuple[float, int, str]:
    """`posmon report` in its own process: seconds, peak memory (MB), and its page.

    The peak is the process's own (VmHWM), not getrusage's ru_maxrss, which Linux carries over
    from the parent across fork and exec: a large pytest process would be counted too."""
    script = textwrap.dedent(f"""
        import pathlib
        from monitor.cli.main import main
        status = main(["report", {str(alerts)!r}, "--out", {str(out)!r}])
        status_file = pathlib.Path("/proc/self/status").read_text().splitlines()
        peak_kb = next(int(line.split()[1]) for line in status_file if line.startswith("VmHWM:"))
        print(status, peak_kb // 1024)
    """)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - started
    status, megabytes = done.stdout.split()[-2:]
    assert status == "0", done.stderr
    return elapsed, int(megabytes), (out / "index.html").read_text()


@pytest.mark.parametrize(
    "far_away",
    [
        datetime(1, 1, 1, tzinfo=UTC),  # a year-1 typo: once a bar per day since year 1
        datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC),  # a terminal's clock reset
    ],
    ids=["year-1", "1970"],
)
def test_report_with_a_far_timestamp_is_quick_and_lists_it_apart(
    far_away: datetime, tmp_path: Path
) -> None:
    alerts = [
        make_alert(0, first_seen=T_NOW),
        make_alert(1, first_seen=T_NOW + timedelta(hours=5)),
        make_alert(2, first_seen=far_away, merchant="M-CLOCK"),
    ]
    elapsed, megabytes, html = timed_report(alerts_file(tmp_path / "a.jsonl", alerts), tmp_path)
    assert elapsed < 20, f"{elapsed:.1f} s"  # 25 s to over 90 s before; a few on a shared box
    assert megabytes < 400, f"{megabytes} MB"  # 316 MB to 1.3 GB before
    far = html.split("far from the rest in time")[1].split("</table>")[0]
    assert "M-CLOCK" in far and f"{far_away.isoformat(' ', 'seconds')[:19]} UTC" in far
    assert "M-01" not in far


def test_time_bins_stay_within_the_cap_for_any_range() -> None:
    assert time_bins(T_NOW, T_NOW + timedelta(days=3))[1:] == (timedelta(hours=1), 73, "hour")
    assert time_bins(T_NOW, T_NOW + timedelta(days=300))[3] == "day"
    start = datetime(1, 1, 1, tzinfo=UTC)
    for end in (T_NOW, datetime(9999, 12, 31, 23, 59, tzinfo=UTC), start + timedelta(days=400)):
        origin, step, bins, _ = time_bins(start, end)
        assert bins <= MAX_BARS
        assert origin <= start and end - origin < bins * step  # every alert in a bin


def test_report_spread_over_decades_without_outliers_is_bounded(tmp_path: Path) -> None:
    start = datetime(1971, 1, 1, tzinfo=UTC)
    alerts = [make_alert(i, first_seen=start + timedelta(days=100 * i)) for i in range(200)]
    page = build_report(alerts_file(tmp_path / "a.jsonl", alerts), tmp_path / "out")
    assert "far from the rest" not in page.read_text()  # an even spread has no outliers
    figure = chart_over_time(alerts)
    assert figure is not None
    assert len(figure.axes[0].patches) <= MAX_BARS  # one bar a bin: about 20,000 days here


def test_report_refuses_an_amount_it_cannot_draw_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = json.loads(make_alert(1).model_dump_json())
    big["amount_at_risk_minor"] = int("9" * 400)
    path = alerts_file(tmp_path / "a.jsonl", [make_alert()], [json.dumps(big) + "\n"])
    with pytest.raises(ReportError, match=r"a\.jsonl:2: .*amount_at_risk_minor"):
        build_report(path, tmp_path / "out")
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "a.jsonl:2" in line and "9999" not in line


def test_report_refuses_a_time_before_year_1_in_utc(tmp_path: Path) -> None:
    early = json.loads(make_alert(1).model_dump_json())
    early["first_seen"] = "0001-01-01T00:00:00+01:00"  # valid, but 31 Dec of year 0 in UTC
    path = alerts_file(tmp_path / "a.jsonl", [make_alert()], [json.dumps(early) + "\n"])
    with pytest.raises(ReportError, match=r"a\.jsonl:2: .*first_seen"):
        build_report(path, tmp_path / "out")


def test_report_leaves_infinite_scores_out_of_the_histogram(tmp_path: Path) -> None:
    lines = [
        make_alert(i).model_dump_json().replace('"score":null', f'"score":{s}') + "\n"
        for i, s in enumerate(["0.5", "1e400", "-1e400", "0.7"])
    ]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(lines))
    page = build_report(path, tmp_path / "out")  # numpy's histogram refuses infinite values
    assert (page.parent / "scores.png").exists()
    figure = chart_scores(load_alerts(path))
    assert figure is not None
    assert figure.axes[0].get_title() == "Model score distribution (2 scored alerts)"


def test_report_error_shows_a_hostile_field_name_as_data(tmp_path: Path) -> None:
    line = json.loads(make_alert().model_dump_json())
    line["\x1b]8;;https://evil\x1b\\x"] = 1
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ReportError) as caught:
        build_report(path, tmp_path / "out")
    assert "\x1b" not in str(caught.value) and "\\x1b]8;;https://evil" in str(caught.value)
