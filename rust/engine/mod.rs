//! The happens-before engine: its state (this file), and one file per concern:
//! `order.rs` (streams, events, the host clock), `memory.rs` (storages, frees and their
//! verdicts, freed ranges), `host.rs` (non-blocking copies and host accesses). The bulk
//! path is `crate::op`, the sentences of hazards `crate::describe`. See
//! docs/ENGINE-API.md ("Exact semantics") for the rules, one function per row.
//!
//! Every public method validates its input before it changes anything, so a call that
//! returns an error leaves the engine exactly as it was.

mod addr;
mod host;
mod memory;
pub(crate) mod order;
mod table;

use crate::clock::{Clock, StreamIx};
use crate::error::EngineError;
use crate::error::Result;
use crate::hashing::MixMap;
use crate::hazard::{DedupKey, Hazard, Kind};
use crate::shadow::{Access, Conflicts, Shadow, Whole};
use crate::sites::{SiteId, Sites};
use smallvec::SmallVec;
use std::collections::{BTreeMap, HashSet};

/// A caller's handle for a stream or an event: any int in the i64 or u64 range.
pub type Handle = i128;

struct Stream {
    handle: Handle,
    pos: u64,
    clock: Clock,
    name: Option<String>,
    is_virtual: bool,
    /// Positions proven still in flight by the latest query that returned false.
    incomplete: Option<(u64, u64)>,
    /// Frees of storages allocated on this stream that await their verdict (judged at
    /// the next allocation on this stream or at `flush`), in free order.
    pending: Vec<Pending>,
}

#[derive(Default)]
struct Event {
    clock: Option<Clock>,
    stream: Option<StreamIx>,
}

#[derive(Clone, Copy, Debug)]
struct Use {
    stream: StreamIx,
    site: SiteId,
    pos: u64,
}

/// Uses of a storage: one inline (most storages are used by at most one other stream).
type Uses = SmallVec<[Use; 1]>;
/// Streams given to record_stream, with the site of that call.
type Recorded = SmallVec<[(StreamIx, SiteId); 2]>;

/// A live storage: one 128-byte slot of `Storages` holding what an access touches
/// (the rest, rarely there, behind `cold`). `tests::storage_slot_is_two_cache_lines`
/// checks the size.
#[repr(align(64))]
struct Storage {
    /// The key (`table::EMPTY` in a free slot).
    base: u64,
    nbytes: u64,
    /// The allocation stream's position at the allocation (0: nothing to wait for, or an
    /// adopted storage whose allocation was not seen).
    alloc_pos: u64,
    alloc_stream: StreamIx,
    alloc_site: SiteId,
    /// Bit i: the stream of `uses[i]` is known ordered after the allocation position
    /// (checked once; clocks only grow, so it stays true). Uses past the 32nd are
    /// checked every time, with the same result.
    after_alloc: u32,
    /// Latest use per stream other than the allocation stream, in first-use order.
    uses: Uses,
    /// The shadow state while the storage was only ever accessed whole.
    shadow: Whole,
    cold: Option<Box<Cold>>,
}

/// What few storages have: record_stream calls, a shadow split by partial accesses.
#[derive(Default)]
struct Cold {
    recorded: Recorded,
    /// Set by the first partial access; `Storage::shadow` is unused from then on.
    split: Option<Shadow>,
}

impl Storage {
    fn empty() -> Self {
        Storage {
            base: table::EMPTY,
            nbytes: 0,
            alloc_pos: 0,
            alloc_stream: StreamIx(0),
            alloc_site: 0,
            after_alloc: 0,
            uses: Uses::new(),
            shadow: Whole::default(),
            cold: None,
        }
    }

    fn recorded(&self) -> &[(StreamIx, SiteId)] {
        self.cold.as_ref().map_or(&[], |c| &c.recorded)
    }

    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }
}

/// A free whose verdict waits for the next allocation on its allocation stream.
struct Pending {
    seq: u64,
    base: u64,
    nbytes: u64,
    alloc_site: SiteId,
    free_site: SiteId,
    recorded: Recorded,
    uses: Uses,
}

