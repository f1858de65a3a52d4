//! The Grafana dashboard (`docs/grafana/exactly.json`) and the operations guide
//! (`docs/operations.md`) checked against the metrics this crate defines, so neither can drift:
//! every query names a defined metric and is filtered by the `app` and `instance` variables,
//! every defined metric is on a panel and described in the guide, and the guide's alert rules
//! query only defined metrics.
//!
//! `cargo test -p exactly-metrics --test dashboard -- --nocapture` also lists every panel and
//! its queries.

use exactly_metrics::Metrics;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The matcher every metric selector of the dashboard starts with.
const FILTER: &str = r#"{app=~"$app", instance=~"$instance""#;

/// The name of the data source template variable every panel queries through.
const DATASOURCE_VARIABLE: &str = "DS_PROMETHEUS";

/// Grafana's grid is 24 columns wide.
const GRID_COLUMNS: u64 = 24;

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("docs/grafana/exactly.json"))
        .unwrap_or_else(|e| panic!("docs/grafana/exactly.json is not JSON: {e}"))
}

fn operations_doc() -> String {
    read("docs/operations.md")
}

/// What this crate defines: every family name, and which of them are histograms (whose
/// `_bucket`, `_sum` and `_count` series belong to the family).
struct Defined {
    names: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

fn defined() -> Defined {
    let metrics = Metrics::new("a", "0").expect("metrics");
    let names: BTreeSet<String> = metrics.metric_names().into_iter().collect();
    // The histograms have no labels besides the constant ones, so each has a series from the
    // start and its `# TYPE` line is in the exposition.
    let histograms = metrics
        .encode_text()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" histogram"))
        .map(str::to_owned)
        .collect();
    Defined { names, histograms }
}

/// Every `exactly_*` token in `text` (a PromQL expression, a doc), with its byte offset.
fn metric_tokens(text: &str) -> Vec<(usize, &str)> {
    let is_name_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut start = 0;
    while let Some(found) = text[start..].find("exactly_") {
        let at = start + found;
        let mut end = at + "exactly_".len();
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        // `foo_exactly_bar` or `Xexactly_` are not metric names.
        let starts_a_token =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts_a_token {
            tokens.push((at, &text[at..end]));
        }
        start = end;
    }
    tokens
}

/// The family a series name belongs to: a histogram's `_bucket`, `_sum` and `_count` series
/// map to the histogram, any other name to itself.
fn family<'a>(series: &'a str, defined: &Defined) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix) {
            if defined.histograms.contains(base) {
                return base;
            }
        }
    }
    series
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn collect<'a>(list: &'a Value, into: &mut Vec<&'a Value>) {
        for panel in list.as_array().expect("`panels` is an array") {
            into.push(panel);
            if let Some(nested) = panel.get("panels") {
                collect(nested, into);
            }
        }
    }
    let mut all = Vec::new();
    collect(&dashboard["panels"], &mut all);
    all
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("(untitled)")
}

/// Every panel that queries Prometheus (not a row) with its queries' `expr`.
fn queries(dashboard: &Value) -> Vec<(&Value, Vec<&str>)> {
    panels(dashboard)
        .into_iter()
        .filter(|p| !is_row(p))
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .map(|targets| targets.iter().filter_map(|t| t["expr"].as_str()).collect())
                .unwrap_or_default();
            (p, exprs)
        })
        .collect()
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .expect("`templating.list` is an array")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no template variable `{name}`"))
}

/// A panel's place on the grid, in grid units.
#[derive(Debug, Clone, Copy)]
struct GridPos {
    x: u64,
    y: u64,
    w: u64,
    h: u64,
}

impl GridPos {
    fn overlaps(self, other: GridPos) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }
}

/// A panel's `gridPos`, checked to be whole grid units.
fn grid_pos(panel: &Value) -> GridPos {
    let pos = &panel["gridPos"];
    let field = |name: &str| {
        pos[name].as_u64().unwrap_or_else(|| {
            panic!(
                "panel `{}`: gridPos.{name} is not a non-negative integer",
                title(panel)
            )
        })
    };
    GridPos {
        x: field("x"),
        y: field("y"),
        w: field("w"),
        h: field("h"),
    }
}

