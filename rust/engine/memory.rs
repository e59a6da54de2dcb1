//! Storages: alloc, adopt, access, launch, record_stream, free; pending frees and their
//! verdicts; freed ranges (`reuse-race`).

use super::*;

impl Engine {
    // ----- storages ------------------------------------------------------------------

    pub(super) fn check_size(nbytes: u64, ptr: u64) -> Result<u64> {
        if nbytes == 0 {
            return Err(EngineError::BadSize { ptr, nbytes: 0 });
        }
        match ptr.checked_add(nbytes) {
            Some(end) => Ok(end),
            None => Err(EngineError::Overflow { ptr, nbytes }),
        }
    }

    /// `(base, nbytes)` of the live storage containing `ptr`, if any: one hash probe for
    /// a base pointer (the hot path), the address index for an interior one.
    #[inline]
    pub(super) fn find(&self, ptr: u64) -> Option<(u64, u64)> {
        self.locate(ptr).map(|(_, base, len)| (base, len))
    }

    /// `(slot, base, nbytes)`: `find` with the storage's slot in the table.
    #[inline(always)]
    pub(super) fn locate(&self, ptr: u64) -> Option<(usize, u64, u64)> {
        if let Some(i) = self.storages.index_of(ptr) {
            return Some((i, ptr, self.storages.at(i).nbytes));
        }
        self.locate_interior(ptr)
    }

    #[inline(never)]
    fn locate_interior(&self, ptr: u64) -> Option<(usize, u64, u64)> {
        let (base, end) = self.by_addr.containing(ptr)?;
        let i = self.storages.index_of(base).expect("live storage");
        Some((i, base, end - base))
    }

    /// A hint: the slot of the storage based at `ptr` (if any) is needed soon.
    #[inline]
    pub(crate) fn prefetch_storage(&self, ptr: u64) {
        self.storages.prefetch(ptr);
    }

    /// Is the storage table small enough (1 MiB: an L2 cache) to stay in cache?
    #[inline]
    pub(crate) fn storages_in_cache(&self) -> bool {
        !self.storages.out_of_cache()
    }

    #[inline]
    pub(super) fn storage(&self, base: u64) -> &Storage {
        self.storages.get(base).expect("live storage")
    }

    /// Is `ptr` inside a live storage? (`find`, for benchmarks of the lookup alone.)
    pub fn is_live(&self, ptr: u64) -> bool {
        self.find(ptr).is_some()
    }

    pub fn storage_at(&self, ptr: u64) -> Option<(u64, u64, Handle)> {
        let st = self.storage(self.find(ptr)?.0);
        Some((st.base, st.nbytes, self.stream_handle(st.alloc_stream)))
    }

    /// The end of a new storage `[ptr, ptr+nbytes)`, or the error if it overlaps a live one.
    pub(super) fn check_new(&self, op: &'static str, ptr: u64, nbytes: u64) -> Result<u64> {
        let end = Self::check_size(nbytes, ptr)?;
        if let Some((base, bend)) = self.by_addr.overlapping(ptr, end) {
            return Err(EngineError::Overlap {
                op,
                ptr,
                nbytes,
                base,
                len: bend - base,
            });
        }
        Ok(end)
    }

    pub(super) fn insert_storage(
        &mut self,
        ptr: u64,
        end: u64,
        s: StreamIx,
        site: SiteId,
        alloc_pos: u64,
    ) {
        self.storages.insert(Storage {
            base: ptr,
            nbytes: end - ptr,
            alloc_stream: s,
            alloc_site: site,
            alloc_pos,
            ..Storage::empty()
        });
        self.by_addr.insert(ptr, end);
    }

