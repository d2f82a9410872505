//! `copydata.Sender`: a connection to one mailbox, kept across calls.
//!
//! The connection lives on a thread of its own (the *worker*), which runs
//! each call; the Python thread hands it the call, then waits for the
//! result in slices, checking for signals in between, so Ctrl-C interrupts
//! a wait that has no timeout. An interrupted call cannot be taken back
//! (its message may already be handled): the worker finishes it in the
//! background, and the `Sender` goes on with a new worker and a new
//! connection, exactly as the Rust `Sender` does after a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender as Tx, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use copydata::{Reply, SendError, SenderOptions};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::errors::{self, Kind};
use crate::mailbox::reply_bytes;
use crate::section::Section;
use crate::{SLICE, bytes_arg, timeout_arg};

/// One call, run by the worker on its connection.
type Job = Box<dyn FnOnce(&mut copydata::Sender) -> Result<Option<Reply>, SendError> + Send>;

/// The thread that owns a connection and runs the calls on it.
struct Worker {
    jobs: Tx<Job>,
    /// (A `Receiver` is not `Sync`: the wait borrows it through a mutex,
    /// never contended, as the `State` lock is held meanwhile.)
    results: Mutex<Receiver<Result<Option<Reply>, SendError>>>,
    thread: Option<JoinHandle<()>>,
    /// Whether the worker is running a call.
    running: Arc<AtomicBool>,
}

impl Worker {
    fn start(mut sender: copydata::Sender) -> std::io::Result<Worker> {
        let (jobs, rx) = channel::<Job>();
        let (tx, results) = channel();
        let running = Arc::new(AtomicBool::new(false));
        let busy = running.clone();
        let thread = std::thread::Builder::new().name("copydata-sender".into()).spawn(move || {
            // Ends when the `Sender` drops its end (closed, or moved on after
            // an interrupted call).
            while let Ok(job) = rx.recv() {
                busy.store(true, Ordering::SeqCst);
                let result = job(&mut sender);
                busy.store(false, Ordering::SeqCst);
                if tx.send(result).is_err() {
                    break;
                }
            }
        })?;
        Ok(Worker { jobs, results: Mutex::new(results), thread: Some(thread), running })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // An idle worker ends as soon as its channel closes: joined, so that
        // the connection is closed when `close()` returns. One still running
        // an interrupted call finishes it in the background, then ends.
        let (jobs, _) = channel();
        drop(std::mem::replace(&mut self.jobs, jobs));
        if let Some(t) = self.thread.take()
            && !self.running.load(Ordering::SeqCst)
        {
            let _ = t.join();
        }
    }
}

/// A section borrowed by a call that the worker runs (see `Sender::send`).
struct Borrowed(*const copydata::Section);

// SAFETY: a `copydata::Section` is `Sync` (its handle may be used from any
// thread); the pointer is only dereferenced while the call that lent it
// waits for the worker, holding the borrow (see `Sender::send`).
unsafe impl Send for Borrowed {}

/// What a `Sender` holds between calls.
struct State {
    /// `None` before the first call after an interrupted one; the next call
    /// starts a worker with a new connection. (Shared with the call in
    /// progress, so that `close()` need not wait for it.)
    worker: Option<Arc<Worker>>,
    closed: bool,
}

/// A connection to the mailbox `name`, kept for every call (much cheaper
/// than `copydata.send`, which connects for each message).
///
/// Messages of one `Sender` arrive in the order they were sent. Calls
/// release the GIL; one call at a time runs per `Sender` (a second thread
/// waits its turn). `close()` (or leaving a `with` block) closes the
/// connection once a call in progress ends; so does dropping the object.
///
/// A wait without a timeout gives way to Ctrl-C; the message may still be
/// delivered then, and the next call uses a new connection (so it can never
/// receive the reply of the interrupted one).
#[pyclass(frozen, module = "copydata", name = "Sender")]
pub(crate) struct Sender {
    name: String,
    /// Held only briefly, never while a call waits.
    state: Mutex<State>,
    /// Whether a call is in progress, and its end signalled.
    busy: Mutex<bool>,
    done: Condvar,
}

