//! Running apps as real processes, killing them, and checking their output per message ID
//! (feature `broker`). Used by the process-level tests, `exactly demo` and `exactly chaos`.

use crate::broker::{self, ReadRecord, TestMessage};
pub use crate::ids::IdLocation;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One app process (an instance) that can be killed and restarted with the same identity.
/// Its stderr goes to `log` (appended across restarts). Dropping it SIGKILLs the process.
pub struct AppProcess {
    /// Instance id (passed as `--instance-id`).
    pub id: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    /// Where the process's stderr goes.
    pub log: PathBuf,
    /// How many times it was started.
    pub starts: u32,
    /// Length of the log when the process last started: what it logged since is after it.
    log_start: u64,
}

impl AppProcess {
    /// An instance of `program` run as `program [prefix_args] --instance-id ID [args]`.
    pub fn new(
        program: impl Into<PathBuf>,
        prefix_args: &[&str],
        id: &str,
        args: Vec<String>,
        log_dir: &Path,
    ) -> Self {
        let mut full: Vec<String> = prefix_args.iter().map(|s| (*s).to_owned()).collect();
        full.extend(["--instance-id".to_owned(), id.to_owned()]);
        full.extend(args);
        Self::from_command(program, full, id, log_dir)
    }

    /// Instance `id` run as `program args` exactly (the arguments name the instance).
    pub fn from_command(
        program: impl Into<PathBuf>,
        args: Vec<String>,
        id: &str,
        log_dir: &Path,
    ) -> Self {
        Self {
            id: id.to_owned(),
            program: program.into(),
            args,
            envs: vec![("RUST_LOG".into(), "info,librdkafka=warn".into())],
            child: None,
            log: log_dir.join(format!("instance-{id}.log")),
            starts: 0,
            log_start: 0,
        }
    }

    /// Sends stderr to `path` from the next start on (two processes with one instance id).
    pub fn set_log(&mut self, path: impl Into<PathBuf>) {
        self.log = path.into();
    }

