//! `copydata.single_instance`, `copydata.Primary`, `copydata.Secondary` and
//! `copydata.Launch`: the first launch of an app id becomes the primary;
//! every later one hands it its arguments and gets its answer.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc::sync_channel;
use std::time::Duration;

use copydata::instance::{Answer, InstanceOptions, SingleInstance};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::errors::{self, Kind};
use crate::{Shared, Unanswered, bytes_arg, timeout_arg, wait_answer};

/// Becomes the primary instance of `app_id`, or hands this launch to the
/// running primary and returns its answer: a `Primary` (this process is
/// the running instance) or a `Secondary` (another one is, and answered).
///
/// The launch carries `args` (default `sys.argv[1:]`), this process's
/// working directory, the environment variables named in `forward_env`
/// (those that are set) and `data`. `timeout` bounds the wait for a
/// primary to take the launch and answer, the election included (`None`:
/// as long as it takes; 0: become the primary or fail at once). Ctrl-C
/// interrupts the wait; the launch then goes on in the background until
/// its timeout and may still be delivered (a primary it would have made
/// is given up at once).
#[pyfunction]
#[pyo3(signature = (app_id, *, args = None, data = None, forward_env = Vec::new(), timeout = Some(10.0)))]
pub(crate) fn single_instance(
    py: Python<'_>,
    app_id: String,
    args: Option<Vec<OsString>>,
    data: Option<&Bound<'_, PyAny>>,
    forward_env: Vec<OsString>,
    timeout: Option<f64>,
) -> PyResult<Py<PyAny>> {
    let args = match args {
        Some(a) => a,
        // (An embedded interpreter may have no sys.argv.)
        None => match py.import("sys")?.getattr("argv") {
            Ok(argv) => argv.extract::<Vec<OsString>>()?.into_iter().skip(1).collect(),
            Err(_) => Vec::new(),
        },
    };
    let mut options = InstanceOptions::new()
        .args(args)
        .data(data.map(bytes_arg).transpose()?.unwrap_or_default())
        .timeout(timeout_arg(py, timeout)?.unwrap_or(Duration::MAX));
    for name in forward_env {
        options = options.forward_env(name);
    }
    // On a thread of its own, so that Ctrl-C can interrupt the wait (the
    // launch then goes on in the background: a primary it makes is
    // dropped at once, freeing the app id).
    let (tx, rx) = sync_channel(1);
    let id = app_id.clone();
    std::thread::Builder::new()
        .name("copydata-instance".into())
        .spawn(move || {
            let _ = tx.send(SingleInstance::acquire(&id, &options));
        })
        .map_err(|e| errors::raise(py, Kind::Error, format!("starting the launch's thread: {e}")))?;
    let acquired = match wait_answer(py, &Mutex::new(rx), true) {
        Ok(result) => result.map_err(|e| errors::instance_error(py, e))?,
        Err(Unanswered::Interrupted(e)) => return Err(e),
        Err(Unanswered::Gone) => {
            return Err(errors::raise(py, Kind::Error, "the launch's thread ended without a result"));
        }
    };
    Ok(match acquired {
        SingleInstance::Primary(p) => crate::opened(py, Primary { app_id, inner: Shared::new(p) })?.into_any(),
        SingleInstance::Secondary(s) => Py::new(
            py,
            Secondary { code: s.code(), data: PyBytes::new(py, s.data()).unbind(), primary_pid: s.primary_pid() },
        )?
        .into_any(),
    })
}

/// This process is the running instance of its app id: it receives the
/// launches of later processes (`recv`, or iterate), until `close()` (or
/// the end of a `with` block) frees the app id for the next launch.
#[pyclass(frozen, weakref, module = "copydata", name = "Primary")]
pub(crate) struct Primary {
    app_id: String,
    /// Receivers hold a clone for one slice at a time.
    inner: Shared<copydata::instance::Primary>,
}

impl Primary {
    /// The next launch; `None` once closed.
    fn next_launch(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<Launch>> {
        let launch = self.inner.next(py, timeout, |primary, slice| primary.recv_timeout(slice))?;
        launch.map(|l| Launch::new(py, l)).transpose()
    }
}

#[pymethods]
impl Primary {
    /// Waits at most `timeout` seconds (`None`: as long as it takes) for
    /// the next launch. Raises `TimedOut`, or `Closed` once closed.
    #[pyo3(signature = (timeout = None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Launch> {
        let timeout = timeout_arg(py, timeout)?;
        match self.next_launch(py, timeout)? {
            Some(launch) => Ok(launch),
            None => Err(errors::raise(py, Kind::Closed, "the primary instance was closed")),
        }
    }

