//! The deployment examples of `docs/operations.md` checked against what the runtime relies on:
//! the Kubernetes manifests of "A StatefulSet" and the unit of "A systemd unit" are parsed, the
//! fields that must agree with each other are compared, and the environment each one gives the
//! app is loaded through `exactly::config::load_from`, as `App::from_env()` would load it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use exactly::config::{load_from, LoadedConfig};
use yaml_rust2::{Yaml, YamlLoader};

const DOC: &str = "docs/operations.md";
const STATEFULSET_SECTION: &str = "### A StatefulSet";
const SYSTEMD_SECTION: &str = "### A systemd unit";
/// The pod label Kubernetes (1.28+) sets to a StatefulSet pod's ordinal.
const POD_INDEX_FIELD: &str = "metadata.labels['apps.kubernetes.io/pod-index']";

fn operations_doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Extracting the examples
// ---------------------------------------------------------------------------------------------

/// The lines of the section under `heading`, up to the next heading of any level. Lines inside
/// code fences never end a section (a YAML or unit comment starts with `#` too).
fn section<'a>(doc: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = doc.lines().skip_while(|line| line.trim_end() != heading);
    assert!(lines.next().is_some(), "{DOC} has no section `{heading}`");
    let mut in_fence = false;
    lines
        .take_while(|line| {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
            }
            in_fence || !line.starts_with('#')
        })
        .collect()
}

/// The contents of the ```` ```{lang} ```` blocks of the section under `heading`, in order.
/// Panics, naming the section, when it has none.
fn fenced_blocks(doc: &str, heading: &str, lang: &str) -> Vec<String> {
    let opening = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section(doc, heading) {
        let fence = line.trim();
        match current.as_mut() {
            None if fence == opening => current = Some(String::new()),
            None => {}
            Some(_) if fence == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "{DOC}: a ```{lang} block in section `{heading}` is never closed"
    );
    assert!(
        !blocks.is_empty(),
        "{DOC}: section `{heading}` has no ```{lang} block"
    );
    blocks
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes manifests
// ---------------------------------------------------------------------------------------------

/// The documents of the StatefulSet section, one per kind.
struct Manifests {
    service: Yaml,
    statefulset: Yaml,
    pod_disruption_budget: Yaml,
}

fn manifests() -> Manifests {
    manifests_of(&operations_doc())
}

fn manifests_of(doc: &str) -> Manifests {
    let mut documents = Vec::new();
    for block in fenced_blocks(doc, STATEFULSET_SECTION, "yaml") {
        let parsed = YamlLoader::load_from_str(&block).unwrap_or_else(|e| {
            panic!("{DOC}: the YAML of `{STATEFULSET_SECTION}` does not parse: {e}")
        });
        documents.extend(parsed);
    }
    let kinds: Vec<&str> = documents
        .iter()
        .map(|document| text(document, &["kind"], "a manifest"))
        .collect();
    assert_eq!(
        kinds,
        ["Service", "StatefulSet", "PodDisruptionBudget"],
        "{DOC}: `{STATEFULSET_SECTION}` must hold exactly a Service, a StatefulSet and a \
         PodDisruptionBudget, in that order"
    );
    let mut documents = documents.into_iter();
    let mut next = || documents.next().expect("three documents, checked above");
    Manifests {
        service: next(),
        statefulset: next(),
        pod_disruption_budget: next(),
    }
}

/// The node at `path` (mapping keys, or sequence indexes written as numbers) under `node`;
/// panics naming `what` and the path when it is absent.
fn at<'a>(node: &'a Yaml, path: &[&str], what: &str) -> &'a Yaml {
    let mut current = node;
    for (depth, step) in path.iter().enumerate() {
        let next = match (current, step.parse::<usize>()) {
            (Yaml::Array(items), Ok(index)) => items.get(index),
            (Yaml::Hash(_), _) => Some(&current[*step]).filter(|found| !found.is_badvalue()),
            _ => None,
        };
        current =
            next.unwrap_or_else(|| panic!("{DOC}: {what} has no `{}`", path[..=depth].join(".")));
    }
    current
}

