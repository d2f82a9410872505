//! `copydata.Loan`: a buffer in shared memory lent by a `Sender`, written
//! in place through the buffer protocol and sent without a copy.
//!
//! The Rust loan borrows its sender, so it lives on the sender's worker
//! thread: the job that makes it hands its address back, then waits for
//! what to do with it (send, post, or nothing: the loan is given back when
//! the command channel closes) and reports each outcome on a channel of
//! its own. The `Loan` holds the `Sender`'s turn from its making to its
//! end, so no other call runs on the connection meanwhile.
//!
//! Once sent, the memory is the receiver's, then the next loan's: the
//! `Loan` refuses to send (or close) while any buffer it exported is
//! still held, as `bytearray` refuses to resize, and exports nothing
//! afterwards.

use std::ffi::c_int;
use std::sync::mpsc::{Receiver, Sender as Tx, channel};
use std::sync::{Arc, Mutex, MutexGuard};

use copydata::{Reply, SendError};
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{self, Kind};
use crate::mailbox::reply_bytes;
use crate::sender::{Budget, Job, Sender, Worker};
use crate::{Unanswered, timeout_arg, wait_answer};

/// What the owner of a loan asks of the job that holds it.
enum Command {
    Send {
        tag: u64,
        budget: Budget,
    },
    /// `wait: false` for `try_post`.
    Post {
        tag: u64,
        budget: Budget,
        wait: bool,
    },
}

/// How a command ended: a reply (send), nothing (post), or an error and
/// whether the loan is still out (a post that found no room).
type Outcome = Result<Option<Reply>, (SendError, bool)>;

/// The loan's job on the worker: lends `len` bytes within `budget`, hands
/// the address to `lent`, then carries out `commands` until one sends the
/// loan or the channel closes (the loan is then given back unsent).
fn job(
    name: String,
    len: usize,
    budget: Budget,
    lent: Tx<usize>,
    commands: Receiver<Command>,
    outcomes: Tx<Outcome>,
) -> Job {
    Box::new(move |s| {
        let mut loan = if budget.timeout().is_some_and(|t| t.is_zero()) {
            s.try_loan(len)?
        } else {
            budget.spend(&name, |left| match left {
                Some(t) => s.loan_timeout(len, t),
                None => s.loan(len),
            })?
        };
        if lent.send(loan.as_mut_ptr() as usize).is_err() {
            return Ok(None); // the caller gave up waiting
        }
        while let Ok(command) = commands.recv() {
            let outcome = match command {
                Command::Send { tag, budget } => match budget.left(&name) {
                    // No time left to send in: nothing sent, the loan kept.
                    Err(e) => Err((e, Some(loan))),
                    Ok(left) => {
                        let reply = match left {
                            Some(t) => loan.send_timeout(tag, t),
                            None => loan.send(tag),
                        };
                        let _ = outcomes.send(reply.map(Some).map_err(|e| (budget.whole(e), false)));
                        return Ok(None);
                    }
                },
                // (A timeout of 0 posts if there is room now.)
                Command::Post { tag, budget, wait } => match budget.left_or_once(&name) {
                    Err(e) => Err((e, Some(loan))),
                    Ok(left) => {
                        let posted = match (wait, left) {
                            (false, _) => loan.try_post(tag).map_err(|e| e.into_parts()),
                            (true, Some(t)) => loan.post_timeout(tag, t).map_err(|e| e.into_parts()),
                            (true, None) => loan.post(tag).map_err(|e| (e, None)),
                        };
                        posted.map_err(|(e, back)| (budget.whole(e), back))
                    }
                },
            };
            match outcome {
                Ok(()) => {
                    let _ = outcomes.send(Ok(None));
                    return Ok(None);
                }
                Err((e, Some(back))) => {
                    loan = back;
                    let _ = outcomes.send(Err((e, true)));
                }
                Err((e, None)) => {
                    let _ = outcomes.send(Err((e, false)));
                    return Ok(None);
                }
            }
        }
        Ok(None)
    })
}

