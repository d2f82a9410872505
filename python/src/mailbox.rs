//! `copydata.send`, `copydata.Mailbox` and `copydata.Request`.

use std::sync::Mutex;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use copydata::{MailboxOptions, Reply, SenderOptions};
use pyo3::exceptions::{PyException, PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyTuple};

use crate::errors::{self, Kind};
use crate::reply_loan::ReplyLoan;
use crate::section::Section;
use crate::{Shared, Unanswered, bytes_arg, timeout_arg, wait_answer};

/// The bytes of a reply as a `bytes` object, copied once (a loaned reply
/// straight out of shared memory).
pub(crate) fn reply_bytes<'py>(py: Python<'py>, reply: &Reply) -> PyResult<Bound<'py, PyBytes>> {
    match reply.loan() {
        Some(loan) => loan_bytes(py, loan),
        None => Ok(PyBytes::new(py, &reply.data)),
    }
}

/// A loan's bytes, copied once, straight into a new `bytes` object.
fn loan_bytes<'py>(py: Python<'py>, loan: &copydata::LoanView) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, loan.len(), |buf| {
        loan.read_at(0, buf).map_err(|e| errors::raise(py, Kind::Error, format!("reading a loan: {e}")))
    })
}

/// Sends `data` (any bytes-like object) with `tag` to the mailbox `name`
/// and waits for the reply: `SendMessage(WM_COPYDATA)`, or
/// `SendMessageTimeout` with a `timeout` in seconds (`None`: the set-up
/// gives up after 10 s, then the reply is awaited as long as the receiver
/// lives). Returns the reply as a `(code, data)` tuple.
///
/// `sections` (a list of `Section`) travel with the message: the receiver
/// gets handles to the same memory (`Request.sections`).
///
/// Raises `NotFound` (no such mailbox), `TimedOut` (its `stage` says what
/// it waited for: `"connecting"`, nothing was sent; `"reply"`, the message
/// may still be handled, its reply is discarded), `ReceiverDied`,
/// `Refused`, `TooLarge`, `InvalidName`. Ctrl-C interrupts the wait; the
/// message may then still be delivered.
#[pyfunction]
#[pyo3(signature = (name, data, tag = 0, timeout = None, sections = None))]
pub(crate) fn send<'py>(
    py: Python<'py>,
    name: &str,
    data: &Bound<'py, PyAny>,
    tag: u64,
    timeout: Option<f64>,
    sections: Option<Vec<PyRef<'py, Section>>>,
) -> PyResult<(i64, Bound<'py, PyBytes>)> {
    let timeout = timeout_arg(py, timeout)?;
    let data = bytes_arg(data)?;
    // The thread holds its own references to the sections' handles (so an
    // interrupted send goes on with them; closing one meanwhile closes it
    // once the send is over).
    let sections = match sections {
        Some(sections) => sections.iter().map(|s| s.shared(py).cloned()).collect::<PyResult<Vec<_>>>()?,
        None => Vec::new(),
    };
    let name = name.to_owned();
    // The call runs on a thread of its own so that this one can wait in
    // slices and take Ctrl-C; a send cannot be resumed after a timeout of
    // its own (the connection is dropped), so slicing the send itself would
    // not do. An interrupted send finishes in the background.
    sent_on_a_thread(py, move || {
        if sections.is_empty() {
            match timeout {
                Some(t) => copydata::send_timeout(&name, tag, &data, t),
                None => copydata::send(&name, tag, &data),
            }
        } else {
            let handles: Vec<&copydata::Section> = sections.iter().map(|h| &**h).collect();
            send_with_sections(&name, tag, &data, &handles, timeout)
        }
    })
}

