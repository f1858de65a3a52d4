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

mod keys;

pub use keys::{key, redacted, reference_markdown, Key, Kind, Unit, KEYS};

use exactly_kafka::{default_dead_letter_topic, RuntimeConfig};
use keys::{Check, Draft};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "EXACTLY_";

/// Bootstrap servers when neither the config nor `KAFKA_BOOTSTRAP` names any (the local
/// test broker, as in `App::new`).
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:29092";

/// How [`load_from`] names the file in error messages ([`load`] uses its path).
const UNNAMED_FILE: &str = "the config file";

use exactly_kafka::config::MANAGED_KAFKA_PROPERTIES;

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
    KEYS.iter().map(|key| key.name)
}

/// The relevant variables of this process's environment. `std::env::vars` would panic on a
/// non-UTF-8 variable anywhere in the environment; only ours must be UTF-8.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        if !(name.starts_with(ENV_PREFIX) || name == "KAFKA_BOOTSTRAP") {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.push((name, value)),
            Err(_) => return Err(ConfigError::NotUnicode { var: name }),
        }
    }
    Ok(vars)
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
    build(table, &origins)
}

/// Sets every key `table` holds (file and environment merged) in the declaration order, then
/// applies the defaults that depend on other keys and checks the keys against each other.
fn build(mut table: toml::Table, origins: &Origins) -> Result<LoadedConfig, ConfigError> {
    let mut draft = Draft {
        runtime: RuntimeConfig::new(String::new(), DEFAULT_BOOTSTRAP),
        metrics_addr: None,
        dead_letter_enabled: true,
        dead_letter_topic: None,
    };
    for key in KEYS {
        let raw = match key.name.split_once('.') {
            Some((section, name)) => table
                .get_mut(section)
                .and_then(toml::Value::as_table_mut)
                .and_then(|s| s.remove(name)),
            None => table.remove(key.name),
        };
        let Some(raw) = raw else {
            if key.required {
                return Err(missing(key.name));
            }
            continue;
        };
        let check = Check { key, origins };
        let value = check.value(raw)?;
        key.apply(&mut draft, value, &check)?;
    }
    let kafka = match table.remove("kafka") {
        Some(toml::Value::Table(properties)) => kafka_properties(properties, origins)?,
        _ => BTreeMap::new(),
    };
    let Draft {
        mut runtime,
        metrics_addr,
        dead_letter_enabled,
        dead_letter_topic,
    } = draft;
    runtime.kafka = kafka;
    if runtime.inputs.is_empty() {
        return Err(origins.invalid_fix(
            "inputs",
            "is empty",
            "list at least one input topic, e.g. [\"orders\"]",
        ));
    }
    if runtime.commit_interval >= runtime.transaction_timeout {
        return Err(origins.invalid_fix(
            "commit_interval_ms",
            format!(
                "{} ms is not shorter than transaction_timeout_ms ({} ms), so transactions would time out before they commit",
                runtime.commit_interval.as_millis(),
                runtime.transaction_timeout.as_millis()
            ),
            "lower it or raise transaction_timeout_ms",
        ));
    }
    let retry = &runtime.task.retry;
    if retry.initial_backoff > retry.max_backoff {
        return Err(origins.invalid_fix(
            "errors.retry_initial_backoff_ms",
            format!(
                "{} ms is more than errors.retry_max_backoff_ms ({} ms)",
                retry.initial_backoff.as_millis(),
                retry.max_backoff.as_millis()
            ),
            "lower it or raise errors.retry_max_backoff_ms",
        ));
    }
    runtime.task.dead_letter_topic = dead_letter_enabled
        .then(|| dead_letter_topic.unwrap_or_else(|| default_dead_letter_topic(&runtime.app_id)));
    Ok(LoadedConfig {
        runtime,
        metrics_addr,
    })
}

/// The `[kafka]` table: strings, none of the properties exactly manages.
fn kafka_properties(
    properties: toml::Table,
    origins: &Origins,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, value) in properties {
        let key = format!("kafka.{name}");
        if MANAGED_KAFKA_PROPERTIES.contains(&name.as_str()) {
            return Err(origins.invalid_fix(
                &key,
                "is managed by exactly and cannot be overridden (it is part of the exactly-once protocol)",
                "remove it",
            ));
        }
        if name == "bootstrap.servers" {
            return Err(origins.invalid_fix(
                &key,
                "duplicates the `bootstrap` key",
                "remove it and set `bootstrap` (EXACTLY_BOOTSTRAP) instead",
            ));
        }
        match value {
            toml::Value::String(v) => {
                out.insert(name, v);
            }
            other => {
                return Err(origins.invalid(
                    &key,
                    format!("invalid type: {}, expected a string", describe(&other)),
                ))
            }
        }
    }
    Ok(out)
}

/// Whether `name` is a section of the file: a declared one or the open `[kafka]` table.
fn is_section(name: &str) -> bool {
    name == "kafka" || keys::SECTIONS.iter().any(|(section, _)| *section == name)
}

const KAFKA_FIX: &str =
    "librdkafka properties are strings: quote the value, e.g. \"linger.ms\" = \"5\"";

/// How to fix a bad value of `key` (`inputs[1]` counts as `inputs`).
fn fix_for(key: &str) -> String {
    let base = key.split('[').next().unwrap_or(key);
    if base.starts_with("kafka.") {
        KAFKA_FIX.to_owned()
    } else {
        self::key(base).map_or_else(|| "see docs/configuration.md".to_owned(), Key::fix)
    }
}

/// The environment variable that sets `key`.
fn env_var_of(key: &str) -> String {
    match key.strip_prefix("kafka.") {
        Some(property) => format!(
            "{ENV_PREFIX}KAFKA__{}",
            property.to_ascii_uppercase().replace('.', "_")
        ),
        None => match self::key(key) {
            Some(known) => known.env_var(),
            None => format!(
                "{ENV_PREFIX}{}",
                key.to_ascii_uppercase().replace('.', "__")
            ),
        },
    }
}

/// The config key an `EXACTLY_` variable names (`rest` follows the prefix); `Err` holds the
/// key it would name, for the message.
fn key_of_env(rest: &str) -> Result<String, String> {
    let lower = rest.to_ascii_lowercase();
    let dotted = lower.replace("__", ".");
    if key(&dotted).is_some() {
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
        Some(section) if is_section(section) => KEYS
            .iter()
            .map(|key| key.name)
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
        if !is_section(name) {
            if key(name).is_none() {
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
            if name != "kafka" && self::key(&dotted).is_none() {
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
        let key = key_of_env(rest).map_err(|key| unknown_key(key, Origin::Env(var.clone())))?;
        let kind = self::key(&key).map_or(Kind::Str, |key| key.kind);
        let value = match kind {
            Kind::Str | Kind::Choice(_) => toml::Value::String(raw.clone()),
            Kind::Int { .. } | Kind::Signed => raw
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

fn missing(key: &'static str) -> ConfigError {
    ConfigError::Missing {
        key,
        env_var: env_var_of(key),
    }
}
