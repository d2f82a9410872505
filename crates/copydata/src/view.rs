//! Views: mapped ranges of a section.
//!
//! The memory behind a view may be written at any time by another process,
//! so it is never exposed as a plain `&[u8]` by the safe API: bytes are
//! copied in and out, and words are accessed through atomics. Zero-copy users
//! get raw pointers and `unsafe` slice accessors whose contracts say what
//! must hold.

use std::io;
use std::ops::Deref;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::error::AccessError;
use crate::sys;

/// A read-only view of part of a [`Section`](crate::Section). Unmapped on
/// drop (`UnmapViewOfFile` on Windows, `munmap` on Linux); the mapping may
/// outlive the `Section` it came from.
#[doc(alias = "UnmapViewOfFile")]
#[doc(alias = "munmap")]
#[derive(Debug)]
pub struct View {
    map: Arc<sys::Mapping>,
    /// Where the view's first byte lies inside `map`.
    start: usize,
    len: usize,
    offset: u64,
}

/// A writable view; dereferences to [`View`] for the reading methods.
///
/// Writing takes `&self`: the memory is shared with other processes anyway,
/// so Rust's exclusive borrows could not promise exclusivity.
#[derive(Debug)]
pub struct ViewMut {
    view: View,
}

impl View {
    /// Keeps the mapping this view is part of for the rest of the
    /// process's life (for memory that something outside Rust's ownership
    /// still points into).
    pub(crate) fn keep_mapped_for_ever(&self) {
        std::mem::forget(Arc::clone(&self.map));
    }

    pub(crate) fn new(map: Arc<sys::Mapping>, start: usize, len: usize, offset: u64) -> View {
        debug_assert!(start + len <= map.len());
        View { map, start, len, offset }
    }

    /// The view's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: views have at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the view starts inside its section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A pointer to the view's first byte (exactly at [`offset`](Self::offset)
    /// in the section, whatever the platform's alignment rules).
    ///
    /// The pointer is valid for `len()` bytes while the view lives. Other
    /// processes may write there at any time.
    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY:
        // - `start + len <= map.len()` (checked by the constructor's caller,
        //   asserted in debug builds), so the offset stays inside the mapping.
        unsafe { self.map.ptr().add(self.start) }
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), AccessError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(AccessError::OutOfRange { offset, len, view_len: self.len }),
        }
    }

    fn check_atomic(&self, offset: usize, size: usize) -> Result<*mut u8, AccessError> {
        self.check(offset, size)?;
        // SAFETY:
        // - `offset + size <= len` was checked just above, so the pointer is
        //   inside the view.
        let p = unsafe { self.as_ptr().add(offset) } as *mut u8;
        if !(p as usize).is_multiple_of(size) {
            return Err(AccessError::Misaligned { offset, align: size });
        }
        Ok(p)
    }

    /// Copies `buf.len()` bytes starting at `offset` (relative to the view)
    /// into `buf`.
    ///
    /// If another process writes the range at the same time, `buf` may hold a
    /// mix of old and new bytes; use atomics or a lock to agree on when data is
    /// complete.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        self.check(offset, buf.len())?;
        // SAFETY:
        // - the source range lies inside the mapping (checked above) and the
        //   mapping lives as long as `self`;
        // - `buf` is a distinct, exclusively borrowed local buffer, so the
        //   ranges do not overlap;
        // - no Rust reference to the shared memory is created: concurrent
        //   writes by other processes can only change which bytes are copied.
        unsafe { ptr::copy_nonoverlapping(self.as_ptr().add(offset), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies the whole view into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        self.read_at(0, &mut out).expect("the whole view is in range");
        out
    }

    /// Atomically loads the `u32` at `offset` (whose address must be 4-byte
    /// aligned: an offset that is a multiple of 4 in a view that starts at
    /// one of its section), with `order` `Relaxed`, `Acquire` or `SeqCst`
    /// (a store's orderings are [`AccessError::LoadOrdering`]).
    ///
    /// A view is read-only memory, where Rust defines only `Relaxed` atomic
    /// loads: `Acquire` is a `Relaxed` load followed by an `Acquire`
    /// [`fence`], and `SeqCst` one between two `SeqCst` fences, which order
    /// the load as those orderings would.
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, AccessError> {
        let (before, after) = fences_around_load(order)?;
        let p = self.check_atomic(offset, 4)?;
        if before {
            fence(Ordering::SeqCst);
        }
        // SAFETY:
        // - `p` is in range and 4-byte aligned (checked);
        // - the memory is mapped for at least as long as `self` is borrowed;
        // - all accesses to shared memory go through atomics or raw copies,
        //   and a `Relaxed` atomic load of 4 bytes is valid on read-only
        //   memory (std's "atomic accesses to read-only memory").
        let value = unsafe { AtomicU32::from_ptr(p.cast()) }.load(Ordering::Relaxed);
        if let Some(order) = after {
            fence(order);
        }
        Ok(value)
    }

    /// Atomically loads the `u64` at `offset` (whose address must be 8-byte
    /// aligned), as [`load_u32`](Self::load_u32). Only on 64-bit targets:
    /// on 32-bit ones Rust defines atomic loads of read-only memory only up
    /// to 4 bytes, so there this is [`AccessError::Unsupported`] (a
    /// writable view's [`ViewMut::atomic_u64`] works).
    pub fn load_u64(&self, offset: usize, order: Ordering) -> Result<u64, AccessError> {
        let (before, after) = fences_around_load(order)?;
        if cfg!(not(target_pointer_width = "64")) {
            return Err(AccessError::Unsupported("an 8-byte atomic load of read-only memory on a 32-bit target"));
        }
        let p = self.check_atomic(offset, 8)?;
        if before {
            fence(Ordering::SeqCst);
        }
        // SAFETY: as in `load_u32`, with 8-byte size and alignment (a
        // `Relaxed` load of 8 bytes is valid on read-only memory on the
        // 64-bit targets this runs on, checked above).
        let value = unsafe { AtomicU64::from_ptr(p.cast()) }.load(Ordering::Relaxed);
        if let Some(order) = after {
            fence(order);
        }
        Ok(value)
    }

    /// Borrows the view as a byte slice, for zero-copy reading.
    ///
    /// # Safety
    ///
    /// While the slice lives, no process may write the view's memory (Rust
    /// assumes `&[u8]` does not change underneath). That holds for example
    /// when the section was sealed against writes before it was handed over
    /// and no writable view of it exists anywhere, or when the processes
    /// involved follow a protocol (a lock, a handshake) that keeps writers
    /// out for the slice's lifetime. Treat the bytes as untrusted input.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY:
        // - the pointer is valid and mapped for `len` bytes while `self` lives;
        // - the caller promises that nothing writes the memory meanwhile.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }
}

