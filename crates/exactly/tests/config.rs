//! Configuration from a TOML file plus `EXACTLY_*` environment overrides (`exactly::config`):
//! values, defaults, overrides, the exact error messages, redaction, and the documented
//! example in `docs/configuration.md`.

use exactly::config::{
    keys, load_from, redacted, reference_markdown, ConfigError, LoadedConfig, Origin, KEYS,
};
use exactly::{
    ErrorPolicy, Guarantee, IdSource, InvalidIdPolicy, RetryPolicy, RuntimeConfig, TaskConfig,
};
use std::path::PathBuf;
use std::time::Duration;

const MINIMAL: &str = r#"
app_id = "orders-dedup"
inputs = ["orders"]
"#;

/// Every key set, none to its default.
const FULL: &str = r#"
app_id = "orders-dedup"
instance_id = "7"
bootstrap = "broker1:9092,broker2:9092"
inputs = ["orders", "refunds"]
outputs = ["orders-clean"]
state_dir = "/var/lib/orders-dedup"
threads = 3
commit_interval_ms = 250
max_batch_records = 500
guarantee = "at_least_once"
metrics_addr = "0.0.0.0:9100"
transaction_timeout_ms = 20000
startup_timeout_ms = 45000
replication_factor = 3
block_cache_bytes = 1048576
write_buffer_bytes = 2097152

[ids]
source = "key"
max_len = 64
on_invalid = "process"

[errors]
on_error = "fail"
on_production_error = "fail"
production_attempts = 5
retry_max_attempts = 2
retry_initial_backoff_ms = 20
retry_max_backoff_ms = 400

[dedup]
retention_ms = 86400000

[dead_letter]
topic = "orders-dead"
enabled = true
create = false

[kafka]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"#;

const ALL_KEYS: &str = "app_id, instance_id, bootstrap, inputs, outputs, state_dir, threads, \
commit_interval_ms, max_batch_records, guarantee, static_membership, restore_from, offset_reset, verify_topic_configs, renew_producer_after_outage, metrics_addr, transaction_timeout_ms, \
startup_timeout_ms, replication_factor, block_cache_bytes, write_buffer_bytes, ids.source, \
ids.max_len, ids.on_invalid, errors.on_error, errors.on_production_error, \
errors.production_attempts, errors.retry_max_attempts, \
errors.retry_initial_backoff_ms, errors.retry_max_backoff_ms, dedup.retention_ms, dedup.scope, \
dedup.repartition_purge_interval_ms, \
dead_letter.topic, dead_letter.enabled, dead_letter.create, kafka.<librdkafka property>";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(file: Option<&str>, vars: &[(&str, &str)]) -> Result<LoadedConfig, ConfigError> {
    load_from(file, env(vars))
}

fn ok(file: Option<&str>, vars: &[(&str, &str)]) -> RuntimeConfig {
    load(file, vars).expect("config loads").runtime
}

fn error(file: Option<&str>, vars: &[(&str, &str)]) -> String {
    match load(file, vars) {
        Ok(loaded) => panic!("expected an error, got {:?}", loaded.runtime),
        Err(e) => e.to_string(),
    }
}

fn kafka(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    env(pairs).into_iter().collect()
}

