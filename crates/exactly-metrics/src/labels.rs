//! The fixed sets of label values. Labels whose values come from these enums cannot grow the
//! number of series, whatever the records or errors look like.

macro_rules! label_values {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value as it appears in `/metrics`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $value, )+
                }
            }

            /// The value whose label is `label`, if any.
            pub fn from_label(label: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == label)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// Why a record went to the dead-letter topic (`reason` of `exactly_dead_lettered_total`).
    pub enum DeadLetterReason {
        /// The processor returned `ProcessError::DeadLetter`.
        ProcessorError => "processor_error",
        /// The processor kept returning `ProcessError::Retry` until the retries ran out.
        RetriesExhausted => "retries_exhausted",
        /// The processor panicked and the policy dead-letters.
        Panic => "panic",
        /// The record's key or value did not decode (`ProcessError::Deserialization`).
        Deserialization => "deserialization",
        /// The record had no message ID (policy `dead-letter`).
        MissingId => "missing_id",
        /// The record's message ID was empty (policy `dead-letter`).
        EmptyId => "empty_id",
        /// The record's message ID was longer than the configured maximum (policy `dead-letter`).
        OversizedId => "oversized_id",
        /// The broker refused the record's outputs for good (too large, invalid for the
        /// topic, not authorized) in `errors.production_attempts` transactions in a row.
        Production => "production",
    }
}

label_values! {
    /// What the runtime did about an output the broker refused for good (`action` of
    /// `exactly_production_errors_total`).
    pub enum ProductionAction {
        /// The transaction was aborted and the record is tried again.
        Retried => "retried",
        /// The attempts ran out: the input record goes to the dead-letter topic.
        DeadLettered => "dead_lettered",
        /// The app stops (policy `fail`, or its dead letter was refused too).
        Stopped => "stopped",
        /// The output topic does not exist (deleted while running): the transaction was
        /// aborted, and it is tried again until the topic is back.
        OutputMissing => "output_missing",
    }
}

label_values! {
    /// What a processor's error was (`kind` of `exactly_processor_errors_total`).
    pub enum ProcessorErrorKind {
        /// `ProcessError::Retry`: counted once per attempt.
        Retry => "retry",
        /// `ProcessError::DeadLetter`.
        DeadLetter => "dead_letter",
        /// `ProcessError::Fatal`.
        Fatal => "fatal",
        /// `ProcessError::Deserialization`: the record did not decode.
        Deserialization => "deserialization",
        /// `process` panicked.
        Panic => "panic",
    }
}

label_values! {
    /// Why a transaction was aborted (`reason` of `exactly_transactions_aborted_total`).
    pub enum AbortReason {
        /// A produce, offset or commit request failed (or a fatal processor error).
        Error => "error",
        /// Partitions were revoked while the transaction was open.
        Rebalance => "rebalance",
        /// The producer was fenced by a newer one with the same `transactional.id`.
        Fenced => "fenced",
        /// The app was shutting down.
        Shutdown => "shutdown",
        /// The member lost its partitions (session timed out): its offsets would be rejected.
        AssignmentLost => "assignment_lost",
    }
}

label_values! {
    /// Why a task's store was wiped and restored from the start of its changelog
    /// (`reason` of `exactly_store_wipes_total`).
    pub enum StoreWipeReason {
        /// The store could not be opened or read (corrupt files, unreadable checkpoint).
        Corrupt => "corrupt",
        /// The store belongs to another changelog topic or partition (another app or topic).
        WrongIdentity => "wrong_identity",
        /// The store's checkpoint lies beyond the changelog's end, so it cannot be trusted.
        CheckpointBeyondEnd => "checkpoint_beyond_end",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_reasons_are_the_documented_set() {
        let values: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            values,
            [
                "processor_error",
                "retries_exhausted",
                "panic",
                "deserialization",
                "missing_id",
                "empty_id",
                "oversized_id",
                "production"
            ]
        );
    }

    #[test]
    fn display_is_the_label_value() {
        assert_eq!(AbortReason::Rebalance.to_string(), "rebalance");
        assert_eq!(ProcessorErrorKind::DeadLetter.to_string(), "dead_letter");
        assert_eq!(
            StoreWipeReason::CheckpointBeyondEnd.to_string(),
            "checkpoint_beyond_end"
        );
    }
}
