//! Hazard kinds and records (SEMANTICS.md, "Hazards" and "Advice").

use crate::sites::SiteId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    UnsyncedFree,
    ReuseRace,
    UnsyncedAccess,
    HostReadBeforeCopy,
    HostWriteDuringCopy,
    RedundantRecordStream,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::UnsyncedFree,
        Kind::ReuseRace,
        Kind::UnsyncedAccess,
        Kind::HostReadBeforeCopy,
        Kind::HostWriteDuringCopy,
        Kind::RedundantRecordStream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::UnsyncedFree => "unsynced-free",
            Kind::ReuseRace => "reuse-race",
            Kind::UnsyncedAccess => "unsynced-access",
            Kind::HostReadBeforeCopy => "host-read-before-copy",
            Kind::HostWriteDuringCopy => "host-write-during-copy",
            Kind::RedundantRecordStream => "redundant-record-stream",
        }
    }

    pub fn severity(self) -> &'static str {
        match self {
            Kind::RedundantRecordStream => "advice",
            _ => "error",
        }
    }

    pub fn is_error(self) -> bool {
        !matches!(self, Kind::RedundantRecordStream)
    }
}

/// One distinct hazard. Streams are dense engine indices; the engine resolves them
/// (and the site ids) to the caller's handles and strings when describing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hazard {
    pub kind: Kind,
    pub count: u64,
    pub ptr: u64,
    pub nbytes: u64,
    pub alloc_stream: Option<u32>,
    pub use_stream: Option<u32>,
    pub other_stream: Option<u32>,
    pub alloc_site: SiteId,
    pub use_site: SiteId,
    pub free_site: SiteId,
    pub other_site: SiteId,
    pub other_ptr: Option<u64>,
    pub other_nbytes: Option<u64>,
    pub live: Option<bool>,
}

impl Hazard {
    pub fn new(kind: Kind, ptr: u64, nbytes: u64) -> Self {
        Hazard {
            kind,
            count: 1,
            ptr,
            nbytes,
            alloc_stream: None,
            use_stream: None,
            other_stream: None,
            alloc_site: 0,
            use_site: 0,
            free_site: 0,
            other_site: 0,
            other_ptr: None,
            other_nbytes: None,
            live: None,
        }
    }

    /// One report per distinct (kind, sites). Without any site, the storage and streams
    /// stand in for them, so unrelated site-less hazards are not merged.
    pub fn dedup_key(&self) -> DedupKey {
        let sites = [
            self.alloc_site,
            self.use_site,
            self.free_site,
            self.other_site,
        ];
        let anonymous = sites.iter().all(|&s| s == 0);
        DedupKey {
            kind: self.kind,
            sites,
            ptr: if anonymous { Some(self.ptr) } else { None },
            streams: if anonymous {
                Some((self.use_stream, self.other_stream))
            } else {
                None
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DedupKey {
    kind: Kind,
    sites: [SiteId; 4],
    ptr: Option<u64>,
    streams: Option<(Option<u32>, Option<u32>)>,
}
