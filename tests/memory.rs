//! What a pool keeps per map and per context: nothing once they are gone.
//! A pool lives as long as its program, and a server maps once per
//! request; what it keeps of each would grow without bound.
//!
//! This binary counts the bytes it holds on the heap (its own allocations:
//! SQLite's go through `malloc` and are not counted), and runs its tests
//! one after the other so that the counts are its own.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use buckshot::Pool;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting.
struct Counting;

// SAFETY: every call goes to the system allocator with the caller's
// arguments; the counter changes nothing it returns.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `alloc`.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `alloc_zeroed`.
        let block = unsafe { System.alloc_zeroed(layout) };
        if !block.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: as the caller promised for `dealloc`.
        unsafe { System.dealloc(block, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        // SAFETY: as the caller promised for `realloc`.
        let moved = unsafe { System.realloc(block, layout, size) };
        if !moved.is_null() {
            LIVE.fetch_add(size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes more on the heap after `more` than before it, once `warm_up`
/// brought buffers, caches and tables to their working size.
fn growth(warm_up: impl FnOnce(), more: impl FnOnce()) -> isize {
    warm_up();
    let before = LIVE.load(Ordering::Relaxed);
    more();
    LIVE.load(Ordering::Relaxed) - before
}

fn times(factor: &u64, x: u64) -> u64 {
    factor * x
}
buckshot::register!(times);

/// A context made, mapped and dropped leaves nothing in a pool with a
/// journal: what the journal keeps of it goes with it.
fn contexts_leave_nothing_behind() {
    let dir = common::TempDir::new("memory-contexts");
    let pool = Pool::builder()
        .processes(1)
        .journal(dir.0.join("journal.db"))
        .build()
        .unwrap();
    let call = |contexts: std::ops::Range<u64>| {
        for k in contexts {
            assert_eq!(pool.with_context(&k).call(times, 3).unwrap(), 3 * k);
        }
    };
    // What the journal's writer holds in flight moves by up to a few
    // hundred KB between two moments (measured -310 to +120 KB over 5000
    // contexts); what each context left behind (200-320 bytes) grows with
    // their number.
    let grew = growth(|| call(0..1000), || call(1000..21000));
    println!("contexts: {grew} bytes more after 20000 contexts");
    assert!(grew < 20000 * 40, "{grew} bytes more after 20000 contexts");
}

fn fails(x: u64) -> u64 {
    panic!("input {x} fails")
}
buckshot::register!(fails);

/// A map whose input failed leaves nothing in a pool that keeps failures
/// (here, no more than none a map: nothing is written).
fn maps_leave_nothing_behind() {
    let dir = common::TempDir::new("memory-maps");
    let pool = Pool::builder()
        .processes(1)
        .keep_failures(&dir.0)
        .max_kept_failures(0)
        .forward_stderr(false)
        .build()
        .unwrap();
    let call = |maps: std::ops::Range<u64>| {
        for x in maps {
            assert!(pool.call(fails, x).is_err());
        }
    };
    let grew = growth(|| call(0..1000), || call(1000..6000));
    println!("maps: {grew} bytes more after 5000 maps");
    assert!(grew < 5000 * 8, "{grew} bytes more after 5000 maps");
    assert!(dir.files().is_empty());
}

fn main() {
    let tests: [(&str, fn()); 2] = [
        (
            "contexts_leave_nothing_behind",
            contexts_leave_nothing_behind,
        ),
        ("maps_leave_nothing_behind", maps_leave_nothing_behind),
    ];
    for (name, test) in tests {
        println!("test {name} ...");
        test();
        println!("test {name} ... ok");
    }
}
