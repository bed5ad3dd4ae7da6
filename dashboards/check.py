#!/usr/bin/env python3
"""Checks dashboards/flashgate.json: the Grafana schema, the house rules, and
(with --prometheus) every panel expression against a live Prometheus.

    python3 dashboards/check.py [--schema PATH] [--dashboard PATH]
                                [--prometheus URL] [--require-data]
                                [--expect-data TITLE ...] [--wait SECONDS]

1. Schema: Draft-07 validation against the Grafana dashboard JSON schema
   (default: the copy vendored in dashboards/schema/; when the team's shared
   copy ../shared/grafana/dashboard.jsonschema.json beside the repository
   exists, the two must be the same), after dropping the export-only keys
   __inputs, __requires and __elements. Uses the `jsonschema` package when
   installed, else a built-in validator of the keywords that schema uses.
   Also: flashgate.json and alerts.yml are what build_dashboard.py writes
   (for --job), every alert's runbook_url leads to a section of
   docs/runbooks.md that says what it means, how to confirm it and what to
   do, and a promtool test of alerts_test.yml expects every alert to fire.
2. Lint: every panel has a unit, thresholds and the ${datasource} datasource;
   rates use $__rate_interval; queue-wide gauges are aggregated with max/min.
3. Prometheus: each target expression, with the Grafana variables substituted
   ($queue and $instance -> .*, $__rate_interval -> 1m, $__interval -> 15s,
   $__range -> 1h), goes to /api/v1/query, and so does each label_values()
   variable query (as count by (label) (selector)). A query Prometheus rejects fails the
   check; an empty or all-NaN answer is listed. With --require-data (or
   --expect-data), the listed panels must have data, retried until --wait
   runs out. The loaded alerting rules are listed with their health and state;
   a rule in error fails the check.
4. --promtool: `promtool check config prometheus.yml` (which checks alerts.yml),
   `promtool test rules alerts_test.yml`, and with --metrics URL
   `promtool check metrics` on the gateway's /metrics.

Exit status: 0 all good, 1 a check failed, 2 bad usage or unreadable input.
"""

import argparse
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DASHBOARD = HERE / "flashgate.json"
DEFAULT_SCHEMA = HERE / "schema" / "dashboard.jsonschema.json"
# The team's shared copy, beside the repository where there is one.
SHARED_SCHEMA = REPO.parent / "shared" / "grafana" / "dashboard.jsonschema.json"
ALERTS = HERE / "alerts.yml"
ALERT_TESTS = HERE / "alerts_test.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
# What each runbook section must say, as bold lead-ins.
RUNBOOK_PARTS = ("**What it means.**", "**How to confirm.**", "**What to do.**")
EXPORT_ONLY = ("__inputs", "__requires", "__elements")

# Gauges that describe the shared queue: every instance reports the same value.
QUEUE_GAUGES = (
    "flashgate_queue_depth",
    "flashgate_queue_in_flight",
    "flashgate_queue_oldest_age_seconds",
    "flashgate_drain_rate_limit",
    "flashgate_stock_left",
    "flashgate_queue_paused",
    "flashgate_queue_sold_out",
    "flashgate_sale_phase",
)

# Panels a gateway under a small load (admissions, rejections, drains, polls)
# must fill. Left out: panels that only fill on trouble or that a healthy demo
# may leave NaN (no retries, no dead letters, no upstream errors).
DEFAULT_EXPECT_DATA = (
    "Admitted / s",
    "Queue depth",
    "Stock left",
    "Sale phase",
    "Paused",
    "Sold out",
    "Refused admissions",
    "Estimated wait for a new arrival",
    "Drain rate vs limit",
    "Upstream error ratio",
    "Admission p99",
    "Admission requests by outcome",
    "Admission latency",
    "Public listener answers by route and code",
    "Depth and in flight",
    "Oldest ticket age",
    "Queue backend reachable",
    "Queue wait percentiles",
    "ETA accuracy (actual − promised wait)",
    "Arrivals vs departures",
    "Work stream: consumer group lag",
    "Dispatch outcomes",
    "Observed vs governed drain rate",
    "Upstream response classes",
    "Upstream latency",
    "Upstream latency distribution",
    "Retries and dead letters",
    "CPU",
    "Resident memory",
    "File descriptors",
    "Instances by version",
    "File descriptors used",
    "Connections shed",
)


