//! The happens-before engine: streams, events, the host clock, live storages, freed
//! ranges, host copies and the hazards found. See docs/ENGINE-API.md ("Exact
//! semantics") for the rules this file implements, one function per row.
//!
//! Every public method validates its input before it changes anything, so a call that
//! returns an error leaves the engine exactly as it was.

use crate::clock::Clock;
use crate::error::EngineError;
use crate::error::Result;
use crate::hashing::MixMap;
use crate::hazard::{DedupKey, Hazard, Kind};
use crate::shadow::{Access, Conflicts, Shadow};
use crate::sites::{SiteId, Sites, NO_SITE};
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
    stream: Option<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Use {
    stream: u32,
    pos: u64,
    site: SiteId,
    /// This stream is known ordered after the storage's allocation position (checked
    /// once; clocks only grow, so it stays true).
    after_alloc: bool,
}

struct Storage {
    base: u64,
    nbytes: u64,
    alloc_stream: u32,
    alloc_site: SiteId,
    /// The allocation stream's position at the allocation (0: nothing to wait for, or an
    /// adopted storage whose allocation was not seen).
    alloc_pos: u64,
    /// Streams given to record_stream, with the site of that call.
    recorded: SmallVec<[(u32, SiteId); 2]>,
    /// Latest use per stream other than the allocation stream, in first-use order.
    uses: SmallVec<[Use; 2]>,
    shadow: Shadow,
}

/// A free whose verdict waits for the next allocation on its allocation stream.
struct Pending {
    seq: u64,
    base: u64,
    nbytes: u64,
    alloc_site: SiteId,
    free_site: SiteId,
    recorded: SmallVec<[(u32, SiteId); 2]>,
    uses: SmallVec<[Use; 2]>,
}

/// The allocation that triggered a verdict: (ptr, nbytes, stream, site).
type Trigger = (u64, u64, u32, SiteId);

/// A freed range whose uncovered uses may still be in flight (for `reuse-race`).
struct Tomb {
    end: u64,
    nbytes: u64,
    alloc_stream: u32,
    alloc_site: SiteId,
    free_site: SiteId,
    uses: SmallVec<[Use; 2]>,
}

#[derive(Clone, Copy)]
struct HostCopy {
    start: u64,
    end: u64,
    stream: u32,
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

/// One row of the bulk path (`Engine::apply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Alloc {
        ptr: u64,
        nbytes: u64,
        stream: Handle,
    },
    Access {
        ptr: u64,
        nbytes: u64,
        stream: Handle,
        write: bool,
    },
    Free {
        ptr: u64,
    },
    Adopt {
        ptr: u64,
        nbytes: u64,
        stream: Handle,
    },
    Flush,
    RecordStream {
        ptr: u64,
        stream: Handle,
    },
    EventRecord {
        event: Handle,
        stream: Handle,
    },
    EventWait {
        event: Handle,
        stream: Handle,
    },
    StreamWait {
        waiter: Handle,
        waited: Handle,
    },
    StreamSync {
        stream: Handle,
    },
    EventSync {
        event: Handle,
    },
    DeviceSync,
}

impl Op {
    /// Decodes a bulk row `[op, a, b, c]` (docs/ENGINE-API.md, "Bulk path").
    pub fn decode(row: [i64; 4]) -> Result<Op> {
        let [op, a, b, c] = row;
        let ptr = |v: i64, what: &'static str| -> Result<u64> {
            u64::try_from(v).map_err(|_| EngineError::Negative { what, value: v })
        };
        let size = |v: i64| -> Result<u64> {
            if v <= 0 {
                Err(EngineError::BadSize {
                    ptr: a.max(0) as u64,
                    nbytes: v,
                })
            } else {
                Ok(v as u64)
            }
        };
        Ok(match op {
            0 => Op::Alloc {
                ptr: ptr(a, "ptr")?,
                nbytes: size(b)?,
                stream: c.into(),
            },
            1 | 2 => Op::Access {
                ptr: ptr(a, "ptr")?,
                nbytes: size(b)?,
                stream: c.into(),
                write: op == 2,
            },
            3 => Op::Free {
                ptr: ptr(a, "ptr")?,
            },
            4 => Op::RecordStream {
                ptr: ptr(a, "ptr")?,
                stream: b.into(),
            },
            5 => Op::EventRecord {
                event: a.into(),
                stream: b.into(),
            },
            6 => Op::EventWait {
                event: a.into(),
                stream: b.into(),
            },
            7 => Op::StreamWait {
                waiter: a.into(),
                waited: b.into(),
            },
            8 => Op::StreamSync { stream: a.into() },
            9 => Op::EventSync { event: a.into() },
            10 => Op::DeviceSync,
            11 => Op::Adopt {
                ptr: ptr(a, "ptr")?,
                nbytes: size(b)?,
                stream: c.into(),
            },
            12 => Op::Flush,
            code => return Err(EngineError::UnknownOp { code }),
        })
    }
}

