//! Passing sections to a child process by inheritance.
//!
//! The parent makes the chosen handles inheritable for the child only (the
//! backends say how) and describes them in the environment variable
//! [`INHERIT_VAR`]. The token format is shared by the backends:
//!
//! ```text
//! 1;ENTRY,ENTRY,...      ENTRY = FIELD:FIELD:FIELD[:NAME]
//! ```
//!
//! The three fields are the backend's (Linux: descriptor, device, inode;
//! Windows: handle, size, `r`/`w`), `NAME` is the section's name for named
//! sections. The child treats the token as untrusted: it is parsed strictly
//! here and every handle is checked by the backend before it is taken.

// The token codec is used only by the backends that support inheritance.
#![cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]

use std::io;
use std::process::{Child, Command};
use std::sync::Mutex;

use crate::error::InheritError;
use crate::name::Name;
use crate::section::Section;
use crate::sys;

/// The environment variable through which a parent tells a child which
/// sections it passed (see [`CommandExt`]).
pub const INHERIT_VAR: &str = "COPYDATA_SECTIONS";

/// Spawning a child with sections: an extension of [`std::process::Command`].
///
/// Nothing copydata creates is inheritable by default (descriptors are
/// close-on-exec, handles non-inheritable); only the sections passed here
/// reach the child. The child takes them with [`inherited_sections`].
///
/// ```no_run
/// use std::process::Command;
/// use copydata::{CommandExt, Section};
///
/// let section = Section::anonymous(1 << 20)?;
/// section.map_mut(0, 5)?.write_at(0, b"hello")?;
/// // The worker reads it and cannot write it.
/// let frozen = section.read_only()?;
/// let mut child = Command::new("worker").spawn_with_sections(&[&frozen])?;
/// child.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Portability
///
/// On Linux the descriptors are duplicated and made inheritable only in the
/// forked child (a `pre_exec` hook), so concurrent spawns on other threads
/// never receive them. The duplicates live as long as the `Command`. On
/// Windows an inheritable duplicate exists only for the duration of the
/// `CreateProcessW` call; a process spawned by another thread during exactly
/// that moment may inherit it too (std spawns with `bInheritHandles`).
pub trait CommandExt {
    /// Spawns the command with `sections` passed to the child, read-write or
    /// read-only as each handle is (use [`Section::read_only`] for a
    /// read-only hand-out). On Linux an anonymous section of which a
    /// read-only hand-out was made takes no new writable view in the child
    /// ([`MapError::Sealed`](crate::MapError::Sealed), see
    /// [`Section::read_only`]).
    ///
    /// Windows: inheritable duplicates of the handles (`DuplicateHandle`
    /// with `bInheritHandle`, so they carry `HANDLE_FLAG_INHERIT`) live for
    /// the `CreateProcessW` call (`bInheritHandles = TRUE`), and their
    /// values go to the child in [`INHERIT_VAR`]: the classic "handle value
    /// on the command line". Linux: in the forked child, duplicates of the
    /// descriptors have `FD_CLOEXEC` cleared (`fcntl(F_SETFD)`) before
    /// `execve`.
    ///
    /// The sections reach only the child of this call: a later spawn of
    /// the same `Command` (with other sections, or a plain `spawn`) passes
    /// none of them, nor the token (it is removed from the command's
    /// environment once the child is started).
    #[doc(alias = "CreateProcessW")]
    #[doc(alias = "bInheritHandles")]
    #[doc(alias = "HANDLE_FLAG_INHERIT")]
    #[doc(alias = "FD_CLOEXEC")]
    fn spawn_with_sections(&mut self, sections: &[&Section]) -> io::Result<Child>;
}

impl CommandExt for Command {
    fn spawn_with_sections(&mut self, sections: &[&Section]) -> io::Result<Child> {
        let parts: Vec<_> = sections.iter().map(|s| (s.inner(), s.name_ref())).collect();
        sys::spawn_with_sections(self, &parts)
    }
}

