//! The Grafana provisioning of the compose stack (`deploy/grafana/`),
//! checked without Grafana: the datasource and dashboard provider files
//! have the shape Grafana 9 reads, the dashboard covers what an operator
//! watches (viewers, comments, rejects, drops, fan-out latency, instances
//! up) through the provisioned datasource, and every metric a panel
//! queries is one a real gateway's `/metrics` exposes. A renamed metric
//! would otherwise leave a panel silently empty.

use std::collections::BTreeSet;

use danmaku_proto::ServerEvent;
use serde_json::Value;

use crate::support::{http_get, TestGateway};

/// `deploy/grafana/` of the workspace.
const GRAFANA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana");

/// Where the compose file mounts `deploy/grafana/dashboards` in Grafana.
const DASHBOARDS_MOUNT: &str = "/var/lib/grafana/dashboards";

/// The uid of the provisioned Prometheus datasource.
const DATASOURCE_UID: &str = "prometheus";

/// A file under `deploy/grafana/`.
fn read(path: &str) -> String {
    let path = format!("{GRAFANA}/{path}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A YAML file under `deploy/grafana/`, as JSON values for easy indexing.
fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The dashboard.
fn dashboard() -> Value {
    serde_json::from_str(&read("dashboards/danmaku.json")).unwrap()
}

/// Every panel of `dashboard`, those nested in rows included; rows
/// themselves are left out.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The PromQL expressions of a panel's targets.
fn exprs(panel: &Value) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str())
        .collect()
}

/// PromQL words that are not metric names: aggregation operators, set and
/// binary operators, modifiers, and the float literals spelled as words.
/// Functions need no list: they are the identifiers followed by `(`.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "atan2",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "start",
    "end",
    "inf",
    "nan",
];