/// The string at `path`; panics when it is absent or not a string (Kubernetes refuses
/// numbers and booleans where it expects strings: env values, labels, annotations).
fn text<'a>(node: &'a Yaml, path: &[&str], what: &str) -> &'a str {
    at(node, path, what).as_str().unwrap_or_else(|| {
        panic!(
            "{DOC}: {what}'s `{}` is not a string (quote it)",
            path.join(".")
        )
    })
}

fn integer(node: &Yaml, path: &[&str], what: &str) -> i64 {
    at(node, path, what)
        .as_i64()
        .unwrap_or_else(|| panic!("{DOC}: {what}'s `{}` is not an integer", path.join(".")))
}

fn sequence<'a>(node: &'a Yaml, path: &[&str], what: &str) -> &'a [Yaml] {
    at(node, path, what)
        .as_vec()
        .unwrap_or_else(|| panic!("{DOC}: {what}'s `{}` is not a list", path.join(".")))
}

/// A mapping of strings to strings (labels, annotations, matchLabels).
fn string_map(node: &Yaml, path: &[&str], what: &str) -> BTreeMap<String, String> {
    let hash = at(node, path, what)
        .as_hash()
        .unwrap_or_else(|| panic!("{DOC}: {what}'s `{}` is not a mapping", path.join(".")));
    hash.iter()
        .map(|(key, value)| {
            let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
                panic!(
                    "{DOC}: {what}'s `{}` maps {key:?} to {value:?}: both must be strings",
                    path.join(".")
                );
            };
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// Where a container's environment variable gets its value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EnvSource {
    Literal(String),
    FieldRef(String),
}

/// The StatefulSet's only container.
fn container(statefulset: &Yaml) -> &Yaml {
    let containers = sequence(
        statefulset,
        &["spec", "template", "spec", "containers"],
        "the StatefulSet",
    );
    assert_eq!(
        containers.len(),
        1,
        "{DOC}: the StatefulSet's pod template must have exactly one container, the app"
    );
    &containers[0]
}

/// The container's environment, in order.
fn container_env(statefulset: &Yaml) -> Vec<(String, EnvSource)> {
    sequence(container(statefulset), &["env"], "the container")
        .iter()
        .map(|entry| {
            let name = text(entry, &["name"], "an env entry").to_owned();
            let what = format!("env {name}");
            let source = if entry["value"].is_badvalue() {
                EnvSource::FieldRef(
                    text(entry, &["valueFrom", "fieldRef", "fieldPath"], &what).to_owned(),
                )
            } else {
                EnvSource::Literal(text(entry, &["value"], &what).to_owned())
            };
            (name, source)
        })
        .collect()
}

/// The literal value of the container's variable `name`.
fn literal_env(env: &[(String, EnvSource)], name: &str) -> String {
    let matching: Vec<&EnvSource> = env
        .iter()
        .filter(|(var, _)| var == name)
        .map(|(_, source)| source)
        .collect();
    match matching.as_slice() {
        [EnvSource::Literal(value)] => value.clone(),
        [] => panic!("{DOC}: the container sets no {name}"),
        [other] => panic!("{DOC}: the container's {name} must be a literal value, not {other:?}"),
        _ => panic!("{DOC}: the container sets {name} more than once"),
    }
}

/// The container's environment as the process would see it in pod `ordinal`: the pod-index
/// fieldRef resolved to the ordinal.
fn pod_environment(statefulset: &Yaml, ordinal: &str) -> Vec<(String, String)> {
    container_env(statefulset)
        .into_iter()
        .map(|(name, source)| match source {
            EnvSource::Literal(value) => (name, value),
            EnvSource::FieldRef(field) if field == POD_INDEX_FIELD => (name, ordinal.to_owned()),
            EnvSource::FieldRef(field) => panic!(
                "{DOC}: env {name} comes from fieldRef {field}, which this test cannot resolve; \
                 only {POD_INDEX_FIELD} is expected"
            ),
        })
        .collect()
}

/// The port of an `ip:port` address.
fn port_of(addr: &str, what: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{DOC}: {what} `{addr}` is not an ip:port address: {e}"))
        .port()
}

/// The containerPort of the container port called `name`.
fn container_port(container: &Yaml, name: &str) -> i64 {
    let ports = sequence(container, &["ports"], "the container");
    let named: Vec<&Yaml> = ports
        .iter()
        .filter(|port| port["name"].as_str() == Some(name))
        .collect();
    assert_eq!(
        named.len(),
        1,
        "{DOC}: the container must have exactly one port named `{name}`"
    );
    integer(named[0], &["containerPort"], "the container's metrics port")
}

fn pod_labels(statefulset: &Yaml) -> BTreeMap<String, String> {
    string_map(
        statefulset,
        &["spec", "template", "metadata", "labels"],
        "the StatefulSet",
    )
}

fn annotations(statefulset: &Yaml) -> BTreeMap<String, String> {
    string_map(
        statefulset,
        &["spec", "template", "metadata", "annotations"],
        "the StatefulSet",
    )
}

#[test]
fn statefulset_section_holds_a_service_a_statefulset_and_a_pod_disruption_budget() {
    let manifests = manifests();
    let api_versions = [
        text(&manifests.service, &["apiVersion"], "the Service"),
        text(&manifests.statefulset, &["apiVersion"], "the StatefulSet"),
        text(
            &manifests.pod_disruption_budget,
            &["apiVersion"],
            "the PodDisruptionBudget",
        ),
    ];
    assert_eq!(
        api_versions,
        ["v1", "apps/v1", "policy/v1"],
        "{DOC}: the manifests' apiVersions are not the current stable ones"
    );
}

#[test]
fn statefulset_selector_matches_its_pods_the_pod_disruption_budget_and_the_service() {
    let manifests = manifests();
    let pods = pod_labels(&manifests.statefulset);
    assert!(
        !pods.is_empty(),
        "{DOC}: the StatefulSet's pods have no labels"
    );
    let selector = string_map(
        &manifests.statefulset,
        &["spec", "selector", "matchLabels"],
        "the StatefulSet",
    );
    assert_eq!(
        selector, pods,
        "{DOC}: the StatefulSet's selector differs from its pod template's labels"
    );
    let budget = string_map(
        &manifests.pod_disruption_budget,
        &["spec", "selector", "matchLabels"],
        "the PodDisruptionBudget",
    );
    assert_eq!(
        budget, pods,
        "{DOC}: the PodDisruptionBudget's selector differs from the StatefulSet's pod labels"
    );
    let service = string_map(&manifests.service, &["spec", "selector"], "the Service");
    assert_eq!(
        service, pods,
        "{DOC}: the Service's selector differs from the StatefulSet's pod labels"
    );
}

#[test]
fn statefulset_service_name_is_a_headless_service() {
    let manifests = manifests();
    assert_eq!(
        text(
            &manifests.statefulset,
            &["spec", "serviceName"],
            "the StatefulSet"
        ),
        text(&manifests.service, &["metadata", "name"], "the Service"),
        "{DOC}: the StatefulSet's serviceName does not name the Service"
    );
    assert_eq!(
        text(&manifests.service, &["spec", "clusterIP"], "the Service"),
        "None",
        "{DOC}: the Service is not headless (clusterIP: None)"
    );
}

#[test]
fn pod_disruption_budget_lets_one_pod_go_at_a_time() {
    let manifests = manifests();
    assert_eq!(
        integer(
            &manifests.pod_disruption_budget,
            &["spec", "maxUnavailable"],
            "the PodDisruptionBudget"
        ),
        1,
        "{DOC}: the PodDisruptionBudget must allow exactly one unavailable pod"
    );
}

#[test]
fn statefulset_starts_pods_in_parallel_and_gives_them_30_s_to_stop() {
    let manifests = manifests();
    assert_eq!(
        text(
            &manifests.statefulset,
            &["spec", "podManagementPolicy"],
            "the StatefulSet"
        ),
        "Parallel",
        "{DOC}: the StatefulSet's podManagementPolicy is not Parallel"
    );
    assert_eq!(
        integer(
            &manifests.statefulset,
            &["spec", "template", "spec", "terminationGracePeriodSeconds"],
            "the StatefulSet"
        ),
        30,
        "{DOC}: the pods' terminationGracePeriodSeconds is not 30"
    );
}

#[test]
fn container_takes_its_instance_id_from_the_pod_index_label() {
    let env = container_env(&manifests().statefulset);
    let instance_ids: Vec<&EnvSource> = env
        .iter()
        .filter(|(name, _)| name == "EXACTLY_INSTANCE_ID")
        .map(|(_, source)| source)
        .collect();
    assert_eq!(
        instance_ids,
        [&EnvSource::FieldRef(POD_INDEX_FIELD.to_owned())],
        "{DOC}: EXACTLY_INSTANCE_ID must be set once, from the fieldRef {POD_INDEX_FIELD}"
    );
}

#[test]
fn state_dir_is_the_mount_path_of_a_volume_claim_template() {
    let statefulset = manifests().statefulset;
    let state_dir = literal_env(&container_env(&statefulset), "EXACTLY_STATE_DIR");
    let claims: Vec<&str> = sequence(
        &statefulset,
        &["spec", "volumeClaimTemplates"],
        "the StatefulSet",
    )
    .iter()
    .map(|claim| text(claim, &["metadata", "name"], "a volumeClaimTemplates entry"))
    .collect();
    let mounts: Vec<(&str, &str)> =
        sequence(container(&statefulset), &["volumeMounts"], "the container")
            .iter()
            .map(|mount| {
                (
                    text(mount, &["name"], "a volumeMount"),
                    text(mount, &["mountPath"], "a volumeMount"),
                )
            })
            .collect();
    let claimed_mounts: Vec<(&str, &str)> = mounts
        .iter()
        .copied()
        .filter(|(_, path)| *path == state_dir)
        .collect();
    assert_eq!(
        claimed_mounts.len(),
        1,
        "{DOC}: EXACTLY_STATE_DIR={state_dir} must be the mountPath of exactly one volumeMount \
         (mounts: {mounts:?})"
    );
    let (volume, _) = claimed_mounts[0];
    assert!(
        claims.contains(&volume),
        "{DOC}: EXACTLY_STATE_DIR is mounted from volume `{volume}`, which is not a \
         volumeClaimTemplates entry ({claims:?})"
    );
}

#[test]
fn metrics_address_port_is_the_probed_and_annotated_port() {
    let statefulset = manifests().statefulset;
    let container = container(&statefulset);
    let metrics_addr = literal_env(&container_env(&statefulset), "EXACTLY_METRICS_ADDR");
    let metrics_port = i64::from(port_of(&metrics_addr, "EXACTLY_METRICS_ADDR"));

    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        assert_eq!(
            text(container, &[probe, "httpGet", "path"], "the container"),
            path,
            "{DOC}: the {probe} must ask {path}"
        );
        let port_name = at(container, &[probe, "httpGet", "port"], "the container")
            .as_str()
            .unwrap_or_else(|| {
                panic!("{DOC}: the {probe} must name the metrics port, not number it")
            });
        assert_eq!(
            container_port(container, port_name),
            metrics_port,
            "{DOC}: the {probe} probes port `{port_name}`, which is not EXACTLY_METRICS_ADDR's \
             port"
        );
    }

    let annotations = annotations(&statefulset);
    let annotated = |key: &str| {
        annotations
            .get(key)
            .unwrap_or_else(|| panic!("{DOC}: the pod template has no annotation {key}"))
            .as_str()
    };
    assert_eq!(
        annotated("prometheus.io/port"),
        metrics_port.to_string(),
        "{DOC}: the prometheus.io/port annotation is not EXACTLY_METRICS_ADDR's port"
    );
    assert_eq!(
        annotated("prometheus.io/scrape"),
        "true",
        "{DOC}: the prometheus.io/scrape annotation is not \"true\""
    );
    assert_eq!(
        annotated("prometheus.io/path"),
        "/metrics",
        "{DOC}: the prometheus.io/path annotation is not /metrics"
    );
}

