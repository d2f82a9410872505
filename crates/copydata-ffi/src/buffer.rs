//! Buffers the library hands to C (reply bytes), freed with
//! [`copydata_free`] without the caller having to pass their length: the
//! allocation's size sits in a small header just before the bytes.

use std::alloc::{Layout, alloc, dealloc};
use std::ffi::c_void;

use crate::error::{Error, Status, guard_value};

/// Room before the bytes for the allocation's size; also their alignment,
/// so the bytes suit any scalar type.
const HEADER: usize = 16;

/// A copy of `bytes` for C to own, NULL for no bytes.
pub(crate) fn to_c(bytes: &[u8]) -> Result<*mut c_void, Error> {
    // SAFETY: a slice's bytes are readable for its length.
    unsafe { to_c_from(bytes.as_ptr(), bytes.len()) }
}

/// A copy of the `len` bytes at `src` for C to own, NULL for no bytes:
/// for bytes that no slice may point at, such as a loaned reply in memory
/// another process can write (copied as they are at that moment).
///
/// # Safety
///
/// `src` is valid for reads of `len` bytes during the call (NULL allowed
/// for `len` 0).
pub(crate) unsafe fn to_c_from(src: *const u8, len: usize) -> Result<*mut c_void, Error> {
    if len == 0 {
        return Ok(std::ptr::null_mut());
    }
    let too_large = || Error::new(Status::TooLarge, format!("a buffer of {len} bytes"));
    let total = len.checked_add(HEADER).ok_or_else(too_large)?;
    let layout = Layout::from_size_align(total, HEADER).map_err(|_| too_large())?;
    // SAFETY:
    // - `layout` has a non-zero size (`total >= HEADER > 0`).
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        return Err(Error::new(Status::Io, format!("out of memory for a buffer of {len} bytes")));
    }
    // SAFETY:
    // - `base` is a fresh allocation of `total = HEADER + len` bytes
    //   aligned to `HEADER` (>= the alignment of `usize`), so the size fits
    //   at its start and `len` bytes after the header;
    // - `src` is readable for `len` bytes (the contract) and lies in
    //   another allocation: the ranges do not overlap. No reference to it
    //   is formed, so another process writing it meanwhile only changes
    //   which bytes are copied.
    unsafe {
        base.cast::<usize>().write(total);
        let data = base.add(HEADER);
        std::ptr::copy_nonoverlapping(src, data, len);
        Ok(data.cast())
    }
}

/// Frees a buffer the library returned (the reply bytes of
/// `copydata_send`, the array of `copydata_inherited_sections`). `NULL`
/// does nothing.
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
        // - `buffer` came from `to_c_from` (through `to_c` or directly; this
        //   function's contract): it lies
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
}
