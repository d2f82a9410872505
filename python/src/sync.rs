//! `copydata.Mutex`, `copydata.Shared` and `copydata.Event`: named objects
//! shared by processes, over `copydata::sync`.
//!
//! An OS mutex belongs to the thread that locked it: only that thread may
//! unlock it. The Python object keeps the held lock as an
//! [`ArcMutexGuard`], which knows its thread (and process) and unlocks
//! only there. A lock still held when its object goes away on another
//! thread, or in a child made by `fork`, is left to the OS: it is
//! released when its thread ends, and the next locker is told its owner
//! died.

use std::ffi::c_int;
use std::sync::Arc;
use std::time::{Duration, Instant};

use copydata::sync::{ArcMutexGuard, ArcSharedBytesGuard, EventKind, LockError, SharedBytes, SyncOpenError, WaitError};
use pyo3::exceptions::{PyBufferError, PyRuntimeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyMemoryView, PyType};

use crate::errors::{self, Kind};
use crate::{SLICE, Unanswered, timeout_arg, wait_answer};
use std::sync::mpsc::sync_channel;

/// What a Python lock object holds: a `copydata::sync` object locked
/// through an `Arc` guard ([`copydata::sync::Mutex`],
/// [`copydata::sync::SharedBytes`]).
pub(crate) trait Lockable: Send + Sync + 'static {
    type Guard: Held;
    /// What the object is called in messages ("mutex").
    const WHAT: &'static str;
    fn lock_within(self: &Arc<Self>, timeout: Duration) -> Result<Self::Guard, LockError>;
    fn lock_now(self: &Arc<Self>) -> Result<Self::Guard, LockError>;
}

/// A held lock of a [`Lockable`].
pub(crate) trait Held: Send {
    fn is_mine(&self) -> bool;
    fn owner_died(&self) -> bool;
    fn mark_consistent(&mut self);
}

impl Lockable for copydata::sync::Mutex {
    type Guard = ArcMutexGuard;
    const WHAT: &'static str = "mutex";
    fn lock_within(self: &Arc<Self>, timeout: Duration) -> Result<ArcMutexGuard, LockError> {
        self.lock_arc_timeout(timeout)
    }
    fn lock_now(self: &Arc<Self>) -> Result<ArcMutexGuard, LockError> {
        self.try_lock_arc()
    }
}

impl Held for ArcMutexGuard {
    fn is_mine(&self) -> bool {
        ArcMutexGuard::is_mine(self)
    }
    fn owner_died(&self) -> bool {
        ArcMutexGuard::owner_died(self)
    }
    fn mark_consistent(&mut self) {
        ArcMutexGuard::mark_consistent(self)
    }
}

impl Lockable for SharedBytes {
    type Guard = ArcSharedBytesGuard;
    const WHAT: &'static str = "shared value";
    fn lock_within(self: &Arc<Self>, timeout: Duration) -> Result<ArcSharedBytesGuard, LockError> {
        self.lock_arc_timeout(timeout)
    }
    fn lock_now(self: &Arc<Self>) -> Result<ArcSharedBytesGuard, LockError> {
        self.try_lock_arc()
    }
}

impl Held for ArcSharedBytesGuard {
    fn is_mine(&self) -> bool {
        ArcSharedBytesGuard::is_mine(self)
    }
    fn owner_died(&self) -> bool {
        ArcSharedBytesGuard::owner_died(self)
    }
    fn mark_consistent(&mut self) {
        ArcSharedBytesGuard::mark_consistent(self)
    }
}

/// The lock behaviour of `copydata.Mutex` and `copydata.Shared`, as
/// `threading.Lock`'s: acquired and released by the same thread, not
/// recursive.
pub(crate) struct Locker<L: Lockable> {
    name: String,
    /// `None` once closed.
    object: std::sync::Mutex<Option<Arc<L>>>,
    held: std::sync::Mutex<Option<L::Guard>>,
}