#[test]
fn statefulset_environment_loads_through_the_config_loader() {
    let statefulset = manifests().statefulset;
    let env = container_env(&statefulset);
    let loaded: LoadedConfig = load_from(None, pod_environment(&statefulset, "0"))
        .unwrap_or_else(|e| panic!("{DOC}: the container's environment does not load: {e}"));

    let topics = |var: &str| -> Vec<String> {
        literal_env(&env, var)
            .split(',')
            .map(|topic| topic.trim().to_owned())
            .collect()
    };
    let runtime = &loaded.runtime;
    assert_eq!(
        runtime.instance_id, "0",
        "{DOC}: pod 0 does not run instance 0"
    );
    assert_eq!(
        runtime.state_dir,
        PathBuf::from(literal_env(&env, "EXACTLY_STATE_DIR")),
        "{DOC}: the loaded state_dir is not EXACTLY_STATE_DIR"
    );
    let metrics_addr = literal_env(&env, "EXACTLY_METRICS_ADDR");
    let metrics_addr: SocketAddr = metrics_addr.parse().unwrap_or_else(|e| {
        panic!("{DOC}: EXACTLY_METRICS_ADDR `{metrics_addr}` is not an ip:port address: {e}")
    });
    assert_eq!(
        loaded.metrics_addr,
        Some(metrics_addr),
        "{DOC}: the loaded metrics address is not EXACTLY_METRICS_ADDR"
    );
    assert_eq!(
        runtime.app_id,
        literal_env(&env, "EXACTLY_APP_ID"),
        "{DOC}: the loaded app_id is not EXACTLY_APP_ID"
    );
    assert_eq!(
        runtime.bootstrap,
        literal_env(&env, "EXACTLY_BOOTSTRAP"),
        "{DOC}: the loaded bootstrap is not EXACTLY_BOOTSTRAP"
    );
    assert_eq!(
        runtime.inputs,
        topics("EXACTLY_INPUTS"),
        "{DOC}: the loaded inputs are not EXACTLY_INPUTS"
    );
    assert_eq!(
        runtime.outputs,
        topics("EXACTLY_OUTPUTS"),
        "{DOC}: the loaded outputs are not EXACTLY_OUTPUTS"
    );
}