# ---------------------------------------------------------------- schema ---

def load_json(path: pathlib.Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SystemExit(usage_error(f"cannot read {what} {path}: {e.strerror}"))
    except json.JSONDecodeError as e:
        raise SystemExit(usage_error(f"{what} {path} is not JSON: {e}"))


def usage_error(msg: str) -> int:
    print(f"check.py: {msg}", file=sys.stderr)
    return 2


def schema_errors(dashboard: dict, schema: dict) -> tuple[str, list[str]]:
    """Returns (validator used, error messages)."""
    doc = {k: v for k, v in dashboard.items() if k not in EXPORT_ONLY}
    try:
        from jsonschema import Draft7Validator
    except ImportError:
        return "built-in draft-07 subset", MiniValidator(schema).errors(doc)
    out = []
    for e in sorted(Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path)):
        for leaf in deepest_branch(e):
            path = "/".join(map(str, leaf.absolute_path)) or "(root)"
            out.append(f"{path}: {shorten(leaf.message)}")
    return "jsonschema Draft7Validator", out


def deepest_branch(error) -> list:
    """A panel fails as a whole under oneOf(Panel, RowPanel). Report the
    errors of the alternative that got furthest into the document (a
    timeseries panel is a Panel with one bad field, not a RowPanel with ten
    unexpected ones) instead of dumping the panel."""
    if not error.context:
        return [error]
    branches: dict = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    best = max(branches.values(), key=lambda errs: max(len(e.absolute_path) for e in errs))
    return [leaf for sub in best for leaf in deepest_branch(sub)]


def shorten(msg: str, limit: int = 160) -> str:
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


class MiniValidator:
    """The draft-07 keywords the Grafana schema uses, for machines without
    the `jsonschema` package. Annotations (description, default, format) are
    ignored, as a validator may."""

    TYPES = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer()),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }

    def __init__(self, root: dict):
        self.root = root

    def errors(self, doc) -> list[str]:
        out: list[str] = []
        self._check(doc, self.root, "", out)
        return out

    def _resolve(self, ref: str) -> dict:
        node = self.root
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        return node

    def _check(self, v, s: dict, path: str, out: list[str]):
        where = path or "(root)"
        if "$ref" in s:
            # Draft-07: siblings of $ref are ignored.
            return self._check(v, self._resolve(s["$ref"]), path, out)
        t = s.get("type")
        if t is not None:
            kinds = t if isinstance(t, list) else [t]
            if not any(self.TYPES[k](v) for k in kinds):
                out.append(f"{where}: {v!r:.60} is not of type {t}")
                return
        if "const" in s and v != s["const"]:
            out.append(f"{where}: {s['const']!r} was expected")
        if "enum" in s and v not in s["enum"]:
            out.append(f"{where}: {v!r:.60} is not one of {s['enum']}")
        if isinstance(v, str) and len(v) < s.get("minLength", 0):
            out.append(f"{where}: {v!r} is too short")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if "minimum" in s and v < s["minimum"]:
                out.append(f"{where}: {v} is less than the minimum of {s['minimum']}")
            if "maximum" in s and v > s["maximum"]:
                out.append(f"{where}: {v} is greater than the maximum of {s['maximum']}")
            if "exclusiveMinimum" in s and v <= s["exclusiveMinimum"]:
                out.append(f"{where}: {v} is not above {s['exclusiveMinimum']}")
            if "exclusiveMaximum" in s and v >= s["exclusiveMaximum"]:
                out.append(f"{where}: {v} is not below {s['exclusiveMaximum']}")
        for sub in s.get("allOf", []):
            self._check(v, sub, path, out)
        for key in ("anyOf", "oneOf"):
            if key not in s:
                continue
            results = [self._sub(v, sub, path) for sub in s[key]]
            passing = sum(1 for r in results if not r)
            if passing == 0:
                # Report the alternative that got furthest into the document.
                out.extend(max(results, key=lambda r: max(e.count("/") for e in r)))
            elif key == "oneOf" and passing > 1:
                out.append(f"{where}: matches {passing} alternatives of oneOf, not exactly 1")
        if isinstance(v, dict):
            props = s.get("properties", {})
            for key in s.get("required", []):
                if key not in v:
                    out.append(f"{where}: {key!r} is a required property")
            extra = s.get("additionalProperties", True)
            for key, val in v.items():
                sub_path = f"{path}/{key}" if path else key
                if key in props:
                    self._check(val, props[key], sub_path, out)
                elif extra is False:
                    out.append(f"{where}: additional property {key!r} is not allowed")
                elif isinstance(extra, dict):
                    self._check(val, extra, sub_path, out)
        if isinstance(v, list) and isinstance(s.get("items"), dict):
            for i, item in enumerate(v):
                self._check(item, s["items"], f"{path}/{i}" if path else str(i), out)

    def _sub(self, v, s, path) -> list[str]:
        out: list[str] = []
        self._check(v, s, path, out)
        return out


