//! Engine tests: docs/SEMANTICS.md's worked examples and the public scenarios as raw traces.

use crate::clock::StreamIx;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::hazard::Kind;
use crate::op::Op;

const D: i128 = 0;
const S: i128 = 1;
const S2: i128 = 2;
const N: u64 = 1 << 20;
const X: u64 = 0x10_0000;

fn kinds(e: &Engine) -> Vec<&'static str> {
    e.hazards().iter().map(|h| h.kind.name()).collect()
}

/// P1's prefix: x on D, s waits on D, x read on s.
fn p1_prefix() -> Engine {
    let mut e = Engine::new();
    e.alloc(X, N, D, 0).unwrap();
    e.access(X, N, D, true, 0).unwrap();
    e.stream_wait(S, D);
    e.access(X, N, S, false, 0).unwrap();
    e
}

#[test]
fn p1_free_after_side_read_is_unsynced_free_then_reuse_race() {
    let mut e = p1_prefix();
    e.free(X, 0).unwrap();
    e.alloc(X, N, D, 0).unwrap();
    assert_eq!(kinds(&e), ["unsynced-free", "reuse-race"]);
    let h = &e.hazards()[0];
    assert_eq!(
        (h.alloc_stream, h.use_stream),
        (Some(StreamIx(0)), Some(StreamIx(1)))
    );
}

#[test]
fn p2_record_stream_makes_the_free_safe() {
    let mut e = p1_prefix();
    e.record_stream(X, S, 0).unwrap();
    e.free(X, 0).unwrap();
    e.alloc(X, N, D, 0).unwrap();
    assert!(e.hazards().is_empty());
}

#[test]
fn p3_wait_back_makes_the_free_safe_and_p4_adds_redundant_advice() {
    let mut e = p1_prefix();
    e.stream_wait(D, S);
    e.free(X, 0).unwrap();
    assert!(e.hazards().is_empty());

    let mut e = p1_prefix();
    e.stream_wait(D, S);
    e.record_stream(X, S, 0).unwrap();
    e.free(X, 0).unwrap();
    assert!(e.hazards().is_empty(), "advice waits for flush");
    e.flush();
    assert_eq!(kinds(&e), ["redundant-record-stream"]);
    assert_eq!(e.error_count(), 0);
}

#[test]
fn p5_record_on_allocation_stream_is_advice() {
    let mut e = Engine::new();
    e.alloc(X, N, D, 0).unwrap();
    e.record_stream(X + 8, D, 0).unwrap();
    e.flush();
    assert_eq!(kinds(&e), ["redundant-record-stream"]);
}

#[test]
fn host_sync_of_the_use_stream_covers_the_use() {
    let mut e = p1_prefix();
    e.stream_synchronize(S);
    e.free(X, 0).unwrap();
    e.alloc(X, N, D, 0).unwrap();
    assert!(e.hazards().is_empty());
}

#[test]
fn p6_side_producer_main_consumer() {
    let mut e = Engine::new();
    e.alloc(X, N, S, 0).unwrap();
    e.access(X, N, S, true, 0).unwrap();
    e.stream_wait(D, S);
    e.access(X, N, D, false, 0).unwrap();
    e.free(X, 0).unwrap();
    assert!(e.hazards().is_empty(), "judged at the next allocation on s");
    e.alloc(X + N, N, S, 0).unwrap();
    assert_eq!(kinds(&e), ["unsynced-free"]);
    assert_eq!(e.hazards()[0].other_ptr, Some(X + N));
}

#[test]
fn p9_read_without_wait_is_unsynced_access() {
    let mut e = Engine::new();
    e.alloc(X, N, D, 0).unwrap();
    e.access(X, N, D, true, 0).unwrap();
    e.access(X, N, S, false, 0).unwrap();
    assert_eq!(kinds(&e), ["unsynced-access"]);
}

#[test]
fn disjoint_slices_written_by_two_streams_do_not_race() {
    let mut e = Engine::new();
    e.alloc(X, N, D, 0).unwrap();
    e.access(X, N / 2, S, true, 0).unwrap();
    e.access(X + N / 2, N / 2, S2, true, 0).unwrap();
    assert!(e.hazards().is_empty());
    e.access(X + N / 2 - 8, 16, D, false, 0).unwrap();
    assert_eq!(kinds(&e), ["unsynced-access", "unsynced-access"]);
}

