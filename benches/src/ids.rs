//! Deterministic message IDs shaped like real ones: 32 lowercase hex characters (a UUID
//! without dashes), in random key order, so RocksDB sees the insert and lookup pattern of
//! producer-assigned IDs rather than sorted counters.

/// Length of every generated ID in bytes.
pub const ID_LEN: usize = 32;

/// Seed of the IDs a fixture stores ([`stored_id`]).
const STORED_SEED: u64 = 0x5EED_0000_0001;
/// Seed of IDs that are never stored ([`absent_id`]).
const ABSENT_SEED: u64 = 0x5EED_0000_0002;
/// Seed of IDs inserted during a benchmark ([`fresh_id`]).
const FRESH_SEED: u64 = 0x5EED_0000_0003;

/// SplitMix64: a fast, well-mixed bijection on `u64` (distinct inputs, distinct outputs).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `n`-th ID of the family `seed`. Distinct `(seed, n)` give distinct IDs: the second
/// half is a bijection of `n` within the family, the first half separates families.
pub fn id(seed: u64, n: u64) -> [u8; ID_LEN] {
    let hi = splitmix64(seed ^ splitmix64(n));
    let lo = splitmix64(n ^ seed.rotate_left(17));
    let mut out = [0u8; ID_LEN];
    hex_into(hi, &mut out[..16]);
    hex_into(lo, &mut out[16..]);
    out
}

/// The `n`-th ID a fixture stores.
pub fn stored_id(n: u64) -> [u8; ID_LEN] {
    id(STORED_SEED, n)
}

/// The `n`-th ID that no fixture stores (lookups of it miss).
pub fn absent_id(n: u64) -> [u8; ID_LEN] {
    id(ABSENT_SEED, n)
}

/// The `n`-th ID a benchmark inserts (never among [`stored_id`]s or [`absent_id`]s).
pub fn fresh_id(n: u64) -> [u8; ID_LEN] {
    id(FRESH_SEED, n)
}

fn hex_into(mut v: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn families_do_not_collide() {
        let mut seen = HashSet::new();
        for n in 0..10_000 {
            assert!(seen.insert(stored_id(n)));
            assert!(seen.insert(absent_id(n)));
            assert!(seen.insert(fresh_id(n)));
        }
    }

    #[test]
    fn ids_are_hex() {
        assert!(stored_id(7).iter().all(u8::is_ascii_hexdigit));
    }
}
