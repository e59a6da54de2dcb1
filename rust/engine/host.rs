//! Host memory: non-blocking copies (copy against copy on pinned memory), host accesses
//! and releases.

use super::*;

impl Engine {
    // ----- host memory ---------------------------------------------------------------

    pub(super) fn copy(
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
        let clock = &self.streams[s.ix()].clock;
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
}