    /// Sets an environment variable for later starts.
    pub fn env(&mut self, key: &str, value: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the process (it must not be running).
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "instance {} is already running",
            self.id
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        self.log_start = log.metadata().map_or(0, |m| m.len());
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
        self.starts += 1;
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends a signal to the running process.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGKILL and reap. Returns whether the signal killed a running process (it had not
    /// exited on its own before).
    pub fn kill9(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = c.kill();
        c.wait()
            .is_ok_and(|status| status.signal() == Some(libc::SIGKILL))
    }

    /// Whether the running process is stopped (SIGSTOP), from `/proc/<pid>/stat`.
    pub fn is_stopped(&self) -> bool {
        let Some(pid) = self.pid() else { return false };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // `pid (comm) state ...`; comm may hold spaces, so read after the last ')'.
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|s| s == "T")
            })
            .unwrap_or(false)
    }

    /// What the process logged since its last start.
    pub fn log_since_start(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = (self.log_start as usize).min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// Whether the process is still starting (no partitions assigned yet) or one of its
    /// tasks restores (its last restore line is not followed by "task restored; running"),
    /// going by what it logged since its last start.
    pub fn starting_or_restoring(&self) -> bool {
        restoring_in(&self.log_since_start())
    }

    /// SIGSTOP: the process freezes (a zombie-to-be); [`AppProcess::resume`] continues it.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Waits (bounded) for the process to end on its own and reaps it. Panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "instance {} still runs after {timeout:?}; log tail:\n{}",
                self.id,
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (bounded) for a graceful exit. Panics if it does not stop in time.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "instance {} did not stop within {timeout:?} after SIGTERM; see {}",
                    self.id,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has ended on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The whole log (stderr of every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The options every app instance of a test gets: cluster, topics, app id, state dir, and a
/// short session timeout (6 s) so a killed member's partitions move on quickly.
pub fn instance_args(
    bs: &str,
    input: &str,
    output: &str,
    app: &str,
    state_dir: &Path,
) -> Vec<String> {
    [
        "--bootstrap",
        bs,
        "--input",
        input,
        "--output",
        output,
        "--app-id",
        app,
        "--state-dir",
        &state_dir.display().to_string(),
        "--kafka",
        "session.timeout.ms=6000",
        "--kafka",
        "heartbeat.interval.ms=500",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

/// `unique` messages with IDs `m0..m{unique-1}` (key = ID) plus resends of earlier IDs with
/// the same key and value, so that `dup_share` of all messages are resends. Half the resends
/// land within 50 messages of their original, half anywhere later (far apart in time when
/// produced in chunks). Returns the messages in send order.
pub fn messages_with_duplicates(unique: usize, dup_share: f64, seed: u64) -> Vec<TestMessage> {
    assert!(
        (0.0..1.0).contains(&dup_share),
        "dup_share must be in [0, 1)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let dups = ((unique as f64) * dup_share / (1.0 - dup_share)).round() as usize;
    let mut out: Vec<TestMessage> = (0..unique)
        .map(|i| {
            let id = format!("m{i}");
            TestMessage {
                key: Some(id.clone().into_bytes()),
                value: format!("payload-{i}").into_bytes(),
                id: Some(id),
                timestamp: None,
            }
        })
        .collect();
    for _ in 0..dups {
        let i = rng.gen_range(0..unique);
        let orig = out[i].clone();
        let pos = if rng.gen_bool(0.5) {
            (i + rng.gen_range(1..50)).min(out.len())
        } else {
            rng.gen_range(i + 1..=out.len())
        };
        out.insert(pos, orig);
    }
    out
}

/// Waits until the group's committed offsets reach `ends` on every partition of `topic`.
/// Panics on timeout or if an instance exits on its own.
pub fn wait_caught_up(
    bs: &str,
    group: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
    timeout: Duration,
    instances: &mut [AppProcess],
) {
    wait_caught_up_with(bs, group, topic, ends, timeout, instances, None);
}

/// [`wait_caught_up`]; with `exits`, an instance that exits is started again (as an
/// orchestrator would) and its exit is noted there instead of failing.
fn wait_caught_up_with(
    bs: &str,
    group: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
    timeout: Duration,
    instances: &mut [AppProcess],
    mut exits: Option<&mut Vec<String>>,
) {
    let partitions = ends.len() as i32;
    let deadline = Instant::now() + timeout;
    loop {
        let committed = broker::committed_offsets(bs, group, topic, partitions);
        if (0..partitions).all(|p| committed.get(&p).copied().unwrap_or(0).max(0) >= ends[&p]) {
            return;
        }
        for inst in instances.iter_mut() {
            if let Some(status) = inst.exited() {
                match exits.as_deref_mut() {
                    Some(exits) => restart_exited(inst, status, exits),
                    None => panic!(
                        "instance {} exited unexpectedly ({status}); log tail:\n{}",
                        inst.id,
                        inst.log_tail(30)
                    ),
                }
            }
        }
        assert!(Instant::now() < deadline, "group {group} did not catch up within {timeout:?}: committed {committed:?}, ends {ends:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ID a record without one is counted under.
pub const NO_ID: &str = "<no id>";

/// Output records per message ID (`<no id>` for records without one).
pub fn count_by_id(records: &[ReadRecord]) -> HashMap<String, u64> {
    count_by(records, &IdLocation::default())
}

/// Records per message ID at `at` (`<no id>` for records without one there).
pub fn count_by(records: &[ReadRecord], at: &IdLocation) -> HashMap<String, u64> {
    count_ids(&ids_at(records, at))
}

/// The ID at `at` of each record, in order (`<no id>` for one without).
fn ids_at(records: &[ReadRecord], at: &IdLocation) -> Vec<String> {
    records
        .iter()
        .map(|r| at.of(r).unwrap_or_else(|| NO_ID.to_owned()))
        .collect()
}

fn count_ids(ids: &[String]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

/// The per-ID comparison of an input and an output topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Input records.
    pub inputs: usize,
    /// Distinct message IDs in the input.
    pub unique_ids: usize,
    /// Output records.
    pub outputs: usize,
    /// Output records beyond the first per ID.
    pub duplicates: u64,
    /// Input IDs with no output, sorted.
    pub missing: Vec<String>,
    /// Output IDs that were never input (or have no ID), sorted.
    pub unexpected: Vec<String>,
    /// Up to 10 duplicated IDs (sorted) with where their input and output copies are: the
    /// place to start reading the apps' logs.
    pub duplicate_examples: Vec<DuplicateExample>,
}

/// Where the copies of one duplicated message ID are, as (partition, offset, timestamp ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateExample {
    /// The message ID.
    pub id: String,
    /// Its input records.
    pub inputs: Vec<(i32, i64, Option<i64>)>,
    /// Its output records (more than one).
    pub outputs: Vec<(i32, i64, Option<i64>)>,
}

impl Verification {
    /// Compares input and output records by `message-id`.
    pub fn compare(inputs: &[ReadRecord], outputs: &[ReadRecord]) -> Self {
        let header = IdLocation::default();
        Self::compare_by(inputs, outputs, &header, &header)
    }

    /// Compares input and output records by the IDs at `input_id` and `output_id` (records
    /// without one count as the ID `<no id>`).
    pub fn compare_by(
        inputs: &[ReadRecord],
        outputs: &[ReadRecord],
        input_id: &IdLocation,
        output_id: &IdLocation,
    ) -> Self {
        // Each record's ID, worked out once (a JSON location parses the value).
        let (in_ids, out_ids) = (ids_at(inputs, input_id), ids_at(outputs, output_id));
        let ins = count_ids(&in_ids);
        let outs = count_ids(&out_ids);
        let mut missing: Vec<String> = ins
            .keys()
            .filter(|id| !outs.contains_key(*id))
            .cloned()
            .collect();
        missing.sort();
        let mut unexpected: Vec<String> = outs
            .keys()
            .filter(|id| !ins.contains_key(*id))
            .cloned()
            .collect();
        unexpected.sort();
        let mut duplicated: Vec<&String> = outs
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id)
            .collect();
        duplicated.sort();
        let duplicate_examples = duplicated
            .into_iter()
            .take(10)
            .map(|id| {
                let at = |records: &[ReadRecord], ids: &[String]| {
                    records
                        .iter()
                        .zip(ids)
                        .filter(|(_, of)| *of == id)
                        .map(|(r, _)| (r.partition, r.offset, r.timestamp))
                        .collect()
                };
                DuplicateExample {
                    id: id.clone(),
                    inputs: at(inputs, &in_ids),
                    outputs: at(outputs, &out_ids),
                }
            })
            .collect();
        Self {
            inputs: inputs.len(),
            unique_ids: ins.len(),
            outputs: outputs.len(),
            duplicates: outs.values().map(|n| n.saturating_sub(1)).sum(),
            missing,
            unexpected,
            duplicate_examples,
        }
    }

    /// Zero duplicates, zero missing, nothing unexpected.
    pub fn is_exact(&self) -> bool {
        self.duplicates == 0 && self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; for an app's `--metrics-addr`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` over HTTP/1.1 on `addr`; returns the status code and body, or `None` if nothing
/// answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Sum of the samples of metric `name` in a Prometheus text exposition whose labels include
/// every `label="value"` pair of `labels` (so `&[]` sums over all series).
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Waits until the process's log contains `needle` (an event the app logs), or panics after
/// `timeout` (or if the process exits first).
pub fn wait_for_log(process: &mut AppProcess, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if process.log().contains(needle) {
            return;
        }
        if let Some(status) = process.exited() {
            panic!(
                "instance {} exited ({status}) before logging `{needle}`; log tail:\n{}",
                process.id,
                process.log_tail(30)
            );
        }
        assert!(
            Instant::now() < deadline,
            "instance {} did not log `{needle}` within {timeout:?}; log tail:\n{}",
            process.id,
            process.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) for a process started with `TEST_FAILPOINT` to kill itself at the
/// failpoint, and panics (with the log tail) if it exited any other way.
pub fn wait_failpoint_kill(process: &mut AppProcess, timeout: Duration) {
    let status = process.wait_exit(timeout);
    let log = std::fs::read_to_string(&process.log).unwrap_or_default();
    assert!(
        log.contains("TEST_FAILPOINT: SIGKILL"),
        "instance {} exited ({status}) but not at the failpoint; log tail:\n{}",
        process.id,
        process.log_tail(30)
    );
}

/// Scrapes `http://{addr}/metrics` until `done` holds for the exposition (metrics move right
/// after the event a test waited for, e.g. a commit) or `timeout` passes; returns the last
/// exposition either way, for the test to assert on. Panics if the endpoint does not answer 200.
pub fn scrape_until(addr: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, text) = http_get(addr, "/metrics")
            .unwrap_or_else(|| panic!("nothing answers at http://{addr}/metrics"));
        assert_eq!(status, 200, "GET /metrics: {text}");
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command line of an app under test with placeholders the harness fills in per instance,
/// as `exactly chaos --app-cmd` takes it: `{bootstrap}`, `{input}`, `{output}`, `{app}` (the
/// app id: consumer group, internal topic prefix), `{instance}` (a stable instance id, reused
/// by the replacement of a killed process), `{state}` (the instance's own state directory) and
/// `{metrics_addr}` (where it serves `/ready`; needed for a soak). Words are split like a
/// POSIX shell does (quotes group), but no shell runs: the signals reach the app itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCommand {
    words: Vec<String>,
}

impl AppCommand {
    /// Every placeholder.
    pub const PLACEHOLDERS: [&'static str; 7] = [
        "{bootstrap}",
        "{input}",
        "{output}",
        "{app}",
        "{instance}",
        "{state}",
        "{metrics_addr}",
    ];
    /// The placeholders a command must use: without them instances would share topics, a
    /// group, an identity or a state directory with something else.
    pub const REQUIRED: [&'static str; 5] =
        ["{input}", "{output}", "{app}", "{instance}", "{state}"];

    /// Parses `template`, or says what is wrong with it.
    pub fn parse(template: &str) -> Result<Self, String> {
        let words = shlex::split(template)
            .ok_or_else(|| format!("cannot split `{template}` into words: unbalanced quotes"))?;
        if words.is_empty() {
            return Err("the app command is empty".to_owned());
        }
        for word in &words {
            let mut rest = word.as_str();
            while let Some(open) = rest.find('{') {
                let tail = &rest[open..];
                let Some(close) = tail.find('}') else { break };
                let name = &tail[..=close];
                let looks_like_one = name[1..name.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_');
                if looks_like_one && !Self::PLACEHOLDERS.contains(&name) {
                    return Err(format!(
                        "unknown placeholder {name} in the app command; the placeholders are {}",
                        Self::PLACEHOLDERS.join(" ")
                    ));
                }
                rest = &tail[close + 1..];
            }
        }
        let command = Self { words };
        let missing: Vec<&str> = Self::REQUIRED
            .iter()
            .copied()
            .filter(|p| !command.uses(p))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the app command does not use {}: each instance needs the harness's topics, app id,                  instance id and its own state directory, e.g. `my-app --input {{input}} --output {{output}}                  --app-id {{app}} --instance-id {{instance}} --state-dir {{state}} --bootstrap {{bootstrap}}`",
                missing.join(" ")
            ));
        }
        Ok(command)
    }

    /// Whether the command uses `placeholder` (e.g. `"{metrics_addr}"`).
    pub fn uses(&self, placeholder: &str) -> bool {
        self.words.iter().any(|w| w.contains(placeholder))
    }

    /// The program and its arguments with the placeholders replaced by `values`
    /// (`("{input}", "orders")`, ...).
    pub fn render(&self, values: &[(&str, &str)]) -> (PathBuf, Vec<String>) {
        let mut words = self.words.iter().map(|w| {
            values.iter().fold(w.clone(), |w, (placeholder, value)| {
                w.replace(placeholder, value)
            })
        });
        let program = PathBuf::from(words.next().expect("parse refuses an empty command"));
        (program, words.collect())
    }
}

/// A seeded chaos run: app processes over a topic, killed and restarted at random while
/// messages (with resent IDs) stream in, then verified per message ID.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// The app binary; it must accept `--bootstrap --input --output --app-id --instance-id
    /// --state-dir --kafka K=V` (e.g. `dedup-forward`, or `exactly forward`).
    pub program: PathBuf,
    /// Arguments before the options (e.g. `["forward"]` for the `exactly` binary).
    pub prefix_args: Vec<String>,
    /// App processes.
    pub instances: usize,
    /// Partitions of the input and output topics.
    pub partitions: i32,
    /// Distinct message IDs.
    pub unique: usize,
    /// Share of messages that resend an earlier ID.
    pub dup_share: f64,
    /// Disruptions (SIGKILL, SIGSTOP/SIGCONT, SIGTERM), each followed by a restart if needed.
    pub actions: usize,
    /// Seed of the messages and of the schedule: the same seed replays the same schedule.
    pub seed: u64,
    /// `0`: each message's key is its ID. Otherwise the messages are payments: ID `m{i}` has
    /// key `acct-{i % accounts}` and an amount from 1 to 100 as its value (see
    /// [`payment_amount`]), for stateful apps that keep per-account state.
    pub accounts: usize,
    /// State stores of the app whose changelogs the report should hold (read_committed)
    /// before the run deletes its topics.
    pub state_stores: Vec<String>,
    /// More options for every instance, after the standard ones (e.g. `--threads 2`,
    /// `--guarantee at-least-once`).
    pub extra_args: Vec<String>,
    /// A soak instead of `actions` disruptions over `unique` IDs (see [`Soak`]).
    pub soak: Option<Soak>,
    /// Run this command line per instance instead of `program` with the standard options
    /// (`prefix_args` and `extra_args` are not used then).
    pub app_command: Option<AppCommand>,
    /// The input to produce instead of the generated messages (`unique`, `dup_share` and
    /// `accounts` are not used then); produced in order, in `actions` chunks.
    pub messages: Option<Vec<TestMessage>>,
    /// Where the input records carry their message ID.
    pub input_id: IdLocation,
    /// Where the output records carry their input's message ID.
    pub output_id: IdLocation,
}

/// A soak: disruptions go on for `duration`, each after a round of `unique` fresh IDs (with
/// resends), and the mix adds pauses longer than the session timeout (the instance is
/// removed from the group and resumes as a zombie), the output topic deleted and created
/// again 3–20 s later (a round produced while it is missing; what the deleted topic held is
/// verified with the rest) and, with `broker_script`, broker restarts. Every instance serves `/ready`, and the report counts how long each was not
/// ready.
#[derive(Debug, Clone)]
pub struct Soak {
    /// How long disruptions go on (then the group catches up and the output is verified).
    pub duration: Duration,
    /// A script that stops the broker gracefully with `down` and starts it with `up`
    /// (`scripts/broker.sh`); `None`: no broker restarts. The local test broker is restarted
    /// only once the group has caught up: stopped under open transactions, it hid committed
    /// records from read_committed readers afterwards (docs/reliability.md).
    pub broker_script: Option<PathBuf>,
}

/// An external sink the soak's app writes one effect per message ID to (a PostgreSQL table,
/// say), made slow during the soak: while the second round of every four is processed, the
/// harness locks the sink's table against writes for 10–14 s (past the sink's lock timeout:
/// flushes fail and their Kafka transactions abort), while the fourth for 1–4 s (within it:
/// slow flushes). Its effects are verified per message ID like the output topic. (See
/// [`run_soak_with_sink`].)
pub trait SoakSink {
    /// Locks the sink's table against writes until [`release`](Self::release).
    fn lock(&mut self);
    /// Releases the lock.
    fn release(&mut self);
    /// Every effect the sink holds, one record each, with its input's `message-id` header
    /// and the input partition and offset it came from.
    fn effects(&mut self) -> Vec<ReadRecord>;
}

/// A lock the soak holds on its sink's table.
struct SinkLock {
    taken: Instant,
    hold: Duration,
}

/// Releases the soak's lock on its sink's table, if it holds one, once held for its time.
fn release_sink(sink: &mut Option<&mut dyn SoakSink>, lock: &mut Option<SinkLock>) {
    if let (Some(sink), Some(l)) = (sink.as_mut(), lock.take()) {
        std::thread::sleep(l.hold.saturating_sub(l.taken.elapsed()));
        sink.release();
    }
}

/// The amount of payment `m{i}` in a run with [`ChaosPlan::accounts`] set.
pub fn payment_amount(i: usize) -> i64 {
    (i.wrapping_mul(7919) % 100) as i64 + 1
}

/// Turns messages with IDs `m{i}` into payments: key `acct-{i % accounts}`, value the amount.
fn as_payments(messages: &mut [TestMessage], accounts: usize) {
    for m in messages {
        let i: usize =
            m.id.as_deref()
                .and_then(|id| id.strip_prefix('m'))
                .and_then(|n| n.parse().ok())
                .expect("generated IDs are m{i}");
        m.key = Some(format!("acct-{}", i % accounts).into_bytes());
        m.value = payment_amount(i).to_string().into_bytes();
    }
}

/// What a chaos run did and found.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// The seed (replay with it).
    pub seed: u64,
    /// SIGKILLs sent.
    pub sigkills: u32,
    /// SIGKILLs that killed a running process (it had not exited before).
    pub kills_landed: u32,
    /// SIGKILLs that landed while the process was starting or a task of it restored (read
    /// from its log at the moment of the kill).
    pub restore_kills: u32,
    /// SIGSTOP/SIGCONT pauses.
    pub pauses: u32,
    /// Graceful SIGTERM restarts.
    pub terminations: u32,
    /// Frozen instances replaced by a process with the same instance id, then continued.
    pub replacements: u32,
    /// Of those, the continued (zombie) processes that stopped on their own (fenced).
    pub zombies_stopped: u32,
    /// Of those, the zombies still running 60 s after SIGCONT, then SIGKILLed.
    pub zombies_killed: u32,
    /// SIGSTOPs longer than the session timeout (soak).
    pub long_pauses: u32,
    /// Broker restarts (soak with a broker script).
    pub broker_restarts: u32,
    /// Times the output topic was deleted and created again (soak).
    pub output_recreations: u32,
    /// Process starts, the first ones included.
    pub starts: u32,
    /// Transactions the instances aborted (their "transaction aborted" log lines).
    pub aborts: u32,
    /// Stalled fetches the instances restarted (their "seeking its fetch again" log lines).
    pub fetch_restarts: u32,
    /// Soak with a [`SoakSink`]: locks of its table held 1–4 s.
    pub sink_short_locks: u32,
    /// Soak with a [`SoakSink`]: locks of its table held 10–14 s.
    pub sink_long_locks: u32,
    /// Soak with a [`SoakSink`]: flushes that failed (the instances' "sink flush failed" log
    /// lines); each aborted its Kafka transaction, which came again.
    pub sink_failed_flushes: u32,
    /// Soak with a [`SoakSink`]: the per-ID comparison of the input and the sink's effects.
    pub sink_verification: Option<Verification>,
    /// Per instance, seconds its `/ready` did not answer 200 (soak), killed or paused time
    /// included.
    pub not_ready_seconds: Vec<f64>,
    /// Instances that exited on their own during a soak (restarted, as an orchestrator
    /// would): which, with their status and error line.
    pub exits: Vec<String>,
    /// The per-ID comparison of input and output (read_committed).
    pub verification: Verification,
    /// The input topic, read_committed.
    pub inputs: Vec<ReadRecord>,
    /// The output topic, read_committed; in a soak, with what each deleted incarnation of
    /// it held (read just before the deletion).
    pub outputs: Vec<ReadRecord>,
    /// The changelog of each of [`ChaosPlan::state_stores`], read_committed.
    pub state_changelogs: std::collections::BTreeMap<String, Vec<ReadRecord>>,
    /// Wall time.
    pub seconds: f64,
}

impl ChaosReport {
    /// No duplicate, missing or unexpected ID in the output, nor in the sink's effects.
    pub fn is_exact(&self) -> bool {
        self.verification.is_exact()
            && self
                .sink_verification
                .as_ref()
                .is_none_or(Verification::is_exact)
    }

    /// One line with every figure.
    pub fn summary(&self) -> String {
        let v = &self.verification;
        format!(
            "chaos seed {}: {} inputs, {} unique IDs, {} resent; {} SIGKILLs ({} landed, {} during start-up/restore), {} SIGSTOP/SIGCONT, \
             {} frozen and replaced under their id ({} zombies stopped by the fence, {} killed after 60 s), \
             {} SIGTERM restarts; {} outputs, {} duplicates, {} missing, {} unexpected; {:.1} s",
            self.seed,
            v.inputs,
            v.unique_ids,
            v.inputs.saturating_sub(v.unique_ids),
            self.sigkills,
            self.kills_landed,
            self.restore_kills,
            self.pauses,
            self.replacements,
            self.zombies_stopped,
            self.zombies_killed,
            self.terminations,
            v.outputs,
            v.duplicates,
            v.missing.len(),
            v.unexpected.len(),
            self.seconds
        ) + &if self.not_ready_seconds.is_empty() {
            String::new()
        } else {
            format!(
                "; soak: {} long SIGSTOPs (past the session timeout), {} broker restarts, {} output topic recreations, {} process starts, {} exits on their own (restarted), {} aborted transactions, {} stalled fetches restarted, not ready {} s per instance",
                self.long_pauses,
                self.broker_restarts,
                self.output_recreations,
                self.starts,
                self.exits.len(),
                self.aborts,
                self.fetch_restarts,
                self.not_ready_seconds
                    .iter()
                    .map(|s| format!("{s:.0}"))
                    .collect::<Vec<_>>()
                    .join("/")
            )
        } + &match &self.sink_verification {
            None => String::new(),
            Some(v) => format!(
                "; slow sink: {} locks of 1-4 s, {} of 10-14 s, {} failed flushes; sink effects: {}, {} duplicates, {} missing, {} unexpected",
                self.sink_short_locks,
                self.sink_long_locks,
                self.sink_failed_flushes,
                v.outputs,
                v.duplicates,
                v.missing.len(),
                v.unexpected.len()
            ),
        }
    }
}

/// Polls every instance's `/ready` (one thread each: a paused instance's server accepts a
/// connection and answers nothing until it resumes) and adds up how long each did not answer
/// 200.
struct ReadyWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<f64>>,
}

impl ReadyWatch {
    const EVERY: Duration = Duration::from_millis(250);

    fn start(addrs: Vec<String>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = addrs
            .into_iter()
            .map(|addr| {
                let flag = stop.clone();
                std::thread::spawn(move || {
                    let mut not_ready = 0.0;
                    let mut last = Instant::now();
                    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(Self::EVERY);
                        let ready = matches!(http_get(&addr, "/ready"), Some((200, _)));
                        let now = Instant::now();
                        if !ready {
                            not_ready += now.duration_since(last).as_secs_f64();
                        }
                        last = now;
                    }
                    not_ready
                })
            })
            .collect();
        Self { stop, handles }
    }

    fn finish(self) -> Vec<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("the ready watch does not panic"))
            .collect()
    }
}

/// Runs the broker script with `verb` (`down` or `up`); panics if it fails.
fn broker_script(script: &Path, verb: &str) {
    let status = Command::new(script)
        .arg(verb)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} {verb}: {e}", script.display()));
    assert!(
        status.success(),
        "{} {verb} failed: {status}",
        script.display()
    );
}