/// A validated access: the storage's base and length, and the access's end.
type Checked = (u64, u64, u64);

/// Most freed ranges kept for reuse checks; past this the lowest addresses are dropped
/// (their `unsynced-free` was already reported; only a later `reuse-race` is lost).
const MAX_TOMBS: usize = 1 << 18;

pub struct Engine {
    streams: Vec<Stream>,
    stream_ix: MixMap<Handle, u32>,
    /// The last stream looked up: most calls in a row name the same stream.
    last_stream: (Handle, u32),
    events: MixMap<Handle, Event>,
    host: Clock,
    /// Live storages by base pointer (the hot path: one hash probe reaches the state).
    storages: MixMap<u64, Storage>,
    /// Base -> end of every live storage, for interior pointers and overlap checks.
    by_addr: BTreeMap<u64, u64>,
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
    scratch: Conflicts,
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
            last_stream: (Handle::MIN, 0),
            events: MixMap::default(),
            host: Clock::default(),
            storages: MixMap::default(),
            by_addr: BTreeMap::new(),
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
            scratch: Conflicts::new(),
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

    // ----- streams and events --------------------------------------------------------

    /// The dense index of a stream, creating it (from the host's clock) on first use.
    #[inline]
    fn stream(&mut self, handle: Handle) -> u32 {
        if self.last_stream.0 == handle {
            return self.last_stream.1;
        }
        if let Some(&ix) = self.stream_ix.get(&handle) {
            self.last_stream = (handle, ix);
            return ix;
        }
        let ix = self.streams.len() as u32;
        self.streams.push(Stream {
            handle,
            pos: 0,
            clock: self.host.clone(),
            name: None,
            is_virtual: false,
            incomplete: None,
            pending: Vec::new(),
        });
        self.stream_ix.insert(handle, ix);
        ix
    }

    pub fn stream_handle(&self, ix: u32) -> Handle {
        self.streams[ix as usize].handle
    }

    pub fn stream_label(&self, ix: u32) -> String {
        let s = &self.streams[ix as usize];
        match &s.name {
            Some(n) => n.clone(),
            None => format!("stream {:#x}", s.handle),
        }
    }

    pub fn define_stream(&mut self, stream: Handle, name: Option<&str>, is_virtual: bool) {
        let ix = self.stream(stream) as usize;
        if let Some(n) = name {
            self.streams[ix].name = Some(n.to_owned());
        }
        self.streams[ix].is_virtual = is_virtual;
    }

    /// Work enqueued on `s`: its position advances; returns the work's position.
    #[inline]
    fn enqueue(&mut self, s: u32) -> u64 {
        let st = &mut self.streams[s as usize];
        st.pos += 1;
        let p = st.pos;
        st.clock.set(s, p);
        p
    }

    fn live(&self, u: u32, pos: u64) -> Option<bool> {
        let st = &self.streams[u as usize];
        if st.is_virtual && !self.host.covers(u, pos) {
            return Some(true);
        }
        match st.incomplete {
            Some((lo, hi)) if lo <= pos && pos <= hi && !self.host.covers(u, pos) => Some(true),
            _ => None,
        }
    }