impl<L: Lockable> Locker<L> {
    fn new(name: &str, object: L) -> Locker<L> {
        Locker {
            name: name.to_owned(),
            object: std::sync::Mutex::new(Some(Arc::new(object))),
            held: std::sync::Mutex::new(None),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<L::Guard>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object, unless closed.
    fn object(&self, py: Python<'_>) -> PyResult<Arc<L>> {
        let object = self.object.lock().unwrap_or_else(|e| e.into_inner()).clone();
        object.ok_or_else(|| errors::raise(py, Kind::Closed, format!("{} {:?} is closed", L::WHAT, self.name)))
    }

    fn closed(&self) -> bool {
        self.object.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Runs `f` on the lock this thread holds.
    fn with_mine<T>(&self, what: &str, f: impl FnOnce(&mut L::Guard) -> T) -> PyResult<T> {
        match self.held().as_mut() {
            Some(h) if h.is_mine() => Ok(f(h)),
            _ => Err(PyRuntimeError::new_err(format!("{what}: this thread does not hold {} {:?}", L::WHAT, self.name))),
        }
    }

    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        // -1 is "no limit", as for `threading.Lock.acquire`.
        let timeout = timeout_arg(py, timeout.filter(|&t| t != -1.0))?;
        if !blocking && timeout.is_some() {
            return Err(errors::raise(py, Kind::InvalidArgument, "a timeout needs blocking=True"));
        }
        if self.held_here() {
            return Err(PyRuntimeError::new_err(format!("this thread already holds {} {:?}", L::WHAT, self.name)));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let object = self.object(py)?;
            let slice =
                blocking.then(|| deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()).min(SLICE)));
            // The lock is taken on this thread (`detach` runs the closure
            // here), and kept or given back there too; the reference to the
            // object goes before the interpreter is attached again, so that
            // a close at interpreter exit, which waits for such references
            // to go, never waits for the GIL.
            let locked = py.detach(move || {
                let got = match slice {
                    Some(s) => object.lock_within(s),
                    None => object.lock_now(),
                };
                drop(object);
                let held = got?;
                // Closed by another thread while this one waited: the lock
                // goes back at once rather than stay taken. (Looked at
                // under the lock `close` marks it closed with, before it
                // releases its own hold.)
                let open = self.object.lock().unwrap_or_else(|e| e.into_inner());
                if open.is_none() {
                    drop((open, held));
                    return Ok(false);
                }
                *self.held() = Some(held);
                Ok(true)
            });
            match locked {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    let what = format!("{} {:?} was closed while this thread waited for it", L::WHAT, self.name);
                    return Err(errors::raise(py, Kind::Closed, what));
                }
                Err(LockError::WouldBlock) => return Ok(false),
                Err(LockError::TimedOut) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
                Err(LockError::TimedOut) => py.check_signals()?,
                Err(e) => return Err(errors::lock_error(py, e)),
            }
        }
    }

    fn release(&self) -> PyResult<()> {
        let mut held = self.held();
        match held.as_ref() {
            Some(h) if h.is_mine() => {
                drop(held.take());
                Ok(())
            }
            _ => {
                Err(PyRuntimeError::new_err(format!("release of {} {:?}, not held by this thread", L::WHAT, self.name)))
            }
        }
    }

    fn held_here(&self) -> bool {
        self.held().as_ref().is_some_and(Held::is_mine)
    }

    fn owner_died(&self) -> PyResult<bool> {
        self.with_mine("owner_died", |h| Held::owner_died(h))
    }

    fn mark_consistent(&self) -> PyResult<()> {
        self.with_mine("mark_consistent", Held::mark_consistent)
    }

    fn close(&self) {
        // Closed first, and this thread's lock released only then, under
        // the lock a waiter takes to look: a waiter that gets the lock
        // released here finds the object closed and gives the lock back
        // (`Closed`), never returns holding it. (Released first, another
        // thread could take it, look before the object was marked closed,
        // and keep it: on an interpreter without the GIL.)
        let mut object = self.object.lock().unwrap_or_else(|e| e.into_inner());
        let closed = object.take();
        let mine = {
            let mut held = self.held();
            if held.as_ref().is_some_and(Held::is_mine) { held.take() } else { None }
        };
        drop(mine);
        drop(object);
        drop(closed);
    }

    /// The first half of a close at interpreter exit: marks the object
    /// closed, but keeps this thread's hold (`close`, called next, releases
    /// it), so that a waiter which gets a lock released at exit finds its
    /// own object closed too, whatever the order. Says when the object is
    /// gone, the references other threads' waits hold included (given
    /// back within a slice); a lock another thread holds keeps it.
    fn mark_closed(&self) -> Gone {
        let taken = self.object.lock().unwrap_or_else(|e| e.into_inner()).take();
        let weak = taken.as_ref().map(Arc::downgrade);
        drop(taken);
        Box::new(move || weak.as_ref().is_none_or(|w| w.strong_count() == 0))
    }
}

