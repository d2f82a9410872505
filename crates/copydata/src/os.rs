//! Platform-specific extensions: handing a section to an unrelated running
//! process.
//!
//! The two platforms move handles between processes differently, so each has
//! its own primitive (a portable, message-based hand-over rides on top of
//! these in copydata's mailboxes):
//!
//! - Linux (`os::linux`): the descriptor travels over a connected Unix socket as
//!   `SCM_RIGHTS` ancillary data, together with a small validated header.
//! - Windows (`os::windows`): `DuplicateHandle` puts a handle into the target
//!   process; the sender tells the target the handle's value by any channel,
//!   and the target adopts it.

#[cfg(target_os = "linux")]
pub mod linux {
    //! Linux: sections over Unix sockets (`SCM_RIGHTS`).
    pub use crate::sys::handover::{recv_section, recv_section_checked, send_section, send_section_checked};

    /// Where the socket of the mailbox `name` lives (whether or not it is
    /// bound): for diagnostics and tools. `None` if the name is invalid or the
    /// runtime directory is unusable.
    pub fn mailbox_socket_path(name: &str) -> Option<std::path::PathBuf> {
        crate::sys::mailbox::socket_path_of(name)
    }
}

#[cfg(windows)]
pub mod windows {
    //! Windows: sections by `DuplicateHandle`.
    pub use crate::sys::handover::{Duplicated, adopt_section, duplicate_into};
    pub use crate::sys::mailbox::send_to_window;
}
