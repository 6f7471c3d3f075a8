//! Benchmark: the pure core under `simulate`, on the whitepaper nurture blueprint.
//!
//! `cargo bench -p flowmark-sim --bench simulate -- [CONTACTS]` prints one JSON object:
//! transitions and steps per second of wall time on one thread, and the peak of live heap
//! bytes during the simulation per contact (a counting allocator measures it; subjects are
//! simulated one after another, so this is one subject in flight plus the report's share).
//! Figures and machine details go to docs/BENCHMARKS.md.
//!
//! The counting allocator wraps mimalloc, the allocator the `flowmark` binary ships with, so
//! the figures are those of `flowmark simulate`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use flowmark_core::{Source, Timestamp, compile};
use flowmark_sim::{Behaviour, Config, simulate};

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let live = LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed) + new_size;
        PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let contacts: u32 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../blueprints/whitepaper-nurture.yaml");
    let text = std::fs::read_to_string(path).expect("the blueprint is readable");
    let workflow = compile(&Source::new(path, text)).workflow.expect("the blueprint is valid");
    let config = Config {
        subjects: contacts,
        days: 30,
        seed: 7,
        start: Timestamp(1_767_571_200_000), // 2026-01-05T00:00:00Z
        behaviour: Behaviour::default(),
        events: None,
    };
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    PEAK_BYTES.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let report = simulate(&workflow, &config, |_, _| {}).expect("the simulation runs");
    let seconds = started.elapsed().as_secs_f64();
    let peak = PEAK_BYTES.load(Ordering::Relaxed) - before;
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "simulate/whitepaper-nurture",
            "contacts": contacts,
            "days": config.days,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "transitions": report.transitions,
            "steps_executed": report.steps_executed,
            "transitions_per_second": (report.transitions as f64 / seconds).round(),
            "steps_per_second": (report.steps_executed as f64 / seconds).round(),
            "peak_bytes": peak,
            "peak_bytes_per_contact": peak / contacts as usize,
        })
    );
}
