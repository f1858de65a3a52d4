//! Every config key, declared once ([`KEYS`]): its name, type, default, meaning, how to fix a
//! bad value, how it sets the [`RuntimeConfig`] and how [`redacted`] prints it. The file
//! loader, the `EXACTLY_*` overrides (the variable is derived from the name), the unknown-key
//! errors, `exactly check` and the key tables of `docs/configuration.md`
//! ([`reference_markdown`]; a test fails when the page differs) all come from it.

use super::{ConfigError, Origins, ENV_PREFIX};
use exactly_core::{ErrorPolicy, IdSource, InvalidIdPolicy};
use exactly_kafka::config::is_secret_property;
use exactly_kafka::{DedupScope, Guarantee, OffsetReset, RestoreFrom, RuntimeConfig};
use std::path::PathBuf;
use std::time::Duration;

/// The unit of an integer key (for messages and docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count.
    Count,
    /// Milliseconds.
    Millis,
    /// Bytes.
    Bytes,
}

/// What type a key's value has; environment values are converted to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// A list of strings (in the environment: comma-separated).
    List,
    /// `true` or `false`.
    Bool,
    /// An integer of at least `min`.
    Int {
        /// What it counts.
        unit: Unit,
        /// The least valid value.
        min: u64,
    },
    /// Any integer (further checked by the key).
    Signed,
    /// One of these strings.
    Choice(&'static [&'static str]),
}

impl Kind {
    const COUNT: Self = Self::Int {
        unit: Unit::Count,
        min: 1,
    };
    const MILLIS: Self = Self::Int {
        unit: Unit::Millis,
        min: 1,
    };
    const BYTES: Self = Self::Int {
        unit: Unit::Bytes,
        min: 1,
    };
}

/// A value of the key's [`Kind`], checked.
#[derive(Debug, Clone)]
pub(super) enum Value {
    Str(String),
    List(Vec<String>),
    Bool(bool),
    Int(u64),
    Signed(i64),
}

impl Value {
    fn string(self) -> String {
        match self {
            Self::Str(s) => s,
            other => unreachable!("the kind said a string, got {other:?}"),
        }
    }
    fn list(self) -> Vec<String> {
        match self {
            Self::List(l) => l,
            other => unreachable!("the kind said a list, got {other:?}"),
        }
    }
    fn boolean(self) -> bool {
        match self {
            Self::Bool(b) => b,
            other => unreachable!("the kind said a bool, got {other:?}"),
        }
    }
    fn int(self) -> u64 {
        match self {
            Self::Int(i) => i,
            other => unreachable!("the kind said an integer, got {other:?}"),
        }
    }
    fn signed(self) -> i64 {
        match self {
            Self::Signed(i) => i,
            other => unreachable!("the kind said an integer, got {other:?}"),
        }
    }
}

/// The config as the keys build it: the runtime's, the facade's metrics address and the
/// dead-letter settings, which are resolved once the app id is known.
pub(super) struct Draft {
    pub(super) runtime: RuntimeConfig,
    pub(super) metrics_addr: Option<std::net::SocketAddr>,
    pub(super) dead_letter_enabled: bool,
    pub(super) dead_letter_topic: Option<String>,
}

/// Checks of one key's value, whose errors name the key and where its value came from.
pub(super) struct Check<'a> {
    pub(super) key: &'static Key,
    pub(super) origins: &'a Origins,
}