#[test]
fn dashboard_has_the_shape_grafana_imports() {
    let dash = dashboard();
    assert!(
        dash["title"].as_str().is_some_and(|t| !t.is_empty()),
        "no title"
    );
    let uid = dash["uid"].as_str().expect("a uid");
    assert!(
        !uid.is_empty() && uid.len() <= 40,
        "Grafana uids are 1 to 40 characters: {uid:?}"
    );
    assert_eq!(dash["schemaVersion"], 39);

    let all = panels(&dash);
    assert!(!all.is_empty(), "no panels");
    let mut ids = BTreeSet::new();
    for panel in &all {
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel `{}` has no numeric id", title(panel)));
        assert!(ids.insert(id), "panel id {id} is used twice");
        assert!(
            panel["title"].as_str().is_some_and(|t| !t.is_empty()),
            "panel {id} has no title"
        );
        let GridPos { x, w, h, .. } = grid_pos(panel);
        assert!(
            w > 0 && h > 0,
            "panel `{}` has an empty gridPos",
            title(panel)
        );
        assert!(
            x + w <= GRID_COLUMNS,
            "panel `{}` runs past the {GRID_COLUMNS}-column grid",
            title(panel)
        );
        if is_row(panel) {
            continue;
        }
        let kind = panel["type"].as_str().unwrap_or_default();
        assert!(
            ["timeseries", "stat"].contains(&kind),
            "panel `{}` has type {kind:?}",
            title(panel)
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel `{}` has no targets", title(panel)));
        assert!(
            !targets.is_empty(),
            "panel `{}` has no targets",
            title(panel)
        );
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let ref_id = target["refId"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of `{}` has no refId", title(panel)));
            assert!(
                ref_ids.insert(ref_id),
                "panel `{}` uses refId {ref_id} twice",
                title(panel)
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "target {ref_id} of `{}` has no expr",
                title(panel)
            );
        }
    }
}

#[test]
fn panels_do_not_overlap() {
    let dash = dashboard();
    // Panels nested in a collapsed row are laid out when it expands; this dashboard has none,
    // so every panel shares one grid.
    let placed: Vec<(&str, GridPos)> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| (title(p), grid_pos(p)))
        .collect();
    for (i, (a, a_pos)) in placed.iter().enumerate() {
        for (b, b_pos) in &placed[i + 1..] {
            assert!(!a_pos.overlaps(*b_pos), "panels `{a}` and `{b}` overlap");
        }
    }
}

#[test]
fn template_variables_choose_the_data_source_app_and_instance() {
    let dash = dashboard();
    let datasource = variable(&dash, DATASOURCE_VARIABLE);
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for (name, label) in [("app", "app"), ("instance", "instance")] {
        let var = variable(&dash, name);
        assert_eq!(var["type"], "query", "variable `{name}`");
        let query = var["definition"].as_str().unwrap_or_default();
        assert!(
            query.starts_with("label_values(exactly_") && query.ends_with(&format!(", {label})")),
            "variable `{name}` should list the `{label}` label of an exactly metric: {query:?}"
        );
        assert_eq!(
            var["query"]["query"], query,
            "variable `{name}`: query and definition differ"
        );
        assert_eq!(
            var["allValue"], ".*",
            "variable `{name}`: `All` must match every value"
        );
    }

    let uid = format!("${{{DATASOURCE_VARIABLE}}}");
    for panel in panels(&dash).into_iter().filter(|p| !is_row(p)) {
        assert_eq!(
            panel["datasource"]["uid"],
            uid.as_str(),
            "panel `{}`",
            title(panel)
        );
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(
                target["datasource"]["uid"],
                uid.as_str(),
                "a target of `{}`",
                title(panel)
            );
        }
    }
}

#[test]
fn every_query_is_filtered_by_app_and_instance() {
    let dash = dashboard();
    for (panel, exprs) in queries(&dash) {
        for expr in exprs {
            let tokens = metric_tokens(expr);
            assert!(
                !tokens.is_empty(),
                "`{}` queries no exactly metric: {expr}",
                title(panel)
            );
            for (at, name) in tokens {
                assert!(
                    expr[at + name.len()..].starts_with(FILTER),
                    "`{}`: {name} is not selected with {FILTER}...}}: {expr}",
                    title(panel)
                );
            }
        }
    }
}