    pub fn event_record(&mut self, event: Handle, stream: Handle) {
        self.processed += 1;
        let s = self.stream(stream);
        let clock = self.streams[s as usize].clock.clone();
        let ev = self.events.entry(event).or_default();
        ev.clock = Some(clock);
        ev.stream = Some(s);
    }

    pub fn event_wait(&mut self, event: Handle, stream: Handle) {
        self.processed += 1;
        let s = self.stream(stream);
        let ev = self.events.entry(event).or_default();
        if let Some(c) = &ev.clock {
            self.streams[s as usize].clock.join(c);
        }
    }

    pub fn stream_wait(&mut self, waiter: Handle, waited: Handle) {
        self.processed += 1;
        let w = self.stream(waiter);
        let t = self.stream(waited);
        if w != t {
            let c = self.streams[t as usize].clock.clone();
            self.streams[w as usize].clock.join(&c);
        }
    }

    pub fn stream_synchronize(&mut self, stream: Handle) {
        self.processed += 1;
        let s = self.stream(stream);
        let c = &self.streams[s as usize].clock;
        self.host.join(c);
    }

    pub fn event_synchronize(&mut self, event: Handle) {
        self.processed += 1;
        let ev = self.events.entry(event).or_default();
        if let Some(c) = &ev.clock {
            self.host.join(c);
        }
    }

    pub fn device_synchronize(&mut self) {
        self.processed += 1;
        for st in &self.streams {
            self.host.join(&st.clock);
        }
    }

    pub fn stream_query(&mut self, stream: Handle, complete: bool) {
        if complete {
            return self.stream_synchronize(stream);
        }
        self.processed += 1;
        let s = self.stream(stream) as usize;
        let p = self.streams[s].pos;
        self.streams[s].incomplete = Some((p, p));
    }

    pub fn event_query(&mut self, event: Handle, complete: bool) {
        if complete {
            return self.event_synchronize(event);
        }
        self.processed += 1;
        let ev = self.events.entry(event).or_default();
        if let (Some(c), Some(s)) = (&ev.clock, ev.stream) {
            let lo = c.get(s);
            let st = &mut self.streams[s as usize];
            st.incomplete = Some((lo, st.pos));
        }
    }

    /// Forgets an event the caller destroyed (keeps memory flat when events are created
    /// per iteration). Waiting on it afterwards is a wait on a never-recorded event.
    pub fn forget_event(&mut self, event: Handle) {
        self.events.remove(&event);
    }

    // ----- storages ------------------------------------------------------------------

    fn check_size(nbytes: u64, ptr: u64) -> Result<u64> {
        if nbytes == 0 {
            return Err(EngineError::BadSize { ptr, nbytes: 0 });
        }
        match ptr.checked_add(nbytes) {
            Some(end) => Ok(end),
            None => Err(EngineError::Overflow { ptr, nbytes }),
        }
    }

    /// `(base, nbytes)` of the live storage containing `ptr`, if any: one hash probe for
    /// a base pointer (the hot path), the ordered map for an interior one.
    #[inline]
    fn find(&self, ptr: u64) -> Option<(u64, u64)> {
        if let Some(st) = self.storages.get(&ptr) {
            return Some((ptr, st.nbytes));
        }
        let (&base, &end) = self.by_addr.range(..=ptr).next_back()?;
        (ptr < end).then_some((base, end - base))
    }

    #[inline]
    fn storage(&self, base: u64) -> &Storage {
        self.storages.get(&base).expect("live storage")
    }

    pub fn storage_at(&self, ptr: u64) -> Option<(u64, u64, Handle)> {
        let st = self.storage(self.find(ptr)?.0);
        Some((st.base, st.nbytes, self.stream_handle(st.alloc_stream)))
    }

    /// The end of a new storage `[ptr, ptr+nbytes)`, or the error if it overlaps a live one.
    fn check_new(&self, op: &'static str, ptr: u64, nbytes: u64) -> Result<u64> {
        let end = Self::check_size(nbytes, ptr)?;
        if let Some((&base, &bend)) = self.by_addr.range(..end).next_back() {
            if bend > ptr {
                return Err(EngineError::Overlap {
                    op,
                    ptr,
                    nbytes,
                    base,
                    len: bend - base,
                });
            }
        }
        Ok(end)
    }