/// Round `round`'s messages of a soak: fresh IDs `{prefix}{round}-m{i}` (key = ID) with
/// resends.
fn soak_round(
    prefix: &str,
    unique: usize,
    dup_share: f64,
    seed: u64,
    round: usize,
) -> Vec<TestMessage> {
    let mut messages = messages_with_duplicates(unique, dup_share, seed.wrapping_add(round as u64));
    for m in &mut messages {
        let id = format!("{prefix}{round}-{}", m.id.as_deref().unwrap_or_default());
        m.key = Some(id.clone().into_bytes());
        m.id = Some(id);
    }
    messages
}

/// Waits (up to 10 minutes) until the group committed the input's end offsets, restarting
/// instances that exit meanwhile (counted in `report.exits`).
fn soak_caught_up(
    bs: &str,
    app: &str,
    input: &str,
    partitions: i32,
    instances: &mut [AppProcess],
    report: &mut ChaosReport,
) {
    let ends = broker::end_offsets(bs, input, partitions);
    wait_caught_up_with(
        bs,
        app,
        input,
        &ends,
        Duration::from_secs(600),
        instances,
        Some(&mut report.exits),
    );
}

/// Polls `done` every 100 ms until it holds; panics naming `what` after `within`.
fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// See [`AppProcess::starting_or_restoring`].
fn restoring_in(log: &str) -> bool {
    if !log.contains("partitions assigned") {
        return true;
    }
    let mut last: HashMap<&str, bool> = HashMap::new();
    for line in log.lines() {
        let restoring = if line.contains("restoring stores") {
            true
        } else if line.contains("task restored; running") {
            false
        } else {
            continue;
        };
        if let Some(task) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("task="))
        {
            last.insert(task, restoring);
        }
    }
    last.values().any(|r| *r)
}

