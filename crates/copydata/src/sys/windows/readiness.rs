//! Waiting for kernel objects from async code without holding a thread:
//! a wait registered with the system thread pool
//! (`RegisterWaitForSingleObject`) per object, whose callback wakes the
//! task. `copydata::tokio` waits so for a reply or for room (on the
//! connection's wake event and the receiver's process).

use std::ffi::c_void;
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Threading::{
    INFINITE, RegisterWaitForSingleObject, UnregisterWaitEx, WT_EXECUTEONLYONCE,
};

/// What the callbacks and the waiting task share.
#[derive(Default)]
struct Signal {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// The thread pool's callback: one of the objects is signalled.
unsafe extern "system" fn on_signal(context: *mut c_void, _timed_out: bool) {
    // SAFETY: `context` is the `Signal` of a `Registrations`, which keeps it
    // alive until every wait is unregistered and its callbacks have
    // returned (`UnregisterWaitEx` with `INVALID_HANDLE_VALUE`).
    let signal = unsafe { &*context.cast_const().cast::<Signal>() };
    signal.fired.store(true, Ordering::SeqCst);
    if let Some(waker) = signal.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
        waker.wake();
    }
}

/// The registered waits; dropping it unregisters them, waiting for any
/// callback under way, before the `Signal` they point to can go.
struct Registrations {
    waits: Vec<HANDLE>,
    signal: Arc<Signal>,
}

// SAFETY: wait handles are process-wide values, usable (unregistered) from
// any thread; the `Signal` is `Sync`.
unsafe impl Send for Registrations {}
// SAFETY: `&Registrations` gives access to nothing but the `Signal`.
unsafe impl Sync for Registrations {}

impl Drop for Registrations {
    fn drop(&mut self) {
        for &wait in &self.waits {
            // SAFETY: a wait registered below and not yet unregistered;
            // `INVALID_HANDLE_VALUE` makes the call return only once no
            // callback for it runs any more.
            unsafe { UnregisterWaitEx(wait, INVALID_HANDLE_VALUE) };
        }
    }
}

/// Waits until one of `objects` is signalled or `timeout` has passed,
/// without holding a thread. An auto-reset event that is signalled is
/// consumed by the wait, as by `WaitForMultipleObjects`.
///
/// # Safety
///
/// Each of `objects` is a live handle with `SYNCHRONIZE` access that stays
/// open until the returned future completes or is dropped.
pub(crate) async unsafe fn any_signalled(objects: &[usize], timeout: Duration) -> io::Result<()> {
    let signal = Arc::new(Signal::default());
    let mut registered = Registrations { waits: Vec::with_capacity(objects.len()), signal: signal.clone() };
    for &object in objects {
        let mut wait: HANDLE = std::ptr::null_mut();
        // SAFETY:
        // - `object` is a live waitable handle (the caller's promise);
        // - the context points to the `Signal`, which `registered` keeps
        //   alive until the wait is unregistered (its `Drop`);
        // - `on_signal` matches the callback type and only touches it.
        let ok = unsafe {
            RegisterWaitForSingleObject(
                &mut wait,
                object as HANDLE,
                Some(on_signal),
                Arc::as_ptr(&registered.signal).cast(),
                INFINITE,
                WT_EXECUTEONLYONCE,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        registered.waits.push(wait);
    }
    let fired = poll_fn(|cx| {
        *signal.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if signal.fired.load(Ordering::SeqCst) { Poll::Ready(()) } else { Poll::Pending }
    });
    let _ = ::tokio::time::timeout(timeout, fired).await;
    drop(registered);
    Ok(())
}
