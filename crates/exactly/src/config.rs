//! Configuration from a TOML file and `EXACTLY_*` environment variables.
//!
//! [`load`] reads the file (if any), applies the environment overrides, checks every value and
//! returns the [`RuntimeConfig`] to run with. Every key, its default, and the override rules
//! are in `docs/configuration.md`.
//!
//! ```
//! use exactly::config::load_from;
//!
//! let file = r#"
//! app_id = "orders-dedup"
//! inputs = ["orders"]
//! "#;
//! let env = [("EXACTLY_THREADS".to_owned(), "4".to_owned())];
//! let loaded = load_from(Some(file), env).unwrap();
//! assert_eq!(loaded.runtime.threads, 4);
//! ```
//!
//! Errors name the key, where its value came from (the file or an environment variable),
//! what is wrong and how to fix it:
//!
//! ```text
//! config key `commit_interval_ms` (from EXACTLY_COMMIT_INTERVAL_MS): invalid type: string "abc", expected an integer number of milliseconds; set it to a positive integer
//! ```

use exactly_core::{ErrorPolicy, IdPolicy, IdSource, InvalidIdPolicy, RetryPolicy, TaskConfig};
use exactly_kafka::config::is_secret_property;
use exactly_kafka::{
    default_dead_letter_topic, DedupScope, Guarantee, OffsetReset, RestoreFrom, RuntimeConfig,
};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "EXACTLY_";

/// Bootstrap servers when neither the config nor `KAFKA_BOOTSTRAP` names any (the local
/// test broker, as in `App::new`).
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:29092";

/// How [`load_from`] names the file in error messages ([`load`] uses its path).
const UNNAMED_FILE: &str = "the config file";

use exactly_kafka::config::MANAGED_KAFKA_PROPERTIES;

/// The config file's layout. Every field is optional here; [`load_from`] applies the
/// defaults and says which required key is missing. Unknown keys are refused at every level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Application id (required): the consumer group id and the prefix of internal topics.
    pub app_id: Option<String>,
    /// Stable id of this instance, part of `transactional.id` (default `"0"`).
    pub instance_id: Option<String>,
    /// Kafka bootstrap servers (default: env `KAFKA_BOOTSTRAP`, else `127.0.0.1:29092`).
    pub bootstrap: Option<String>,
    /// Input topics (required, non-empty).
    pub inputs: Option<Vec<String>>,
    /// Output topics, checked to exist at start (default none).
    pub outputs: Option<Vec<String>>,
    /// Root of the state directories (default `state`).
    pub state_dir: Option<String>,
    /// Stream threads (default 1).
    #[serde(deserialize_with = "count")]
    pub threads: Option<u64>,
    /// Commit interval in milliseconds (default 100).
    #[serde(deserialize_with = "millis")]
    pub commit_interval_ms: Option<u64>,
    /// Maximum input records in one transaction (default 10000).
    #[serde(deserialize_with = "count")]
    pub max_batch_records: Option<u64>,
    /// `exactly_once` (default) or `at_least_once`.
    pub guarantee: Option<String>,
    /// Static group membership (default true): a restarted instance takes its partitions
    /// back without a rebalance.
    pub static_membership: Option<bool>,
    /// Where a trusted dedup store's restore starts: `checkpoint` (default) or `start`.
    pub restore_from: Option<String>,
    /// Where a task whose committed offset is gone (but whose store holds committed IDs)
    /// starts: `fail` (default), `earliest` or `latest`.
    pub offset_reset: Option<String>,
    /// Check existing internal topics' configs at start (default true).
    pub verify_topic_configs: Option<bool>,
    /// Start the next transaction with a new producer after all brokers were down (default
    /// false; for the local test broker only).
    pub renew_producer_after_outage: Option<bool>,
    /// Address to serve `/metrics`, `/health` and `/ready` on (default: no server).
    pub metrics_addr: Option<String>,
    /// `transaction.timeout.ms` of the producers (default 10000).
    #[serde(deserialize_with = "millis")]
    pub transaction_timeout_ms: Option<u64>,
    /// Timeout of the requests at start: metadata, topic creation (default 30000).
    #[serde(deserialize_with = "millis")]
    pub startup_timeout_ms: Option<u64>,
    /// Replication factor of the internal topics the runtime creates (default 1).
    #[serde(deserialize_with = "signed")]
    pub replication_factor: Option<i64>,
    /// RocksDB block cache shared by the instance's stores, in bytes (default 64 MiB).
    #[serde(deserialize_with = "bytes")]
    pub block_cache_bytes: Option<u64>,
    /// RocksDB write buffer budget shared by the instance's stores, in bytes (default 64 MiB).
    #[serde(deserialize_with = "bytes")]
    pub write_buffer_bytes: Option<u64>,
    /// `[ids]`: message-ID extraction and validation.
    pub ids: IdsSection,
    /// `[errors]`: retries and what happens when processing fails for good.
    pub errors: ErrorsSection,
    /// `[dedup]`: how long IDs are remembered.
    pub dedup: DedupSection,
    /// `[dead_letter]`: the dead-letter topic.
    pub dead_letter: DeadLetterSection,
    /// `[kafka]`: librdkafka properties passed to every client (string values).
    pub kafka: BTreeMap<String, String>,
}