/// Makes a loan of `len` bytes on `sender`'s connection (see
/// `Sender.loan`).
pub(crate) fn lend(sender: &Bound<'_, Sender>, len: usize, timeout: Option<f64>) -> PyResult<Loan> {
    let py = sender.py();
    let this = sender.get();
    let budget = Budget::new(timeout_arg(py, timeout)?);
    let turn = this.turn(py, budget)?;
    let worker = this.worker().map_err(|e| errors::send_error(py, e))?;
    let Some(worker) = worker else { return Err(this.closed_error(py)) };
    let pid = std::process::id();
    let (lent_tx, lent) = channel();
    let lent = Mutex::new(lent);
    let (commands, commands_rx) = channel();
    let (outcomes_tx, outcomes) = channel();
    if !worker.hand(job(this.name().to_owned(), len, budget, lent_tx, commands_rx, outcomes_tx)) {
        this.forget(py, worker);
        return Err(errors::raise(py, Kind::Error, "the sending thread is gone"));
    }
    match wait_answer(py, &lent, true) {
        Ok(ptr) => {
            turn.lend();
            let state = State::Out(Out { worker, commands, outcomes: Mutex::new(outcomes), exports: 0 });
            Ok(Loan { sender: sender.clone().unbind(), ptr, len, pid, state: Mutex::new(state) })
        }
        Err(Unanswered::Interrupted(interrupted)) => {
            // The job gives the loan back once it finds no one to take it;
            // the next call starts afresh.
            this.forget(py, worker);
            Err(interrupted)
        }
        Err(Unanswered::Gone) => {
            // The job ended without a loan: its result says why.
            let result = py.detach(|| worker.results.lock().unwrap_or_else(|e| e.into_inner()).recv());
            match result {
                Ok(Err(e)) => Err(errors::send_error(py, e)),
                _ => {
                    this.forget(py, worker);
                    Err(errors::raise(py, Kind::Error, "the sending thread ended without a loan"))
                }
            }
        }
    }
}

/// A loan out: writable, and held by the worker's job.
struct Out {
    worker: Arc<Worker>,
    commands: Tx<Command>,
    /// (Waited on through [`wait_answer`], which borrows it through a lock.)
    outcomes: Mutex<Receiver<Outcome>>,
    /// Buffers exported and not released yet.
    exports: usize,
}

enum State {
    Out(Out),
    /// A command is under way (its call holds the `Out`, without the lock,
    /// so that other threads can look at the loan meanwhile).
    Busy,
    /// Sent, posted, given back, or lost with an interrupted call.
    Ended(&'static str),
}

/// A buffer of shared memory lent by `Sender.loan(size)`: write it in place
/// through the buffer protocol (`memoryview(loan)`, `numpy.frombuffer(loan,
/// dtype)`, `file.readinto(loan)`), then `send`, `post` or `try_post` it;
/// the receiver reads the bytes where they are, with no copy on the way.
///
/// Until then the `Sender` makes no other call: another thread's call
/// waits its turn (within its timeout), and one from the thread that made
/// the loan is refused (it would wait for itself; so would a thread the
/// loan was handed to). Sending needs every buffer taken from the loan
/// released first (`BufferError` otherwise: the memory is the receiver's
/// once sent); `with memoryview(loan) as m:` does that. `close()` (or
/// leaving a `with` block, or dropping the loan) gives an unsent loan back.
/// Once its `Sender` is closed, a loan can only be closed (sending raises
/// `Closed` and gives it back); in a child made by `fork`, likewise (the
/// memory is the parent's).
#[pyclass(frozen, module = "copydata", name = "Loan")]
pub(crate) struct Loan {
    sender: Py<Sender>,
    /// The buffer's address, valid while the loan is out.
    ptr: usize,
    len: usize,
    /// The process that made the loan: in a child made by `fork` the job
    /// holding it does not exist, and the memory is the parent's.
    pid: u32,
    state: Mutex<State>,
}

impl Loan {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forked(&self) -> bool {
        self.pid != std::process::id()
    }