impl Check<'_> {
    fn invalid(&self, problem: impl Into<String>) -> ConfigError {
        self.origins.invalid(self.key.name, problem)
    }
    fn non_empty(&self, value: String) -> Result<String, ConfigError> {
        if value.trim().is_empty() {
            return Err(self.invalid("is empty"));
        }
        Ok(value)
    }
    fn topics(&self, topics: Vec<String>) -> Result<Vec<String>, ConfigError> {
        if topics.iter().any(|topic| topic.trim().is_empty()) {
            return Err(self.invalid("contains an empty topic name"));
        }
        Ok(topics)
    }
    fn usize(&self, value: u64) -> Result<usize, ConfigError> {
        usize::try_from(value).map_err(|_| self.invalid(format!("{value} is too large")))
    }
    fn u32(&self, value: u64) -> Result<u32, ConfigError> {
        u32::try_from(value).map_err(|_| self.invalid(format!("{value} is too large")))
    }

    /// The value of `raw` (from the file, or converted from the environment) as the key's
    /// kind, or an error in serde's words ("invalid type: string "abc", expected an integer").
    pub(super) fn value(&self, raw: toml::Value) -> Result<Value, ConfigError> {
        let wrong = |expected: &str| {
            self.invalid(format!(
                "invalid type: {}, expected {expected}",
                super::describe(&raw)
            ))
        };
        match self.key.kind {
            Kind::Str => match raw {
                toml::Value::String(s) => Ok(Value::Str(s)),
                _ => Err(wrong("a string")),
            },
            Kind::Choice(choices) => match raw {
                toml::Value::String(s) if choices.contains(&s.as_str()) => Ok(Value::Str(s)),
                toml::Value::String(s) => Err(self.invalid(format!("unknown value {s:?}"))),
                _ => Err(wrong("a string")),
            },
            Kind::Bool => match raw {
                toml::Value::Boolean(b) => Ok(Value::Bool(b)),
                _ => Err(wrong("a boolean")),
            },
            Kind::List => match raw {
                toml::Value::Array(items) => {
                    let mut list = Vec::with_capacity(items.len());
                    for (i, item) in items.into_iter().enumerate() {
                        match item {
                            toml::Value::String(s) => list.push(s),
                            other => {
                                return Err(self.origins.invalid(
                                    &format!("{}[{i}]", self.key.name),
                                    format!(
                                        "invalid type: {}, expected a string",
                                        super::describe(&other)
                                    ),
                                ))
                            }
                        }
                    }
                    Ok(Value::List(list))
                }
                _ => Err(wrong("a sequence")),
            },
            Kind::Int { unit, min } => {
                let expected = match unit {
                    Unit::Count => "an integer",
                    Unit::Millis => "an integer number of milliseconds",
                    Unit::Bytes => "an integer number of bytes",
                };
                let toml::Value::Integer(i) = raw else {
                    return Err(wrong(expected));
                };
                let Ok(n) = u64::try_from(i) else {
                    return Err(self.invalid(format!(
                        "invalid value: integer `{i}`, expected a value of 0 or more"
                    )));
                };
                if n < min {
                    return Err(self.invalid(format!("is {n} but must be at least {min}")));
                }
                Ok(Value::Int(n))
            }
            Kind::Signed => match raw {
                toml::Value::Integer(i) => Ok(Value::Signed(i)),
                _ => Err(wrong("an integer")),
            },
        }
    }
}

/// One config key, declared once.
pub struct Key {
    /// Dotted: `ids.max_len`.
    pub name: &'static str,
    /// The type of its values.
    pub kind: Kind,
    /// Set nowhere is an error.
    pub required: bool,
    /// The type, as docs/configuration.md shows it (empty for a choice: the choices).
    type_doc: &'static str,
    /// The default, as docs/configuration.md shows it.
    pub default_doc: &'static str,
    /// What it does (Markdown, one paragraph).
    pub doc: &'static str,
    /// How to fix a bad value (empty for a choice: set it to one of them).
    fix: &'static str,
    apply: fn(&mut Draft, Value, &Check<'_>) -> Result<(), ConfigError>,
    show: fn(&RuntimeConfig) -> Option<toml::Value>,
}

impl Key {
    /// The environment variable that sets it: `EXACTLY_` and the name in capitals, with `__`
    /// between a section and its key (`EXACTLY_IDS__MAX_LEN`).
    pub fn env_var(&self) -> String {
        format!(
            "{ENV_PREFIX}{}",
            self.name.to_ascii_uppercase().replace('.', "__")
        )
    }

    /// The type, as docs/configuration.md shows it.
    pub fn type_doc(&self) -> String {
        match self.kind {
            Kind::Choice(choices) => {
                let quoted: Vec<String> = choices.iter().map(|c| format!("`\"{c}\"`")).collect();
                or_list(&quoted)
            }
            _ => self.type_doc.to_owned(),
        }
    }

    /// How to fix a bad value.
    pub fn fix(&self) -> String {
        match self.kind {
            Kind::Choice(choices) => {
                let quoted: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
                format!("set it to {}", or_list(&quoted))
            }
            _ => self.fix.to_owned(),
        }
    }

    /// Sets `value` (already of the key's kind) in `draft`.
    pub(super) fn apply(
        &self,
        draft: &mut Draft,
        value: Value,
        check: &Check<'_>,
    ) -> Result<(), ConfigError> {
        (self.apply)(draft, value, check)
    }

