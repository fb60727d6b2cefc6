//! The tag's allocator (wasm32 only): power-of-two size classes, each with a free list, carved
//! from `memory.grow`. A freed block goes back to its class's list and is reused as is; nothing
//! is split or merged. About a third of the code of a general free-list allocator, which matters
//! at the tag's size budget (js/README.md, "Size"); the price is up to half of each block unused,
//! which is little for what the tag holds (a few events, one batch, the retry queue).

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::UnsafeCell;
use core::ptr::null_mut;

const PAGE: usize = 65536;
/// Classes 3 (8 bytes) to 31 (2 GiB).
const CLASSES: usize = 32;

pub struct Heap(UnsafeCell<State>);

struct State {
    /// Head of each class's free list (0: empty); a free block holds the next one's address.
    free: [usize; CLASSES],
    /// Unused memory from the last `memory.grow`: `top..end`.
    top: usize,
    end: usize,
}

impl Heap {
    pub const fn new() -> Heap {
        Heap(UnsafeCell::new(State {
            free: [0; CLASSES],
            top: 0,
            end: 0,
        }))
    }
}

// SAFETY: the tag is built for wasm32 without the `atomics` feature: one thread, so the state
// is never touched by two threads.
#[allow(unsafe_code)]
unsafe impl Sync for Heap {}

/// The class of a block for `size` bytes: its size is `1 << class` (at least 8, so every block
/// address stays 8-aligned).
fn class(size: usize) -> usize {
    (usize::BITS - (size.max(8) - 1).leading_zeros()) as usize
}

#[allow(unsafe_code)]
// SAFETY: blocks come either from a free list (where only `dealloc` puts blocks of that class)
// or from fresh memory past everything handed out; each is `1 << class` bytes, 8-aligned, and
// larger alignments are refused (null), which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let k = class(layout.size());
        if layout.align() > 8 || k >= CLASSES {
            return null_mut();
        }
        let s = &mut *self.0.get();
        let head = s.free[k];
        if head != 0 {
            s.free[k] = *(head as *const usize);
            return head as *mut u8;
        }
        let size = 1 << k;
        if s.end - s.top < size {
            let pages = size / PAGE + 1;
            let prev = wasm32::memory_grow(0, pages);
            if prev == usize::MAX {
                return null_mut();
            }
            if prev * PAGE != s.end {
                s.top = prev * PAGE;
            }
            s.end = (prev + pages) * PAGE;
        }
        let block = s.top;
        s.top += size;
        block as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let s = &mut *self.0.get();
        // (`alloc` gave out this block, so its class is below `CLASSES`: the mask only spares
        // a bounds check.)
        let k = class(layout.size()) & (CLASSES - 1);
        *(ptr as *mut usize) = s.free[k];
        s.free[k] = ptr as usize;
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if class(new_size) == class(layout.size()) {
            return ptr;
        }
        let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !new.is_null() {
            core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}
