//! A child inherits sections from its parent: the classic "put the handle's
//! value on the child's command line".
//!
//! ```text
//! cargo run -p copydata --example inherit
//! ```
//!
//! The parent creates two anonymous sections, writes a question into the
//! first, and starts a child (itself again, in the `child` role) that
//! inherits the first as a read-only hand-out and the second writable. The
//! child reads the question, answers in the second section, and finds that
//! the read-only one cannot be mapped for writing.

use std::process::Command;

use copydata::{CommandExt, INHERIT_VAR, Section, inherited_sections};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("child") {
        // Win32 passes the handle's value on the command line and the child
        // casts it back to a HANDLE; POSIX passes the descriptor's number.
        // copydata passes them in one environment variable and checks each
        // before taking it (is it really the section the parent named?).
        println!("child: {INHERIT_VAR}={}", std::env::var(INHERIT_VAR)?);
        let [frozen, answer] = <[Section; 2]>::try_from(inherited_sections()?).map_err(|_| "two sections")?;
        let mut text = vec![0; 12];
        frozen.map(0, 12)?.read_at(0, &mut text)?;
        println!("child: read {:?}", String::from_utf8_lossy(&text));
        answer.map_mut(0, 13)?.write_at(0, b"hello, parent")?;
        // MapViewOfFile(FILE_MAP_WRITE) on a FILE_MAP_READ handle fails with
        // ERROR_ACCESS_DENIED; mmap(PROT_WRITE) of an O_RDONLY descriptor
        // with EACCES. Here: MapError::ReadOnly, before asking the OS.
        if let Err(e) = frozen.map_mut(0, 12) {
            println!("child: the read-only hand-out refuses to map writable ({e})");
        }
        return Ok(());
    }

    // CreateFileMappingW(INVALID_HANDLE_VALUE) / memfd_create + ftruncate:
    // anonymous sections, reachable only through their handles.
    let question = Section::anonymous(4096)?;
    question.map_mut(0, 12)?.write_at(0, b"hello, child")?;
    let answer = Section::anonymous(4096)?;
    // DuplicateHandle(FILE_MAP_READ) / write seals + an O_RDONLY descriptor
    // (the seals freeze the memory for new writers everywhere: keep what
    // the child should write in another section).
    let frozen = question.read_only()?;

    // CreateProcessW(bInheritHandles = TRUE) with only these two handles made
    // inheritable / fork + exec with only these two descriptors kept open
    // (everything else copydata makes is close-on-exec).
    let status =
        Command::new(std::env::current_exe()?).arg("child").spawn_with_sections(&[&frozen, &answer])?.wait()?;
    if !status.success() {
        return Err(format!("the child failed: {status}").into());
    }
    let mut text = vec![0; 13];
    answer.map(0, 13)?.read_at(0, &mut text)?;
    println!("parent: read {:?}", String::from_utf8_lossy(&text));
    Ok(())
}
