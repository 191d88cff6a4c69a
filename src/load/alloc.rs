//! glance's global allocator, installed by the `glance` binary: jemalloc, zeroed allocations
//! cleared with memset, and model weights mapped straight from their safetensors files and handed
//! out as ordinary `Vec<f32>` buffers (see [`crate::load::weights`]).
//!
//! Why map: candle keeps a tensor's values in a `Vec`, so a loader must copy the file into fresh
//! anonymous memory, and on this 2-core VM the kernel's clearing of those fresh pages
//! (`clear_page_erms`) was 40 % of a CLIP-B/32 run's CPU time — 0.3 s to load 605 MB. Pages of a
//! private file mapping come from the page cache without clearing or copying. A buffer inside a
//! mapping is never passed to jemalloc: freeing it hands its pages back with `MADV_DONTNEED` (the
//! mapping itself stays for the life of the process; only its address range is kept), and
//! reallocating it copies it out. As with any memory-mapped loader, a weights file truncated
//! while glance runs ends the process with `SIGBUS`; the Hub cache never rewrites a blob in place.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Set by [`Allocator`]'s first allocation, which happens before `main`: only then may buffers
/// live in mappings, since another allocator would try to free them.
static INSTALLED: AtomicBool = AtomicBool::new(false);

const MAX_MAPPINGS: usize = 256;
/// Address ranges `[start, end)` of the mappings, in `MAPPED` slots; `dealloc` reads them
/// without a lock (a slot is written before the count that publishes it).
static STARTS: [AtomicUsize; MAX_MAPPINGS] = [const { AtomicUsize::new(0) }; MAX_MAPPINGS];
static ENDS: [AtomicUsize; MAX_MAPPINGS] = [const { AtomicUsize::new(0) }; MAX_MAPPINGS];
static MAPPED: AtomicUsize = AtomicUsize::new(0);
static REGISTERING: Mutex<()> = Mutex::new(());

/// jemalloc with memset zeroing and mapped weights; see the module documentation.
#[cfg(not(target_env = "msvc"))]
pub struct Allocator;

/// Whether buffers may live in file mappings (glance's allocator is the global one).
pub fn mapping_supported() -> bool {
    cfg!(unix) && INSTALLED.load(Ordering::Relaxed)
}

fn mapped(ptr: *mut u8) -> bool {
    let p = ptr as usize;
    let n = MAPPED.load(Ordering::Acquire);
    (0..n).any(|i| STARTS[i].load(Ordering::Relaxed) <= p && p < ENDS[i].load(Ordering::Relaxed))
}

/// Maps `len` bytes of `file` privately (copy-on-write) and registers the range, or `None` when
/// mapping is not supported here or fails (the caller then reads the file).
#[cfg(unix)]
pub(crate) fn map_file(file: &std::fs::File, len: usize) -> Option<*mut u8> {
    use std::os::fd::AsRawFd;
    if !mapping_supported() || len == 0 {
        return None;
    }
    let _guard = REGISTERING.lock().unwrap_or_else(|p| p.into_inner());
    let slot = MAPPED.load(Ordering::Relaxed);
    if slot == MAX_MAPPINGS {
        return None;
    }
    // SAFETY: a fresh private mapping of an open file; nothing else refers to the range yet.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    STARTS[slot].store(ptr as usize, Ordering::Relaxed);
    ENDS[slot].store(ptr as usize + len, Ordering::Relaxed);
    MAPPED.store(slot + 1, Ordering::Release);
    Some(ptr.cast())
}

#[cfg(not(unix))]
pub(crate) fn map_file(_: &std::fs::File, _: usize) -> Option<*mut u8> {
    None
}

/// Gives the whole pages inside a freed mapped buffer back to the kernel (they stay in the page
/// cache); partial pages at its ends may hold a neighbouring tensor and are kept. Also for a
/// tensor read once out of a mapping (converted to another dtype), whose pages would otherwise
/// count in the process's memory for its whole life.
#[cfg(unix)]
pub(crate) fn release(ptr: *mut u8, size: usize) {
    const PAGE: usize = 4096;
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize + size) / PAGE * PAGE;
    if end > start {
        // SAFETY: the range lies inside a live mapping and inside the buffer being freed.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

#[cfg(not(unix))]
pub(crate) fn release(_: *mut u8, _: usize) {}

#[cfg(not(target_env = "msvc"))]
const INNER: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// SAFETY: every allocation comes from jemalloc; alloc_zeroed clears exactly the bytes it
// returns; a pointer inside a registered mapping (created by `crate::load::weights` for a buffer of
// that layout) is never passed to jemalloc.
#[cfg(not(target_env = "msvc"))]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        unsafe { INNER.alloc(layout) }
    }

    /// jemalloc zeroes a recycled large extent with `madvise(MADV_DONTNEED)`, handing its pages
    /// back to the kernel only to fault them in again: 2 million page faults (8 GB of zeroed
    /// pages) for 11 BLIP-base captions, since candle and glance allocate every output tensor
    /// zeroed. A memset of memory that is already mapped is far cheaper.
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if mapped(ptr) {
            release(ptr, layout.size());
        } else {
            unsafe { INNER.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if !mapped(ptr) {
            return unsafe { INNER.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_size` with the old alignment is a valid layout (GlobalAlloc's contract).
        let new_layout =
            unsafe { std::alloc::Layout::from_size_align_unchecked(new_size, layout.align()) };
        let p = unsafe { self.alloc(new_layout) };
        if !p.is_null() {
            unsafe { std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size)) };
            release(ptr, layout.size());
        }
        p
    }
}