/// A named mutex shared by processes, that survives its owner's death
/// (`CreateMutexW`; a robust process-shared mutex on Linux).
#[pyclass(module = "copydata", frozen, weakref)]
pub(crate) struct Mutex {
    locker: Locker<copydata::sync::Mutex>,
}

impl Mutex {
    fn open_mutex(py: Python<'_>, name: &str, create: bool) -> PyResult<Py<Mutex>> {
        let opened = py.detach(|| {
            if create { copydata::sync::Mutex::open_or_create(name) } else { copydata::sync::Mutex::open(name) }
        });
        let mutex = opened.map_err(|e| errors::sync_open_error(py, e))?;
        crate::opened(py, Mutex { locker: Locker::new(name, mutex) })
    }
}

#[pymethods]
impl Mutex {
    /// Opens the mutex `name`, creating it (unlocked) if no process holds
    /// one.
    #[new]
    fn new(py: Python<'_>, name: &str) -> PyResult<Py<Mutex>> {
        Self::open_mutex(py, name, true)
    }

    /// Opens the existing mutex `name` (`NotFound` if no process holds one).
    #[classmethod]
    fn open(_cls: &Bound<'_, PyType>, py: Python<'_>, name: &str) -> PyResult<Py<Mutex>> {
        Self::open_mutex(py, name, false)
    }

    #[getter]
    fn name(&self) -> &str {
        &self.locker.name
    }

    /// Takes the lock, as `threading.Lock.acquire`: waits as long as it
    /// takes (`timeout` None or -1), at most `timeout` seconds, or
    /// (`blocking=False`) not at all;
    /// returns whether it got it. The thread that took it releases it.
    /// Not recursive: acquiring it again on the same thread raises.
    /// Ctrl-C interrupts the wait, and so does `close()` from another
    /// thread (`Closed`).
    #[pyo3(signature = (blocking = true, timeout = None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        self.locker.acquire(py, blocking, timeout)
    }

    /// Releases the lock this thread holds (`RuntimeError` otherwise, as
    /// `threading.Lock.release`).
    fn release(&self) -> PyResult<()> {
        self.locker.release()
    }

    /// Whether a holder died while holding the lock and nobody has marked
    /// the protected state consistent since: check it after `acquire`
    /// (raises unless this thread holds the lock).
    #[getter]
    fn owner_died(&self) -> PyResult<bool> {
        self.locker.owner_died()
    }

    /// Declares the protected state consistent again, after repairing it
    /// (this thread must hold the lock).
    fn mark_consistent(&self) -> PyResult<()> {
        self.locker.mark_consistent()
    }

    /// Whether this thread holds the lock.
    fn held_here(&self) -> bool {
        self.locker.held_here()
    }

    /// Lets go of the mutex (releasing the lock if this thread holds it);
    /// the named object goes once no process holds it. Later calls raise
    /// `Closed`; closing twice does nothing.
    fn close(&self) {
        self.locker.close();
    }

    /// `with mutex:` acquires (waiting as long as it takes) and releases.
    fn __enter__(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        slf.get().acquire(py, true, None)?;
        Ok(slf)
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<copydata.Mutex {:?}{}>", self.locker.name, if self.locker.closed() { ", closed" } else { "" })
    }
}

/// A named block of bytes shared by processes, initialised once, with a
/// lock: the DLL shared data section of Win32, by size (`copydata::sync`'s
/// shared value; a Rust `Shared<T>` of the same size, alignment and tag is
/// the same object).
#[pyclass(module = "copydata", frozen, weakref)]
pub(crate) struct Shared {
    locker: Locker<SharedBytes>,
    size: usize,
    align: usize,
}

impl Shared {
    fn of(py: Python<'_>, name: &str, opened: Result<SharedBytes, SyncOpenError>) -> PyResult<Py<Shared>> {
        let shared = match opened {
            // The initialiser's own exception, as it raised it.
            Err(SyncOpenError::InitFailed { source, .. }) if source.is::<PyErr>() => {
                return Err(*source.downcast::<PyErr>().expect("checked just above"));
            }
            other => other.map_err(|e| errors::sync_open_error(py, e))?,
        };
        let (size, align) = (shared.len(), shared.align());
        crate::opened(py, Shared { locker: Locker::new(name, shared), size, align })
    }
}