    /// The app id.
    #[getter]
    fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Gives up being the primary: the app id is free for the next launch
    /// when this returns. Secondaries waiting for a launch not answered yet
    /// hand it to the next primary. In a child made by `fork` it only lets
    /// go of the parent's primary, which stays the primary.
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

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Launch>> {
        self.next_launch(py, None)
    }

    fn __repr__(&self) -> String {
        format!("<copydata.Primary {:?}{}>", self.app_id, if self.closed() { " (closed)" } else { "" })
    }
}

/// Another process is the running instance: this launch was handed to it,
/// and it answered with `code` (for this process to exit with) and `data`.
#[pyclass(frozen, module = "copydata", name = "Secondary")]
pub(crate) struct Secondary {
    code: i32,
    data: Py<PyBytes>,
    primary_pid: Option<u32>,
}

#[pymethods]
impl Secondary {
    /// The primary's answer code.
    #[getter]
    fn code(&self) -> i32 {
        self.code
    }

    /// The primary's answer bytes.
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyBytes> {
        self.data.clone_ref(py)
    }

    /// The primary's process id, when known.
    #[getter]
    fn primary_pid(&self) -> Option<u32> {
        self.primary_pid
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("<copydata.Secondary code={} {} bytes>", self.code, self.data.bind(py).as_bytes().len())
    }
}

/// A later launch, handed to the primary: its `args` (a list of str, as
/// the secondary had them: undecodable bytes are kept as surrogate
/// escapes, as `os.fsdecode` does), `cwd` (a `pathlib.Path`), `env` (the forwarded
/// variables), `data`, `pid` and `tag`. Answer once with `answer(code,
/// data)`; a launch dropped unanswered is answered with code 0.
#[pyclass(frozen, module = "copydata", name = "Launch")]
pub(crate) struct Launch {
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    data: Py<PyBytes>,
    pid: u32,
    tag: u64,
    inner: Mutex<Option<copydata::instance::Launch>>,
}

impl Launch {
    fn new(py: Python<'_>, launch: copydata::instance::Launch) -> PyResult<Launch> {
        Ok(Launch {
            args: launch.args().to_vec(),
            cwd: launch.cwd().map(PathBuf::from),
            env: launch.env().to_vec(),
            data: PyBytes::new(py, launch.data()).unbind(),
            pid: launch.pid(),
            tag: launch.tag(),
            inner: Mutex::new(Some(launch)),
        })
    }
}

#[pymethods]
impl Launch {
    /// The arguments.
    #[getter]
    fn args(&self) -> Vec<OsString> {
        self.args.clone()
    }

    /// The secondary's working directory (a `pathlib.Path`), or None.
    #[getter]
    fn cwd(&self) -> Option<PathBuf> {
        self.cwd.clone()
    }

    /// The forwarded environment variables, as a dict.
    #[getter]
    fn env(&self) -> HashMap<OsString, OsString> {
        self.env.iter().cloned().collect()
    }

    /// The bytes sent with the launch.
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyBytes> {
        self.data.clone_ref(py)
    }

    /// The secondary's process id (from the OS).
    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    /// The message tag (a plain Win32 `WM_COPYDATA` launch has its own).
    #[getter]
    fn tag(&self) -> u64 {
        self.tag
    }

    /// Whether `answer` was called.
    #[getter]
    fn answered(&self) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Answers the launch: the secondary's `single_instance` returns a
    /// `Secondary` with this `code` (a 32-bit int, an exit code) and
    /// `data`. Raises `SenderGone` if the secondary stopped waiting,
    /// `Error` if already answered.
    #[pyo3(signature = (code = 0, data = None))]
    fn answer(&self, py: Python<'_>, code: i32, data: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let data = data.map(bytes_arg).transpose()?.unwrap_or_default();
        let taken = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        let launch = taken.ok_or_else(|| errors::raise(py, Kind::Error, "the launch was already answered"))?;
        py.detach(|| launch.answer(Answer::new(code, data))).map_err(|e| errors::reply_error(py, e))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let args = self.args.clone().into_pyobject(py)?.repr()?;
        Ok(format!("<copydata.Launch pid={} args={args}>", self.pid))
    }
}
