//! Handing a section to an unrelated running process outside a mailbox
//! (Linux: over a connected Unix socket, `SCM_RIGHTS`):
//! `copydata.send_section` and `copydata.recv_section`.

use pyo3::prelude::*;

use crate::errors::{self, Kind};
use crate::section::Section;

/// The descriptor of `socket`: an int, or an object with `fileno()` (a
/// `socket.socket`).
fn fileno(socket: &Bound<'_, PyAny>) -> PyResult<i32> {
    let fd: i32 = match socket.extract() {
        Ok(fd) => fd,
        Err(_) => socket.call_method0("fileno")?.extract()?,
    };
    if fd < 0 {
        return Err(errors::raise(
            socket.py(),
            Kind::InvalidArgument,
            format!("{fd} is no descriptor (a closed socket?)"),
        ));
    }
    Ok(fd)
}

/// What ended a hand-over between its slices: a signal handler's
/// exception (Ctrl-C), or the socket's timeout.
#[cfg(target_os = "linux")]
#[derive(Default)]
struct Interrupted {
    error: Option<PyErr>,
    timed_out: bool,
}

#[cfg(target_os = "linux")]
impl Interrupted {
    /// Between two slices (detached): runs the signal handlers, and ends
    /// the call if one raised or `deadline` has passed.
    fn check(&mut self, deadline: Option<std::time::Instant>) -> std::io::Result<()> {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            self.timed_out = true;
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        Python::attach(|py| py.check_signals()).map_err(|e| {
            self.error = Some(e);
            std::io::Error::from(std::io::ErrorKind::Interrupted)
        })
    }

    /// The handler's exception if one ended the call, else its outcome.
    fn or<T>(self, outcome: Result<T, copydata::HandoverError>) -> PyResult<Result<T, copydata::HandoverError>> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }
}

/// The socket's own timeout (`socket.gettimeout()`, if it has one: a
/// Python socket), and the instant it runs out from now (`None`: no limit).
#[cfg(target_os = "linux")]
fn time_limit(socket: &Bound<'_, PyAny>) -> PyResult<(Option<f64>, Option<std::time::Instant>)> {
    let limit = match socket.call_method0("gettimeout") {
        Ok(t) => t.extract::<Option<f64>>()?,
        Err(_) => None,
    };
    // (A timeout too long for a Duration or an Instant, or infinite, is no
    // limit; NaN or negative, none at all.)
    let deadline = limit.and_then(|l| {
        let l = if l.is_nan() { 0.0 } else { l.max(0.0) };
        std::time::Duration::try_from_secs_f64(l).ok().and_then(|d| std::time::Instant::now().checked_add(d))
    });
    Ok((limit, deadline))
}

/// Waits until the descriptor `fd` has something to read (or hung up, or
/// failed), by `deadline` at most: whether it has. Waits in slices without
/// the GIL, in this module's own `poll`, running signal handlers between
/// them. (Not through Python's `select`: a daemon thread waiting there at
/// interpreter exit is ended by the interpreter when `select` takes the
/// GIL back, an unwinding through this module's frames that aborts the
/// process; a thread that comes back from `detach` then waits for ever,
/// harmlessly.) A descriptor that is not open raises `OSError` (EBADF).
#[cfg(target_os = "linux")]
fn readable_by(py: Python<'_>, fd: i32, deadline: Option<std::time::Instant>) -> PyResult<bool> {
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let slice = left.map_or(crate::SLICE, |l| l.min(crate::SLICE));
        // (Rounded up: a wait shorter than a millisecond is not none.)
        let ms = i32::try_from(slice.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let revents = py
            .detach(|| {
                let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid `pollfd`, as the count says.
                match unsafe { libc::poll(&mut pollfd, 1, ms) } {
                    n if n > 0 => Ok(pollfd.revents),
                    0 => Ok(0),
                    _ => match std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL) {
                        libc::EINTR => Ok(0),
                        code => Err(code),
                    },
                }
            })
            .map_err(errors::os_error)?;
        if revents & libc::POLLNVAL != 0 {
            return Err(errors::os_error(libc::EBADF));
        }
        if revents != 0 {
            return Ok(true);
        }
        if left.is_some_and(|l| l <= slice) {
            return Ok(false);
        }
        py.check_signals()?;
    }
}