    /// The section (`ids`) and the name in it (`max_len`); `None` for a top-level key.
    fn split(&self) -> (Option<&'static str>, &'static str) {
        match self.name.split_once('.') {
            Some((section, name)) => (Some(section), name),
            None => (None, self.name),
        }
    }
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

const POSITIVE: &str = "set it to a positive integer";
const NON_NEGATIVE: &str = "set it to 0 or a positive integer";
const TOPICS: &str =
    "set it to a list of topic names, e.g. [\"orders\"] (in the environment: comma-separated)";
const BOOL: &str = "set it to true or false";
const POLICIES: &[&str] = &["dead_letter", "fail"];

fn policy(name: &str) -> ErrorPolicy {
    if name == "fail" {
        ErrorPolicy::Fail
    } else {
        ErrorPolicy::DeadLetter
    }
}

fn policy_name(policy: ErrorPolicy) -> &'static str {
    match policy {
        ErrorPolicy::DeadLetter => "dead_letter",
        ErrorPolicy::Fail => "fail",
    }
}

fn text(s: &str) -> toml::Value {
    toml::Value::String(s.to_owned())
}

fn int(n: impl TryInto<i64>) -> toml::Value {
    toml::Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> toml::Value {
    int(d.as_millis())
}

fn list(items: &[String]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| text(s)).collect())
}

