#!/usr/bin/env python3
"""Writes dashboards/flashgate.json, the Grafana dashboard of a flash sale, and
dashboards/alerts.yml, its Prometheus alerting rules (from alert_rules.py).

The JSON is generated so that every panel follows the same rules (a unit,
thresholds, the `${datasource}` variable, `$__rate_interval` in every rate,
queue-wide gauges aggregated with `max`); edit this file (and alert_rules.py),
not the JSON or the YAML, then run

    python3 dashboards/build_dashboard.py          # rewrite both files
    python3 dashboards/build_dashboard.py --check  # exit 1 if either is stale

Every selector of both files carries the Prometheus scrape job's matcher,
`job="flashgate"` by default: `--job NAME` (or FLASHGATE_JOB) writes them for
another job name, `--out DIR` somewhere else than dashboards/ (the checked-in
files are the default's). Alerts link their runbook in docs/runbooks.md;
`--runbooks URL` (or FLASHGATE_RUNBOOKS) points them at a published copy, e.g.
https://git.example.com/shop/flashgate/blob/main/docs/runbooks.md.

Metric names are those of SPEC §6 plus `flashgate_eta_error_seconds`,
`flashgate_queue_up`, the sale's gauges and the standard `process_*` metrics.
"""

import argparse
import json
import os
import pathlib
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
import alert_rules  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARD = "flashgate.json"
ALERTS = "alerts.yml"
DEFAULT_JOB = "flashgate"
DEFAULT_RUNBOOKS = "docs/runbooks.md"

DS = {"type": "prometheus", "uid": "${datasource}"}

# Label filters, set for the scrape job by `build()`. `http_*` and
# `process_*` metrics have no `queue` label (they are per route / instance).
J = f'job="{DEFAULT_JOB}"'
Q = f'{J}, queue=~"$queue", instance=~"$instance"'
I = f'{J}, instance=~"$instance"'
RI = "[$__rate_interval]"


def qmax(metric: str) -> str:
    """A queue-wide gauge: every instance reports the same shared queue, so
    take the max per queue; a sum would multiply it by the instance count."""
    return f"max by (queue) ({metric}{{{Q}}})"


def rate(metric: str, extra: str = "", by: str = "queue", sel: str | None = None) -> str:
    """A counter's per-second rate summed over instances (and the labels not in `by`);
    `sel` the label filter, `Q` by default (read at call time: `build` sets it)."""
    sel = Q if sel is None else sel
    matchers = f"{sel}, {extra}" if extra else sel
    group = f"sum by ({by})" if by else "sum"
    return f"{group} (rate({metric}{{{matchers}}}{RI}))"


def quantile(q: float, metric: str, extra: str = "", by: str = "queue",
             sel: str | None = None) -> str:
    sel = Q if sel is None else sel
    matchers = f"{sel}, {extra}" if extra else sel
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{matchers}}}{RI})))"


def target(expr: str, legend: str, ref: str, **extra) -> dict:
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend, "range": True}
    t.update(extra)
    return t


def thresholds(*steps, base: str = "green") -> dict:
    """steps: (value, colour) pairs, ascending, above the base colour."""
    base = [{"color": base, "value": None}]
    return {"mode": "absolute", "steps": base + [{"color": c, "value": v} for v, c in steps]}


def colour(name: str, col: str) -> dict:
    """A fixed colour for one series. `byNames` rather than `byName`: the
    schema wants matcher options to be an object."""
    return {
        "matcher": {"id": "byNames", "options": {"mode": "include", "names": [name]}},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": col}}],
    }


