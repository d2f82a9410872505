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
/// request with other data leaves the loan to be given back so.
#[pyclass(frozen, module = "copydata", name = "ReplyLoan")]
pub(crate) struct ReplyLoan {
    /// The buffer's address, valid while the loan is out.
    ptr: usize,
    len: usize,
    state: Mutex<State>,
}

impl ReplyLoan {
    pub(crate) fn new(mut loan: copydata::ReplyLoan) -> ReplyLoan {
        let ptr = loan.as_mut_ptr() as usize;
        ReplyLoan { ptr, len: loan.len(), state: Mutex::new(State::Out { loan, exports: 0 }) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the loan out to answer with it (or, for `what` "close", to
    /// give it back): refused once it ended and while a buffer of it is
    /// held.
    pub(crate) fn take(&self, py: Python<'_>, what: &str) -> PyResult<copydata::ReplyLoan> {
        // Decided under the lock, raised after it (raising runs Python).
        let taken = {
            let mut state = self.state();
            match &*state {
                State::Ended(how) => Err(Err(*how)),
                State::Out { exports, .. } if *exports > 0 => Err(Ok(*exports)),
                State::Out { .. } => {
                    let how = if what == "close" { "closed" } else { "sent" };
                    match std::mem::replace(&mut *state, State::Ended(how)) {
                        State::Out { loan, .. } => Ok(loan),
                        State::Ended(_) => unreachable!("matched above"),
                    }
                }
            }
        };
        taken.map_err(|no| match no {
            Err(how) => errors::raise(py, Kind::Error, format!("the reply loan was {how}")),
            Ok(n) => PyBufferError::new_err(format!(
                "cannot {what} the reply loan while {n} buffer(s) of it are held: release them first (del the memoryview or array, or use `with memoryview(loan) as m:`)"
            )),
        })
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
        if matches!(*self.state(), State::Ended(_)) {
            return Ok(());
        }
        let loan = self.take(py, "close")?;
        py.detach(|| drop(loan));
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
        let closed = self.close(py);
        if exc_type.is_none() {
            closed?;
        }
        Ok(false)
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
        if buffer.is_null() {
            return Err(PyBufferError::new_err("no buffer to fill"));
        }
        let this = slf.get();
        let mut guard = this.state();
        let State::Out { exports, .. } = &mut *guard else {
            return Err(PyBufferError::new_err(
                "the reply loan was sent or closed: its memory is no longer this process's to use",
            ));
        };
        let len = isize::try_from(this.len).map_err(|_| PyBufferError::new_err("the reply loan is too large"))?;
        // A loan of no bytes may have no address; the buffer protocol wants one.
        let ptr = if this.len == 0 { std::ptr::NonNull::<u8>::dangling().as_ptr() as usize } else { this.ptr };
        // SAFETY:
        // - `buffer` is valid for writing (this method's contract);
        // - `ptr` is valid for `len` writable bytes while the loan is out
        //   (the `copydata::ReplyLoan` in the state keeps its connection,
        //   and so the mapping, alive), and it stays out as long as this
        //   export: replying and closing are refused until every export is
        //   released (counted below, under the same lock);
        // - `PyBuffer_FillInfo` takes its own reference to the loan, and
        //   describes the memory as `len` writable unsigned bytes,
        //   contiguous;
        // - the thread is attached (we were given the loan's `Bound`).
        let status = unsafe { ffi::PyBuffer_FillInfo(buffer, slf.as_ptr(), ptr as *mut _, len, 0, flags) };
        if status != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        *exports += 1;
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _buffer: *mut ffi::Py_buffer) {
        if let State::Out { exports, .. } = &mut *self.state() {
            *exports = exports.saturating_sub(1);
        }
    }
}
