//! Parent-side measurements of a pipeline run: committed offsets of a group, records and
//! distinct IDs of a topic, percentiles, and histograms scraped from `/metrics`.

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for repeated metadata questions (committed offsets, watermarks) without the cost
/// of a new connection per question.
pub struct OffsetClient {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl OffsetClient {
    /// A client asking about `topic` with its `partitions`, on behalf of `group`.
    pub fn new(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .context("creating the offset client")?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// The group's committed offset per partition (partitions without one are missing).
    pub fn committed(&self) -> anyhow::Result<HashMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, REQUEST_TIMEOUT)
            .context("reading committed offsets")?;
        Ok((0..self.partitions)
            .filter_map(|p| {
                committed
                    .find_partition(&self.topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0)
                    .map(|o| (p, o))
            })
            .collect())
    }

    /// High watermark per partition.
    pub fn ends(&self) -> anyhow::Result<HashMap<i32, i64>> {
        (0..self.partitions)
            .map(|p| {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(&self.topic, p, REQUEST_TIMEOUT)
                    .with_context(|| format!("watermarks of {}-{p}", self.topic))?;
                Ok((p, high))
            })
            .collect()
    }
}

/// The names of the cluster's topics (one metadata request for all of them; creates none).
pub fn list_topics(bootstrap: &str) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating the metadata client")?;
    let metadata = consumer
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .context("listing the topics")?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect())
}

/// Sum of the offsets of `offsets` (records up to those offsets).
pub fn offset_sum(offsets: &HashMap<i32, i64>) -> i64 {
    offsets.values().sum()
}

/// What a full read of a topic found.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TopicCount {
    /// Records read.
    pub records: u64,
    /// Distinct `message-id` header values among them.
    pub distinct_ids: u64,
    /// Seconds the read took.
    pub seconds: f64,
}

/// Reads every record of `topic` from the beginning to the current end (the last stable
/// offset for `read_committed`) and counts records and distinct message IDs.
pub fn count_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    read_committed: bool,
    timeout: Duration,
) -> anyhow::Result<TopicCount> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Assigned, never subscribed or committed: the group only satisfies the client.
        .set(
            "group.id",
            exactly_testkit::broker::unique_name("bench-reader"),
        )
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .set("enable.partition.eof", "false")
        .set("receive.message.max.bytes", "1000000000")
        .create()
        .context("creating the counting consumer")?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        let (_, end) = consumer
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .with_context(|| format!("watermarks of {topic}-{p}"))?;
        ends.insert(p, end);
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl).context("assigning")?;
    let started = Instant::now();
    let mut ids: HashSet<Vec<u8>> = HashSet::new();
    let mut records = 0u64;
    // Positions per partition: the offset after the last record seen. Transaction markers
    // occupy offsets too, so "done" compares positions, not record counts.
    let mut next: HashMap<i32, i64> = HashMap::new();
    let done = |next: &HashMap<i32, i64>| {
        ends.iter()
            .all(|(p, end)| *end == 0 || next.get(p).copied().unwrap_or(0) >= *end)
    };
    let mut last_position_check = Instant::now();
    while !done(&next) {
        if started.elapsed() > timeout {
            bail!("reading {topic} did not reach {ends:?} within {timeout:?} (at {next:?})");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                next.insert(m.partition(), m.offset() + 1);
                if let Some(id) = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "message-id"))
                    .and_then(|h| h.value)
                {
                    if !ids.contains(id) {
                        ids.insert(id.to_vec());
                    }
                }
            }
            Some(Err(e)) => eprintln!("reading {topic}: {e} (retrying)"),
            None => {}
        }
        // A partition whose tail is a transaction marker never yields a record at its end:
        // ask the consumer's position now and then.
        if last_position_check.elapsed() > Duration::from_millis(500) {
            last_position_check = Instant::now();
            if let Ok(pos) = consumer.position() {
                for p in 0..partitions {
                    if let Some(o) = pos
                        .find_partition(topic, p)
                        .and_then(|e| e.offset().to_raw())
                    {
                        let slot = next.entry(p).or_insert(0);
                        *slot = (*slot).max(o);
                    }
                }
            }
        }
    }
    Ok(TopicCount {
        records,
        distinct_ids: ids.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Percentiles of a distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples (or histogram observations).
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample (for a histogram: the upper bound of the highest non-empty bucket).
    pub max_ms: f64,
    /// Mean (for a histogram: its sum over its count, exact unlike the interpolated
    /// percentiles).
    pub mean_ms: f64,
}

/// Nearest-rank percentiles of samples in milliseconds (`None` without samples).
pub fn percentiles(samples: &mut [f64]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1]
    };
    Some(Percentiles {
        count: samples.len() as u64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: samples[samples.len() - 1],
        mean_ms: samples.iter().sum::<f64>() / samples.len() as f64,
    })
}