/// The `[ids]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdsSection {
    /// `"key"` or `"header:<name>"` (default `"header:message-id"`).
    pub source: Option<String>,
    /// Maximum ID length in bytes (default 256).
    #[serde(deserialize_with = "count")]
    pub max_len: Option<u64>,
    /// `dead_letter` (default), `process` or `fail`.
    pub on_invalid: Option<String>,
}

/// The `[errors]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorsSection {
    /// `dead_letter` (default) or `fail`.
    pub on_error: Option<String>,
    /// What to do with an input record whose outputs the broker refuses for good:
    /// `dead_letter` (default) or `fail`.
    pub on_production_error: Option<String>,
    /// Refused transactions in a row before `on_production_error` applies (default 3).
    #[serde(deserialize_with = "count")]
    pub production_attempts: Option<u64>,
    /// Attempts in total, the first included (default 5; 1 = no retry).
    #[serde(deserialize_with = "count")]
    pub retry_max_attempts: Option<u64>,
    /// Delay before the second attempt, in milliseconds (default 10).
    #[serde(deserialize_with = "millis")]
    pub retry_initial_backoff_ms: Option<u64>,
    /// Upper bound of any retry delay, in milliseconds (default 1000).
    #[serde(deserialize_with = "millis")]
    pub retry_max_backoff_ms: Option<u64>,
}

/// The `[dedup]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupSection {
    /// How long an ID is remembered, in milliseconds (default 7 days).
    #[serde(deserialize_with = "millis")]
    pub retention_ms: Option<u64>,
    /// `partition` (default) or `global` (repartition by message ID first).
    pub scope: Option<String>,
    /// With `global`: how often the repartition records stage 2 committed past are deleted,
    /// in milliseconds (default 30000).
    #[serde(deserialize_with = "millis")]
    pub repartition_purge_interval_ms: Option<u64>,
}

/// The `[dead_letter]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterSection {
    /// The topic (default `{app_id}-dlq`).
    pub topic: Option<String>,
    /// `false` turns every dead-letter decision into a task error (default `true`).
    pub enabled: Option<bool>,
    /// Create the topic if it is missing (default `true`).
    pub create: Option<bool>,
}

/// The result of [`load`]: the runtime config and the facade's own settings.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// What the runtime runs with.
    pub runtime: RuntimeConfig,
    /// Where to serve `/metrics`, `/health` and `/ready`, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

/// Where a config value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file (its path, or "the config file" for [`load_from`]).
    File(String),
    /// An environment variable.
    Env(String),
    /// Set nowhere: the default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(name) => write!(f, "in {name}"),
            Self::Env(var) => write!(f, "(from {var})"),
            Self::Default => f.write_str("(default)"),
        }
    }
}

/// A config that cannot be used. Each message names the key, says what is wrong and how to
/// fix it. Config errors are never retriable: fix the file or the environment and restart.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {}: {source}; check the path and its permissions", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{file} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An `EXACTLY_*` variable's value is not UTF-8.
    #[error("environment variable {var} is not valid UTF-8; set it to a UTF-8 value")]
    NotUnicode {
        /// The variable.
        var: String,
    },
    /// A key exactly does not know: a typo, or a key of another version.
    #[error("unknown config key `{key}` {origin}; {}valid keys: {}", did_you_mean(.suggestion), .valid.join(", "))]
    UnknownKey {
        /// The key, dotted (`ids.maxlen`).
        key: String,
        /// Where it was set.
        origin: Origin,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
        /// The keys valid there.
        valid: Vec<&'static str>,
    },
    /// A required key is set nowhere.
    #[error("missing required config key `{key}`: set it in the file or with {env_var}")]
    Missing {
        /// The key.
        key: &'static str,
        /// The environment variable that sets it.
        env_var: String,
    },
    /// A value of the wrong type, out of range, or contradicting another value.
    #[error("config key `{key}` {origin}: {problem}; {fix}")]
    Invalid {
        /// The key, dotted (`ids.max_len`, `kafka.group.id`).
        key: String,
        /// Where its value came from.
        origin: Origin,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

impl ConfigError {
    /// The config key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { key, .. } | Self::Invalid { key, .. } => Some(key),
            Self::Missing { key, .. } => Some(*key),
            Self::Read { .. } | Self::Syntax { .. } | Self::NotUnicode { .. } => None,
        }
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("did you mean {s}? "))
        .unwrap_or_default()
}

/// Reads the config file at `path` (if given), applies the `EXACTLY_*` overrides of this
/// process's environment, and checks the result.
pub fn load(path: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    let text = match path {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
        ),
        None => None,
    };
    let name = path.map_or_else(|| UNNAMED_FILE.to_owned(), |p| p.display().to_string());
    load_named(&name, text.as_deref(), process_env()?)
}

