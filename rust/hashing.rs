//! A hasher for pointer and handle keys.
//!
//! Storage base pointers are 512-byte aligned, so their low bits are all zero. hashbrown
//! takes the bucket from the low bits and a tag from the top bits of the hash, so the
//! hash must spread every input bit over both ends: a folded 64x64->128 multiply does.

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct MixHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let full = u128::from(a).wrapping_mul(u128::from(b));
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for MixHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.0 = fold_mul(self.0 ^ x, K);
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn write_i128(&mut self, x: i128) {
        self.write_u64(x as u64);
        self.write_u64((x >> 64) as u64);
    }
}

/// The hash of one u64 key (what `MixHasher` gives for a lone `write_u64`).
#[inline]
pub fn mix(x: u64) -> u64 {
    fold_mul(x, K)
}

pub type MixBuild = BuildHasherDefault<MixHasher>;
pub type MixMap<K, V> = std::collections::HashMap<K, V, MixBuild>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn aligned_pointers_spread_over_low_and_high_bits() {
        let b = MixBuild::default();
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let h = b.hash_one(0x7f00_0000_0000 + i * 512);
            low.insert(h & 0xfff);
            high.insert(h >> 57);
        }
        assert!(low.len() > 2000, "low bits collide: {}", low.len());
        assert_eq!(high.len(), 128);
    }
}
