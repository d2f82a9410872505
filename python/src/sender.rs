//! `copydata.Sender`: a connection to one mailbox, kept across calls.
//!
//! The connection lives on a thread of its own (the *worker*), which runs
//! each call; the Python thread hands it the call, then waits for the
//! result in slices, checking for signals in between, so Ctrl-C interrupts
//! a wait that has no timeout. An interrupted call cannot be taken back
//! (its message may already be handled): the worker finishes it in the
//! background, and the `Sender` goes on with a new worker and a new
//! connection, exactly as the Rust `Sender` does after a timeout.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender as Tx, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use copydata::{Reply, SendError, SenderOptions, TimeoutStage};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::errors::{self, Kind};
use crate::mailbox::reply_bytes;
use crate::section::Section;
use crate::{SLICE, Unanswered, bytes_arg, timeout_arg, wait_answer};

/// One call, run by the worker on its connection.
pub(crate) type Job = Box<dyn FnOnce(&mut copydata::Sender) -> Result<Option<Reply>, SendError> + Send>;

/// The thread that owns a connection and runs the calls on it.
pub(crate) struct Worker {
    jobs: Tx<Job>,
    /// (A `Receiver` is not `Sync`: the wait borrows it through a mutex,
    /// never contended, as only the call holding the turn waits.)
    pub(crate) results: Mutex<Receiver<Result<Option<Reply>, SendError>>>,
    thread: Option<JoinHandle<()>>,
    /// Whether a call was handed to the worker and has not ended: raised by
    /// the caller before it hands the call over, lowered by the worker.
    running: Arc<AtomicBool>,
    /// The process that started the thread: in a child made by `fork`
    /// there is no such thread, and the worker is left alone.
    pid: u32,
    /// The receiver's process id after the last call (0: not connected).
    receiver: Arc<AtomicU32>,
}

impl Worker {
    /// A worker with a sender that connects on its first call (within that
    /// call's timeout and `options`' connect timeout).
    fn start(name: &str, options: &SenderOptions) -> Result<Worker, SendError> {
        let mut sender = copydata::Sender::unconnected(name, options)?;
        let (jobs, rx) = channel::<Job>();
        let (tx, results) = channel();
        let running = Arc::new(AtomicBool::new(false));
        let busy = running.clone();
        let receiver = Arc::new(AtomicU32::new(0));
        let seen = receiver.clone();
        let spawned = std::thread::Builder::new().name("copydata-sender".into()).spawn(move || {
            // Ends when the `Sender` drops its end (closed, or moved on after
            // an interrupted call).
            while let Ok(job) = rx.recv() {
                let result = job(&mut sender);
                seen.store(sender.receiver_pid().unwrap_or(0), Ordering::SeqCst);
                busy.store(false, Ordering::SeqCst);
                if tx.send(result).is_err() {
                    break;
                }
            }
        });
        let thread = spawned.map_err(|source| SendError::Io { name: name.to_owned(), source })?;
        Ok(Worker {
            jobs,
            results: Mutex::new(results),
            thread: Some(thread),
            running,
            pid: std::process::id(),
            receiver,
        })
    }

    /// Hands `job` over; `false` if the worker is gone.
    pub(crate) fn hand(&self, job: Job) -> bool {
        self.running.store(true, Ordering::SeqCst);
        self.jobs.send(job).is_ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // An idle worker ends as soon as its channel closes: joined, so that
        // the connection is closed when `close()` returns. One still running
        // an interrupted call finishes it in the background, then ends; in
        // a forked child the thread does not exist.
        let (jobs, _) = channel();
        drop(std::mem::replace(&mut self.jobs, jobs));
        let Some(t) = self.thread.take() else { return };
        if self.pid != std::process::id() {
            // Inherited through `fork`: its thread is not in this process,
            // and its handle may name a thread made here since (the C
            // library reuses the memory); dropping it would detach that one.
            std::mem::forget(t);
        } else if !self.running.load(Ordering::SeqCst) {
            let _ = t.join();
        }
    }
}

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
/// Messages of one `Sender` arrive in the order they were sent, as long as
/// they go on one connection: after a call whose reply did not come in
/// time, or one that was interrupted, the next message goes on a new
/// connection, and may be
/// handled before messages still queued on the old one. Calls release the
/// GIL; one call at a time runs per `Sender` (a second thread waits its
/// turn, within its timeout). `close()` (or leaving a `with` block) closes
/// the connection once a call in progress ends; so does dropping the
/// object.
///
/// Every wait gives way to Ctrl-C; an interrupted message may still be
/// delivered, and the next call uses a new connection (so it can never
/// receive the reply of the interrupted one).
#[pyclass(frozen, module = "copydata", name = "Sender")]
pub(crate) struct Sender {
    name: String,
    /// The options of every connection (the connect timeout given).
    options: SenderOptions,
    /// Held only briefly, never while a call waits.
    state: Mutex<State>,
    /// The call in progress, if any, and its end signalled.
    busy: Mutex<Option<Busy>>,
    done: Condvar,
}