/// Runs `send` on a thread of its own and waits for its reply in slices,
/// so that this thread takes Ctrl-C (an interrupted send finishes in the
/// background). The reply as `(code, data)`.
fn sent_on_a_thread<'py>(
    py: Python<'py>,
    send: impl FnOnce() -> Result<Reply, copydata::SendError> + Send + 'static,
) -> PyResult<(i64, Bound<'py, PyBytes>)> {
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new().name("copydata-send".into()).spawn(move || {
        let _ = tx.send(send());
    })?;
    match wait_answer(py, &Mutex::new(rx), true) {
        Ok(Ok(reply)) => Ok((reply.code, reply_bytes(py, &reply)?)),
        Ok(Err(e)) => Err(errors::send_error(py, e)),
        Err(Unanswered::Interrupted(e)) => Err(e),
        Err(Unanswered::Gone) => Err(errors::raise(py, Kind::Error, "the sending thread ended without an answer")),
    }
}

/// Sends a plain `WM_COPYDATA` with `tag` and `data` to an existing window
/// of another program, found by its class (`class_name`) and/or its title
/// (`FindWindowW`, then among message-only windows, so a copydata mailbox
/// is found too), and waits at most `timeout` seconds (None: as long as
/// it takes) for it to be handled. Returns `(code, data)`: the window's
/// `LRESULT`, and the bytes it sent back to the sender's window with
/// `WM_COPYDATA` while handling the message (often none).
///
/// Windows only: elsewhere it raises `copydata.Error`. Raises `NotFound`
/// (no such window), `TimedOut`, `ReceiverDied` (the window went away),
/// and `InvalidArgument` when neither `class_name` nor `title` is given.
/// Ctrl-C interrupts the wait; the message may then still be delivered.
#[pyfunction]
#[pyo3(signature = (data, tag = 0, *, class_name = None, title = None, timeout = None))]
pub(crate) fn send_to_window<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    tag: u64,
    class_name: Option<String>,
    title: Option<String>,
    timeout: Option<f64>,
) -> PyResult<(i64, Bound<'py, PyBytes>)> {
    let timeout = timeout_arg(py, timeout)?;
    let data = bytes_arg(data)?;
    if class_name.is_none() && title.is_none() {
        return Err(errors::raise(py, Kind::InvalidArgument, "give class_name, title or both"));
    }
    #[cfg(not(windows))]
    {
        let _ = (tag, data, timeout);
        Err(errors::raise(py, Kind::Error, "send_to_window: windows and WM_COPYDATA exist on Windows only"))
    }
    #[cfg(windows)]
    {
        // (SendMessageTimeoutW's longest wait: about 49 days.)
        let timeout = timeout.unwrap_or(Duration::from_millis(u64::from(u32::MAX - 1)));
        sent_on_a_thread(py, move || {
            copydata::os::windows::send_to_window(class_name.as_deref(), title.as_deref(), tag, &data, timeout)
        })
    }
}

/// `copydata::send_timeout` (or `send`) with sections attached.
fn send_with_sections(
    name: &str,
    tag: u64,
    data: &[u8],
    sections: &[&copydata::Section],
    timeout: Option<Duration>,
) -> Result<Reply, copydata::SendError> {
    let started = Instant::now();
    let mut options = SenderOptions::new();
    if let Some(t) = timeout {
        options = options.connect_timeout(t);
    }
    let mut sender = copydata::Sender::connect_with(name, &options)?;
    let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
    sender.send_with_sections(tag, data, sections, left).map_err(|e| match (e, timeout) {
        // The whole timeout, not what was left of it after connecting.
        (copydata::SendError::TimedOut { name, stage, .. }, Some(timeout)) => {
            copydata::SendError::TimedOut { name, timeout, stage }
        }
        (e, _) => e,
    })
}

/// A bound mailbox: other processes `send` to it by `name`.
///
/// Receive with `recv()` (or iterate: `for request in mailbox`) and answer
/// each `Request`, or hand a function to `serve()`. `close()` (or leaving a
/// `with` block) unbinds the name. Raises `AlreadyExists` while another live
/// process has bound `name`. `max_payload` (bytes) bounds what senders may
/// send; larger messages are refused before they are transferred.
/// `max_connections` bounds how many senders may be connected at once (one
/// more gets `Busy`; None: 512). `allow_uids` (Linux): other users whose
/// senders the mailbox also takes (they connect with `Sender(name,
/// owner=UID)`); by default only this user's.
#[pyclass(frozen, weakref, module = "copydata", name = "Mailbox")]
pub(crate) struct Mailbox {
    name: String,
    /// Receivers hold a clone for one slice at a time.
    inner: Shared<copydata::Mailbox>,
}

