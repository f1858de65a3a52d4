//! [`RedisGuard`]: a TTL-bounded "do this once per message ID" guard in Redis, for effects
//! that cannot join a database transaction (an e-mail, a call to another service) and where
//! a bounded guarantee is acceptable.
//!
//! Per message ID the guard key `{prefix}{consumer}:{id}` goes through
//! `SET key pending:<token> NX PX ttl` (claim) → the effect → `SET key done XX PX ttl`
//! (confirm). A redelivered ID finds `done` and is skipped.
//!
//! **What it does not guarantee** (docs/sinks.md has the full table):
//! - A crash (or a lost connection) between the claim and the confirm leaves the key
//!   `pending`. Whether the effect happened is unknown; a redelivery skips it and counts it in
//!   `exactly_sink_uncertain_total` with a warning naming the ID. So in that window the effect
//!   happens **at most once**, not exactly once. Effects that must not be lost belong in the
//!   PostgreSQL sink (one transaction), or must be idempotent on their own.
//! - After the TTL the key is gone: a resend later than that is applied again (the Kafka-side
//!   dedup store still drops resends within its retention).
//! - Redis without persistence (or a failover that loses writes) forgets guards.
//! - A failed effect releases its claim (compare-and-delete of its own token), so the
//!   redelivery retries it.

use crate::error::SinkError;
use crate::metrics::SinkMetrics;
use crate::retry::SinkRetry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the guard keys live and for how long.
#[derive(Debug, Clone)]
pub struct RedisGuardConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// The guard's name: the `sink` label of its metrics (default `redis`).
    pub name: String,
    /// The app id: part of every key, so apps sharing a Redis do not share guards.
    pub consumer: String,
    /// Key prefix (default `exactly:guard:`).
    pub key_prefix: String,
    /// How long a guard key lives (default 24 h).
    pub ttl: Duration,
    /// Connect, read and write timeout (default 2 s).
    pub timeout: Duration,
    /// Retries of the claim and the confirm after a connection error.
    pub retry: SinkRetry,
}

impl RedisGuardConfig {
    /// A config for `consumer` with the defaults above.
    pub fn new(url: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: "redis".to_owned(),
            consumer: consumer.into(),
            key_prefix: "exactly:guard:".to_owned(),
            ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(2),
            retry: SinkRetry::default(),
        }
    }
    /// Sets the key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }
    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Sets the name (metrics label).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// What [`RedisGuard::run_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guarded<T> {
    /// The ID was new: the effect ran and returned this.
    Applied(T),
    /// The ID was applied before: the effect was skipped.
    AlreadyApplied,
    /// A claim without a confirm: an earlier attempt died between guard and effect (or is
    /// still running elsewhere). The effect was skipped; it ran at most once.
    Uncertain,
}

/// The state of one guard key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardState {
    /// No key (never applied, or expired).
    Free,
    /// Claimed, not confirmed.
    Pending,
    /// Applied.
    Done,
}

const DONE: &str = "done";
const PENDING: &str = "pending:";

/// Deletes KEYS[1] only if it still holds ARGV[1] (our claim token).
const RELEASE_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// A Redis guard (one connection; one per task, like a processor).
pub struct RedisGuard {
    client: redis::Client,
    conn: Option<redis::Connection>,
    config: RedisGuardConfig,
    metrics: SinkMetrics,
}