/// [`load`] without the file system and the process environment: `toml_text` is the file's
/// content, `env` the environment variables. Messages call the file "the config file".
pub fn load_from(
    toml_text: Option<&str>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<LoadedConfig, ConfigError> {
    load_named(UNNAMED_FILE, toml_text, env.into_iter().collect())
}

/// Every key the file accepts, dotted (`ids.max_len`). `[kafka]` takes any librdkafka
/// property and is not listed.
pub fn keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|spec| spec.key)
}

/// The relevant variables of this process's environment. `std::env::vars` would panic on a
/// non-UTF-8 variable anywhere in the environment; only ours must be UTF-8.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        if !(name.starts_with(ENV_PREFIX) || name == "KAFKA_BOOTSTRAP") || is_test_hook(&name) {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.push((name, value)),
            Err(_) => return Err(ConfigError::NotUnicode { var: name }),
        }
    }
    Ok(vars)
}

/// `EXACTLY_*` variables of the test harnesses and benchmarks, which are not config keys.
fn is_test_hook(var: &str) -> bool {
    var == "EXACTLY_FAILPOINT"
        || [
            "EXACTLY_CHAOS_",
            "EXACTLY_SCHEDULES",
            "EXACTLY_SEED",
            "EXACTLY_TRACE",
            "EXACTLY_TEST_",
            "EXACTLY_BENCH_",
        ]
        .iter()
        .any(|prefix| var.starts_with(prefix))
}

fn load_named(
    file: &str,
    toml_text: Option<&str>,
    mut env: Vec<(String, String)>,
) -> Result<LoadedConfig, ConfigError> {
    let mut table = match toml_text {
        Some(text) => toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?,
        None => toml::Table::new(),
    };
    let mut origins = Origins::default();
    check_file_keys(&mut table, file, &mut origins)?;
    // Sorted, so that of several bad variables the same one is reported every time.
    env.sort();
    apply_env(&mut table, &env, &mut origins)?;
    if !table.contains_key("bootstrap") {
        if let Some((var, value)) = env.iter().find(|(var, _)| var == "KAFKA_BOOTSTRAP") {
            table.insert("bootstrap".into(), toml::Value::String(value.clone()));
            origins.set("bootstrap", Origin::Env(var.clone()));
        }
    }
    let file_config: FileConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| {
            let key = e.path().to_string();
            origins.invalid(&key, e.inner().message().to_owned())
        })?;
    Checker { origins: &origins }.build(file_config)
}

/// What type a key's value has; environment values are converted to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    List,
}

/// One key the file accepts.
struct KeySpec {
    /// Dotted: `ids.max_len`.
    key: &'static str,
    kind: Kind,
    /// How to fix a bad value.
    fix: &'static str,
}

const POSITIVE: &str = "set it to a positive integer";
const NON_NEGATIVE: &str = "set it to 0 or a positive integer";
const TOPICS: &str =
    "set it to a list of topic names, e.g. [\"orders\"] (in the environment: comma-separated)";
const BOOL: &str = "set it to true or false";

const fn key(key: &'static str, kind: Kind, fix: &'static str) -> KeySpec {
    KeySpec { key, kind, fix }
}

/// Every key but the open `[kafka]` table; the order of `docs/configuration.md`.
#[rustfmt::skip]
const KEYS: &[KeySpec] = &[
    key("app_id", Kind::Str, "set it to a stable name, e.g. \"orders-dedup\""),
    key("instance_id", Kind::Str, "set it to a stable id per instance, e.g. the StatefulSet ordinal"),
    key("bootstrap", Kind::Str, "set it to the Kafka bootstrap servers, e.g. \"broker1:9092,broker2:9092\""),
    key("inputs", Kind::List, TOPICS),
    key("outputs", Kind::List, TOPICS),
    key("state_dir", Kind::Str, "set it to a directory path"),
    key("threads", Kind::Int, POSITIVE),
    key("commit_interval_ms", Kind::Int, POSITIVE),
    key("max_batch_records", Kind::Int, POSITIVE),
    key("guarantee", Kind::Str, "set it to \"exactly_once\" or \"at_least_once\""),
    key("static_membership", Kind::Bool, BOOL),
    key("restore_from", Kind::Str, "set it to \"checkpoint\" or \"start\""),
    key("offset_reset", Kind::Str, "set it to \"fail\", \"earliest\" or \"latest\""),
    key("verify_topic_configs", Kind::Bool, BOOL),
    key("renew_producer_after_outage", Kind::Bool, BOOL),
    key("metrics_addr", Kind::Str, "set it to an IP address and port, e.g. \"0.0.0.0:9100\""),
    key("transaction_timeout_ms", Kind::Int, POSITIVE),
    key("startup_timeout_ms", Kind::Int, POSITIVE),
    key("replication_factor", Kind::Int, "set it to a positive integer up to 32767, or -1 for the broker's default"),
    key("block_cache_bytes", Kind::Int, POSITIVE),
    key("write_buffer_bytes", Kind::Int, POSITIVE),
    key("ids.source", Kind::Str, "set it to \"key\" or \"header:<name>\", e.g. \"header:message-id\""),
    key("ids.max_len", Kind::Int, POSITIVE),
    key("ids.on_invalid", Kind::Str, "set it to \"dead_letter\", \"process\" or \"fail\""),
    key("errors.on_error", Kind::Str, "set it to \"dead_letter\" or \"fail\""),
    key("errors.on_production_error", Kind::Str, "set it to \"dead_letter\" or \"fail\""),
    key("errors.production_attempts", Kind::Int, POSITIVE),
    key("errors.retry_max_attempts", Kind::Int, POSITIVE),
    key("errors.retry_initial_backoff_ms", Kind::Int, NON_NEGATIVE),
    key("errors.retry_max_backoff_ms", Kind::Int, NON_NEGATIVE),
    key("dedup.retention_ms", Kind::Int, POSITIVE),
    key("dedup.scope", Kind::Str, "set it to \"partition\" or \"global\""),
    key("dedup.repartition_purge_interval_ms", Kind::Int, POSITIVE),
    key("dead_letter.topic", Kind::Str, "set it to a topic name"),
    key("dead_letter.enabled", Kind::Bool, BOOL),
    key("dead_letter.create", Kind::Bool, BOOL),
];