/// The allocation that triggered a verdict: (ptr, nbytes, stream, site).
type Trigger = (u64, u64, StreamIx, SiteId);

/// A freed range whose uncovered uses may still be in flight (for `reuse-race`).
struct Tomb {
    end: u64,
    nbytes: u64,
    alloc_stream: StreamIx,
    alloc_site: SiteId,
    free_site: SiteId,
    uses: SmallVec<[Use; 2]>,
}

#[derive(Clone, Copy)]
struct HostCopy {
    start: u64,
    end: u64,
    stream: StreamIx,
    pos: u64,
    site: SiteId,
    to_host: bool,
}

/// Counters for `Engine::stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub live_storages: usize,
    pub pending_frees: usize,
    pub freed_tracked: usize,
    pub freed_dropped: u64,
    pub pending_host_copies: usize,
    pub streams: usize,
    pub events: usize,
    pub sites: usize,
    pub hazards: usize,
    pub events_processed: u64,
}

impl Stats {
    /// Every counter with its name (the one list `Engine.stats()` is built from).
    pub fn fields(&self) -> [(&'static str, u64); 10] {
        [
            ("live_storages", self.live_storages as u64),
            ("pending_frees", self.pending_frees as u64),
            ("freed_tracked", self.freed_tracked as u64),
            ("freed_dropped", self.freed_dropped),
            ("pending_host_copies", self.pending_host_copies as u64),
            ("streams", self.streams as u64),
            ("events", self.events as u64),
            ("sites", self.sites as u64),
            ("hazards", self.hazards as u64),
            ("events_processed", self.events_processed),
        ]
    }
}

/// A validated access: the storage's slot in the table (valid until a storage is added
/// or removed), base and length, and the access's end.
pub(crate) type Checked = (usize, u64, u64, u64);

/// Most freed ranges kept for reuse checks; past this the lowest addresses are dropped
/// (their `unsynced-free` was already reported; only a later `reuse-race` is lost).
const MAX_TOMBS: usize = 1 << 18;

/// Slots of `Engine::recent_streams` (a power of two; 16 thrashed with 64 streams:
/// a third of the extra instructions per event at 64 streams against 2).
const RECENT_STREAMS: usize = 64;

pub struct Engine {
    streams: Vec<Stream>,
    stream_ix: MixMap<Handle, StreamIx>,
    /// Streams looked up lately, direct-mapped by handle (`order::recent_slot`): a
    /// training loop's few streams each keep a slot, so most lookups skip the map.
    recent_streams: [(Handle, StreamIx); RECENT_STREAMS],
    events: MixMap<Handle, Event>,
    host: Clock,
    /// Live storages by base pointer (the hot path: one probe reaches the state).
    storages: table::Storages,
    /// `[base, end)` of every live storage, for interior pointers and overlap checks.
    by_addr: addr::AddrIndex,
    tombs: BTreeMap<u64, Tomb>,
    tomb_prune_at: usize,
    tombs_dropped: u64,
    copies: Vec<HostCopy>,
    copies_prune_at: usize,
    sites: Sites,
    hazards: Vec<Hazard>,
    hazard_ix: MixMap<DedupKey, usize>,
    /// `redundant-record-stream` candidates, emitted by `flush` for sites never needed.
    advice: Vec<Hazard>,
    advice_ix: MixMap<DedupKey, usize>,
    /// record_stream call sites that some judged free needed.
    needed_sites: HashSet<SiteId>,
    pending_frees: usize,
    pending_seq: u64,
    errors: usize,
    processed: u64,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Engine {
            streams: Vec::new(),
            stream_ix: MixMap::default(),
            recent_streams: [(Handle::MIN, StreamIx(0)); RECENT_STREAMS],
            events: MixMap::default(),
            host: Clock::default(),
            storages: table::Storages::default(),
            by_addr: addr::AddrIndex::default(),
            tombs: BTreeMap::new(),
            tomb_prune_at: 1024,
            tombs_dropped: 0,
            copies: Vec::new(),
            copies_prune_at: 64,
            sites: Sites::default(),
            hazards: Vec::new(),
            hazard_ix: MixMap::default(),
            advice: Vec::new(),
            advice_ix: MixMap::default(),
            needed_sites: HashSet::new(),
            pending_frees: 0,
            pending_seq: 0,
            errors: 0,
            processed: 0,
        }
    }

