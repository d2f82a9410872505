//! `copydata.Mutex` and `copydata.Event`: named objects shared by
//! processes, over `copydata::sync`.
//!
//! An OS mutex belongs to the thread that locked it: only that thread may
//! unlock it. The Python object keeps the held lock as an
//! [`ArcMutexGuard`], which knows its thread (and process) and unlocks
//! only there. A lock still held when its object goes away on another
//! thread, or in a child made by `fork`, is left to the OS: it is
//! released when its thread ends, and the next locker is told its owner
//! died.

use std::sync::Arc;
use std::time::Instant;

use copydata::sync::{ArcMutexGuard, EventKind, LockError, SyncOpenError, WaitError};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::errors::{self, Kind};
use crate::{SLICE, timeout_arg};

/// A named mutex shared by processes, that survives its owner's death
/// (`CreateMutexW`; a robust process-shared mutex on Linux).
#[pyclass(module = "copydata._copydata", frozen)]
pub(crate) struct Mutex {
    name: String,
    /// `None` once closed.
    mutex: std::sync::Mutex<Option<Arc<copydata::sync::Mutex>>>,
    held: std::sync::Mutex<Option<ArcMutexGuard>>,
}

impl Mutex {
    fn open_mutex(py: Python<'_>, name: &str, create: bool) -> PyResult<Mutex> {
        let opened = py.detach(|| {
            if create { copydata::sync::Mutex::open_or_create(name) } else { copydata::sync::Mutex::open(name) }
        });
        let mutex = opened.map_err(|e| errors::sync_open_error(py, e))?;
        Ok(Mutex {
            name: name.to_owned(),
            mutex: std::sync::Mutex::new(Some(Arc::new(mutex))),
            held: std::sync::Mutex::new(None),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<ArcMutexGuard>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the lock this thread holds.
    fn with_mine<T>(&self, what: &str, f: impl FnOnce(&mut ArcMutexGuard) -> T) -> PyResult<T> {
        match self.held().as_mut() {
            Some(h) if h.is_mine() => Ok(f(h)),
            _ => Err(PyRuntimeError::new_err(format!("{what}: this thread does not hold mutex {:?}", self.name))),
        }
    }
}

#[pymethods]
impl Mutex {
    /// Opens the mutex `name`, creating it (unlocked) if no process holds
    /// one.
    #[new]
    fn new(py: Python<'_>, name: &str) -> PyResult<Mutex> {
        Self::open_mutex(py, name, true)
    }

    /// Opens the existing mutex `name` (`NotFound` if no process holds one).
    #[classmethod]
    fn open(_cls: &Bound<'_, PyType>, py: Python<'_>, name: &str) -> PyResult<Mutex> {
        Self::open_mutex(py, name, false)
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Takes the lock, as `threading.Lock.acquire`: waits as long as it
    /// takes, at most `timeout` seconds, or (`blocking=False`) not at all;
    /// returns whether it got it. The thread that took it releases it.
    /// Not recursive: acquiring it again on the same thread raises.
    /// Ctrl-C interrupts the wait.
    #[pyo3(signature = (blocking = true, timeout = None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout_arg(py, timeout)?;
        if !blocking && timeout.is_some() {
            return Err(errors::raise(py, Kind::InvalidArgument, "a timeout needs blocking=True"));
        }
        if self.held().as_ref().is_some_and(ArcMutexGuard::is_mine) {
            return Err(PyRuntimeError::new_err(format!("this thread already holds mutex {:?}", self.name)));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let Some(mutex) = self.mutex.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
                return Err(errors::raise(py, Kind::Closed, format!("mutex {:?} is closed", self.name)));
            };
            let slice =
                blocking.then(|| deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()).min(SLICE)));
            // The lock is taken on this thread (`detach` runs the closure
            // here).
            let locked = py.detach(|| match slice {
                Some(s) => mutex.lock_arc_timeout(s),
                None => mutex.try_lock_arc(),
            });
            match locked {
                Ok(held) => {
                    *self.held() = Some(held);
                    return Ok(true);
                }
                Err(LockError::WouldBlock) => return Ok(false),
                Err(LockError::TimedOut) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
                Err(LockError::TimedOut) => py.check_signals()?,
                Err(e) => return Err(errors::lock_error(py, e)),
            }
        }
    }

