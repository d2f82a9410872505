//! What is live: `copydata.sections()`, `copydata.mailboxes()`,
//! `copydata.objects()` (the package wraps the tuples these return in
//! named tuples) and `copydata.remove(name)`.

use pyo3::prelude::*;

use crate::errors;

/// This user's live named sections, as (name, size) tuples.
#[pyfunction]
pub(crate) fn _sections(py: Python<'_>) -> PyResult<Vec<(String, u64)>> {
    let list = py.detach(copydata::list).map_err(|e| errors::list_error(py, e))?;
    Ok(list.into_iter().map(|s| (s.name, s.size)).collect())
}

/// This user's live mailboxes, as (name, pid) tuples.
#[pyfunction]
pub(crate) fn _mailboxes(py: Python<'_>) -> PyResult<Vec<(String, u32)>> {
    let list = py.detach(copydata::mailboxes).map_err(|e| errors::list_error(py, e))?;
    Ok(list.into_iter().map(|m| (m.name, m.pid)).collect())
}

/// This user's live mutexes, events and shared values, as (name, kind)
/// tuples; kind is "mutex", "event" or "shared".
#[pyfunction]
pub(crate) fn _objects(py: Python<'_>) -> PyResult<Vec<(String, String)>> {
    let list = py.detach(copydata::sync::objects).map_err(|e| errors::list_error(py, e))?;
    Ok(list.into_iter().map(|o| (o.name, o.kind.to_string())).collect())
}

/// Removes the name of the named section `name`, like `shm_unlink`:
/// processes that hold it keep their memory, and the name is free for a
/// new section at once. Raises `NotFound` if no section has the name;
/// not supported on Windows (a named mapping lives as long as its
/// handles).
#[pyfunction]
pub(crate) fn remove(py: Python<'_>, name: &str) -> PyResult<()> {
    py.detach(|| copydata::remove(name)).map_err(|e| errors::remove_error(py, e))
}