#[test]
fn every_metric_a_panel_queries_is_defined() {
    let dash = dashboard();
    let defined = defined();
    let mut undefined = Vec::new();
    println!("panels of docs/grafana/exactly.json:");
    for (panel, exprs) in queries(&dash) {
        println!(
            "#{} [{}] {}",
            panel["id"],
            panel["type"].as_str().unwrap_or_default(),
            title(panel)
        );
        for expr in exprs {
            println!("    {expr}");
            for (_, series) in metric_tokens(expr) {
                if !defined.names.contains(family(series, &defined)) {
                    undefined.push(format!("`{}`: {series}", title(panel)));
                }
            }
        }
    }
    for var in dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        let query = var["definition"].as_str().unwrap_or_default();
        for (_, series) in metric_tokens(query) {
            if !defined.names.contains(family(series, &defined)) {
                undefined.push(format!("variable `{}`: {series}", var["name"]));
            }
        }
    }
    assert!(
        undefined.is_empty(),
        "queries of metrics exactly-metrics does not define: {undefined:#?}"
    );
}

#[test]
fn every_defined_metric_is_on_a_panel() {
    let dash = dashboard();
    let defined = defined();
    let mut panels_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (panel, exprs) in queries(&dash) {
        for expr in exprs {
            for (_, series) in metric_tokens(expr) {
                panels_of
                    .entry(family(series, &defined))
                    .or_default()
                    .push(title(panel));
            }
        }
    }
    let missing: Vec<&String> = defined
        .names
        .iter()
        .filter(|n| !panels_of.contains_key(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics on no panel of docs/grafana/exactly.json: {missing:?}"
    );
}

#[test]
fn every_defined_metric_is_described_in_the_operations_metric_table() {
    let doc = operations_doc();
    let table_rows: Vec<&str> = doc
        .lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .collect();
    let defined = defined();
    let missing: Vec<&String> = defined
        .names
        .iter()
        .filter(|name| {
            let cell = format!("| `{name}` |");
            !table_rows
                .iter()
                .any(|row| row.trim_start().starts_with(&cell))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metrics without a row in the metric table of docs/operations.md: {missing:?}"
    );
}

#[test]
fn operations_alert_rules_query_only_defined_metrics() {
    let doc = operations_doc();
    let defined = defined();
    let mut in_yaml = false;
    let mut queried = BTreeSet::new();
    for line in doc.lines() {
        let fence = line.trim_start();
        if fence.starts_with("```") {
            in_yaml = fence == "```yaml";
            continue;
        }
        if in_yaml {
            queried.extend(
                metric_tokens(line)
                    .into_iter()
                    .map(|(_, series)| family(series, &defined).to_owned()),
            );
        }
    }
    assert!(
        !queried.is_empty(),
        "docs/operations.md has no YAML block querying exactly metrics"
    );
    let undefined: Vec<&String> = queried
        .iter()
        .filter(|n| !defined.names.contains(*n))
        .collect();
    assert!(
        undefined.is_empty(),
        "YAML in docs/operations.md queries undefined metrics: {undefined:?}"
    );
}

#[test]
fn operations_scrape_config_keeps_the_exposed_instance_label() {
    assert!(
        operations_doc().contains("honor_labels: true"),
        "the scrape config must set honor_labels: true, or Prometheus renames our `instance` label"
    );
}

#[test]
fn metric_tokens_map_histogram_series_to_their_family() {
    let defined = defined();
    let expr = r#"histogram_quantile(0.5, sum by (le) (rate(exactly_transaction_commit_seconds_bucket{app=~"$app"}[5m]))) / my_exactly_thing"#;
    let families: Vec<&str> = metric_tokens(expr)
        .into_iter()
        .map(|(_, s)| family(s, &defined))
        .collect();
    assert_eq!(families, ["exactly_transaction_commit_seconds"]);
    assert_eq!(
        family("exactly_transactions_committed_total", &defined),
        "exactly_transactions_committed_total"
    );
}
