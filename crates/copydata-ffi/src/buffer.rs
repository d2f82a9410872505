//! Buffers the library hands to C (reply bytes), freed with
//! [`copydata_free`] without the caller having to pass their length: the
//! allocation's size sits in a small header just before the bytes.

use std::alloc::{Layout, alloc, alloc_zeroed, dealloc};
use std::ffi::c_void;

use crate::error::{Error, Status, guard_value};

/// Room before the bytes for the allocation's size; also their alignment,
/// so the bytes suit any scalar type.
const HEADER: usize = 16;

/// A copy of `bytes` for C to own, NULL for no bytes.
pub(crate) fn to_c(bytes: &[u8]) -> Result<*mut c_void, Error> {
    let p = allocate(bytes.len(), false)?;
    if !p.is_null() {
        // SAFETY:
        // - `p` is a fresh allocation of `bytes.len()` writable bytes;
        //   `bytes` is another allocation, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len()) };
    }
    Ok(p)
}

/// A buffer of `len` bytes for C to own, written by `fill` (NULL, and
/// `fill` not called, for no bytes). For bytes that must be copied from
/// somewhere that hands out no slice, such as a loaned reply.
pub(crate) fn to_c_with(len: usize, fill: impl FnOnce(&mut [u8]) -> Result<(), Error>) -> Result<*mut c_void, Error> {
    let p = allocate(len, true)?;
    if p.is_null() {
        return Ok(p);
    }
    // SAFETY:
    // - `p` is a fresh, zeroed (so initialised) allocation of `len` bytes,
    //   which nothing else refers to until it is returned.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
    if let Err(e) = fill(bytes) {
        // SAFETY:
        // - `p` came from `allocate` and was not handed out.
        unsafe { copydata_free(p) };
        return Err(e);
    }
    Ok(p)
}

/// A buffer of `len` bytes (zeroed if asked) after a header that holds the
/// allocation's size; NULL for `len` 0.
fn allocate(len: usize, zeroed: bool) -> Result<*mut c_void, Error> {
    if len == 0 {
        return Ok(std::ptr::null_mut());
    }
    let too_large = || Error::new(Status::TooLarge, format!("a buffer of {len} bytes"));
    let total = len.checked_add(HEADER).ok_or_else(too_large)?;
    let layout = Layout::from_size_align(total, HEADER).map_err(|_| too_large())?;
    // SAFETY:
    // - `layout` has a non-zero size (`total >= HEADER > 0`).
    let base = unsafe { if zeroed { alloc_zeroed(layout) } else { alloc(layout) } };
    if base.is_null() {
        return Err(Error::new(Status::Io, format!("out of memory for a buffer of {len} bytes")));
    }
    // SAFETY:
    // - `base` is a fresh allocation of `total = HEADER + len` bytes
    //   aligned to `HEADER` (>= the alignment of `usize`), so the size fits
    //   at its start and `len` bytes after the header.
    unsafe {
        base.cast::<usize>().write(total);
        Ok(base.add(HEADER).cast())
    }
}

/// Frees a buffer the library returned (the reply bytes of
/// `copydata_send`). `NULL` does nothing.
///
/// # Safety
///
/// `buffer` is NULL or a buffer this library returned and that was not
/// freed yet; it must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_free(buffer: *mut c_void) {
    guard_value((), || {
        if buffer.is_null() {
            return;
        }
        // SAFETY:
        // - `buffer` came from `to_c` (this function's contract): it lies
        //   `HEADER` bytes into an allocation whose first `usize` is the
        //   allocation's size, made with alignment `HEADER`; so `base` is
        //   that allocation and the layout is the one it was made with.
        // - It was not freed yet and is not used again (the contract).
        unsafe {
            let base = buffer.cast::<u8>().sub(HEADER);
            let total = base.cast::<usize>().read();
            dealloc(base, Layout::from_size_align_unchecked(total, HEADER));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_round_trip_and_free() {
        assert!(to_c(b"").unwrap().is_null());
        for len in [1, 15, 16, 17, 4096] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let p = to_c(&bytes).unwrap();
            assert_eq!(p as usize % HEADER, 0);
            // SAFETY:
            // - `p` holds `len` bytes, written by `to_c`.
            assert_eq!(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }, &bytes[..]);
            // SAFETY:
            // - `p` came from `to_c` and is freed once.
            unsafe { copydata_free(p) };
        }
        // SAFETY:
        // - NULL is allowed.
        unsafe { copydata_free(std::ptr::null_mut()) };
    }

    #[test]
    fn a_buffer_filled_by_a_closure_is_freed_when_it_fails() {
        assert!(to_c_with(0, |_| panic!("not called for no bytes")).unwrap().is_null());
        let p = to_c_with(5, |b| {
            assert_eq!(b, [0; 5]);
            b.copy_from_slice(b"hello");
            Ok(())
        })
        .unwrap();
        // SAFETY:
        // - `p` holds 5 bytes, written by the closure.
        assert_eq!(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), 5) }, b"hello");
        // SAFETY:
        // - `p` came from `to_c_with` and is freed once.
        unsafe { copydata_free(p) };
        let failed = to_c_with(7, |_| Err(Error::invalid("no")));
        assert_eq!(failed.unwrap_err().status, Status::InvalidArgument);
    }
}