/// A call's turn: ends (and lets the next call in) when dropped.
struct Turn<'a>(&'a Sender);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.done.notify_one();
    }
}

impl Sender {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (the GIL released, giving way to Ctrl-C) until no other call
    /// of this `Sender` is in progress.
    fn turn(&self, py: Python<'_>) -> PyResult<Turn<'_>> {
        loop {
            let got = py.detach(|| {
                let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                let (mut busy, _) =
                    self.done.wait_timeout_while(busy, SLICE, |b| *b).unwrap_or_else(|e| e.into_inner());
                !std::mem::replace(&mut *busy, true)
            });
            if got {
                return Ok(Turn(self));
            }
            py.check_signals()?;
        }
    }

    fn closed_error(&self, py: Python<'_>) -> PyErr {
        errors::raise(py, Kind::Closed, format!("the sender to {:?} is closed", self.name))
    }

    /// Runs `job` on the worker (started first if need be, with a new
    /// connection bounded by `timeout`) and waits for its result, giving way
    /// to Ctrl-C if `interruptible`, else until the job has run.
    fn run(&self, py: Python<'_>, timeout: Option<Duration>, interruptible: bool, job: Job) -> PyResult<Option<Reply>> {
        let _turn = self.turn(py)?;
        let current = {
            let state = self.state();
            if state.closed {
                return Err(self.closed_error(py));
            }
            state.worker.clone()
        };
        let worker = match current {
            Some(w) => w,
            None => {
                let sender = py.detach(|| connect(&self.name, timeout)).map_err(|e| errors::send_error(py, e))?;
                let w = Arc::new(Worker::start(sender)?);
                let mut state = self.state();
                if state.closed {
                    return Err(self.closed_error(py));
                }
                state.worker = Some(w.clone());
                w
            }
        };
        // Forgets this worker (the next call starts another), leaving it to
        // end on its own once the call it runs is over.
        let forget = |py: Python<'_>, worker: Arc<Worker>| {
            let mut state = self.state();
            if state.worker.as_ref().is_some_and(|w| Arc::ptr_eq(w, &worker)) {
                state.worker = None;
            }
            drop(state);
            py.detach(|| drop(worker));
        };
        if worker.jobs.send(job).is_err() {
            forget(py, worker);
            return Err(errors::raise(py, Kind::Error, "the sending thread is gone"));
        }
        loop {
            let results = &worker.results;
            let received = py.detach(|| {
                let results = results.lock().unwrap_or_else(|e| e.into_inner());
                if interruptible {
                    results.recv_timeout(SLICE)
                } else {
                    results.recv().map_err(|_| RecvTimeoutError::Disconnected)
                }
            });
            match received {
                Ok(result) => {
                    // (A worker `close()` let go of ends here.)
                    py.detach(|| drop(worker));
                    return result.map_err(|e| errors::send_error(py, e));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(interrupted) = py.check_signals() {
                        // The call goes on in the background with its
                        // connection; the next one starts afresh.
                        forget(py, worker);
                        return Err(interrupted);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    forget(py, worker);
                    return Err(errors::raise(py, Kind::Error, "the sending thread ended without an answer"));
                }
            }
        }
    }
}

/// A connection to `name`, its set-up bounded by `timeout` (the default
/// connect timeout without one).
fn connect(name: &str, timeout: Option<Duration>) -> Result<copydata::Sender, SendError> {
    let mut options = SenderOptions::new();
    if let Some(t) = timeout {
        options = options.connect_timeout(t);
    }
    copydata::Sender::connect_with(name, &options)
}

#[pymethods]
impl Sender {
    /// Connects to the mailbox `name`, waiting at most `timeout` seconds
    /// for the receiver to complete the set-up (None: the default, 2 s).
    /// Raises `NotFound`, `TimedOut`, `InvalidName`.
    #[new]
    #[pyo3(signature = (name, timeout = None))]
    fn new(py: Python<'_>, name: &str, timeout: Option<f64>) -> PyResult<Sender> {
        let timeout = timeout_arg(py, timeout)?;
        let sender = py.detach(|| connect(name, timeout)).map_err(|e| errors::send_error(py, e))?;
        let worker = Arc::new(Worker::start(sender)?);
        Ok(Sender {
            name: name.to_owned(),
            state: Mutex::new(State { worker: Some(worker), closed: false }),
            busy: Mutex::new(false),
            done: Condvar::new(),
        })
    }

