//! The duplicate/loss oracle: compares the message IDs that went in with the outputs that
//! came out, per ID.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;

/// Result of an exactly-once check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExactlyOnceReport {
    /// Input records seen (duplicates included).
    pub inputs: u64,
    /// Distinct input IDs.
    pub unique_ids: u64,
    /// Output records seen.
    pub outputs: u64,
    /// IDs with more outputs than expected, and how many extra.
    pub duplicated: BTreeMap<String, u64>,
    /// IDs with fewer outputs than expected, and how many are missing.
    pub missing: BTreeMap<String, u64>,
    /// Outputs whose ID was never an input.
    pub unexpected: BTreeMap<String, u64>,
}

impl ExactlyOnceReport {
    /// Extra outputs in total.
    pub fn duplicate_outputs(&self) -> u64 {
        self.duplicated.values().sum()
    }
    /// Missing outputs in total.
    pub fn missing_outputs(&self) -> u64 {
        self.missing.values().sum()
    }
    /// `true` when every ID produced exactly its expected outputs and nothing else.
    pub fn is_exact(&self) -> bool {
        self.duplicated.is_empty() && self.missing.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for ExactlyOnceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "inputs:               {}", self.inputs)?;
        writeln!(f, "unique IDs:           {}", self.unique_ids)?;
        writeln!(
            f,
            "duplicates dropped:   {}",
            self.inputs.saturating_sub(self.unique_ids)
        )?;
        writeln!(f, "outputs:              {}", self.outputs)?;
        writeln!(f, "duplicates in output: {}", self.duplicate_outputs())?;
        writeln!(f, "missing IDs:          {}", self.missing.len())?;
        write!(
            f,
            "unexpected outputs:   {}",
            self.unexpected.values().sum::<u64>()
        )?;
        for (id, n) in self.duplicated.iter().take(5) {
            write!(f, "\n  duplicated {id} x{n}")?;
        }
        for (id, n) in self.missing.iter().take(5) {
            write!(f, "\n  missing {id} ({n} outputs)")?;
        }
        Ok(())
    }
}

/// Checks outputs against inputs: every input ID must produce `expected(id)` outputs.
pub fn check_exactly_once<K: Eq + Hash + Clone + fmt::Display>(
    inputs: impl IntoIterator<Item = K>,
    outputs: impl IntoIterator<Item = K>,
    expected: impl Fn(&K) -> u64,
) -> ExactlyOnceReport {
    let mut report = ExactlyOnceReport::default();
    let mut want: HashMap<K, u64> = HashMap::new();
    for id in inputs {
        report.inputs += 1;
        if let std::collections::hash_map::Entry::Vacant(slot) = want.entry(id) {
            let n = expected(slot.key());
            slot.insert(n);
        }
    }
    report.unique_ids = want.len() as u64;
    let mut got: HashMap<K, u64> = HashMap::new();
    for id in outputs {
        report.outputs += 1;
        *got.entry(id).or_default() += 1;
    }
    for (id, n) in &want {
        let g = got.get(id).copied().unwrap_or(0);
        if g > *n {
            report.duplicated.insert(id.to_string(), g - n);
        } else if g < *n {
            report.missing.insert(id.to_string(), n - g);
        }
    }
    for (id, g) in got {
        if !want.contains_key(&id) {
            report.unexpected.insert(id.to_string(), g);
        }
    }
    report
}