    fn insert_storage(&mut self, ptr: u64, end: u64, s: u32, site: SiteId, alloc_pos: u64) {
        let storage = Storage {
            base: ptr,
            nbytes: end - ptr,
            alloc_stream: s,
            alloc_site: site,
            alloc_pos,
            recorded: SmallVec::new(),
            uses: SmallVec::new(),
            shadow: Shadow::new(end - ptr),
        };
        self.storages.insert(ptr, storage);
        self.by_addr.insert(ptr, end);
    }

    /// A storage allocated on `stream`: first the verdicts of the frees pending on that
    /// stream (this allocation could receive their blocks), then the reuse check.
    pub fn alloc(&mut self, ptr: u64, nbytes: u64, stream: Handle, site: SiteId) -> Result<()> {
        let end = self.check_new("alloc", ptr, nbytes)?;
        self.processed += 1;
        let s = self.stream(stream);
        if !self.streams[s as usize].pending.is_empty() {
            let pending = std::mem::take(&mut self.streams[s as usize].pending);
            for p in pending {
                self.judge(s, p, Some((ptr, nbytes, s, site)));
            }
        }
        self.check_reuse(ptr, end, s, site);
        let alloc_pos = self.streams[s as usize].pos;
        self.insert_storage(ptr, end, s, site, alloc_pos);
        Ok(())
    }

    /// A storage whose allocation was not seen (it existed before tracking began): no
    /// verdicts, no reuse check (freed ranges under it are forgotten), and never judged
    /// by `unwaited-allocation`.
    pub fn adopt(&mut self, ptr: u64, nbytes: u64, stream: Handle, site: SiteId) -> Result<()> {
        let end = self.check_new("adopt", ptr, nbytes)?;
        self.processed += 1;
        let s = self.stream(stream);
        let hit: SmallVec<[u64; 2]> = self.tombs_under(ptr, end);
        for base in hit {
            self.tombs.remove(&base);
        }
        self.insert_storage(ptr, end, s, site, 0);
        Ok(())
    }

    /// Base pointers of the freed ranges overlapping `[ptr, end)`, in address order.
    fn tombs_under(&self, ptr: u64, end: u64) -> SmallVec<[u64; 2]> {
        let mut hit: SmallVec<[u64; 2]> = SmallVec::new();
        for (&base, tomb) in self.tombs.range(..end).rev() {
            if tomb.end <= ptr {
                break;
            }
            hit.push(base);
        }
        hit.reverse();
        hit
    }

    /// The end of a region, test or run: every pending free is judged now, and the
    /// advice of record_stream sites that were redundant every time is emitted.
    pub fn flush(&mut self) {
        self.processed += 1;
        let mut all: Vec<(u32, Pending)> = Vec::new();
        for (i, st) in self.streams.iter_mut().enumerate() {
            all.extend(st.pending.drain(..).map(|p| (i as u32, p)));
        }
        all.sort_by_key(|(_, p)| p.seq);
        for (a, p) in all {
            self.judge(a, p, None);
        }
        let advice = std::mem::take(&mut self.advice);
        self.advice_ix.clear();
        for h in advice {
            if !self.needed_sites.contains(&h.use_site) {
                self.report(h);
            }
        }
    }

    /// The verdict on one pending free of a storage allocated on `a`.
    fn judge(&mut self, a: u32, p: Pending, trigger: Option<Trigger>) {
        self.pending_frees -= 1;
        self.judge_uses(
            a,
            p.base,
            p.nbytes,
            p.alloc_site,
            p.free_site,
            &p.recorded,
            &p.uses,
            trigger,
        );
    }

