//! What the unit tests share.

use std::ffi::{CStr, CString};

/// A name that no other test of this process uses.
pub(crate) fn unique(tag: &str) -> CString {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CString::new(format!("copydata-test-ffi-{tag}-{}-{n}", std::process::id())).unwrap()
}

/// The message of this thread's last failed call.
pub(crate) fn last() -> String {
    // SAFETY:
    // - `copydata_last_error` returns a NUL-terminated string that stays
    //   valid until the next failing call on this thread.
    unsafe { CStr::from_ptr(crate::copydata_last_error()) }.to_string_lossy().into_owned()
}
