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
}

impl WipeReason {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Corrupt(_) => "corrupt",
            Self::WrongIdentity { .. } => "wrong_identity",
            Self::CheckpointBeyondEnd { .. } => "checkpoint_beyond_end",
        }
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
                self.wipe_state_stores()?;
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
        self.wipe_state_stores()?;
        Ok(RestorePlan { from: low, wiped })
    }

    /// State stores are always restored from the start of their changelogs: a key whose
    /// tombstone compaction removed would otherwise survive in a store that missed the delete.
    fn wipe_state_stores(&mut self) -> Result<(), TaskError> {
        for i in 0..self.stores.slots.len() {
            let slot = &mut self.stores.slots[i];
            if let Err(e) = slot.backend.wipe() {
                let name = slot.spec.name.clone();
                return Err(self.state_err(&name, e));
            }
        }
        Ok(())
    }

    /// Applies replayed records `(offset, key, value)` of a state store's changelog (from its
    /// start, after [`restore_plan`](Self::restore_plan) wiped the store) in one batch whose
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
        let mut last = None;
        for (offset, key, value) in records {
            last = Some(offset);
            let Some(value) = value else { continue };
            let entry = decode_entry(value).map_err(|e| TaskError::CorruptChangelog {
                task: self.id.to_string(),
                reason: format!(
                    "changelog {} record at offset {offset}: {e}",
                    self.expected_identity()
                ),
            })?;
            if entry.first_seen_ms >= cutoff {
                entries.push((key.to_vec(), entry));
            }
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
        self.store.apply(&batch).map_err(|e| self.store_err(e))?;
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
        self.stores.drop_staged();
        let Some(processor) = self.processor.as_mut() else {
            self.state = TaskState::Running;
            return Ok(());
        };
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
