//! Live storages by address, for overlap checks (alloc, adopt) and interior pointers:
//! the answers of an address-ordered map of `base -> end`, at one memory miss where the
//! ordered map took several.
//!
//! Why not a `BTreeMap<u64, u64>`: with a million live storages a lookup walks about
//! six levels of nodes, the lower ones not in cache, so every free and every
//! allocation at a fresh address paid several dependent misses (about 6 per free in
//! callgrind's cache simulation of `bench_engine.py`'s trace).
//!
//! Storages are split by size into tiers. A storage of at most `2^shift` bytes (a
//! tier's chunk) touches at most two of that tier's chunks; the tier's grid, a hash
//! table keyed by chunk, lists under each chunk the storages touching it. Storages
//! being disjoint, the storage containing `x` is listed under `x`'s chunk, and a live
//! storage overlapping a new range shares a chunk with it: a small query probes one or
//! two chunks per tier that has storages, one miss each (a slot is half a cache line).
//! Tiers are 16x apart (64 KiB to 256 MiB chunks), so a chunk of any tier but the first
//! is touched by at most 17 of its storages. Storages longer than the last tier's
//! chunk are few and stay in an ordered map.
//!
//! A range longer than a tier's chunk would have to probe many chunks of that tier;
//! each grid also keeps, per region of 64 chunks, a bitmap of its chunks that hold a
//! registration, so a long range reads the bitmaps of the regions it covers and probes
//! only chunks that hold something (in an allocation that overlaps nothing, at most
//! the one or two at its ends).

use super::table::huge_pages;
use crate::hashing::{mix, MixMap};
use std::collections::BTreeMap;

/// The key of a free slot: no chunk (chunk numbers are at most `u64::MAX >> 16`).
const FREE: u64 = u64::MAX;
/// Registrations kept in the slot itself; more spill into `Grid::spill`.
const INLINE: usize = 2;
/// Chunks per region: `1 << REGION_BITS`.
const REGION_BITS: u32 = 6;
// a region's bitmap is one u64
const _: () = assert!(1 << REGION_BITS == u64::BITS);

/// The bit of `chunk` in its region's bitmap.
#[inline]
fn region_bit(chunk: u64) -> u64 {
    1 << (chunk & ((1 << REGION_BITS) - 1))
}

/// A range covering at most this many chunks probes them directly.
const DIRECT: u64 = 8;

/// A storage touching a chunk: its base as an offset from the chunk's start (it starts
/// in that chunk or the one before), and its length (at most the chunk's).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Reg {
    off: i32,
    len: u32,
}

/// One chunk's registrations, in half a cache line.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Slot {
    chunk: u64,
    /// Registrations in all: the first `min(n, INLINE)` inline, the rest spilled.
    n: u32,
    inline: [Reg; INLINE],
}

const EMPTY_SLOT: Slot = Slot {
    chunk: FREE,
    n: 0,
    inline: [Reg { off: 0, len: 0 }; INLINE],
};

/// The storages of one tier (each at most `1 << shift` bytes) by chunk.
struct Grid {
    shift: u32,
    slots: Vec<Slot>,
    mask: usize,
    /// Occupied slots: chunks with a registration, and vacant ones.
    used: usize,
    /// Slots whose chunk lost its last registration: kept (a free does not shift the
    /// slots after it, which would be more misses; an allocation in the same chunk,
    /// the common reuse, finds its slot), until they are a third of the occupied ones.
    vacant: usize,
    spill: MixMap<u64, Vec<Reg>>,
    /// Per region (`chunk >> REGION_BITS`), bit `chunk & 63`: the chunk has a
    /// registration. Nonzero bitmaps only.
    regions: MixMap<u64, u64>,
}

impl Grid {
    fn new(shift: u32) -> Self {
        Grid {
            shift,
            slots: vec![EMPTY_SLOT; 16],
            mask: 15,
            used: 0,
            vacant: 0,
            spill: MixMap::default(),
            regions: MixMap::default(),
        }
    }

    #[inline]
    fn chunks(&self, ptr: u64, end: u64) -> (u64, u64) {
        (ptr >> self.shift, (end - 1) >> self.shift)
    }

    /// The registration of `[base, end)` under `chunk`, one of the chunks it touches.
    #[inline]
    fn reg(&self, chunk: u64, base: u64, end: u64) -> Reg {
        let start = chunk << self.shift;
        Reg {
            off: base.wrapping_sub(start) as i64 as i32,
            len: (end - base) as u32,
        }
    }