# ------------------------------------------------------------------ lint ---

def panels(dashboard: dict):
    """Every non-row panel, including those inside collapsed rows."""
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def lint(dashboard: dict) -> list[str]:
    problems = []
    ids = [p.get("id") for p in dashboard.get("panels", [])] + [
        q.get("id") for p in dashboard.get("panels", []) for q in p.get("panels", [])
    ]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    if dashboard.get("schemaVersion", 0) < 39:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')} < 39")
    if dashboard.get("graphTooltip") != 1:
        problems.append("graphTooltip is not 1 (shared crosshair)")
    names = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
    for want in ("datasource", "queue", "instance"):
        if want not in names:
            problems.append(f"no ${want} variable")
    for p in panels(dashboard):
        title = p.get("title", f"panel {p.get('id')}")
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        if not defaults.get("unit"):
            problems.append(f"{title}: no unit")
        if not defaults.get("thresholds", {}).get("steps"):
            problems.append(f"{title}: no thresholds")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{title}: datasource is not ${{datasource}}")
        if not p.get("targets"):
            problems.append(f"{title}: no targets")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            if t.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{title} {t.get('refId')}: datasource is not ${{datasource}}")
            for m in re.finditer(r"\b(?:rate|irate|increase)\s*\([^\[]*\[([^\]]*)\]", expr):
                if m.group(1) != "$__rate_interval":
                    problems.append(f"{title} {t.get('refId')}: range [{m.group(1)}] is not "
                                    "[$__rate_interval]")
            for g in QUEUE_GAUGES:
                for m in re.finditer(rf"\b{g}\b", expr):
                    before = expr[: m.start()]
                    if not re.search(r"\b(max|min) by \(queue(, \w+)*\) \($", before):
                        problems.append(f"{title} {t.get('refId')}: {g} not aggregated with "
                                        "max/min by (queue)")
    return problems


# ----------------------------------------------- sources and runbooks ---

def schema_copy_problems(schema: pathlib.Path) -> list[str]:
    """The vendored schema must be the shared one, where that exists."""
    if schema != DEFAULT_SCHEMA or not SHARED_SCHEMA.exists():
        return []
    if schema.read_bytes() != SHARED_SCHEMA.read_bytes():
        return [f"{schema.relative_to(REPO)} differs from {SHARED_SCHEMA}: copy it over"]
    return []


def stale_outputs(job: str, runbooks: str) -> list[str]:
    """Generated files that differ from what build_dashboard.py writes."""
    sys.dont_write_bytecode = True  # no __pycache__ in the repository
    import build_dashboard

    out = []
    for name, text in build_dashboard.outputs(job, runbooks).items():
        path = HERE / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(f"{name} is not what build_dashboard.py --job {job} writes: "
                       "run python3 dashboards/build_dashboard.py")
    return out


def alert_runbooks(alerts_text: str) -> list[tuple[str, str | None]]:
    """(alert name, its runbook_url or None) for each rule of alerts.yml."""
    out: list[tuple[str, str | None]] = []
    for line in alerts_text.splitlines():
        if m := re.match(r"\s*- alert:\s*(\S+)", line):
            out.append((m.group(1), None))
        elif (m := re.match(r"\s*runbook_url:\s*\"?([^\"]*)\"?\s*$", line)) and out:
            out[-1] = (out[-1][0], m.group(1))
    return out