/// A re-recorded event carries only its latest record's clock (the engine reuses the
/// event's clock buffer, so a stale entry of the earlier record must not survive).
#[test]
fn a_re_recorded_event_forgets_its_earlier_record() {
    const S3: i128 = 3;
    let mut e = Engine::new();
    e.alloc(X, N, D, 0).unwrap();
    e.stream_wait(S3, D);
    e.stream_wait(S2, D);
    e.access(X, N, S3, true, 0).unwrap(); // S3's write of x; D never waits for it
    e.stream_wait(S2, S3);
    e.event_record(7, S2); // covers S3's write
    e.event_record(7, S); // re-recorded on S (new, its clock shorter), which never waited for S3
    e.event_wait(7, D);
    e.access(X, N, D, false, 0).unwrap();
    assert_eq!(kinds(&e), ["unsynced-access"]);
    // the earlier record, had it survived, would have ordered D after the write
    let mut f = Engine::new();
    f.alloc(X, N, D, 0).unwrap();
    f.stream_wait(S3, D);
    f.access(X, N, S3, true, 0).unwrap();
    f.stream_wait(S2, S3);
    f.event_record(7, S2);
    f.event_wait(7, D);
    f.access(X, N, D, false, 0).unwrap();
    assert!(f.hazards().is_empty());
}

#[test]
fn event_ordering_is_transitive_and_unrecorded_wait_is_noop() {
    let mut e = Engine::new();
    e.alloc(X, N, D, 0).unwrap();
    e.access(X, N, S, true, 0).unwrap();
    e.event_wait(7, S2); // never recorded: no-op
    e.event_record(7, S);
    e.stream_wait(S2, S);
    e.stream_wait(D, S2);
    e.access(X, N, D, false, 0).unwrap();
    assert!(e.hazards().is_empty());
    e.free(X, 0).unwrap();
    assert!(e.hazards().is_empty());
}

#[test]
fn rerecording_an_event_replaces_its_clock() {
    let mut e = Engine::new();
    e.alloc(X, N, D, 0).unwrap();
    e.event_record(9, S);
    e.access(X, N, S, true, 0).unwrap();
    e.event_wait(9, D);
    e.access(X, N, D, false, 0).unwrap();
    assert_eq!(kinds(&e), ["unsynced-access"]);
    e.event_record(9, S);
    e.event_wait(9, D);
    e.access(X, N, D, true, 0).unwrap();
    assert_eq!(e.hazards().len(), 1);
}

#[test]
fn dedup_counts_repeats_by_sites() {
    let mut e = Engine::new();
    let (a, u, f) = (e.intern("a.py:1"), e.intern("a.py:2"), e.intern("a.py:3"));
    for i in 0..5u64 {
        let p = X + i * N;
        e.alloc(p, N, D, a).unwrap();
        e.stream_wait(S, D);
        e.access(p, N, S, false, u).unwrap();
        e.free(p, f).unwrap();
    }
    assert_eq!(kinds(&e), ["unsynced-free"]);
    assert_eq!(e.hazards()[0].count, 4, "the last free is still pending");
    e.flush();
    assert_eq!(e.hazards()[0].count, 5);
}

#[test]
fn bad_input_is_rejected_without_changing_state() {
    let mut e = p1_prefix();
    let before = e.stats();
    assert!(
        matches!(e.free(X + 8, 0), Err(EngineError::InteriorFree { ptr, base }) if (ptr, base) == (X + 8, X))
    );
    assert!(matches!(
        e.free(0x42, 0),
        Err(EngineError::UnknownFree { .. })
    ));
    assert!(matches!(
        e.access(X, 0, S, false, 0),
        Err(EngineError::BadSize { nbytes: 0, .. })
    ));
    assert!(matches!(
        e.access(X + N - 4, 8, S, false, 0),
        Err(EngineError::PastEnd { .. })
    ));
    assert!(matches!(
        e.alloc(X + 64, 8, S, 0),
        Err(EngineError::Overlap { op: "alloc", .. })
    ));
    assert!(matches!(
        e.alloc(u64::MAX, 8, S, 0),
        Err(EngineError::Overflow { .. })
    ));
    assert_eq!(e.stats(), before);
}

