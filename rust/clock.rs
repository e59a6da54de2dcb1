//! Vector clocks indexed by dense stream index; a missing entry is 0.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clock(Vec<u64>);

impl Clock {
    #[inline]
    pub fn get(&self, stream: u32) -> u64 {
        self.0.get(stream as usize).copied().unwrap_or(0)
    }

    #[inline]
    pub fn set(&mut self, stream: u32, value: u64) {
        let i = stream as usize;
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
        for (a, &b) in self.0.iter_mut().zip(other.0.iter()) {
            if b > *a {
                *a = b;
            }
        }
    }

    /// Does this clock cover position `pos` of `stream`?
    #[inline]
    pub fn covers(&self, stream: u32, pos: u64) -> bool {
        self.get(stream) >= pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_is_pointwise_max_and_grows() {
        let mut a = Clock::default();
        a.set(0, 5);
        let mut b = Clock::default();
        b.set(0, 3);
        b.set(2, 7);
        a.join(&b);
        assert_eq!((a.get(0), a.get(1), a.get(2), a.get(9)), (5, 0, 7, 0));
        assert!(a.covers(2, 7) && !a.covers(2, 8));
    }
}
