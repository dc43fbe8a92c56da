"""docs/contract.md against the code: its tables must name exactly what the code has.

The contract is the page users read for the event, the alert, the detectors, the commands and the
metrics; the code links to its sections by heading. These tests parse its tables (rows starting
with `|` whose first cell is a name in backticks) and compare them with the code, so a field,
detector, command, option or series added, renamed or removed on one side fails here until the
other side follows. Each failure names what is missing and where.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from monitor.cli.main import parser
from monitor.core.alerts import DETECTORS, Alert
from monitor.core.events import WireEvent
from monitor.paging.metrics import DispatchMetrics
from monitor.scoring.metrics import CardMetrics, Metrics
from monitor.scoring.policy import Detectors

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "contract.md"
# The headings the code and the other docs link to (`docs/contract.md, "Event"`).
HEADINGS = ("Event", "Detectors", "Alert", "Commands", "Metrics", "Dead letters")
NAMED_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")
METRIC_NAME = re.compile(r"(?<![\w:])posmon_[a-z0-9_]+")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
# A link to a section: `docs/contract.md, "Event"`, `docs/contract.md ("Event")` or
# `contract.md#event`; within the contract itself, `](#event)`.
SECTION_LINK = re.compile(r'contract\.md[`)]*(?:,\s*|\s*\()"([^"]+)"|contract\.md#([a-z0-9-]+)')
INNER_LINK = re.compile(r"\]\(#([a-z0-9-]+)\)")
LINKING_FILES = (
    "*.md",
    "docs/*.md",
    "config/*",
    "monitor/**/*.py",
    "tests/**/*.py",
    "bench/**/*.py",
)
# Detectors that have no settings in the policy yet, with the severity the contract gives them.
UNSETTLED_SEVERITY = {"model_outlier": "warning"}
# The name a family's samples are exposed under, by prometheus_client type.
EXPOSED_SUFFIX = {"counter": "_total", "info": "_info"}
# Labels whose values have no bound: the contract forbids them on every series.
ID_LABELS = {"card_id", "terminal_id", "merchant_id", "event_id", "txn_ref", "alert_id"}


def _sections() -> dict[str, str]:
    """The body of every `## ` section of the contract, by heading."""
    text = PAGE.read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for chunk in re.split(r"(?m)^## ", text)[1:]:
        heading, _, body = chunk.partition("\n")
        sections[heading.strip()] = body
    return sections


def _section(heading: str) -> str:
    sections = _sections()
    assert heading in sections, f"docs/contract.md has no section '## {heading}'"
    return sections[heading]


def _rows(heading: str) -> list[list[str]]:
    """The table rows of a section whose first cell is a name in backticks, as stripped cells
    (the name without its backticks first). Header and separator rows have no such cell."""
    rows = []
    for line in _section(heading).splitlines():
        match = NAMED_ROW.match(line)
        if match:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append([match.group(1), *cells[1:]])
    assert rows, f"docs/contract.md, section '{heading}': no table row with a name in backticks"
    return rows


def _names(heading: str) -> list[str]:
    return [row[0] for row in _rows(heading)]


def _same_in_order(heading: str, documented: list[str], code: list[str], what: str) -> None:
    missing = [name for name in code if name not in documented]
    extra = [name for name in documented if name not in code]
    assert not missing, f"docs/contract.md, '{heading}' table lacks {what}: {missing}"
    assert not extra, f"docs/contract.md, '{heading}' table names {what} the code lacks: {extra}"
    assert documented == code, (
        f"docs/contract.md, '{heading}' table lists {what} out of the code's order:"
        f" {documented}, code: {code}"
    )


# -- the sections -------------------------------------------------------------------------------


def test_every_section_the_code_links_to_exists() -> None:
    headings = set(_sections())
    missing = [heading for heading in HEADINGS if heading not in headings]
    assert not missing, f"docs/contract.md lacks the sections {missing}"
    anchors = {heading.lower().replace(" ", "-") for heading in headings}
    links = [
        (path, quoted, anchor)
        for pattern in LINKING_FILES
        for path in sorted(ROOT.glob(pattern))
        for quoted, anchor in SECTION_LINK.findall(path.read_text(encoding="utf-8"))
    ]
    links += [(PAGE, "", anchor) for anchor in INNER_LINK.findall(PAGE.read_text(encoding="utf-8"))]
    broken = [
        f"{path.relative_to(ROOT)}: {quoted or '#' + anchor}"
        for path, quoted, anchor in links
        if (quoted and quoted not in headings) or (anchor and anchor not in anchors)
    ]
    assert not broken, f"links to sections docs/contract.md does not have: {broken}"


# -- the event and the alert --------------------------------------------------------------------


def test_event_table_lists_the_wire_event_fields_in_order() -> None:
    code = list(WireEvent.__annotations__)
    _same_in_order("Event", _names("Event"), code, "fields of monitor.core.events.WireEvent")


def test_alert_table_lists_the_alert_fields_in_order() -> None:
    code = list(Alert.model_fields)
    _same_in_order("Alert", _names("Alert"), code, "fields of monitor.core.alerts.Alert")


# -- detectors ----------------------------------------------------------------------------------


def test_detectors_table_lists_every_detector_in_order() -> None:
    code = list(DETECTORS)
    _same_in_order("Detectors", _names("Detectors"), code, "detectors of monitor.core.alerts")


def test_detectors_table_gives_each_detector_its_default_severity() -> None:
    settings = Detectors()
    defaults = {name: getattr(settings, name).severity for name in Detectors.model_fields}
    defaults |= UNSETTLED_SEVERITY
    for name, severity, *_ in _rows("Detectors"):
        assert name in defaults, (
            f"detector {name} has no settings in monitor.scoring.policy.Detectors and no"
            " severity in UNSETTLED_SEVERITY"
        )
        assert severity.strip("`") == defaults[name], (
            f"docs/contract.md, 'Detectors': {name} is {severity!r}, its settings default to"
            f" {defaults[name]!r}"
        )


# -- commands -----------------------------------------------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("monitor.cli.main.parser() has no subcommands")


def test_commands_table_lists_every_subcommand() -> None:
    code = set(_subcommands())
    documented = set(_names("Commands"))
    missing, extra = sorted(code - documented), sorted(documented - code)
    assert not missing, f"docs/contract.md, 'Commands' table lacks the subcommands {missing}"
    assert not extra, f"docs/contract.md, 'Commands' table names commands posmon lacks: {extra}"


def test_commands_table_lists_every_option_of_each_subcommand() -> None:
    """The usage cell names exactly the options a person can pass (hidden ones excepted)."""
    subcommands = _subcommands()
    for name, usage, *_ in _rows("Commands"):
        if name not in subcommands:
            continue  # reported by the test above
        assert f"posmon {name}" in usage, f"'Commands': the usage of {name} does not show it"
        options = {
            option
            for action in subcommands[name]._actions
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
            for option in action.option_strings
            if option.startswith("--")
        }
        documented = set(OPTION.findall(usage))
        missing, extra = sorted(options - documented), sorted(documented - options)
        assert not missing, f"docs/contract.md, 'Commands': posmon {name} lacks {missing}"
        assert not extra, f"docs/contract.md, 'Commands': posmon {name} has no option {extra}"


# -- metrics ------------------------------------------------------------------------------------


def _wrappers() -> Iterator[MetricWrapperBase]:
    """Every series object the two loops register, each on a registry of its own."""
    for build in (Metrics, CardMetrics, DispatchMetrics):
        series = build(CollectorRegistry())
        yield from (v for v in vars(series).values() if isinstance(v, MetricWrapperBase))


def _exposed() -> dict[str, set[str]]:
    """Every family the loops register, by the name it is exposed under, with its labels."""
    exposed: dict[str, set[str]] = {}
    for build in (Metrics, CardMetrics, DispatchMetrics):
        registry = CollectorRegistry()
        build(registry)
        for family in registry.collect():
            exposed[family.name + EXPOSED_SUFFIX.get(family.type, "")] = set()
    for wrapper in _wrappers():
        for family in wrapper.collect():
            labels = set(wrapper._labelnames)
            for sample in family.samples:  # an info's labels are the keys of its value
                labels |= set(sample.labels) - {"le"}
            exposed[family.name + EXPOSED_SUFFIX.get(family.type, "")] = labels
    return exposed


def test_metrics_section_names_every_registered_series() -> None:
    code = set(_exposed())
    documented = set(_names("Metrics"))
    missing = sorted(code - documented)
    assert not missing, f"docs/contract.md, 'Metrics' table lacks the series {missing}"


def test_every_series_the_metrics_section_names_exists() -> None:
    code = set(_exposed())
    named = set(METRIC_NAME.findall(_section("Metrics")))
    unknown = sorted(named - code)
    assert not unknown, f"docs/contract.md, 'Metrics' names series posmon lacks: {unknown}"


def test_metrics_table_gives_each_series_its_labels() -> None:
    code = _exposed()
    for name, _kind, labels, *_ in _rows("Metrics"):
        if name not in code:
            continue  # reported by the test above
        documented = set(re.findall(r"`([a-z_]+)`", labels))
        assert documented == code[name], (
            f"docs/contract.md, 'Metrics': {name} has labels {sorted(documented)},"
            f" the code {sorted(code[name])}"
        )


@pytest.mark.parametrize("name", sorted(_exposed()))
def test_no_series_is_labelled_by_an_id(name: str) -> None:
    labels = _exposed()[name]
    assert not labels & ID_LABELS, f"{name} is labelled by ids {sorted(labels & ID_LABELS)}"