    /// Releases the lock this thread holds (`RuntimeError` otherwise, as
    /// `threading.Lock.release`).
    fn release(&self) -> PyResult<()> {
        let mut held = self.held();
        match held.as_ref() {
            Some(h) if h.is_mine() => {
                drop(held.take());
                Ok(())
            }
            _ => Err(PyRuntimeError::new_err(format!("release of mutex {:?}, not held by this thread", self.name))),
        }
    }

    /// Whether a holder died while holding the lock and nobody has marked
    /// the protected state consistent since: check it after `acquire`
    /// (raises unless this thread holds the lock).
    #[getter]
    fn owner_died(&self) -> PyResult<bool> {
        self.with_mine("owner_died", |h| h.owner_died())
    }

    /// Declares the protected state consistent again, after repairing it
    /// (this thread must hold the lock).
    fn mark_consistent(&self) -> PyResult<()> {
        self.with_mine("mark_consistent", |h| h.mark_consistent())
    }

    /// Whether this thread holds the lock.
    fn held_here(&self) -> bool {
        self.held().as_ref().is_some_and(ArcMutexGuard::is_mine)
    }

    /// Lets go of the mutex (releasing the lock if this thread holds it);
    /// the named object goes once no process holds it. Later calls raise
    /// `Closed`; closing twice does nothing.
    fn close(&self) {
        let mine = {
            let mut held = self.held();
            if held.as_ref().is_some_and(ArcMutexGuard::is_mine) { held.take() } else { None }
        };
        drop(mine);
        drop(self.mutex.lock().unwrap_or_else(|e| e.into_inner()).take());
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
        let closed = self.mutex.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        format!("<copydata.Mutex {:?}{}>", self.name, if closed { ", closed" } else { "" })
    }
}

/// A named event shared by processes (`CreateEventW`; a futex word on
/// Linux): set it in one, wake waiters in others.
#[pyclass(module = "copydata._copydata", frozen)]
pub(crate) struct Event {
    name: String,
    kind: EventKind,
    /// `None` once closed.
    event: std::sync::Mutex<Option<Arc<copydata::sync::Event>>>,
}

impl Event {
    fn get(&self, py: Python<'_>) -> PyResult<Arc<copydata::sync::Event>> {
        let event = self.event.lock().unwrap_or_else(|e| e.into_inner()).clone();
        event.ok_or_else(|| errors::raise(py, Kind::Closed, format!("event {:?} is closed", self.name)))
    }

    fn of(py: Python<'_>, name: &str, opened: Result<copydata::sync::Event, SyncOpenError>) -> PyResult<Event> {
        let event = opened.map_err(|e| errors::sync_open_error(py, e))?;
        Ok(Event { name: name.to_owned(), kind: event.kind(), event: std::sync::Mutex::new(Some(Arc::new(event))) })
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
    fn new(py: Python<'_>, name: &str, auto_reset: bool) -> PyResult<Event> {
        let kind = if auto_reset { EventKind::AutoReset } else { EventKind::ManualReset };
        Self::of(py, name, py.detach(|| copydata::sync::Event::open_or_create(name, kind)))
    }

    /// Opens the existing event `name` (`NotFound` if no process holds one).
    #[classmethod]
    fn open(_cls: &Bound<'_, PyType>, py: Python<'_>, name: &str) -> PyResult<Event> {
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
        let deadline = timeout_arg(py, timeout)?.and_then(|t| Instant::now().checked_add(t));
        loop {
            let event = self.get(py)?;
            let slice = deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()).min(SLICE));
            match py.detach(|| event.wait_timeout(slice)) {
                Ok(()) => return Ok(true),
                Err(WaitError::TimedOut) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
                Err(WaitError::TimedOut) => py.check_signals()?,
                Err(e) => return Err(errors::wait_error(py, e)),
            }
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