/// Sections made ready for a child that the caller spawns itself: what
/// [`CommandExt::spawn_with_sections`] does before it spawns, for spawners
/// other than [`std::process::Command`] (Python's `subprocess`, a C
/// program's `fork`/`exec` or `CreateProcessW`, an async runtime's process
/// API).
///
/// It holds a duplicate of each section's handle (`fds()` on
/// Linux, `handles()` on Windows) and the [`token`](Self::token)
/// that names them. To pass the sections:
///
/// 1. set the child's environment variable [`INHERIT_VAR`] to the token;
/// 2. let the child inherit the duplicates, and nothing else of this
///    process's:
///    - Linux: they are close-on-exec here; keep each open in the child
///      under the same number, for example with `pass_fds` of Python's
///      `subprocess.Popen`, or with `fcntl(fd, F_SETFD, 0)` between `fork`
///      and `exec`;
///    - Windows: they are inheritable while this value lives; create the
///      process with `bInheritHandles = TRUE`, ideally naming exactly these
///      handles in a `PROC_THREAD_ATTRIBUTE_HANDLE_LIST` (`handle_list` of
///      Python's `STARTUPINFO`), so that no other inheritable handle goes
///      along;
/// 3. drop this value once the child is created (on Windows at once: a
///    process another thread creates with `bInheritHandles` meanwhile would
///    inherit the duplicates too).
///
/// The child takes the sections with [`inherited_sections`], which checks
/// each one against the token before it takes it.
///
/// ```no_run
/// # #[cfg(target_os = "linux")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// use std::os::unix::process::CommandExt as _;
/// use std::process::Command;
/// use copydata::{Inheritance, Section, INHERIT_VAR};
///
/// let section = Section::anonymous(4096)?;
/// let passed = Inheritance::new(&[&section])?;
/// let fds: Vec<i32> = passed.fds().map(|fd| fd.as_raw_fd()).collect();
/// let mut cmd = Command::new("worker");
/// cmd.env(INHERIT_VAR, passed.token());
/// // SAFETY: only fcntl, async-signal-safe, on descriptors open at the fork.
/// unsafe {
///     cmd.pre_exec(move || {
///         for &fd in &fds {
///             if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
///                 return Err(std::io::Error::last_os_error());
///             }
///         }
///         Ok(())
///     });
/// }
/// let mut child = cmd.spawn()?;
/// drop(passed);
/// child.wait()?;
/// # Ok(())
/// # }
/// # #[cfg(not(target_os = "linux"))]
/// # fn main() {}
/// ```
///
/// (With [`std::process::Command`] itself, [`CommandExt::spawn_with_sections`]
/// does all of this.)
pub struct Inheritance {
    passed: Vec<sys::Passed>,
    token: String,
}

impl Inheritance {
    /// Duplicates the handles of `sections` (each read-write or read-only
    /// as it is: use [`Section::read_only`] for a read-only hand-out) and
    /// builds the token that names them for the child.
    pub fn new(sections: &[&Section]) -> io::Result<Inheritance> {
        let parts: Vec<_> = sections.iter().map(|s| (s.inner(), s.name_ref())).collect();
        let (passed, token) = sys::prepare_inheritance(&parts)?;
        Ok(Inheritance { passed, token })
    }

    /// The value for the child's environment variable [`INHERIT_VAR`].
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How many sections are passed.
    pub fn len(&self) -> usize {
        self.passed.len()
    }

    /// Whether no section is passed (the child's [`inherited_sections`]
    /// then returns none).
    pub fn is_empty(&self) -> bool {
        self.passed.is_empty()
    }

    /// The descriptors the child must inherit, in the order of the
    /// sections: close-on-exec here, to be kept open under the same numbers
    /// in the child.
    #[cfg(target_os = "linux")]
    pub fn fds(&self) -> impl ExactSizeIterator<Item = std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.passed.iter().map(|fd| fd.as_fd())
    }

    /// The handles the child must inherit, in the order of the sections:
    /// inheritable duplicates, closed when this value is dropped.
    #[cfg(windows)]
    pub fn handles(&self) -> impl ExactSizeIterator<Item = std::os::windows::io::BorrowedHandle<'_>> {
        use std::os::windows::io::AsHandle;
        self.passed.iter().map(|h| h.as_handle())
    }
}

impl std::fmt::Debug for Inheritance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inheritance").field("token", &self.token).finish_non_exhaustive()
    }
}

static TAKEN: Mutex<bool> = Mutex::new(false);

/// Takes the sections the parent passed with
/// [`CommandExt::spawn_with_sections`], in the order it passed them.
///
/// Returns an empty list if this process was started without sections.
/// The sections can be taken once; a second call fails with
/// [`InheritError::AlreadyTaken`]. Every entry of the token is validated
/// (the descriptor or handle must be the section object the parent named)
/// before ownership is taken, and taken handles are made non-inheritable
/// again, so they do not leak into this process's own children. When an
/// entry fails, the ones taken before it are closed.
pub fn inherited_sections() -> Result<Vec<Section>, InheritError> {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(token) = std::env::var_os(INHERIT_VAR) else {
        return Ok(Vec::new());
    };
    if *taken {
        return Err(InheritError::AlreadyTaken);
    }
    let token = token.into_string().map_err(|_| InheritError::malformed("not valid UTF-8"))?;
    *taken = true;
    let parts = sys::take_inherited(&token)?;
    Ok(parts.into_iter().map(|(s, name)| Section::from_parts(s, name)).collect())
}

