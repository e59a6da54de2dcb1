//! Per-storage shadow state for race detection (`unsynced-access`).
//!
//! The storage's bytes are split into segments; each keeps the last write and, per
//! stream, the latest read since that write (one entry per stream, never a list that
//! grows with the number of accesses). Segments split only where accesses start or end
//! and merge back when neighbours hold the same state, so a storage that is always
//! accessed whole stays one segment and the common case does no splitting at all.

use crate::sites::SiteId;
use smallvec::SmallVec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub stream: u32,
    pub pos: u64,
    pub site: SiteId,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    write: Option<Access>,
    reads: SmallVec<[Access; 2]>,
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
        ordered: impl Fn(u32, u64) -> bool,
        conflicts: &mut Conflicts,
    ) {
        if self.segs.len() == 1 && a == 0 && b == self.segs[0].end {
            return self.access_whole(cur, write, ordered, conflicts);
        }
        let i = self.split_at(a);
        let j = self.split_at(b);
        let mut push = |acc: &Access| {
            if acc.stream != cur.stream
                && !conflicts
                    .iter()
                    .any(|c| c.stream == acc.stream && c.pos == acc.pos)
                && !ordered(acc.stream, acc.pos)
            {
                conflicts.push(*acc);
            }
        };
        for seg in &self.segs[i..j] {
            if let Some(w) = &seg.state.write {
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
            self.segs[i].state.write = Some(cur);
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
    }

    /// The common case: one segment, and the access covers all of it.
    #[inline]
    fn access_whole(
        &mut self,
        cur: Access,
        write: bool,
        ordered: impl Fn(u32, u64) -> bool,
        conflicts: &mut Conflicts,
    ) {
        let st = &mut self.segs[0].state;
        if let Some(w) = &st.write {
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
            st.write = Some(cur);
            st.reads.clear();
        } else {
            match st.reads.iter_mut().find(|r| r.stream == cur.stream) {
                Some(r) => *r = cur,
                None => st.reads.push(cur),
            }
        }
    }

    /// Merges neighbouring segments with equal state among indices `[lo, hi)`.
    fn coalesce(&mut self, lo: usize, hi: usize) {
        let mut k = lo;
        let mut hi = hi.min(self.segs.len());
        while k + 1 < hi {
            if self.segs[k].state == self.segs[k + 1].state {
                self.segs[k].end = self.segs[k + 1].end;
                self.segs.remove(k + 1);
                hi -= 1;
            } else {
                k += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(stream: u32, pos: u64) -> Access {
        Access {
            stream,
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
    fn one_conflict_per_prior_access_even_across_segments() {
        let mut sh = Shadow::new(64);
        let mut c = Conflicts::new();
        sh.access(0, 64, acc(1, 1), true, |_, _| true, &mut c);
        sh.access(8, 16, acc(1, 2), false, |_, _| true, &mut c);
        sh.access(0, 64, acc(2, 1), false, |_, _| false, &mut c);
        assert_eq!(c.as_slice(), &[acc(1, 1)]);
    }
}