// ---------------------------------------------------------------------------------------------
// The systemd unit
// ---------------------------------------------------------------------------------------------

/// A systemd unit file: its `Key=Value` settings in file order, with their section. Repeated
/// keys (`Environment=`) are kept, each in its place.
struct Unit {
    settings: Vec<(String, String, String)>,
}

impl Unit {
    /// Parses the unit syntax the example uses: `[Section]` headers, `Key=Value` lines (spaces
    /// around `=` ignored), `#` and `;` comment lines, blank lines, and a trailing `\` that
    /// continues a line.
    fn parse(text: &str) -> Unit {
        let mut settings = Vec::new();
        let mut section: Option<String> = None;
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(continued) = line.strip_suffix('\\') {
                pending.push_str(continued);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.to_owned());
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                panic!(
                    "{DOC}: the systemd unit's line `{line}` is neither a [section] nor Key=Value"
                );
            };
            let Some(section) = &section else {
                panic!("{DOC}: the systemd unit sets `{line}` before any [section]");
            };
            settings.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        Unit { settings }
    }

    /// Every value of `key` in `section`, in file order.
    fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, value)| value.as_str())
            .collect()
    }

    /// The one value of `key` in `section`; panics when it is unset or set more than once.
    fn value(&self, section: &str, key: &str) -> &str {
        match self.values(section, key).as_slice() {
            [value] => value,
            [] => panic!("{DOC}: the systemd unit's [{section}] has no {key}="),
            _ => panic!("{DOC}: the systemd unit's [{section}] sets {key}= more than once"),
        }
    }

    /// The variables of every `Environment=` line, in order: each line holds assignments
    /// separated by spaces, an assignment optionally in double quotes.
    fn environment(&self) -> Vec<(String, String)> {
        self.values("Service", "Environment")
            .into_iter()
            .flat_map(split_assignments)
            .map(|assignment| {
                let (name, value) = assignment.split_once('=').unwrap_or_else(|| {
                    panic!("{DOC}: the systemd unit's Environment={assignment} is not NAME=VALUE")
                });
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }
}

fn split_assignments(line: &str) -> Vec<String> {
    let mut assignments = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    assignments.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    assert!(
        !quoted,
        "{DOC}: the systemd unit's Environment={line} has an unclosed quote"
    );
    if !current.is_empty() {
        assignments.push(current);
    }
    assignments
}

/// `value` with the specifier `%i` replaced by `instance` (and `%%` by `%`), as systemd
/// expands it in the unit `name@{instance}`; another specifier fails the test, which would not
/// know its value.
fn expand_instance(value: &str, instance: &str) -> String {
    let mut expanded = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            expanded.push(c);
            continue;
        }
        match chars.next() {
            Some('i') => expanded.push_str(instance),
            Some('%') => expanded.push('%'),
            other => panic!(
                "{DOC}: the systemd unit's `{value}` uses the specifier %{} this test does not expand",
                other.map(String::from).unwrap_or_default()
            ),
        }
    }
    expanded
}