/// Who holds a `Sender`'s turn.
#[derive(Debug, Clone, Copy)]
struct Busy {
    thread: ThreadId,
    /// Held by a `Loan` (made on `thread`) until it is sent or closed.
    lent: bool,
}

/// A call's turn: ends (and lets the next call in) when dropped.
pub(crate) struct Turn<'a>(&'a Sender);

impl Turn<'_> {
    /// Keeps the turn past this guard, for a `Loan`, which ends it with
    /// [`Sender::end_loan`].
    pub(crate) fn lend(self) {
        if let Some(busy) = self.0.busy.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            busy.lent = true;
        }
        std::mem::forget(self);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.end_turn();
    }
}

impl Sender {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end_turn(&self) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.done.notify_one();
    }

    /// Ends the turn a `Loan` kept (see [`Turn::lend`]).
    pub(crate) fn end_loan(&self) {
        self.end_turn();
    }

    /// Whether `close()` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Waits (the GIL released, giving way to Ctrl-C) until no other call
    /// of this `Sender` is in progress, within `budget`. A call from this
    /// very thread while one is in progress (from a signal handler run
    /// during the wait) is refused: it would wait for itself.
    pub(crate) fn turn(&self, py: Python<'_>, budget: Budget) -> PyResult<Turn<'_>> {
        let me = std::thread::current().id();
        loop {
            let got = py.detach(|| {
                let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(b) = *busy
                    && b.thread == me
                {
                    return Err(b.lent);
                }
                let (mut busy, _) =
                    self.done.wait_timeout_while(busy, SLICE, |b| b.is_some()).unwrap_or_else(|e| e.into_inner());
                if busy.is_some() {
                    return Ok(false);
                }
                *busy = Some(Busy { thread: me, lent: false });
                Ok(true)
            });
            match got {
                Ok(true) => return Ok(Turn(self)),
                Ok(false) => {}
                Err(true) => {
                    return Err(errors::raise(
                        py,
                        Kind::Error,
                        "this thread holds a loan of this Sender: send it or close it first",
                    ));
                }
                Err(false) => {
                    return Err(errors::raise(
                        py,
                        Kind::Error,
                        "a call on this Sender is in progress on this thread (a signal handler cannot use it meanwhile)",
                    ));
                }
            }
            budget.left(&self.name).map_err(|e| errors::send_error(py, e))?;
            py.check_signals()?;
        }
    }

    pub(crate) fn closed_error(&self, py: Python<'_>) -> PyErr {
        errors::raise(py, Kind::Closed, format!("the sender to {:?} is closed", self.name))
    }

    /// The worker for the next call: the current one, or a new one (with a
    /// sender that connects within the call) if there is none, or it was
    /// inherited through `fork`.
    pub(crate) fn worker(&self) -> Result<Option<Arc<Worker>>, SendError> {
        let mut state = self.state();
        if state.closed {
            return Ok(None);
        }
        if let Some(w) = &state.worker
            && w.pid == std::process::id()
        {
            return Ok(Some(w.clone()));
        }
        let w = Arc::new(Worker::start(&self.name, &self.options)?);
        // (An inherited worker drops here without being joined.)
        state.worker = Some(w.clone());
        Ok(Some(w))
    }

    /// Runs `job` on the worker within `budget` and waits for its result,
    /// giving way to Ctrl-C if `interruptible`, else until the job has run.
    fn run(&self, py: Python<'_>, budget: Budget, interruptible: bool, job: Job) -> PyResult<Option<Reply>> {
        let _turn = self.turn(py, budget)?;
        let worker = self.worker().map_err(|e| errors::send_error(py, e))?;
        let Some(worker) = worker else { return Err(self.closed_error(py)) };
        if !worker.hand(job) {
            self.forget(py, worker);
            return Err(errors::raise(py, Kind::Error, "the sending thread is gone"));
        }
        match wait_answer(py, &worker.results, interruptible) {
            Ok(result) => {
                // (A worker `close()` let go of ends here.)
                py.detach(|| drop(worker));
                result.map_err(|e| errors::send_error(py, e))
            }
            Err(Unanswered::Interrupted(interrupted)) => {
                // The call goes on in the background with its connection;
                // the next one starts afresh.
                self.forget(py, worker);
                Err(interrupted)
            }
            Err(Unanswered::Gone) => {
                self.forget(py, worker);
                Err(errors::raise(py, Kind::Error, "the sending thread ended without an answer"))
            }
        }
    }
}

