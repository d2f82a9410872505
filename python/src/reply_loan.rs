//! `copydata.ReplyLoan`: a buffer in shared memory lent for a request's
//! reply (`Request.loan_reply(size)`), written in place through the buffer
//! protocol and sent with `Request.reply(code, loan)`, so the sender reads
//! the reply where it was written.
//!
//! Once the reply is sent the memory is the sender's, then the next
//! loan's: as for `copydata.Loan`, replying with it (or closing it) is
//! refused while any buffer it exported is still held, and nothing is
//! exported afterwards.

use std::ffi::c_int;
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::errors::{self, Kind};

enum State {
    /// Lent and writable; `exports` buffers of it are held.
    Out { loan: copydata::ReplyLoan, exports: usize },
    /// Sent with a reply, or given back.
    Ended(&'static str),
}

/// Why a reply loan cannot be taken; raised once every lock is released
/// (making an exception runs Python, which may switch threads).
pub(crate) enum Refusal {
    Ended(&'static str),
    Held(usize),
    Forked,
}

impl Refusal {
    pub(crate) fn raise(self, py: Python<'_>, what: &str) -> PyErr {
        match self {
            Refusal::Ended(how) => errors::raise(py, Kind::Error, format!("the reply loan was {how}")),
            Refusal::Held(n) => PyBufferError::new_err(format!(
                "cannot {what} the reply loan while {n} buffer(s) of it are held: release them first (del the memoryview or array, or use `with memoryview(loan) as m:`)"
            )),
            Refusal::Forked => errors::raise(
                py,
                Kind::Error,
                "the reply loan was made by the parent process: a child made by fork can only close it",
            ),
        }
    }
}

/// A buffer of shared memory lent for a request's reply by
/// `Request.loan_reply(size)`: write it in place through the buffer
/// protocol (`memoryview(loan)`, `numpy.frombuffer(loan, dtype)`,
/// `file.readinto(loan)`), then answer with `request.reply(code, loan)`;
/// the sender reads the reply where it was written.
///
/// Replying needs every buffer taken from the loan released first
/// (`BufferError` otherwise: the memory is the sender's once sent);
/// `with memoryview(loan) as m:` does that. `close()` (or leaving a `with`
/// block, or dropping the loan) gives an unsent loan back; answering the
/// request with other data leaves the loan to be given back so (until
/// then it keeps a buffer of the connection's pool). A loan lent for
/// another request is copied into the reply rather than sent in place.
/// A loan still out at `fork` can only be closed in the child (the memory
/// and the connection are the parent's).
#[pyclass(frozen, module = "copydata", name = "ReplyLoan")]
pub(crate) struct ReplyLoan {
    /// The buffer's address, valid while the loan is out.
    ptr: usize,
    len: usize,
    /// The process that made the loan: in a child made by `fork` the
    /// buffer and its connection are the parent's.
    pid: u32,
    state: Mutex<State>,
}

impl ReplyLoan {
    pub(crate) fn new(mut loan: copydata::ReplyLoan) -> ReplyLoan {
        let ptr = loan.as_mut_ptr() as usize;
        ReplyLoan { ptr, len: loan.len(), pid: std::process::id(), state: Mutex::new(State::Out { loan, exports: 0 }) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forked(&self) -> bool {
        self.pid != std::process::id()
    }

    /// Takes the loan out to send it (`send`) or to give it back, without
    /// raising (the caller may hold other locks): refused once it ended,
    /// while a buffer of it is held, and, to send it, in a child made by
    /// `fork`.
    pub(crate) fn take(&self, send: bool) -> Result<copydata::ReplyLoan, Refusal> {
        let mut state = self.state();
        match &*state {
            State::Ended(how) => Err(Refusal::Ended(how)),
            State::Out { exports, .. } if *exports > 0 => Err(Refusal::Held(*exports)),
            State::Out { .. } if send && self.forked() => Err(Refusal::Forked),
            State::Out { .. } => {
                match std::mem::replace(&mut *state, State::Ended(if send { "sent" } else { "closed" })) {
                    State::Out { loan, .. } => Ok(loan),
                    State::Ended(_) => unreachable!("matched above"),
                }
            }
        }
    }

    /// Records how a loan taken by [`take`](Self::take) ended, when
    /// it was not sent after all.
    pub(crate) fn ended(&self, how: &'static str) {
        *self.state() = State::Ended(how);
    }
}

#[pymethods]
impl ReplyLoan {
    fn __len__(&self) -> usize {
        self.len
    }

    /// Whether the loan is still out (neither sent nor closed).
    #[getter]
    fn lent(&self) -> bool {
        matches!(*self.state(), State::Out { .. })
    }

    /// Gives an unsent loan back (its buffer returns to the connection's
    /// pool); does nothing once it was sent or closed. Raises
    /// `BufferError` while a buffer of it is held.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        // (Taken under the lock, raised after it.)
        let loan = match self.take(false) {
            Ok(loan) => loan,
            Err(Refusal::Ended(_)) => return Ok(()),
            Err(no) => return Err(no.raise(py, "close")),
        };
        if self.forked() {
            // The parent's: its connection's lock may have been held at
            // `fork`, and the buffer goes back in the parent.
            std::mem::forget(loan);
        } else {
            py.detach(|| drop(loan));
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the loan (once sent, nothing to do); when the block raised,
    /// a loan that cannot be closed (a buffer of it still held) does not
    /// hide that exception, and is given back once the last buffer and
    /// the loan are dropped.
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
            State::Ended(how) => format!("<copydata.ReplyLoan of {} bytes, {how}>", self.len),
            State::Out { .. } => format!("<copydata.ReplyLoan of {} bytes>", self.len),
        }
    }

    /// # Safety
    ///
    /// `buffer` is the interpreter's, to fill (the buffer protocol).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, buffer: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let this = slf.get();
        if this.forked() {
            return Err(PyBufferError::new_err(
                "the reply loan was made by the parent process: its memory is not the child's",
            ));
        }
        let mut guard = this.state();
        let State::Out { exports, .. } = &mut *guard else {
            return Err(PyBufferError::new_err(
                "the reply loan was sent or closed: its memory is no longer this process's to use",
            ));
        };
        // SAFETY:
        // - `buffer` is the interpreter's (this method's contract);
        // - `ptr` is valid for `len` writable bytes while the loan is out
        //   (the `copydata::ReplyLoan` in the state keeps its connection,
        //   and so the mapping, alive), and it stays out as long as this
        //   export: replying and closing are refused until every export is
        //   released (counted below, under the same lock).
        unsafe { crate::export_writable(slf.as_any(), buffer, this.ptr, this.len, flags, "reply loan") }?;
        *exports += 1;
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _buffer: *mut ffi::Py_buffer) {
        if let State::Out { exports, .. } = &mut *self.state() {
            *exports = exports.saturating_sub(1);
        }
    }
}

impl Drop for ReplyLoan {
    fn drop(&mut self) {
        // In a child made by `fork`, the loan (and its connection) is the
        // parent's: nothing to give back here.
        if self.forked()
            && let State::Out { loan, .. } = std::mem::replace(&mut *self.state(), State::Ended("closed"))
        {
            std::mem::forget(loan);
        }
    }
}