def runbook_sections(text: str) -> dict[str, str]:
    """Each `## ` section of the runbooks by its anchor (the heading lower-cased,
    as GitHub makes anchors of a one-word heading)."""
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = re.sub(r"[^\w-]", "", line[3:].strip().lower().replace(" ", "-"))
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def firing_tests(tests_text: str) -> set[str]:
    """Alerts that some promtool test of alerts_test.yml expects to fire."""
    fired, current = set(), None
    for line in tests_text.splitlines():
        if m := re.match(r"\s*alertname:\s*(\S+)", line):
            current = m.group(1)
        elif re.match(r"\s*- eval_time:", line) or re.match(r"  - name:", line):
            current = None
        elif current and re.match(r"\s*- exp_labels:", line):
            fired.add(current)
    return fired


def runbook_problems() -> list[str]:
    """Every alert has its runbook section, and a promtool test that fires it."""
    try:
        alerts = ALERTS.read_text(encoding="utf-8")
        runbooks = RUNBOOKS.read_text(encoding="utf-8")
        tests = ALERT_TESTS.read_text(encoding="utf-8")
    except OSError as e:
        return [f"cannot read {e.filename}: {e.strerror}"]
    sections = runbook_sections(runbooks)
    fired = firing_tests(tests)
    problems = []
    for name, url in alert_runbooks(alerts):
        if name not in fired:
            problems.append(f"alert {name}: no test in alerts_test.yml expects it to fire")
        if url is None:
            problems.append(f"alert {name} has no runbook_url")
            continue
        page, _, anchor = url.partition("#")
        if not page.endswith("runbooks.md") or anchor != name.lower():
            problems.append(f"alert {name}: runbook_url {url} is not runbooks.md#{name.lower()}")
        section = sections.get(name.lower())
        if section is None:
            problems.append(f"alert {name}: no section `## {name}` in docs/runbooks.md")
            continue
        missing = [p for p in RUNBOOK_PARTS if p not in section]
        if missing:
            problems.append(f"alert {name}: its runbook section lacks {', '.join(missing)}")
    return problems


# ------------------------------------------------------------ prometheus ---

def substitute(expr: str, queue: str, instance: str, rate_interval: str) -> str:
    values = {
        "queue": queue,
        "instance": instance,
        "__rate_interval": rate_interval,
        "__interval": "15s",
        "__range": "1h",
        "datasource": "prometheus",
    }

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(name)
        return values[name]

    # ${name}, ${name:format} and $name; longest names first by regex order.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def http_json(url: str, params: dict | None = None, timeout: float = 10.0):
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        # Prometheus answers 400/422 with a JSON error body for a bad query.
        try:
            return json.load(e)
        except json.JSONDecodeError:
            return {"status": "error", "error": f"HTTP {e.code}"}


def run_query(base: str, expr: str) -> tuple[str, str, int]:
    """Returns (status, detail, series): status is data, nan, empty or invalid."""
    try:
        answer = http_json(f"{base}/api/v1/query", {"query": expr})
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise SystemExit(usage_error(f"cannot reach Prometheus at {base}: {e}"))
    if answer.get("status") != "success":
        return "invalid", answer.get("error", "unknown error"), 0
    data = answer["data"]
    result = data["result"]
    if data["resultType"] == "scalar":
        result = [{"value": result}]
    elif data["resultType"] == "string":
        return "invalid", "a string, not numbers", 0
    if not result:
        return "empty", "", 0
    finite = [float(s["value"][1]) for s in result if not math.isnan(float(s["value"][1]))]
    if not finite:
        return "nan", f"{len(result)} series, all NaN", len(result)
    return "data", f"{len(result)} series, e.g. {finite[0]:.4g}", len(result)


def variable_queries(dashboard: dict):
    """(name, PromQL) for each `label_values(selector, label)` query variable:
    the values it would list are the `label` values of `count by (label)`."""
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        if v.get("type") != "query" or not isinstance(q, str):
            continue
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", q)
        if m:
            yield v["name"], f"count by ({m.group(2)}) ({m.group(1)})"
        else:
            yield v["name"], None