#[pymethods]
impl Shared {
    /// Opens the shared value `name` of `size` bytes, creating it if no
    /// process holds it: zero bytes, then `init(memoryview)` fills them,
    /// exactly once across all the processes racing to create it (nobody
    /// sees the bytes before it returns; if it raises, the exception comes
    /// back here and the next opener initialises the value). `align` and
    /// `tag` are the value's layout and type tag: another size, alignment
    /// or tag raises `copydata.Error`.
    #[new]
    #[pyo3(signature = (name, size, *, align = 1, tag = "bytes", init = None))]
    fn new(
        py: Python<'_>,
        name: &str,
        size: usize,
        align: usize,
        tag: &str,
        init: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Shared>> {
        // The value's lock may have to be waited for as long as another
        // process (or thread) takes to initialise it: a thread of its own
        // waits, so that this one waits in slices and takes Ctrl-C. The
        // initialiser still runs here: the waiting thread hands the bytes
        // over and waits for them to be filled. If this thread gave up
        // (Ctrl-C), nothing is initialised: the next opener does it.
        let (steps_tx, steps) = sync_channel::<Step>(1);
        let (filled_tx, filled) = sync_channel::<Result<(), PyErr>>(1);
        let (name_owned, tag_owned, create_with) = (name.to_owned(), tag.to_owned(), init.is_some());
        let ask = steps_tx.clone();
        std::thread::Builder::new()
            .name("copydata-shared".into())
            .spawn(move || {
                let opened = if create_with {
                    SharedBytes::open_or_create_with(&name_owned, size, align, &tag_owned, |bytes| {
                        let given_up = || PyRuntimeError::new_err("the opener gave up (interrupted)");
                        ask.send(Step::Fill(bytes.as_mut_ptr() as usize, bytes.len())).map_err(|_| given_up())?;
                        filled.recv().unwrap_or_else(|_| Err(given_up()))
                    })
                } else {
                    SharedBytes::open_or_create(&name_owned, size, align, &tag_owned)
                };
                let _ = steps_tx.send(Step::Done(Box::new(opened)));
            })
            .map_err(|e| errors::raise(py, Kind::Error, format!("starting the opening thread: {e}")))?;
        let steps = std::sync::Mutex::new(steps);
        loop {
            match wait_answer(py, &steps, true) {
                Ok(Step::Fill(at, len)) => {
                    // SAFETY: the opening thread holds the value's lock and
                    // waits in the initialiser (in `filled.recv()`) until
                    // the answer below: `len` writable bytes at `at`,
                    // mapped, that nobody else reads or writes meanwhile.
                    let bytes = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) };
                    let init = init.as_ref().expect("asked to fill only with an initialiser");
                    let _ = filled_tx.send(run_init(init, bytes));
                }
                Ok(Step::Done(opened)) => return Self::of(py, name, *opened),
                Err(Unanswered::Interrupted(e)) => return Err(e),
                Err(Unanswered::Gone) => {
                    return Err(errors::raise(py, Kind::Error, "the opening thread ended without a result"));
                }
            }
        }
    }

    /// Opens the existing shared value `name`, of whatever size and
    /// alignment it was made with, if its type tag is `tag` (`NotFound` if
    /// no process holds it or it is not initialised yet).
    #[classmethod]
    #[pyo3(signature = (name, *, tag = "bytes"))]
    fn open(_cls: &Bound<'_, PyType>, py: Python<'_>, name: &str, tag: &str) -> PyResult<Py<Shared>> {
        Self::of(py, name, py.detach(|| SharedBytes::open(name, tag)))
    }

    #[getter]
    fn name(&self) -> &str {
        &self.locker.name
    }

    /// The value's size in bytes.
    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    fn __len__(&self) -> usize {
        self.size
    }

    /// The alignment it was made with.
    #[getter]
    fn align(&self) -> usize {
        self.align
    }

    /// Takes the value's lock, as `Mutex.acquire`.
    #[pyo3(signature = (blocking = true, timeout = None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        self.locker.acquire(py, blocking, timeout)
    }

    /// Releases the lock this thread holds.
    fn release(&self) -> PyResult<()> {
        self.locker.release()
    }

    /// As `Mutex.owner_died`: a holder died while holding the lock, and
    /// the bytes may be half-changed.
    #[getter]
    fn owner_died(&self) -> PyResult<bool> {
        self.locker.owner_died()
    }

    /// Declares the value consistent again, after repairing it (this
    /// thread must hold the lock).
    fn mark_consistent(&self) -> PyResult<()> {
        self.locker.mark_consistent()
    }

    /// Whether this thread holds the lock.
    fn held_here(&self) -> bool {
        self.locker.held_here()
    }

    /// A writable memoryview of the value's bytes (numpy.frombuffer wraps
    /// it). Use it while holding the lock: other processes change the
    /// bytes under theirs. It stays valid (mapped) after `close()`.
    fn view<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyMemoryView>> {
        let shared = self.locker.object(py)?;
        let view = Bound::new(py, SharedView { shared })?;
        PyMemoryView::from(view.as_any())
    }

    /// Lets go of the value (releasing the lock if this thread holds it);
    /// the named object goes once no process holds it. Later calls raise
    /// `Closed`; closing twice does nothing.
    fn close(&self) {
        self.locker.close();
    }

    /// `with shared as bytes:` acquires the lock (waiting as long as it
    /// takes) and gives `view()`; the block's end releases it.
    fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyMemoryView>> {
        self.acquire(py, true, None)?;
        let view = self.view(py);
        if view.is_err() {
            self.release()?;
        }
        view
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let closed = if self.locker.closed() { ", closed" } else { "" };
        format!("<copydata.Shared {:?}, {} bytes{closed}>", self.locker.name, self.size)
    }
}