    /// Takes the loan for a command (`what`), refused once it ended, while
    /// another command is under way, while a buffer of it is held, in a
    /// child made by `fork`, and once its `Sender` is closed (the loan is
    /// then given back).
    fn take(&self, py: Python<'_>, what: &str) -> PyResult<Out> {
        enum No {
            Ended(&'static str),
            Busy,
            Held(usize),
        }
        // Decided under the lock, raised after it (raising runs Python).
        let taken = {
            let mut state = self.state();
            match &*state {
                State::Ended(how) => Err(No::Ended(how)),
                State::Busy => Err(No::Busy),
                State::Out(out) if out.exports > 0 => Err(No::Held(out.exports)),
                State::Out(_) => match std::mem::replace(&mut *state, State::Busy) {
                    State::Out(out) => Ok(out),
                    _ => unreachable!("matched above"),
                },
            }
        };
        let out = match taken {
            Ok(out) => out,
            Err(No::Ended(how)) => return Err(errors::raise(py, Kind::Error, format!("the loan was {how}"))),
            Err(No::Busy) => return Err(errors::raise(py, Kind::Error, "a call on this loan is in progress")),
            Err(No::Held(n)) => {
                return Err(PyBufferError::new_err(format!(
                    "cannot {what} the loan while {n} buffer(s) of it are held: release them first (del the memoryview or array, or use `with memoryview(loan) as m:`)"
                )));
            }
        };
        if what != "close" {
            if self.forked() {
                *self.state() = State::Out(out);
                return Err(errors::raise(
                    py,
                    Kind::Error,
                    "the loan was made by the parent process: a child made by fork can only close it",
                ));
            }
            let sender = self.sender.get();
            if sender.is_closed() {
                self.end(py, out, "closed with its Sender");
                return Err(sender.closed_error(py));
            }
        }
        Ok(out)
    }

    /// Ends the loan: its job (if still running) gives it back, the
    /// worker's result is taken (so the next call gets its own), and the
    /// `Sender`'s turn ends.
    fn end(&self, py: Python<'_>, out: Out, how: &'static str) {
        let Out { worker, commands, .. } = out;
        drop(commands);
        // The job ends at once when its commands close, if it has not. (In a
        // child made by `fork` there is no job: the worker is dropped as
        // inherited, see `Worker`'s `Drop`.)
        let forked = self.forked();
        py.detach(|| {
            if !forked {
                let _ = worker.results.lock().unwrap_or_else(|e| e.into_inner()).recv();
            }
            drop(worker);
        });
        *self.state() = State::Ended(how);
        self.sender.get().end_loan();
    }

    /// Ends the loan without waiting for its job, which goes on in the
    /// background with its connection; the `Sender` moves on to a new one.
    fn lose(&self, py: Python<'_>, out: Out, how: &'static str) {
        *self.state() = State::Ended(how);
        self.sender.get().forget(py, out.worker);
        self.sender.get().end_loan();
    }

    /// Hands `command` to the job and waits for its outcome, giving way to
    /// Ctrl-C (the loan is then lost: the command goes on in the
    /// background).
    fn command(&self, py: Python<'_>, command: Command, what: &str) -> PyResult<Option<Reply>> {
        let out = self.take(py, what)?;
        if out.commands.send(command).is_err() {
            self.lose(py, out, "lost with its sending thread");
            return Err(errors::raise(py, Kind::Error, "the sending thread is gone"));
        }
        match wait_answer(py, &out.outcomes, true) {
            Ok(Err((e, true))) => {
                *self.state() = State::Out(out);
                Err(errors::send_error(py, e))
            }
            Ok(outcome) => {
                let how = match (&outcome, what) {
                    (Err(_), _) => "lost with a failed call",
                    (Ok(_), "send") => "sent",
                    (Ok(_), _) => "posted",
                };
                self.end(py, out, how);
                outcome.map_err(|(e, _)| errors::send_error(py, e))
            }
            Err(Unanswered::Interrupted(interrupted)) => {
                self.lose(py, out, "lost with an interrupted call");
                Err(interrupted)
            }
            Err(Unanswered::Gone) => {
                self.lose(py, out, "lost with its sending thread");
                Err(errors::raise(py, Kind::Error, "the sending thread ended without an answer"))
            }
        }
    }
}

#[pymethods]
impl Loan {
    fn __len__(&self) -> usize {
        self.len
    }