def query_all(base, dashboard, args):
    rows = []
    for name, expr in variable_queries(dashboard):
        title = f"variable ${name}"
        if expr is None:
            rows.append((title, "-", "invalid", "not a label_values(selector, label) query", ""))
            continue
        expr = substitute(expr, args.queue, args.instance, args.rate_interval)
        status, detail, _ = run_query(base, expr)
        rows.append((title, "-", status, detail, expr))
    for p in panels(dashboard):
        for t in p.get("targets", []):
            try:
                expr = substitute(t["expr"], args.queue, args.instance, args.rate_interval)
            except KeyError as e:
                rows.append((p["title"], t.get("refId", "?"), "invalid",
                             f"unknown variable ${e.args[0]}", t["expr"]))
                continue
            status, detail, _ = run_query(base, expr)
            rows.append((p["title"], t.get("refId", "?"), status, detail, expr))
    return rows


def panel_status(rows) -> dict[str, str]:
    """A panel has data when any of its targets has."""
    out: dict[str, str] = {}
    for title, _, status, _, _ in rows:
        if status == "data" or out.get(title) == "data":
            out[title] = "data"
        else:
            out.setdefault(title, status)
    return out


def print_table(rows):
    w = max(len(f"{r[0]} {r[1]}") for r in rows)
    print(f"{'PANEL / TARGET':<{w}}  {'RESULT':<7}  DETAIL")
    for title, ref, status, detail, _ in rows:
        print(f"{title + ' ' + ref:<{w}}  {status:<7}  {detail}")


def rules_report(base: str) -> list[str]:
    answer = http_json(f"{base}/api/v1/rules")
    if answer.get("status") != "success":
        return [f"cannot list rules: {answer.get('error')}"]
    failed = []
    print("\nALERT RULES")
    groups = answer["data"]["groups"]
    if not groups:
        print("  (none loaded)")
    for g in groups:
        for r in g["rules"]:
            if r.get("type") != "alerting":
                continue
            state = r.get("state", "?")
            health = r.get("health", "?")
            n = len(r.get("alerts", []))
            print(f"  {r['name']:<40} health={health:<8} state={state}"
                  + (f" ({n} alert{'s' if n != 1 else ''})" if n else ""))
            if health == "err":
                failed.append(f"rule {r['name']}: {r.get('lastError')}")
    return failed


# -------------------------------------------------------------- promtool ---

def promtool_checks(metrics_url: str | None) -> list[str]:
    exe = shutil.which("promtool")
    if not exe:
        return ["promtool not found on PATH (Debian: apt-get install prometheus)"]
    runs = [
        ("check config prometheus.yml", [exe, "check", "config", "prometheus.yml"], None),
        ("test rules alerts_test.yml", [exe, "test", "rules", "alerts_test.yml"], None),
    ]
    if metrics_url:
        try:
            with urllib.request.urlopen(metrics_url, timeout=10) as r:
                body = r.read()
        except (urllib.error.URLError, OSError) as e:
            return [f"cannot fetch {metrics_url}: {e}"]
        runs.append((f"check metrics {metrics_url}", [exe, "check", "metrics"], body))
    failed = []
    print()
    for name, argv, stdin in runs:
        r = subprocess.run(argv, cwd=HERE, input=stdin, capture_output=True)
        ok = r.returncode == 0
        print(f"PROMTOOL {name}: {'ok' if ok else 'FAILED'}")
        out = (r.stdout + r.stderr).decode(errors="replace").strip()
        # check metrics prints lint findings (and exits 0 on some versions).
        if not ok or (stdin is not None and out):
            for line in out.splitlines()[-40:]:
                print(f"  {line}")
            failed.append(f"promtool {name}")
    return failed


# ------------------------------------------------------------------ main ---