#[test]
fn virtual_streams_make_hazards_live_and_queries_prove_in_flight() {
    let mut e = p1_prefix();
    e.define_stream(S, Some("s"), true);
    e.free(X, 0).unwrap();
    e.flush();
    assert_eq!(e.hazards()[0].live, Some(true));

    let mut e = p1_prefix();
    e.free(X, 0).unwrap();
    e.flush();
    assert_eq!(e.hazards()[0].live, None);

    let mut e = p1_prefix();
    e.stream_query(S, false);
    e.free(X, 0).unwrap();
    e.flush();
    assert_eq!(e.hazards()[0].live, Some(true));
}

#[test]
fn host_copy_hazards() {
    let mut e = Engine::new();
    let h = 0x7000_0000;
    e.copy_to_host(h, 64, S, 0).unwrap();
    e.host_access(h, 64, false, 0).unwrap();
    assert_eq!(kinds(&e), ["host-read-before-copy"]);
    e.stream_synchronize(S);
    e.host_access(h, 64, false, 0).unwrap();
    assert_eq!(e.hazards().len(), 1);

    e.copy_from_host(h, 64, S, 0).unwrap();
    e.host_access(h, 8, true, 0).unwrap();
    assert_eq!(e.hazards()[1].kind, Kind::HostWriteDuringCopy);
    e.copy_from_host(h + 64, 64, S, 0).unwrap();
    e.host_release(h + 64, 64).unwrap();
    e.host_access(h + 64, 64, true, 0).unwrap();
    assert_eq!(e.hazards().len(), 2);
}

#[test]
fn bulk_rows_stop_at_the_bad_row() {
    let mut e = Engine::new();
    let rows = vec![
        [0, X as i64, N as i64, 0],
        [2, X as i64, N as i64, 0],
        [1, X as i64, N as i64, 1],
        [3, 0x99, 0, 0],
        [10, 0, 0, 0],
    ];
    let err = e.apply_rows(rows.into_iter()).unwrap_err();
    assert!(matches!(err, EngineError::Row { row: 3, .. }));
    assert_eq!(err.class(), crate::ErrorClass::UnknownStorage);
    assert_eq!(kinds(&e), ["unsynced-access"]);
    assert!(Op::decode([13, 0, 0, 0]).is_err());
    assert_eq!(Op::decode([12, 0, 0, 0]), Ok(Op::Flush));
    assert!(Op::decode([0, 1, 0, 0]).is_err());
}

#[test]
fn many_freed_ranges_stay_bounded_once_synced() {
    let mut e = Engine::new();
    for i in 0..10_000u64 {
        let p = X + i * 4096;
        e.alloc(p, 4096, D, 0).unwrap();
        e.access(p, 4096, S, false, 0).unwrap();
        e.free(p, 0).unwrap();
        if i % 100 == 0 {
            e.device_synchronize();
        }
    }
    e.device_synchronize();
    e.alloc(1, 1, D, 0).unwrap();
    e.free(1, 0).unwrap();
    assert!(e.stats().freed_tracked <= 2048, "{:?}", e.stats());
}

// ----- version 2 of the model -----------------------------------------------------------

#[test]
fn a_free_is_judged_at_the_next_allocation_on_its_stream_and_names_it() {
    let mut e = p1_prefix();
    e.free(X, 0).unwrap();
    assert_eq!(e.stats().pending_frees, 1);
    e.alloc(X + 2 * N, N, S, 0).unwrap(); // another stream: not a verdict
    assert!(e.hazards().is_empty());
    let z = e.intern("z.py:9");
    e.alloc(X + 4 * N, 8, D, z).unwrap();
    assert_eq!(kinds(&e), ["unsynced-free"]);
    let h = &e.hazards()[0];
    assert_eq!(
        (h.other_ptr, h.other_nbytes, h.other_site, h.other_stream),
        (Some(X + 4 * N), Some(8), z, Some(StreamIx(0)))
    );
    assert_eq!(e.stats().pending_frees, 0);
}

