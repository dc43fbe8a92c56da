"""The alert as consumers rely on it: the replay of the reference day gives the same alerts as
before the detectors moved behind one interface, and money travels in typed fields.

The digest pins every alert line `posmon replay` writes for `posmon simulate --hours 26 --seed 7`
(in order, each as canonical JSON), without the two fields added since: `amount_at_risk_minor`
and `currency`. Those are pinned by their own rule below. If a change of a rule is intended,
the digest changes with docs/detectors.md and the CHANGELOG, on purpose.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from monitor.cli.main import main
from monitor.core.alerts import Alert

REFERENCE_DAY_DIGEST = "2dd8586fba5b0528af43c94baf55f9d774dbae36563348c6b3b08435d05b3696"
MONEY_DETECTORS = {"failed_then_debited", "duplicate_debit"}
NO_CURRENCY = {"terminal_failure_spike"}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The alert lines of `posmon replay` on the reference day, through the command itself."""
    root = tmp_path_factory.mktemp("reference-day")
    events, alerts = root / "events.jsonl", root / "alerts.jsonl"
    assert main(["simulate", "--out", str(events), "--hours", "26", "--seed", "7"]) == 0
    assert main(["replay", str(events), "--alerts", str(alerts), "--quiet"]) == 0
    return alerts.read_text().splitlines()


def _digest(lines: list[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        alert = json.loads(line)
        alert.pop("amount_at_risk_minor")
        alert.pop("currency")
        digest.update(json.dumps(alert, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def test_the_reference_day_gives_the_same_alerts(replayed: list[str]) -> None:
    assert len(replayed) == 60
    assert _digest(replayed) == REFERENCE_DAY_DIGEST


def test_money_rules_carry_the_amount_at_risk_and_every_amount_rule_its_currency(
    replayed: list[str],
) -> None:
    alerts = [Alert.model_validate_json(line) for line in replayed]
    assert {a.detector for a in alerts} >= MONEY_DETECTORS | NO_CURRENCY
    for alert in alerts:
        if alert.detector in MONEY_DETECTORS:
            assert alert.amount_at_risk_minor == alert.details["debited_minor"]
            assert alert.amount_at_risk_minor is not None and alert.amount_at_risk_minor > 0
        else:
            assert alert.amount_at_risk_minor is None
        if alert.detector in NO_CURRENCY:
            assert alert.currency is None
        else:
            assert alert.currency is not None
            assert alert.currency == alert.details["currency"]


def test_the_alert_schema_names_the_money_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "alert"]) == 0
    properties = json.loads(capsys.readouterr().out)["properties"]
    assert {"amount_at_risk_minor", "currency"} <= set(properties)


def test_an_alert_written_before_the_money_fields_still_reads(replayed: list[str]) -> None:
    """Additive change: an alert already on the topic without the fields is still an alert."""
    old = json.loads(replayed[0])
    del old["amount_at_risk_minor"], old["currency"]
    alert = Alert.model_validate_json(json.dumps(old))
    assert alert.amount_at_risk_minor is None and alert.currency is None