#[test]
fn full_example_sets_every_field() {
    let loaded = load(Some(FULL), &[]).unwrap();
    let c = &loaded.runtime;
    assert_eq!(c.app_id, "orders-dedup");
    assert_eq!(c.instance_id, "7");
    assert_eq!(c.bootstrap, "broker1:9092,broker2:9092");
    assert_eq!(c.inputs, ["orders", "refunds"]);
    assert_eq!(c.outputs, ["orders-clean"]);
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/orders-dedup"));
    assert_eq!(c.threads, 3);
    assert_eq!(c.commit_interval, Duration::from_millis(250));
    assert_eq!(c.max_batch_records, 500);
    assert_eq!(c.guarantee, Guarantee::AtLeastOnce);
    assert_eq!(loaded.metrics_addr, Some("0.0.0.0:9100".parse().unwrap()));
    assert_eq!(c.transaction_timeout, Duration::from_secs(20));
    assert_eq!(c.startup_timeout, Duration::from_secs(45));
    assert_eq!(c.replication_factor, 3);
    assert_eq!(c.block_cache_bytes, 1 << 20);
    assert_eq!(c.write_buffer_bytes, 2 << 20);
    assert!(matches!(c.task.ids.source, IdSource::Key));
    assert_eq!(c.task.ids.max_len, 64);
    assert_eq!(c.task.ids.on_invalid, InvalidIdPolicy::Process);
    assert_eq!(c.task.on_error, ErrorPolicy::Fail);
    assert_eq!(c.task.on_production_error, ErrorPolicy::Fail);
    assert_eq!(c.task.production_attempts, 5);
    assert_eq!(
        c.task.retry,
        RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(400),
        }
    );
    assert_eq!(c.task.dedup_retention_ms, 86_400_000);
    assert_eq!(c.task.dead_letter_topic.as_deref(), Some("orders-dead"));
    assert!(!c.create_dead_letter_topic);
    assert_eq!(
        c.kafka,
        kafka(&[
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("security.protocol", "SASL_SSL"),
        ])
    );
}

#[test]
fn unset_keys_take_the_runtime_defaults() {
    let loaded = load(Some(MINIMAL), &[]).unwrap();
    let c = &loaded.runtime;
    let d = RuntimeConfig::new("orders-dedup", "127.0.0.1:29092");
    let t = TaskConfig::default();
    assert_eq!(c.app_id, "orders-dedup");
    assert_eq!(c.bootstrap, "127.0.0.1:29092");
    assert_eq!(c.inputs, ["orders"]);
    assert_eq!(c.instance_id, d.instance_id);
    assert_eq!(c.outputs, d.outputs);
    assert_eq!(c.state_dir, d.state_dir);
    assert_eq!(c.threads, d.threads);
    assert_eq!(c.commit_interval, d.commit_interval);
    assert_eq!(c.max_batch_records, d.max_batch_records);
    assert_eq!(c.guarantee, d.guarantee);
    assert_eq!(loaded.metrics_addr, None);
    assert_eq!(c.transaction_timeout, d.transaction_timeout);
    assert_eq!(c.startup_timeout, d.startup_timeout);
    assert_eq!(c.replication_factor, d.replication_factor);
    assert_eq!(c.block_cache_bytes, d.block_cache_bytes);
    assert_eq!(c.write_buffer_bytes, d.write_buffer_bytes);
    assert_eq!(c.create_dead_letter_topic, d.create_dead_letter_topic);
    assert_eq!(c.kafka, d.kafka);
    assert!(matches!(&c.task.ids.source, IdSource::Header(h) if h == "message-id"));
    assert_eq!(c.task.ids.max_len, t.ids.max_len);
    assert_eq!(c.task.ids.on_invalid, t.ids.on_invalid);
    assert_eq!(c.task.retry, t.retry);
    assert_eq!(c.task.on_error, t.on_error);
    assert_eq!(c.task.on_production_error, ErrorPolicy::DeadLetter);
    assert_eq!(c.task.production_attempts, 3);
    assert_eq!(c.task.dedup_retention_ms, t.dedup_retention_ms);
    assert_eq!(
        c.task.dead_letter_topic.as_deref(),
        Some("orders-dedup-dlq")
    );
}

#[test]
fn bootstrap_defaults_to_the_kafka_bootstrap_variable() {
    let c = ok(Some(MINIMAL), &[("KAFKA_BOOTSTRAP", "kafka:9092")]);
    assert_eq!(c.bootstrap, "kafka:9092");
}

#[test]
fn bootstrap_in_the_file_wins_over_the_kafka_bootstrap_variable() {
    let file = format!("{MINIMAL}bootstrap = \"file:9092\"\n");
    let c = ok(Some(&file), &[("KAFKA_BOOTSTRAP", "kafka:9092")]);
    assert_eq!(c.bootstrap, "file:9092");
}

