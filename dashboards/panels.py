"""The shapes of posmon's Grafana panels, built with Grafana's SDK (grafana-foundation-sdk).

Every panel and every query reads Prometheus through the dashboard's `${datasource}` variable,
whose default is the provisioned data source (dashboards/provisioning/datasources.yaml): no
other data source uid is written anywhere. `dashboard` lays the panels out in the order given
and numbers them in that order.

The dashboards are the SDK's classic dashboard model (the JSON that Grafana's file provisioning
loads and the tests read), not its v2 resources: importing it raises a DeprecationWarning,
hidden by Python unless asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, Self, TypeAlias, TypeVar

from grafana_foundation_sdk.builders import bargauge as bargauge_panel
from grafana_foundation_sdk.builders import common as viz
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.builders import stat as stat_panel
from grafana_foundation_sdk.builders import table as table_panel
from grafana_foundation_sdk.builders import timeseries as timeseries_panel
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DatasourceVariable,
    FieldColor,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.cog import builder as cog
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

PROVISIONED_UID = "posmon-prometheus"  # dashboards/provisioning/datasources.yaml
DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="${datasource}")
# The properties of a second series drawn against a right-hand axis, as a count.
RIGHT_AXIS = [
    model.DynamicConfigValue(id_val="unit", value="short"),
    model.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
]

Item: TypeAlias = cog.Builder[model.Panel] | Row


class _Panel(Protocol):
    """What every panel builder of the SDK has (each kind of panel is a class of its own)."""

    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: common.DataSourceRef) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def span(self, w: int) -> Self: ...
    def height(self, h: int) -> Self: ...
    def with_target(self, target: cog.Builder[variants.Dataquery]) -> Self: ...


P = TypeVar("P", bound=_Panel)


def query(
    expr: str, legend: str = "__auto", *, instant: bool = False, fmt: PromQueryFormat | None = None
) -> prometheus.Dataquery:
    """One PromQL query, over the time range unless `instant` (the latest value only)."""
    target = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)
    target = target.instant() if instant else target.range()
    return target if fmt is None else target.format(fmt)


def table_query(expr: str) -> prometheus.Dataquery:
    return query(expr, instant=True, fmt=PromQueryFormat.TABLE)


def panel(
    builder: P,
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    size: tuple[int, int],
) -> P:
    """What every panel has: title, description, unit, size (width, height in grid units) and
    its queries (refId A, B, ...), in the `${datasource}` data source."""
    width, height = size
    builder = builder.title(title).description(description).datasource(DATASOURCE).unit(unit)
    builder = builder.span(width).height(height)
    for index, target in enumerate(queries):
        builder = builder.with_target(target.ref_id(chr(ord("A") + index)))
    return builder


def thresholds(base: str, *steps: tuple[str, float]) -> ThresholdsConfig:
    """Absolute thresholds: colour `base` below the first step, then each (colour, from)."""
    levels = [model.Threshold(value=None, color=base)]
    levels += [model.Threshold(value=start, color=colour) for colour, start in steps]
    return ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(levels)


def colours(mode: model.FieldColorModeId) -> FieldColor:
    """How series are coloured: by thresholds, from a palette, ..."""
    return FieldColor().mode(mode)


def fixed(colour: str) -> FieldColor:
    return colours(model.FieldColorModeId.FIXED).fixed_color(colour)


def coloured(colour: str) -> list[model.DynamicConfigValue]:
    """The properties of an override that draws its series in one colour."""
    return [model.DynamicConfigValue(id_val="color", value=fixed(colour).build())]


def legend(*calcs: str, right: bool = False) -> viz.VizLegendOptions:
    """A table legend with `calcs` for each series, below the graph or on its right."""
    place = common.LegendPlacement.RIGHT if right else common.LegendPlacement.BOTTOM
    return (
        viz.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(place)
        .show_legend(True)
        .calcs(list(calcs))
    )


def timeseries(
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    size: tuple[int, int] = (12, 8),
    stacked: bool = False,
) -> timeseries_panel.Panel:
    """Lines over time: a table legend (mean, max), a tooltip of every series, highest first;
    `stacked` areas for the parts of a whole."""
    builder = (
        timeseries_panel.Panel()
        .legend(legend("mean", "max"))
        .tooltip(
            viz.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if stacked:
        builder = (
            builder.stacking(viz.StackingConfig().mode(common.StackingMode.NORMAL).group("A"))
            .fill_opacity(30)
            .draw_style(common.GraphDrawStyle.LINE)
            .line_width(1)
        )
    return panel(builder, title, description, unit, *queries, size=size)


def _last_value() -> viz.ReduceDataOptions:
    return viz.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def stat(
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    size: tuple[int, int] = (6, 6),
    sparkline: bool = False,
) -> stat_panel.Panel:
    """The last value in large figures, coloured; the series drawn behind it if `sparkline`."""
    graph = common.BigValueGraphMode.AREA if sparkline else common.BigValueGraphMode.NONE
    builder = (
        stat_panel.Panel()
        .reduce_options(_last_value())
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(graph)
        .text_mode(common.BigValueTextMode.AUTO)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
    )
    return panel(builder, title, description, unit, *queries, size=size)


def bargauge(
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    size: tuple[int, int],
    basic: bool = False,
) -> bargauge_panel.Panel:
    """A horizontal bar per series (its last value): gradient bars, or plain ones if `basic`."""
    mode = common.BarGaugeDisplayMode.BASIC if basic else common.BarGaugeDisplayMode.GRADIENT
    builder = (
        bargauge_panel.Panel()
        .reduce_options(_last_value())
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(mode)
        .show_unfilled(True)
    )
    return panel(builder, title, description, unit, *queries, size=size)


def table(
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    size: tuple[int, int],
) -> table_panel.Panel:
    """A table of `table_query`s, without a footer."""
    builder = (
        table_panel.Panel()
        .show_header(True)
        .footer(viz.TableFooterOptions().show(False).reducer(["sum"]))
    )
    return panel(builder, title, description, unit, *queries, size=size)


def row(title: str) -> Row:
    """A heading across the dashboard over the panels that follow it (never collapsed)."""
    return Row(title)


def transformation(kind: str, **options: object) -> model.DataTransformerConfig:
    return model.DataTransformerConfig(id_val=kind, options=options)


def _datasource_variable() -> DatasourceVariable:
    """`${datasource}`: any Prometheus, the provisioned one by default."""
    variable = (
        DatasourceVariable("datasource")
        .label("Prometheus")
        .type("prometheus")
        .current(
            model.VariableOption(selected=False, text="posmon Prometheus", value=PROVISIONED_UID)
        )
        .hide(model.VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
        .regex("")
    )
    # Its list of data sources, read when the dashboard loads, as Grafana saves it (the builder
    # has no setter for these two; `build` hands out the variable it is building).
    variable.build().refresh = model.VariableRefresh.ON_DASHBOARD_LOAD
    variable.build().options = []
    return variable


def _annotations() -> AnnotationQuery:
    """Grafana's own annotations and alerts, as in any new dashboard."""
    return (
        AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(common.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .type("dashboard")
        .built_in(1)
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
    )


def dashboard(
    uid: str, title: str, description: str, tags: list[str], items: Iterable[Item]
) -> model.Dashboard:
    """A dashboard of posmon's: UTC, the last 6 hours, refreshed every 30 s, one crosshair
    across panels; `items` laid out left to right and top to bottom, a row across the width."""
    board = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(tags)
        .version(1)
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .fiscal_year_start_month(0)
        .live_now(False)
        .links([])
        .annotation(_annotations())
        .with_variable(_datasource_variable())
    )
    for item in items:
        board = board.with_row(item) if isinstance(item, Row) else board.with_panel(item)
    built = board.build()
    for number, built_panel in enumerate(built.panels or [], start=1):
        built_panel.id_val = number
    return built


def render(board: model.Dashboard) -> str:
    """The dashboard's JSON as committed: keys sorted, 2-space indent, a final newline."""
    return JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(board) + "\n"