    /// A storage allocated on `stream`: first the verdicts of the frees pending on that
    /// stream (this allocation could receive their blocks), then the reuse check.
    pub fn alloc(&mut self, ptr: u64, nbytes: u64, stream: Handle, site: SiteId) -> Result<()> {
        let end = self.check_new("alloc", ptr, nbytes)?;
        self.processed += 1;
        let s = self.stream(stream);
        if !self.streams[s.ix()].pending.is_empty() {
            let pending = std::mem::take(&mut self.streams[s.ix()].pending);
            for p in pending {
                self.judge(s, p, Some((ptr, nbytes, s, site)));
            }
        }
        self.check_reuse(ptr, end, s, site);
        let alloc_pos = self.streams[s.ix()].pos;
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
    pub(super) fn tombs_under(&self, ptr: u64, end: u64) -> SmallVec<[u64; 2]> {
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
        let mut all: Vec<(StreamIx, Pending)> = Vec::new();
        for (i, st) in self.streams.iter_mut().enumerate() {
            all.extend(st.pending.drain(..).map(|p| (StreamIx(i as u32), p)));
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
    pub(super) fn judge(&mut self, a: StreamIx, p: Pending, trigger: Option<Trigger>) {
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
    pub(super) fn judge_uses(
        &mut self,
        a: StreamIx,
        base: u64,
        nbytes: u64,
        alloc_site: SiteId,
        free_site: SiteId,
        recorded: &[(StreamIx, SiteId)],
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
    pub(super) fn covered(&self, a: StreamIx, u: &Use) -> bool {
        self.host.covers(u.stream, u.pos) || self.streams[a.ix()].clock.covers(u.stream, u.pos)
    }

    /// `reuse-race`: the new allocation `[ptr, end)` on stream `s` over freed bytes.
    pub(super) fn check_reuse(&mut self, ptr: u64, end: u64, s: StreamIx, site: SiteId) {
        for base in self.tombs_under(ptr, end) {
            let tomb = self.tombs.remove(&base).expect("tomb");
            let a = tomb.alloc_stream;
            // The CPU allocator behind virtual streams reuses addresses across streams;
            // CUDA's per-stream pools could not make this reuse.
            if a != s && (self.streams[a.ix()].is_virtual || self.streams[s.ix()].is_virtual) {
                continue;
            }
            for u in &tomb.uses {
                if self.host.covers(u.stream, u.pos)
                    || self.streams[s.ix()].clock.covers(u.stream, u.pos)
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
    #[inline(always)]
    pub(crate) fn apply_access(
        &mut self,
        ptr: u64,
        (slot, base, len, end): Checked,
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
        // inline capacity 4: no allocation unless a storage has more conflicting streams
        let mut conflicts = Conflicts::new();
        let mut unwaited: Option<(StreamIx, u64)> = None;
        {
            let (storages, streams, host) = (&mut self.storages, &self.streams, &self.host);
            let st = storages.at_mut(slot);
            debug_assert_eq!(st.base, base);
            let clock = &streams[s.ix()].clock;
            let ordered = |u, p| clock.covers(u, p) || host.covers(u, p);
            let (a, b) = (ptr - base, end - base);
            if let Some(sh) = st.cold.as_mut().and_then(|c| c.split.as_mut()) {
                sh.access(a, b, cur, write, ordered, &mut conflicts);
            } else if a == 0 && b == st.nbytes {
                st.shadow.access(cur, write, ordered, &mut conflicts);
            } else {
                let mut sh = st.shadow.split(st.nbytes);
                sh.access(a, b, cur, write, ordered, &mut conflicts);
                st.cold().split = Some(sh);
            }
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
                            site,
                            pos,
                        });
                        st.uses.len() - 1
                    }
                };
                // 0 past the 32nd use: not remembered, checked again next time
                let bit = 1u32.checked_shl(ix as u32).unwrap_or(0);
                if bit == 0 || st.after_alloc & bit == 0 {
                    let (a, a0) = (st.alloc_stream, st.alloc_pos);
                    if a0 == 0 || clock.covers(a, a0) || host.covers(a, a0) {
                        st.after_alloc |= bit;
                    } else if !conflicts.iter().any(|c| c.stream == a) {
                        unwaited = Some((a, a0));
                    }
                }
            }
        }
        if !conflicts.is_empty() || unwaited.is_some() {
            self.report_access(base, len, s, site, &conflicts, unwaited);
        }
    }

    /// The hazards one access found (kept out of the inlined hot path).
    #[cold]
    #[inline(never)]
    fn report_access(
        &mut self,
        base: u64,
        len: u64,
        s: StreamIx,
        site: SiteId,
        conflicts: &Conflicts,
        unwaited: Option<(StreamIx, u64)>,
    ) {
        if !conflicts.is_empty() {
            let st = self.storage(base);
            let (alloc_stream, alloc_site) = (st.alloc_stream, st.alloc_site);
            for prior in conflicts {
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
        if !self.storages_in_cache() {
            // the slots' misses overlap instead of adding up
            for &(ptr, _) in reads.iter().chain(writes) {
                self.storages.prefetch(ptr);
            }
        }
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
    // always: the compiler stopped inlining it into `launch` (a call per range, about
    // 28 instructions per event more in `bench_instructions.py --loop engine`)
    #[inline(always)]
    pub(crate) fn check_access(&self, ptr: u64, nbytes: u64) -> Result<Checked> {
        let end = Self::check_size(nbytes, ptr)?;
        let Some((slot, base, len)) = self.locate(ptr) else {
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
        Ok((slot, base, len, end))
    }

    pub fn record_stream(&mut self, ptr: u64, stream: Handle, site: SiteId) -> Result<()> {
        let Some((base, _)) = self.find(ptr) else {
            return Err(EngineError::RecordNoStorage { ptr });
        };
        self.processed += 1;
        let s = self.stream(stream);
        let st = self.storages.get_mut(base).expect("live storage");
        let redundant = s == st.alloc_stream || st.recorded().iter().any(|&(r, _)| r == s);
        if !redundant {
            st.cold().recorded.push((s, site));
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
        let Some(st) = self.storages.remove(ptr) else {
            return Err(match self.find(ptr) {
                Some((base, _)) => EngineError::InteriorFree { ptr, base },
                None => EngineError::UnknownFree { ptr },
            });
        };
        self.processed += 1;
        self.by_addr.remove(ptr, ptr + st.nbytes);
        let a = st.alloc_stream;
        // Uses not recorded and not covered now: the bytes a reuse could race with.
        let uncovered: SmallVec<[Use; 2]> = st
            .uses
            .iter()
            .filter(|u| !st.recorded().iter().any(|&(r, _)| r == u.stream) && !self.covered(a, u))
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
                st.recorded(),
                &st.uses,
                None,
            );
        } else {
            self.pending_seq += 1;
            self.pending_frees += 1;
            self.streams[a.ix()].pending.push(Pending {
                seq: self.pending_seq,
                base: st.base,
                nbytes: st.nbytes,
                alloc_site: st.alloc_site,
                free_site: site,
                recorded: st.cold.map(|c| c.recorded).unwrap_or_default(),
                uses: st.uses,
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
    pub(super) fn bound_tombs(&mut self) {
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
}