#[test]
fn env_overrides_a_top_level_key_of_the_file() {
    let c = ok(Some(FULL), &[("EXACTLY_COMMIT_INTERVAL_MS", "50")]);
    assert_eq!(c.commit_interval, Duration::from_millis(50));
}

#[test]
fn env_overrides_section_keys() {
    let c = ok(
        Some(FULL),
        &[
            ("EXACTLY_IDS__MAX_LEN", "128"),
            ("EXACTLY_IDS__SOURCE", "header:event-id"),
            ("EXACTLY_DEAD_LETTER__ENABLED", "false"),
        ],
    );
    assert_eq!(c.task.ids.max_len, 128);
    assert!(matches!(&c.task.ids.source, IdSource::Header(h) if h == "event-id"));
    assert_eq!(c.task.dead_letter_topic, None);
}

#[test]
fn env_sets_kafka_properties_lowercase_with_dots() {
    let c = ok(
        Some(FULL),
        &[
            ("EXACTLY_KAFKA__SASL_PASSWORD", "s3cret"),
            ("EXACTLY_KAFKA__SASL_MECHANISM", "PLAIN"),
        ],
    );
    assert_eq!(
        c.kafka,
        kafka(&[
            ("sasl.mechanism", "PLAIN"),
            ("sasl.password", "s3cret"),
            ("security.protocol", "SASL_SSL"),
        ])
    );
}

#[test]
fn env_lists_are_comma_separated() {
    let c = ok(Some(FULL), &[("EXACTLY_INPUTS", "a, b,c,")]);
    assert_eq!(c.inputs, ["a", "b", "c"]);
}