    /// `unsynced-free` for each use neither recorded nor covered; for each recorded
    /// stream, its call site is needed (an uncovered use) or a redundant candidate.
    #[allow(clippy::too_many_arguments)]
    fn judge_uses(
        &mut self,
        a: u32,
        base: u64,
        nbytes: u64,
        alloc_site: SiteId,
        free_site: SiteId,
        recorded: &[(u32, SiteId)],
        uses: &[Use],
        trigger: Option<Trigger>,
    ) {
        for u in uses {
            if recorded.iter().any(|&(r, _)| r == u.stream) || self.covered(a, u) {
                continue;
            }
            let mut h = Hazard::new(Kind::UnsyncedFree, base, nbytes);
            h.alloc_stream = Some(a);
            h.alloc_site = alloc_site;
            h.use_stream = Some(u.stream);
            h.use_site = u.site;
            h.free_site = free_site;
            if let Some((tp, tn, ts, tsite)) = trigger {
                h.other_ptr = Some(tp);
                h.other_nbytes = Some(tn);
                h.other_stream = Some(ts);
                h.other_site = tsite;
            }
            h.live = self.live(u.stream, u.pos);
            self.report(h);
        }
        for &(r, rsite) in recorded {
            let needed = uses
                .iter()
                .find(|u| u.stream == r)
                .is_some_and(|u| !self.covered(a, u));
            if needed {
                self.needed_sites.insert(rsite);
                continue;
            }
            let mut h = Hazard::new(Kind::RedundantRecordStream, base, nbytes);
            h.alloc_stream = Some(a);
            h.alloc_site = alloc_site;
            h.use_stream = Some(r);
            h.use_site = rsite;
            h.free_site = free_site;
            self.advise(h);
        }
    }

    /// Is the use ordered before the future work of allocation stream `a`?
    #[inline]
    fn covered(&self, a: u32, u: &Use) -> bool {
        self.host.covers(u.stream, u.pos) || self.streams[a as usize].clock.covers(u.stream, u.pos)
    }

    /// `reuse-race`: the new allocation `[ptr, end)` on stream `s` over freed bytes.
    fn check_reuse(&mut self, ptr: u64, end: u64, s: u32, site: SiteId) {
        for base in self.tombs_under(ptr, end) {
            let tomb = self.tombs.remove(&base).expect("tomb");
            let a = tomb.alloc_stream;
            // The CPU allocator behind virtual streams reuses addresses across streams;
            // CUDA's per-stream pools could not make this reuse.
            if a != s
                && (self.streams[a as usize].is_virtual || self.streams[s as usize].is_virtual)
            {
                continue;
            }
            for u in &tomb.uses {
                if self.host.covers(u.stream, u.pos)
                    || self.streams[s as usize].clock.covers(u.stream, u.pos)
                {
                    continue;
                }
                let mut h = Hazard::new(Kind::ReuseRace, base, tomb.nbytes);
                h.alloc_stream = Some(tomb.alloc_stream);
                h.alloc_site = tomb.alloc_site;
                h.use_stream = Some(u.stream);
                h.use_site = u.site;
                h.free_site = tomb.free_site;
                h.other_stream = Some(s);
                h.other_site = site;
                h.other_ptr = Some(ptr);
                h.other_nbytes = Some(end - ptr);
                h.live = self.live(u.stream, u.pos);
                self.report(h);
            }
        }
    }

    pub fn access(
        &mut self,
        ptr: u64,
        nbytes: u64,
        stream: Handle,
        write: bool,
        site: SiteId,
    ) -> Result<()> {
        let checked = self.check_access(ptr, nbytes)?;
        self.apply_access(ptr, checked, stream, write, site);
        Ok(())
    }