impl Mailbox {
    /// The next request; `None` once the mailbox is closed.
    fn next_request(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<copydata::Request>> {
        self.inner.next(py, timeout, |mailbox, slice| mailbox.recv_timeout(slice))
    }
}

#[pymethods]
impl Mailbox {
    #[new]
    #[pyo3(signature = (name, *, max_payload = None, max_connections = None, allow_uids = None))]
    fn new(
        py: Python<'_>,
        name: &str,
        max_payload: Option<u64>,
        max_connections: Option<usize>,
        allow_uids: Option<Vec<u32>>,
    ) -> PyResult<Py<Mailbox>> {
        let mut options = MailboxOptions::new();
        if let Some(max) = max_payload {
            options = options.max_payload(max);
        }
        if let Some(max) = max_connections {
            options = options.max_connections(max);
        }
        for uid in allow_uids.unwrap_or_default() {
            options = options.allow_uid(uid);
        }
        let mailbox =
            py.detach(|| copydata::Mailbox::bind_with(name, &options)).map_err(|e| errors::bind_error(py, e))?;
        crate::opened(py, Mailbox { name: name.to_owned(), inner: Shared::new(mailbox) })
    }

    /// The mailbox's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Waits for the next message, at most `timeout` seconds (`None`: no
    /// limit), and returns it as a `Request` to answer. Raises `TimedOut`,
    /// or `Closed` once the mailbox is closed (also from another thread
    /// while this one waits).
    #[pyo3(signature = (timeout = None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Request> {
        let timeout = timeout_arg(py, timeout)?;
        match self.next_request(py, timeout)? {
            Some(request) => Request::new(py, request),
            None => Err(errors::recv_error(py, copydata::RecvError::Closed)),
        }
    }

    /// Answers every message with `handler(tag, data)` on this thread until
    /// the mailbox is closed (by `close()` from another thread or from the
    /// handler itself). The handler returns the reply: `(code, data)`, a
    /// bare `code` (int, no data), bytes-like `data` (code 0), or `None`
    /// (code 0, no data); a code goes from -2**63 to 2**63 - 1 (a tag,
    /// up to 2**64 - 1, may not fit: `OverflowError`). A handler that raises an `Exception` (or returns
    /// anything else) refuses that message, the sender getting `Refused`
    /// with the error's text, reports it through `sys.unraisablehook`, and
    /// serving goes on. `KeyboardInterrupt` and `SystemExit` stop serving
    /// and propagate. Run it on a `threading.Thread` to serve in the
    /// background.
    fn serve(&self, py: Python<'_>, handler: &Bound<'_, PyAny>) -> PyResult<()> {
        if !handler.is_callable() {
            return Err(PyTypeError::new_err("the handler must be callable"));
        }
        while let Some(request) = self.next_request(py, None)? {
            let args = (request.tag(), message_bytes(py, &request)?);
            let reply = handler.call1(args).and_then(|value| reply_value(&value));
            match reply {
                // A sender that stopped waiting loses its reply; serving goes on.
                Ok((code, data)) => {
                    let _ = py.detach(|| request.reply(Reply::new(code, data)));
                }
                Err(e) if !e.is_instance_of::<PyException>(py) => {
                    py.detach(|| request.refuse("the receiver was interrupted"));
                    return Err(e);
                }
                Err(e) => {
                    let reason = format!("the handler failed: {e}");
                    py.detach(|| request.refuse(&reason));
                    e.write_unraisable(py, Some(handler));
                }
            }
        }
        Ok(())
    }

