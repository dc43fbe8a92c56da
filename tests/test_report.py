"""`posmon report`: a report built from a real replay of simulated traffic, checked against the
alerts it came from (counts, money, escaping, no card numbers)."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.core.alerts import Alert, alert_id
from monitor.core.text import money
from monitor.report import ReportError, build_report
from monitor.report.data import money_at_risk
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec
from tests.fake_services import make_alert

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
INJECTED_SUMMARY = 'Card tok_ab..cd debited <script>alert("x")</script> & more'


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The alerts and dead letters files of a 26 h replay, plus one injected critical alert."""
    root = tmp_path_factory.mktemp("replay")
    lines = Simulation(SimulationSpec(seed=7, hours=26, merchants=12)).lines()
    sink, _ = replay_messages(lines, Scorer(Policy()))
    assert sink.dead_letters, "the simulation injects malformed lines"
    injected = Alert(
        alert_id=alert_id("failed_then_debited", "injected"),
        detector="failed_then_debited",
        severity="critical",
        terminal_id="T<b>99",
        merchant_id="M<i>99",
        card_id="tok_abcdef0123456789cd",
        first_seen=datetime(2026, 11, 3, 9, 0, tzinfo=UTC),
        last_seen=datetime(2026, 11, 3, 10, 0, tzinfo=UTC),  # the newest critical alert
        event_ids=["evt_1", "evt_2"],
        count=1,
        summary=INJECTED_SUMMARY,
        details={"debited_minor": 123_456, "currency": "JPY"},
        amount_at_risk_minor=123_456,
        currency="JPY",
    )
    alerts = root / "alerts.jsonl"
    alerts.write_text("".join(a.model_dump_json() + "\n" for a in [*sink.alerts, injected]))
    dlq = root / "alerts.dlq.jsonl"
    dlq.write_text("".join(json.dumps(r.as_dead_letter()) + "\n" for r in sink.dead_letters))
    return alerts, dlq


@pytest.fixture(scope="module")
def final(replay: tuple[Path, Path]) -> dict[str, Alert]:
    """Each alert id's last line, read independently of the report."""
    out: dict[str, Alert] = {}
    for line in replay[0].read_text().splitlines():
        alert = Alert.model_validate_json(line)
        out[alert.alert_id] = alert
    return out


@pytest.fixture(scope="module")
def page(replay: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "nested" / "out"
    return build_report(replay[0], out, dead_letters=replay[1], title="Backtest <seed 7>")


def test_page_references_every_png_and_each_is_valid(page: Path) -> None:
    assert page == page.parent / "index.html"
    html = page.read_text()
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    assert len(pngs) >= 6  # over time, money, merchants, terminals, severity, dead letters
    assert "scores.png" not in pngs
    assert "no model scores in this replay" in html.lower()
    referenced = set(re.findall(r'src="([^"]+)"', html))
    assert referenced == set(pngs)  # every one written is shown, relatively, none missing
    for name in pngs:
        data = (page.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5_000, name


def test_detector_table_counts_distinct_alert_ids(page: Path, final: dict[str, Alert]) -> None:
    html = page.read_text()
    table = html.split("<h2>Alerts by detector</h2>")[1].split("</table>")[0]
    shown = dict(re.findall(r"<tr><td>(\w+)</td><td class=\"n\">([\d,]+)</td>", table))
    expected = Counter(a.detector for a in final.values())
    assert len(expected) >= 5
    assert shown == {d: f"{n:,}" for d, n in expected.items()}


def test_money_table_matches_the_alerts(page: Path, final: dict[str, Alert]) -> None:
    totals: Counter[str] = Counter()
    for a in final.values():
        if a.detector in ("failed_then_debited", "duplicate_debit"):
            debited, currency = a.details["debited_minor"], a.details["currency"]
            assert isinstance(debited, int)
            assert isinstance(currency, str)
            totals[currency] += debited
    assert totals["JPY"] >= 123_456
    html = page.read_text()
    table = html.split("<h2>Money at risk</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([A-Z]{3})</td>((?:<td[^>]*>[^<]*</td>)+)</tr>", table)
    shown = {cur: re.findall(r">([^<]*)</td>", cells)[2] for cur, cells in rows}  # total column
    assert shown == {cur: money(n, cur) for cur, n in totals.items()}


def test_summaries_and_ids_are_escaped(page: Path) -> None:
    html = page.read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in html
    assert "M&lt;i&gt;99" in html
    assert "<title>Backtest &lt;seed 7&gt;</title>" in html
    recent = html.split("Most recent critical alerts")[1]
    newest_row = recent.split("<tbody><tr>")[1].split("</tr>")[0]
    assert "M&lt;i&gt;99" in newest_row  # the newest critical alert comes first
    assert recent.count("<tr>") - 1 <= 20


def test_no_card_number_reaches_the_page(page: Path) -> None:
    html = page.read_text()
    assert not re.search(r"(?<!\d)\d{13,19}(?!\d)", html)
    assert not re.search(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])", html)


def test_missing_or_invalid_input_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such file"):
        build_report(tmp_path / "absent.jsonl", tmp_path / "out")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"alert_id": "nope"}\n')
    with pytest.raises(ReportError, match=r"bad\.jsonl:1"):
        build_report(bad, tmp_path / "out")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ReportError, match="no such file"):
        build_report(empty, tmp_path / "out", dead_letters=tmp_path / "absent.dlq.jsonl")


def test_an_empty_replay_gives_a_page_without_charts(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    page = build_report(empty, tmp_path / "out")
    assert "The replay raised no alerts." in page.read_text()
    assert not list(page.parent.glob("*.png"))


def test_model_scores_get_a_histogram(replay: tuple[Path, Path], tmp_path: Path) -> None:
    scored = [
        Alert.model_validate_json(line).model_copy(
            update={"score": i / 10, "model_version": "iforest-1"}
        )
        for i, line in enumerate(replay[0].read_text().splitlines())
    ]
    alerts = tmp_path / "scored.jsonl"
    alerts.write_text("".join(a.model_dump_json() + "\n" for a in scored))
    page = build_report(alerts, tmp_path / "out")
    assert 'src="scores.png"' in page.read_text()
    assert (page.parent / "scores.png").read_bytes().startswith(PNG_MAGIC)
    assert not (page.parent / "dead_letters.png").exists()  # no --dlq, no chart


def test_money_at_risk_is_read_from_the_alerts_typed_fields_only() -> None:
    typed = make_alert().model_copy(update={"details": {}})  # 35.00 EUR at risk, no details
    untyped = make_alert(1).model_copy(update={"amount_at_risk_minor": None, "currency": None})
    [row] = money_at_risk([typed, untyped])
    assert (row.currency, row.total) == ("EUR", 3500)