/// A systemd time span in whole seconds: `30`, `30s`, `2min`, `1min 30s`.
fn seconds(span: &str) -> u64 {
    span.split_whitespace()
        .map(|part| {
            let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let unit = &part[digits.len()..];
            let count: u64 = digits
                .parse()
                .unwrap_or_else(|_| panic!("{DOC}: `{span}` is not a time span"));
            match unit {
                "" | "s" | "sec" => count,
                "m" | "min" => count * 60,
                _ => panic!("{DOC}: `{span}` uses a unit this test does not know"),
            }
        })
        .sum()
}

fn unit() -> Unit {
    unit_of(&operations_doc())
}

fn unit_of(doc: &str) -> Unit {
    let blocks = fenced_blocks(doc, SYSTEMD_SECTION, "ini");
    assert_eq!(
        blocks.len(),
        1,
        "{DOC}: `{SYSTEMD_SECTION}` must hold exactly one ```ini block"
    );
    Unit::parse(&blocks[0])
}

/// The unit's `Environment=` value of `name` (the last one wins, as in systemd).
fn unit_env(unit: &Unit, name: &str) -> String {
    unit.environment()
        .into_iter()
        .rev()
        .find(|(var, _)| var == name)
        .map(|(_, value)| value)
        .unwrap_or_else(|| panic!("{DOC}: the systemd unit sets no Environment={name}=..."))
}