/// Modifiers followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` selects: identifiers `[a-zA-Z_:][a-zA-Z0-9_:]*`
/// outside strings, label matchers (`{...}`), ranges and subqueries
/// (`[...]`) and the label lists of `by`/`without`/`on`/`ignoring`/
/// `group_left`/`group_right`, that are neither keywords nor functions.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // The index just past the bracketed group opening at `i`, strings in it
    // skipped.
    let close = |i: usize, open: char, shut: char| -> usize {
        let mut depth = 0;
        let mut j = i;
        while j < chars.len() {
            match chars[j] {
                '"' | '\'' | '`' => j = skip_string(&chars, j) - 1,
                c if c == open => depth += 1,
                c if c == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        panic!("unbalanced {open} in {expr}")
    };
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = close(i, '{', '}');
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`0.99`, `1e3`, `0x1f`, `5m`).
            while i < chars.len() && (is_part(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let after = next_non_space(i);
            let called = chars.get(after) == Some(&'(');
            if LABEL_LISTS.contains(&lower.as_str()) {
                if called {
                    i = close(after, '(', ')');
                }
            } else if !called && !KEYWORDS.contains(&lower.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just past the string literal opening at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' if quote != '`' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    panic!(
        "unterminated string in {}",
        chars.iter().collect::<String>()
    )
}

/// The sample names of a Prometheus text exposition: what a query can
/// select, so `_total`, `_bucket`, `_sum`, `_count` and `_info` are
/// included as the gateway writes them and bare family names are not.
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            l[..end].to_owned()
        })
        .collect()
}

#[test]
fn the_metric_name_extractor_skips_functions_labels_and_durations() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, instance) (rate(a_seconds_bucket{job="x", le=~"1|2"}[5m])))"#
        ),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            r#"sum without (code) (rate(b_total{code!="}{[", x='y'}[1m:10s] offset 5m)) / on (instance) group_left (version) c_info > bool 0.5"#
        ),
        ["b_total", "c_info"]
    );
    assert_eq!(
        metric_names("sum(rate(x[$__rate_interval])) by (job) or vector(0) and up"),
        ["x", "up"]
    );
    assert_eq!(
        metric_names("ns:metric:rate1m + Inf - NaN"),
        ["ns:metric:rate1m"]
    );
}

/// The one entry of list `key` in a provisioning file of `apiVersion: 1`.
fn only_entry<'a>(doc: &'a Value, key: &str) -> &'a Value {
    assert_eq!(doc["apiVersion"], 1, "{doc}");
    let list = doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list: {doc}"));
    assert_eq!(list.len(), 1, "{doc}");
    &list[0]
}

#[test]
fn the_datasource_is_the_compose_prometheus_by_a_fixed_uid() {
    let doc = yaml("provisioning/datasources/prometheus.yml");
    let ds = only_entry(&doc, "datasources");
    assert_eq!(ds["type"], "prometheus");
    assert_eq!(ds["uid"], DATASOURCE_UID);
    assert_eq!(ds["url"], "http://prometheus:9090");
    assert_eq!(ds["access"], "proxy", "Grafana's server queries Prometheus");
    assert_eq!(ds["isDefault"], true);
    assert_eq!(ds["editable"], false);
    assert!(ds["name"].as_str().is_some_and(|n| !n.is_empty()), "{ds}");
}

#[test]
fn the_dashboard_provider_reads_the_mounted_dashboards_folder() {
    let doc = yaml("provisioning/dashboards/danmaku.yml");
    let p = only_entry(&doc, "providers");
    assert_eq!(p["type"], "file");
    assert_eq!(p["options"]["path"], DASHBOARDS_MOUNT);
    assert!(p["name"].as_str().is_some_and(|n| !n.is_empty()), "{p}");
    // What is mounted there: this folder holds the dashboard, and only
    // JSON files Grafana can load.
    for entry in std::fs::read_dir(format!("{GRAFANA}/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(path.extension().unwrap(), "json", "{}", path.display());
    }
}

#[test]
fn the_dashboard_shows_the_fleet_through_the_provisioned_datasource() {
    let d = dashboard();
    assert_eq!(d["uid"], "danmaku");
    assert_eq!(d["title"], "danmaku");
    assert_eq!(d["schemaVersion"], 37, "the schema of Grafana 9.4");
    assert_eq!(d["refresh"], "5s");
    let panels = panels(&d);
    assert!(!panels.is_empty());

    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(ids.insert(p["id"].as_u64()), "{title}: duplicate id");
        assert!(
            matches!(p["type"].as_str(), Some("timeseries" | "stat")),
            "{title}: type {}",
            p["type"]
        );
        assert_eq!(p["datasource"]["uid"], DATASOURCE_UID, "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            // A target without a datasource of its own uses the panel's.
            if !t["datasource"].is_null() {
                assert_eq!(t["datasource"]["uid"], DATASOURCE_UID, "{title}: {t}");
            }
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "{title}: a target without expr: {t}");
        }
    }

    // The panels querying `metric`, with their expressions.
    let querying = |metric: &str| -> Vec<(&str, Vec<&str>)> {
        panels
            .iter()
            .filter(|p| {
                exprs(p)
                    .iter()
                    .any(|e| metric_names(e).iter().any(|n| n == metric))
            })
            .map(|p| (p["title"].as_str().unwrap(), exprs(p)))
            .collect()
    };
    for (subject, metric) in [
        ("online viewers", "danmaku_connections"),
        ("comments/s", "danmaku_posts_accepted_total"),
        ("rejects/s by code", "danmaku_posts_rejected_total"),
        ("drops/s", "danmaku_frames_dropped_total"),
        (
            "post-to-fan-out latency",
            "danmaku_post_to_fanout_seconds_bucket",
        ),
        ("instances up", "up"),
    ] {
        assert!(
            !querying(metric).is_empty(),
            "no panel for {subject} (querying {metric})"
        );
    }
    let all_exprs: Vec<&str> = panels.iter().flat_map(|p| exprs(p)).collect();
    let some_expr = |what: &str, f: &dyn Fn(&str) -> bool| {
        assert!(all_exprs.iter().any(|e| f(e)), "no query for {what}");
    };
    some_expr("the fleet's viewers", &|e| {
        e.starts_with("sum(danmaku_connections")
    });
    some_expr("each instance's viewers", &|e| {
        e.contains("by (instance)") && e.contains("danmaku_connections")
    });
    some_expr("rejects by code", &|e| {
        e.contains("by (code)") && e.contains("danmaku_posts_rejected_total")
    });
    for q in ["0.5", "0.99"] {
        some_expr(&format!("the {q} quantile of post-to-fan-out"), &|e| {
            e.starts_with(&format!("histogram_quantile({q},"))
                && e.contains("by (le)")
                && e.contains("danmaku_post_to_fanout_seconds_bucket")
        });
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported_by_a_gateway() {
    let d = dashboard();
    let queried: BTreeSet<String> = panels(&d)
        .iter()
        .flat_map(|p| exprs(p))
        .flat_map(metric_names)
        .collect();
    assert!(
        queried.contains("danmaku_connections"),
        "the extractor found the names: {queried:?}"
    );

    // A post and a reject, so every series the dashboard reads has been
    // touched, even if a labelled one came to exist only when first used.
    let gw = TestGateway::start(crate::support::settings()).await;
    let mut viewer = gw.join("deploy").await;
    viewer.post("hello").await;
    loop {
        match viewer.next_event().await {
            ServerEvent::Ack { .. } => break,
            ServerEvent::Danmaku(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    viewer.post("   ").await;
    loop {
        match viewer.next_event().await {
            ServerEvent::Reject { .. } => break,
            ServerEvent::Danmaku(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }

    let (status, text) = http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let exposed = exposed_names(&text);
    // `up` is Prometheus's own, one per scraped target.
    let missing: Vec<&String> = queried
        .iter()
        .filter(|n| *n != "up" && !exposed.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the gateway does not export: {missing:?}\nexported: {exposed:?}"
    );
}
