//! A global allocator that counts the heap in use per thread, so a test can
//! bound the memory a simulation (run on the test's thread) holds. Each test
//! file that wants it declares
//! `#[global_allocator] static GLOBAL: common::alloc::Counting = common::alloc::Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};

/// Counts bytes allocated minus bytes freed, per thread.
pub struct Counting;

thread_local! {
    // Per thread, so tests running in parallel don't disturb each other.
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn bump(d: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + d));
}

fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

/// Allocations (and reallocations) this thread made so far.
#[allow(dead_code)] // not every test file that counts asks for it
pub fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

/// Heap bytes this thread allocated and has not freed.
pub fn live() -> isize {
    LIVE.with(|c| c.get())
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a thread-local side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        bump(l.size() as isize);
        count_allocation();
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        bump(-(l.size() as isize));
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        bump(n as isize - l.size() as isize);
        count_allocation();
        System.realloc(p, l, n)
    }
}
