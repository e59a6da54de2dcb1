//! Hazard kinds and records (docs/SEMANTICS.md, "Hazards" and "Advice").
//!
//! `Kind` is the one list of hazard kinds: its name, severity, title, fix hint and the
//! roles of its sites are defined here and exported to Python as `_core.KINDS`; nothing
//! else lists the kinds by hand.

use crate::clock::StreamIx;
use crate::sites::SiteId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    UnsyncedFree,
    ReuseRace,
    UnwaitedAllocation,
    UnsyncedAccess,
    HostReadBeforeCopy,
    HostWriteDuringCopy,
    RedundantRecordStream,
}

/// Which hazard field a report line shows: (label, site field, stream field).
pub type Role = (&'static str, &'static str, Option<&'static str>);

impl Kind {
    /// Every kind, in report order (errors first, then advice).
    pub const ALL: [Kind; 7] = [
        Kind::UnsyncedFree,
        Kind::ReuseRace,
        Kind::UnwaitedAllocation,
        Kind::UnsyncedAccess,
        Kind::HostReadBeforeCopy,
        Kind::HostWriteDuringCopy,
        Kind::RedundantRecordStream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::UnsyncedFree => "unsynced-free",
            Kind::ReuseRace => "reuse-race",
            Kind::UnwaitedAllocation => "unwaited-allocation",
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

    /// One line saying what went wrong.
    pub fn title(self) -> &'static str {
        match self {
            Kind::UnsyncedFree => "storage freed while another stream may still use it",
            Kind::ReuseRace => "freed block handed to a new allocation under an unfinished use",
            Kind::UnwaitedAllocation => {
                "fresh storage used on another stream before that stream waited for its allocation"
            }
            Kind::UnsyncedAccess => {
                "two streams access the same bytes, at least one writes, with no ordering"
            }
            Kind::HostReadBeforeCopy => {
                "host reads memory a non-blocking device-to-host copy is still writing"
            }
            Kind::HostWriteDuringCopy => {
                "host writes pinned memory a non-blocking host-to-device copy still reads"
            }
            Kind::RedundantRecordStream => "record_stream that changes nothing but delays reuse",
        }
    }

    /// The generic fix; reports name the real tensor and stream where they know them.
    pub fn hint(self) -> &'static str {
        match self {
            Kind::UnsyncedFree => {
                "call t.record_stream(s) for the using stream s before the free, or make the \
                 allocation stream wait for s (alloc_stream.wait_stream(s)) before its next \
                 allocation, or synchronize s first."
            }
            Kind::ReuseRace => {
                "its cause is the unsynced-free of the first storage: fixing that free removes \
                 it. Until then the new owner may overwrite bytes the old use still reads."
            }
            Kind::UnwaitedAllocation => {
                "make the using stream wait for the allocation stream \
                 (s.wait_stream(alloc_stream)) before the fresh tensor's first use on it: the \
                 block may still be in use by its previous owner's pending work."
            }
            Kind::UnsyncedAccess => {
                "order the two streams: reader.wait_stream(writer) (or an event record/wait) \
                 before the second access."
            }
            Kind::HostReadBeforeCopy => {
                "synchronize the copy's stream, or an event recorded after the copy, before \
                 reading the host tensor."
            }
            Kind::HostWriteDuringCopy => {
                "synchronize the copy's stream (or an event recorded after the copy) before \
                 writing the pinned source."
            }
            Kind::RedundantRecordStream => {
                "drop the record_stream call: each time it ran, the stream was the allocation \
                 stream, already recorded, or already ordered by a wait or sync."
            }
        }
    }

    /// The sites a report shows for this kind, in order.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Kind::UnsyncedFree => &[
                ("allocated", "alloc_site", Some("alloc_stream_name")),
                ("used", "use_site", Some("use_stream_name")),
                ("freed", "free_site", None),
                (
                    "judged at allocation",
                    "other_site",
                    Some("other_stream_name"),
                ),
            ],
            Kind::ReuseRace => &[
                ("allocated", "alloc_site", Some("alloc_stream_name")),
                ("used", "use_site", Some("use_stream_name")),
                ("freed", "free_site", None),
                ("reallocated", "other_site", Some("other_stream_name")),
            ],
            Kind::UnwaitedAllocation => &[
                ("allocated", "alloc_site", Some("alloc_stream_name")),
                ("used", "use_site", Some("use_stream_name")),
            ],
            Kind::UnsyncedAccess => &[
                ("allocated", "alloc_site", Some("alloc_stream_name")),
                ("earlier", "other_site", Some("other_stream_name")),
                ("racing", "use_site", Some("use_stream_name")),
            ],
            Kind::HostReadBeforeCopy => &[
                ("copy", "use_site", Some("use_stream_name")),
                ("host read", "other_site", None),
            ],
            Kind::HostWriteDuringCopy => &[
                ("copy", "use_site", Some("use_stream_name")),
                ("host write", "other_site", None),
            ],
            Kind::RedundantRecordStream => &[
                ("allocated", "alloc_site", Some("alloc_stream_name")),
                ("recorded", "use_site", Some("use_stream_name")),
                ("freed", "free_site", None),
            ],
        }
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
    pub alloc_stream: Option<StreamIx>,
    pub use_stream: Option<StreamIx>,
    pub other_stream: Option<StreamIx>,
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
    ///
    /// For `unsynced-free` the allocation that triggered the verdict (`other_*`) is not
    /// part of the key: one mistake is one report, whichever allocation revealed it.
    pub fn dedup_key(&self) -> DedupKey {
        let judged_at = self.kind == Kind::UnsyncedFree;
        let other_site = if judged_at { 0 } else { self.other_site };
        let sites = [self.alloc_site, self.use_site, self.free_site, other_site];
        let anonymous = sites.iter().all(|&s| s == 0);
        let other_stream = if judged_at { None } else { self.other_stream };
        DedupKey {
            kind: self.kind,
            sites,
            ptr: if anonymous { Some(self.ptr) } else { None },
            streams: if anonymous {
                Some((self.use_stream, other_stream))
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
    streams: Option<(Option<StreamIx>, Option<StreamIx>)>,
}
