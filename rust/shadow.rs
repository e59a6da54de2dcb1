//! Per-storage shadow state for race detection (`unsynced-access`).
//!
//! The storage's bytes are split into segments; each keeps the last write and, per
//! stream, the latest read since that write (one entry per stream, never a list that
//! grows with the number of accesses). Segments split only where accesses start or end
//! and merge back when neighbours hold the same state, so a storage that is always
//! accessed whole stays one segment and the common case does no splitting at all.
//!
//! Bounded cost: a storage split into more than `MAX_SEGMENTS` segments (row writes by
//! several streams, say) is *coarsened*: neighbouring segments merge pairwise, keeping
//! per stream the latest write and the latest read. Ordering is monotone in a stream's
//! position, so the latest access per stream finds every conflict the merged ones
//! would; what is lost is byte precision inside a merged range (disjoint writes there
//! by two streams can then be reported), never a race. Measured before the cap: a
//! whole-buffer read after 64,000 racy row writes took 1.2 s (a quadratic conflict
//! dedup and segment removal); now each access visits at most `MAX_SEGMENTS` segments.

use crate::clock::StreamIx;
use crate::sites::SiteId;
use smallvec::SmallVec;
use std::collections::HashSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub stream: StreamIx,
    pub pos: u64,
    pub site: SiteId,
}

/// Most segments per storage before coarsening.
pub const MAX_SEGMENTS: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    /// The last write; after coarsening, the latest write of each stream.
    writes: SmallVec<[Access; 1]>,
    reads: SmallVec<[Access; 2]>,
}

/// Keeps, per stream, the access with the latest position.
fn merge_latest<const N: usize>(into: &mut SmallVec<[Access; N]>, from: &[Access])
where
    [Access; N]: smallvec::Array<Item = Access>,
{
    for a in from {
        match into.iter_mut().find(|x| x.stream == a.stream) {
            Some(x) if x.pos < a.pos => *x = *a,
            Some(_) => {}
            None => into.push(*a),
        }
    }
}

#[derive(Clone, Debug)]
struct Segment {
    start: u64,
    end: u64,
    state: State,
}

#[derive(Clone, Debug)]
pub struct Shadow {
    segs: SmallVec<[Segment; 1]>,
}

pub type Conflicts = SmallVec<[Access; 4]>;

/// No access: position 0 (the first work on a stream has position 1).
const NO_ACCESS: Access = Access {
    stream: StreamIx(0),
    pos: 0,
    site: 0,
};

/// The shadow state of a storage only ever accessed whole (the common case), kept
/// inline in its slot: the last write and, per stream, the latest read since it. The
/// first access to part of the storage turns it into a `Shadow` (`split`), for good;
/// either way an access finds exactly the conflicts the one-segment `Shadow` would.
#[derive(Clone, Debug)]
pub struct Whole {
    /// The last write; `NO_ACCESS` before the first.
    write: Access,
    reads: SmallVec<[Access; 2]>,
}

impl Default for Whole {
    fn default() -> Self {
        Whole {
            write: NO_ACCESS,
            reads: SmallVec::new(),
        }
    }
}

impl Whole {
    /// An access by `cur` to the whole storage (see `Shadow::access`).
    #[inline(always)]
    pub fn access(
        &mut self,
        cur: Access,
        write: bool,
        ordered: impl Fn(StreamIx, u64) -> bool,
        conflicts: &mut Conflicts,
    ) {
        let w = self.write;
        if w.pos != 0 && w.stream != cur.stream && !ordered(w.stream, w.pos) {
            conflicts.push(w);
        }
        if write {
            for r in &self.reads {
                if r.stream != cur.stream && !ordered(r.stream, r.pos) {
                    conflicts.push(*r);
                }
            }
            self.write = cur;
            self.reads.clear();
        } else {
            match self.reads.iter_mut().find(|r| r.stream == cur.stream) {
                Some(r) => *r = cur,
                None => self.reads.push(cur),
            }
        }
    }

    /// The same state as a one-segment `Shadow` over `len` bytes; this one is emptied.
    pub fn split(&mut self, len: u64) -> Shadow {
        let whole = std::mem::take(self);
        let mut sh = Shadow::new(len);
        let st = &mut sh.segs[0].state;
        if whole.write.pos != 0 {
            st.writes.push(whole.write);
        }
        st.reads = whole.reads;
        sh
    }
}

impl Shadow {
    pub fn new(len: u64) -> Self {
        let mut segs = SmallVec::new();
        segs.push(Segment {
            start: 0,
            end: len,
            state: State::default(),
        });
        Shadow { segs }
    }