/// The last `error:` line `inst` logged since its last start.
fn exit_reason(inst: &AppProcess) -> String {
    inst.log_since_start()
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or("no error line")
        .to_owned()
}

/// Notes why `inst` exited (its status and last `error:` line) and starts it again.
fn restart_exited(inst: &mut AppProcess, status: ExitStatus, exits: &mut Vec<String>) {
    exits.push(format!(
        "instance {} ({status}): {}",
        inst.id,
        exit_reason(inst)
    ));
    inst.kill9(); // reaps it
    inst.start();
}

/// SIGKILLs `inst` and counts what the kill hit.
/// The zombie disruption: `inst` is frozen (SIGSTOP) and `replacement`, with the same instance
/// id, started, as an orchestrator does when it takes a hung process for dead; once the
/// replacement has run for a while the frozen process is continued (SIGCONT). Its producer
/// and group member were fenced by the replacement, so it must stop on its own without writing
/// anything visible; one still running after 60 s is SIGKILLed and counted. The replacement
/// then is the instance.
fn replace_frozen(
    inst: &mut AppProcess,
    mut replacement: AppProcess,
    rng: &mut StdRng,
    report: &mut ChaosReport,
) {
    inst.freeze();
    replacement.start();
    std::thread::sleep(Duration::from_millis(rng.gen_range(1_000..4_000)));
    inst.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    while inst.exited().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if inst.exited().is_some() {
        report.zombies_stopped += 1;
    } else {
        inst.kill9();
        report.zombies_killed += 1;
    }
    report.starts += inst.starts;
    std::mem::swap(inst, &mut replacement);
}