class Layout:
    """Hands out panel ids and grid positions, row by row."""

    def __init__(self):
        self.panels = []
        self.next_id = 1
        self.y = 0
        self.x = 0
        self.line_h = 0

    def _id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title: str):
        self._newline()
        self.panels.append({
            "type": "row", "id": self._id(), "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.line_h
            self.x = 0
            self.line_h = 0

    def add(self, panel: dict, w: int, h: int):
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.line_h = max(self.line_h, h)


def stat(title, desc, targets, unit, steps, decimals=None, mappings=None, color_mode="value",
         base="green", text_mode="value_and_name"):
    defaults = {"unit": unit, "color": {"mode": "thresholds"},
                "thresholds": thresholds(*steps, base=base),
                "mappings": mappings or []}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": desc, "datasource": DS, "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": color_mode, "graphMode": "area", "justifyMode": "auto",
            "textMode": text_mode, "orientation": "auto", "wideLayout": True,
            "showPercentChange": False,
        },
    }


def timeseries(title, desc, targets, unit, steps=(), stack=False, overrides=(), soft_min=0,
               threshold_style="off", fill=10, decimals=None):
    custom = {
        "drawStyle": "line", "lineWidth": 1, "fillOpacity": 60 if stack else fill,
        "gradientMode": "none", "showPoints": "never", "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisPlacement": "auto",
        "thresholdsStyle": {"mode": threshold_style},
        "lineInterpolation": "linear", "pointSize": 4,
        "scaleDistribution": {"type": "linear"},
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
    }
    defaults = {"unit": unit, "color": {"mode": "palette-classic"},
                "thresholds": thresholds(*steps), "custom": custom}
    if decimals is not None:
        defaults["decimals"] = decimals
    if soft_min is not None:
        custom["axisSoftMin"] = soft_min
    return {
        "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def heatmap(title, desc, targets, y_unit):
    return {
        "type": "heatmap", "title": title, "description": desc, "datasource": DS,
        "targets": targets, "maxDataPoints": 60,
        "fieldConfig": {"defaults": {
            "unit": "short", "thresholds": thresholds(),
            "custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                       "scaleDistribution": {"type": "linear"}},
        }, "overrides": []},
        "options": {
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": y_unit, "reverse": False},
            "rowsFrame": {"layout": "auto"},
            "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange",
                      "scale": "exponential", "exponent": 0.5, "steps": 64, "reverse": False},
            "cellGap": 1, "filterValues": {"le": 1e-9},
            "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
            "legend": {"show": True}, "exemplars": {"color": "rgba(255,0,255,0.7)"},
        },
    }


OUTCOME_COLOURS = {
    "admitted": "green", "duplicate": "blue", "rate_limited": "orange",
    "queue_full": "red", "sold_out": "purple", "not_open": "yellow", "rejected": "dark-red",
    "unavailable": "dark-orange", "quota_exceeded": "light-orange", "unknown_product": "light-red",
    "pow_failed": "super-light-red",
}
POW_COLOURS = {"required": "yellow", "invalid": "red", "expired": "blue",
               "insufficient": "orange", "reused": "purple"}
DISPATCH_COLOURS = {"completed": "green", "retried": "orange", "failed": "red",
                    "dead_lettered": "dark-red"}
CLASS_COLOURS = {"2xx": "green", "3xx": "blue", "4xx": "yellow", "5xx": "red", "error": "dark-red"}


def flag(states: dict) -> list:
    """Value mappings of a 0/1 gauge: text and colour for each."""
    return [{"type": "value", "options": {
        str(v): {"text": text, "color": col, "index": v} for v, (text, col) in states.items()}}]