/// What the thread that opens a shared value tells the caller: fill the
/// bytes at this address (run the initialiser), or the outcome.
enum Step {
    Fill(usize, usize),
    /// (Boxed: an opened value is much larger than the other step.)
    Done(Box<Result<SharedBytes, SyncOpenError>>),
}

/// Calls a `Shared` initialiser with a memoryview of a zero-filled
/// `bytearray` of the value's size, then copies what it wrote into
/// `bytes`: whatever the initialiser keeps (the view, a numpy array of
/// it) points into Python's memory, never into the value.
fn run_init(init: &Bound<'_, PyAny>, bytes: &mut [u8]) -> Result<(), PyErr> {
    let py = init.py();
    let buffer = PyByteArray::new_with(py, bytes.len(), |_| Ok(()))?;
    init.call1((PyMemoryView::from(buffer.as_any())?,))?;
    // (`memoryview.obj` reaches the bytearray, which could be resized.)
    let written = buffer.to_vec();
    if written.len() != bytes.len() {
        return Err(PyBufferError::new_err(format!(
            "the initialiser resized the value's buffer from {} to {} bytes",
            bytes.len(),
            written.len()
        )));
    }
    bytes.copy_from_slice(&written);
    Ok(())
}

/// The memory behind a `Shared.view()` memoryview: keeps the value mapped
/// while any buffer of it lives.
#[pyclass(frozen, module = "copydata", name = "SharedView")]
pub(crate) struct SharedView {
    shared: Arc<SharedBytes>,
}

#[pymethods]
impl SharedView {
    fn __len__(&self) -> usize {
        self.shared.len()
    }

    /// # Safety
    ///
    /// Called by the interpreter (`bf_getbuffer`) with the buffer to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, buffer: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let shared = &slf.get().shared;
        // SAFETY:
        // - `buffer` is the interpreter's (this method's contract);
        // - the value's `len` bytes are mapped while `shared` lives, which
        //   the export keeps alive through its reference to this object.
        unsafe {
            crate::export_writable(slf.as_any(), buffer, shared.as_ptr() as usize, shared.len(), flags, "shared value")
        }
    }

    /// # Safety
    ///
    /// Called by the interpreter (`bf_releasebuffer`): nothing to do.
    unsafe fn __releasebuffer__(&self, _buffer: *mut ffi::Py_buffer) {}
}

/// A named event shared by processes (`CreateEventW`; a futex word on
/// Linux): set it in one, wake waiters in others.
#[pyclass(module = "copydata", frozen, weakref)]
pub(crate) struct Event {
    name: String,
    kind: EventKind,
    /// `None` once closed.
    event: std::sync::Mutex<Option<Arc<copydata::sync::Event>>>,
}

impl Event {
    fn get(&self, py: Python<'_>) -> PyResult<Arc<copydata::sync::Event>> {
        let event = self.event.lock().unwrap_or_else(|e| e.into_inner()).clone();
        event.ok_or_else(|| self.closed(py))
    }

    /// The error of a call on a closed event.
    fn closed(&self, py: Python<'_>) -> PyErr {
        errors::raise(py, Kind::Closed, format!("event {:?} is closed", self.name))
    }

    fn of(py: Python<'_>, name: &str, opened: Result<copydata::sync::Event, SyncOpenError>) -> PyResult<Py<Event>> {
        let event = opened.map_err(|e| errors::sync_open_error(py, e))?;
        crate::opened(
            py,
            Event { name: name.to_owned(), kind: event.kind(), event: std::sync::Mutex::new(Some(Arc::new(event))) },
        )
    }
}