/// Sends `section` over the connected Unix stream socket `socket` (a
/// `socket.socket`, or its descriptor): the receiver gets its own handle to
/// the same memory, with the same access, from `recv_section` (Python, C or
/// Rust). Send `section.read_only()` to hand over read-only. Waits for room
/// in the socket at most its timeout (`socket.settimeout`; a plain
/// descriptor waits as long as it takes), then raises `TimedOut`. Ctrl-C
/// interrupts the wait (if part of the frame went out, the stream is then
/// broken: close the socket). Linux only.
#[pyfunction]
pub(crate) fn send_section(py: Python<'_>, socket: &Bound<'_, PyAny>, section: PyRef<'_, Section>) -> PyResult<()> {
    let fd = fileno(socket)?;
    let section = section.handle(py)?;
    #[cfg(target_os = "linux")]
    {
        let (limit, deadline) = time_limit(socket)?;
        // (Slices no longer than the timeout: a non-blocking socket, whose
        // timeout is 0, does not wait.)
        let slice =
            deadline.map_or(crate::SLICE, |d| d.saturating_duration_since(std::time::Instant::now()).min(crate::SLICE));
        // SAFETY: `socket` (which owns the descriptor, or whose number the
        // caller gave) is alive for the whole call; a number that is not
        // open makes the system calls fail with EBADF.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut interrupted = Interrupted::default();
        let sent =
            py.detach(|| copydata::os::linux::send_section_checked(fd, section, slice, || interrupted.check(deadline)));
        if interrupted.timed_out {
            let waited = limit.unwrap_or_default();
            return Err(errors::raise(
                py,
                Kind::TimedOut,
                format!(
                    "the section could not be sent within {waited} s (if part of its frame went out, the stream is broken)"
                ),
            ));
        }
        interrupted.or(sent)?.map_err(|e| errors::handover_error(py, e))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, section);
        Err(errors::raise(py, Kind::Error, "send_section is Linux only (sections travel with messages everywhere)"))
    }
}

/// Receives a section sent with `send_section` from the connected Unix
/// stream socket `socket`; waits until one arrives, at most the socket's
/// timeout (`socket.settimeout`; a plain descriptor waits as long as it
/// takes), then raises `TimedOut`. Ctrl-C interrupts the wait, also for
/// a peer that stops part-way through a frame (the stream is then broken:
/// close the socket). What arrives is checked: anything else raises
/// `ProtocolError`; a closed peer raises `ReceiverDied`. Linux only.
#[pyfunction]
pub(crate) fn recv_section(py: Python<'_>, socket: &Bound<'_, PyAny>) -> PyResult<Py<Section>> {
    let fd = fileno(socket)?;
    #[cfg(target_os = "linux")]
    {
        let (limit, deadline) = time_limit(socket)?;
        // Wait for something to read in slices, signal handlers run
        // between them (so Ctrl-C ends the wait), then read what is there.
        if !readable_by(py, fd, deadline)? {
            let waited = limit.unwrap_or_default();
            return Err(errors::raise(py, Kind::TimedOut, format!("no section arrived within {waited} s")));
        }
        // SAFETY: as in `send_section`.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        // The frame itself is read in slices too, signal handlers run
        // between them: a peer that stops part-way through does not hold
        // the call beyond Ctrl-C (or the socket's timeout).
        let mut interrupted = Interrupted::default();
        let received =
            py.detach(|| copydata::os::linux::recv_section_checked(fd, crate::SLICE, || interrupted.check(deadline)));
        if interrupted.timed_out {
            let waited = limit.unwrap_or_default();
            return Err(errors::raise(
                py,
                Kind::TimedOut,
                format!("the section's frame did not arrive in full within {waited} s (the stream is broken)"),
            ));
        }
        let received = interrupted.or(received)?.map_err(|e| errors::handover_error(py, e))?;
        Section::wrap_py(py, received)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        Err(errors::raise(py, Kind::Error, "recv_section is Linux only (sections travel with messages everywhere)"))
    }
}