#[test]
fn unit_parser_keeps_repeated_keys_in_order_and_skips_comments() {
    let unit = Unit::parse(
        "# comment\n[Service]\n; another\nEnvironment=A=1\nExecStart=/bin/app \\\n  --flag\n\
         Environment = \"B=2 2\" C=3\n\n[Install]\nWantedBy=multi-user.target\n",
    );
    assert_eq!(
        unit.values("Service", "Environment"),
        ["A=1", "\"B=2 2\" C=3"]
    );
    assert_eq!(unit.value("Service", "ExecStart"), "/bin/app  --flag");
    assert_eq!(
        unit.environment(),
        [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2 2".to_owned()),
            ("C".to_owned(), "3".to_owned()),
        ]
    );
    assert_eq!(unit.value("Install", "WantedBy"), "multi-user.target");
    assert_eq!(seconds("1min 30s"), 90);
}

#[test]
fn systemd_unit_takes_its_instance_id_from_the_instance_name() {
    let unit = unit();
    let instance_ids: Vec<String> = unit
        .environment()
        .into_iter()
        .filter(|(name, _)| name == "EXACTLY_INSTANCE_ID")
        .map(|(_, value)| value)
        .collect();
    assert_eq!(
        instance_ids,
        ["%i"],
        "{DOC}: the systemd unit must set Environment=EXACTLY_INSTANCE_ID=%i once"
    );
}