    /// Whether the loan is still out (not sent, posted or closed).
    #[getter]
    fn lent(&self) -> bool {
        !matches!(*self.state(), State::Ended(_))
    }

    /// Sends the loan with `tag` and waits for the reply, at most `timeout`
    /// seconds (None: as long as the receiver lives), as `Sender.send`
    /// does. Returns `(code, data)`. The loan is gone afterwards, whatever
    /// the outcome.
    #[pyo3(signature = (tag = 0, timeout = None))]
    fn send<'py>(&self, py: Python<'py>, tag: u64, timeout: Option<f64>) -> PyResult<(i64, Bound<'py, PyBytes>)> {
        let budget = Budget::new(timeout_arg(py, timeout)?);
        let reply = self.command(py, Command::Send { tag, budget }, "send")?.expect("a send has a reply");
        Ok((reply.code, reply_bytes(py, &reply)?))
    }

    /// Posts the loan with `tag`: no reply awaited. When the receiver's
    /// queue is full, waits for room at most `timeout` seconds (None: as
    /// long as it takes); on `TimedOut` nothing was sent and the loan is
    /// still out, still filled.
    #[pyo3(signature = (tag = 0, timeout = None))]
    fn post(&self, py: Python<'_>, tag: u64, timeout: Option<f64>) -> PyResult<()> {
        let budget = Budget::new(timeout_arg(py, timeout)?);
        self.command(py, Command::Post { tag, budget, wait: true }, "post").map(drop)
    }

    /// Posts the loan if the receiver's queue has room now; else raises
    /// `Full`, and the loan is still out, still filled.
    #[pyo3(signature = (tag = 0))]
    fn try_post(&self, py: Python<'_>, tag: u64) -> PyResult<()> {
        let budget = Budget::new(None);
        self.command(py, Command::Post { tag, budget, wait: false }, "post").map(drop)
    }

    /// Gives an unsent loan back (its buffer returns to the connection's
    /// pool) and lets the `Sender` make other calls; does nothing once the
    /// loan was sent or closed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if matches!(*self.state(), State::Ended(_)) {
            return Ok(());
        }
        let out = self.take(py, "close")?;
        self.end(py, out, "closed");
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the loan; when the block raised, a loan that cannot be
    /// closed (a buffer of it still held) does not hide that exception, and
    /// is given back once the last buffer and the loan are dropped.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
        tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let _ = (exc, tb);
        crate::closed_at_exit(self.close(py), exc_type)
    }

    fn __repr__(&self) -> String {
        match &*self.state() {
            State::Ended(how) => format!("<copydata.Loan of {} bytes, {how}>", self.len),
            _ => format!("<copydata.Loan of {} bytes>", self.len),
        }
    }

    /// # Safety
    ///
    /// `buffer` is the interpreter's, to fill (the buffer protocol).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, buffer: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let this = slf.get();
        if this.forked() {
            return Err(PyBufferError::new_err(
                "the loan was made by the parent process: its memory is not the child's",
            ));
        }
        let mut guard = this.state();
        let State::Out(Out { exports, .. }) = &mut *guard else {
            return Err(PyBufferError::new_err(
                "the loan is being sent, or was sent or closed: its memory is no longer this process's to use",
            ));
        };
        // SAFETY:
        // - `buffer` is the interpreter's (this method's contract);
        // - `ptr` is valid for `len` writable bytes while the loan is out,
        //   and it stays out as long as this export: sending and closing
        //   are refused until every export is released (counted below,
        //   under the same lock).
        unsafe { crate::export_writable(slf.as_any(), buffer, this.ptr, this.len, flags, "loan") }?;
        *exports += 1;
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _buffer: *mut ffi::Py_buffer) {
        if let State::Out(Out { exports, .. }) = &mut *self.state() {
            *exports = exports.saturating_sub(1);
        }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        // Unsent: give it back. (No export can be left: each holds a
        // reference to the loan; nor a command, which borrows it.)
        let state = std::mem::replace(&mut *self.state(), State::Ended("closed"));
        if let State::Out(out) = state {
            Python::attach(|py| self.end(py, out, "closed"));
        }
    }
}