impl Sender {
    /// Forgets `worker` (the next call starts another, with a new
    /// connection), leaving it to end on its own once the call it runs is
    /// over.
    pub(crate) fn forget(&self, py: Python<'_>, worker: Arc<Worker>) {
        let mut state = self.state();
        if state.worker.as_ref().is_some_and(|w| Arc::ptr_eq(w, &worker)) {
            state.worker = None;
        }
        drop(state);
        py.detach(|| drop(worker));
    }
}

/// The time a call may take, from its start: its timeout counts the wait
/// for its turn and for a new connection too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    started: Instant,
    timeout: Option<Duration>,
    /// The stage of a time-out before the call itself (waiting for its
    /// turn): nothing was sent then, as when waiting for room.
    stage: TimeoutStage,
}

impl Budget {
    pub(crate) fn new(timeout: Option<Duration>) -> Budget {
        Budget { started: Instant::now(), timeout, stage: TimeoutStage::Room }
    }

    /// A flush's budget: its time-outs are all at the flush stage.
    pub(crate) fn flush(timeout: Option<Duration>) -> Budget {
        Budget { stage: TimeoutStage::Flush, ..Budget::new(timeout) }
    }

    /// The whole timeout (`None`: no limit).
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// What is left (`None`: no limit), or `TimedOut` once nothing is.
    pub(crate) fn left(&self, name: &str) -> Result<Option<Duration>, SendError> {
        match self.timeout {
            None => Ok(None),
            Some(t) => match t.checked_sub(self.started.elapsed()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(SendError::TimedOut { name: name.to_owned(), timeout: t, stage: self.stage }),
            },
        }
    }

    /// As [`left`](Self::left), but a timeout of 0 (or one used up) still
    /// gives one look: 0, no wait. For waits with something to find at
    /// once (room for a post, as `queue.put(timeout=0)`; a flush).
    pub(crate) fn left_or_once(&self, name: &str) -> Result<Option<Duration>, SendError> {
        match self.timeout {
            Some(t) if t.is_zero() => Ok(Some(Duration::ZERO)),
            _ => self.left(name),
        }
    }

    /// Runs `call` with what is left (`None`: no limit); a time-out is
    /// reported with the whole timeout, not what was left of it.
    pub(crate) fn spend<T>(
        &self,
        name: &str,
        call: impl FnOnce(Option<Duration>) -> Result<T, SendError>,
    ) -> Result<T, SendError> {
        call(self.left(name)?).map_err(|e| self.whole(e))
    }

    /// `e`, a time-out reported with the whole timeout, not what was left
    /// of it when the call that timed out began (at its own stage).
    pub(crate) fn whole(&self, e: SendError) -> SendError {
        match (e, self.timeout) {
            (SendError::TimedOut { name, stage, .. }, Some(timeout)) => SendError::TimedOut { name, timeout, stage },
            (e, _) => e,
        }
    }
}