def build(job: str = DEFAULT_JOB) -> dict:
    global J, Q, I
    J = f'job="{job}"'
    Q = f'{J}, queue=~"$queue", instance=~"$instance"'
    I = f'{J}, instance=~"$instance"'
    L = Layout()

    # ---- Sale at a glance -------------------------------------------------
    L.row("Sale at a glance")
    L.add(stat(
        "Admitted / s",
        "Requests admitted into the queue per second, all instances.",
        [target(rate("flashgate_admissions_total", 'outcome="admitted"', by=""),
                "admitted", "A")],
        "reqps", [], decimals=1), 4, 5)
    L.add(stat(
        "Queue depth",
        "Tickets admitted and not yet dispatched, per queue (queue-wide gauge: max over instances).",
        [target(qmax("flashgate_queue_depth"), "{{queue}}", "A")],
        "short", [(1000, "yellow"), (10000, "red")]), 4, 5)
    L.add(stat(
        "Estimated wait for a new arrival",
        "Queue depth divided by the governed drain rate: how long a request admitted now "
        "waits before it is sent upstream. +Inf means the queue is paused (drain rate 0).",
        [target(f'{qmax("flashgate_queue_depth")} / {qmax("flashgate_drain_rate_limit")}',
                "{{queue}}", "A")],
        "s", [(300, "yellow"), (900, "red")]), 4, 5)
    L.add(stat(
        "Drain rate vs limit",
        "Requests sent upstream per second (every attempt, retries included: each spends a "
        "drain permit) next to the governed rate. Below the limit while the queue is non-empty "
        "means the upstream or max-in-flight is the bottleneck.",
        [target(rate("flashgate_upstream_responses_total"), "sent {{queue}}", "A"),
         target(qmax("flashgate_drain_rate_limit"), "limit {{queue}}", "B")],
        "reqps", [], decimals=1, color_mode="none"), 4, 5)
    L.add(stat(
        "Upstream error ratio",
        "Share of upstream attempts that ended in 5xx or no answer (connect error, timeout). "
        "They are retried, but each one spends a drain permit.",
        [target(rate("flashgate_upstream_responses_total", 'code_class=~"5xx|error"', by="")
                + " / clamp_min("
                + rate("flashgate_upstream_responses_total", by="") + ", 1e-9)",
                "errors", "A")],
        "percentunit", [(0.01, "yellow"), (0.05, "red")], decimals=2), 4, 5)
    L.add(stat(
        "Admission p99",
        "99th percentile time to answer an admission on the public listener.",
        [target(quantile(0.99, "flashgate_http_request_duration_seconds", 'route="admission"',
                         by="", sel=I), "p99", "A")],
        "s", [(0.05, "yellow"), (0.25, "red")]), 4, 5)

    # ---- Sale state -------------------------------------------------------
    L.row("Sale state")
    L.add(stat(
        "Stock left",
        "Stock not yet admitted: the stock in force (configured, or set at run time) minus "
        "the admissions so far. No value while the stock is unlimited. A fair sale adds each "
        "configured product's units left (queue product). Queue-wide gauges: max over "
        "instances.",
        [target(qmax("flashgate_stock_left"), "{{queue}}", "A"),
         target(f"max by (queue, product) (flashgate_product_stock_left{{{Q}}})",
                "{{queue}} {{product}}", "B")],
        "short", [(1, "yellow"), (100, "green")], base="red"), 6, 5)
    L.add(stat(
        "Sale phase",
        "Where the sale is: not_open (before opens_at: 503 sale_not_open), prequeue "
        "(admitted in a random place in line, drained from the opening), open, closed "
        "(after closes_at or closed by an operator: 410 sale_closed).",
        [target(f'max by (queue, phase) (flashgate_sale_phase{{{Q}}}) == 1',
                "{{queue}}: {{phase}}", "A")],
        "none", [], color_mode="none", text_mode="name"), 6, 5)
    L.add(stat(
        "Paused",
        "PAUSED: nothing is sent upstream (admissions go on). Set with PATCH "
        "/admin/queues/{name} {\"paused\": true} or flashgate admin set NAME --pause.",
        [target(qmax("flashgate_queue_paused"), "{{queue}}", "A")],
        "none", [(1, "orange")],
        mappings=flag({0: ("running", "green"), 1: ("PAUSED", "orange")}),
        color_mode="background"), 6, 5)
    L.add(stat(
        "Sold out",
        "SOLD OUT: admissions get 410 sold_out and waiting tickets fail unsent; set when the "
        "stock runs out, the order service answers a sold-out status, or by an operator.",
        [target(qmax("flashgate_queue_sold_out"), "{{queue}}", "A")],
        "none", [(1, "purple")],
        mappings=flag({0: ("selling", "green"), 1: ("SOLD OUT", "purple")}),
        color_mode="background"), 6, 5)

    # ---- Admission ----------------------------------------------------------
    L.row("Admission")
    L.add(timeseries(
        "Admission requests by outcome",
        "Every admission decision per second, stacked. admitted = got a ticket; duplicate = "
        "Idempotency-Key replay; rate_limited = per-client limit (429); queue_full = capacity "
        "(503); sold_out = stock exhausted (410); not_open = before opens-at (503); rejected = "
        "malformed, too large or key reused; unavailable = the queue backend did not confirm "
        "the write (503); a fair sale's quota_exceeded = a customer over per_client_max (429, "
        "it will not pass later) and unknown_product = a product the sale does not sell (404).",
        [target(rate("flashgate_admissions_total", by="outcome"), "{{outcome}}", "A")],
        "reqps", stack=True,
        overrides=[colour(k, v) for k, v in OUTCOME_COLOURS.items()]), 12, 8)
    L.add(timeseries(
        "Admission latency",
        "Time to answer an admission (route=admission), all instances.",
        [target(quantile(q, "flashgate_http_request_duration_seconds", 'route="admission"',
                         by="", sel=I), f"p{int(q * 100)}", ref)
         for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))],
        "s", [(0.25, "red")], threshold_style="line"), 12, 8)
    L.add(timeseries(
        "Public listener answers by route and code",
        "Every answer of the public listener: admissions, ticket polls, passthrough and other "
        "paths, by HTTP status.",
        [target(f'sum by (route, code) (rate(flashgate_http_requests_total{{{I}}}{RI}))',
                "{{route}} {{code}}", "A")],
        "reqps", stack=True), 12, 8)
    L.add(timeseries(
        "Refused admissions",
        "Share of admission requests answered 503 queue_full (the queue holds max_queue "
        "tickets) or 503 unavailable (the queue backend did not confirm the write): "
        "customers without a ticket who must retry. The FlashgateAdmissionsRefused alert "
        "fires above 5 %.",
        [target(f'sum by (queue, outcome) (rate(flashgate_admissions_total{{{Q}, '
                f'outcome=~"queue_full|unavailable"}}{RI})) / ignoring (outcome) group_left () '
                f'clamp_min(sum by (queue) (rate(flashgate_admissions_total{{{Q}}}{RI})), 1e-9)',
                "{{outcome}} {{queue}}", "A")],
        "percentunit", [(0.05, "red")], threshold_style="line",
        overrides=[colour(k, OUTCOME_COLOURS[k]) for k in ("queue_full", "unavailable")]),
        12, 8)
    L.add(timeseries(
        "Challenge failures",
        "Admissions refused for their proof of work (pow_difficulty > 0), per second by "
        "reason: required = no Flashgate-Pow header; invalid = forged, another client's or a "
        "wrong nonce; expired; insufficient = issued below a difficulty raised since; reused "
        "= a solution replayed. A flood of required/invalid is bots paying nothing; many "
        "expired or insufficient are people whose browsers solve too slowly. The "
        "FlashgateChallengeFailures alert fires when over half of the admissions fail.",
        [target(rate("flashgate_pow_failures_total", by="reason"), "{{reason}}", "A")],
        "reqps", stack=True,
        overrides=[colour(k, v) for k, v in POW_COLOURS.items()]), 12, 8)

    # ---- Queue ------------------------------------------------------------
    L.row("Queue")
    L.add(timeseries(
        "Depth and in flight",
        "Queued = admitted, not yet dispatched; in flight = dispatched, not yet finished. "
        "Queue-wide gauges, max over instances.",
        [target(qmax("flashgate_queue_depth"), "queued {{queue}}", "A"),
         target(qmax("flashgate_queue_in_flight"), "in flight {{queue}}", "B")],
        "short"), 8, 8)
    L.add(timeseries(
        "Oldest ticket age",
        "Age of the oldest ticket not yet dispatched. Growing steadily means the drain does "
        "not keep up (or is paused).",
        [target(qmax("flashgate_queue_oldest_age_seconds"), "{{queue}}", "A")],
        "s", [(600, "red")], threshold_style="line"), 8, 8)
    L.add(stat(
        "Queue backend reachable",
        "Did the queue backend (Redis) answer the last gauge refresh? Lowest over instances: "
        "one instance that lost Redis shows DOWN.",
        [target(f'min by (queue) (flashgate_queue_up{{{Q}}})', "{{queue}}", "A")],
        "none", [(1, "green")],
        mappings=[{"type": "value", "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1}}}],
        color_mode="background", base="red"), 8, 8)
    L.add(timeseries(
        "Queue wait percentiles",
        "Time from admission to first dispatch, of the tickets dispatched in the window.",
        [target(quantile(q, "flashgate_queue_wait_seconds"), f"p{int(q * 100)} {{{{queue}}}}", ref)
         for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))],
        "s"), 8, 8)
    L.add(timeseries(
        "ETA accuracy (actual − promised wait)",
        "Real wait minus the eta_seconds promised at admission, per dispatched ticket. "
        "Positive = later than promised; near 0 = honest estimates. Percentiles of the error.",
        [target(quantile(q, "flashgate_eta_error_seconds"), f"p{int(q * 100)} {{{{queue}}}}", ref)
         for q, ref in ((0.1, "A"), (0.5, "B"), (0.9, "C"))]
        + [target(f'sum by (queue) (rate(flashgate_eta_error_seconds_sum{{{Q}}}{RI})) / '
                  f'sum by (queue) (rate(flashgate_eta_error_seconds_count{{{Q}}}{RI}))',
                  "mean {{queue}}", "D")],
        "s", [(60, "yellow"), (300, "red")], soft_min=None), 8, 8)
    L.add(timeseries(
        "Arrivals vs departures",
        "Admitted per second against tickets leaving the queue per second (first dispatches). "
        "While arrivals exceed departures the backlog grows.",
        [target(rate("flashgate_admissions_total", 'outcome="admitted"'), "admitted {{queue}}", "A"),
         target(f'sum by (queue) (rate(flashgate_queue_wait_seconds_count{{{Q}}}{RI}))',
                "dispatched {{queue}}", "B")],
        "reqps"), 8, 8)
    L.add(timeseries(
        "Work stream: consumer group lag",
        "Entries of the queue's work stream each consumer group has not read yet: flashgate "
        "(the gateway's own drain) and the groups of other services reading the admitted "
        "requests. Finished entries are kept for them up to stream_retention; \"trimmed "
        "unread\" counts entries trimmed by the retention before every group had finished them "
        "(lost to a lagging group).",
        [target(f'max by (queue, group) (flashgate_stream_group_lag{{{Q}}})',
                "{{group}} {{queue}}", "A"),
         target(f'sum by (queue) (increase(flashgate_stream_retention_trimmed_total{{{Q}}}{RI}))',
                "trimmed unread {{queue}}", "B")],
        "short", [(1000, "yellow")]), 8, 8)

    # ---- Drain & upstream ---------------------------------------------------
    L.row("Drain & upstream")
    L.add(timeseries(
        "Dispatch outcomes",
        "completed = the upstream gave a final answer; retried = an attempt to be repeated; "
        "failed = attempts exhausted (also dead-lettered); dead_lettered = moved to the dead "
        "stream.",
        [target(rate("flashgate_dispatches_total", by="outcome"), "{{outcome}}", "A")],
        "ops", stack=True,
        overrides=[colour(k, v) for k, v in DISPATCH_COLOURS.items()]), 8, 8)
    L.add(timeseries(
        "Observed vs governed drain rate",
        "Upstream attempts per second across all instances against the governed rate "
        "(flashgate_drain_rate_limit). The observed line should sit on the limit while a "
        "backlog exists.",
        [target(rate("flashgate_upstream_responses_total"), "sent {{queue}}", "A"),
         target(qmax("flashgate_drain_rate_limit"), "limit {{queue}}", "B")],
        "reqps"), 8, 8)
    L.add(timeseries(
        "Upstream response classes",
        "Upstream answers per second by status class; error = no answer (connect error, "
        "timeout, broken body).",
        [target(rate("flashgate_upstream_responses_total", by="code_class"), "{{code_class}}", "A")],
        "reqps", stack=True,
        overrides=[colour(k, v) for k, v in CLASS_COLOURS.items()]), 8, 8)
    L.add(timeseries(
        "Upstream latency",
        "Duration of one upstream attempt.",
        [target(quantile(q, "flashgate_upstream_request_duration_seconds", by=""),
                f"p{int(q * 100)}", ref)
         for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))],
        "s", [(1, "yellow"), (5, "red")]), 8, 8)
    L.add(heatmap(
        "Upstream latency distribution",
        "Upstream attempts per latency bucket over time.",
        [target(f'sum by (le) (increase(flashgate_upstream_request_duration_seconds_bucket{{{Q}}}{RI}))',
                "{{le}}", "A", format="heatmap")],
        "s"), 8, 8)
    L.add(timeseries(
        "Retries and dead letters",
        "Retried attempts and dead-lettered tickets per second. Any dead letter is a customer "
        "whose checkout did not reach the order service: see the dead stream.",
        [target(rate("flashgate_dispatches_total", 'outcome="retried"'), "retried {{queue}}", "A"),
         target(rate("flashgate_dispatches_total", 'outcome="dead_lettered"'),
                "dead-lettered {{queue}}", "B")],
        "ops"), 8, 8)

    # ---- Clients ------------------------------------------------------------
    L.row("Clients")
    L.add(timeseries(
        "Waiting clients",
        "Long-polls, event streams and Prefer: wait admissions held open now, over all "
        "instances. They cost no queue-backend call until their ticket changes.",
        [target(f'sum by (queue) (flashgate_ticket_waiters{{{Q}}})', "{{queue}}", "A")],
        "short"), 12, 8)
    L.add(timeseries(
        "Cancellations",
        "Tickets cancelled by their clients (DELETE /tickets/{id}) and cancelled entries the "
        "drain removed unsent.",
        [target(rate("flashgate_tickets_cancelled_total"), "cancelled {{queue}}", "A"),
         target(rate("flashgate_drain_skipped_total", 'reason="cancelled"'),
                "skipped by the drain {{queue}}", "B")],
        "ops"), 12, 8)

    # ---- Process ------------------------------------------------------------
    L.row("Process")
    L.add(timeseries(
        "CPU",
        "CPU time per second of each gateway process (1 = one core busy).",
        [target(f'rate(process_cpu_seconds_total{{{I}}}{RI})', "{{instance}}", "A")],
        "percentunit", [(0.8, "red")]), 6, 7)
    L.add(timeseries(
        "Resident memory",
        "Resident set size of each gateway process.",
        [target(f'process_resident_memory_bytes{{{I}}}', "{{instance}}", "A")],
        "bytes"), 6, 7)
    L.add(timeseries(
        "File descriptors",
        "Open file descriptors (mostly sockets) against the process limit.",
        [target(f'process_open_fds{{{I}}}', "open {{instance}}", "A"),
         target(f'process_max_fds{{{I}}}', "limit {{instance}}", "B")],
        "short"), 6, 7)
    L.add(stat(
        "Instances by version",
        "Gateway instances scraped, by build version.",
        [target(f'count by (version) (flashgate_build_info{{{I}}})', "{{version}}", "A")],
        "short", []), 6, 7)
    L.add(timeseries(
        "File descriptors used",
        "Open file descriptors as a share of the process limit. At the limit, accept "
        "fails and upstream calls fail; the FlashgateFileDescriptorsNearLimit alert fires "
        "above 80 %.",
        [target(f'process_open_fds{{{I}}} / process_max_fds{{{I}}}', "{{instance}}", "A")],
        "percentunit", [(0.8, "red")], threshold_style="line"), 12, 7)
    L.add(timeseries(
        "Connections shed",
        "Public connections per second answered 503 and closed unread because "
        "--max-connections were open (also counted as route other, code 503 above). The "
        "FlashgateConnectionsShed alert fires when this stays above 0.",
        [target(f'sum by (instance) (rate(flashgate_connections_shed_total{{{I}}}{RI}))',
                "{{instance}}", "A")],
        "cps", [(0.001, "red")], threshold_style="line"), 12, 7)
    L.add(timeseries(
        "Redis primary (Sentinel)",
        "With redis+sentinel://: how many instances use each Redis primary (by address), as "
        "Sentinel named it last. One line = every instance agrees; two lines at once = "
        "instances write to different primaries (the FlashgateRedisPrimariesDiffer alert). "
        "No series without Sentinel.",
        [target(f'count by (address) (flashgate_redis_primary{{{I}}} == 1)', "{{address}}", "A")],
        "short", decimals=0), 12, 7)
    L.add(timeseries(
        "Redis failovers followed",
        "Switches to another Redis primary named by Sentinel, per instance (each instance "
        "counts its own switch). The FlashgateRedisFailover alert fires on any.",
        [target(f'sum by (instance) (increase(flashgate_redis_failovers_total{{{I}}}{RI}))',
                "{{instance}}", "A")],
        "short", [(1, "orange")], threshold_style="line", decimals=0), 12, 7)

    templating = [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
         "current": {"text": "Prometheus", "value": "Prometheus"}, "hide": 0, "refresh": 1,
         "regex": "", "options": [], "includeAll": False, "multi": False},
        {"type": "query", "name": "instance", "label": "Instance", "datasource": DS,
         "query": f"label_values(flashgate_build_info{{{J}}}, instance)",
         "definition": f"label_values(flashgate_build_info{{{J}}}, instance)",
         "current": {"text": ["All"], "value": ["$__all"]}, "hide": 0, "refresh": 2, "sort": 1,
         "includeAll": True, "allValue": ".*", "multi": True, "options": [], "regex": ""},
        {"type": "query", "name": "queue", "label": "Queue", "datasource": DS,
         "query": f'label_values(flashgate_admissions_total{{{I}}}, queue)',
         "definition": f'label_values(flashgate_admissions_total{{{I}}}, queue)',
         "current": {"text": ["All"], "value": ["$__all"]}, "hide": 0, "refresh": 2, "sort": 1,
         "includeAll": True, "allValue": ".*", "multi": True, "options": [], "regex": ""},
    ]

    return {
        "title": "flashgate",
        "uid": "flashgate",
        "description": "A flash sale through flashgate: admissions, the queue, the governed "
                       "drain to the upstream, and the gateway processes. Generated by "
                       "dashboards/build_dashboard.py.",
        "tags": ["flashgate"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": {"list": templating},
        "panels": L.panels,
    }


def render(job: str = DEFAULT_JOB) -> str:
    return json.dumps(build(job), indent=2, ensure_ascii=False) + "\n"


def outputs(job: str, runbooks: str) -> dict[str, str]:
    """Each generated file's name and text."""
    return {DASHBOARD: render(job), ALERTS: alert_rules.render(job, runbooks)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a generated file is stale (writes nothing)")
    ap.add_argument("--job", default=os.environ.get("FLASHGATE_JOB", DEFAULT_JOB),
                    help="the Prometheus scrape job of the gateways "
                         "(env FLASHGATE_JOB; default: %(default)s)")
    ap.add_argument("--runbooks",
                    default=os.environ.get("FLASHGATE_RUNBOOKS", DEFAULT_RUNBOOKS),
                    help="where the alerts' runbook_url points, before #alert-name "
                         "(env FLASHGATE_RUNBOOKS; default: %(default)s)")
    ap.add_argument("--out", type=pathlib.Path, default=HERE,
                    help="directory to write to (default: %(default)s)")
    args = ap.parse_args()
    stale = []
    for name, text in outputs(args.job, args.runbooks).items():
        path = args.out / name
        if args.check:
            try:
                current = path.read_text(encoding="utf-8")
            except OSError:
                current = None
            if current != text:
                stale.append(path)
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python3 {pathlib.Path(__file__).name}", file=sys.stderr)
        if stale:
            return 1
        print(f"{DASHBOARD} and {ALERTS} are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