#[pymethods]
impl Event {
    /// Opens the event `name`, creating it unset if no process holds one:
    /// manual-reset (stays set until `reset`, waking every waiter) or, with
    /// `auto_reset=True`, auto-reset (wakes one waiter and resets itself).
    /// An existing event of the other kind raises `copydata.Error`
    /// (`Event.open` takes either).
    #[new]
    #[pyo3(signature = (name, auto_reset = false))]
    fn new(py: Python<'_>, name: &str, auto_reset: bool) -> PyResult<Py<Event>> {
        let kind = if auto_reset { EventKind::AutoReset } else { EventKind::ManualReset };
        Self::of(py, name, py.detach(|| copydata::sync::Event::open_or_create(name, kind)))
    }

    /// Opens the existing event `name` (`NotFound` if no process holds one).
    #[classmethod]
    fn open(_cls: &Bound<'_, PyType>, py: Python<'_>, name: &str) -> PyResult<Py<Event>> {
        Self::of(py, name, py.detach(|| copydata::sync::Event::open(name)))
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Whether the event resets itself when it wakes a waiter.
    #[getter]
    fn auto_reset(&self) -> bool {
        self.kind == EventKind::AutoReset
    }

    /// Sets the event: wakes its waiters (one, for an auto-reset event).
    fn set(&self, py: Python<'_>) -> PyResult<()> {
        self.get(py)?.set().map_err(|e| errors::io_error(py, e))
    }

    /// Resets the event to unset.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.get(py)?.reset().map_err(|e| errors::io_error(py, e))
    }

    /// Waits until the event is set, at most `timeout` seconds (None: as
    /// long as it takes; 0: only looks); returns whether it was, as
    /// `threading.Event.wait`. Ctrl-C interrupts the wait.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout_arg(py, timeout)?;
        let event = self.get(py)?;
        // One wait (a set and reset that come between two slices still end
        // it), which looks between slices for signals to handle and for a
        // `close` from another thread.
        let mut raised = None;
        let closed = || self.event.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        let waited = py.detach(|| {
            let waited = event.wait_checked(timeout, SLICE, || {
                if closed() {
                    return Err(std::io::Error::other("closed"));
                }
                Python::attach(|py| py.check_signals()).map_err(|e| {
                    raised = Some(e);
                    std::io::Error::from(std::io::ErrorKind::Interrupted)
                })
            });
            // (The reference goes before the interpreter is attached again
            // for good, as in `Locker::acquire`.)
            drop(event);
            waited
        });
        if let Some(e) = raised {
            return Err(e);
        }
        match waited {
            Ok(()) => Ok(true),
            Err(WaitError::TimedOut) => Ok(false),
            Err(WaitError::Io(_)) if closed() => Err(self.closed(py)),
            Err(e) => Err(errors::wait_error(py, e)),
        }
    }

    /// Lets go of the event; the named object goes once no process holds
    /// it. Later calls raise `Closed`; closing twice does nothing.
    fn close(&self) {
        drop(self.event.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, _exc_type: &Bound<'_, PyAny>, _exc: &Bound<'_, PyAny>, _tb: &Bound<'_, PyAny>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        let closed = self.event.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        format!("<copydata.Event {:?}, {}{}>", self.name, self.kind, if closed { ", closed" } else { "" })
    }
}

/// Says whether an object closed at exit is gone (see [`mark_closed_for_exit`]).
pub(crate) type Gone = Box<dyn Fn() -> bool + Send>;

/// Marks `object` closed for interpreter exit if it is a mutex, a shared
/// value or an event (`None` otherwise; see [`Locker::mark_closed`]),
/// saying when it is gone: the waits of other threads on it (which the
/// close ends, or which end within a slice) let go of it without the GIL,
/// and the last reference to go removes its name. Its `close()` follows.
pub(crate) fn mark_closed_for_exit(object: &Bound<'_, PyAny>) -> Option<Gone> {
    if let Ok(mutex) = object.cast::<Mutex>() {
        return Some(mutex.get().locker.mark_closed());
    }
    if let Ok(shared) = object.cast::<Shared>() {
        return Some(shared.get().locker.mark_closed());
    }
    if let Ok(event) = object.cast::<Event>() {
        let event = event.get();
        let weak = event.event.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(Arc::downgrade);
        event.close();
        return Some(Box::new(move || weak.as_ref().is_none_or(|w| w.strong_count() == 0)));
    }
    None
}