#[pymethods]
impl Sender {
    /// Connects to the mailbox `name`, waiting at most `timeout` seconds
    /// for the receiver to complete the set-up (None: the default, 10 s);
    /// the same bound applies when a later call must connect again (after
    /// a time-out, an interrupted call, or the receiver's death). Raises
    /// `NotFound`, `TimedOut`, `InvalidName`. `max_reply` bounds the size of
    /// the replies taken, in bytes (None: 4 GiB): a larger one fails the
    /// call with `ProtocolError` before anything of it is mapped or copied,
    /// so a receiver cannot make this process allocate more. `park=True`
    /// makes both sides sleep at once rather than spin briefly (no CPU
    /// spent spinning; each hand-off costs a kernel wake-up). `owner`
    /// (Linux): the uid of the user whose mailbox it is, when another user
    /// bound it and allowed this one in (`Mailbox(allow_uids=...)`); the
    /// connection is refused unless the process listening really runs as
    /// that user.
    #[new]
    #[pyo3(signature = (name, timeout = None, *, max_reply = None, park = false, owner = None))]
    fn new(
        py: Python<'_>,
        name: &str,
        timeout: Option<f64>,
        max_reply: Option<u64>,
        park: bool,
        owner: Option<u32>,
    ) -> PyResult<Sender> {
        let mut options = SenderOptions::new();
        if park {
            options = options.wait(copydata::Wait::Park);
        }
        if let Some(uid) = owner {
            options = options.owner(uid);
        }
        if let Some(t) = timeout_arg(py, timeout)? {
            options = options.connect_timeout(t);
        }
        if let Some(max) = max_reply {
            options = options.max_reply(max);
        }
        let sender = Sender {
            name: name.to_owned(),
            options: options.clone(),
            state: Mutex::new(State { worker: None, closed: false }),
            busy: Mutex::new(None),
            done: Condvar::new(),
        };
        // Connects now (on the worker, so that Ctrl-C interrupts the wait),
        // so that a missing mailbox is reported here.
        let name = name.to_owned();
        let connect: Job = Box::new(move |s| {
            *s = copydata::Sender::connect_with(&name, &options)?;
            Ok(None)
        });
        sender.run(py, Budget::new(None), true, connect)?;
        Ok(sender)
    }

    /// The mailbox's name.
    #[getter]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Lends a buffer of `size` bytes in shared memory, to write in place
    /// and send without a copy: returns a `Loan` (see its help). Waits at
    /// most `timeout` seconds (None: as long as it takes) for this call's
    /// turn, a new connection if one is due, and a free buffer of the
    /// connection's pool (the receiver may still hold them all), then
    /// raises `TimedOut`; with `timeout=0`, raises `Full` at once when no
    /// buffer is free. Raises `TooLarge` above the receiver's limit.
    ///
    /// ```python
    /// with sender.loan(len(frame)) as loan:
    ///     with memoryview(loan) as m:
    ///         m[:] = frame            # or numpy.frombuffer, file.readinto
    ///     code, data = loan.send(tag=1)
    /// ```
    #[pyo3(signature = (size, timeout = None))]
    fn loan(slf: &Bound<'_, Self>, size: usize, timeout: Option<f64>) -> PyResult<crate::loan::Loan> {
        crate::loan::lend(slf, size, timeout)
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.is_closed()
    }

    /// The process id of the receiver on the other end of this sender's
    /// connection (the process that bound the mailbox, as the set-up
    /// checked it), as of the last call; None while not connected (after
    /// `close()`, or an interrupted or failed call).
    #[getter]
    fn receiver_pid(&self) -> Option<u32> {
        let state = self.state();
        if state.closed {
            return None;
        }
        let worker = state.worker.as_ref().filter(|w| w.pid == std::process::id())?;
        Some(worker.receiver.load(Ordering::SeqCst)).filter(|&pid| pid != 0)
    }