    /// An access already validated by `check_access`.
    fn apply_access(
        &mut self,
        ptr: u64,
        (base, len, end): Checked,
        stream: Handle,
        write: bool,
        site: SiteId,
    ) {
        self.processed += 1;
        let s = self.stream(stream);
        let pos = self.enqueue(s);
        let cur = Access {
            stream: s,
            pos,
            site,
        };
        let mut conflicts = std::mem::take(&mut self.scratch);
        conflicts.clear();
        let mut unwaited: Option<(u32, u64)> = None;
        {
            let (storages, streams, host) = (&mut self.storages, &self.streams, &self.host);
            let st = storages.get_mut(&base).expect("live storage");
            let clock = &streams[s as usize].clock;
            st.shadow.access(
                ptr - base,
                end - base,
                cur,
                write,
                |u, p| clock.covers(u, p) || host.covers(u, p),
                &mut conflicts,
            );
            if s != st.alloc_stream {
                let ix = match st.uses.iter().position(|u| u.stream == s) {
                    Some(i) => {
                        st.uses[i].pos = pos;
                        st.uses[i].site = site;
                        i
                    }
                    None => {
                        st.uses.push(Use {
                            stream: s,
                            pos,
                            site,
                            after_alloc: false,
                        });
                        st.uses.len() - 1
                    }
                };
                let u = &mut st.uses[ix];
                if !u.after_alloc {
                    let (a, a0) = (st.alloc_stream, st.alloc_pos);
                    if a0 == 0 || clock.covers(a, a0) || host.covers(a, a0) {
                        u.after_alloc = true;
                    } else if !conflicts.iter().any(|c| c.stream == a) {
                        unwaited = Some((a, a0));
                    }
                }
            }
        }
        if !conflicts.is_empty() {
            let st = self.storage(base);
            let (alloc_stream, alloc_site) = (st.alloc_stream, st.alloc_site);
            for prior in &conflicts {
                let mut h = Hazard::new(Kind::UnsyncedAccess, base, len);
                h.alloc_stream = Some(alloc_stream);
                h.alloc_site = alloc_site;
                h.use_stream = Some(s);
                h.use_site = site;
                h.other_stream = Some(prior.stream);
                h.other_site = prior.site;
                h.live = self.live(prior.stream, prior.pos);
                self.report(h);
            }
        }
        if let Some((a, a0)) = unwaited {
            let st = self.storage(base);
            let mut h = Hazard::new(Kind::UnwaitedAllocation, base, len);
            h.alloc_stream = Some(a);
            h.alloc_site = st.alloc_site;
            h.use_stream = Some(s);
            h.use_site = site;
            h.live = self.live(a, a0);
            self.report(h);
        }
        self.scratch = conflicts;
    }

    /// One kernel launch on `stream`: reads then writes of `(ptr, nbytes)` ranges, each
    /// exactly as `access` would apply it, in that order. Every range is checked first,
    /// so a bad one leaves the engine unchanged.
    pub fn launch(
        &mut self,
        stream: Handle,
        reads: &[(u64, u64)],
        writes: &[(u64, u64)],
        site: SiteId,
    ) -> Result<()> {
        let mut checked: SmallVec<[(u64, Checked); 8]> = SmallVec::new();
        for &(ptr, nbytes) in reads.iter().chain(writes) {
            checked.push((ptr, self.check_access(ptr, nbytes)?));
        }
        for (i, &(ptr, range)) in checked.iter().enumerate() {
            self.apply_access(ptr, range, stream, i >= reads.len(), site);
        }
        Ok(())
    }

    /// The storage (base, length) and end of a valid access, or the error `access` would give.
    #[inline]
    fn check_access(&self, ptr: u64, nbytes: u64) -> Result<Checked> {
        let end = Self::check_size(nbytes, ptr)?;
        let Some((base, len)) = self.find(ptr) else {
            return Err(EngineError::Outside { ptr, nbytes });
        };
        if end > base + len {
            return Err(EngineError::PastEnd {
                ptr,
                nbytes,
                base,
                len,
            });
        }
        Ok((base, len, end))
    }

    pub fn record_stream(&mut self, ptr: u64, stream: Handle, site: SiteId) -> Result<()> {
        let Some((base, _)) = self.find(ptr) else {
            return Err(EngineError::RecordNoStorage { ptr });
        };
        self.processed += 1;
        let s = self.stream(stream);
        let st = self.storages.get_mut(&base).expect("live storage");
        let redundant = s == st.alloc_stream || st.recorded.iter().any(|&(r, _)| r == s);
        if !redundant {
            st.recorded.push((s, site));
            return Ok(());
        }
        let mut h = Hazard::new(Kind::RedundantRecordStream, st.base, st.nbytes);
        h.alloc_stream = Some(st.alloc_stream);
        h.alloc_site = st.alloc_site;
        h.use_stream = Some(s);
        h.use_site = site;
        self.advise(h);
        Ok(())
    }

