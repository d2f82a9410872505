//! Two processes share memory by name.
//!
//! ```text
//! cargo run -p copydata --example named_section
//! ```
//!
//! The parent creates a named section and writes a greeting into it, then
//! starts a second process (itself again, in the `child` role) that opens the
//! section by name, reads the greeting and writes an answer beside it. The
//! parent reads the answer once the child has exited.

use std::process::Command;

use copydata::{Section, View};

/// The text at `offset`, up to the first NUL byte.
fn text(view: &View, offset: usize) -> String {
    let bytes = view.to_vec();
    let bytes = &bytes[offset..];
    String::from_utf8_lossy(&bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]).into_owned()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [role, name] = &args[..]
        && role == "child"
    {
        // OpenFileMappingW(FILE_MAP_ALL_ACCESS, FALSE, L"Local\\NAME") on
        // Windows; shm_open("/NAME", O_RDWR) on Linux.
        let section = Section::open(name)?;
        // MapViewOfFile(FILE_MAP_WRITE) / mmap(PROT_READ | PROT_WRITE,
        // MAP_SHARED): a view of the first 64 bytes.
        let view = section.map_mut(0, 64)?;
        println!("child: read {:?}", text(&view, 0));
        view.write_at(32, b"hello, parent")?;
        // Dropping the view and the section here: UnmapViewOfFile +
        // CloseHandle / munmap + close.
        return Ok(());
    }

    // A name of our own (the pid keeps two runs apart).
    let name = format!("copydata-example-named-{}", std::process::id());
    // CreateFileMappingW(INVALID_HANDLE_VALUE, ..., L"Local\\NAME") on
    // Windows; shm_open("/NAME", O_CREAT | O_EXCL) + ftruncate on Linux.
    let section = Section::create(&name, 4096)?;
    let view = section.map_mut(0, 64)?;
    view.write_at(0, b"hello, child")?;

    // CreateProcessW + WaitForSingleObject / fork + exec + waitpid. The child
    // inherits nothing: the name is all it gets.
    let status = Command::new(std::env::current_exe()?).args(["child", &name]).status()?;
    if !status.success() {
        return Err(format!("the child failed: {status}").into());
    }
    println!("parent: read {:?}", text(&view, 32));
    // No shm_unlink needed: the name is gone once its last holder (this
    // process) has closed it, even after a crash.
    Ok(())
}
