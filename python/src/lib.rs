//! The native half of the `copydata` Python package: bindings over the
//! `copydata` crate, imported as `copydata._copydata` by the package's
//! `__init__.py` (which also defines the exception classes).
//!
//! Every call that can block (sending, receiving, binding) runs with the
//! interpreter released, so other Python threads go on meanwhile, and waits
//! in slices of [`SLICE`], checking for signals in between, so Ctrl-C
//! interrupts a long wait with `KeyboardInterrupt`.

mod errors;
mod handover;
mod inherit;
mod instance;
mod listing;
mod loan;
mod mailbox;
mod reply_loan;
mod section;
mod sender;
mod sync;

use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pyclass::PyClass;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use crate::errors::Kind;

/// How long a blocking call waits before it looks for signals (Ctrl-C).
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// How a wait for another thread's answer ended without one.
pub(crate) enum Unanswered {
    /// A signal handler raised (Ctrl-C): its exception.
    Interrupted(PyErr),
    /// The answering side is gone.
    Gone,
}

/// Waits for the next value of `rx` with the interpreter released: in
/// slices of [`SLICE`], running signal handlers between them, if
/// `interruptible`; else until it comes. (A `Receiver` is not `Sync`: the
/// wait borrows it through a lock, never contended.)
pub(crate) fn wait_answer<T: Send>(
    py: Python<'_>,
    rx: &std::sync::Mutex<std::sync::mpsc::Receiver<T>>,
    interruptible: bool,
) -> Result<T, Unanswered> {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        let received = py.detach(|| {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            if interruptible { rx.recv_timeout(SLICE) } else { rx.recv().map_err(|_| RecvTimeoutError::Disconnected) }
        });
        match received {
            Ok(value) => return Ok(value),
            Err(RecvTimeoutError::Timeout) => py.check_signals().map_err(Unanswered::Interrupted)?,
            Err(RecvTimeoutError::Disconnected) => return Err(Unanswered::Gone),
        }
    }
}

/// A timeout argument in seconds, as Python's own APIs take it: `None` (or
/// infinity) waits without limit; negative or NaN is refused.
pub(crate) fn timeout_arg(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(errors::raise(
            py,
            Kind::InvalidArgument,
            format!("timeout must be None or at least 0 seconds, not {t}"),
        )),
        // Longer than a Duration holds (or infinite): no limit.
        Some(t) => Ok(Duration::try_from_secs_f64(t).ok()),
    }
}

/// The bytes of a bytes-like argument (`bytes`, `bytearray`, `memoryview`,
/// a numpy array or scalar, ... any C-contiguous buffer), copied. As
/// Python's own consumers: `TypeError` for an object with no buffer, the
/// exporter's error otherwise (`BufferError` for a non-contiguous one; a
/// closed section's `Closed`).
pub(crate) fn bytes_arg(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(bytes.as_bytes().to_vec());
    }
    let py = data.py();
    let mut view = std::mem::MaybeUninit::<pyo3::ffi::Py_buffer>::uninit();
    // SAFETY: `view` is writable memory for one `Py_buffer`, filled by the
    // call when it succeeds; the thread is attached.
    let status =
        unsafe { pyo3::ffi::PyObject_GetBuffer(data.as_ptr(), view.as_mut_ptr(), pyo3::ffi::PyBUF_C_CONTIGUOUS) };
    if status != 0 {
        let e = PyErr::fetch(py);
        if e.is_instance_of::<PyTypeError>(py) {
            let type_name = data.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
            return Err(PyTypeError::new_err(format!("a bytes-like object is required, not '{type_name}'")));
        }
        return Err(e);
    }
    // SAFETY: filled by the successful call above.
    let mut view = unsafe { view.assume_init() };
    let len = usize::try_from(view.len).unwrap_or(0);
    let mut out = vec![0u8; len];
    // (An empty buffer may have a null address, which `copy_nonoverlapping`
    // may not be given even for no bytes.)
    if len > 0 {
        // SAFETY:
        // - a buffer taken with `PyBUF_C_CONTIGUOUS` has `len` readable
        //   bytes in a row at `buf`, not null as there are some, until it
        //   is released below;
        // - `out` is a fresh allocation of `len` bytes: the ranges are distinct;
        // - the thread is attached to the interpreter, so Python code cannot
        //   change the bytes meanwhile (another process may, for memory it
        //   shares: then the copy holds some mix of old and new bytes, as any
        //   read of shared memory may).
        unsafe { std::ptr::copy_nonoverlapping(view.buf.cast::<u8>(), out.as_mut_ptr(), len) };
    }
    // SAFETY: the buffer taken above, released once.
    unsafe { pyo3::ffi::PyBuffer_Release(&mut view) };
    Ok(out)
}

