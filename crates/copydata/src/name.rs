//! Names of shared objects.
//!
//! A name is the part a user chooses: `frames`, `my-app.state`. The backends
//! turn it into the platform's real object name (`/dev/shm/NAME` through
//! `shm_open("/NAME")` on Linux, `Local\NAME` on Windows), so the rules below
//! are the intersection of what both platforms accept as a plain name.

use std::fmt;

/// The longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Why a name was refused. Returned by every function that takes a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes (an app id: than
    /// [`MAX_APP_ID_LEN`](crate::instance::MAX_APP_ID_LEN)).
    #[error("the name is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// The length of the refused name, in bytes.
        len: usize,
        /// The longest accepted.
        max: usize,
    },
    /// The name holds a character outside `A-Z a-z 0-9 . _ -`.
    #[error("the name contains {ch:?}; only ASCII letters, digits, '.', '_' and '-' are allowed")]
    BadChar {
        /// The first refused character.
        ch: char,
    },
    /// The name starts with a dot (reserved: `.`/`..` and hidden entries).
    #[error("the name starts with '.'")]
    LeadingDot,
    /// A section's name starts with `copydata.`, the names under which
    /// copydata's locks, events and shared values live (a section of such a
    /// name would take one of theirs).
    #[error("names starting with \"copydata.\" are copydata's own (its locks, events and shared values)")]
    Reserved,
}

/// Checks that `name` is a valid copydata object name.
///
/// Valid names are 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`,
/// `_` and `-`, not starting with `.`. In particular a name never contains a
/// path separator, so it can never reach outside the platform's namespace.
///
/// Two kinds of names have a further rule, checked where they are used: a
/// section's name may not start with `copydata.` ([`NameError::Reserved`]:
/// the names under which copydata's locks, events and shared values live),
/// and an app id is at most
/// [`MAX_APP_ID_LEN`](crate::instance::MAX_APP_ID_LEN) bytes.
///
/// ```
/// assert!(copydata::validate_name("my-app.state_1").is_ok());
/// assert!(copydata::validate_name("../etc/passwd").is_err());
/// assert!(copydata::validate_name("").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len(), max: MAX_NAME_LEN });
    }
    if let Some(ch) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(NameError::BadChar { ch });
    }
    if name.starts_with('.') {
        return Err(NameError::LeadingDot);
    }
    Ok(())
}

/// A validated name, as handed to the backends.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Name(String);

impl Name {
    pub(crate) fn new(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        Ok(Name(name.to_owned()))
    }

    /// A section's name: a valid name not starting with `copydata.`
    /// ([`NameError::Reserved`]).
    pub(crate) fn section(name: &str) -> Result<Self, NameError> {
        let name = Name::new(name)?;
        if name.0.starts_with(SYNC_PREFIX) {
            return Err(NameError::Reserved);
        }
        Ok(name)
    }

    /// An app id: a valid name short enough for its primary's mailbox
    /// (`instance.APP`) to be a valid name too.
    pub(crate) fn app_id(app: &str) -> Result<Self, NameError> {
        let max = crate::instance::MAX_APP_ID_LEN;
        if app.len() > max {
            return Err(NameError::TooLong { len: app.len(), max });
        }
        Name::new(app)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The mailbox a single-instance primary binds for the app id `app`:
    /// `instance.APP` (it may be longer than a user-chosen name).
    pub(crate) fn instance_mailbox(app: &Name) -> Name {
        Name(format!("{INSTANCE_PREFIX}{}", app.0))
    }

    /// A name a backend derives for an object of its own (not checked: it
    /// is built from a valid name and fixed text).
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn derived(name: String) -> Name {
        Name(name)
    }

    /// The OS object of a synchronisation object `name` of `kind`:
    /// `copydata.KIND.NAME`.
    pub(crate) fn sync_object(kind: &str, name: &Name) -> Name {
        Name(format!("{SYNC_PREFIX}{kind}.{}", name.0))
    }
}

/// What the OS names of locks, events and shared values start with.
const SYNC_PREFIX: &str = "copydata.";
/// What a single-instance primary's mailbox name starts with.
pub(crate) const INSTANCE_PREFIX: &str = "instance.";

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["a", "A-b_c.d", "0", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        let long = Err(NameError::TooLong { len: MAX_NAME_LEN + 1, max: MAX_NAME_LEN });
        assert_eq!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)), long);
        for (bad, ch) in [("a/b", '/'), ("a\\b", '\\'), ("a b", ' '), ("é", 'é'), ("a\0", '\0')] {
            assert_eq!(validate_name(bad), Err(NameError::BadChar { ch }), "{bad:?}");
        }
        assert_eq!(validate_name(".."), Err(NameError::LeadingDot));
        assert_eq!(validate_name(".hidden"), Err(NameError::LeadingDot));
    }

    #[test]
    fn sections_and_app_ids_have_rules_of_their_own() {
        assert_eq!(Name::section("copydata.mutex.x").map(|_| ()), Err(NameError::Reserved));
        assert!(Name::section("copydata").is_ok() && Name::section("my.copydata.x").is_ok());
        let max = MAX_NAME_LEN - INSTANCE_PREFIX.len();
        let app = Name::app_id(&"a".repeat(max)).unwrap();
        assert!(validate_name(Name::instance_mailbox(&app).as_str()).is_ok());
        assert_eq!(Name::app_id(&"a".repeat(max + 1)).map(|_| ()), Err(NameError::TooLong { len: max + 1, max }));
    }
}