fn kill(inst: &mut AppProcess, report: &mut ChaosReport) {
    let restoring = inst.starting_or_restoring();
    report.sigkills += 1;
    if inst.kill9() {
        report.kills_landed += 1;
        if restoring {
            report.restore_kills += 1;
        }
    }
}

/// Runs `plan` against the cluster at `bs`, with state and logs under `work_dir`. Creates (and
/// afterwards deletes) its own topics. Panics with the log tail of an instance that exits on
/// its own, or if the group does not catch up within 10 minutes.
pub fn run(bs: &str, plan: &ChaosPlan, work_dir: &Path) -> ChaosReport {
    run_observed(bs, plan, work_dir, &mut |_, _| {})
}

/// [`run`], telling `progress` after each disruption how many are done and what happened.
pub fn run_observed(
    bs: &str,
    plan: &ChaosPlan,
    work_dir: &Path,
    progress: &mut dyn FnMut(usize, &str),
) -> ChaosReport {
    run_soak_with_sink(bs, plan, work_dir, progress, None)
}

/// [`run_observed`] with a [`SoakSink`] the app writes to (its instances must get the options
/// that make them write there through [`ChaosPlan::extra_args`]): in a soak, its table is
/// locked while some rounds are processed, and its effects are verified per message ID. (A
/// run that is not a soak only verifies them.) The seeded schedule of the other disruptions
/// is the same with or without a sink.
pub fn run_soak_with_sink(
    bs: &str,
    plan: &ChaosPlan,
    work_dir: &Path,
    progress: &mut dyn FnMut(usize, &str),
    mut sink: Option<&mut dyn SoakSink>,
) -> ChaosReport {
    if let (Some(command), Some(_)) = (&plan.app_command, &plan.soak) {
        assert!(
            command.uses("{metrics_addr}"),
            "a soak watches each instance's /ready: the app command must serve it at {{metrics_addr}}"
        );
    }
    let base = broker::unique_name("chaos");
    let (input, output, app) = (
        format!("{base}-in"),
        format!("{base}-out"),
        format!("{base}-app"),
    );
    broker::create_topics(bs, &[(&input, plan.partitions), (&output, plan.partitions)]);
    let mut rng = StdRng::seed_from_u64(plan.seed);
    // The sink's locks draw from their own generator: the rest of the schedule stays that of
    // the seed.
    let mut sink_rng = StdRng::seed_from_u64(plan.seed ^ 0x51_0C_5E_ED);
    let mut sink_lock: Option<SinkLock> = None;
    let messages = match &plan.messages {
        Some(given) => given.clone(),
        None => {
            let mut messages = messages_with_duplicates(plan.unique, plan.dup_share, plan.seed);
            if plan.accounts > 0 {
                as_payments(&mut messages, plan.accounts);
            }
            messages
        }
    };
    let prefix: Vec<&str> = plan.prefix_args.iter().map(String::as_str).collect();
    let ready_addrs: Vec<String> = match plan.soak {
        Some(_) => (0..plan.instances)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect(),
        None => Vec::new(),
    };
    // Instance `i` with its state in `work_dir/{state}` (a replacement of a frozen instance
    // runs on another state dir, as on another machine).
    let make = |i: usize, state: &str| -> AppProcess {
        let state = work_dir.join(state);
        if let Some(command) = &plan.app_command {
            let (id, state) = (i.to_string(), state.display().to_string());
            let addr = ready_addrs.get(i).map_or("", String::as_str);
            let (program, args) = command.render(&[
                ("{bootstrap}", bs),
                ("{input}", &input),
                ("{output}", &output),
                ("{app}", &app),
                ("{instance}", &id),
                ("{state}", &state),
                ("{metrics_addr}", addr),
            ]);
            let mut process = AppProcess::from_command(program, args, &id, work_dir);
            process.env("KAFKA_BOOTSTRAP", bs);
            return process;
        }
        let mut args = instance_args(bs, &input, &output, &app, &state);
        if let Some(addr) = ready_addrs.get(i) {
            args.extend(["--metrics-addr".to_owned(), addr.clone()]);
        }
        args.extend(plan.extra_args.iter().cloned());
        AppProcess::new(&plan.program, &prefix, &i.to_string(), args, work_dir)
    };
    let mut instances: Vec<AppProcess> = (0..plan.instances)
        .map(|i| make(i, &format!("state-{i}")))
        .collect();
    instances.iter_mut().for_each(AppProcess::start);
    let watch = (!ready_addrs.is_empty()).then(|| ReadyWatch::start(ready_addrs.clone()));
    let started = Instant::now();
    let mut report = ChaosReport {
        seed: plan.seed,
        ..ChaosReport::default()
    };
    // What the output topic held each time it was deleted (soak).
    let mut deleted_outputs = Vec::new();
    let mut chunks = messages.chunks(messages.len().div_ceil(plan.actions.max(1)));
    for done in 0.. {
        let round;
        let chunk: &[TestMessage] = match &plan.soak {
            None => match chunks.next() {
                Some(c) => c,
                None => break,
            },
            Some(soak) => {
                if started.elapsed() >= soak.duration {
                    break;
                }
                round = soak_round("r", plan.unique, plan.dup_share, plan.seed, done);
                &round
            }
        };
        release_sink(&mut sink, &mut sink_lock);
        if let (Some(s), Some(_)) = (sink.as_mut(), &plan.soak) {
            // The second round of every four is processed while the sink's table is locked
            // for 10–14 s, the fourth while it is locked for 1–4 s.
            let hold = match done % 4 {
                1 => Some(Duration::from_millis(sink_rng.gen_range(10_000..14_000))),
                3 => Some(Duration::from_millis(sink_rng.gen_range(1_000..4_000))),
                _ => None,
            };
            if let Some(hold) = hold {
                if hold >= Duration::from_secs(10) {
                    report.sink_long_locks += 1;
                } else {
                    report.sink_short_locks += 1;
                }
                s.lock();
                sink_lock = Some(SinkLock {
                    taken: Instant::now(),
                    hold,
                });
            }
        }
        broker::produce(bs, &input, chunk);
        let victim = rng.gen_range(0..instances.len());
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..1500)));
        if plan.soak.is_some() {
            for inst in instances.iter_mut() {
                if let Some(status) = inst.exited() {
                    restart_exited(inst, status, &mut report.exits);
                }
            }
        }
        if let Some(status) = instances[victim].exited() {
            panic!(
                "instance {victim} exited on its own ({status}); log tail:\n{}",
                instances[victim].log_tail(30)
            );
        }
        if let Some(soak) = &plan.soak {
            let roll = rng.gen_range(0..100);
            if roll < 8 {
                if let Some(script) = &soak.broker_script {
                    progress(done, "broker restart (once caught up)");
                    release_sink(&mut sink, &mut sink_lock);
                    soak_caught_up(
                        bs,
                        &app,
                        &input,
                        plan.partitions,
                        &mut instances,
                        &mut report,
                    );
                    broker_script(script, "down");
                    std::thread::sleep(Duration::from_millis(rng.gen_range(1_000..8_000)));
                    broker_script(script, "up");
                    report.broker_restarts += 1;
                    continue;
                }
            } else if roll < 13 {
                progress(
                    done,
                    "output topic deleted and created again (once caught up)",
                );
                release_sink(&mut sink, &mut sink_lock);
                soak_caught_up(
                    bs,
                    &app,
                    &input,
                    plan.partitions,
                    &mut instances,
                    &mut report,
                );
                // Caught up: every output of the input so far is committed; keep them for the
                // per-ID check.
                deleted_outputs.extend(broker::read_committed(bs, &output));
                broker::delete_topics(bs, &[&output]);
                wait_until(
                    Duration::from_secs(60),
                    "the output topic is deleted",
                    || !broker::list_topics(bs).contains(&output),
                );
                // A round while it is missing: the instances hold it (not ready) until the
                // topic is back.
                let missing_round = soak_round("g", plan.unique, plan.dup_share, plan.seed, done);
                broker::produce(bs, &input, &missing_round);
                std::thread::sleep(Duration::from_millis(rng.gen_range(3_000..20_000)));
                broker::create_topics(bs, &[(&output, plan.partitions)]);
                report.output_recreations += 1;
                continue;
            } else if roll < 21 {
                progress(done, &format!("long SIGSTOP instance {victim}"));
                // Past the 6 s session timeout: the group moves its partitions, and it resumes
                // as a zombie that must be fenced.
                let inst = &mut instances[victim];
                inst.freeze();
                std::thread::sleep(Duration::from_millis(rng.gen_range(7_000..12_000)));
                inst.resume();
                report.long_pauses += 1;
                continue;
            }
        }
        let inst = &mut instances[victim];
        match rng.gen_range(0..100) {
            0..=64 => {
                progress(done, &format!("SIGKILL instance {victim}"));
                kill(inst, &mut report);
                inst.start();
                if rng.gen_bool(0.3) {
                    // Again, quickly: aimed at its start-up or restore.
                    std::thread::sleep(Duration::from_millis(rng.gen_range(100..800)));
                    kill(inst, &mut report);
                    inst.start();
                }
            }
            65..=74 if plan.soak.is_none() => {
                progress(
                    done,
                    &format!("SIGSTOP instance {victim}, a replacement with its id, SIGCONT"),
                );
                report.replacements += 1;
                let mut replacement =
                    make(victim, &format!("state-{victim}-r{}", report.replacements));
                replacement.set_log(
                    work_dir.join(format!("instance-{victim}-r{}.log", report.replacements)),
                );
                replace_frozen(inst, replacement, &mut rng, &mut report);
            }
            65..=84 => {
                progress(done, &format!("SIGSTOP instance {victim}"));
                // A pause shorter than the session timeout: the instance keeps its partitions
                // and its open transaction, then goes on.
                inst.freeze();
                std::thread::sleep(Duration::from_millis(rng.gen_range(200..3000)));
                inst.resume();
                report.pauses += 1;
            }
            _ => {
                progress(done, &format!("SIGTERM instance {victim}"));
                let status = inst.terminate(Duration::from_secs(60)).expect("running");
                if plan.soak.is_some() && !status.success() {
                    // It was exiting on its own (or still starting) when the signal came.
                    report.exits.push(format!(
                        "instance {} ({status}, at a SIGTERM): {}",
                        inst.id,
                        exit_reason(inst)
                    ));
                } else {
                    assert!(
                        status.success(),
                        "instance {} exited with {status} after SIGTERM; log tail:\n{}",
                        inst.id,
                        inst.log_tail(30)
                    );
                }
                report.terminations += 1;
                inst.start();
            }
        }
    }
    release_sink(&mut sink, &mut sink_lock);
    progress(
        plan.actions,
        "waiting until every input offset is committed",
    );
    let ends = broker::end_offsets(bs, &input, plan.partitions);
    let exits = plan.soak.is_some().then_some(&mut report.exits);
    wait_caught_up_with(
        bs,
        &app,
        &input,
        &ends,
        Duration::from_secs(600),
        &mut instances,
        exits,
    );
    if let Some(watch) = watch {
        report.not_ready_seconds = watch.finish();
    }
    for inst in &mut instances {
        let status = inst.terminate(Duration::from_secs(60)).expect("running");
        if plan.soak.is_some() && !status.success() {
            // It exited on its own after the group caught up (a long pause's fence).
            report.exits.push(format!(
                "instance {} ({status}, at the final SIGTERM): {}",
                inst.id,
                exit_reason(inst)
            ));
        } else {
            assert!(
                status.success(),
                "instance {} exited with {status} after SIGTERM; log tail:\n{}",
                inst.id,
                inst.log_tail(30)
            );
        }
        report.starts += inst.starts;
        let log = inst.log();
        let count = |what: &str| log.lines().filter(|l| l.contains(what)).count() as u32;
        report.aborts += count("transaction aborted");
        report.fetch_restarts += count("seeking its fetch again");
        report.sink_failed_flushes += count("sink flush failed");
    }
    report.inputs = broker::read_committed(bs, &input);
    report.outputs = deleted_outputs;
    report.outputs.extend(broker::read_committed(bs, &output));
    report.verification = Verification::compare_by(
        &report.inputs,
        &report.outputs,
        &plan.input_id,
        &plan.output_id,
    );
    if let Some(s) = sink.as_mut() {
        report.sink_verification = Some(Verification::compare(&report.inputs, &s.effects()));
    }
    report.seconds = started.elapsed().as_secs_f64();
    let mut internal = vec![
        format!("{app}-{input}-dedup-changelog"),
        format!("{app}-dlq"),
    ];
    for store in &plan.state_stores {
        let topic = format!("{app}-{input}-{store}-changelog");
        report
            .state_changelogs
            .insert(store.clone(), broker::read_committed(bs, &topic));
        internal.push(topic);
    }
    let mut topics: Vec<&str> = vec![&input, &output];
    topics.extend(internal.iter().map(String::as_str));
    broker::delete_topics(bs, &topics);
    report
}

#[cfg(test)]
mod tests {
    use super::restoring_in;

    #[test]
    fn a_log_shows_start_up_and_restores_until_every_task_runs() {
        assert!(restoring_in("INFO stream thread started thread=0\n"));
        let assigned = "INFO partitions assigned assigned=2 tasks=2\n";
        let restoring = "INFO restoring stores thread=a-0-0 task=in-0 ranges=[\"c: 0..9\"]\n\
                         INFO restoring stores thread=a-0-0 task=in-1 ranges=[\"c: 0..3\"]\n";
        let one = "INFO task restored; running thread=a-0-0 task=in-1 committed=Some(3)\n";
        let other = "INFO task restored; running thread=a-0-0 task=in-0 committed=Some(9)\n";
        assert!(restoring_in(&format!("{restoring}{assigned}")));
        assert!(restoring_in(&format!("{restoring}{assigned}{one}")));
        assert!(!restoring_in(&format!("{restoring}{assigned}{one}{other}")));
        // A task restoring anew (its store failed) restores again.
        assert!(restoring_in(&format!(
            "{restoring}{assigned}{one}{other}INFO restoring stores thread=a-0-0 task=in-0 ranges=[\"c: 9..12\"]\n"
        )));
    }
}