    /// The mailbox's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.state().closed
    }

    /// Sends `data` (any bytes-like object) with `tag` and waits for the
    /// reply, at most `timeout` seconds (None: as long as the receiver
    /// lives): `SendMessage(WM_COPYDATA)`. Returns `(code, data)`.
    ///
    /// `sections` travel with the message, as for `copydata.send`; Ctrl-C
    /// is seen only once such a send ends, so give it a timeout.
    /// Raises `TimedOut` (the message may still be handled; its reply is
    /// discarded), `ReceiverDied`, `Refused`, `TooLarge`, `Closed`.
    #[pyo3(signature = (data, tag = 0, timeout = None, sections = None))]
    fn send<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        tag: u64,
        timeout: Option<f64>,
        sections: Option<Vec<PyRef<'py, Section>>>,
    ) -> PyResult<(i64, Bound<'py, PyBytes>)> {
        let timeout = timeout_arg(py, timeout)?;
        let data = bytes_arg(data)?;
        let reply = if let Some(sections) = sections.filter(|s| !s.is_empty()) {
            let handles =
                sections.iter().map(|s| s.handle(py).map(|h| Borrowed(h as *const _))).collect::<PyResult<Vec<_>>>()?;
            let job: Job = Box::new(move |s| {
                // SAFETY: the sections are borrowed from their `Section`
                // objects (the `PyRef`s in `sections`, which also keep them
                // open) until this call returns, and it returns only once
                // the job has run (`run` without interruption).
                let handles: Vec<&copydata::Section> = handles.iter().map(|b| unsafe { &*b.0 }).collect();
                s.send_with_sections(tag, &data, &handles, timeout).map(Some)
            });
            let reply = self.run(py, timeout, false, job);
            drop(sections);
            reply?.expect("a call has a reply")
        } else {
            let job: Job = Box::new(move |s| match timeout {
                Some(t) => s.send_timeout(tag, &data, t).map(Some),
                None => s.send(tag, &data).map(Some),
            });
            self.run(py, timeout, true, job)?.expect("a call has a reply")
        };
        Ok((reply.code, reply_bytes(py, &reply)))
    }

    /// Posts `data` with `tag`: no reply is awaited (`PostMessage`). When
    /// the receiver's queue is full, waits for room, at most `timeout`
    /// seconds (None: as long as it takes); a `TimedOut` post sent nothing.
    #[pyo3(signature = (data, tag = 0, timeout = None))]
    fn post(&self, py: Python<'_>, data: &Bound<'_, PyAny>, tag: u64, timeout: Option<f64>) -> PyResult<()> {
        let timeout = timeout_arg(py, timeout)?;
        let data = bytes_arg(data)?;
        let job: Job = Box::new(move |s| match timeout {
            Some(t) => s.post_timeout(tag, &data, t).map(|()| None),
            None => s.post(tag, &data).map(|()| None),
        });
        self.run(py, timeout, true, job).map(drop)
    }

    /// Posts `data` with `tag` if the receiver's queue has room now, else
    /// raises `Full` (nothing sent).
    #[pyo3(signature = (data, tag = 0))]
    fn try_post(&self, py: Python<'_>, data: &Bound<'_, PyAny>, tag: u64) -> PyResult<()> {
        let data = bytes_arg(data)?;
        let job: Job = Box::new(move |s| s.try_post(tag, &data).map(|()| None));
        self.run(py, None, true, job).map(drop)
    }

    /// Closes the connection (messages posted before are still delivered;
    /// a call in progress on another thread ends first). Later calls raise
    /// `Closed`; closing twice does nothing.
    fn close(&self, py: Python<'_>) {
        let worker = {
            let mut state = self.state();
            state.closed = true;
            state.worker.take()
        };
        py.detach(|| drop(worker));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let closed = if self.state().closed { ", closed" } else { "" };
        format!("<copydata.Sender to {:?}{closed}>", self.name)
    }
}
