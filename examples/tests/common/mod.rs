//! Shared set-up of the process-level tests: topics, app instances, verification.
#![allow(dead_code)]

use exactly_testkit::broker::{self, ReadRecord, TestMessage};
use exactly_testkit::chaos::{instance_args, wait_caught_up, AppProcess, Verification};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const FORWARD: &str = env!("CARGO_BIN_EXE_dedup-forward");

/// Topics and a work dir for one test; the topics are deleted on drop.
pub struct Setup {
    pub bs: String,
    pub input: String,
    pub output: String,
    pub app: String,
    pub partitions: i32,
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// Creates input and output topics with `partitions` partitions, or `None` (skip) when no
    /// broker answers outside CI.
    pub fn new(test: &str, partitions: i32) -> Option<Self> {
        Self::with_output_configs(test, partitions, &[])
    }

    /// [`Setup::new`] with topic configs for the output topic (`cleanup.policy`,
    /// `max.message.bytes`, ...).
    pub fn with_output_configs(
        test: &str,
        partitions: i32,
        output_configs: &[(&str, &str)],
    ) -> Option<Self> {
        let bs = broker::require_broker(test)?;
        Some(Self::on(bs, test, partitions, output_configs))
    }

    /// [`Setup::with_output_configs`] on the cluster at `bs` (a test's private broker).
    pub fn on(bs: String, test: &str, partitions: i32, output_configs: &[(&str, &str)]) -> Self {
        let base = broker::unique_name(test);
        let s = Self {
            input: format!("{base}-in"),
            output: format!("{base}-out"),
            app: format!("{base}-app"),
            bs,
            partitions,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        broker::create_topics_with(
            &s.bs,
            &[
                (&s.input, partitions, &[]),
                (&s.output, partitions, output_configs),
            ],
        );
        s
    }

    pub fn changelog(&self) -> String {
        format!("{}-{}-dedup-changelog", self.app, self.input)
    }

    pub fn dlq(&self) -> String {
        format!("{}-dlq", self.app)
    }

    pub fn state_dir(&self, instance: &str) -> PathBuf {
        self.dir.path().join(format!("state-{instance}"))
    }

    /// An instance of `program` (an app binary taking the standard options) with state in
    /// `state_dir`; `extra` args are appended.
    pub fn instance(
        &self,
        program: &str,
        id: &str,
        state_dir: &Path,
        extra: &[&str],
    ) -> AppProcess {
        let mut args = instance_args(&self.bs, &self.input, &self.output, &self.app, state_dir);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        AppProcess::new(program, &[], id, args, self.dir.path())
    }

    /// A dedup-forward instance with its own state dir; `extra` args are appended.
    pub fn forward(&self, id: &str, extra: &[&str]) -> AppProcess {
        self.instance(FORWARD, id, &self.state_dir(id), extra)
    }

    pub fn ends(&self) -> HashMap<i32, i64> {
        broker::end_offsets(&self.bs, &self.input, self.partitions)
    }

    /// Waits (up to 5 min) until the app committed every input offset produced so far.
    pub fn wait_caught_up(&self, instances: &mut [AppProcess]) {
        wait_caught_up(
            &self.bs,
            &self.app,
            &self.input,
            &self.ends(),
            Duration::from_secs(300),
            instances,
        );
    }

    pub fn output_records(&self) -> Vec<ReadRecord> {
        broker::read_committed(&self.bs, &self.output)
    }

    /// Input vs output per message ID, both read with isolation.level=read_committed.
    pub fn verify(&self) -> Verification {
        Verification::compare(
            &broker::read_committed(&self.bs, &self.input),
            &self.output_records(),
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let (c, d) = (self.changelog(), self.dlq());
        broker::delete_topics(&self.bs, &[&self.input, &self.output, &c, &d]);
    }
}

/// Stops every instance with SIGTERM and asserts each exits 0.
pub fn stop_all(instances: &mut [AppProcess]) {
    for inst in instances {
        if let Some(status) = inst.terminate(Duration::from_secs(60)) {
            assert!(
                status.success(),
                "instance {} exited with {status} after SIGTERM; log tail:\n{}",
                inst.id,
                inst.log_tail(30)
            );
        }
    }
}

/// Asserts the verification is exact and that `unique` IDs reached the output.
pub fn assert_exact(v: &Verification, unique: usize) {
    assert_eq!(v.duplicates, 0, "duplicate outputs: {v:?}");
    assert!(
        v.missing.is_empty(),
        "{} missing IDs, e.g. {:?}",
        v.missing.len(),
        &v.missing[..v.missing.len().min(5)]
    );
    assert!(
        v.unexpected.is_empty(),
        "unexpected output IDs: {:?}",
        &v.unexpected[..v.unexpected.len().min(5)]
    );
    assert_eq!(v.unique_ids, unique, "unique input IDs");
    assert_eq!(v.outputs, unique, "output records");
}

/// Messages with IDs `m{i}`, keys `k{i}` and values `v{i}` for `i` in `ids`.
pub fn numbered(ids: std::ops::Range<usize>) -> Vec<TestMessage> {
    ids.map(|i| TestMessage {
        key: Some(format!("k{i}").into_bytes()),
        value: format!("v{i}").into_bytes(),
        id: Some(format!("m{i}")),
        timestamp: None,
    })
    .collect()
}

/// The state a restore would build from a state store's committed changelog (read
/// read_committed): the last value of each key, in partition and offset order, its values
/// decoded by bincode (the stores' default serde).
pub fn changelog_state<V: bincode::Decode<()>>(
    changelog: &[ReadRecord],
) -> std::collections::BTreeMap<String, V> {
    use exactly_core::state::{decode_state_value, Bincode};
    use exactly_core::Deserializer;
    let mut sorted: Vec<&ReadRecord> = changelog.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut state = std::collections::BTreeMap::new();
    for r in sorted {
        let key = String::from_utf8(r.key.clone().expect("key")).expect("utf-8");
        match &r.value {
            Some(v) => {
                let (_, bytes) = decode_state_value(v).expect("a state changelog value");
                let value = Deserializer::<V>::decode(&Bincode, bytes).expect("a store value");
                state.insert(key, value);
            }
            None => {
                state.remove(&key);
            }
        }
    }
    state
}
