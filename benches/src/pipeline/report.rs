//! The pipeline report: what gets written as JSON and printed as Markdown.

use super::data::SeedStats;
use super::measure::{Percentiles, TopicCount};
use super::worker::StoreFillResult;
use crate::procfs::Machine;
use serde::Serialize;
use std::fmt::Write as _;

/// Everything one pipeline invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// UTC start time, `YYYYMMDDTHHMMSSZ`.
    pub timestamp: String,
    /// The machine.
    pub machine: Machine,
    /// Bootstrap servers of the broker.
    pub bootstrap: String,
    /// Pid of the local noida-db broker, if one was found (its CPU use is reported).
    pub broker_pid: Option<u32>,
    /// Settings of the run.
    pub config: RunConfig,
    /// The input backlog.
    pub input: SeedStats,
    /// A plain consumer reading the whole input backlog (read_uncommitted): the broker's
    /// fetch rate for one consumer.
    pub broker_read: TopicCount,
    /// Latency of the paced load read straight back from the topic it is sent to (no
    /// pipeline): the floor of the end-to-end measurement (producer, broker, reader).
    pub broker_latency: Option<Percentiles>,
    /// One result per mode, raw copy first, the Quix Streams peer last.
    pub modes: Vec<ModeResult>,
    /// The quixstreams version the `quix-streams` mode ran (`None` with `--skip-quix`).
    pub quix_version: Option<String>,
    /// Restart of the exactly-once worker with its state, against an empty task.
    pub restart: Option<RestartResult>,
    /// Restore after wiping the exactly-once worker's state directory.
    pub restore: Option<RestoreResult>,
    /// Memory of a process holding RocksDB stores of different sizes.
    pub store_memory: Vec<StoreFillResult>,
    /// The targets of issue 16 this run can judge.
    pub targets: Vec<TargetCheck>,
}

/// Settings of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// Input records in the backlog.
    pub messages: u64,
    /// Value bytes per record.
    pub value_bytes: usize,
    /// Input (and output) partitions.
    pub partitions: i32,
    /// Share of records resending an earlier ID.
    pub dup_share: f64,
    /// Commit interval of every mode, ms.
    pub commit_interval_ms: u64,
    /// Paced records per second in the latency phase.
    pub latency_rate: u64,
    /// Seconds of the latency phase.
    pub latency_seconds: f64,
    /// How the raw copy waited for its outputs before committing.
    pub raw_flush: super::worker::RawFlush,
    /// Records per transaction / commit at most.
    pub max_batch_records: usize,
    /// Extra librdkafka properties of every mode's clients.
    pub kafka: Vec<String>,
}

/// What one mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// `raw-copy`, `at-least-once`, `exactly-once` or `quix-streams`.
    pub mode: String,
    /// Input records (the backlog).
    pub input_records: u64,
    /// Seconds from starting the worker process to its first offset commit.
    pub startup_seconds: f64,
    /// Seconds from the first observed offset commit until the committed offsets reached the
    /// end of the backlog.
    pub seconds: f64,
    /// The rate of each round of this mode, in round order (the row is the median round).
    pub round_msgs_per_s: Vec<f64>,
    /// Input records committed in that time, per second (the headline throughput).
    pub msgs_per_s: f64,
    /// Input records per second counting from the worker's start (includes joining the
    /// group, creating topics, `init_transactions`).
    pub msgs_per_s_incl_startup: f64,
    /// `msgs_per_s` relative to the raw copy of the same run.
    pub vs_raw: f64,
    /// End-to-end latency of the paced phase (producer timestamp → read_committed receive).
    pub e2e_latency: Option<Percentiles>,
    /// Paced records sent and received.
    pub latency_sent: u64,
    /// Paced records received in time.
    pub latency_received: u64,
    /// Commit latency while catching up with the backlog (exactly: the
    /// `exactly_transaction_commit_seconds` histogram, bucket-interpolated; raw: exact samples
    /// of flush + offset commit; Quix Streams: none, it serves no metrics).
    pub commit_latency_backlog: Option<Percentiles>,
    /// Commit latency during the paced phase.
    pub commit_latency_paced: Option<Percentiles>,
    /// Peak resident set size of the worker process (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
    /// Disk usage of the worker's state directory after it stopped, bytes.
    pub store_bytes: u64,
    /// Worker CPU seconds while catching up.
    pub worker_cpu_seconds: f64,
    /// Average cores the worker used while catching up.
    pub worker_cores: f64,
    /// Average cores the broker used while catching up (`None` if not found).
    pub broker_cores: Option<f64>,
    /// Average busy cores of the whole machine while catching up.
    pub machine_busy_cores: f64,
    /// `machine_busy_cores` minus worker and broker: this benchmark's own polling plus
    /// anything else running on the machine (a high value means the run was disturbed).
    pub other_cores: f64,
    /// The output topic read back (read_committed) after the worker stopped.
    pub output: TopicCount,
}