/// Builds a token from the backend's fields for each section.
pub(crate) fn encode<'a>(entries: impl IntoIterator<Item = ([String; FIELDS], Option<&'a Name>)>) -> String {
    let entries: Vec<String> = entries
        .into_iter()
        .map(|(fields, name)| {
            let mut entry = fields.join(":");
            if let Some(name) = name {
                entry.push(':');
                entry.push_str(name.as_str());
            }
            entry
        })
        .collect();
    format!("1;{}", entries.join(","))
}

/// The number of backend fields in a token entry.
pub(crate) const FIELDS: usize = 3;

/// One parsed entry: the backend's fields, still as text, and the name.
pub(crate) struct Entry<'a> {
    pub(crate) fields: [&'a str; FIELDS],
    pub(crate) name: Option<Name>,
}

/// Parses a token. Refuses unknown versions, wrong field counts, bad names,
/// and two entries naming the same handle.
pub(crate) fn decode(token: &str) -> Result<Vec<Entry<'_>>, InheritError> {
    let rest = token.strip_prefix("1;").ok_or_else(|| InheritError::malformed("unknown version"))?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for entry in rest.split(',') {
        let parts: Vec<&str> = entry.split(':').collect();
        let (fields, name) = match parts.len() {
            FIELDS => (&parts[..], None),
            n if n == FIELDS + 1 => (&parts[..FIELDS], Some(parts[FIELDS])),
            _ => return Err(InheritError::malformed(format!("wrong number of fields in {entry:?}"))),
        };
        let fields: [&str; FIELDS] = fields.try_into().expect("length checked");
        let name = name
            .map(|n| Name::new(n).map_err(|e| InheritError::malformed(format!("bad name {n:?}: {e}"))))
            .transpose()?;
        // Compared by value: "5" and "05" would be two sections owning one
        // descriptor (and closing it twice); `number` refuses the second
        // spelling anyway.
        let handle: u64 = number(fields[0], "handle")?;
        if entries.iter().any(|e| number::<u64>(e.fields[0], "handle").ok() == Some(handle)) {
            return Err(InheritError::malformed(format!("handle {handle} is listed twice")));
        }
        entries.push(Entry { fields, name });
    }
    Ok(entries)
}

/// Parses one numeric field of an entry: canonical decimal only (digits, no
/// sign, no leading zero), so each number has exactly one spelling.
pub(crate) fn number<T: std::str::FromStr>(field: &str, what: &str) -> Result<T, InheritError> {
    let bad = || InheritError::malformed(format!("bad {what} {field:?}"));
    let canonical =
        !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit()) && (field == "0" || !field.starts_with('0'));
    if !canonical {
        return Err(bad());
    }
    field.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let name = Name::new("a.b-c").unwrap();
        let token =
            encode([(["5".into(), "6".into(), "7".into()], None), (["8".into(), "9".into(), "w".into()], Some(&name))]);
        assert_eq!(token, "1;5:6:7,8:9:w:a.b-c");
        let entries = decode(&token).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].fields, ["5", "6", "7"]);
        assert_eq!(entries[1].name.as_ref().map(Name::as_str), Some("a.b-c"));
        assert!(decode("1;").unwrap().is_empty());
    }

    #[test]
    fn numbers_are_canonical_decimal() {
        assert_eq!(number::<u64>("0", "x").unwrap(), 0);
        assert_eq!(number::<u64>("1234", "x").unwrap(), 1234);
        for bad in ["", "00", "01", "+1", "-1", " 1", "1 ", "0x1", "1_000"] {
            assert!(number::<u64>(bad, "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_tokens_are_malformed() {
        for bad in [
            "",
            "garbage",
            "2;1:2:3",
            "1;1:2",
            "1;1:2:3:n:x",
            "1;1:2:3:bad/name",
            "1;1:2:3,1:4:5",
            "1;,",
            // One descriptor, two spellings: listed twice.
            "1;5:1:2,05:1:2",
            "1;5:1:2,+5:1:2",
            // Not canonical decimal.
            "1;05:1:2",
            "1;+5:1:2",
            "1; 5:1:2",
            "1;-1:1:2",
            "1;99999999999999999999999:1:2",
        ] {
            assert!(matches!(decode(bad), Err(InheritError::Malformed { .. })), "{bad:?}");
        }
    }
}