    /// Sends `data` (any bytes-like object) with `tag` and waits for the
    /// reply, at most `timeout` seconds (None: as long as the receiver
    /// lives): `SendMessage(WM_COPYDATA)`. Returns `(code, data)`. The
    /// timeout counts the whole call, including a wait for another
    /// thread's call on this `Sender` and a new connection if one is due.
    ///
    /// `sections` travel with the message, as for `copydata.send`.
    /// Raises `TimedOut` (its `stage` says what it waited for:
    /// `"connecting"` or `"room"`, nothing was sent; `"reply"`, the message
    /// may still be handled, its reply is discarded), `ReceiverDied`,
    /// `Refused`, `TooLarge`, `Closed`, and
    /// `NotFound` when a new connection is due and nobody has bound the
    /// name.
    #[pyo3(signature = (data, tag = 0, timeout = None, sections = None))]
    fn send<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        tag: u64,
        timeout: Option<f64>,
        sections: Option<Vec<PyRef<'py, Section>>>,
    ) -> PyResult<(i64, Bound<'py, PyBytes>)> {
        let budget = Budget::new(timeout_arg(py, timeout)?);
        let data = bytes_arg(data)?;
        let name = self.name.clone();
        let reply = if let Some(sections) = sections.filter(|s| !s.is_empty()) {
            // The job holds its own references to the handles: the call can
            // be interrupted like any other (the send then goes on in the
            // background, with them), and closing a section meanwhile
            // closes it once the send is over.
            let handles = sections.iter().map(|s| s.shared(py).cloned()).collect::<PyResult<Vec<_>>>()?;
            drop(sections);
            let job: Job = Box::new(move |s| {
                let handles: Vec<&copydata::Section> = handles.iter().map(|h| &**h).collect();
                budget.spend(&name, |left| s.send_with_sections(tag, &data, &handles, left)).map(Some)
            });
            self.run(py, budget, true, job)?.expect("a call has a reply")
        } else {
            let job: Job = Box::new(move |s| {
                let reply = budget.spend(&name, |left| match left {
                    Some(t) => s.send_timeout(tag, &data, t),
                    None => s.send(tag, &data),
                });
                reply.map(Some)
            });
            self.run(py, budget, true, job)?.expect("a call has a reply")
        };
        Ok((reply.code, reply_bytes(py, &reply)?))
    }

    /// Posts `data` with `tag`: no reply is awaited (`PostMessage`). When
    /// the receiver's queue is full, waits for room, at most `timeout`
    /// seconds (None: as long as it takes); a `TimedOut` post sent nothing.
    #[pyo3(signature = (data, tag = 0, timeout = None))]
    fn post(&self, py: Python<'_>, data: &Bound<'_, PyAny>, tag: u64, timeout: Option<f64>) -> PyResult<()> {
        let budget = Budget::new(timeout_arg(py, timeout)?);
        let data = bytes_arg(data)?;
        let name = self.name.clone();
        let job: Job = Box::new(move |s| {
            // A timeout of 0 posts if there is room now.
            let posted = match budget.left_or_once(&name)? {
                Some(t) => s.post_timeout(tag, &data, t),
                None => s.post(tag, &data),
            };
            posted.map(|()| None).map_err(|e| budget.whole(e))
        });
        self.run(py, budget, true, job).map(drop)
    }

    /// Waits until the messages posted so far no longer need this process,
    /// at most `timeout` seconds (None: as long as it takes). A process
    /// that exits right after posting flushes first: on Windows the
    /// receiver takes a large post's buffer (above 16 KiB, or a loan) out
    /// of the sending process when it takes the message off its queue, so
    /// flush waits for those (also those of connections this process
    /// dropped: after a timeout, or a closed Sender); small posts, and
    /// every post on Linux, need nothing of the sender, and it returns at
    /// once. Raises `ReceiverDied` when the receiver died with posts still
    /// queued (they are lost).
    #[pyo3(signature = (timeout = None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let budget = Budget::flush(timeout_arg(py, timeout)?);
        let name = self.name.clone();
        let job: Job = Box::new(move |s| {
            // With no time left (a timeout of 0), still one look.
            let flushed = match budget.left(&name).unwrap_or(Some(Duration::ZERO)) {
                Some(t) => s.flush_timeout(t),
                None => s.flush(),
            };
            flushed.map(|()| None).map_err(|e| budget.whole(e))
        });
        self.run(py, budget, true, job).map(drop)
    }

    /// Posts `data` with `tag` if the receiver's queue has room now, else
    /// raises `Full` (nothing sent). It waits only when the connection must
    /// be made again first (within the connect timeout).
    #[pyo3(signature = (data, tag = 0))]
    fn try_post(&self, py: Python<'_>, data: &Bound<'_, PyAny>, tag: u64) -> PyResult<()> {
        let data = bytes_arg(data)?;
        let job: Job = Box::new(move |s| s.try_post(tag, &data).map(|()| None));
        self.run(py, Budget::new(None), true, job).map(drop)
    }

    /// Closes the connection (messages posted before are still delivered,
    /// as long as this process lives until they are taken: see `flush`; a
    /// call in progress on another thread ends first). Later calls raise
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