/// Sections of the file; `kafka` is open (any librdkafka property).
const SECTIONS: [&str; 5] = ["ids", "errors", "dedup", "dead_letter", "kafka"];

const KAFKA_FIX: &str =
    "librdkafka properties are strings: quote the value, e.g. \"linger.ms\" = \"5\"";

fn spec(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|spec| spec.key == key)
}

/// How to fix a bad value of `key` (`inputs[1]` counts as `inputs`).
fn fix_for(key: &str) -> &'static str {
    let base = key.split('[').next().unwrap_or(key);
    if base.starts_with("kafka.") {
        KAFKA_FIX
    } else {
        spec(base).map_or("see docs/configuration.md", |spec| spec.fix)
    }
}

/// The environment variable that sets `key`.
fn env_var_of(key: &str) -> String {
    match key.strip_prefix("kafka.") {
        Some(property) => format!(
            "{ENV_PREFIX}KAFKA__{}",
            property.to_ascii_uppercase().replace('.', "_")
        ),
        None => format!(
            "{ENV_PREFIX}{}",
            key.to_ascii_uppercase().replace('.', "__")
        ),
    }
}

/// The config key an `EXACTLY_` variable names (`rest` follows the prefix); `Err` holds the
/// key it would name, for the message.
fn key_of_env(rest: &str) -> Result<String, String> {
    let lower = rest.to_ascii_lowercase();
    let dotted = lower.replace("__", ".");
    if spec(&dotted).is_some() {
        return Ok(dotted);
    }
    match lower.strip_prefix("kafka__") {
        Some(property)
            if !property.is_empty()
                && !property.contains("__")
                && !property.starts_with('_')
                && !property.ends_with('_') =>
        {
            Ok(format!("kafka.{}", property.replace('_', ".")))
        }
        _ => Err(dotted),
    }
}

fn unknown_key(key: String, origin: Origin) -> ConfigError {
    let section = key.split_once('.').map(|(section, _)| section);
    let valid: Vec<&'static str> = match section {
        Some(section) if SECTIONS.contains(&section) => KEYS
            .iter()
            .map(|spec| spec.key)
            .filter(|k| k.split_once('.').map(|(s, _)| s) == Some(section))
            .collect(),
        _ => keys().chain(["kafka.<librdkafka property>"]).collect(),
    };
    let suggestion = closest_key(&key).map(|close| match origin {
        Origin::Env(_) => format!("`{close}` ({})", env_var_of(close)),
        Origin::File(_) | Origin::Default => format!("`{close}`"),
    });
    ConfigError::UnknownKey {
        key,
        origin,
        suggestion,
        valid,
    }
}

/// The known key nearest to a misspelt one, if it is near enough to be the intended one. A
/// section's key written at the top level (`max_len`) is taken for that key (`ids.max_len`).
fn closest_key(key: &str) -> Option<&'static str> {
    if let Some(known) = keys().find(|known| known.split_once('.').map(|(_, k)| k) == Some(key)) {
        return Some(known);
    }
    let (distance, best) = keys()
        .map(|known| (edit_distance(key, known), known))
        .min()?;
    (distance <= (key.len() / 4).max(2)).then_some(best)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Where each set key's value came from.
#[derive(Default)]
struct Origins {
    by_key: BTreeMap<String, Origin>,
}

impl Origins {
    fn set(&mut self, key: impl Into<String>, origin: Origin) {
        self.by_key.insert(key.into(), origin);
    }

    fn of(&self, key: &str) -> Origin {
        let base = key.split('[').next().unwrap_or(key);
        self.by_key.get(base).cloned().unwrap_or(Origin::Default)
    }

    fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        self.invalid_fix(key, problem, fix_for(key))
    }

    fn invalid_fix(
        &self,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            origin: self.of(key),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Refuses unknown keys and sections that are not tables; flattens `[kafka]` so that unquoted
/// dotted property names (`security.protocol = ...`, which TOML nests) work like quoted ones.
fn check_file_keys(
    table: &mut toml::Table,
    file: &str,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let origin = Origin::File(file.to_owned());
    for (name, value) in table.iter_mut() {
        if !SECTIONS.contains(&name.as_str()) {
            if spec(name).is_none() {
                return Err(unknown_key(name.clone(), origin));
            }
            origins.set(name.as_str(), origin.clone());
            continue;
        }
        let toml::Value::Table(section) = value else {
            origins.set(name.as_str(), origin.clone());
            return Err(origins.invalid_fix(
                name,
                format!("invalid type: {}, expected a table", describe(value)),
                format!("write it as a [{name}] section"),
            ));
        };
        if name == "kafka" {
            let mut flat = toml::Table::new();
            flatten_into(&mut flat, "", std::mem::take(section));
            *section = flat;
        }
        for key in section.keys() {
            let dotted = format!("{name}.{key}");
            if name != "kafka" && spec(&dotted).is_none() {
                return Err(unknown_key(dotted, origin));
            }
            origins.set(dotted, origin.clone());
        }
    }
    Ok(())
}

fn flatten_into(flat: &mut toml::Table, prefix: &str, table: toml::Table) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(nested) => flatten_into(flat, &name, nested),
            value => {
                flat.insert(name, value);
            }
        }
    }
}

/// A value as serde's messages describe it.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer `{i}`"),
        toml::Value::Float(x) => format!("floating point `{x}`"),
        toml::Value::Boolean(b) => format!("boolean `{b}`"),
        toml::Value::Datetime(d) => format!("datetime `{d}`"),
        toml::Value::Array(_) => "sequence".to_owned(),
        toml::Value::Table(_) => "map".to_owned(),
    }
}

/// Writes the `EXACTLY_*` overrides into the file's table, converted to the key's type.
/// A value that does not convert stays a string, and deserialization names the key.
fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if is_test_hook(var) {
            continue;
        }
        let key = key_of_env(rest).map_err(|key| unknown_key(key, Origin::Env(var.clone())))?;
        let kind = spec(&key).map_or(Kind::Str, |spec| spec.kind);
        let value = match kind {
            Kind::Str => toml::Value::String(raw.clone()),
            Kind::Int => raw
                .trim()
                .parse::<i64>()
                .map_or_else(|_| toml::Value::String(raw.clone()), toml::Value::Integer),
            Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => toml::Value::String(raw.clone()),
            },
            Kind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_owned()))
                    .collect(),
            ),
        };
        match key.split_once('.') {
            Some((section, name)) => {
                table
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .expect("check_file_keys refused sections that are not tables")
                    .insert(name.to_owned(), value);
            }
            None => {
                table.insert(key.clone(), value);
            }
        }
        origins.set(key, Origin::Env(var.clone()));
    }
    Ok(())
}

/// Integer that must not be negative; `expecting` completes "invalid type: ..., expected".
struct UnsignedVisitor(&'static str);

impl Visitor<'_> for UnsignedVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &"a value of 0 or more"))
    }
}

struct SignedVisitor;

impl Visitor<'_> for SignedVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_u64(UnsignedVisitor("an integer number of milliseconds"))
        .map(Some)
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_u64(UnsignedVisitor("an integer number of bytes"))
        .map(Some)
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_u64(UnsignedVisitor("an integer")).map(Some)
}

fn signed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_i64(SignedVisitor).map(Some)
}

/// Applies defaults and checks values; every error names its key and origin.
struct Checker<'a> {
    origins: &'a Origins,
}

