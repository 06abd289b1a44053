//! The Grafana dashboard (`grafana/dashboards/lambda.json`) queries only
//! series some process exports, and shows every series they export.

use serde_json::Value;
use std::{collections::BTreeSet, path::Path};

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Every series name the API, the dispatcher and the workers export.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    names.extend(api::metrics::Metrics::new().names());
    names.extend(dispatcher::metrics::Metrics::new().names());
    names.extend(workers::metrics::Metrics::new().names());
    names
}

/// The queries of every panel, rows' panels included.
fn queries(panels: &[Value], out: &mut Vec<String>) {
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("a PromQL query").to_owned());
        }
        queries(panel["panels"].as_array().map_or(&[], Vec::as_slice), out);
    }
}

/// The `lambda_…` names a query mentions, histogram suffixes removed.
fn series_in(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(start) = rest.find("lambda_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_queries_every_exported_series_and_nothing_else() {
    let path = repository().join("grafana/dashboards/lambda.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut all = Vec::new();
    queries(dashboard["panels"].as_array().unwrap(), &mut all);
    assert!(!all.is_empty());

    let exported = exported();
    let mut shown = BTreeSet::new();
    for query in &all {
        let names = series_in(query);
        assert!(!names.is_empty(), "{query} queries no lambda_ series");
        for name in names {
            assert!(
                exported.contains(&name),
                "{query}: {name} is exported by no process"
            );
            shown.insert(name);
        }
    }
    let missing: Vec<_> = exported.difference(&shown).collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

#[test]
fn every_panel_uses_the_provisioned_datasource() {
    let root = repository();
    let datasources =
        std::fs::read_to_string(root.join("grafana/provisioning/datasources/prometheus.yml"))
            .unwrap();
    assert!(datasources.contains("uid: prometheus"));
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(root.join("grafana/dashboards/lambda.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "prometheus",
                "{}",
                panel["title"]
            );
        }
    }
    let provider =
        std::fs::read_to_string(root.join("grafana/provisioning/dashboards/lambda.yml")).unwrap();
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    let compose = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    assert!(compose.contains("./grafana/dashboards:/var/lib/grafana/dashboards"));
    assert!(compose.contains("./grafana/provisioning:/etc/grafana/provisioning"));
}