#[test]
fn env_alone_configures_an_app() {
    let loaded = load(
        None,
        &[
            ("EXACTLY_APP_ID", "payments"),
            ("EXACTLY_INPUTS", "payments"),
            ("EXACTLY_METRICS_ADDR", "127.0.0.1:9100"),
            ("EXACTLY_GUARANTEE", "at_least_once"),
        ],
    )
    .unwrap();
    assert_eq!(loaded.runtime.app_id, "payments");
    assert_eq!(loaded.runtime.inputs, ["payments"]);
    assert_eq!(loaded.runtime.guarantee, Guarantee::AtLeastOnce);
    assert_eq!(loaded.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(
        loaded.runtime.task.dead_letter_topic.as_deref(),
        Some("payments-dlq")
    );
}

#[test]
fn variables_outside_the_exactly_namespace_are_ignored() {
    let c = ok(
        Some(MINIMAL),
        &[
            ("TEST_FAILPOINT", "before_commit"),
            ("TEST_CHAOS_SEED", "1"),
            ("TEST_SCHEDULES", "10"),
            ("TEST_SEED", "42"),
            ("TEST_TRACE", "1"),
            ("TEST_POSTGRES", "host=127.0.0.1 user=postgres dbname=test"),
            ("TEST_REDIS", "redis://127.0.0.1:6379/"),
            ("BENCH_LARGE", "1"),
            ("TEST_SKIP_LOG", "/tmp/skipped.txt"),
            ("PATH", "/usr/bin"),
            ("THREADS", "9"),
        ],
    );
    assert_eq!(c.threads, 1);
}

/// The loader knows no test-harness variables: the harnesses use names outside `EXACTLY_*`
/// (`TEST_FAILPOINT`, `TEST_SEED`, ...), and an `EXACTLY_*` name that is no key is refused.
#[test]
fn an_exactly_variable_that_names_no_key_is_refused_even_if_a_harness_once_used_it() {
    assert!(
        error(Some(MINIMAL), &[("EXACTLY_FAILPOINT", "after_send:1")])
            .starts_with("unknown config key `failpoint` (from EXACTLY_FAILPOINT)")
    );
}

#[test]
fn env_value_of_the_wrong_type_names_the_key_and_the_variable() {
    assert_eq!(
        error(Some(MINIMAL), &[("EXACTLY_COMMIT_INTERVAL_MS", "abc")]),
        "config key `commit_interval_ms` (from EXACTLY_COMMIT_INTERVAL_MS): invalid type: \
         string \"abc\", expected an integer number of milliseconds; set it to a positive integer"
    );
}

#[test]
fn file_value_of_the_wrong_type_names_the_key_and_the_file() {
    let file = format!("{MINIMAL}threads = \"four\"\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `threads` in the config file: invalid type: string \"four\", expected an \
         integer; set it to a positive integer"
    );
}

#[test]
fn env_bool_of_the_wrong_type_is_refused() {
    assert_eq!(
        error(Some(MINIMAL), &[("EXACTLY_DEAD_LETTER__CREATE", "yes")]),
        "config key `dead_letter.create` (from EXACTLY_DEAD_LETTER__CREATE): invalid type: \
         string \"yes\", expected a boolean; set it to true or false"
    );
}

#[test]
fn negative_milliseconds_are_refused() {
    let file = format!("{MINIMAL}[dedup]\nretention_ms = -5\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `dedup.retention_ms` in the config file: invalid value: integer `-5`, \
         expected a value of 0 or more; set it to a positive integer"
    );
}

#[test]
fn list_element_of_the_wrong_type_names_its_index() {
    let file = "app_id = \"a\"\ninputs = [\"orders\", 5]\n";
    assert_eq!(
        error(Some(file), &[]),
        "config key `inputs[1]` in the config file: invalid type: integer `5`, expected a \
         string; set it to a list of topic names, e.g. [\"orders\"] (in the environment: \
         comma-separated)"
    );
}

#[test]
fn unknown_file_key_is_refused_with_a_suggestion() {
    let file = format!("{MINIMAL}comit_interval_ms = 50\n");
    assert_eq!(
        error(Some(&file), &[]),
        format!(
            "unknown config key `comit_interval_ms` in the config file; did you mean \
             `commit_interval_ms`? valid keys: {ALL_KEYS}"
        )
    );
}

#[test]
fn unknown_section_key_lists_the_keys_of_its_section() {
    let file = format!("{MINIMAL}[ids]\nmaxlen = 5\n");
    assert_eq!(
        error(Some(&file), &[]),
        "unknown config key `ids.maxlen` in the config file; did you mean `ids.max_len`? \
         valid keys: ids.source, ids.max_len, ids.on_invalid"
    );
}

#[test]
fn section_key_at_the_top_level_is_refused_with_its_section() {
    assert_eq!(
        error(Some(MINIMAL), &[("EXACTLY_RETENTION_MS", "1000")]),
        format!(
            "unknown config key `retention_ms` (from EXACTLY_RETENTION_MS); did you mean \
             `dedup.retention_ms` (EXACTLY_DEDUP__RETENTION_MS)? valid keys: {ALL_KEYS}"
        )
    );
}

#[test]
fn unknown_section_is_refused() {
    let file = format!("{MINIMAL}[retry]\nmax_attempts = 3\n");
    assert_eq!(
        error(Some(&file), &[]),
        format!("unknown config key `retry` in the config file; valid keys: {ALL_KEYS}")
    );
}

#[test]
fn unknown_env_variable_is_refused_with_a_suggestion() {
    assert_eq!(
        error(Some(MINIMAL), &[("EXACTLY_COMIT_INTERVAL_MS", "50")]),
        format!(
            "unknown config key `comit_interval_ms` (from EXACTLY_COMIT_INTERVAL_MS); did you \
             mean `commit_interval_ms` (EXACTLY_COMMIT_INTERVAL_MS)? valid keys: {ALL_KEYS}"
        )
    );
}

#[test]
fn unknown_env_section_key_is_refused() {
    assert_eq!(
        error(Some(MINIMAL), &[("EXACTLY_IDS__HEADER", "id")]),
        "unknown config key `ids.header` (from EXACTLY_IDS__HEADER); valid keys: ids.source, \
         ids.max_len, ids.on_invalid"
    );
}

#[test]
fn missing_app_id_is_reported_with_its_variable() {
    assert_eq!(
        error(Some("inputs = [\"orders\"]\n"), &[]),
        "missing required config key `app_id`: set it in the file or with EXACTLY_APP_ID"
    );
}

#[test]
fn missing_inputs_are_reported_with_their_variable() {
    assert_eq!(
        error(None, &[("EXACTLY_APP_ID", "a")]),
        "missing required config key `inputs`: set it in the file or with EXACTLY_INPUTS"
    );
}

#[test]
fn empty_inputs_are_refused() {
    assert_eq!(
        error(Some("app_id = \"a\"\ninputs = []\n"), &[]),
        "config key `inputs` in the config file: is empty; list at least one input topic, e.g. \
         [\"orders\"]"
    );
}

#[test]
fn zero_threads_are_refused() {
    let file = format!("{MINIMAL}threads = 0\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `threads` in the config file: is 0 but must be at least 1; set it to a \
         positive integer"
    );
}

#[test]
fn zero_commit_interval_from_env_is_refused() {
    assert_eq!(
        error(Some(MINIMAL), &[("EXACTLY_COMMIT_INTERVAL_MS", "0")]),
        "config key `commit_interval_ms` (from EXACTLY_COMMIT_INTERVAL_MS): is 0 but must be at \
         least 1; set it to a positive integer"
    );
}

#[test]
fn commit_interval_must_be_shorter_than_the_transaction_timeout() {
    let file = format!("{MINIMAL}commit_interval_ms = 10000\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `commit_interval_ms` in the config file: 10000 ms is not shorter than \
         transaction_timeout_ms (10000 ms), so transactions would time out before they commit; \
         lower it or raise transaction_timeout_ms"
    );
}

#[test]
fn unknown_guarantee_is_refused_with_the_choices() {
    let file = format!("{MINIMAL}guarantee = \"exactly-once\"\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `guarantee` in the config file: unknown value \"exactly-once\"; set it to \
         \"exactly_once\" or \"at_least_once\""
    );
}

#[test]
fn id_source_needs_key_or_a_header_name() {
    assert_eq!(
        error(Some(MINIMAL), &[("EXACTLY_IDS__SOURCE", "header:")]),
        "config key `ids.source` (from EXACTLY_IDS__SOURCE): unknown value \"header:\"; set it \
         to \"key\" or \"header:<name>\", e.g. \"header:message-id\""
    );
}

#[test]
fn metrics_addr_must_be_an_ip_and_port() {
    let file = format!("{MINIMAL}metrics_addr = \"localhost:9100\"\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `metrics_addr` in the config file: \"localhost:9100\" is not an IP address \
         and port; set it to an IP address and port, e.g. \"0.0.0.0:9100\""
    );
}

#[test]
fn managed_kafka_property_in_the_file_is_refused() {
    let file = format!("{MINIMAL}[kafka]\n\"transactional.id\" = \"mine\"\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `kafka.transactional.id` in the config file: is managed by exactly and \
         cannot be overridden (it is part of the exactly-once protocol); remove it"
    );
}

#[test]
fn managed_kafka_property_from_env_is_refused() {
    assert_eq!(
        error(
            Some(MINIMAL),
            &[("EXACTLY_KAFKA__ENABLE_AUTO_COMMIT", "true")]
        ),
        "config key `kafka.enable.auto.commit` (from EXACTLY_KAFKA__ENABLE_AUTO_COMMIT): is \
         managed by exactly and cannot be overridden (it is part of the exactly-once protocol); \
         remove it"
    );
}

#[test]
fn kafka_bootstrap_servers_property_is_refused() {
    let file = format!("{MINIMAL}[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `kafka.bootstrap.servers` in the config file: duplicates the `bootstrap` \
         key; remove it and set `bootstrap` (EXACTLY_BOOTSTRAP) instead"
    );
}

#[test]
fn kafka_values_must_be_strings() {
    let file = format!("{MINIMAL}[kafka]\n\"linger.ms\" = 5\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `kafka.linger.ms` in the config file: invalid type: integer `5`, expected a \
         string; librdkafka properties are strings: quote the value, e.g. \"linger.ms\" = \"5\""
    );
}

#[test]
fn unquoted_dotted_kafka_properties_work_like_quoted_ones() {
    let file =
        format!("{MINIMAL}[kafka]\nsecurity.protocol = \"SSL\"\nssl.ca.location = \"/ca.pem\"\n");
    let c = ok(Some(&file), &[]);
    assert_eq!(
        c.kafka,
        kafka(&[("security.protocol", "SSL"), ("ssl.ca.location", "/ca.pem")])
    );
}

#[test]
fn section_that_is_not_a_table_is_refused() {
    let file = format!("{MINIMAL}ids = \"key\"\n");
    assert_eq!(
        error(Some(&file), &[]),
        "config key `ids` in the config file: invalid type: string \"key\", expected a table; \
         write it as a [ids] section"
    );
}

#[test]
fn syntax_error_names_the_file_and_the_line() {
    let message = error(Some("app_id = \"a\"\ninputs = [\"orders\"\n"), &[]);
    assert!(
        message.starts_with("the config file is not valid TOML: TOML parse error at line 2"),
        "{message}"
    );
}

#[test]
fn errors_say_which_key_and_origin() {
    let e = load(Some(MINIMAL), &[("EXACTLY_THREADS", "0")]).unwrap_err();
    assert_eq!(e.key(), Some("threads"));
    assert!(matches!(
        e,
        ConfigError::Invalid { origin: Origin::Env(ref var), .. } if var == "EXACTLY_THREADS"
    ));
}

#[test]
fn redacted_dump_hides_secret_kafka_values() {
    let c = ok(
        Some(FULL),
        &[
            ("EXACTLY_KAFKA__SASL_PASSWORD", "s3cret"),
            ("EXACTLY_KAFKA__SSL_KEY_PASSWORD", "k3y"),
        ],
    );
    let dump = redacted(&c);
    assert!(!dump.contains("s3cret"), "{dump}");
    assert!(!dump.contains("k3y"), "{dump}");
    let kafka_table = dump.split("[kafka]\n").nth(1).unwrap();
    assert_eq!(
        kafka_table,
        "\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.password\" = \"<redacted>\"\n\
         \"security.protocol\" = \"SASL_SSL\"\n\
         \"ssl.key.password\" = \"<redacted>\"\n"
    );
}

#[test]
fn redacted_dump_of_the_defaults() {
    let c = ok(Some(MINIMAL), &[]);
    assert_eq!(
        redacted(&c),
        r#"app_id = "orders-dedup"
instance_id = "0"
bootstrap = "127.0.0.1:29092"
inputs = ["orders"]
outputs = []
state_dir = "state"
threads = 1
commit_interval_ms = 100
max_batch_records = 10000
guarantee = "exactly_once"
static_membership = true
restore_from = "checkpoint"
offset_reset = "fail"
verify_topic_configs = true
renew_producer_after_outage = false
transaction_timeout_ms = 10000
startup_timeout_ms = 30000
replication_factor = 1
block_cache_bytes = 67108864
write_buffer_bytes = 67108864

[ids]
source = "header:message-id"
max_len = 256
on_invalid = "dead_letter"

[errors]
on_error = "dead_letter"
on_production_error = "dead_letter"
production_attempts = 3
retry_max_attempts = 5
retry_initial_backoff_ms = 10
retry_max_backoff_ms = 1000

[dedup]
retention_ms = 604800000
scope = "partition"
repartition_purge_interval_ms = 30000

[dead_letter]
topic = "orders-dedup-dlq"
enabled = true
create = true

[kafka]
"#
    );
}

#[test]
fn redacted_dump_loads_back_into_the_same_config() {
    let c = ok(Some(FULL), &[]);
    let dump = redacted(&c);
    let again = ok(Some(&dump), &[]);
    assert_eq!(redacted(&again), dump);
}

/// The first ```toml block after "## Full example" in docs/configuration.md.
fn documented_example() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let doc = std::fs::read_to_string(path).expect("docs/configuration.md exists");
    let after = doc
        .split_once("## Full example")
        .expect("the doc has a \"## Full example\" section")
        .1;
    let block = after
        .split_once("```toml\n")
        .expect("the section has a ```toml block")
        .1;
    block
        .split_once("```")
        .expect("the block is closed")
        .0
        .to_owned()
}