    #[cfg(test)]
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    fn len(&self) -> u64 {
        self.segs.last().map_or(0, |s| s.end)
    }

    /// Index of the segment that starts at offset `x`, splitting one if needed.
    fn split_at(&mut self, x: u64) -> usize {
        if x == 0 {
            return 0;
        }
        if x >= self.len() {
            return self.segs.len();
        }
        let idx = self.segs.partition_point(|s| s.start <= x) - 1;
        if self.segs[idx].start == x {
            return idx;
        }
        let tail = Segment {
            start: x,
            end: self.segs[idx].end,
            state: self.segs[idx].state.clone(),
        };
        self.segs[idx].end = x;
        self.segs.insert(idx + 1, tail);
        idx + 1
    }

    /// Applies an access by `cur` to offsets `[a, b)`. Every earlier access on another
    /// stream that conflicts (a write before anything, or a read before a write) and is
    /// not `ordered(stream, pos)` before `cur` is pushed once to `conflicts`.
    pub fn access(
        &mut self,
        a: u64,
        b: u64,
        cur: Access,
        write: bool,
        ordered: impl Fn(StreamIx, u64) -> bool,
        conflicts: &mut Conflicts,
    ) {
        if self.segs.len() == 1 && a == 0 && b == self.segs[0].end {
            return self.access_whole(cur, write, ordered, conflicts);
        }
        let i = self.split_at(a);
        let j = self.split_at(b);
        // Conflicts are deduplicated by (stream, position); past a few, through a set
        // (a linear scan made many-segment accesses quadratic).
        let mut seen: HashSet<(StreamIx, u64)> = HashSet::new();
        let mut push = |acc: &Access| {
            if acc.stream == cur.stream || ordered(acc.stream, acc.pos) {
                return;
            }
            let dup = if conflicts.len() < 8 {
                conflicts
                    .iter()
                    .any(|c| c.stream == acc.stream && c.pos == acc.pos)
            } else {
                if seen.is_empty() {
                    seen.extend(conflicts.iter().map(|c| (c.stream, c.pos)));
                }
                !seen.insert((acc.stream, acc.pos))
            };
            if !dup {
                conflicts.push(*acc);
            }
        };
        for seg in &self.segs[i..j] {
            for w in &seg.state.writes {
                push(w);
            }
            if write {
                for r in &seg.state.reads {
                    push(r);
                }
            }
        }
        if write {
            self.segs.drain(i + 1..j);
            self.segs[i].end = b;
            self.segs[i].state.writes.clear();
            self.segs[i].state.writes.push(cur);
            self.segs[i].state.reads.clear();
            self.coalesce(i.saturating_sub(1), i + 2);
        } else {
            for seg in &mut self.segs[i..j] {
                match seg.state.reads.iter_mut().find(|r| r.stream == cur.stream) {
                    Some(r) => *r = cur,
                    None => seg.state.reads.push(cur),
                }
            }
            self.coalesce(i.saturating_sub(1), j + 1);
        }
        if self.segs.len() > MAX_SEGMENTS {
            self.coarsen();
        }
    }

    /// Halves the number of segments: each pair merges, keeping per stream the latest
    /// write and the latest read (see the module comment).
    fn coarsen(&mut self) {
        let old = std::mem::take(&mut self.segs);
        let mut it = old.into_iter();
        while let Some(mut seg) = it.next() {
            if let Some(next) = it.next() {
                seg.end = next.end;
                merge_latest(&mut seg.state.writes, &next.state.writes);
                merge_latest(&mut seg.state.reads, &next.state.reads);
                // A read before a later write on its stream is covered by that write.
                let w = &seg.state.writes;
                seg.state
                    .reads
                    .retain(|r| !w.iter().any(|x| x.stream == r.stream && x.pos > r.pos));
            }
            self.segs.push(seg);
        }
    }

    /// The common case: one segment, and the access covers all of it.
    #[inline]
    fn access_whole(
        &mut self,
        cur: Access,
        write: bool,
        ordered: impl Fn(StreamIx, u64) -> bool,
        conflicts: &mut Conflicts,
    ) {
        let st = &mut self.segs[0].state;
        for w in &st.writes {
            if w.stream != cur.stream && !ordered(w.stream, w.pos) {
                conflicts.push(*w);
            }
        }
        if write {
            for r in &st.reads {
                if r.stream != cur.stream && !ordered(r.stream, r.pos) {
                    conflicts.push(*r);
                }
            }
            st.writes.clear();
            st.writes.push(cur);
            st.reads.clear();
        } else {
            match st.reads.iter_mut().find(|r| r.stream == cur.stream) {
                Some(r) => *r = cur,
                None => st.reads.push(cur),
            }
        }
    }

