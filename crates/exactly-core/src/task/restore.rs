//! Restoring a task's stores from their changelogs.

use super::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Why a store was wiped before a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WipeReason {
    /// The store reported itself corrupt.
    Corrupt(String),
    /// Its checkpoint names another changelog topic or partition.
    WrongIdentity {
        /// What the checkpoint says.
        found: String,
        /// What this task expects.
        expected: String,
    },
    /// Its checkpoint is beyond the end of the changelog (the changelog was recreated or
    /// the store belongs to an older cluster).
    CheckpointBeyondEnd {
        /// Checkpoint offset.
        checkpoint: i64,
        /// Changelog end offset.
        end: i64,
    },
    /// A state store that does not say when it last matched its changelog (written by an
    /// older version, or its backend does not record it), or whose app does not trust state
    /// stores (the changelogs' `delete.retention.ms` is unknown): restored whole.
    Unsynced,
    /// A state store that last matched its changelog longer ago than half the changelog's
    /// `delete.retention.ms`: compaction may have removed a tombstone written since, whose key
    /// the store still holds. Restored whole.
    Stale {
        /// How long ago it last matched its changelog (ms).
        age_ms: i64,
        /// How old it may be and still be trusted (ms).
        max_age_ms: i64,
    },
}

impl WipeReason {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Corrupt(_) => "corrupt",
            Self::WrongIdentity { .. } => "wrong_identity",
            Self::CheckpointBeyondEnd { .. } => "checkpoint_beyond_end",
            Self::Unsynced => "unsynced",
            Self::Stale { .. } => "stale",
        }
    }

    /// Whether the store was damaged or foreign (logged as a warning and counted), rather
    /// than too old to trust (an ordinary full restore).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Self::Corrupt(_) | Self::WrongIdentity { .. } | Self::CheckpointBeyondEnd { .. }
        )
    }
}

impl std::fmt::Display for WipeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt(why) => write!(f, "store is corrupt ({why})"),
            Self::WrongIdentity { found, expected } => {
                write!(
                    f,
                    "store was built from changelog {found}, expected {expected}"
                )
            }
            Self::CheckpointBeyondEnd { checkpoint, end } => write!(
                f,
                "store checkpoint {checkpoint} is beyond the changelog end {end}"
            ),
            Self::Unsynced => f.write_str(
                "the state store does not say when it last matched its changelog (or the changelog's delete.retention.ms is unknown)",
            ),
            Self::Stale { age_ms, max_age_ms } => write!(
                f,
                "the state store last matched its changelog {} s ago, more than {} s (half the changelog's delete.retention.ms): a tombstone written since may be gone",
                age_ms / 1000,
                max_age_ms / 1000
            ),
        }
    }
}

/// Where to replay the changelog from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// First changelog offset to read.
    pub from: i64,
    /// Set when the store was wiped first (logged and counted by the runtime).
    pub wiped: Option<WipeReason>,
}

impl<P: Processor, S: DedupStore> Task<P, S> {
    fn expected_identity(&self) -> String {
        format!("{}-{}", self.changelog_topic, self.id.partition)
    }

