//! Passing sections to a child process: `copydata.Inheritance` (what
//! `copydata.Popen` hands to `subprocess.Popen`) and the child's
//! `copydata.inherited_sections()`.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::{self, Kind};
use crate::section::Section;

/// Sections made ready for a child process: duplicates of their handles
/// and the token that names them. `copydata.Popen` uses it; use it
/// directly only with another way of starting processes:
///
/// - put `token` in the child's environment under `copydata.INHERIT_VAR`;
/// - let the child inherit `handles` and nothing else of this process's
///   (Linux: descriptors, close-on-exec here, for `pass_fds`; Windows:
///   inheritable handles, for `STARTUPINFO.lpAttributeList["handle_list"]`);
/// - `close()` it once the child is started.
#[pyclass(module = "copydata", name = "Inheritance")]
pub(crate) struct Inheritance {
    /// `None` once closed.
    inner: Option<copydata::Inheritance>,
}

impl Inheritance {
    fn inner(&self, py: Python<'_>) -> PyResult<&copydata::Inheritance> {
        self.inner.as_ref().ok_or_else(|| errors::raise(py, Kind::Closed, "the inheritance is closed"))
    }
}

#[pymethods]
impl Inheritance {
    #[new]
    fn new(py: Python<'_>, sections: Vec<PyRef<'_, Section>>) -> PyResult<Inheritance> {
        let handles = sections.iter().map(|s| s.handle(py)).collect::<PyResult<Vec<_>>>()?;
        let inner = copydata::Inheritance::new(&handles).map_err(|e| errors::io_error(py, e))?;
        Ok(Inheritance { inner: Some(inner) })
    }

    /// The value of the child's `copydata.INHERIT_VAR` environment variable.
    #[getter]
    fn token(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.inner(py)?.token().to_owned())
    }

    /// What the child must inherit, in the order of the sections: descriptor
    /// numbers on Linux, handle values on Windows.
    #[getter]
    fn handles(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        let inner = self.inner(py)?;
        #[cfg(target_os = "linux")]
        let handles = {
            use std::os::fd::AsRawFd;
            inner.fds().map(|fd| fd.as_raw_fd() as u64).collect()
        };
        #[cfg(windows)]
        let handles = {
            use std::os::windows::io::AsRawHandle;
            inner.handles().map(|h| h.as_raw_handle() as usize as u64).collect()
        };
        #[cfg(not(any(target_os = "linux", windows)))]
        let handles = {
            let _ = inner;
            Vec::new()
        };
        Ok(handles)
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    fn __len__(&self) -> usize {
        self.inner.as_ref().map_or(0, copydata::Inheritance::len)
    }

    /// Closes the duplicates (the child keeps its own). Closing twice does
    /// nothing.
    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, _args: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            Some(inner) => format!("Inheritance({} sections)", inner.len()),
            None => "Inheritance(closed)".to_owned(),
        }
    }
}

/// Takes the sections the parent passed (with `copydata.Popen`, or from
/// Rust with `spawn_with_sections`), in the order it passed them; an empty
/// list if it passed none. They can be taken once: a second call raises
/// `copydata.Error`, as does a token that names handles this process did
/// not inherit (it was passed on by a process in between, or forged).
#[pyfunction]
pub(crate) fn inherited_sections(py: Python<'_>) -> PyResult<Vec<Section>> {
    let sections = copydata::inherited_sections().map_err(|e| errors::inherit_error(py, e))?;
    Ok(sections.into_iter().map(Section::wrap).collect())
}
