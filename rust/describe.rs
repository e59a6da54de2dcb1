//! Hazards as sentences: the presentation of a verdict, kept out of the model.

use crate::clock::StreamIx;
use crate::engine::Engine;
use crate::hazard::{Hazard, Kind};
use crate::sites::{SiteId, NO_SITE};

/// A readable sentence naming everything in the hazard.
pub fn message(e: &Engine, h: &Hazard) -> String {
    let site = |id: SiteId| e.site(id).unwrap_or("<unknown site>").to_owned();
    let stream = |s: Option<StreamIx>| s.map_or("<none>".to_owned(), |s| e.stream_label(s));
    let storage = format!("storage {:#x} ({} bytes)", h.ptr, h.nbytes);
    let alloc = format!(
        "allocated on {} at {}",
        stream(h.alloc_stream),
        site(h.alloc_site)
    );
    let live = match h.live {
        Some(true) => " The use was still in flight (live).",
        _ => "",
    };
    let repeats = if h.count > 1 {
        format!(" Seen {} times.", h.count)
    } else {
        String::new()
    };
    let body = match h.kind {
        Kind::UnsyncedFree => {
            let judged = match h.other_ptr {
                Some(p) => format!(
                    " It was still uncovered at the next allocation on {} ({:#x}, {} bytes, at \
                     {}), which may receive the freed block.",
                    stream(h.other_stream),
                    p,
                    h.other_nbytes.unwrap_or(0),
                    site(h.other_site),
                ),
                None => " It was still uncovered at the end of tracking.".to_owned(),
            };
            format!(
                "{storage}, {alloc}, was freed at {} while its use on {} at {} was not ordered \
                 before the allocation stream's future work: no record_stream({}), no wait of \
                 {} on it, and no host synchronization.{judged}",
                site(h.free_site),
                stream(h.use_stream),
                site(h.use_site),
                stream(h.use_stream),
                stream(h.alloc_stream),
            )
        }
        Kind::ReuseRace => format!(
            "{storage}, {alloc}, freed at {} with an uncovered use on {} at {}, was \
             reallocated at {} on {} as {:#x} ({} bytes) before that use was known \
             complete: the new owner can overwrite bytes the use still reads.",
            site(h.free_site),
            stream(h.use_stream),
            site(h.use_site),
            site(h.other_site),
            stream(h.other_stream),
            h.other_ptr.unwrap_or(0),
            h.other_nbytes.unwrap_or(0),
        ),
        Kind::UnwaitedAllocation => format!(
            "{storage}, {alloc}, is used on {} at {} before {} was ordered after the \
             allocation: the block may come from an earlier owner whose work is still pending \
             on {} (the wait is needed even when there is no read dependency).",
            stream(h.use_stream),
            site(h.use_site),
            stream(h.use_stream),
            stream(h.alloc_stream),
        ),
        Kind::UnsyncedAccess if h.alloc_stream.is_none() => format!(
            "host memory {:#x} ({} bytes) is copied on {} at {} and on {} at {} with neither \
             copy ordered before the other, and at least one of them writes it (a \
             device-to-host copy).",
            h.ptr,
            h.nbytes,
            stream(h.use_stream),
            site(h.use_site),
            stream(h.other_stream),
            site(h.other_site),
        ),
        Kind::UnsyncedAccess => format!(
            "{storage}, {alloc}, is accessed on {} at {} and on {} at {} with neither \
             ordered before the other, and at least one of them writes.",
            stream(h.use_stream),
            site(h.use_site),
            stream(h.other_stream),
            site(h.other_site),
        ),
        Kind::HostReadBeforeCopy => format!(
            "host memory {:#x} ({} bytes) was read at {} before the non-blocking \
             device-to-host copy into it on {} at {} was known complete.",
            h.ptr,
            h.nbytes,
            site(h.other_site),
            stream(h.use_stream),
            site(h.use_site),
        ),
        Kind::HostWriteDuringCopy => format!(
            "pinned host memory {:#x} ({} bytes) was written at {} before the \
             non-blocking host-to-device copy from it on {} at {} was known complete.",
            h.ptr,
            h.nbytes,
            site(h.other_site),
            stream(h.use_stream),
            site(h.use_site),
        ),
        Kind::RedundantRecordStream => {
            let why = if h.free_site == NO_SITE {
                if h.use_stream == h.alloc_stream {
                    "it is the allocation stream, where frees are already stream-ordered".to_owned()
                } else {
                    "that stream was already recorded".to_owned()
                }
            } else {
                format!(
                    "by the free at {} every use on that stream was already covered by a \
                     wait or a synchronization (the record only delayed reuse)",
                    site(h.free_site)
                )
            };
            format!(
                "record_stream({}) at {} on {storage}, {alloc}, is redundant every time it \
                 ran: {why}.",
                stream(h.use_stream),
                site(h.use_site),
            )
        }
    };
    format!(
        "{} ({}): {body}{live}{repeats}",
        h.kind.name(),
        h.kind.severity()
    )
}