    /// Unbinds the mailbox: the name is free again when this returns, and
    /// threads waiting in `recv` or `serve` stop (`Closed`, or `serve`
    /// returns). Requests already received can still be answered.
    fn close(&self, py: Python<'_>) {
        self.inner.close(py);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Request>> {
        self.next_request(py, None)?.map(|r| Request::new(py, r)).transpose()
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { " (closed)" } else { "" };
        format!("Mailbox({:?}){state}", self.name)
    }
}

/// The bytes of a message as a `bytes` object, copied once (a loaned one
/// straight out of shared memory).
fn message_bytes<'py>(py: Python<'py>, message: &copydata::Message) -> PyResult<Bound<'py, PyBytes>> {
    match message.loan() {
        Some(loan) => loan_bytes(py, loan),
        None => Ok(PyBytes::new(py, message.payload())),
    }
}

/// A handler's return value as a reply; see `Mailbox.serve`.
fn reply_value(value: &Bound<'_, PyAny>) -> PyResult<(i64, Vec<u8>)> {
    if value.is_none() {
        return Ok((0, Vec::new()));
    }
    if value.is_instance_of::<PyInt>() {
        return Ok((reply_code(value)?, Vec::new()));
    }
    if let Ok(tuple) = value.cast::<PyTuple>() {
        if tuple.len() == 2 {
            let code = reply_code(&tuple.get_item(0)?)?;
            return Ok((code, bytes_arg(&tuple.get_item(1)?)?));
        }
        return Err(PyTypeError::new_err("a reply tuple must be (code, data)"));
    }
    bytes_arg(value)
        .map(|data| (0, data))
        .map_err(|_| PyTypeError::new_err("the handler must return (code, data), a code, bytes-like data or None"))
}

/// A reply code out of a handler's return value: an int that fits in 64
/// signed bits (a tag, which goes up to 2**64 - 1, may not).
fn reply_code(value: &Bound<'_, PyAny>) -> PyResult<i64> {
    value.extract::<i64>().map_err(|e| {
        if e.is_instance_of::<PyOverflowError>(value.py()) {
            PyOverflowError::new_err(format!("a reply code goes from -2**63 to 2**63 - 1, not {value}"))
        } else {
            e
        }
    })
}

/// A received message, waiting for its answer.
///
/// `tag`, `data` (bytes) and `expects_reply` describe it; answer once with
/// `reply(code, data)` or `refuse(reason)`. A request dropped unanswered is
/// refused. For a posted message (`expects_reply` is False) the answer goes
/// nowhere.
#[pyclass(frozen, module = "copydata", name = "Request")]
pub(crate) struct Request {
    tag: u64,
    data: Py<PyBytes>,
    expects_reply: bool,
    sender_pid: u32,
    sender_uid: Option<u32>,
    sections: Vec<Py<Section>>,
    inner: Mutex<Option<copydata::Request>>,
}

impl Request {
    fn new(py: Python<'_>, mut request: copydata::Request) -> PyResult<Request> {
        let data = message_bytes(py, &request)?.unbind();
        let sections = request.message_mut().take_sections();
        let sections = sections.into_iter().map(|s| Section::wrap_py(py, s)).collect::<PyResult<_>>()?;
        Ok(Request {
            tag: request.tag(),
            data,
            expects_reply: request.expects_reply(),
            sender_pid: request.sender().pid,
            sender_uid: request.sender().uid,
            sections,
            inner: Mutex::new(Some(request)),
        })
    }

    fn take(&self, py: Python<'_>) -> PyResult<copydata::Request> {
        let taken = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        taken.ok_or_else(|| errors::raise(py, Kind::Error, "the request was already answered"))
    }
}

#[pymethods]
impl Request {
    /// The tag (`dwData`), an int from 0 to 2**64 - 1.
    #[getter]
    fn tag(&self) -> u64 {
        self.tag
    }

    /// The message's bytes.
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyBytes> {
        self.data.clone_ref(py)
    }