impl Checker<'_> {
    fn build(&self, file: FileConfig) -> Result<LoadedConfig, ConfigError> {
        let app_id = self.non_empty("app_id", file.app_id.ok_or_else(|| missing("app_id"))?)?;
        let mut runtime = RuntimeConfig::new(app_id.clone(), DEFAULT_BOOTSTRAP);
        if let Some(bootstrap) = file.bootstrap {
            runtime.bootstrap = self.non_empty("bootstrap", bootstrap)?;
        }
        if let Some(instance_id) = file.instance_id {
            runtime.instance_id = self.non_empty("instance_id", instance_id)?;
        }
        runtime.inputs = self.topics("inputs", file.inputs.ok_or_else(|| missing("inputs"))?)?;
        if runtime.inputs.is_empty() {
            return Err(self.origins.invalid_fix(
                "inputs",
                "is empty",
                "list at least one input topic, e.g. [\"orders\"]",
            ));
        }
        if let Some(outputs) = file.outputs {
            runtime.outputs = self.topics("outputs", outputs)?;
        }
        if let Some(dir) = file.state_dir {
            runtime.state_dir = PathBuf::from(self.non_empty("state_dir", dir)?);
        }
        if let Some(n) = file.threads {
            runtime.threads = self.usize("threads", self.positive("threads", n)?)?;
        }
        if let Some(ms) = file.commit_interval_ms {
            runtime.commit_interval =
                Duration::from_millis(self.positive("commit_interval_ms", ms)?);
        }
        if let Some(n) = file.max_batch_records {
            runtime.max_batch_records =
                self.usize("max_batch_records", self.positive("max_batch_records", n)?)?;
        }
        if let Some(name) = file.guarantee {
            runtime.guarantee = self.choice(
                "guarantee",
                &name,
                &[
                    ("exactly_once", Guarantee::ExactlyOnce),
                    ("at_least_once", Guarantee::AtLeastOnce),
                ],
            )?;
        }
        if let Some(on) = file.static_membership {
            runtime.static_membership = on;
        }
        if let Some(on) = file.verify_topic_configs {
            runtime.verify_topic_configs = on;
        }
        if let Some(on) = file.renew_producer_after_outage {
            runtime.renew_producer_after_outage = on;
        }
        if let Some(from) = &file.restore_from {
            runtime.restore_from = self.choice(
                "restore_from",
                from,
                &[
                    ("checkpoint", RestoreFrom::Checkpoint),
                    ("start", RestoreFrom::Start),
                ],
            )?;
        }
        if let Some(reset) = &file.offset_reset {
            runtime.offset_reset = self.choice(
                "offset_reset",
                reset,
                &[
                    ("fail", OffsetReset::Fail),
                    ("earliest", OffsetReset::Earliest),
                    ("latest", OffsetReset::Latest),
                ],
            )?;
        }
        if let Some(scope) = &file.dedup.scope {
            runtime.dedup_scope = self.choice(
                "dedup.scope",
                scope,
                &[
                    ("partition", DedupScope::Partition),
                    ("global", DedupScope::Global),
                ],
            )?;
        }
        if let Some(ms) = file.dedup.repartition_purge_interval_ms {
            runtime.repartition_purge_interval =
                Duration::from_millis(self.positive("dedup.repartition_purge_interval_ms", ms)?);
        }
        let metrics_addr = file
            .metrics_addr
            .map(|addr| {
                addr.trim().parse::<SocketAddr>().map_err(|_| {
                    self.origins.invalid(
                        "metrics_addr",
                        format!("{addr:?} is not an IP address and port"),
                    )
                })
            })
            .transpose()?;
        if let Some(ms) = file.transaction_timeout_ms {
            runtime.transaction_timeout =
                Duration::from_millis(self.positive("transaction_timeout_ms", ms)?);
        }
        if runtime.commit_interval >= runtime.transaction_timeout {
            return Err(self.origins.invalid_fix(
                "commit_interval_ms",
                format!(
                    "{} ms is not shorter than transaction_timeout_ms ({} ms), so transactions would time out before they commit",
                    runtime.commit_interval.as_millis(),
                    runtime.transaction_timeout.as_millis()
                ),
                "lower it or raise transaction_timeout_ms",
            ));
        }
        if let Some(ms) = file.startup_timeout_ms {
            runtime.startup_timeout =
                Duration::from_millis(self.positive("startup_timeout_ms", ms)?);
        }
        if let Some(factor) = file.replication_factor {
            runtime.replication_factor = match factor {
                -1 | 1..=32767 => i32::try_from(factor).expect("checked to be in i16's range"),
                _ => {
                    return Err(self
                        .origins
                        .invalid("replication_factor", format!("is {factor}")))
                }
            };
        }
        if let Some(n) = file.block_cache_bytes {
            runtime.block_cache_bytes =
                self.usize("block_cache_bytes", self.positive("block_cache_bytes", n)?)?;
        }
        if let Some(n) = file.write_buffer_bytes {
            runtime.write_buffer_bytes = self.usize(
                "write_buffer_bytes",
                self.positive("write_buffer_bytes", n)?,
            )?;
        }
        runtime.task = self.task(
            &file.ids,
            &file.errors,
            &file.dedup,
            &file.dead_letter,
            &app_id,
        )?;
        runtime.create_dead_letter_topic = file.dead_letter.create.unwrap_or(true);
        runtime.kafka = self.kafka(file.kafka)?;
        Ok(LoadedConfig {
            runtime,
            metrics_addr,
        })
    }

    fn task(
        &self,
        ids: &IdsSection,
        errors: &ErrorsSection,
        dedup: &DedupSection,
        dead_letter: &DeadLetterSection,
        app_id: &str,
    ) -> Result<TaskConfig, ConfigError> {
        let mut task = TaskConfig {
            ids: self.ids(ids)?,
            retry: self.retry(errors)?,
            ..TaskConfig::default()
        };
        let policies = [
            ("dead_letter", ErrorPolicy::DeadLetter),
            ("fail", ErrorPolicy::Fail),
        ];
        if let Some(name) = &errors.on_error {
            task.on_error = self.choice("errors.on_error", name, &policies)?;
        }
        if let Some(name) = &errors.on_production_error {
            task.on_production_error =
                self.choice("errors.on_production_error", name, &policies)?;
        }
        if let Some(n) = errors.production_attempts {
            let n = self.positive("errors.production_attempts", n)?;
            task.production_attempts = u32::try_from(n).map_err(|_| {
                self.origins
                    .invalid("errors.production_attempts", format!("{n} is too large"))
            })?;
        }
        if let Some(ms) = dedup.retention_ms {
            let ms = self.positive("dedup.retention_ms", ms)?;
            task.dedup_retention_ms = i64::try_from(ms).map_err(|_| {
                self.origins
                    .invalid("dedup.retention_ms", format!("{ms} is too large"))
            })?;
        }
        task.dead_letter_topic = if dead_letter.enabled.unwrap_or(true) {
            let topic = dead_letter
                .topic
                .clone()
                .unwrap_or_else(|| default_dead_letter_topic(app_id));
            Some(self.non_empty("dead_letter.topic", topic)?)
        } else {
            None
        };
        Ok(task)
    }

    fn ids(&self, section: &IdsSection) -> Result<IdPolicy, ConfigError> {
        let mut ids = IdPolicy::default();
        if let Some(source) = &section.source {
            ids.source = match source.split_once(':') {
                _ if source == "key" => IdSource::Key,
                Some(("header", name)) if !name.is_empty() => IdSource::Header(name.to_owned()),
                _ => {
                    return Err(self
                        .origins
                        .invalid("ids.source", format!("unknown value {source:?}")))
                }
            };
        }
        if let Some(n) = section.max_len {
            ids.max_len = self.usize("ids.max_len", self.positive("ids.max_len", n)?)?;
        }
        if let Some(name) = &section.on_invalid {
            ids.on_invalid = self.choice(
                "ids.on_invalid",
                name,
                &[
                    ("dead_letter", InvalidIdPolicy::DeadLetter),
                    ("process", InvalidIdPolicy::Process),
                    ("fail", InvalidIdPolicy::Fail),
                ],
            )?;
        }
        Ok(ids)
    }

    fn retry(&self, section: &ErrorsSection) -> Result<RetryPolicy, ConfigError> {
        let mut retry = RetryPolicy::default();
        if let Some(n) = section.retry_max_attempts {
            let n = self.positive("errors.retry_max_attempts", n)?;
            retry.max_attempts = u32::try_from(n).map_err(|_| {
                self.origins
                    .invalid("errors.retry_max_attempts", format!("{n} is too large"))
            })?;
        }
        if let Some(ms) = section.retry_initial_backoff_ms {
            retry.initial_backoff = Duration::from_millis(ms);
        }
        if let Some(ms) = section.retry_max_backoff_ms {
            retry.max_backoff = Duration::from_millis(ms);
        }
        if retry.initial_backoff > retry.max_backoff {
            return Err(self.origins.invalid_fix(
                "errors.retry_initial_backoff_ms",
                format!(
                    "{} ms is more than errors.retry_max_backoff_ms ({} ms)",
                    retry.initial_backoff.as_millis(),
                    retry.max_backoff.as_millis()
                ),
                "lower it or raise errors.retry_max_backoff_ms",
            ));
        }
        Ok(retry)
    }

    fn kafka(
        &self,
        properties: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        for name in properties.keys() {
            let key = format!("kafka.{name}");
            if MANAGED_KAFKA_PROPERTIES.contains(&name.as_str()) {
                return Err(self.origins.invalid_fix(
                    &key,
                    "is managed by exactly and cannot be overridden (it is part of the exactly-once protocol)",
                    "remove it",
                ));
            }
            if name == "bootstrap.servers" {
                return Err(self.origins.invalid_fix(
                    &key,
                    "duplicates the `bootstrap` key",
                    "remove it and set `bootstrap` (EXACTLY_BOOTSTRAP) instead",
                ));
            }
        }
        Ok(properties)
    }

    fn non_empty(&self, key: &str, value: String) -> Result<String, ConfigError> {
        if value.trim().is_empty() {
            return Err(self.origins.invalid(key, "is empty"));
        }
        Ok(value)
    }

    fn topics(&self, key: &str, topics: Vec<String>) -> Result<Vec<String>, ConfigError> {
        if topics.iter().any(|topic| topic.trim().is_empty()) {
            return Err(self.origins.invalid(key, "contains an empty topic name"));
        }
        Ok(topics)
    }

    fn positive(&self, key: &str, value: u64) -> Result<u64, ConfigError> {
        if value == 0 {
            return Err(self.origins.invalid(key, "is 0 but must be at least 1"));
        }
        Ok(value)
    }

    fn usize(&self, key: &str, value: u64) -> Result<usize, ConfigError> {
        usize::try_from(value)
            .map_err(|_| self.origins.invalid(key, format!("{value} is too large")))
    }

    fn choice<T: Copy>(
        &self,
        key: &str,
        value: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        choices
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, choice)| *choice)
            .ok_or_else(|| {
                self.origins
                    .invalid(key, format!("unknown value {value:?}"))
            })
    }
}