#[test]
fn a_use_covered_before_the_next_allocation_makes_the_free_safe() {
    for cover in 0..3 {
        let mut e = p1_prefix();
        e.free(X, 0).unwrap();
        match cover {
            0 => e.stream_wait(D, S),
            1 => e.stream_synchronize(S),
            _ => e.device_synchronize(),
        }
        e.alloc(X, N, D, 0).unwrap();
        e.flush();
        assert!(e.hazards().is_empty(), "cover {cover}: {:?}", kinds(&e));
    }
}

#[test]
fn flush_judges_what_is_still_pending() {
    let mut e = p1_prefix();
    e.free(X, 0).unwrap();
    e.flush();
    assert_eq!(kinds(&e), ["unsynced-free"]);
    assert_eq!(e.hazards()[0].other_ptr, None);
}

/// P13: the producer stream s allocates each batch; the consumer D reads it; the
/// previous batch is freed with its D use uncovered, and s waits on D before the next
/// allocation. Without that wait: unsynced-free.
fn prefetcher(wait: bool) -> Engine {
    let mut e = Engine::new();
    let (a, u, f) = (e.intern("p.py:1"), e.intern("p.py:2"), e.intern("p.py:3"));
    let mut cur: Option<u64> = None;
    for i in 0..4u64 {
        let nxt = X + i * N;
        e.alloc(nxt, N, S, a).unwrap();
        e.access(nxt, N, S, true, a).unwrap();
        e.stream_wait(D, S);
        if let Some(prev) = cur.replace(nxt) {
            e.free(prev, f).unwrap();
        }
        if wait {
            e.stream_wait(S, D);
        }
        e.access(nxt, N, D, false, u).unwrap();
    }
    e.stream_wait(S, D);
    e.free(cur.unwrap(), 0).unwrap();
    e.flush();
    e
}

#[test]
fn p13_prefetcher_waiting_before_reuse_is_clean_and_without_the_wait_is_not() {
    assert!(
        prefetcher(true).hazards().is_empty(),
        "{:?}",
        kinds(&prefetcher(true))
    );
    assert_eq!(kinds(&prefetcher(false)), ["unsynced-free"]);
}

#[test]
fn p14_fresh_buffer_on_a_side_stream_without_a_wait_is_unwaited_allocation() {
    let run = |wait: bool| {
        let mut e = Engine::new();
        e.alloc(X, N, D, 0).unwrap();
        e.access(X, N, D, true, 0).unwrap();
        e.access(X, N, D, false, 0).unwrap();
        e.free(X, 0).unwrap();
        e.alloc(X, N, D, 0).unwrap(); // empty(): no write
        if wait {
            e.stream_wait(S, D);
        }
        e.access(X, N, S, true, 0).unwrap();
        e.flush();
        e
    };
    assert_eq!(kinds(&run(false)), ["unwaited-allocation"]);
    let e = run(false);
    let h = &e.hazards()[0];
    assert_eq!(
        (h.alloc_stream, h.use_stream),
        (Some(StreamIx(0)), Some(StreamIx(1)))
    );
    assert!(run(true).hazards().is_empty());
}

#[test]
fn a_race_with_the_fill_is_reported_as_unsynced_access_only() {
    let mut e = Engine::new();
    e.alloc(X, 64, D, 0).unwrap();
    e.access(X, 64, D, true, 0).unwrap();
    e.alloc(X + 64, 64, D, 0).unwrap();
    e.access(X + 64, 64, D, true, 0).unwrap(); // its fill on D
    e.access(X + 64, 64, S, false, 0).unwrap();
    assert_eq!(kinds(&e), ["unsynced-access"]);
}

#[test]
fn an_adopted_storage_is_not_judged_by_unwaited_allocation_and_takes_no_verdicts() {
    let mut e = p1_prefix();
    e.free(X, 0).unwrap();
    e.adopt(X, N, D, 0).unwrap(); // over the freed range, on D: no verdict, no reuse
    e.access(X, N, S, false, 0).unwrap();
    assert!(e.hazards().is_empty());
    assert_eq!(e.stats().freed_tracked, 0);
    assert!(matches!(
        e.adopt(X + 8, 8, D, 0),
        Err(EngineError::Overlap { op: "adopt", .. })
    ));
    e.flush();
    assert_eq!(kinds(&e), ["unsynced-free"]);
}