    // ----- sites ---------------------------------------------------------------------

    pub fn intern(&mut self, site: &str) -> SiteId {
        self.sites.intern(site)
    }

    pub fn sites_len(&self) -> usize {
        self.sites.len()
    }

    pub fn truncate_sites(&mut self, len: usize) {
        self.sites.truncate(len);
    }

    pub fn site(&self, id: SiteId) -> Option<&str> {
        self.sites.get(id)
    }

    pub fn check_site(&self, id: SiteId) -> Result<SiteId> {
        if self.sites.is_valid(id) {
            Ok(id)
        } else {
            Err(EngineError::BadSite { id })
        }
    }

    // ----- hazards -------------------------------------------------------------------

    /// A `redundant-record-stream` candidate: held until `flush`, which emits it only if
    /// its call site was never needed (advice is about a line of code).
    pub(super) fn advise(&mut self, h: Hazard) {
        let key = h.dedup_key();
        match self.advice_ix.get(&key) {
            Some(&i) => self.advice[i].count += 1,
            None => {
                self.advice_ix.insert(key, self.advice.len());
                self.advice.push(h);
            }
        }
    }

    pub(super) fn report(&mut self, h: Hazard) {
        let key = h.dedup_key();
        if let Some(&i) = self.hazard_ix.get(&key) {
            let prev = &mut self.hazards[i];
            prev.count += h.count;
            if h.live == Some(true) {
                prev.live = Some(true);
            }
            return;
        }
        if h.kind.is_error() {
            self.errors += 1;
        }
        self.hazard_ix.insert(key, self.hazards.len());
        self.hazards.push(h);
    }

    pub fn hazards(&self) -> &[Hazard] {
        &self.hazards
    }

    pub fn error_count(&self) -> usize {
        self.errors
    }

    pub fn stats(&self) -> Stats {
        Stats {
            live_storages: self.storages.len(),
            pending_frees: self.pending_frees,
            freed_tracked: self.tombs.len(),
            freed_dropped: self.tombs_dropped,
            pending_host_copies: self.copies.len(),
            streams: self.streams.len(),
            events: self.events.len(),
            sites: self.sites.len(),
            hazards: self.hazards.len(),
            events_processed: self.processed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the hot path relies on: a slot is two cache lines, line-aligned.
    #[test]
    fn storage_slot_is_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Storage>(), 128);
        assert_eq!(std::mem::align_of::<Storage>(), 64);
        assert_eq!(std::mem::size_of::<Use>(), 16);
    }

    #[test]
    fn storages_table_finds_every_key_through_growth_and_removal() {
        let mut t = table::Storages::default();
        let key = |i: u64| 0x7f00_0000_0000 + i * 512;
        let mut live = std::collections::BTreeSet::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = x % 5_000;
            if live.contains(&i) && step % 3 != 0 {
                let st = t.remove(key(i)).expect("live key");
                assert_eq!((st.base, st.nbytes), (key(i), i + 1));
                live.remove(&i);
            } else if !live.contains(&i) {
                let mut st = Storage::empty();
                st.base = key(i);
                st.nbytes = i + 1;
                t.insert(st);
                live.insert(i);
            }
            if step % 10_000 == 0 {
                for i in 0..5_000 {
                    let got = t.get(key(i)).map(|s| s.nbytes);
                    assert_eq!(got, live.contains(&i).then_some(i + 1), "key {i}");
                }
            }
        }
        assert_eq!(t.len(), live.len());
        assert!(t.get(table::EMPTY).is_none() && t.remove(table::EMPTY).is_none());
    }
}