    pub fn free(&mut self, ptr: u64, site: SiteId) -> Result<()> {
        let Some(st) = self.storages.remove(&ptr) else {
            return Err(match self.find(ptr) {
                Some((base, _)) => EngineError::InteriorFree { ptr, base },
                None => EngineError::UnknownFree { ptr },
            });
        };
        self.processed += 1;
        self.by_addr.remove(&ptr);
        let a = st.alloc_stream;
        // Uses not recorded and not covered now: the bytes a reuse could race with.
        let uncovered: SmallVec<[Use; 2]> = st
            .uses
            .iter()
            .filter(|u| !st.recorded.iter().any(|&(r, _)| r == u.stream) && !self.covered(a, u))
            .copied()
            .collect();
        if st.uses.iter().all(|u| self.covered(a, u)) {
            // Nothing can change the verdict any more: take it now.
            self.judge_uses(
                a,
                st.base,
                st.nbytes,
                st.alloc_site,
                site,
                &st.recorded,
                &st.uses,
                None,
            );
        } else {
            self.pending_seq += 1;
            self.pending_frees += 1;
            self.streams[a as usize].pending.push(Pending {
                seq: self.pending_seq,
                base: st.base,
                nbytes: st.nbytes,
                alloc_site: st.alloc_site,
                free_site: site,
                recorded: st.recorded.clone(),
                uses: st.uses.clone(),
            });
        }
        if !uncovered.is_empty() {
            self.tombs.insert(
                st.base,
                Tomb {
                    end: st.base + st.nbytes,
                    nbytes: st.nbytes,
                    alloc_stream: a,
                    alloc_site: st.alloc_site,
                    free_site: site,
                    uses: uncovered,
                },
            );
            self.bound_tombs();
        }
        Ok(())
    }

    /// Forgets freed ranges whose uses the host has seen complete; caps the rest.
    fn bound_tombs(&mut self) {
        if self.tombs.len() < self.tomb_prune_at {
            return;
        }
        let host = &self.host;
        self.tombs
            .retain(|_, t| t.uses.iter().any(|u| !host.covers(u.stream, u.pos)));
        while self.tombs.len() > MAX_TOMBS {
            self.tombs.pop_first();
            self.tombs_dropped += 1;
        }
        self.tomb_prune_at = (self.tombs.len() * 2).max(1024);
    }

    // ----- host memory ---------------------------------------------------------------

    fn copy(
        &mut self,
        ptr: u64,
        nbytes: u64,
        stream: Handle,
        site: SiteId,
        to_host: bool,
    ) -> Result<()> {
        let end = Self::check_size(nbytes, ptr)?;
        self.processed += 1;
        let s = self.stream(stream);
        let pos = self.enqueue(s);
        // Pinned memory that device copies touch is memory like any other: a copy into
        // it (device to host) writes it, a copy out of it reads it, on the copy's stream.
        let clock = &self.streams[s as usize].clock;
        let host = &self.host;
        let races: SmallVec<[HostCopy; 2]> = self
            .copies
            .iter()
            .filter(|c| {
                c.start < end
                    && ptr < c.end
                    && c.stream != s
                    && (c.to_host || to_host)
                    && !clock.covers(c.stream, c.pos)
                    && !host.covers(c.stream, c.pos)
            })
            .copied()
            .collect();
        for c in races {
            let mut h = Hazard::new(Kind::UnsyncedAccess, ptr, nbytes);
            h.use_stream = Some(s);
            h.use_site = site;
            h.other_stream = Some(c.stream);
            h.other_site = c.site;
            h.live = self.live(c.stream, c.pos);
            self.report(h);
        }
        self.copies.push(HostCopy {
            start: ptr,
            end,
            stream: s,
            pos,
            site,
            to_host,
        });
        if self.copies.len() >= self.copies_prune_at {
            let host = &self.host;
            self.copies.retain(|c| !host.covers(c.stream, c.pos));
            self.copies_prune_at = (self.copies.len() * 2).max(64);
        }
        Ok(())
    }