#[test]
fn p15_pinned_buffer_refilled_while_another_stream_copies_out_of_it() {
    let h = 0x7000_0000;
    let run = |wait_back: bool| {
        let mut e = Engine::new();
        e.copy_to_host(h, 64, S, 0).unwrap();
        e.stream_wait(S2, S);
        e.copy_from_host(h, 64, S2, 0).unwrap();
        if wait_back {
            e.stream_wait(S, S2);
        }
        e.copy_to_host(h, 64, S, 0).unwrap();
        e
    };
    assert_eq!(kinds(&run(false)), ["unsynced-access"]);
    let e = run(false);
    let hz = &e.hazards()[0];
    assert_eq!(
        (hz.use_stream, hz.other_stream, hz.alloc_stream),
        (Some(StreamIx(0)), Some(StreamIx(1)), None)
    );
    assert!(run(true).hazards().is_empty());
}

#[test]
fn p16_offload_and_reload_on_one_stream_is_ordered() {
    let mut e = Engine::new();
    let h = 0x7000_0000;
    e.copy_to_host(h, 64, S, 0).unwrap();
    e.copy_from_host(h, 64, S, 0).unwrap();
    assert!(e.hazards().is_empty());
    e.copy_from_host(h + 64, 64, S, 0).unwrap();
    e.copy_from_host(h + 64, 64, S2, 0).unwrap(); // two reads never race
    assert!(e.hazards().is_empty());
}

#[test]
fn p18_advice_only_for_a_site_redundant_every_time() {
    let run = |sync_last: bool, iters: u64| {
        let mut e = Engine::new();
        let rec = e.intern("p.py:7");
        for i in 0..iters {
            let p = X + i * N;
            e.alloc(p, N, S, 0).unwrap();
            e.access(p, N, S, true, 0).unwrap();
            e.stream_wait(D, S);
            e.access(p, N, D, false, 0).unwrap();
            e.record_stream(p, D, rec).unwrap();
            if sync_last && i + 1 == iters {
                e.device_synchronize();
            }
            e.free(p, 0).unwrap();
        }
        e.flush();
        e
    };
    assert!(
        run(true, 4).hazards().is_empty(),
        "needed three times, redundant once"
    );
    let e = run(true, 1);
    assert_eq!(kinds(&e), ["redundant-record-stream"]);
}

#[test]
fn reuse_across_virtual_streams_is_not_a_reuse_race() {
    let run = |virtual_streams: bool, realloc_on: i128| {
        let mut e = p1_prefix();
        e.define_stream(D, None, virtual_streams);
        e.define_stream(S, None, virtual_streams);
        e.define_stream(S2, None, virtual_streams);
        e.free(X, 0).unwrap();
        e.alloc(X, N, realloc_on, 0).unwrap();
        e.hazards().iter().any(|h| h.kind == Kind::ReuseRace)
    };
    assert!(!run(true, S2), "the CPU allocator's cross-stream reuse");
    assert!(run(true, D), "same-stream reuse still races");
    assert!(run(false, S2));
}

/// A development probe, not a check: `cargo test --release timing_million_live --
/// --ignored --nocapture` prints the per-access cost with 1k and 1M live storages, each
/// storage read by 1 to 4 streams (from 3, its uses spill out of the slot to the heap;
/// the benchmark with its ratios is benchmarks/bench_engine.py).
#[test]
#[ignore]
fn timing_million_live() {
    for &k in &[1u64, 2, 3, 4] {
        for &n in &[1000u64, 1_000_000] {
            let mut e = Engine::new();
            for i in 0..n {
                e.alloc(0x1000_0000 + i * 8192, 4096, (1 + (i & 3)) as i128, 0)
                    .unwrap();
            }
            let mut x: u64 = 12345;
            let t = std::time::Instant::now();
            let m = 2_000_000u64;
            for _ in 0..m {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = x % n;
                e.access(
                    0x1000_0000 + i * 8192,
                    4096,
                    (1 + ((i & 3) + (x >> 40) % k) % 4) as i128,
                    false,
                    0,
                )
                .unwrap();
            }
            eprintln!(
                "streams per storage {k}, n={n}: {:.1} ns/access",
                t.elapsed().as_nanos() as f64 / m as f64
            );
        }
    }
}