    /// Whether the sender waits for the reply (False for a posted message).
    #[getter]
    fn expects_reply(&self) -> bool {
        self.expects_reply
    }

    /// The sender's process id.
    #[getter]
    fn sender_pid(&self) -> u32 {
        self.sender_pid
    }

    /// The sender's user id (Linux; None on Windows).
    #[getter]
    fn sender_uid(&self) -> Option<u32> {
        self.sender_uid
    }

    /// The sections that came with the message (a list of `Section`).
    #[getter]
    fn sections(&self, py: Python<'_>) -> Vec<Py<Section>> {
        self.sections.iter().map(|s| s.clone_ref(py)).collect()
    }

    /// Whether `reply` or `refuse` was called.
    #[getter]
    fn answered(&self) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Answers the message: the sender's `send` returns `(code, data)`.
    /// `data` is bytes-like, or a `ReplyLoan` from `loan_reply` (sent
    /// without a copy; `BufferError` while a buffer of it is held). Raises
    /// `SenderGone` if the sender stopped waiting (it timed out or died),
    /// `Error` if the request was already answered.
    #[pyo3(signature = (code = 0, data = None))]
    fn reply(&self, py: Python<'_>, code: i64, data: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        if let Some(loan) = data.and_then(|d| d.cast::<ReplyLoan>().ok()) {
            // Both taken under the request's lock (so no other thread sees
            // it answered if the loan is refused), raised after it.
            let taken = {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                match inner.as_ref() {
                    None => Err(None),
                    Some(_) => loan.get().take(true).map_err(Some).map(|l| (inner.take().expect("checked"), l)),
                }
            };
            let (request, lent) = match taken {
                Ok(both) => both,
                Err(None) => return Err(errors::raise(py, Kind::Error, "the request was already answered")),
                Err(Some(no)) => return Err(no.raise(py, "send")),
            };
            let sent = py.detach(|| request.reply(Reply::loaned(code, lent)));
            if sent.is_err() {
                loan.get().ended("lost with a reply that failed");
            }
            return sent.map_err(|e| errors::reply_error(py, e));
        }
        let data = data.map(bytes_arg).transpose()?.unwrap_or_default();
        let request = self.take(py)?;
        py.detach(|| request.reply(Reply::new(code, data))).map_err(|e| errors::reply_error(py, e))
    }

    /// Lends a buffer of `size` bytes in shared memory for the reply, to
    /// write in place and answer with `reply(code, loan)`: the sender reads
    /// the reply where it was written, with no copy on this side. Never
    /// waits. Raises `Error` for a posted message (no reply goes back) and
    /// once the request was answered.
    fn loan_reply(&self, py: Python<'_>, size: usize) -> PyResult<ReplyLoan> {
        // Made under the request's lock with the interpreter attached (it
        // waits for no one, and `reply` on another thread takes the same
        // lock attached); what went wrong is raised after the lock.
        let made = {
            let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                None => Err(Err("the request was already answered")),
                Some(r) if !r.expects_reply() => Err(Err("a posted message gets no reply, so it cannot lend one")),
                Some(r) => r.loan_reply(size).map_err(Ok),
            }
        };
        match made {
            Ok(loan) => Ok(ReplyLoan::new(loan)),
            Err(Err(why)) => Err(errors::raise(py, Kind::Error, why)),
            Err(Ok(e)) => Err(errors::reply_error(py, e)),
        }
    }

    /// Refuses the message: the sender's `send` raises `Refused` with
    /// `reason`.
    #[pyo3(signature = (reason = "refused by the receiver"))]
    fn refuse(&self, py: Python<'_>, reason: &str) -> PyResult<()> {
        let request = self.take(py)?;
        py.detach(|| request.refuse(reason));
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Request(tag={}, {} bytes, sender_pid={}{})",
            self.tag,
            self.data.bind(py).as_bytes().len(),
            self.sender_pid,
            if self.expects_reply { "" } else { ", posted" }
        )
    }
}