    /// `(base, end)` of a registration under `chunk`.
    #[inline]
    fn range(&self, chunk: u64, r: Reg) -> (u64, u64) {
        let base = (chunk << self.shift).wrapping_add(i64::from(r.off) as u64);
        (base, base + u64::from(r.len))
    }

    #[inline]
    fn home(&self, chunk: u64) -> usize {
        (mix(chunk) as usize) & self.mask
    }

    #[inline]
    fn find(&self, chunk: u64) -> Option<usize> {
        let mut i = self.home(chunk);
        loop {
            let k = self.slots[i].chunk;
            if k == chunk {
                return Some(i);
            }
            if k == FREE {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Calls `f` with each registration of slot `i`.
    #[inline]
    fn each(&self, i: usize, mut f: impl FnMut(u64, u64)) {
        let s = &self.slots[i];
        let n = s.n as usize;
        for &r in &s.inline[..n.min(INLINE)] {
            let (b, e) = self.range(s.chunk, r);
            f(b, e);
        }
        if n > INLINE {
            for &r in &self.spill[&s.chunk] {
                let (b, e) = self.range(s.chunk, r);
                f(b, e);
            }
        }
    }

    fn insert(&mut self, base: u64, end: u64) {
        let (c0, c1) = self.chunks(base, end);
        for c in c0..=c1 {
            self.add(c, base, end);
        }
    }

    fn remove(&mut self, base: u64, end: u64) {
        let (c0, c1) = self.chunks(base, end);
        for c in c0..=c1 {
            let r = self.reg(c, base, end);
            self.del(c, r);
        }
    }

    fn add(&mut self, chunk: u64, base: u64, end: u64) {
        let reg = self.reg(chunk, base, end);
        let i = match self.find(chunk) {
            Some(i) => {
                if self.slots[i].n == 0 {
                    self.vacant -= 1;
                }
                i
            }
            None => {
                if (self.used + 1) * 10 > self.slots.len() * 7 {
                    self.grow();
                }
                self.used += 1;
                let mut i = self.home(chunk);
                while self.slots[i].chunk != FREE {
                    i = (i + 1) & self.mask;
                }
                self.slots[i] = Slot {
                    chunk,
                    ..EMPTY_SLOT
                };
                i
            }
        };
        let s = &mut self.slots[i];
        let n = s.n as usize;
        if n < INLINE {
            s.inline[n] = reg;
        } else {
            self.spill.entry(chunk).or_default().push(reg);
        }
        s.n += 1;
        if s.n == 1 {
            *self.regions.entry(chunk >> REGION_BITS).or_default() |= region_bit(chunk);
        }
    }

    fn del(&mut self, chunk: u64, reg: Reg) {
        let i = self.find(chunk).expect("registered chunk");
        let s = &mut self.slots[i];
        let n = s.n as usize;
        if let Some(k) = s.inline[..n.min(INLINE)].iter().position(|&r| r == reg) {
            // refill from the spill (its last), or from the last inline registration
            s.inline[k] = if n > INLINE {
                let v = self.spill.get_mut(&chunk).expect("spilled registrations");
                let r = v.pop().expect("spilled registration");
                if v.is_empty() {
                    self.spill.remove(&chunk);
                }
                r
            } else {
                s.inline[n - 1]
            };
        } else {
            let v = self.spill.get_mut(&chunk).expect("spilled registrations");
            let k = v.iter().position(|&r| r == reg).expect("registration");
            v.swap_remove(k);
            if v.is_empty() {
                self.spill.remove(&chunk);
            }
        }
        s.n -= 1;
        if s.n == 0 {
            let r = chunk >> REGION_BITS;
            let bits = self.regions.get_mut(&r).expect("region bitmap");
            *bits &= !region_bit(chunk);
            if *bits == 0 {
                self.regions.remove(&r);
            }
            self.vacant += 1;
            if self.vacant >= 1024 && self.vacant * 3 > self.used {
                self.rebuild(self.slots.len());
            }
        }
    }

    fn grow(&mut self) {
        let live = self.used - self.vacant;
        // vacant slots are dropped: grow only if the live ones need it
        let n = if (live + 1) * 2 > self.slots.len() {
            self.slots.len() * 2
        } else {
            self.slots.len()
        };
        self.rebuild(n);
    }

    /// Rehashes the live slots into `n` slots, dropping the vacant ones.
    fn rebuild(&mut self, n: usize) {
        let mut slots: Vec<Slot> = Vec::with_capacity(n);
        huge_pages(slots.as_mut_ptr().cast(), n * std::mem::size_of::<Slot>());
        slots.resize(n, EMPTY_SLOT);
        let old = std::mem::replace(&mut self.slots, slots);
        self.mask = n - 1;
        self.used = 0;
        self.vacant = 0;
        for s in old {
            if s.chunk != FREE && s.n > 0 {
                let mut i = self.home(s.chunk);
                while self.slots[i].chunk != FREE {
                    i = (i + 1) & self.mask;
                }
                self.slots[i] = s;
                self.used += 1;
            }
        }
    }

    /// The registered storage containing `x`, if any.
    #[inline]
    fn containing(&self, x: u64) -> Option<(u64, u64)> {
        if self.used == self.vacant {
            return None;
        }
        let i = self.find(x >> self.shift)?;
        let mut hit = None;
        self.each(i, |b, e| {
            if b <= x && x < e {
                hit = Some((b, e));
            }
        });
        hit
    }

    /// The registered storage with the highest base among those overlapping
    /// `[ptr, end)`, if any.
    fn overlapping(&self, ptr: u64, end: u64) -> Option<(u64, u64)> {
        if self.used == self.vacant {
            return None;
        }
        let (c0, c1) = self.chunks(ptr, end);
        let mut best: Option<(u64, u64)> = None;
        let mut probe = |c: u64| {
            if let Some(i) = self.find(c) {
                self.each(i, |b, e| {
                    if b < end && ptr < e && best.is_none_or(|(bb, _)| b > bb) {
                        best = Some((b, e));
                    }
                });
            }
        };
        if c1 - c0 < DIRECT {
            for c in c0..=c1 {
                probe(c);
            }
            return best;
        }
        // a long range: only the chunks in it that hold registrations
        let (r0, r1) = (c0 >> REGION_BITS, c1 >> REGION_BITS);
        let held: Vec<(u64, u64)> = if r1 - r0 >= self.regions.len() as u64 {
            self.regions
                .iter()
                .filter(|(r, _)| (r0..=r1).contains(*r))
                .map(|(&r, &bits)| (r, bits))
                .collect()
        } else {
            (r0..=r1)
                .filter_map(|r| self.regions.get(&r).map(|&bits| (r, bits)))
                .collect()
        };
        for (r, bits) in held {
            let start = r << REGION_BITS;
            // the region's chunks inside [c0, c1]
            let lo = c0.saturating_sub(start).min(63) as u32;
            let hi = (c1 - start).min(63) as u32;
            let mut hit = bits & (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            while hit != 0 {
                probe(start + u64::from(hit.trailing_zeros()));
                hit &= hit - 1;
            }
        }
        best
    }
}

/// Tier shifts: a storage of at most `1 << shift` bytes goes to the first tier that
/// takes it (64 KiB, 1 MiB, 16 MiB, 256 MiB chunks); longer ones go to
/// `AddrIndex::long`. A registration's offset and length fit in 32 bits (shift <= 30).
const TIERS: [u32; 4] = [16, 20, 24, 28];

/// Live storages `[base, end)` (disjoint), by address.
pub(super) struct AddrIndex {
    grids: [Grid; TIERS.len()],
    /// Storages longer than the last tier's chunk: base -> end.
    long: BTreeMap<u64, u64>,
}

impl Default for AddrIndex {
    fn default() -> Self {
        AddrIndex {
            grids: TIERS.map(Grid::new),
            long: BTreeMap::new(),
        }
    }
}

impl AddrIndex {
    #[inline]
    fn tier(&mut self, base: u64, end: u64) -> Option<&mut Grid> {
        let len = end - base;
        self.grids.iter_mut().find(|g| len <= 1 << g.shift)
    }

    /// Adds `[base, end)` (`base < end`), which overlaps no live storage.
    pub(super) fn insert(&mut self, base: u64, end: u64) {
        debug_assert!(base < end && self.overlapping(base, end).is_none());
        match self.tier(base, end) {
            Some(g) => g.insert(base, end),
            None => {
                self.long.insert(base, end);
            }
        }
    }

    /// Removes the live storage `[base, end)`.
    pub(super) fn remove(&mut self, base: u64, end: u64) {
        match self.tier(base, end) {
            Some(g) => g.remove(base, end),
            None => {
                let e = self.long.remove(&base);
                debug_assert_eq!(e, Some(end));
            }
        }
    }

    /// `(base, end)` of the live storage containing `x`, if any.
    #[inline]
    pub(super) fn containing(&self, x: u64) -> Option<(u64, u64)> {
        for g in &self.grids {
            if let Some(hit) = g.containing(x) {
                return Some(hit);
            }
        }
        if self.long.is_empty() {
            return None;
        }
        let (&b, &e) = self.long.range(..=x).next_back()?;
        (x < e).then_some((b, e))
    }

    /// `(base, end)` of the live storage with the highest base among those overlapping
    /// `[ptr, end)` (`ptr < end`), if any: the last storage starting before `end`, when
    /// it ends after `ptr`.
    #[inline]
    pub(super) fn overlapping(&self, ptr: u64, end: u64) -> Option<(u64, u64)> {
        let mut best = None;
        let mut take = |hit: Option<(u64, u64)>| {
            if let Some((b, e)) = hit {
                if best.is_none_or(|(bb, _)| b > bb) {
                    best = Some((b, e));
                }
            }
        };
        for g in &self.grids {
            take(g.overlapping(ptr, end));
        }
        if !self.long.is_empty() {
            take(
                self.long
                    .range(..end)
                    .next_back()
                    .filter(|&(_, &e)| e > ptr)
                    .map(|(&b, &e)| (b, e)),
            );
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: an ordered map, queried as the engine did before.
    #[derive(Default)]
    struct Model(BTreeMap<u64, u64>);

    impl Model {
        fn containing(&self, x: u64) -> Option<(u64, u64)> {
            let (&b, &e) = self.0.range(..=x).next_back()?;
            (x < e).then_some((b, e))
        }
        fn overlapping(&self, ptr: u64, end: u64) -> Option<(u64, u64)> {
            let (&b, &e) = self.0.range(..end).next_back()?;
            (e > ptr).then_some((b, e))
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A size on every scale: a few bytes, around each tier's chunk, beyond the last.
    fn size(r: &mut Rng) -> u64 {
        match r.below(10) {
            0 => 1 + r.below(64),
            1 => 1 + r.below(1 << 16),
            2 => {
                let t = TIERS[r.below(TIERS.len() as u64) as usize];
                (1 << t) - 2 + r.below(5)
            }
            3 => 1 + r.below(1 << 20),
            4 => 1 + r.below(1 << 24),
            5 => 1 + r.below(1 << 28),
            6 => 512 * (1 + r.below(256)),
            7 => (1 << 28) + r.below(1 << 31),
            _ => 1 + r.below(1 << 12),
        }
    }

    fn check_queries(ix: &AddrIndex, m: &Model, r: &mut Rng, space: u64, origin: u64) {
        for _ in 0..20 {
            let x = origin + r.below(space);
            assert_eq!(ix.containing(x), m.containing(x), "containing {x:#x}");
            let n = size(r).min(u64::MAX - x);
            assert_eq!(
                ix.overlapping(x, x + n),
                m.overlapping(x, x + n),
                "overlapping [{x:#x}, +{n:#x})"
            );
        }
        // the ends of live storages, exactly
        if let Some((&b, &e)) = m.0.iter().nth(r.below(m.0.len() as u64 + 1) as usize) {
            for x in [b, e - 1, e, b.saturating_sub(1)] {
                assert_eq!(ix.containing(x), m.containing(x), "containing {x:#x}");
            }
            assert_eq!(ix.overlapping(e, e + 1), m.overlapping(e, e + 1));
            assert_eq!(ix.overlapping(e - 1, e), Some((b, e)));
        }
    }

    /// Random inserts (only where the model says there is no overlap, as the engine
    /// does), removals and queries, against the ordered map, in a dense address space
    /// (many overlaps, chunks shared by many storages) and a sparse one.
    #[test]
    fn addr_index_answers_as_an_ordered_map() {
        for (seed, space, origin) in [
            (0x2545_f491_4f6c_dd1d_u64, 1u64 << 24, 0x7f00_0000_0000u64),
            (0x9e37_79b9_7f4a_7c15, 1 << 34, 0x7f00_0000_0000),
            (0x1234_5678_9abc_def1, 1 << 40, 0),
            (0x0bad_cafe_dead_beef, 1 << 30, u64::MAX - (1 << 30)),
        ] {
            let mut r = Rng(seed);
            let mut ix = AddrIndex::default();
            let mut m = Model::default();
            for step in 0..40_000 {
                if r.below(3) != 0 || m.0.is_empty() {
                    let p = origin + r.below(space);
                    let n = size(&mut r).min(u64::MAX - p).max(1);
                    if p == u64::MAX {
                        continue;
                    }
                    let hit = ix.overlapping(p, p + n);
                    assert_eq!(hit, m.overlapping(p, p + n), "step {step}");
                    if hit.is_none() {
                        ix.insert(p, p + n);
                        m.0.insert(p, p + n);
                    }
                } else {
                    let k = r.below(m.0.len() as u64) as usize;
                    let (&b, &e) = m.0.iter().nth(k).expect("live");
                    ix.remove(b, e);
                    m.0.remove(&b);
                }
                if step % 97 == 0 {
                    check_queries(&ix, &m, &mut r, space, origin);
                }
            }
            // empty it: every registration and region count goes
            let live: Vec<(u64, u64)> = m.0.iter().map(|(&b, &e)| (b, e)).collect();
            for (b, e) in live {
                ix.remove(b, e);
                m.0.remove(&b);
                if r.below(50) == 0 {
                    check_queries(&ix, &m, &mut r, space, origin);
                }
            }
            for g in &ix.grids {
                assert_eq!(g.used, g.vacant);
                assert!(g.spill.is_empty() && g.regions.is_empty());
            }
            assert!(ix.long.is_empty());
        }
    }

    /// Two slots to a cache line, never one across two.
    #[test]
    fn addr_slot_is_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::align_of::<Slot>(), 32);
    }

    /// Many small storages in one chunk (spilled registrations), removed in every order.
    #[test]
    fn addr_index_spills_a_crowded_chunk() {
        let base = 0x7f00_0001_0000u64;
        let mut r = Rng(7);
        for _ in 0..50 {
            let mut ix = AddrIndex::default();
            let mut live: Vec<u64> = (0..64).map(|i| base + i * 1024).collect();
            for &b in &live {
                ix.insert(b, b + 1000);
            }
            // one spanning two chunks, registered in both
            ix.insert(base - 8, base);
            assert_eq!(ix.containing(base - 1), Some((base - 8, base)));
            while !live.is_empty() {
                let k = r.below(live.len() as u64) as usize;
                let b = live.swap_remove(k);
                assert_eq!(ix.containing(b + 999), Some((b, b + 1000)));
                ix.remove(b, b + 1000);
                assert_eq!(ix.containing(b + 999), None);
                for &o in &live {
                    assert_eq!(ix.containing(o + 5), Some((o, o + 1000)));
                }
            }
            ix.remove(base - 8, base);
            assert_eq!(ix.grids[0].used, ix.grids[0].vacant);
        }
    }

    /// Chunks emptied by frees keep their slots until they are a third of the table's;
    /// then they go, and every query still answers as the model.
    #[test]
    fn addr_index_drops_vacant_chunks() {
        let mut ix = AddrIndex::default();
        let mut m = Model::default();
        let chunk = |i: u64| 0x7f00_0000_0000 + (i << 16) + 512;
        let mut r = Rng(11);
        for round in 0..6u64 {
            for i in 0..6000 {
                let b = chunk(round * 6000 + i);
                ix.insert(b, b + 4096);
                m.0.insert(b, b + 4096);
            }
            let live: Vec<(u64, u64)> = m.0.iter().map(|(&b, &e)| (b, e)).collect();
            for &(b, e) in live.iter().filter(|_| r.below(4) != 0) {
                ix.remove(b, e);
                m.0.remove(&b);
            }
            let g = &ix.grids[0];
            assert!(g.vacant * 3 <= g.used + 3 && g.used - g.vacant == m.0.len());
            for _ in 0..2000 {
                let x = chunk(r.below(36_000)) + r.below(8192) - 1024;
                assert_eq!(ix.containing(x), m.containing(x));
                assert_eq!(ix.overlapping(x, x + 100), m.overlapping(x, x + 100));
            }
        }
    }

    /// A long range over many small storages: the region counts find them.
    #[test]
    fn addr_index_long_range_over_small_storages() {
        let mut ix = AddrIndex::default();
        let mut m = Model::default();
        let base = 0x7f00_0000_0000u64;
        for i in 0..2000u64 {
            let b = base + i * (3 << 20) + 4096;
            ix.insert(b, b + 512);
            m.0.insert(b, b + 512);
        }
        for (p, n) in [
            (base, 1u64 << 40),
            (base + 4096 + 512, 3 << 20),
            (base + 4096 + 512, (3 << 20) - 512 - 4096 + 4096),
            (base + 4097 + 512, (3 << 20) - 512),
            (base - (1 << 30), 1 << 30),
            (base + 5 * (3 << 20), 1 << 33),
        ] {
            assert_eq!(
                ix.overlapping(p, p + n),
                m.overlapping(p, p + n),
                "{p:#x} +{n:#x}"
            );
        }
    }
}