/// Every key but the open `[kafka]` table, in the order of the docs and of [`redacted`].
pub static KEYS: &[Key] = &[
    Key {
        name: "app_id",
        kind: Kind::Str,
        required: true,
        type_doc: r#"string"#,
        default_doc: r#"**required**"#,
        doc: r#"Application id: the consumer group id and the prefix of internal topics (`{app_id}-{input}-dedup-changelog`, `{app_id}-dlq`). Keep it stable: a new id starts with no committed offsets and an empty dedup store."#,
        fix: "set it to a stable name, e.g. \"orders-dedup\"",
        apply: |d, v, c| {
            d.runtime.app_id = c.non_empty(v.string())?;
            Ok(())
        },
        show: |r| Some(text(&r.app_id)),
    },
    Key {
        name: "instance_id",
        kind: Kind::Str,
        required: false,
        type_doc: r#"string"#,
        default_doc: r#"`"0"`"#,
        doc: r#"Stable id of this instance, e.g. the StatefulSet ordinal. Part of every `transactional.id` (`{app_id}-{instance_id}-{thread}`), so a restarted instance fences its predecessor at once. Two live instances must never share one."#,
        fix: "set it to a stable id per instance, e.g. the StatefulSet ordinal",
        apply: |d, v, c| {
            d.runtime.instance_id = c.non_empty(v.string())?;
            Ok(())
        },
        show: |r| Some(text(&r.instance_id)),
    },
    Key {
        name: "bootstrap",
        kind: Kind::Str,
        required: false,
        type_doc: r#"string"#,
        default_doc: r#"`$KAFKA_BOOTSTRAP`, else `"127.0.0.1:29092"`"#,
        doc: r#"Kafka bootstrap servers, comma-separated."#,
        fix: "set it to the Kafka bootstrap servers, e.g. \"broker1:9092,broker2:9092\"",
        apply: |d, v, c| {
            d.runtime.bootstrap = c.non_empty(v.string())?;
            Ok(())
        },
        show: |r| Some(text(&r.bootstrap)),
    },
    Key {
        name: "inputs",
        kind: Kind::List,
        required: true,
        type_doc: r#"list of strings"#,
        default_doc: r#"**required**, non-empty"#,
        doc: r#"Input topics."#,
        fix: TOPICS,
        apply: |d, v, c| {
            d.runtime.inputs = c.topics(v.list())?;
            Ok(())
        },
        show: |r| Some(list(&r.inputs)),
    },
    Key {
        name: "outputs",
        kind: Kind::List,
        required: false,
        type_doc: r#"list of strings"#,
        default_doc: r#"`[]`"#,
        doc: r#"Output topics the processor writes to; checked to exist before processing starts."#,
        fix: TOPICS,
        apply: |d, v, c| {
            d.runtime.outputs = c.topics(v.list())?;
            Ok(())
        },
        show: |r| Some(list(&r.outputs)),
    },
    Key {
        name: "state_dir",
        kind: Kind::Str,
        required: false,
        type_doc: r#"string"#,
        default_doc: r#"`"state"`"#,
        doc: r#"Root of the per-task RocksDB stores. Keep it on a persistent volume to avoid a changelog replay at every start."#,
        fix: "set it to a directory path",
        apply: |d, v, c| {
            d.runtime.state_dir = PathBuf::from(c.non_empty(v.string())?);
            Ok(())
        },
        show: |r| Some(text(&r.state_dir.to_string_lossy())),
    },
    Key {
        name: "threads",
        kind: Kind::COUNT,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`1`"#,
        doc: r#"Stream threads in this instance (each with its own consumer and transactional producer)."#,
        fix: POSITIVE,
        apply: |d, v, c| {
            d.runtime.threads = c.usize(v.int())?;
            Ok(())
        },
        show: |r| Some(int(r.threads)),
    },
    Key {
        name: "commit_interval_ms",
        kind: Kind::MILLIS,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`100`"#,
        doc: r#"How often the open transaction is committed. Must be shorter than `transaction_timeout_ms`."#,
        fix: POSITIVE,
        apply: |d, v, _| {
            d.runtime.commit_interval = Duration::from_millis(v.int());
            Ok(())
        },
        show: |r| Some(millis(r.commit_interval)),
    },
    Key {
        name: "max_batch_records",
        kind: Kind::COUNT,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`10000`"#,
        doc: r#"Maximum input records in one transaction; under load a transaction ends at this size before the commit interval. Smaller means less rework after an abort, larger means fewer commits (see docs/performance.md)."#,
        fix: POSITIVE,
        apply: |d, v, c| {
            d.runtime.max_batch_records = c.usize(v.int())?;
            Ok(())
        },
        show: |r| Some(int(r.max_batch_records)),
    },
    Key {
        name: "guarantee",
        kind: Kind::Choice(&["exactly_once", "at_least_once"]),
        required: false,
        type_doc: "",
        default_doc: r#"`"exactly_once"`"#,
        doc: r#"`exactly_once`: outputs, dedup changelog and offsets commit in one Kafka transaction. `at_least_once`: no transactions; a crash between flush and store write can duplicate."#,
        fix: "",
        apply: |d, v, _| {
            d.runtime.guarantee = if v.string() == "exactly_once" {
                Guarantee::ExactlyOnce
            } else {
                Guarantee::AtLeastOnce
            };
            Ok(())
        },
        show: |r| {
            Some(text(match r.guarantee {
                Guarantee::ExactlyOnce => "exactly_once",
                Guarantee::AtLeastOnce => "at_least_once",
            }))
        },
    },
    Key {
        name: "static_membership",
        kind: Kind::Bool,
        required: false,
        type_doc: r#"bool"#,
        default_doc: r#"`true`"#,
        doc: r#"Each stream thread's consumer joins with `group.instance.id = {app_id}-{instance_id}-{thread}`: a restarted instance (same `instance_id`) takes its partitions back at once, without a rebalance, and fences a frozen predecessor's consumer. An instance that is gone for good, or shut down, keeps its partitions until `session.timeout.ms` (librdkafka default 45 s; set it in `[kafka]`) passes. `false`: dynamic membership, every join and leave rebalances."#,
        fix: BOOL,
        apply: |d, v, _| {
            d.runtime.static_membership = v.boolean();
            Ok(())
        },
        show: |r| Some(toml::Value::Boolean(r.static_membership)),
    },
    Key {
        name: "restore_from",
        kind: Kind::Choice(&["checkpoint", "start"]),
        required: false,
        type_doc: "",
        default_doc: r#"`"checkpoint"`"#,
        doc: r#"Where a task whose local dedup store is trusted (checkpoint of this changelog partition, not beyond its end) starts replaying its changelog: at the checkpoint, so a restart reads only the tail; or at the changelog's start. `"start"` is for the local noida-db test broker, whose read_committed fetches that start after an aborted transaction skip that producer's committed records; `scripts/test.sh` and `scripts/demo.sh` set it (`EXACTLY_RESTORE_FROM=start`) when they use that broker. Apache Kafka needs the default. With `"start"` a dedup store whose checkpoint is followed by nothing but a transaction marker reads nothing, and state stores are always replayed whole; by default a state store replays from its checkpoint while it last matched its changelog less than half the changelog's `delete.retention.ms` ago (docs/state.md). Apps built on `RunArgs` take `--restore-from` / `EXACTLY_RESTORE_FROM`."#,
        fix: "",
        apply: |d, v, _| {
            d.runtime.restore_from = if v.string() == "start" {
                RestoreFrom::Start
            } else {
                RestoreFrom::Checkpoint
            };
            Ok(())
        },
        show: |r| {
            Some(text(match r.restore_from {
                RestoreFrom::Checkpoint => "checkpoint",
                RestoreFrom::Start => "start",
            }))
        },
    },
    Key {
        name: "offset_reset",
        kind: Kind::Choice(&["fail", "earliest", "latest"]),
        required: false,
        type_doc: "",
        default_doc: r#"`"fail"`"#,
        doc: r#"Where a task starts whose input partition has no committed offset although its restored dedup store holds committed message IDs: it processed input before and the group's offsets are gone (the broker deletes an empty group's offsets after `offsets.retention.minutes`, 7 days by default, or an operator deleted them). `"fail"` stops the instance with an error that names the task and the number of IDs; `"earliest"` reprocesses the input from its start (IDs still within the dedup retention are dropped, older ones are processed again); `"latest"` skips to the input's end (records not yet processed are skipped). A partition that never committed anything (its store holds no ID) starts at the beginning whatever the setting. In at-least-once mode the changelog can run ahead of the offsets, so such a task starts at the beginning. Apps built on `RunArgs` take `--offset-reset` / `EXACTLY_OFFSET_RESET`."#,
        fix: "",
        apply: |d, v, _| {
            d.runtime.offset_reset = match v.string().as_str() {
                "earliest" => OffsetReset::Earliest,
                "latest" => OffsetReset::Latest,
                _ => OffsetReset::Fail,
            };
            Ok(())
        },
        show: |r| {
            Some(text(match r.offset_reset {
                OffsetReset::Fail => "fail",
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            }))
        },
    },
    Key {
        name: "verify_topic_configs",
        kind: Kind::Bool,
        required: false,
        type_doc: r#"bool"#,
        default_doc: r#"`true`"#,
        doc: r#"At start, read the config of every existing changelog and refuse one that is not compacted, or whose `retention.ms` is shorter than the dedup retention (or the store's TTL): restores would forget IDs still within their retention. The global scope's repartition topic is refused too when its `retention.ms` is shorter than the dedup retention (the deduplicating tasks may lag behind the forwarding ones). `min.insync.replicas` below 2 on a replicated internal topic is warned about. A config that cannot be read (no DescribeConfigs permission) refuses the start too. `false` skips the check, for clusters that cannot describe topic configs (librdkafka's mock cluster in the project's tests); then nobody checks it."#,
        fix: BOOL,
        apply: |d, v, _| {
            d.runtime.verify_topic_configs = v.boolean();
            Ok(())
        },
        show: |r| Some(toml::Value::Boolean(r.verify_topic_configs)),
    },
    Key {
        name: "renew_producer_after_outage",
        kind: Kind::Bool,
        required: false,
        type_doc: r#"bool"#,
        default_doc: r#"`false`"#,
        doc: r#"After librdkafka reported all brokers down, the next transaction runs on a new producer (`init_transactions` once the brokers answer; if that fails, the transaction runs on the old one and the next one tries again). Only for the local noida-db test broker, which `scripts/broker.sh env` sets it for (`EXACTLY_RENEW_PRODUCER_AFTER_OUTAGE=true`): once restarted, that broker no longer aborts the open transaction of a producer initialised before the restart when the same `transactional.id` is initialised again, and it has no transaction timeout, so an instance killed in such a transaction left it open for ever and every read_committed reader of its partitions (the restore of its dedup changelog) waited for ever. Apache Kafka keeps the coordinator's state in `__transaction_state` and times transactions out: leave it `false` there."#,
        fix: BOOL,
        apply: |d, v, _| {
            d.runtime.renew_producer_after_outage = v.boolean();
            Ok(())
        },
        show: |r| Some(toml::Value::Boolean(r.renew_producer_after_outage)),
    },
    Key {
        name: "metrics_addr",
        kind: Kind::Str,
        required: false,
        type_doc: r#"`"ip:port"`"#,
        default_doc: r#"none"#,
        doc: r#"Serve `/metrics`, `/health` and `/ready` on this address (an IP, not a host name)."#,
        fix: "set it to an IP address and port, e.g. \"0.0.0.0:9100\"",
        apply: |d, v, c| {
            let addr = v.string();
            d.metrics_addr = Some(
                addr.trim()
                    .parse()
                    .map_err(|_| c.invalid(format!("{addr:?} is not an IP address and port")))?,
            );
            Ok(())
        },
        show: |_| None,
    },
    Key {
        name: "transaction_timeout_ms",
        kind: Kind::MILLIS,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`10000`"#,
        doc: r#"The producers' `transaction.timeout.ms`: how long the broker waits before aborting a transaction of a dead instance."#,
        fix: POSITIVE,
        apply: |d, v, _| {
            d.runtime.transaction_timeout = Duration::from_millis(v.int());
            Ok(())
        },
        show: |r| Some(millis(r.transaction_timeout)),
    },
    Key {
        name: "startup_timeout_ms",
        kind: Kind::MILLIS,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`30000`"#,
        doc: r#"Timeout of the requests at start (metadata, topic creation)."#,
        fix: POSITIVE,
        apply: |d, v, _| {
            d.runtime.startup_timeout = Duration::from_millis(v.int());
            Ok(())
        },
        show: |r| Some(millis(r.startup_timeout)),
    },
    Key {
        name: "replication_factor",
        kind: Kind::Signed,
        required: false,
        type_doc: r#"integer 1–32767, or -1"#,
        default_doc: r#"`1`"#,
        doc: r#"Replication factor of the internal topics the runtime creates (changelogs, repartition and dead-letter topics); -1 takes the broker's default. Also the minimum: an existing changelog or repartition topic with fewer replicas per partition is refused at start; one with a single replica is warned about. Use 3 in production. Apps: `--replication-factor`."#,
        fix: "set it to a positive integer up to 32767, or -1 for the broker's default",
        apply: |d, v, c| {
            d.runtime.replication_factor = match v.signed() {
                f @ (-1 | 1..=32767) => i32::try_from(f).expect("in i16's range"),
                f => return Err(c.invalid(format!("is {f}"))),
            };
            Ok(())
        },
        show: |r| Some(toml::Value::Integer(i64::from(r.replication_factor))),
    },
    Key {
        name: "block_cache_bytes",
        kind: Kind::BYTES,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`67108864` (64 MiB)"#,
        doc: r#"RocksDB block cache shared by all stores of the instance."#,
        fix: POSITIVE,
        apply: |d, v, c| {
            d.runtime.block_cache_bytes = c.usize(v.int())?;
            Ok(())
        },
        show: |r| Some(int(r.block_cache_bytes)),
    },
    Key {
        name: "write_buffer_bytes",
        kind: Kind::BYTES,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`67108864` (64 MiB)"#,
        doc: r#"RocksDB memtable budget shared by all stores of the instance."#,
        fix: POSITIVE,
        apply: |d, v, c| {
            d.runtime.write_buffer_bytes = c.usize(v.int())?;
            Ok(())
        },
        show: |r| Some(int(r.write_buffer_bytes)),
    },
    Key {
        name: "ids.source",
        kind: Kind::Str,
        required: false,
        type_doc: r#"`"key"` or `"header:<name>"`"#,
        default_doc: r#"`"header:message-id"`"#,
        doc: r#"Where a record's message ID comes from: the record key, or the value of a header. (A custom extractor is set in code: `App::message_id(IdSource::custom(...))`.)"#,
        fix: "set it to \"key\" or \"header:<name>\", e.g. \"header:message-id\"",
        apply: |d, v, c| {
            let source = v.string();
            d.runtime.task.ids.source = match source.split_once(':') {
                _ if source == "key" => IdSource::Key,
                Some(("header", name)) if !name.is_empty() => IdSource::Header(name.to_owned()),
                _ => return Err(c.invalid(format!("unknown value {source:?}"))),
            };
            Ok(())
        },
        show: |r| {
            Some(text(&match &r.task.ids.source {
                IdSource::Header(name) => format!("header:{name}"),
                IdSource::Key => "key".to_owned(),
                IdSource::Custom(_) => "<custom extractor>".to_owned(),
            }))
        },
    },
    Key {
        name: "ids.max_len",
        kind: Kind::COUNT,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`256`"#,
        doc: r#"Longest accepted ID in bytes."#,
        fix: POSITIVE,
        apply: |d, v, c| {
            d.runtime.task.ids.max_len = c.usize(v.int())?;
            Ok(())
        },
        show: |r| Some(int(r.task.ids.max_len)),
    },
    Key {
        name: "ids.on_invalid",
        kind: Kind::Choice(&["dead_letter", "process", "fail"]),
        required: false,
        type_doc: "",
        default_doc: r#"`"dead_letter"`"#,
        doc: r#"A record whose ID is missing, empty or too long: send it to the dead-letter topic; process it without dedup (counted as `ids_without_dedup`); or stop the task without committing the batch."#,
        fix: "",
        apply: |d, v, _| {
            d.runtime.task.ids.on_invalid = match v.string().as_str() {
                "process" => InvalidIdPolicy::Process,
                "fail" => InvalidIdPolicy::Fail,
                _ => InvalidIdPolicy::DeadLetter,
            };
            Ok(())
        },
        show: |r| {
            Some(text(match r.task.ids.on_invalid {
                InvalidIdPolicy::DeadLetter => "dead_letter",
                InvalidIdPolicy::Process => "process",
                InvalidIdPolicy::Fail => "fail",
            }))
        },
    },
    Key {
        name: "errors.on_error",
        kind: Kind::Choice(POLICIES),
        required: false,
        type_doc: "",
        default_doc: r#"`"dead_letter"`"#,
        doc: r#"A record whose processing failed for good (retries exhausted, or a panic): dead-letter it and go on, or stop the task without committing the batch."#,
        fix: "",
        apply: |d, v, _| {
            d.runtime.task.on_error = policy(&v.string());
            Ok(())
        },
        show: |r| Some(text(policy_name(r.task.on_error))),
    },
    Key {
        name: "errors.on_production_error",
        kind: Kind::Choice(POLICIES),
        required: false,
        type_doc: "",
        default_doc: r#"`"dead_letter"`"#,
        doc: r#"An input record whose outputs the broker refuses for good (larger than the topic's `max.message.bytes` or the producer's `message.max.bytes`, no key for a compacted topic, a timestamp out of range, topic not authorized): each refusal aborts the transaction; after `errors.production_attempts` refusals in a row the record goes to the dead-letter topic with `exactly.error.kind = production` and the broker's error, in the transaction that commits its offset, or the app stops with an error naming the record and the error. A dead letter that is refused too stops the app. Counted in `exactly_production_errors_total{topic,action}`."#,
        fix: "",
        apply: |d, v, _| {
            d.runtime.task.on_production_error = policy(&v.string());
            Ok(())
        },
        show: |r| Some(text(policy_name(r.task.on_production_error))),
    },
    Key {
        name: "errors.production_attempts",
        kind: Kind::COUNT,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`3`"#,
        doc: r#"Refused transactions in a row, because of one input record, before `errors.on_production_error` applies."#,
        fix: POSITIVE,
        apply: |d, v, c| {
            d.runtime.task.production_attempts = c.u32(v.int())?;
            Ok(())
        },
        show: |r| Some(int(r.task.production_attempts)),
    },
    Key {
        name: "errors.retry_max_attempts",
        kind: Kind::COUNT,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`5`"#,
        doc: r#"Attempts for `ProcessError::Retry`, the first included (1 = no retry)."#,
        fix: POSITIVE,
        apply: |d, v, c| {
            d.runtime.task.retry.max_attempts = c.u32(v.int())?;
            Ok(())
        },
        show: |r| Some(int(r.task.retry.max_attempts)),
    },
    Key {
        name: "errors.retry_initial_backoff_ms",
        kind: Kind::Int {
            unit: Unit::Millis,
            min: 0,
        },
        required: false,
        type_doc: r#"integer ≥ 0"#,
        default_doc: r#"`10`"#,
        doc: r#"Delay before the second attempt; it doubles for each further one. At most `errors.retry_max_backoff_ms`."#,
        fix: NON_NEGATIVE,
        apply: |d, v, _| {
            d.runtime.task.retry.initial_backoff = Duration::from_millis(v.int());
            Ok(())
        },
        show: |r| Some(millis(r.task.retry.initial_backoff)),
    },
    Key {
        name: "errors.retry_max_backoff_ms",
        kind: Kind::Int {
            unit: Unit::Millis,
            min: 0,
        },
        required: false,
        type_doc: r#"integer ≥ 0"#,
        default_doc: r#"`1000`"#,
        doc: r#"Upper bound of any retry delay."#,
        fix: NON_NEGATIVE,
        apply: |d, v, _| {
            d.runtime.task.retry.max_backoff = Duration::from_millis(v.int());
            Ok(())
        },
        show: |r| Some(millis(r.task.retry.max_backoff)),
    },
    Key {
        name: "dedup.retention_ms",
        kind: Kind::MILLIS,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`604800000` (7 days)"#,
        doc: r#"How long an ID is remembered, and the `retention.ms` of the dedup changelogs. A duplicate arriving later is processed again."#,
        fix: POSITIVE,
        apply: |d, v, c| {
            let ms = v.int();
            d.runtime.task.dedup_retention_ms =
                i64::try_from(ms).map_err(|_| c.invalid(format!("{ms} is too large")))?;
            Ok(())
        },
        show: |r| Some(toml::Value::Integer(r.task.dedup_retention_ms)),
    },
    Key {
        name: "dedup.scope",
        kind: Kind::Choice(&["partition", "global"]),
        required: false,
        type_doc: "",
        default_doc: r#"`"partition"`"#,
        doc: r#"Where duplicates are recognised: within an input partition, or across the input's partitions. `global` first repartitions every record by message ID through `{app}-{input}-by-id` (created with the input's partition count and `retention.ms` = -1; its records are deleted once stage 2 committed past them: `dedup.repartition_purge_interval_ms`), so copies of an ID with different keys are dropped too; it costs one more write and read of every record and about one commit interval of latency (docs/state.md)."#,
        fix: "",
        apply: |d, v, _| {
            d.runtime.dedup_scope = if v.string() == "global" {
                DedupScope::Global
            } else {
                DedupScope::Partition
            };
            Ok(())
        },
        show: |r| {
            Some(text(match r.dedup_scope {
                DedupScope::Partition => "partition",
                DedupScope::Global => "global",
            }))
        },
    },
    Key {
        name: "dedup.repartition_purge_interval_ms",
        kind: Kind::MILLIS,
        required: false,
        type_doc: r#"integer ≥ 1"#,
        default_doc: r#"`30000`"#,
        doc: r#"With `dedup.scope = "global"`: how often each stream thread deletes the repartition records its tasks committed past (DeleteRecords up to the committed offsets, between transactions; a graceful stop purges once more), as Kafka Streams' `repartition.purge.interval.ms`. Only committed offsets are purged up to, so nothing unread is deleted. On a secured cluster the app needs the `DELETE` ACL operation on the repartition topic; without it each purge logs a warning ("could not delete repartition records …") and the records stay. Apps: `--repartition-purge-interval-ms`."#,
        fix: POSITIVE,
        apply: |d, v, _| {
            d.runtime.repartition_purge_interval = Duration::from_millis(v.int());
            Ok(())
        },
        show: |r| Some(millis(r.repartition_purge_interval)),
    },
    Key {
        name: "dead_letter.topic",
        kind: Kind::Str,
        required: false,
        type_doc: r#"string"#,
        default_doc: r#"`"{app_id}-dlq"`"#,
        doc: r#"The dead-letter topic. Dead letters carry the `exactly.error*` and `exactly.source.*` headers."#,
        fix: "set it to a topic name",
        apply: |d, v, c| {
            d.dead_letter_topic = Some(c.non_empty(v.string())?);
            Ok(())
        },
        show: |r| r.task.dead_letter_topic.as_deref().map(text),
    },
    Key {
        name: "dead_letter.enabled",
        kind: Kind::Bool,
        required: false,
        type_doc: r#"boolean"#,
        default_doc: r#"`true`"#,
        doc: r#"`false`: no dead-letter topic; every dead-letter decision (`on_invalid`/`on_error` = `dead_letter`, `ProcessError::DeadLetter`) becomes a task error. Wins over `dead_letter.topic`."#,
        fix: BOOL,
        apply: |d, v, _| {
            d.dead_letter_enabled = v.boolean();
            Ok(())
        },
        show: |r| Some(toml::Value::Boolean(r.task.dead_letter_topic.is_some())),
    },
    Key {
        name: "dead_letter.create",
        kind: Kind::Bool,
        required: false,
        type_doc: r#"boolean"#,
        default_doc: r#"`true`"#,
        doc: r#"Create the dead-letter topic at start if it is missing."#,
        fix: BOOL,
        apply: |d, v, _| {
            d.runtime.create_dead_letter_topic = v.boolean();
            Ok(())
        },
        show: |r| Some(toml::Value::Boolean(r.create_dead_letter_topic)),
    },
];