/// A Prometheus histogram as scraped: cumulative counts per upper bound (seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)`, ascending, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of observations (seconds).
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Parses histogram `name` from a text exposition, summing series with the same bound.
    pub fn parse(exposition: &str, name: &str) -> Self {
        let bucket = format!("{name}_bucket{{");
        let mut by_le: Vec<(f64, u64)> = Vec::new();
        let mut sum = 0.0;
        let mut count = 0;
        for line in exposition.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(labels) = series.strip_prefix(&bucket) {
                let le = labels
                    .split(',')
                    .find_map(|kv| kv.trim_end_matches('}').strip_prefix("le=\""))
                    .map(|v| v.trim_end_matches('"'));
                let le = match le {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                let n = value.parse::<f64>().unwrap_or(0.0) as u64;
                match by_le.iter_mut().find(|(b, _)| *b == le) {
                    Some(slot) => slot.1 += n,
                    None => by_le.push((le, n)),
                }
            } else if series == format!("{name}_sum")
                || series.starts_with(&format!("{name}_sum{{"))
            {
                sum += value.parse::<f64>().unwrap_or(0.0);
            } else if series == format!("{name}_count")
                || series.starts_with(&format!("{name}_count{{"))
            {
                count += value.parse::<f64>().unwrap_or(0.0) as u64;
            }
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self {
            buckets: by_le,
            sum,
            count,
        }
    }

    /// The observations made after `earlier` was scraped (same buckets).
    pub fn since(&self, earlier: &Self) -> Self {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(b, _)| b == le)
                    .map_or(0, |(_, c)| *c);
                (*le, n.saturating_sub(before))
            })
            .collect();
        Self {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The `q` quantile in seconds, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|(_, n)| *n)?;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for (le, cumulative) in &self.buckets {
            if *cumulative as f64 >= rank {
                if le.is_infinite() {
                    // Above the last finite bound: report that bound (a lower limit).
                    return Some(lower);
                }
                let in_bucket = (*cumulative - below) as f64;
                let fraction = if in_bucket > 0.0 {
                    (rank - below as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * fraction);
            }
            lower = *le;
            below = *cumulative;
        }
        Some(lower)
    }

    /// p50, p99 and the upper bound of the highest non-empty bucket, in milliseconds.
    pub fn percentiles(&self) -> Option<Percentiles> {
        let mut max = 0.0;
        let mut below = 0;
        for (le, cumulative) in &self.buckets {
            if *cumulative > below {
                max = if le.is_infinite() { max } else { *le };
            }
            below = *cumulative;
        }
        Some(Percentiles {
            count: self.count,
            p50_ms: self.quantile(0.50)? * 1e3,
            p99_ms: self.quantile(0.99)? * 1e3,
            max_ms: max * 1e3,
            mean_ms: self.sum / self.count.max(1) as f64 * 1e3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP exactly_transaction_commit_seconds x
# TYPE exactly_transaction_commit_seconds histogram
exactly_transaction_commit_seconds_bucket{app="a",instance="0",le="0.001"} 0
exactly_transaction_commit_seconds_bucket{app="a",instance="0",le="0.01"} 50
exactly_transaction_commit_seconds_bucket{app="a",instance="0",le="0.1"} 100
exactly_transaction_commit_seconds_bucket{app="a",instance="0",le="+Inf"} 100
exactly_transaction_commit_seconds_sum{app="a",instance="0"} 1.5
exactly_transaction_commit_seconds_count{app="a",instance="0"} 100
"#;

    #[test]
    fn histogram_quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::parse(EXPOSITION, "exactly_transaction_commit_seconds");
        assert_eq!(h.count, 100);
        assert_eq!(h.buckets.len(), 4);
        assert!((h.quantile(0.5).unwrap() - 0.01).abs() < 1e-9);
        assert!((h.quantile(0.99).unwrap() - 0.0982).abs() < 1e-9);
        assert_eq!(h.percentiles().unwrap().max_ms, 100.0);
        assert!((h.percentiles().unwrap().mean_ms - 15.0).abs() < 1e-9);
    }

    #[test]
    fn histogram_difference_keeps_later_observations() {
        let h = Histogram::parse(EXPOSITION, "exactly_transaction_commit_seconds");
        let d = h.since(&h);
        assert_eq!(d.count, 0);
        assert_eq!(d.quantile(0.5), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!(
            (p.p50_ms, p.p99_ms, p.max_ms, p.count),
            (50.0, 99.0, 100.0, 100)
        );
        assert_eq!(percentiles(&mut []), None);
    }
}
