//! Hands a section to a process that is already running and inherited
//! nothing: the classic `DuplicateHandle` into another process.
//!
//! ```text
//! cargo run -p copydata --example handover
//! ```
//!
//! The parent starts a receiver (itself again, in the `receiver` role), then
//! hands it an anonymous section with the platform's own primitive
//! ([`copydata::os`]). Over a mailbox, `Sender::send_with_sections` does the
//! same portably, beside a message.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use copydata::Section;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [role, path] = &args[..]
        && role == "receiver"
    {
        let section = receive(path)?;
        let mut text = vec![0; 12];
        section.map(0, 12)?.read_at(0, &mut text)?;
        println!("receiver: got {} bytes: {:?}", section.len(), String::from_utf8_lossy(&text));
        return Ok(());
    }
    let section = Section::anonymous(4096)?;
    section.map_mut(0, 12)?.write_at(0, b"handed over!")?;
    let path = std::env::temp_dir().join(format!("copydata-example-handover-{}.sock", std::process::id()));
    let mut receiver = Command::new(std::env::current_exe()?)
        .args(["receiver".as_ref(), path.as_os_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(receiver.stdout.take().ok_or("no stdout")?).lines();
    if lines.next().transpose()?.as_deref() != Some("ready") {
        return Err("the receiver did not start".into());
    }
    // A receiver left waiting would wait forever: end it if this fails.
    hand_over(&section, &path, &mut receiver).inspect_err(|_| drop(receiver.kill()))?;
    for line in lines {
        println!("{}", line?);
    }
    match receiver.wait()? {
        status if status.success() => Ok(()),
        status => Err(format!("the receiver failed: {status}").into()),
    }
}

/// Linux: the descriptor travels over a Unix socket as `SCM_RIGHTS`.
#[cfg(target_os = "linux")]
fn receive(path: &str) -> Result<Section> {
    // socket(AF_UNIX) + bind + listen, then accept.
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    println!("ready");
    let (stream, _) = listener.accept()?;
    std::fs::remove_file(path)?;
    // recvmsg: the descriptor arrives, checked to be a section of that size.
    Ok(copydata::os::linux::recv_section(&stream)?)
}

#[cfg(target_os = "linux")]
fn hand_over(section: &Section, path: &std::path::Path, _: &mut Child) -> Result<()> {
    // connect, then sendmsg with the descriptor as SCM_RIGHTS.
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    Ok(copydata::os::linux::send_section(&stream, section)?)
}

/// Windows: `DuplicateHandle` puts a handle into the receiver; its value
/// travels by any channel (here the receiver's stdin).
#[cfg(windows)]
fn receive(_: &str) -> Result<Section> {
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let (handle, len) = line.trim().split_once(' ').ok_or("expected: HANDLE LEN")?;
    let (handle, len) = (handle.parse()?, len.parse()?);
    let access = copydata::Access::ReadWrite;
    // SAFETY:
    // - the handle was duplicated into this process for this call alone;
    // - nothing else here owns or closes it (the section closes it).
    Ok(unsafe { copydata::os::windows::adopt_section(handle, len, access, None) }?)
}

#[cfg(windows)]
fn hand_over(section: &Section, _: &std::path::Path, receiver: &mut Child) -> Result<()> {
    use std::io::Write;
    // OpenProcess(PROCESS_DUP_HANDLE) + DuplicateHandle into the receiver.
    let dup = copydata::os::windows::duplicate_into(section, receiver.id())?;
    let stdin = receiver.stdin.as_mut().ok_or("no stdin")?;
    Ok(writeln!(stdin, "{} {}", dup.handle, dup.len)?)
}

#[cfg(not(any(target_os = "linux", windows)))]
fn receive(_: &str) -> Result<Section> {
    Err("hand-over: Linux and Windows only".into())
}
#[cfg(not(any(target_os = "linux", windows)))]
fn hand_over(_: &Section, _: &std::path::Path, _: &mut Child) -> Result<()> {
    unreachable!("the receiver does not start")
}
