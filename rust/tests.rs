//! Engine tests: SEMANTICS.md's worked example and the public scenarios as raw traces.

use crate::engine::{Engine, EngineError, Op};
use crate::hazard::Kind;

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
    assert_eq!((h.alloc_stream, h.use_stream), (Some(0), Some(1)));
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
    assert_eq!(kinds(&e), ["redundant-record-stream"]);
    assert_eq!(e.error_count(), 0);
}

#[test]
fn p5_record_on_allocation_stream_is_advice() {
    let mut e = Engine::new();
    e.alloc(X, N, D, 0).unwrap();
    e.record_stream(X + 8, D, 0).unwrap();
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
    assert_eq!(kinds(&e), ["unsynced-free"]);
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
    assert_eq!(e.hazards()[0].count, 5);
}

#[test]
fn bad_input_is_rejected_without_changing_state() {
    let mut e = p1_prefix();
    let before = e.stats();
    assert!(
        matches!(e.free(X + 8, 0), Err(EngineError::UnknownStorage(m)) if m.contains("interior"))
    );
    assert!(matches!(
        e.free(0x42, 0),
        Err(EngineError::UnknownStorage(_))
    ));
    assert!(matches!(
        e.access(X, 0, S, false, 0),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        e.access(X + N - 4, 8, S, false, 0),
        Err(EngineError::UnknownStorage(_))
    ));
    assert!(matches!(
        e.alloc(X + 64, 8, S, 0),
        Err(EngineError::UnknownStorage(_))
    ));
    assert!(matches!(
        e.alloc(u64::MAX, 8, S, 0),
        Err(EngineError::InvalidArgument(_))
    ));
    assert_eq!(e.stats(), before);
}

#[test]
fn virtual_streams_make_hazards_live_and_queries_prove_in_flight() {
    let mut e = p1_prefix();
    e.define_stream(S, Some("s"), true);
    e.free(X, 0).unwrap();
    assert_eq!(e.hazards()[0].live, Some(true));

    let mut e = p1_prefix();
    e.free(X, 0).unwrap();
    assert_eq!(e.hazards()[0].live, None);

    let mut e = p1_prefix();
    e.stream_query(S, false);
    e.free(X, 0).unwrap();
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
    assert_eq!(err.0, 3);
    assert_eq!(kinds(&e), ["unsynced-access"]);
    assert!(Op::decode([11, 0, 0, 0]).is_err());
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

/// A development probe, not a check: `cargo test --release timing_million_live --
/// --ignored --nocapture` prints the per-access cost with 1k and 1M live storages (the
/// benchmark with its ratios is benchmarks/bench_engine.py).
#[test]
#[ignore]
fn timing_million_live() {
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
                (1 + (x >> 40) % 4) as i128,
                false,
                0,
            )
            .unwrap();
        }
        eprintln!(
            "n={n}: {:.1} ns/access",
            t.elapsed().as_nanos() as f64 / m as f64
        );
    }
}