/// Sections of the file, with the heading of their table in docs/configuration.md; `kafka`
/// is open (any librdkafka property) and documented in prose.
pub const SECTIONS: [(&str, &str); 4] = [
    ("ids", "### `[ids]`: message IDs"),
    ("errors", "### `[errors]`: processing failures"),
    ("dedup", "### `[dedup]`"),
    ("dead_letter", "### `[dead_letter]`"),
];

/// The key named `name` (dotted), if there is one.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The key tables of docs/configuration.md, generated from [`KEYS`]: one per section, under
/// its heading.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    let mut table = |heading: &str, section: Option<&str>| {
        out.push_str(heading);
        out.push_str("\n\n| key | environment variable | type | default | meaning |\n|---|---|---|---|---|\n");
        for key in KEYS.iter().filter(|k| k.split().0 == section) {
            out.push_str(&format!(
                "| `{}` | `{}` | {} | {} | {} |\n",
                key.name,
                key.env_var(),
                key.type_doc(),
                key.default_doc,
                key.doc
            ));
        }
        out.push('\n');
    };
    table("### Top level", None);
    for (section, heading) in SECTIONS {
        table(heading, Some(section));
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// The effective config in the file's layout (TOML, in the order of [`KEYS`]), for logs and
/// `exactly check`. Values of secret librdkafka properties ([`is_secret_property`]) read
/// `<redacted>`. Without secrets and custom ID extractors the text loads back into the same
/// config.
pub fn redacted(config: &RuntimeConfig) -> String {
    let mut root = toml::Table::new();
    for key in KEYS {
        let Some(value) = (key.show)(config) else {
            continue;
        };
        match key.split() {
            (None, name) => {
                root.insert(name.to_owned(), value);
            }
            (Some(section), name) => {
                root.entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .expect("sections are tables")
                    .insert(name.to_owned(), value);
            }
        }
    }
    let kafka: toml::Table = config
        .kafka
        .iter()
        .map(|(name, value)| {
            let shown = if is_secret_property(name) {
                "<redacted>"
            } else {
                value
            };
            (name.clone(), text(shown))
        })
        .collect();
    root.insert("kafka".to_owned(), toml::Value::Table(kafka));
    toml::to_string(&root).expect("a TOML table serializes")
}