/// A development probe, not a check: replays the bench_engine traces dumped as raw
/// little-endian int64 rows to `$ESPER_TRACE_DIR/{small,large}_{prefill,work}.bin`
/// (`cargo test --release timing_bulk_trace -- --ignored --nocapture`); prints ns/event.
#[test]
#[ignore]
fn timing_bulk_trace() {
    let Ok(dir) = std::env::var("ESPER_TRACE_DIR") else {
        eprintln!("set ESPER_TRACE_DIR");
        return;
    };
    let load = |name: &str| -> Vec<[i64; 4]> {
        let bytes = std::fs::read(format!("{dir}/{name}.bin")).unwrap();
        bytes
            .chunks_exact(32)
            .map(|r| {
                let c = |i: usize| i64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().unwrap());
                [c(0), c(1), c(2), c(3)]
            })
            .collect()
    };
    let names = std::env::var("ESPER_TRACE_NAMES").unwrap_or("small,large".into());
    for _ in 0..3 {
        for name in names.split(',') {
            let (prefill, work) = (
                load(&format!("{name}_prefill")),
                load(&format!("{name}_work")),
            );
            let mut e = Engine::new();
            e.apply_rows(prefill.iter().copied()).unwrap();
            let ns = timed_rows(&mut e, &work);
            eprintln!("{name}: {ns:.1} ns/event, {} hazards", e.hazards().len());
        }
    }
}

#[inline(never)]
fn timed_rows(e: &mut Engine, work: &[[i64; 4]]) -> f64 {
    let t = std::time::Instant::now();
    e.apply_rows(work.iter().copied()).unwrap();
    t.elapsed().as_nanos() as f64 / work.len() as f64
}

/// Streams whose handles share a slot of the engine's recent-stream cache keep their own
/// positions and clocks: two of them in alternation, with and without a wait between,
/// give exactly the verdicts of unrelated handles. The pairs include -1 and 2**64 - 1,
/// distinct handles with the same 64 bits.
#[test]
fn streams_sharing_a_cache_slot_keep_their_own_order() {
    use crate::engine::order::recent_slot;
    // the next handle after `a` with the same slot (whatever the cache's size)
    let partner = |a: i128| {
        (a + 1..)
            .find(|&b| recent_slot(b) == recent_slot(a))
            .unwrap()
    };
    for (a, b) in [
        (1i128, partner(1)),
        (0x7f00_0000_0000, partner(0x7f00_0000_0000)),
        (-1, i128::from(u64::MAX)),
    ] {
        assert_eq!(
            recent_slot(a),
            recent_slot(b),
            "{a:#x} and {b:#x} share a slot"
        );
        let mut e = Engine::new();
        // a writes x; b reads x without waiting: a race
        e.alloc(X, N, a, 0).unwrap();
        e.access(X, N, a, true, 0).unwrap();
        e.access(X, N, b, false, 0).unwrap();
        assert_eq!(kinds(&e), ["unsynced-access"], "handles {a:#x}, {b:#x}");
        let h = &e.hazards()[0];
        assert_eq!(
            (
                e.stream_handle(h.use_stream.unwrap()),
                e.stream_handle(h.other_stream.unwrap())
            ),
            (b, a)
        );
        // the same after b waits a: ordered, and still ordered in alternation
        let mut e = Engine::new();
        e.alloc(X, N, a, 0).unwrap();
        e.access(X, N, a, true, 0).unwrap();
        e.stream_wait(b, a);
        e.access(X, N, b, false, 0).unwrap();
        for _ in 0..3 {
            e.access(X, N, a, false, 0).unwrap();
            e.access(X, N, b, false, 0).unwrap();
        }
        assert!(e.hazards().is_empty(), "handles {a:#x}, {b:#x}");
        assert_eq!(e.stats().streams, 2);
    }
}