#[test]
fn systemd_unit_stops_with_sigterm_and_restarts_on_failure() {
    let unit = unit();
    assert_eq!(
        unit.value("Service", "KillSignal"),
        "SIGTERM",
        "{DOC}: the systemd unit must stop the app with SIGTERM, its graceful shutdown"
    );
    let timeout = seconds(unit.value("Service", "TimeoutStopSec"));
    assert!(
        timeout >= 30,
        "{DOC}: the systemd unit's TimeoutStopSec is {timeout} s; a graceful stop needs 30"
    );
    assert_eq!(
        unit.value("Service", "Restart"),
        "on-failure",
        "{DOC}: the systemd unit must restart a failed (e.g. fenced) instance: Restart=on-failure"
    );
    assert!(
        !unit.value("Service", "ExecStart").is_empty(),
        "{DOC}: the systemd unit's ExecStart= is empty"
    );
    assert_eq!(
        unit.value("Install", "WantedBy"),
        "multi-user.target",
        "{DOC}: the systemd unit must be wanted by multi-user.target to start at boot"
    );
}

#[test]
fn systemd_state_directory_is_the_state_dir() {
    let unit = unit();
    let state_directory = unit.value("Service", "StateDirectory");
    assert_eq!(
        unit_env(&unit, "EXACTLY_STATE_DIR"),
        format!("/var/lib/{state_directory}"),
        "{DOC}: the systemd unit's EXACTLY_STATE_DIR is not the directory StateDirectory= creates"
    );
}

#[test]
fn systemd_environment_loads_through_the_config_loader() {
    let unit = unit();
    let env: Vec<(String, String)> = unit
        .environment()
        .into_iter()
        .map(|(name, value)| (name, expand_instance(&value, "1")))
        .collect();
    let loaded = load_from(None, env)
        .unwrap_or_else(|e| panic!("{DOC}: the systemd unit's environment does not load: {e}"));
    assert_eq!(
        loaded.runtime.instance_id, "1",
        "{DOC}: orders-dedup@1 does not run instance 1"
    );
    assert_eq!(
        loaded.runtime.state_dir,
        PathBuf::from(expand_instance(&unit_env(&unit, "EXACTLY_STATE_DIR"), "1")),
        "{DOC}: the loaded state_dir is not the unit's EXACTLY_STATE_DIR"
    );
}

// ---------------------------------------------------------------------------------------------
// Missing examples
// ---------------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "section `### A StatefulSet` has no ```yaml block")]
fn statefulset_section_without_its_yaml_block_fails() {
    manifests_of(
        "### A StatefulSet\n\nProse only.\n\n### A systemd unit\n\n```ini\n[Service]\n```\n",
    );
}

#[test]
#[should_panic(expected = "section `### A systemd unit` has no ```ini block")]
fn systemd_section_without_its_ini_block_fails() {
    // The block after the next heading belongs to that section, not this one.
    unit_of("### A systemd unit\n\nProse only.\n\n## Next\n\n```ini\n[Service]\n```\n");
}

#[test]
#[should_panic(expected = "has no section `### A systemd unit`")]
fn doc_without_the_systemd_section_fails() {
    unit_of("### A StatefulSet\n\n```yaml\nkind: Service\n```\n");
}