/// How long one worker took from process start to ready over repeated starts.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyTimes {
    /// Seconds from starting the process until it was ready (every task restored and running:
    /// no task restoring and one `exactly_restore_seconds` observation per partition in
    /// `/metrics`, and `/ready` answering 200; polled every 10 ms), in the order of the starts.
    pub seconds: Vec<f64>,
    /// Fastest start.
    pub min_seconds: f64,
    /// Median start.
    pub median_seconds: f64,
    /// Slowest start.
    pub max_seconds: f64,
    /// Changelog records each start replayed before it was ready
    /// (`exactly_restore_records_total`).
    pub restored_records: Vec<u64>,
}

/// Restart of the exactly-once worker after a graceful stop with its state directory intact,
/// next to the same worker on an empty input with an empty state directory.
#[derive(Debug, Clone, Serialize)]
pub struct RestartResult {
    /// IDs in the restarted worker's state: the distinct IDs its mode forwarded.
    pub state_ids: u64,
    /// Disk usage of its state directory before the first restart, bytes.
    pub state_bytes: u64,
    /// The exactly-once worker restarted with its state, each time after a graceful stop.
    pub with_state: ReadyTimes,
    /// The "empty task" baseline: the same worker as a fresh app on a new empty input topic
    /// (same partitions), each start with an empty state directory.
    pub empty: ReadyTimes,
    /// The baseline app's first start, which also created its changelog and dead-letter topics
    /// (not in `empty`).
    pub empty_first_start_seconds: f64,
    /// `with_state.median_seconds / empty.median_seconds`.
    pub ratio: f64,
}

/// Restore of the exactly-once worker after its state directory was wiped.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreResult {
    /// IDs in the restored stores (`exactly_store_entries`; the stores were empty before).
    pub restored_ids: u64,
    /// Changelog records replayed (`exactly_restore_records_total`): one holds the IDs of one
    /// transaction of a task.
    pub changelog_records: u64,
    /// Seconds from the first scrape that showed tasks restoring to the first that showed all
    /// restored (scraped every 20 ms).
    pub seconds: f64,
    /// `restored_ids / seconds`.
    pub ids_per_s: f64,
    /// Mean per-task restore time from `exactly_restore_seconds` (tasks restore concurrently
    /// on one stream thread).
    pub mean_task_seconds: f64,
    /// Seconds from starting the process until all tasks were restored.
    pub seconds_incl_startup: f64,
    /// Average cores the worker used while restoring.
    pub worker_cores: f64,
    /// Records per second one read_committed consumer reads the same changelog at, with no
    /// store (the Kafka side of a restore on its own).
    pub changelog_read_per_s: f64,
    /// Peak RSS of the restoring process, bytes.
    pub peak_rss_bytes: u64,
    /// Disk usage of the restored stores, bytes.
    pub store_bytes: u64,
}

/// One target of issue 16.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is asked.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether it is met.
    pub met: bool,
}

/// UTC time as `YYYYMMDDTHHMMSSZ`.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pair(p: Option<&Percentiles>) -> String {
    p.map_or_else(
        || "–".to_owned(),
        |p| format!("{:.0} / {:.0}", p.p50_ms, p.p99_ms),
    )
}

fn pair_mean(p: Option<&Percentiles>) -> String {
    p.map_or_else(
        || "–".to_owned(),
        |p| format!("{:.0} / {:.0} ({:.0})", p.p50_ms, p.p99_ms, p.mean_ms),
    )
}