    /// Decides where to replay the changelog from, given the changelog partition's low and
    /// end offsets (end = what a read_committed consumer can reach). Wipes the store when it
    /// cannot be trusted: corrupt, built from another changelog, or ahead of the changelog.
    pub fn restore_plan(&mut self, low: i64, end: i64) -> Result<RestorePlan, TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("restore_plan"));
        }
        let wiped = match self.store.checkpoint() {
            Err(StoreError::Corrupt(why)) => Some(WipeReason::Corrupt(why)),
            Err(e) => return Err(self.store_err(e)),
            Ok(None) => None,
            Ok(Some(cp))
                if cp.topic != self.changelog_topic || cp.partition != self.id.partition =>
            {
                Some(WipeReason::WrongIdentity {
                    found: format!("{}-{}", cp.topic, cp.partition),
                    expected: self.expected_identity(),
                })
            }
            Ok(Some(cp)) if cp.next_offset > end => Some(WipeReason::CheckpointBeyondEnd {
                checkpoint: cp.next_offset,
                end,
            }),
            Ok(Some(cp)) => {
                return Ok(RestorePlan {
                    from: cp.next_offset.max(low),
                    wiped: None,
                });
            }
        };
        if let Some(reason) = &wiped {
            tracing::warn!(task = %self.id, %reason, "wiping dedup store; restoring it from the changelog");
            self.store.wipe().map_err(|e| self.store_err(e))?;
        }
        Ok(RestorePlan { from: low, wiped })
    }

    /// Decides where state store number `store` (in [`TaskConfig::stores`] order) replays its
    /// changelog from, given the changelog partition's low and read-committed end offsets.
    ///
    /// A store is restored from its checkpoint (only the tail) when it can be trusted: its
    /// checkpoint names this changelog partition, is not beyond the end, and the store matched
    /// its changelog less than [`TaskConfig::state_trust_ms`] before `now_ms` (half the
    /// changelog's `delete.retention.ms`: a key deleted after the checkpoint has its tombstone
    /// still in the changelog). Otherwise it is wiped and replayed from `low`.
    pub fn state_restore_plan(
        &mut self,
        store: usize,
        low: i64,
        end: i64,
        now_ms: i64,
    ) -> Result<RestorePlan, TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("state_restore_plan"));
        }
        let trust = self.config.state_trust_ms;
        let partition = self.id.partition;
        let slot = &mut self.stores.slots[store];
        let name = slot.spec.name.clone();
        let checkpoint = match slot.backend.checkpoint() {
            Err(StoreError::Corrupt(why)) => Err(WipeReason::Corrupt(why)),
            Err(e) => return Err(self.state_err(&name, e)),
            Ok(cp) => Ok(cp),
        };
        let synced = slot.backend.synced_ms();
        let verdict = match (checkpoint, synced) {
            (Err(reason), _) => Err(reason),
            (Ok(None), _) => Err(WipeReason::Unsynced),
            (Ok(Some(cp)), _) if cp.topic != slot.changelog || cp.partition != partition => {
                Err(WipeReason::WrongIdentity {
                    found: format!("{}-{}", cp.topic, cp.partition),
                    expected: format!("{}-{partition}", slot.changelog),
                })
            }
            (Ok(Some(cp)), _) if cp.next_offset > end => Err(WipeReason::CheckpointBeyondEnd {
                checkpoint: cp.next_offset,
                end,
            }),
            (Ok(Some(_)), Err(e)) => return Err(self.state_err(&name, e)),
            (Ok(Some(cp)), Ok(synced)) => match (synced, trust) {
                (Some(at), Some(max_age_ms)) if now_ms.saturating_sub(at) < max_age_ms => {
                    Ok(cp.next_offset.max(low))
                }
                (Some(at), Some(max_age_ms)) => Err(WipeReason::Stale {
                    age_ms: now_ms.saturating_sub(at),
                    max_age_ms,
                }),
                _ => Err(WipeReason::Unsynced),
            },
        };
        match verdict {
            Ok(from) => Ok(RestorePlan { from, wiped: None }),
            Err(reason) => {
                self.wipe_state_store(store)?;
                Ok(RestorePlan {
                    from: low,
                    wiped: Some(reason),
                })
            }
        }
    }

    /// Deletes everything state store number `store` holds (before a full restore).
    pub fn wipe_state_store(&mut self, store: usize) -> Result<(), TaskError> {
        let slot = &mut self.stores.slots[store];
        if let Err(e) = slot.backend.wipe() {
            let name = slot.spec.name.clone();
            return Err(self.state_err(&name, e));
        }
        Ok(())
    }

    /// Records in every state store that it matches its changelog as of `now_ms`
    /// ([`KvStore::mark_synced`]). The runtime calls it when a restore completed and, for
    /// running tasks, between transactions (nothing of the task is uncommitted or unapplied
    /// then, and no one else writes its changelog partitions).
    pub fn mark_stores_synced(&mut self, now_ms: i64) -> Result<(), TaskError> {
        for i in 0..self.stores.slots.len() {
            let slot = &mut self.stores.slots[i];
            if let Err(e) = slot.backend.mark_synced(now_ms) {
                let name = slot.spec.name.clone();
                return Err(self.state_err(&name, e));
            }
        }
        Ok(())
    }

    /// Applies replayed records `(offset, key, value)` of a state store's changelog (from
    /// where [`state_restore_plan`](Self::state_restore_plan) said) in one batch whose
    /// checkpoint is the offset after the last one. Entries older than the store's TTL are
    /// skipped. A value that does not decode is an error, as for the dedup changelog.
    pub fn restore_state_records<'r>(
        &mut self,
        changelog: &str,
        records: impl IntoIterator<Item = (i64, &'r [u8], Option<&'r [u8]>)>,
        clock: &dyn Clock,
    ) -> Result<usize, TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("restore_state_records"));
        }
        let Some(i) = self
            .stores
            .slots
            .iter()
            .position(|s| s.changelog == changelog)
        else {
            return Err(TaskError::WrongState {
                task: self.id.to_string(),
                what: "restore_state_records for a changelog of no state store of this task",
                state: self.state.name(),
            });
        };
        let slot = &self.stores.slots[i];
        let cutoff = slot.spec.cutoff(clock.now_ms());
        let mut writes = Vec::new();
        let mut last = None;
        let mut bad = None;
        for (offset, key, value) in records {
            last = Some(offset);
            let write = match value {
                None => None,
                Some(v) => match decode_state_value(v) {
                    Ok((ts, _)) if ts < cutoff => None,
                    Ok(_) => Some(v.to_vec()),
                    Err(e) => {
                        bad = Some(format!(
                            "changelog {changelog}-{} record at offset {offset}: {e}",
                            self.id.partition
                        ));
                        break;
                    }
                },
            };
            writes.push((key.to_vec(), write));
        }
        let name = slot.spec.name.clone();
        if let Some(reason) = bad {
            return Err(TaskError::CorruptChangelog {
                task: format!("{} (state store {name:?})", self.id),
                reason,
            });
        }
        let Some(last) = last else { return Ok(0) };
        let checkpoint = ChangelogCheckpoint {
            topic: changelog.to_owned(),
            partition: self.id.partition,
            next_offset: last + 1,
        };
        let n = writes.len();
        let result = self.stores.slots[i].backend.apply(&writes, &checkpoint);
        result.map_err(|e| self.state_err(&name, e))?;
        self.counters.store_mut(&name).restored += n as u64;
        Ok(n)
    }

    /// Applies replayed changelog records `(offset, key, value)` in one store batch whose
    /// checkpoint is the offset after the last one. Entries older than the retention are
    /// skipped. A record that does not decode is an error (the changelog is ours; skipping it
    /// could let a duplicate through).
    pub fn restore_records<'r>(
        &mut self,
        records: impl IntoIterator<Item = (i64, &'r [u8], Option<&'r [u8]>)>,
        clock: &dyn Clock,
    ) -> Result<usize, TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("restore_records"));
        }
        let cutoff = clock.now_ms() - self.config.dedup_retention_ms;
        let mut entries = Vec::new();
        let (mut first, mut last) = (None, None);
        for (offset, key, value) in records {
            first.get_or_insert(offset);
            last = Some(offset);
            let Some(value) = value else { continue };
            decode_record(key, value, |id, entry| {
                if entry.first_seen_ms >= cutoff {
                    entries.push((id, entry));
                }
            })
            .map_err(|e| TaskError::CorruptChangelog {
                task: self.id.to_string(),
                reason: format!(
                    "changelog {} record at offset {offset}: {e}",
                    self.expected_identity()
                ),
            })?;
        }
        let Some(last) = last else { return Ok(0) };
        let n = entries.len();
        let batch = StoreBatch {
            entries,
            checkpoint: ChangelogCheckpoint {
                topic: self.changelog_topic.clone(),
                partition: self.id.partition,
                next_offset: last + 1,
            },
        };
        // The changelog past the store's checkpoint holds IDs the store lacks (see
        // `apply_unseen`); a replay from before it (`RestoreFrom::Start`) holds IDs it has.
        let checkpoint = self.store.checkpoint().map_err(|e| self.store_err(e))?;
        let tail = checkpoint.is_none_or(|cp| first.is_some_and(|f| f >= cp.next_offset));
        let applied = if tail {
            self.store.apply_unseen(&batch)
        } else {
            self.store.apply(&batch)
        };
        applied.map_err(|e| self.store_err(e))?;
        self.counters.restored += n as u64;
        Ok(n)
    }

    /// Ends the restore: records the group's committed input offset (`None` if the group
    /// has none) and calls the processor's `init`. The task is `Running` afterwards.
    pub fn restore_complete(&mut self, committed_offset: Option<i64>) -> Result<(), TaskError> {
        if self.state != TaskState::Restoring {
            return Err(self.wrong_state("restore_complete"));
        }
        self.committed_offset = committed_offset;
        self.pending_offset = None;
        self.overlay.clear();
        self.overlay_written = 0;
        self.stores.drop_staged();
        if self.processor.is_none() {
            self.state = TaskState::Running;
            return Ok(());
        }
        // Timers and stream time as committed.
        self.load_stream_time()?;
        self.stream_time_committed = self.stream_time;
        self.find_next_timers()?;
        let processor = self.processor.as_mut().expect("checked above");
        let id = &self.id;
        let result = catch_unwind(AssertUnwindSafe(|| {
            processor.init(&mut InitContext::new(id))
        }));
        match result {
            Ok(Ok(())) => {
                self.state = TaskState::Running;
                Ok(())
            }
            Ok(Err(e)) => Err(TaskError::Processor {
                task: self.id.to_string(),
                offset: committed_offset.unwrap_or(0),
                reason: format!("init failed: {e}"),
            }),
            Err(panic) => Err(TaskError::Processor {
                task: self.id.to_string(),
                offset: committed_offset.unwrap_or(0),
                reason: format!("init panicked: {}", panic_message(panic.as_ref())),
            }),
        }
    }
}