    /// Merges neighbouring segments with equal state among indices `[lo, hi)`, in one
    /// pass (one removal per merge would be quadratic over many segments).
    fn coalesce(&mut self, lo: usize, hi: usize) {
        let hi = hi.min(self.segs.len());
        if hi <= lo + 1 {
            return;
        }
        let mut w = lo;
        for r in lo + 1..hi {
            if self.segs[w].state == self.segs[r].state {
                self.segs[w].end = self.segs[r].end;
            } else {
                w += 1;
                if w != r {
                    self.segs.swap(w, r);
                }
            }
        }
        self.segs.drain(w + 1..hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(stream: u32, pos: u64) -> Access {
        Access {
            stream: StreamIx(stream),
            pos,
            site: 0,
        }
    }

    #[test]
    fn disjoint_writes_from_two_streams_do_not_conflict() {
        let mut sh = Shadow::new(100);
        let mut c = Conflicts::new();
        sh.access(0, 50, acc(1, 1), true, |_, _| false, &mut c);
        sh.access(50, 100, acc(2, 1), true, |_, _| false, &mut c);
        assert!(c.is_empty());
        assert_eq!(sh.segments(), 2);
        sh.access(40, 60, acc(3, 1), false, |_, _| false, &mut c);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn whole_accesses_keep_one_segment() {
        let mut sh = Shadow::new(64);
        let mut c = Conflicts::new();
        for p in 1..100 {
            sh.access(0, 64, acc(1, p), p % 3 == 0, |_, _| true, &mut c);
        }
        assert_eq!(sh.segments(), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn rewrite_merges_segments_back() {
        let mut sh = Shadow::new(64);
        let mut c = Conflicts::new();
        sh.access(8, 16, acc(1, 1), true, |_, _| true, &mut c);
        assert_eq!(sh.segments(), 3);
        sh.access(0, 64, acc(1, 2), true, |_, _| true, &mut c);
        assert_eq!(sh.segments(), 1);
    }

    #[test]
    fn many_row_writes_are_coarsened_and_no_race_is_lost() {
        let mut sh = Shadow::new(1 << 20);
        let mut c = Conflicts::new();
        for row in 0..64_000u64 {
            let stream = (row % 2) as u32 + 1;
            sh.access(
                row * 16,
                row * 16 + 16,
                acc(stream, row + 1),
                true,
                |_, _| false,
                &mut c,
            );
        }
        assert!(sh.segments() <= MAX_SEGMENTS, "{}", sh.segments());
        c.clear();
        sh.access(0, 1 << 20, acc(3, 1), false, |_, _| false, &mut c);
        // every stream that wrote still conflicts with the unordered read
        let mut streams: Vec<u32> = c.iter().map(|a| a.stream.0).collect();
        streams.sort_unstable();
        streams.dedup();
        assert_eq!(streams, [1, 2]);
        c.clear();
        // once ordered after both writers, nothing conflicts
        sh.access(
            0,
            1 << 20,
            acc(4, 1),
            false,
            |s, _| s != StreamIx(3),
            &mut c,
        );
        assert!(c.is_empty());
    }

    #[test]
    fn coalesce_in_one_pass_matches_pairwise_merging() {
        let mut sh = Shadow::new(64);
        let mut c = Conflicts::new();
        for k in 0..8u64 {
            sh.access(k * 8, k * 8 + 8, acc(1, 1), true, |_, _| true, &mut c);
        }
        assert_eq!(sh.segments(), 1, "equal neighbours merge");
        sh.access(8, 16, acc(2, 2), true, |_, _| true, &mut c);
        sh.access(24, 32, acc(2, 3), true, |_, _| true, &mut c);
        assert_eq!(sh.segments(), 5);
    }

    #[test]
    fn one_conflict_per_prior_access_even_across_segments() {
        let mut sh = Shadow::new(64);
        let mut c = Conflicts::new();
        sh.access(0, 64, acc(1, 1), true, |_, _| true, &mut c);
        sh.access(8, 16, acc(1, 2), false, |_, _| true, &mut c);
        sh.access(0, 64, acc(2, 1), false, |_, _| false, &mut c);
        assert_eq!(c.as_slice(), &[acc(1, 1)]);
    }
}