def main() -> int:
    ap = argparse.ArgumentParser(
        description="Validate the flashgate Grafana dashboard and its queries.")
    ap.add_argument("--schema", type=pathlib.Path, default=DEFAULT_SCHEMA,
                    help="Grafana dashboard JSON schema (default: %(default)s)")
    ap.add_argument("--dashboard", type=pathlib.Path, default=DEFAULT_DASHBOARD,
                    help="dashboard JSON (default: %(default)s)")
    ap.add_argument("--prometheus", metavar="URL",
                    help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--require-data", action="store_true",
                    help="fail unless the default set of panels has data")
    ap.add_argument("--expect-data", nargs="+", metavar="TITLE",
                    help="panels that must have data (implies --require-data)")
    ap.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                    help="retry until the expected panels have data, up to this long")
    ap.add_argument("--promtool", action="store_true",
                    help="also run promtool on prometheus.yml, alerts.yml and alerts_test.yml")
    ap.add_argument("--metrics", metavar="URL",
                    help="with --promtool: `promtool check metrics` this /metrics URL")
    ap.add_argument("--queue", default=".*", help="value for $queue (default: .*)")
    ap.add_argument("--instance", default=".*", help="value for $instance (default: .*)")
    ap.add_argument("--rate-interval", default="1m",
                    help="value for $__rate_interval (default: 1m)")
    ap.add_argument("--job", default=os.environ.get("FLASHGATE_JOB", "flashgate"),
                    help="scrape job the generated files are for, as given to "
                         "build_dashboard.py (env FLASHGATE_JOB; default: %(default)s)")
    ap.add_argument("--runbooks",
                    default=os.environ.get("FLASHGATE_RUNBOOKS", "docs/runbooks.md"),
                    help="runbook_url base given to build_dashboard.py "
                         "(env FLASHGATE_RUNBOOKS; default: %(default)s)")
    args = ap.parse_args()

    dashboard = load_json(args.dashboard, "dashboard")
    schema = load_json(args.schema, "schema")
    failures = []

    used, errors = schema_errors(dashboard, schema)
    print(f"SCHEMA  {args.schema.name} ({used}): "
          + ("ok" if not errors else f"{len(errors)} error(s)"))
    for e in errors:
        print(f"  {e}")
    failures += [f"schema: {e}" for e in errors]
    copies = schema_copy_problems(args.schema)
    for p in copies:
        print(f"  {p}")
    failures += [f"schema: {p}" for p in copies]

    sources = stale_outputs(args.job, args.runbooks)
    print("SOURCES " + ("ok" if not sources else f"{len(sources)} stale file(s)"))
    for p in sources:
        print(f"  {p}")
    failures += [f"sources: {p}" for p in sources]

    runbooks = runbook_problems()
    print("ALERTS  " + ("ok" if not runbooks else f"{len(runbooks)} problem(s)"))
    for p in runbooks:
        print(f"  {p}")
    failures += [f"runbooks: {p}" for p in runbooks]

    problems = lint(dashboard)
    print("LINT    " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    for p in problems:
        print(f"  {p}")
    failures += [f"lint: {p}" for p in problems]

    titles = [p.get("title") for p in panels(dashboard)]
    expected = []
    if args.expect_data or args.require_data:
        expected = list(args.expect_data or DEFAULT_EXPECT_DATA)
        unknown = [t for t in expected if t not in titles]
        if unknown:
            failures += [f"expected panel {t!r} is not in the dashboard" for t in unknown]
            expected = [t for t in expected if t in titles]
        if not args.prometheus:
            return usage_error("--require-data/--expect-data need --prometheus")

    if args.prometheus:
        base = args.prometheus.rstrip("/")
        deadline = time.monotonic() + args.wait
        while True:
            rows = query_all(base, dashboard, args)
            status = panel_status(rows)
            missing = [t for t in expected if status.get(t) != "data"]
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        print(f"\nQUERIES against {base} ($queue={args.queue}, $instance={args.instance}, "
              f"$__rate_interval={args.rate_interval})")
        print_table(rows)
        invalid = [r for r in rows if r[2] == "invalid"]
        failures += [f"invalid query: {r[0]} {r[1]}: {r[3]}\n    {r[4]}" for r in invalid]
        no_data = sorted(t for t, s in status.items() if s != "data")
        with_data = sorted(t for t, s in status.items() if s == "data")
        print(f"\nPANELS AND VARIABLES WITH DATA ({len(with_data)}/{len(status)})")
        for t in with_data:
            print(f"  {t}")
        print(f"PANELS AND VARIABLES WITHOUT DATA ({len(no_data)})")
        for t in no_data:
            print(f"  {t}" + ("   <- expected data" if t in missing else ""))
        failures += [f"no data: {t}" for t in missing]
        failures += rules_report(base)

    if args.promtool:
        failures += promtool_checks(args.metrics)

    print()
    if failures:
        print(f"FAILED: {len(failures)} problem(s)")
        for f in failures:
            print(f"  {f}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
