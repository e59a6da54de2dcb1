//! Live storages by base pointer: an open-addressing table whose slots are the storages
//! themselves (linear probing, deletion by backward shift).
//!
//! Why not a `HashMap<u64, Storage>`: with a million live storages accessed at random,
//! a lookup there is two dependent cache misses (the control bytes, then a ~200-byte
//! bucket spanning several lines), and the per-access cost was 5x the 1,000-storage
//! case. Here the key sits in the slot with the fields an access touches, one
//! 128-byte, line-aligned slot, so a lookup is one miss in the common case.

use super::Storage;
use crate::hashing::mix;

/// The base of a free slot: never a live storage's (`ptr + nbytes` must fit in 64 bits
/// with `nbytes >= 1`, so a base is at most `u64::MAX - 1`).
pub(super) const EMPTY: u64 = u64::MAX;

pub(super) struct Storages {
    slots: Vec<Storage>,
    mask: usize,
    len: usize,
}

impl Default for Storages {
    fn default() -> Self {
        Self::with_slots(16)
    }
}

impl Storages {
    fn with_slots(n: usize) -> Self {
        debug_assert!(n.is_power_of_two());
        let mut slots: Vec<Storage> = Vec::with_capacity(n);
        huge_pages(
            slots.as_mut_ptr().cast(),
            n * std::mem::size_of::<Storage>(),
        );
        slots.resize_with(n, Storage::empty);
        Storages {
            slots,
            mask: n - 1,
            len: 0,
        }
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The table's size in memory.
    #[inline]
    pub(super) fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Storage>()
    }

    #[inline]
    fn home(&self, base: u64) -> usize {
        (mix(base) as usize) & self.mask
    }

    /// Starts loading the slot where `base` would be found first (both of its lines,
    /// and the next slot's key), so that a lookup a few events later does not wait for
    /// memory.
    #[inline]
    pub(super) fn prefetch(&self, base: u64) {
        let i = self.home(base);
        prefetch_line(self.line(i, 0));
        prefetch_line(self.line(i, 1));
        prefetch_line(self.line(i + 1, 0));
    }

    /// Is the table larger than an L2 cache (1 MiB)? Then its lines are worth
    /// prefetching; a table in cache only loses L1 room to them.
    #[inline]
    pub(super) fn out_of_cache(&self) -> bool {
        self.bytes() > 1 << 20
    }

    /// The address of line `line` (0, 1) of slot `i` (or past the end: for prefetches).
    #[inline]
    fn line(&self, i: usize, line: usize) -> *const i8 {
        self.slots
            .as_ptr()
            .wrapping_add(i)
            .cast::<i8>()
            .wrapping_add(64 * line)
    }

    #[inline]
    fn slot(&self, base: u64) -> Option<usize> {
        let mut i = self.home(base);
        // The second line (shadow state, uses) is needed right after the key matches;
        // in a table out of cache, the next slot's key too, when the probe goes on (a
        // third of lookups in a table half full), so that its miss overlaps this one
        // instead of following it.
        prefetch_line(self.line(i, 1));
        if self.out_of_cache() {
            prefetch_line(self.line(i + 1, 0));
        }
        loop {
            let k = self.slots[i].base;
            if k == base {
                return Some(i);
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot index of the storage based at `base`: valid until the next insert or
    /// removal.
    #[inline]
    pub(super) fn index_of(&self, base: u64) -> Option<usize> {
        if base == EMPTY {
            return None;
        }
        self.slot(base)
    }

    #[inline]
    pub(super) fn at(&self, i: usize) -> &Storage {
        &self.slots[i]
    }

    #[inline]
    pub(super) fn at_mut(&mut self, i: usize) -> &mut Storage {
        &mut self.slots[i]
    }

    #[inline]
    pub(super) fn get(&self, base: u64) -> Option<&Storage> {
        if base == EMPTY {
            return None;
        }
        self.slot(base).map(|i| &self.slots[i])
    }

    #[inline]
    pub(super) fn get_mut(&mut self, base: u64) -> Option<&mut Storage> {
        if base == EMPTY {
            return None;
        }
        self.slot(base).map(|i| &mut self.slots[i])
    }

    /// Adds a storage whose base is not in the table (the caller checked for overlap).
    pub(super) fn insert(&mut self, st: Storage) {
        debug_assert!(st.base != EMPTY && self.slot(st.base).is_none());
        // at most 7/10 full: short probe runs
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        self.place(st);
        self.len += 1;
    }

    fn place(&mut self, st: Storage) {
        let mut i = self.home(st.base);
        while self.slots[i].base != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = st;
    }

    fn grow(&mut self) {
        let old = std::mem::replace(self, Self::with_slots(self.slots.len() * 2));
        self.len = old.len;
        for st in old.slots {
            if st.base != EMPTY {
                self.place(st);
            }
        }
    }

    pub(super) fn remove(&mut self, base: u64) -> Option<Storage> {
        if base == EMPTY {
            return None;
        }
        // the backward shift below reads the keys after the hole and may move them
        if self.out_of_cache() {
            let home = self.home(base);
            prefetch_line(self.line(home + 1, 1));
            prefetch_line(self.line(home + 2, 0));
        }
        let mut hole = self.slot(base)?;
        let st = std::mem::replace(&mut self.slots[hole], Storage::empty());
        self.len -= 1;
        // Backward shift: move later entries of the run into the hole when their home
        // is not between the hole and them, so every lookup still finds its key.
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let k = self.slots[j].base;
            if k == EMPTY {
                break;
            }
            let home = self.home(k);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots.swap(hole, j);
                hole = j;
            }
        }
        Some(st)
    }
}

/// Asks the kernel to back a large, not yet touched region with transparent huge pages
/// (Linux, THP in `madvise` mode): a random access into a big table then misses the
/// TLB far less. Advice only: nothing changes if the kernel says no.
pub(super) fn huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    if len < 2 * HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_HUGEPAGE: i32 = 14;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: advice on whole pages inside our own allocation; no memory changes
            unsafe {
                madvise(start as *mut _, end - start, MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = ptr;
}

#[inline(always)]
fn prefetch_line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