    pub fn copy_to_host(
        &mut self,
        ptr: u64,
        nbytes: u64,
        stream: Handle,
        site: SiteId,
    ) -> Result<()> {
        self.copy(ptr, nbytes, stream, site, true)
    }

    pub fn copy_from_host(
        &mut self,
        ptr: u64,
        nbytes: u64,
        stream: Handle,
        site: SiteId,
    ) -> Result<()> {
        self.copy(ptr, nbytes, stream, site, false)
    }

    pub fn host_access(&mut self, ptr: u64, nbytes: u64, write: bool, site: SiteId) -> Result<()> {
        let end = Self::check_size(nbytes, ptr)?;
        self.processed += 1;
        let host = &self.host;
        self.copies.retain(|c| !host.covers(c.stream, c.pos));
        let hits: SmallVec<[HostCopy; 2]> = self
            .copies
            .iter()
            .filter(|c| c.start < end && ptr < c.end && c.to_host != write)
            .copied()
            .collect();
        for c in hits {
            let kind = if write {
                Kind::HostWriteDuringCopy
            } else {
                Kind::HostReadBeforeCopy
            };
            let mut h = Hazard::new(kind, c.start, c.end - c.start);
            h.use_stream = Some(c.stream);
            h.use_site = c.site;
            h.other_site = site;
            h.live = self.live(c.stream, c.pos);
            self.report(h);
        }
        Ok(())
    }

    pub fn host_release(&mut self, ptr: u64, nbytes: u64) -> Result<()> {
        let end = Self::check_size(nbytes, ptr)?;
        self.processed += 1;
        self.copies.retain(|c| !(c.start < end && ptr < c.end));
        Ok(())
    }

    // ----- bulk path -----------------------------------------------------------------

    pub fn apply(&mut self, op: Op) -> Result<()> {
        match op {
            Op::Alloc {
                ptr,
                nbytes,
                stream,
            } => self.alloc(ptr, nbytes, stream, NO_SITE),
            Op::Access {
                ptr,
                nbytes,
                stream,
                write,
            } => self.access(ptr, nbytes, stream, write, NO_SITE),
            Op::Free { ptr } => self.free(ptr, NO_SITE),
            Op::Adopt {
                ptr,
                nbytes,
                stream,
            } => self.adopt(ptr, nbytes, stream, NO_SITE),
            Op::Flush => {
                self.flush();
                Ok(())
            }
            Op::RecordStream { ptr, stream } => self.record_stream(ptr, stream, NO_SITE),
            Op::EventRecord { event, stream } => {
                self.event_record(event, stream);
                Ok(())
            }
            Op::EventWait { event, stream } => {
                self.event_wait(event, stream);
                Ok(())
            }
            Op::StreamWait { waiter, waited } => {
                self.stream_wait(waiter, waited);
                Ok(())
            }
            Op::StreamSync { stream } => {
                self.stream_synchronize(stream);
                Ok(())
            }
            Op::EventSync { event } => {
                self.event_synchronize(event);
                Ok(())
            }
            Op::DeviceSync => {
                self.device_synchronize();
                Ok(())
            }
        }
    }

    /// Applies bulk rows in order; on a bad row returns its index and the error, with
    /// every row before it applied and the bad row not.
    pub fn apply_rows(&mut self, rows: impl Iterator<Item = [i64; 4]>) -> Result<usize> {
        let mut n = 0;
        for row in rows {
            let at = |e: EngineError| EngineError::Row {
                row: n,
                error: Box::new(e),
            };
            let op = Op::decode(row).map_err(at)?;
            self.apply(op).map_err(at)?;
            n += 1;
        }
        Ok(n)
    }

    // ----- hazards -------------------------------------------------------------------

    /// A `redundant-record-stream` candidate: held until `flush`, which emits it only if
    /// its call site was never needed (advice is about a line of code).
    fn advise(&mut self, h: Hazard) {
        let key = h.dedup_key();
        match self.advice_ix.get(&key) {
            Some(&i) => self.advice[i].count += 1,
            None => {
                self.advice_ix.insert(key, self.advice.len());
                self.advice.push(h);
            }
        }
    }

    fn report(&mut self, h: Hazard) {
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