#[test]
fn documented_example_loads() {
    let loaded = load(
        Some(&documented_example()),
        &[("EXACTLY_KAFKA__SASL_PASSWORD", "x")],
    )
    .unwrap();
    assert_eq!(loaded.runtime.app_id, "orders-dedup");
    assert_eq!(loaded.runtime.kafka["security.protocol"], "SASL_SSL");
}

#[test]
fn documented_example_sets_every_key() {
    let example: toml::Table = documented_example().parse().unwrap();
    for key in keys() {
        let value = match key.split_once('.') {
            Some((section, name)) => example.get(section).and_then(|s| s.get(name)),
            None => example.get(key),
        };
        assert!(
            value.is_some(),
            "the documented example does not set `{key}`"
        );
    }
}

/// The key tables of docs/configuration.md are the declaration's ([`reference_markdown`]):
/// a key added, renamed or documented differently in code fails here until the page says the
/// same. `UPDATE_DOCS=1` rewrites the page's generated part instead.
#[test]
fn the_key_tables_in_the_docs_are_generated_from_the_declaration() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let begin = doc
        .find("<!-- keys:begin")
        .and_then(|i| doc[i..].find("-->\n").map(|j| i + j + 4))
        .expect("docs/configuration.md has a `<!-- keys:begin ... -->` marker");
    let end = doc
        .find("<!-- keys:end -->")
        .expect("docs/configuration.md has a `<!-- keys:end -->` marker");
    let generated = reference_markdown();
    if std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1") {
        let updated = format!("{}{generated}{}", &doc[..begin], &doc[end..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert!(
        doc[begin..end] == generated,
        "the key tables of docs/configuration.md differ from the declaration in \
         crates/exactly/src/config/keys.rs; change the declaration (the docs come from it) and \
         run `UPDATE_DOCS=1 cargo test -p exactly --test config` to rewrite them"
    );
    for key in keys() {
        assert!(
            doc[begin..end].contains(&format!("| `{key}` |")),
            "no row for `{key}`"
        );
    }
}

/// Each documented default (the declaration's `default_doc`, shown in the docs) is the
/// value the loader gives a key set nowhere.
#[test]
fn each_documented_default_is_the_loaded_default() {
    let defaults: toml::Table = redacted(&ok(Some(MINIMAL), &[])).parse().unwrap();
    let mut checked = 0;
    for key in KEYS {
        // Defaults that depend on something else: the environment, the app id.
        if key.required || ["bootstrap", "dead_letter.topic", "metrics_addr"].contains(&key.name) {
            continue;
        }
        let documented = key
            .default_doc
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("`{}` documents no default value", key.name));
        let loaded = match key.name.split_once('.') {
            Some((section, name)) => &defaults[section][name],
            None => &defaults[key.name],
        };
        assert_eq!(
            documented,
            loaded.to_string(),
            "the documented default of `{}`",
            key.name
        );
        checked += 1;
    }
    assert_eq!(checked, KEYS.len() - 5);
}

#[test]
fn load_names_the_file_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(
        &path,
        "app_id = \"a\"\ninputs = [\"orders\"]\nthreads = -1\n",
    )
    .unwrap();
    let message = exactly::config::load(Some(&path)).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "config key `threads` in {}: invalid value: integer `-1`, expected a value of 0 or \
             more; set it to a positive integer",
            path.display()
        )
    );
}

#[test]
fn load_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let message = exactly::config::load(Some(&path)).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("cannot read config file {}: ", path.display())),
        "{message}"
    );
    assert!(
        message.ends_with("; check the path and its permissions"),
        "{message}"
    );
}

#[test]
fn app_from_file_runs_with_the_loaded_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, FULL).unwrap();
    let mut app = exactly::App::from_file(&path).unwrap();
    let config = app.config_mut();
    assert_eq!(config.app_id, "orders-dedup");
    assert_eq!(config.threads, 3);
}