impl std::fmt::Debug for RedisGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGuard")
            .field("name", &self.config.name)
            .field("consumer", &self.config.consumer)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl RedisGuard {
    /// A guard; connects lazily.
    pub fn new(config: RedisGuardConfig, metrics: SinkMetrics) -> Result<Self, SinkError> {
        if config.consumer.is_empty() {
            return Err(SinkError::Config("the consumer (app id) is empty".into()));
        }
        let client = redis::Client::open(config.url.as_str())?;
        metrics.touch(&config.name);
        Ok(Self {
            client,
            conn: None,
            config,
            metrics,
        })
    }

    /// The guard key of `id`.
    pub fn key(&self, id: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(
            self.config.key_prefix.len() + self.config.consumer.len() + 1 + id.len(),
        );
        k.extend_from_slice(self.config.key_prefix.as_bytes());
        k.extend_from_slice(self.config.consumer.as_bytes());
        k.push(b':');
        k.extend_from_slice(id);
        k
    }

    fn conn(&mut self) -> Result<&mut redis::Connection, SinkError> {
        if self.conn.is_none() {
            let c = self
                .client
                .get_connection_with_timeout(self.config.timeout)?;
            c.set_read_timeout(Some(self.config.timeout))?;
            c.set_write_timeout(Some(self.config.timeout))?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Runs `cmd`, retrying transient errors on a fresh connection.
    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, SinkError> {
        let mut attempt = 1;
        loop {
            let result = self
                .conn()
                .and_then(|c| cmd.query::<T>(c).map_err(SinkError::from));
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < self.config.retry.max_attempts => {
                    self.conn = None;
                    self.metrics
                        .retries_total
                        .with_label_values(&[&self.config.name])
                        .inc();
                    tracing::warn!(guard = %self.config.name, attempt, error = %e, "redis command failed; retrying");
                    std::thread::sleep(self.config.retry.backoff(attempt));
                    attempt += 1;
                }
                Err(e) => {
                    if e.is_transient() {
                        self.conn = None;
                    }
                    return Err(e);
                }
            }
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.config.ttl.as_millis().max(1) as u64
    }

    /// The state of `id`'s guard.
    pub fn state(&mut self, id: &[u8]) -> Result<GuardState, SinkError> {
        let v: Option<String> = self.query(redis::cmd("GET").arg(self.key(id)))?;
        Ok(match v.as_deref() {
            None => GuardState::Free,
            Some(DONE) => GuardState::Done,
            Some(_) => GuardState::Pending,
        })
    }

    /// Claims `id` (`SET NX`): `Ok(Some(token))` if this call owns it now, `Ok(None)` if it
    /// was claimed or applied before. A retried `SET` whose first reply was lost finds its own
    /// token and still owns the claim.
    pub fn claim(&mut self, id: &[u8]) -> Result<Option<String>, SinkError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!(
            "{PENDING}{}:{}:{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let key = self.key(id);
        let set: Option<String> = self.query(
            redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl_ms()),
        )?;
        if set.is_some() {
            return Ok(Some(token));
        }
        let current: Option<String> = self.query(redis::cmd("GET").arg(&key))?;
        Ok((current.as_deref() == Some(token.as_str())).then_some(token))
    }

    /// Marks a claimed `id` applied.
    pub fn confirm(&mut self, id: &[u8]) -> Result<(), SinkError> {
        let _: Option<String> = self.query(
            redis::cmd("SET")
                .arg(self.key(id))
                .arg(DONE)
                .arg("XX")
                .arg("PX")
                .arg(self.ttl_ms()),
        )?;
        Ok(())
    }

    /// Gives up a claim (the effect failed), if `token` still holds it.
    pub fn release(&mut self, id: &[u8], token: &str) -> Result<(), SinkError> {
        let _: i64 = self.query(
            redis::cmd("EVAL")
                .arg(RELEASE_SCRIPT)
                .arg(1)
                .arg(self.key(id))
                .arg(token),
        )?;
        Ok(())
    }

    /// Runs `effect` once per `id`: claim, effect, confirm (see the module docs for the
    /// guarantee). A failed effect releases the claim and returns [`SinkError::Effect`]. A
    /// confirm that fails after the effect ran is logged and the effect reported as applied:
    /// the key stays `pending`, so a redelivery skips it as uncertain, never re-runs it.
    pub fn run_once<T, E: std::fmt::Display>(
        &mut self,
        id: &[u8],
        effect: impl FnOnce() -> Result<T, E>,
    ) -> Result<Guarded<T>, SinkError> {
        let name = self.config.name.clone();
        let Some(token) = self.claim(id)? else {
            return match self.state(id)? {
                GuardState::Done => {
                    self.metrics
                        .duplicates_skipped_total
                        .with_label_values(&[&name])
                        .inc();
                    Ok(Guarded::AlreadyApplied)
                }
                // Expired between the claim and the read: claim again (once).
                GuardState::Free => self.run_once(id, effect),
                GuardState::Pending => {
                    self.metrics
                        .uncertain_total
                        .with_label_values(&[&name])
                        .inc();
                    tracing::warn!(guard = %name, id = %String::from_utf8_lossy(id), "guard claimed but never confirmed (a crash between guard and effect?): skipping; the effect ran at most once");
                    Ok(Guarded::Uncertain)
                }
            };
        };
        match effect() {
            Ok(value) => {
                if let Err(e) = self.confirm(id) {
                    tracing::error!(guard = %name, id = %String::from_utf8_lossy(id), error = %e, "effect applied but its guard could not be confirmed; it stays pending until its TTL");
                }
                self.metrics
                    .effects_applied_total
                    .with_label_values(&[&name])
                    .inc();
                Ok(Guarded::Applied(value))
            }
            Err(e) => {
                if let Err(release) = self.release(id, &token) {
                    tracing::warn!(guard = %name, error = %release, "could not release the claim of a failed effect; it stays pending until its TTL");
                }
                Err(SinkError::effect(e.to_string()))
            }
        }
    }

    /// Runs the effects of a batch (staged in `process`, run in `Processor::flush`) through
    /// [`run_once`](Self::run_once) in order, and records one committed batch and its duration.
    /// Stops at the first error (the runtime aborts and redelivers; applied IDs are skipped
    /// then). Returns how many effects were applied.
    pub fn run_batch<E, X: std::fmt::Display>(
        &mut self,
        batch: &[(Vec<u8>, E)],
        mut effect: impl FnMut(&E) -> Result<(), X>,
    ) -> Result<usize, SinkError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let mut applied = 0;
        for (id, e) in batch {
            match self.run_once(id, || effect(e)) {
                Ok(Guarded::Applied(())) => applied += 1,
                Ok(_) => {}
                Err(err) => {
                    self.metrics
                        .flush_failures_total
                        .with_label_values(&[&self.config.name])
                        .inc();
                    return Err(err);
                }
            }
        }
        let name = &self.config.name;
        self.metrics
            .commit_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .batches_committed_total
            .with_label_values(&[name])
            .inc();
        Ok(applied)
    }
}