impl PipelineReport {
    /// The report as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(
            s,
            "Pipeline run {} — {} input records of {} B over {} partitions, {} distinct IDs ({:.1} % duplicates), commit interval {} ms; {} cores ({}), broker {}.\n",
            self.timestamp,
            thousands(c.messages as f64),
            c.value_bytes,
            c.partitions,
            thousands(self.input.unique_ids as f64),
            100.0 * self.input.duplicates as f64 / self.input.messages.max(1) as f64,
            c.commit_interval_ms,
            self.machine.cores,
            self.machine.cpu_model,
            self.bootstrap,
        );
        let _ = writeln!(
            s,
            "| mode | msgs/s | × raw | e2e p50 / p99 ms | commit p50 / p99 (mean) ms, backlog | commit p50 / p99 (mean) ms, paced | peak RSS MiB | store MiB | worker cores | broker cores | other cores | output records / distinct IDs |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for m in &self.modes {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {} / {} |",
                m.mode,
                thousands(m.msgs_per_s),
                m.vs_raw,
                pair(m.e2e_latency.as_ref()),
                pair_mean(m.commit_latency_backlog.as_ref()),
                pair_mean(m.commit_latency_paced.as_ref()),
                mib(m.peak_rss_bytes),
                mib(m.store_bytes),
                m.worker_cores,
                m.broker_cores
                    .map_or_else(|| "–".to_owned(), |c| format!("{c:.2}")),
                m.other_cores,
                thousands(m.output.records as f64),
                thousands(m.output.distinct_ids as f64),
            );
        }
        if self.modes.iter().any(|m| m.round_msgs_per_s.len() > 1) {
            let rounds: Vec<String> = self
                .modes
                .iter()
                .map(|m| {
                    let rates: Vec<String> =
                        m.round_msgs_per_s.iter().map(|r| thousands(*r)).collect();
                    format!("{} {}", m.mode, rates.join(" / "))
                })
                .collect();
            let _ = writeln!(
                s,
                "\nEach row is its mode's median of {} rounds on the same input (each round in a rotated order); msgs/s per round: {}.",
                self.modes[0].round_msgs_per_s.len(),
                rounds.join("; ")
            );
        }
        let _ = writeln!(
            s,
            "\nBroker alone: one idempotent producer seeded the backlog at {} msgs/s; one plain consumer read it back at {} msgs/s; paced records read straight back from their own topic (the latency floor of this harness): p50 / p99 {} ms.",
            thousands(self.input.msgs_per_s),
            thousands(self.broker_read.records as f64 / self.broker_read.seconds.max(1e-9)),
            pair(self.broker_latency.as_ref()),
        );
        let _ = writeln!(
            s,
            "Settings: max_batch_records {}, extra librdkafka properties {:?}, raw copy waits for its outputs with `{:?}`. Startup (process start → first commit): {}.",
            self.config.max_batch_records,
            self.config.kafka,
            self.config.raw_flush,
            self.modes
                .iter()
                .map(|m| format!("{} {:.1} s", m.mode, m.startup_seconds))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(v) = &self.quix_version {
            let _ = writeln!(
                s,
                "quix-streams: Quix Streams {v}, its deduplication recipe (a stateful `filter` on RocksDB state) with `processing_guarantee=\"exactly-once\"`, the same commit interval and `commit_every` = max_batch_records; it serves no metrics, so it has no commit latency."
            );
        }
        if let Some(r) = &self.restart {
            let _ = writeln!(
                s,
                "\n| start → ready (graceful stop before each) | starts | min s | median s | max s | changelog records replayed |\n|---|---:|---:|---:|---:|---:|"
            );
            for (label, t) in [
                (
                    format!(
                        "exactly-once worker, state of {} IDs ({} MiB)",
                        thousands(r.state_ids as f64),
                        mib(r.state_bytes)
                    ),
                    &r.with_state,
                ),
                (
                    "same worker, empty input and state (empty task)".to_owned(),
                    &r.empty,
                ),
            ] {
                let _ = writeln!(
                    s,
                    "| {label} | {} | {:.2} | {:.2} | {:.2} | {} |",
                    t.seconds.len(),
                    t.min_seconds,
                    t.median_seconds,
                    t.max_seconds,
                    t.restored_records
                        .iter()
                        .map(|n| thousands(*n as f64))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            let _ = writeln!(
                s,
                "\nRestart with state / empty task (medians): {:.2}×. The empty app's first start, which also created its topics: {:.2} s.",
                r.ratio, r.empty_first_start_seconds,
            );
        }
        if let Some(r) = &self.restore {
            let _ = writeln!(
                s,
                "\n| restore (state dir wiped) | IDs | changelog records | seconds | IDs/s | mean task s | incl. startup s | worker cores | changelog read alone, records/s | peak RSS MiB | store MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n| exactly-once worker | {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                thousands(r.restored_ids as f64),
                thousands(r.changelog_records as f64),
                r.seconds,
                thousands(r.ids_per_s),
                r.mean_task_seconds,
                r.seconds_incl_startup,
                r.worker_cores,
                thousands(r.changelog_read_per_s),
                mib(r.peak_rss_bytes),
                mib(r.store_bytes),
            );
        }
        if !self.store_memory.is_empty() {
            let _ = writeln!(
                s,
                "\n| stored IDs (RocksDB, {} stores, direct fill) | RSS before MiB | peak RSS MiB | RSS end MiB | store MiB | inserts/s | lookups/s |\n|---|---:|---:|---:|---:|---:|---:|",
                self.store_memory[0].stores
            );
            for f in &self.store_memory {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    crate::fixtures::count_label(f.ids),
                    mib(f.rss_before_bytes),
                    mib(f.peak_rss_bytes),
                    mib(f.rss_end_bytes),
                    mib(f.store_bytes),
                    thousands(f.insert_per_s),
                    thousands(f.lookups_per_s),
                );
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(s, "\n| target | measured | met |\n|---|---|---|");
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    t.target,
                    t.measured,
                    if t.met { "yes" } else { "no" }
                );
            }
        }
        s
    }
}