impl ViewMut {
    pub(crate) fn new(view: View) -> ViewMut {
        ViewMut { view }
    }

    /// A pointer to the view's first byte, for writing.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.view.as_ptr() as *mut u8
    }

    /// Copies `data` into the view at `offset` (relative to the view).
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        self.view.check(offset, data.len())?;
        // SAFETY:
        // - the destination lies inside the writable mapping (range checked,
        //   the mapping is writable because this is a `ViewMut`);
        // - `data` may even alias this view (a slice from `as_slice`):
        //   `ptr::copy` is a memmove and tolerates overlap;
        // - no Rust reference to the shared memory is created.
        unsafe { ptr::copy(data.as_ptr(), self.as_mut_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// The `AtomicU32` at `offset` (at a 4-byte aligned address), shared with every process
    /// that maps the same memory.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, AccessError> {
        let p = self.view.check_atomic(offset, 4)?;
        // SAFETY:
        // - `p` is in range, 4-byte aligned and writable while `self` lives,
        //   which bounds the returned reference;
        // - atomics may be modified concurrently by anyone, so other processes
        //   writing the word do not break the reference's guarantees as long
        //   as they too access it atomically (plain racing writes from other
        //   processes can only produce an arbitrary `u32`).
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// The `AtomicU64` at `offset` (at an 8-byte aligned address).
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, AccessError> {
        let p = self.view.check_atomic(offset, 8)?;
        // SAFETY: as in `atomic_u32`, with 8-byte size and alignment.
        Ok(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// Borrows the view as a mutable byte slice, for zero-copy writing.
    ///
    /// # Safety
    ///
    /// While the slice lives, no other process (and no other view in this
    /// process) may read or write the view's memory: `&mut [u8]` promises
    /// exclusive access. Use it only under a protocol that hands the memory
    /// to this process exclusively for the slice's lifetime.
    #[allow(clippy::mut_from_ref)] // the memory is shared by design; the contract is on the caller
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY:
        // - the pointer is valid, writable and mapped for `len` bytes while
        //   `self` lives;
        // - the caller promises exclusive access meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.view.len) }
    }

    /// Writes modified pages of a file-backed view back to the file and waits
    /// for it (`msync(MS_SYNC)` / `FlushViewOfFile`). A no-op in effect for
    /// memory-only sections.
    #[doc(alias = "FlushViewOfFile")]
    #[doc(alias = "msync")]
    pub fn flush(&self) -> io::Result<()> {
        self.view.map.flush(self.view.start, self.view.len)
    }
}

impl Deref for ViewMut {
    type Target = View;
    fn deref(&self) -> &View {
        &self.view
    }
}

/// The fences that give a `Relaxed` load the ordering `order` asked of a
/// load: whether a `SeqCst` fence goes before it, and which fence after.
fn fences_around_load(order: Ordering) -> Result<(bool, Option<Ordering>), AccessError> {
    match order {
        Ordering::Relaxed => Ok((false, None)),
        Ordering::Acquire => Ok((false, Some(Ordering::Acquire))),
        Ordering::SeqCst => Ok((true, Some(Ordering::SeqCst))),
        other => Err(AccessError::LoadOrdering(other)),
    }
}