/// A bound object (a mailbox, a primary instance) that receiving threads
/// share, each holding a clone for one slice at a time; `None` once
/// closed. It remembers the process that made it: in a child made by
/// `fork` its threads do not exist and its socket, lock and wake-up
/// descriptors are the parent's, so the child lets go of it without
/// running its `Drop` (which would stop the parent's).
pub(crate) struct Shared<T> {
    slot: std::sync::Mutex<Option<std::sync::Arc<T>>>,
    pid: u32,
}

impl<T: Send + Sync + 'static> Shared<T> {
    pub(crate) fn new(value: T) -> Shared<T> {
        Shared { slot: std::sync::Mutex::new(Some(std::sync::Arc::new(value))), pid: std::process::id() }
    }

    /// A clone for one slice of waiting; `None` once closed.
    pub(crate) fn get(&self) -> Option<std::sync::Arc<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// The next item `recv(value, slice)` takes, waiting at most `timeout`
    /// (`None`: without limit) in slices of [`SLICE`], with the
    /// interpreter released and signal handlers run between slices (so
    /// Ctrl-C interrupts it). `None` once closed (also by another thread
    /// meanwhile); `TimedOut` once the timeout has passed.
    pub(crate) fn next<R: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
        recv: impl Fn(&T, Duration) -> Result<R, copydata::RecvError> + Sync,
    ) -> PyResult<Option<R>> {
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        loop {
            let Some(value) = self.get() else { return Ok(None) };
            let slice = deadline.map_or(SLICE, |d| d.saturating_duration_since(std::time::Instant::now()).min(SLICE));
            // The clone is dropped before the interpreter is attached again,
            // so `close` (which waits for it) never waits for the GIL.
            let received = py.detach(|| {
                let got = recv(&value, slice);
                drop(value);
                got
            });
            match received {
                Ok(item) => return Ok(Some(item)),
                Err(copydata::RecvError::Timeout) => {
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        return Err(errors::recv_error(py, copydata::RecvError::Timeout));
                    }
                    py.check_signals()?;
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Closes it: waits (detached) for the receivers' clones, given back
    /// within one slice, then drops it; in a child made by `fork`,
    /// forgets it.
    pub(crate) fn close(&self, py: Python<'_>) {
        let taken = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut value) = taken else { return };
        if self.pid != std::process::id() {
            std::mem::forget(value);
            return;
        }
        py.detach(move || {
            loop {
                match std::sync::Arc::try_unwrap(value) {
                    Ok(last) => break drop(last),
                    Err(shared) => value = shared,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        if self.pid != std::process::id()
            && let Some(value) = self.slot.get_mut().unwrap_or_else(|e| e.into_inner()).take()
        {
            std::mem::forget(value);
        }
    }
}

/// The end of a `with` block that closes a loan: `closed` is the close's
/// outcome. A close that failed (a buffer of the loan still held) raises,
/// unless the block itself raised: that exception is not hidden (the loan
/// is given back once the last buffer and the loan are dropped). Never
/// swallows the block's exception.
pub(crate) fn closed_at_exit(closed: PyResult<()>, exc_type: &Bound<'_, PyAny>) -> PyResult<bool> {
    if exc_type.is_none() {
        closed?;
    }
    Ok(false)
}

/// Exports `len` writable bytes at `ptr`, owned by `owner`, through the
/// buffer protocol (the body of a loan's `__getbuffer__`); `what` names
/// the owner in errors.
///
/// # Safety
///
/// - `buffer` is NULL or the interpreter's buffer to fill;
/// - `ptr` is valid for `len` writable bytes for as long as the export
///   lives: the caller counts exports and refuses to give the memory up
///   while any is held.
pub(crate) unsafe fn export_writable(
    owner: &Bound<'_, PyAny>,
    buffer: *mut pyo3::ffi::Py_buffer,
    ptr: usize,
    len: usize,
    flags: std::ffi::c_int,
    what: &str,
) -> PyResult<()> {
    use pyo3::exceptions::PyBufferError;
    if buffer.is_null() {
        return Err(PyBufferError::new_err("no buffer to fill"));
    }
    let signed = isize::try_from(len).map_err(|_| PyBufferError::new_err(format!("the {what} is too large")))?;
    // No bytes may have no address; the buffer protocol wants one.
    let ptr = if len == 0 { std::ptr::NonNull::<u8>::dangling().as_ptr() } else { ptr as *mut u8 };
    // SAFETY:
    // - `buffer` is valid for writing (this function's contract);
    // - `ptr` is valid for `len` writable bytes while the export lives (the
    //   contract), or dangling for none;
    // - `PyBuffer_FillInfo` takes its own reference to `owner`, and
    //   describes the memory as `len` writable unsigned bytes, contiguous;
    // - the thread is attached (we were given the owner's `Bound`).
    let status = unsafe { pyo3::ffi::PyBuffer_FillInfo(buffer, owner.as_ptr(), ptr.cast(), signed, 0, flags) };
    if status != 0 {
        return Err(PyErr::fetch(owner.py()));
    }
    Ok(())
}

/// The objects of this process that hold a name (mailboxes, a primary
/// instance, named sections, mutexes, shared values, events), by weak
/// reference: those still open when the interpreter exits are closed then
/// ([`close_at_exit`]), so that their names and files do not outlive the
/// process until a listing removes them.
static OPEN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The `weakref.WeakSet` of [`OPEN`].
fn open_objects(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    OPEN.get_or_try_init(py, || Ok(py.import("weakref")?.getattr("WeakSet")?.call0()?.unbind())).map(|set| set.bind(py))
}

/// `value` as a Python object, closed at interpreter exit if still open
/// then (see [`OPEN`]). The class needs `weakref`.
pub(crate) fn opened<T: PyClass>(py: Python<'_>, value: impl Into<PyClassInitializer<T>>) -> PyResult<Py<T>> {
    let object = Py::new(py, value)?;
    open_objects(py)?.call_method1("add", (&object,))?;
    Ok(object)
}

/// Run by `atexit` (once the interpreter's non-daemon threads have ended):
/// closes what is still open of [`OPEN`], as `close()` from another thread
/// would (a daemon thread still waiting in one of them gets `Closed`), and
/// waits a few slices at most for those threads' waits to let go. A close
/// that fails (a section another thread's call holds) leaves its object
/// alone; what is still held past its close (a buffer of a named section,
/// a lock another thread took, a view of a shared value) keeps its name
/// until the process ends, for the next listing to remove.
#[pyfunction]
fn close_at_exit(py: Python<'_>) {
    let Ok(open) = open_objects(py) else { return };
    // (A thread that opens one meanwhile changes the set: copy again.)
    let objects = (0..10).find_map(|_| open.try_iter().and_then(|it| it.collect::<PyResult<Vec<_>>>()).ok());
    let objects = objects.unwrap_or_default();
    // Every lock marked closed before any is released (see
    // `sync::mark_closed_for_exit`).
    let pending: Vec<_> = objects.iter().filter_map(sync::mark_closed_for_exit).collect();
    for object in &objects {
        let _ = object.call_method0("close");
    }
    // Other threads' waits give their references back within a slice;
    // a lock another thread holds is not waited for.
    py.detach(move || {
        let deadline = std::time::Instant::now() + 4 * SLICE;
        while !pending.iter().all(|gone| gone()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

#[cfg(unix)]
/// Run in a child made by `fork`: the objects it inherited are its
/// parent's, which the child's exit must not close.
#[pyfunction]
fn forget_after_fork(py: Python<'_>) {
    if let Ok(open) = open_objects(py) {
        let _ = open.call_method0("clear");
    }
}

/// WM_COPYDATA-style messages and shared-memory sections (the native part of
/// the `copydata` package).
#[pymodule]
fn _copydata(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    py.import("atexit")?.call_method1("register", (wrap_pyfunction!(close_at_exit, m)?,))?;
    #[cfg(unix)]
    {
        use pyo3::types::IntoPyDict;
        let kwargs = [("after_in_child", wrap_pyfunction!(forget_after_fork, m)?)].into_py_dict(py)?;
        py.import("os")?.call_method("register_at_fork", (), Some(&kwargs))?;
    }
    m.add_function(wrap_pyfunction!(mailbox::send, m)?)?;
    m.add_function(wrap_pyfunction!(mailbox::send_to_window, m)?)?;
    m.add_class::<mailbox::Mailbox>()?;
    m.add_class::<mailbox::Request>()?;
    m.add_class::<sender::Sender>()?;
    m.add_class::<loan::Loan>()?;
    m.add_class::<reply_loan::ReplyLoan>()?;
    m.add_class::<section::Section>()?;
    m.add_class::<section::View>()?;
    m.add_class::<inherit::Inheritance>()?;
    m.add_function(wrap_pyfunction!(inherit::inherited_sections, m)?)?;
    m.add("INHERIT_VAR", copydata::INHERIT_VAR)?;
    m.add_function(wrap_pyfunction!(listing::_sections, m)?)?;
    m.add_function(wrap_pyfunction!(listing::_mailboxes, m)?)?;
    m.add_function(wrap_pyfunction!(listing::_objects, m)?)?;
    m.add_function(wrap_pyfunction!(listing::remove, m)?)?;
    m.add_function(wrap_pyfunction!(handover::send_section, m)?)?;
    m.add_function(wrap_pyfunction!(handover::recv_section, m)?)?;
    m.add_function(wrap_pyfunction!(instance::single_instance, m)?)?;
    m.add_class::<instance::Primary>()?;
    m.add_class::<instance::Secondary>()?;
    m.add_class::<instance::Launch>()?;
    m.add_class::<sync::Mutex>()?;
    m.add_class::<sync::Event>()?;
    m.add_class::<sync::Shared>()?;
    m.add_class::<sync::SharedView>()?;
    Ok(())
}