/// The targets of issue 16 a run can judge, from its results.
pub fn target_checks(report: &PipelineReport, commit_interval_ms: u64) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let find = |name: &str| report.modes.iter().find(|m| m.mode == name);
    if let (Some(raw), Some(eos)) = (find("raw-copy"), find("exactly-once")) {
        let ratio = eos.msgs_per_s / raw.msgs_per_s;
        checks.push(TargetCheck {
            target: "exactly-once ≥ 0.8 × raw copy msgs/s".into(),
            measured: format!(
                "{:.2} × ({:.0} vs {:.0} msgs/s)",
                ratio, eos.msgs_per_s, raw.msgs_per_s
            ),
            met: ratio >= 0.8,
        });
    }
    if let (Some(quix), Some(eos)) = (find("quix-streams"), find("exactly-once")) {
        let ratio = eos.msgs_per_s / quix.msgs_per_s;
        checks.push(TargetCheck {
            target: "exactly-once ≥ 5 × Quix Streams msgs/s".into(),
            measured: format!(
                "{:.1} × ({:.0} vs {:.0} msgs/s)",
                ratio, eos.msgs_per_s, quix.msgs_per_s
            ),
            met: ratio >= 5.0,
        });
    }
    if let (Some(alo), Some(eos)) = (find("at-least-once"), find("exactly-once")) {
        checks.push(TargetCheck {
            target: "at-least-once not slower than exactly-once".into(),
            measured: format!("{:.0} vs {:.0} msgs/s", alo.msgs_per_s, eos.msgs_per_s),
            met: alo.msgs_per_s >= eos.msgs_per_s,
        });
    }
    if let Some(eos) = find("exactly-once") {
        if let Some(p) = &eos.e2e_latency {
            let limit = 2.0 * commit_interval_ms as f64;
            checks.push(TargetCheck {
                target: format!(
                    "exactly-once p99 end-to-end ≤ 2 × commit interval ({limit:.0} ms)"
                ),
                measured: format!("{:.0} ms (p50 {:.0} ms)", p.p99_ms, p.p50_ms),
                met: p.p99_ms <= limit,
            });
        }
    }
    if let Some(r) = &report.restart {
        checks.push(TargetCheck {
            target: "restart after a graceful stop ≤ 2 × an empty task's (medians)".into(),
            measured: format!(
                "{:.2} × ({:.2} vs {:.2} s, {} IDs stored)",
                r.ratio,
                r.with_state.median_seconds,
                r.empty.median_seconds,
                thousands(r.state_ids as f64)
            ),
            met: r.ratio <= 2.0,
        });
    }
    if let Some(r) = &report.restore {
        checks.push(TargetCheck {
            target: "full restore (state dir wiped) ≥ 1M IDs/s".into(),
            measured: format!(
                "{:.0} IDs/s ({} IDs in {:.2} s)",
                r.ids_per_s, r.restored_ids, r.seconds
            ),
            met: r.ids_per_s >= 1_000_000.0,
        });
    }
    // The target compares 5M with 1M stored IDs; other runs compare their smallest and
    // largest store.
    let fill = |ids: u64| report.store_memory.iter().find(|m| m.ids == ids);
    let pair = match (fill(1_000_000), fill(5_000_000)) {
        (Some(small), Some(large)) => Some((small, large)),
        _ => report.store_memory.first().zip(report.store_memory.last()),
    };
    if let Some((small, large)) = pair {
        if large.ids > small.ids {
            let ratio = large.peak_rss_bytes as f64 / small.peak_rss_bytes.max(1) as f64;
            checks.push(TargetCheck {
                target: format!(
                    "peak RSS with {} IDs ≤ 1.2 × with {}",
                    crate::fixtures::count_label(large.ids),
                    crate::fixtures::count_label(small.ids)
                ),
                measured: format!(
                    "{:.2} × ({} vs {} MiB)",
                    ratio,
                    large.peak_rss_bytes >> 20,
                    small.peak_rss_bytes >> 20
                ),
                met: ratio <= 1.2,
            });
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
