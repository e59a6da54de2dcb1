//! Streams, events and the host clock: record, wait, synchronize, query (the
//! happens-before rows of docs/SEMANTICS.md).

use super::*;

/// The slot of `handle` in `Engine::recent_streams`: low bits folded with higher ones
/// (CUDA stream handles are aligned pointers, virtual ones small ints).
#[inline]
pub(crate) fn recent_slot(handle: Handle) -> usize {
    let h = handle as u64;
    ((h ^ (h >> 4) ^ (h >> 9) ^ (h >> 17)) as usize) & (RECENT_STREAMS - 1)
}

impl Engine {
    // ----- streams and events --------------------------------------------------------

    /// The dense index of a stream, creating it (from the host's clock) on first use.
    /// The hot path (a recently seen stream, one compare) is inlined into every
    /// caller; the lookup and the creation are not, so that callers stay small.
    #[inline(always)]
    pub(super) fn stream(&mut self, handle: Handle) -> StreamIx {
        let slot = recent_slot(handle);
        let (h, ix) = self.recent_streams[slot];
        if h == handle {
            return ix;
        }
        self.stream_slow(handle, slot)
    }

    #[cold]
    #[inline(never)]
    fn stream_slow(&mut self, handle: Handle, slot: usize) -> StreamIx {
        if let Some(&ix) = self.stream_ix.get(&handle) {
            self.recent_streams[slot] = (handle, ix);
            return ix;
        }
        let ix = StreamIx(self.streams.len() as u32);
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
        self.recent_streams[slot] = (handle, ix);
        ix
    }

    pub fn stream_handle(&self, ix: StreamIx) -> Handle {
        self.streams[ix.ix()].handle
    }

    pub fn stream_label(&self, ix: StreamIx) -> String {
        let s = &self.streams[ix.ix()];
        match &s.name {
            Some(n) => n.clone(),
            None => format!("stream {:#x}", s.handle),
        }
    }

    pub fn define_stream(&mut self, stream: Handle, name: Option<&str>, is_virtual: bool) {
        let ix = self.stream(stream).ix();
        if let Some(n) = name {
            self.streams[ix].name = Some(n.to_owned());
        }
        self.streams[ix].is_virtual = is_virtual;
    }

    /// Work enqueued on `s`: its position advances; returns the work's position.
    #[inline]
    pub(super) fn enqueue(&mut self, s: StreamIx) -> u64 {
        let st = &mut self.streams[s.ix()];
        st.pos += 1;
        let p = st.pos;
        st.clock.set(s, p);
        p
    }

    pub(super) fn live(&self, u: StreamIx, pos: u64) -> Option<bool> {
        let st = &self.streams[u.ix()];
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
        let clock = &self.streams[s.ix()].clock;
        let ev = self.events.entry(event).or_default();
        // a re-recorded event (the common case) reuses its clock's buffer
        match &mut ev.clock {
            Some(c) => c.clone_from(clock),
            None => ev.clock = Some(clock.clone()),
        }
        ev.stream = Some(s);
    }

    pub fn event_wait(&mut self, event: Handle, stream: Handle) {
        self.processed += 1;
        let s = self.stream(stream);
        let ev = self.events.entry(event).or_default();
        if let Some(c) = &ev.clock {
            self.streams[s.ix()].clock.join(c);
        }
    }

    pub fn stream_wait(&mut self, waiter: Handle, waited: Handle) {
        self.processed += 1;
        let w = self.stream(waiter);
        let t = self.stream(waited);
        if w != t {
            let (w, t) = (w.ix(), t.ix());
            // two distinct streams: borrow one clock from each side of a split
            let (waiter, waited) = if w < t {
                let (lo, hi) = self.streams.split_at_mut(t);
                (&mut lo[w], &hi[0])
            } else {
                let (lo, hi) = self.streams.split_at_mut(w);
                (&mut hi[0], &lo[t])
            };
            waiter.clock.join(&waited.clock);
        }
    }

    pub fn stream_synchronize(&mut self, stream: Handle) {
        self.processed += 1;
        let s = self.stream(stream);
        let c = &self.streams[s.ix()].clock;
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
        let s = self.stream(stream).ix();
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
            let st = &mut self.streams[s.ix()];
            st.incomplete = Some((lo, st.pos));
        }
    }

    /// Forgets an event the caller destroyed (keeps memory flat when events are created
    /// per iteration). Waiting on it afterwards is a wait on a never-recorded event.
    pub fn forget_event(&mut self, event: Handle) {
        self.events.remove(&event);
    }
}
