//! Vector clocks indexed by dense stream index; a missing entry is 0.

/// A stream's dense index in the engine (not the caller's handle, not a site id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamIx(pub u32);

impl StreamIx {
    #[inline]
    pub fn ix(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Clock(Vec<u64>);

impl Clone for Clock {
    fn clone(&self) -> Self {
        Clock(self.0.clone())
    }

    /// Reuses this clock's buffer (a derived `Clone` would allocate a new one).
    fn clone_from(&mut self, source: &Self) {
        self.0.clone_from(&source.0);
    }
}

impl Clock {
    #[inline]
    pub fn get(&self, stream: StreamIx) -> u64 {
        self.0.get(stream.ix()).copied().unwrap_or(0)
    }

    #[inline]
    pub fn set(&mut self, stream: StreamIx, value: u64) {
        let i = stream.ix();
        if i >= self.0.len() {
            self.0.resize(i + 1, 0);
        }
        self.0[i] = value;
    }

    /// Pointwise maximum with `other`.
    pub fn join(&mut self, other: &Clock) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        // branch-free (a data-dependent branch per entry mispredicts often at 32+
        // streams)
        for (a, &b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = (*a).max(b);
        }
    }

    /// Does this clock cover position `pos` of `stream`?
    #[inline]
    pub fn covers(&self, stream: StreamIx, pos: u64) -> bool {
        self.get(stream) >= pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_is_pointwise_max_and_grows() {
        let mut a = Clock::default();
        a.set(StreamIx(0), 5);
        let mut b = Clock::default();
        b.set(StreamIx(0), 3);
        b.set(StreamIx(2), 7);
        a.join(&b);
        let g = |i| a.get(StreamIx(i));
        assert_eq!((g(0), g(1), g(2), g(9)), (5, 0, 7, 0));
        assert!(a.covers(StreamIx(2), 7) && !a.covers(StreamIx(2), 8));
    }
}