fn missing(key: &'static str) -> ConfigError {
    ConfigError::Missing {
        key,
        env_var: env_var_of(key),
    }
}

/// The effective config in the file's layout, for logs and `--print-config`. Values of secret
/// librdkafka properties ([`is_secret_property`]) read `<redacted>`. Without secrets and
/// custom ID extractors the text loads back into the same config.
pub fn redacted(config: &RuntimeConfig) -> String {
    let string = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|s| string(s)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let task = &config.task;
    let guarantee = match config.guarantee {
        Guarantee::ExactlyOnce => "exactly_once",
        Guarantee::AtLeastOnce => "at_least_once",
    };
    let source = match &task.ids.source {
        IdSource::Header(name) => format!("header:{name}"),
        IdSource::Key => "key".to_owned(),
        IdSource::Custom(_) => "<custom extractor>".to_owned(),
    };
    let on_invalid = match task.ids.on_invalid {
        InvalidIdPolicy::DeadLetter => "dead_letter",
        InvalidIdPolicy::Process => "process",
        InvalidIdPolicy::Fail => "fail",
    };
    let policy = |p: ErrorPolicy| match p {
        ErrorPolicy::DeadLetter => "dead_letter",
        ErrorPolicy::Fail => "fail",
    };
    let mut lines = vec![
        format!("app_id = {}", string(&config.app_id)),
        format!("instance_id = {}", string(&config.instance_id)),
        format!("bootstrap = {}", string(&config.bootstrap)),
        format!("inputs = {}", list(&config.inputs)),
        format!("outputs = {}", list(&config.outputs)),
        format!(
            "state_dir = {}",
            string(&config.state_dir.to_string_lossy())
        ),
        format!("threads = {}", config.threads),
        format!(
            "commit_interval_ms = {}",
            config.commit_interval.as_millis()
        ),
        format!("max_batch_records = {}", config.max_batch_records),
        format!("guarantee = {}", string(guarantee)),
        format!("static_membership = {}", config.static_membership),
        format!("verify_topic_configs = {}", config.verify_topic_configs),
        format!(
            "renew_producer_after_outage = {}",
            config.renew_producer_after_outage
        ),
        format!(
            "restore_from = {}",
            string(match config.restore_from {
                RestoreFrom::Checkpoint => "checkpoint",
                RestoreFrom::Start => "start",
            })
        ),
        format!(
            "offset_reset = {}",
            string(match config.offset_reset {
                OffsetReset::Fail => "fail",
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            })
        ),
        format!(
            "transaction_timeout_ms = {}",
            config.transaction_timeout.as_millis()
        ),
        format!(
            "startup_timeout_ms = {}",
            config.startup_timeout.as_millis()
        ),
        format!("replication_factor = {}", config.replication_factor),
        format!("block_cache_bytes = {}", config.block_cache_bytes),
        format!("write_buffer_bytes = {}", config.write_buffer_bytes),
        String::new(),
        "[ids]".to_owned(),
        format!("source = {}", string(&source)),
        format!("max_len = {}", task.ids.max_len),
        format!("on_invalid = {}", string(on_invalid)),
        String::new(),
        "[errors]".to_owned(),
        format!("on_error = {}", string(policy(task.on_error))),
        format!(
            "on_production_error = {}",
            string(policy(task.on_production_error))
        ),
        format!("production_attempts = {}", task.production_attempts),
        format!("retry_max_attempts = {}", task.retry.max_attempts),
        format!(
            "retry_initial_backoff_ms = {}",
            task.retry.initial_backoff.as_millis()
        ),
        format!(
            "retry_max_backoff_ms = {}",
            task.retry.max_backoff.as_millis()
        ),
        String::new(),
        "[dedup]".to_owned(),
        format!("retention_ms = {}", task.dedup_retention_ms),
        format!(
            "scope = {}",
            string(match config.dedup_scope {
                DedupScope::Partition => "partition",
                DedupScope::Global => "global",
            })
        ),
        format!(
            "repartition_purge_interval_ms = {}",
            config.repartition_purge_interval.as_millis()
        ),
        String::new(),
        "[dead_letter]".to_owned(),
        format!("enabled = {}", task.dead_letter_topic.is_some()),
    ];
    if let Some(topic) = &task.dead_letter_topic {
        lines.push(format!("topic = {}", string(topic)));
    }
    lines.push(format!("create = {}", config.create_dead_letter_topic));
    lines.push(String::new());
    lines.push("[kafka]".to_owned());
    for (name, value) in &config.kafka {
        let shown = if is_secret_property(name) {
            "<redacted>"
        } else {
            value
        };
        lines.push(format!("{} = {}", string(name), string(shown)));
    }
    lines.push(String::new());
    lines.join("\n")
}
