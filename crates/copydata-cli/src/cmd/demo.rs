//! `copydata demo`: every capability, across real processes.
//!
//! The demo re-runs this executable as its children (`copydata __demo-child
//! ROLE`), so each step crosses a real process boundary. Each step prints what
//! happened; the exit code is non-zero if any step failed.
//!
//! Interrupted (Ctrl-C, SIGTERM, console close), the demo kills its children
//! at once, so that the step waiting on them ends; the step drops what it
//! made as it returns, the files of the mailboxes whose receivers were killed
//! are removed, and the demo exits with [`crate::exit::INTERRUPTED`]. The
//! children also die with the demo if it is killed outright (on Linux by
//! `PR_SET_PDEATHSIG`, on Windows by a job object that kills its processes
//! when its last handle, the demo's, closes).

#[cfg(windows)]
use std::io::{BufRead, BufReader};
use std::io::{Read, Write};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args as ClapArgs;
use copydata::{CommandExt, MapError, Section};

use crate::interrupts::{Interrupts, SLICE};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Run only this step (1-based).
    #[arg(long, value_name = "N")]
    step: Option<usize>,
}

#[derive(ClapArgs, Debug)]
pub struct ChildArgs {
    role: String,
    rest: Vec<String>,
}

/// How long any child may take before the demo gives up on it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// A demo step: what it showed, or why it failed.
type Step = fn() -> anyhow::Result<String>;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let steps: [(&str, Step); 12] = [
        ("inheritance", inherit_step),
        ("open by name", by_name_step),
        ("read-only hand-out", read_only_step),
        ("file-backed view at an unaligned offset", file_step),
        ("hand-over to a running process", handover_step),
        ("messages to a mailbox in another process", messages_step),
        ("a timeout against a slow receiver", timeout_step),
        ("a receiver killed mid-send", killed_step),
        ("a section carried inside a message", carried_step),
        ("the fast path: shared-memory messages and loans", fast_step),
        ("a single-instance application", instance_step),
        ("shared state: a counter and a lock that survives its owner", shared_step),
    ];
    let mut failed = 0;
    if let Some(n) = args.step
        && !(1..=steps.len()).contains(&n)
    {
        return Err(crate::exit::Usage(format!("--step {n}: the steps are 1 to {}", steps.len())).into());
    }
    // From here on an interrupt kills the children; the step under way then
    // fails and drops what it made, and the demo ends.
    let interrupts = Interrupts::catch_then(stop_children)?;
    // (Not locked: the steps' threads may print too.)
    let mut out = std::io::stdout();
    writeln!(out, "copydata demo: sections and messages across real processes (this is pid {})", std::process::id())?;
    // The step under way, or the last one run.
    let mut current = None;
    for (i, (title, step)) in steps.iter().enumerate() {
        if interrupts.came() {
            return Ok(interrupted(current));
        }
        if args.step.is_some_and(|n| n != i + 1) {
            continue;
        }
        current = Some(i + 1);
        let result = step();
        if interrupts.came() && result.is_err() {
            // Failed because its children were killed: not a failure to show.
            return Ok(interrupted(current));
        }
        match result {
            Ok(what) => writeln!(out, "[{}/{}] ok   {title}: {what}", i + 1, steps.len())?,
            Err(e) => {
                failed += 1;
                writeln!(out, "[{}/{}] FAIL {title}: {}", i + 1, steps.len(), crate::exit::one_line(&e))?;
            }
        }
    }
    if interrupts.came() {
        return Ok(interrupted(current));
    }
    if args.step.is_some() {
        return Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(crate::exit::OTHER) });
    }
    if failed == 0 {
        writeln!(out, "all {} steps passed", steps.len())?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(out, "{failed} of {} steps failed", steps.len())?;
        Ok(ExitCode::from(crate::exit::OTHER))
    }
}

/// The end of an interrupted demo, once the step under way (`step`, if one
/// was) has returned, dropping what it made: kills what children are left
/// (none, as every step reaps its own), removes the files of the mailboxes
/// whose receivers were killed while bound, and says so.
fn interrupted(step: Option<usize>) -> ExitCode {
    let left = std::mem::take(&mut children().running);
    for (_, mut child) in left {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Listing removes what a killed binder left (Linux; on Windows the
    // system removed it with the process).
    let _ = copydata::mailboxes();
    let during = step.map(|n| format!(" during step {n}")).unwrap_or_default();
    eprintln!("copydata: demo interrupted{during}; its child processes were stopped and what it made was removed");
    ExitCode::from(crate::exit::INTERRUPTED)
}

/// The demo's running children, and whether it was interrupted.
///
/// Every child is kept here from its start until its [`Kid`] is dropped, so
/// that the interrupt handler, on a thread of its own, can kill them all:
/// whatever a step waits for from a child (its exit, a line, a reply, a
/// connection) then ends, the step fails and drops what it made. No child
/// starts after an interrupt.
struct Children {
    stopping: bool,
    next: u64,
    running: Vec<(u64, Child)>,
}

static CHILDREN: Mutex<Children> = Mutex::new(Children { stopping: false, next: 0, running: Vec::new() });

fn children() -> MutexGuard<'static, Children> {
    CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The interrupt handler's work: kills every running child and lets no
/// other start. (A child already reaped is left alone: `Child::kill` knows.)
fn stop_children() {
    let mut children = children();
    children.stopping = true;
    for (_, child) in &mut children.running {
        let _ = child.kill();
    }
}

/// Whether the demo was interrupted (for the waits that do not end with a
/// child).
fn stopping() -> bool {
    children().stopping
}

/// A child of the demo, in [`CHILDREN`]; killed (kill -9, TerminateProcess
/// on Windows) and reaped if dropped.
struct Kid {
    key: u64,
    pid: u32,
}

impl Kid {
    /// Starts `cmd`, handing `sections` to it, as a child that dies with the
    /// demo.
    fn spawn(cmd: &mut Command, sections: &[&Section]) -> anyhow::Result<Kid> {
        die_with_parent(cmd);
        let mut child = if sections.is_empty() { spawned(cmd) } else { spawned_with(cmd, sections) }?;
        #[cfg(windows)]
        job::adopt(&child);
        let mut children = children();
        if children.stopping {
            drop(children);
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted");
        }
        let key = children.next;
        children.next += 1;
        let pid = child.id();
        children.running.push((key, child));
        Ok(Kid { key, pid })
    }

    fn id(&self) -> u32 {
        self.pid
    }

    /// Runs `f` on the child (`None` once it is gone from [`CHILDREN`]).
    fn with<T>(&self, f: impl FnOnce(&mut Child) -> T) -> Option<T> {
        let mut children = children();
        children.running.iter_mut().find(|(key, _)| *key == self.key).map(|(_, child)| f(child))
    }

    fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        self.with(Child::try_wait).unwrap_or_else(|| Err(std::io::Error::other("the child is gone")))
    }

    fn kill(&self) -> std::io::Result<()> {
        self.with(Child::kill).unwrap_or(Ok(()))
    }

    fn stdout(&self) -> anyhow::Result<std::process::ChildStdout> {
        self.with(|c| c.stdout.take()).flatten().context("child stdout")
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let child = {
            let mut children = children();
            let at = children.running.iter().position(|(key, _)| *key == self.key);
            at.map(|i| children.running.swap_remove(i).1)
        };
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes the child started by `cmd` die when the demo does, even by kill -9:
/// `PR_SET_PDEATHSIG` (SIGKILL) set in the child before it runs copydata
/// again. The signal comes when the thread that started the child ends: the
/// demo starts every child from its main thread, which ends with the process.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = rustix::process::getpid();
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes two system calls
    // (prctl, getppid) and allocates nothing (an error from the kind or the
    // errno alone).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The demo died before the signal was set: nobody will send it.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        })
    };
}

/// On Windows the child is put in the demo's job object once it started
/// (see `job`); elsewhere nothing more is done.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// A job object that kills its processes when its last handle closes: the
/// demo's, which closes when the demo ends, however it ends.
#[cfg(windows)]
mod job {
    use std::os::windows::io::AsRawHandle;
    use std::sync::OnceLock;

    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
        JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation, SetInformationJobObject,
    };

    /// The job's handle, as an integer (a raw handle is not `Sync`); `None`
    /// if the system would not make one.
    static JOB: OnceLock<Option<usize>> = OnceLock::new();

    fn job() -> Option<usize> {
        *JOB.get_or_init(|| {
            // SAFETY: no name and no security attributes (null pointers are
            // allowed for both); the handle returned is checked for null.
            let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
            if job.is_null() {
                return None;
            }
            // SAFETY: the structure is plain data, valid all zero.
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            // SAFETY: `job` is the handle just made; `info` is the structure
            // the class names, of the size given, alive for the call.
            let set = unsafe {
                SetInformationJobObject(
                    job,
                    JobObjectExtendedLimitInformation,
                    (&raw const info).cast(),
                    size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                )
            };
            // (Without the limit the job would not kill anything: leave it.)
            (set != 0).then_some(job as usize)
        })
    }

    /// Puts `child` in the job: it is killed when the demo ends. Best effort
    /// (a system that refuses leaves the child as it is).
    pub fn adopt(child: &std::process::Child) {
        if let Some(job) = job() {
            // SAFETY: `job` is the job's handle, never closed; the process
            // handle is `child`'s own, open while `child` lives.
            let _ = unsafe { AssignProcessToJobObject(job as _, child.as_raw_handle()) };
        }
    }
}

fn me() -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("locating the copydata executable")?);
    cmd.arg("__demo-child");
    Ok(cmd)
}

/// Starts `cmd`, trying again (up to three times, 100 ms apart) when
/// Windows answers `ERROR_INTERNAL_ERROR`: Wine's `CreateProcessW` fails so
/// now and then while many processes start at once, and a second attempt
/// succeeds. Any other failure is returned at once.
fn spawned(cmd: &mut Command) -> std::io::Result<Child> {
    retried(|| cmd.spawn())
}

/// [`spawned`], handing `sections` to the child.
fn spawned_with(cmd: &mut Command, sections: &[&copydata::Section]) -> std::io::Result<Child> {
    retried(|| cmd.spawn_with_sections(sections))
}

fn retried(mut start: impl FnMut() -> std::io::Result<Child>) -> std::io::Result<Child> {
    const ERROR_INTERNAL_ERROR: i32 = 1359;
    let mut attempt = 0;
    loop {
        match start() {
            Err(e) if cfg!(windows) && e.raw_os_error() == Some(ERROR_INTERNAL_ERROR) && attempt < 3 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The first line `child` prints (its standard output piped), read on a
/// thread of its own so that the caller can wait for it with a deadline.
fn first_line(child: &Kid) -> anyhow::Result<std::sync::mpsc::Receiver<String>> {
    let stdout = child.stdout()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    Ok(rx)
}

/// Waits for `child` to exit, with a deadline.
fn finished(child: &Kid, what: &str) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(Instant::now() <= deadline, "{what} did not finish within {CHILD_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` with a deadline, which it must meet with success;
/// kills it if the deadline passes.
fn wait(child: Kid, what: &str) -> anyhow::Result<()> {
    let status = finished(&child, what)?;
    ensure!(status.success(), "{what} exited with {status}");
    Ok(())
}

/// [`wait`] without the check of its status, collecting what `child` prints
/// on its standard output (and reading its standard error, if piped too).
fn output(child: Kid, what: &str) -> anyhow::Result<(ExitStatus, Vec<u8>)> {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<std::thread::JoinHandle<Vec<u8>>> {
        pipe.map(|mut pipe| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        })
    }
    let stdout = drain(child.with(|c| c.stdout.take()).flatten());
    let stderr = drain(child.with(|c| c.stderr.take()).flatten());
    let status = finished(&child, what)?;
    drop(stderr.map(std::thread::JoinHandle::join));
    let stdout = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    Ok((status, stdout))
}

/// The connection `from` makes to `listener`, waited for with a deadline;
/// an error once `from` has exited without making it.
#[cfg(unix)]
fn accepted(listener: &std::os::unix::net::UnixListener, from: &Kid) -> anyhow::Result<std::os::unix::net::UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = from.try_wait()? {
            bail!("process {} exited with {status} before it connected", from.id());
        }
        ensure!(Instant::now() <= deadline, "process {} did not connect within {CHILD_TIMEOUT:?}", from.id());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn read_text(section: &Section, len: usize) -> anyhow::Result<String> {
    let bytes = section.map(0, len)?.to_vec();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

fn write_text(section: &Section, text: &str) -> anyhow::Result<()> {
    section.map_mut(0, text.len() + 1)?.write_at(0, format!("{text}\0").as_bytes())?;
    Ok(())
}

fn inherit_step() -> anyhow::Result<String> {
    let section = Section::anonymous(4096)?;
    let child = Kid::spawn(me()?.arg("inherit-write"), &[&section])?;
    let pid = child.id();
    wait(child, "the child")?;
    let text = read_text(&section, 64)?;
    ensure!(text == format!("written by child {pid}"), "read back {text:?}");
    Ok(format!("anonymous 4 KiB section passed to child {pid}; it wrote {text:?}, read back here"))
}

fn by_name_step() -> anyhow::Result<String> {
    let name = format!("copydata-demo-{}", std::process::id());
    let section = Section::create(&name, 64 * 1024)?;
    write_text(&section, "hello from the creator")?;
    let child = Kid::spawn(me()?.args(["by-name", &name]), &[])?;
    let pid = child.id();
    wait(child, "the opener")?;
    let text = read_text(&section, 64)?;
    ensure!(text == format!("hello back from {pid}"), "read back {text:?}");
    drop(section);
    // The last holder is gone: the name is free again.
    match Section::open(&name) {
        Err(copydata::OpenError::NotFound { .. }) => {}
        other => bail!("the section outlived its holders: {other:?}"),
    }
    Ok(format!("{name:?} opened by name in process {pid}, which answered {text:?}; gone after the last holder closed"))
}

fn read_only_step() -> anyhow::Result<String> {
    let section = Section::anonymous(4096)?;
    write_text(&section, "read-only data")?;
    let frozen = section.read_only()?;
    let child = Kid::spawn(me()?.arg("read-only").stdout(Stdio::piped()), &[&frozen])?;
    let pid = child.id();
    let (status, out) = output(child, "the child")?;
    let said = String::from_utf8_lossy(&out).trim().to_string();
    ensure!(status.success(), "child {pid} failed: {said}");
    // The owner still writes through its own handle.
    write_text(&section, "owner still writes")?;
    Ok(format!("child {pid}: {said}; the owner can still write"))
}

/// A fresh private directory (mode 0700 on Unix, a random name) for the
/// demo's files and sockets, removed on drop: nothing in a shared `/tmp` is
/// created by a predictable name another user could plant a symlink at.
fn private_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("copydata-demo-").tempdir().context("creating a private temporary directory")
}

fn file_step() -> anyhow::Result<String> {
    let dir = private_dir()?;
    let path = dir.path().join("file.bin");
    std::fs::File::create_new(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &vec![b'.'; 256 * 1024]))
        .with_context(|| format!("creating {}", path.display()))?;
    let offset: u64 = 70_001; // neither page- nor 64 KiB-aligned
    let child = Kid::spawn(me()?.args(["file-write", &path.to_string_lossy(), &offset.to_string()]), &[])?;
    let pid = child.id();
    wait(child, "the writer")?;
    let data = std::fs::read(&path)?;
    let at = offset as usize;
    let expect = b"written at an unaligned offset";
    ensure!(&data[at..at + expect.len()] == expect, "file does not hold the text at {offset}");
    ensure!(data[at - 1] == b'.' && data[at + expect.len()] == b'.', "bytes around the text changed");
    Ok(format!(
        "process {pid} mapped {} at offset {offset} and wrote {} bytes; the file holds them",
        path.display(),
        expect.len()
    ))
}

#[cfg(target_os = "linux")]
fn handover_step() -> anyhow::Result<String> {
    use std::os::unix::net::UnixListener;
    let private = private_dir()?;
    let dir = private.path().join("handover.sock");
    let listener = UnixListener::bind(&dir)?;
    let section = Section::anonymous(4096)?;
    write_text(&section, "handed over by SCM_RIGHTS")?;
    let child = Kid::spawn(me()?.args(["handover", &dir.to_string_lossy()]), &[])?;
    let pid = child.id();
    let stream = accepted(&listener, &child)?;
    copydata::os::linux::send_section(&stream, &section)?;
    wait(child, "the receiver")?;
    let text = read_text(&section, 64)?;
    ensure!(text == format!("received by {pid}"), "read back {text:?}");
    Ok(format!("anonymous section sent to process {pid} over a Unix socket; it answered {text:?}"))
}

#[cfg(windows)]
fn handover_step() -> anyhow::Result<String> {
    let section = Section::anonymous(4096)?;
    write_text(&section, "handed over by DuplicateHandle")?;
    let child = Kid::spawn(me()?.arg("handover").stdin(Stdio::piped()), &[])?;
    let pid = child.id();
    let dup = copydata::os::windows::duplicate_into(&section, pid)?;
    writeln!(child.with(|c| c.stdin.take()).flatten().context("child stdin")?, "{} {}", dup.handle, section.len())?;
    wait(child, "the receiver")?;
    let text = read_text(&section, 64)?;
    ensure!(text == format!("received by {pid}"), "read back {text:?}");
    Ok(format!("anonymous section duplicated into process {pid} as handle {:#x}; it answered {text:?}", dup.handle))
}

#[cfg(not(any(target_os = "linux", windows)))]
fn handover_step() -> anyhow::Result<String> {
    bail!("not supported on this platform")
}

// ---------------------------------------------------------------- mailboxes

/// Tags the demo's receiver understands.
const TAG_DIGEST: u64 = 1;
const TAG_SLOW: u64 = 2;
const TAG_SECTION: u64 = 3;
const TAG_TOUCH: u64 = 4;
const TAG_LOAN_SUM: u64 = 5;
const TAG_STOP: u64 = 99;

/// A receiver child, bound to a fresh mailbox name; killed if dropped.
struct Receiver {
    child: Kid,
    name: String,
}

impl Receiver {
    fn start(tag: &str) -> anyhow::Result<Receiver> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("copydata-demo-{tag}-{}-{n}", std::process::id());
        let child = Kid::spawn(me()?.args(["mailbox", &name]).stdout(Stdio::piped()), &[])?;
        let rx = first_line(&child)?;
        let pid = child.id();
        let receiver = Receiver { child, name };
        let line = rx.recv_timeout(CHILD_TIMEOUT).context("the receiver did not start")?;
        ensure!(line.starts_with("ready"), "the receiver (pid {pid}) said {line:?}");
        Ok(receiver)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(self) -> anyhow::Result<()> {
        copydata::send_timeout(&self.name, TAG_STOP, b"", CHILD_TIMEOUT)?;
        wait(self.child, "the receiver")
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn messages_step() -> anyhow::Result<String> {
    let receiver = Receiver::start("messages")?;
    let mut sender = copydata::Sender::connect(&receiver.name)?;
    let mut done = Vec::new();
    for (label, data) in [
        ("0 B", Vec::new()),
        ("\"Hello\"", b"Hello".to_vec()),
        ("1 MiB", pattern(1 << 20)),
        ("256 MiB", pattern(256 << 20)),
    ] {
        let started = Instant::now();
        let reply = sender.send_timeout(TAG_DIGEST, &data, CHILD_TIMEOUT)?;
        ensure!(reply.code == data.len() as i64, "{label}: reply code {} for {} bytes", reply.code, data.len());
        ensure!(reply.data[..] == sha256(&data)[..], "{label}: the receiver's SHA-256 differs");
        done.push(format!("{label} in {:.1?}", started.elapsed()));
    }
    let pid = receiver.pid();
    receiver.stop()?;
    Ok(format!("receiver pid {pid} replied to {} with each payload's SHA-256, all matching", done.join(", ")))
}

fn timeout_step() -> anyhow::Result<String> {
    let receiver = Receiver::start("slow")?;
    let mut sender = copydata::Sender::connect(&receiver.name)?;
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    match sender.send_timeout(TAG_SLOW, b"take your time", limit) {
        Err(copydata::SendError::TimedOut { .. }) => {}
        other => bail!("expected a timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    // The slow reply still comes later; it must not be taken for this one.
    let reply = sender.send_timeout(TAG_DIGEST, b"next", CHILD_TIMEOUT)?;
    ensure!(reply.data[..] == sha256(b"next")[..], "the next send got another message's reply");
    receiver.stop()?;
    Ok(format!("send_timeout({limit:?}) gave TimedOut after {waited:.1?}; the next send got its own reply"))
}

fn killed_step() -> anyhow::Result<String> {
    let receiver = Receiver::start("killed")?;
    let name = receiver.name.clone();
    let name2 = name.clone();
    let pid = receiver.pid();
    let waiter = std::thread::spawn(move || copydata::send(&name, TAG_SLOW, b"never answered"));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    drop(receiver); // kill -9 (TerminateProcess on Windows)
    let result = waiter.join().map_err(|_| anyhow::anyhow!("the sending thread panicked"))?;
    let noticed = killed.elapsed();
    match result {
        Err(copydata::SendError::ReceiverDied { .. }) => {}
        other => bail!("expected ReceiverDied, got {other:?}"),
    }
    // Listing reclaims what the killed receiver left behind.
    let listed = copydata::mailboxes().unwrap_or_default().iter().any(|m| m.name == name2);
    ensure!(!listed, "the killed receiver's mailbox is still listed");
    Ok(format!(
        "receiver pid {pid} killed while handling; the waiting send returned ReceiverDied {noticed:.1?} later, and its name was reclaimed"
    ))
}

fn carried_step() -> anyhow::Result<String> {
    let receiver = Receiver::start("carry")?;
    let section = Section::anonymous(4096)?;
    write_text(&section, "a section in a message")?;
    let mut sender = copydata::Sender::connect(&receiver.name)?;
    let reply = sender.send_with_sections(TAG_SECTION, b"", &[&section], Some(CHILD_TIMEOUT))?;
    let pid = receiver.pid();
    receiver.stop()?;
    let text = read_text(&section, 64)?;
    ensure!(text == format!("answered in place by {pid}"), "read back {text:?}");
    ensure!(
        &reply.data[..] == b"a section in a message",
        "the receiver read {:?}",
        String::from_utf8_lossy(&reply.data)
    );
    Ok(format!("receiver pid {pid} read the section it was sent and wrote {text:?} into it"))
}

/// The median round trip of `rounds` calls of `f`, after a warm-up.
fn median_round_trip(rounds: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    for _ in 0..rounds / 10 {
        f()?;
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// The same 64-byte ping-pong through a plain Unix socket, for comparison.
#[cfg(unix)]
fn socket_round_trip(rounds: usize) -> anyhow::Result<Option<Duration>> {
    use std::io::{Read, Write};
    let dir = private_dir()?;
    let path = dir.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let child = Kid::spawn(me()?.args(["socket-echo", &path.display().to_string()]), &[])?;
    let result = (|| {
        let mut stream = accepted(&listener, &child)?;
        stream.set_read_timeout(Some(CHILD_TIMEOUT))?;
        let mut buf = [7u8; 64];
        median_round_trip(rounds, || {
            stream.write_all(&buf)?;
            stream.read_exact(&mut buf[..8])?;
            Ok(())
        })
    })();
    drop(child);
    drop(dir);
    result.map(Some)
}

#[cfg(not(unix))]
fn socket_round_trip(_rounds: usize) -> anyhow::Result<Option<Duration>> {
    Ok(None)
}

fn fast_step() -> anyhow::Result<String> {
    let receiver = Receiver::start("fast")?;
    let mut sender = copydata::Sender::connect(&receiver.name)?;
    let small = [7u8; 64];
    let rounds = 20_000;
    let rt = median_round_trip(rounds, || {
        let reply = sender.send(TAG_TOUCH, &small)?;
        ensure!(reply.code == 7, "reply code {}", reply.code);
        Ok(())
    })?;
    // A 64 MiB loan: written in place by this process, summed in place by
    // the receiver, no copy in between.
    let len = 64 << 20;
    let mut best = Duration::MAX;
    for round in 0..4u8 {
        let started = Instant::now();
        let mut loan = sender.loan(len)?;
        loan.fill(round);
        let reply = loan.send(TAG_LOAN_SUM)?;
        let took = started.elapsed();
        ensure!(reply.code == i64::from(round) * len as i64, "the receiver summed {} instead", reply.code);
        best = best.min(took);
    }
    let pid = receiver.pid();
    receiver.stop()?;
    let per_s = |d: Duration| 1.0 / d.as_secs_f64();
    let socket = match socket_round_trip(rounds)? {
        Some(s) => {
            let ratio = s.as_secs_f64() / rt.as_secs_f64();
            // Said the right way round whichever wins (a busy machine can
            // slow the spinning hand-off more than the socket's).
            let compared = if ratio >= 1.0 {
                format!("{ratio:.1}x slower than copydata")
            } else {
                format!("{:.1}x faster than copydata", 1.0 / ratio)
            };
            format!("; a plain Unix-socket ping-pong of 64 B: {s:.1?} ({:.0} round trips/s, {compared})", per_s(s))
        }
        None => String::new(),
    };
    Ok(format!(
        "with receiver pid {pid}: 64 B send + reply, median {rt:.1?} ({:.0} round trips/s); a loaned 64 MiB message filled, sent, summed in place by the receiver and answered at {:.1} GB/s{socket}",
        per_s(rt),
        len as f64 / best.as_secs_f64() / 1e9
    ))
}

/// The arguments of simultaneous launch `i`: the kind other libraries lose.
fn launch_args(i: usize) -> Vec<String> {
    [format!("launch-{i}"), "a b".into(), "x|y".into(), String::new(), "q\"uote".into(), "ünï".into()].into()
}

fn instance_step() -> anyhow::Result<String> {
    use copydata::instance::{Answer, InstanceOptions, SingleInstance};
    let me = std::process::id();
    let app = format!("copydata-demo-instance-{me}");
    let SingleInstance::Primary(primary) = SingleInstance::acquire(&app, &InstanceOptions::new())? else {
        bail!("another process is already the primary of {app}");
    };
    // 20 launches at once of `copydata instance APP -- ARGS`.
    let exe = std::env::current_exe().context("locating the copydata executable")?;
    let mut launches = Vec::new();
    for i in 0..20 {
        let child = Kid::spawn(
            Command::new(&exe)
                .args(["instance", &app, "--"])
                .args(launch_args(i))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            &[],
        )
        .with_context(|| format!("starting launch {i}"))?;
        launches.push(child);
    }
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut seen = vec![0u32; 20];
    let mut shown = Vec::new();
    while seen.iter().sum::<u32>() < 20 {
        let left = deadline.checked_duration_since(Instant::now()).context("the launches did not all arrive")?;
        // In slices: the launches killed by an interrupt never arrive.
        let launch = match primary.recv_timeout(left.min(SLICE)) {
            Ok(launch) => launch,
            Err(copydata::RecvError::Timeout) => {
                ensure!(!stopping(), "interrupted");
                continue;
            }
            Err(e) => return Err(e).context("waiting for the launches"),
        };
        let argv: Vec<String> = launch.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let i: usize = argv.first().and_then(|a| a.strip_prefix("launch-")).context("an unknown launch")?.parse()?;
        ensure!(i < 20 && argv == launch_args(i), "launch {i} arrived with {argv:?}");
        seen[i] += 1;
        shown.push(format!("\n      launch {i:>2} from pid {}: {argv:?}", launch.pid()));
        launch.answer(Answer::new(0, format!("handled by {me}")))?;
    }
    for (i, child) in launches.into_iter().enumerate() {
        let (status, out) = output(child, &format!("launch {i}"))?;
        ensure!(status.success(), "launch {i} exited with {status}");
        ensure!(out == format!("handled by {me}\n").as_bytes(), "launch {i} printed {out:?}");
    }
    ensure!(seen.iter().all(|&n| n == 1), "launches arrived {seen:?} times");
    drop(primary);

    // A primary killed, and the next launch elected in its place.
    let app = format!("copydata-demo-succession-{me}");
    let first = InstanceChild::start(&app)?;
    let killed = first.pid();
    let started = Instant::now();
    drop(first); // kill -9 (TerminateProcess on Windows)
    let second = InstanceChild::start(&app)?;
    let elected = started.elapsed();
    let successor = second.pid();
    second.stop(&app)?;
    Ok(format!(
        "primary pid {me} took 20 simultaneous `copydata instance` launches, each exactly once with its argv intact, and each exited with its answer; primary pid {killed} killed, the next launch (pid {successor}) was primary {elected:.1?} later{}",
        shown.concat()
    ))
}

fn shared_step() -> anyhow::Result<String> {
    use copydata::sync::{Mutex, Shared};
    let me = std::process::id();
    let name = format!("copydata-demo-counter-{me}");
    // This process holds the counter; 4 others increment it at once.
    let counter = Shared::<u64>::open_or_create_tagged(&name, crate::cmd::sync::COUNTER_TAG, || 0)?;
    let exe = std::env::current_exe().context("locating the copydata executable")?;
    let started = Instant::now();
    let incrementers = (0..4)
        .map(|_| {
            Kid::spawn(
                Command::new(&exe).args(["shared", "incr", &name, "--times", "10000"]).stdout(Stdio::null()),
                &[],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, child) in incrementers.into_iter().enumerate() {
        wait(child, &format!("incrementer {i}"))?;
    }
    let took = started.elapsed();
    let total = *counter.lock()?;
    ensure!(total == 40_000, "4 x 10,000 increments gave {total}");
    drop(counter);

    // A lock whose owner is killed while holding it.
    let lock = format!("copydata-demo-lock-{me}");
    let mutex = Mutex::open_or_create(&lock)?;
    let holder = Kid::spawn(Command::new(&exe).args(["lock", &lock, "--hold"]).stdout(Stdio::piped()), &[])?;
    let rx = first_line(&holder)?;
    let line = rx.recv_timeout(CHILD_TIMEOUT).unwrap_or_default();
    ensure!(line.trim() == "acquired", "the holder said {line:?}");
    let holder_pid = holder.id();
    let busy = matches!(mutex.try_lock(), Err(copydata::sync::LockError::WouldBlock));
    holder.kill()?; // kill -9 (TerminateProcess on Windows)
    finished(&holder, "the lock holder")?;
    let mut guard = mutex.lock_timeout(CHILD_TIMEOUT)?;
    ensure!(busy, "the lock was free while its owner held it");
    ensure!(guard.owner_died(), "the next locker was not told that the owner died");
    guard.mark_consistent();
    drop(guard);
    ensure!(!mutex.lock()?.owner_died(), "still inconsistent after mark_consistent");
    Ok(format!(
        "4 processes x 10,000 increments of one shared counter = {total} in {took:.1?}; lock holder pid {holder_pid} killed, the next locker got the lock with \"owner died\", marked it consistent"
    ))
}

/// A child that is the primary of an app id; killed if dropped.
struct InstanceChild(Kid);

impl InstanceChild {
    fn start(app: &str) -> anyhow::Result<InstanceChild> {
        let child = Kid::spawn(me()?.args(["instance-primary", app]).stdout(Stdio::piped()), &[])?;
        let rx = first_line(&child)?;
        let pid = child.id();
        let me = InstanceChild(child);
        let line = rx.recv_timeout(CHILD_TIMEOUT).context("the primary did not start")?;
        ensure!(line.trim() == "primary", "pid {pid} said {line:?} instead of becoming primary");
        Ok(me)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Stops it the way a later launch would: with a launch saying "stop".
    fn stop(self, app: &str) -> anyhow::Result<()> {
        use copydata::instance::{InstanceOptions, SingleInstance};
        let options = InstanceOptions::new().args(["--stop"]).timeout(CHILD_TIMEOUT);
        let SingleInstance::Secondary(_) = SingleInstance::acquire(app, &options)? else {
            bail!("the primary was gone before it was told to stop");
        };
        wait(self.0, "the primary")
    }
}

/// The child roles.
pub fn child(args: ChildArgs) -> anyhow::Result<ExitCode> {
    let me = std::process::id();
    match (args.role.as_str(), args.rest.as_slice()) {
        ("inherit-write", []) => {
            let sections = copydata::inherited_sections()?;
            let section = sections.first().context("no section was inherited")?;
            write_text(section, &format!("written by child {me}"))?;
        }
        ("by-name", [name]) => {
            let section = Section::open(name)?;
            let text = read_text(&section, 64)?;
            ensure!(text == "hello from the creator", "read {text:?}");
            write_text(&section, &format!("hello back from {me}"))?;
        }
        ("read-only", []) => {
            let sections = copydata::inherited_sections()?;
            let section = sections.first().context("no section was inherited")?;
            let text = read_text(section, 64)?;
            match section.map_mut(0, 1) {
                Err(MapError::ReadOnly) => {}
                Ok(_) => bail!("a writable view of the read-only hand-out was allowed"),
                Err(e) => bail!("unexpected error: {e}"),
            }
            println!("read {text:?}, a writable view was refused");
        }
        ("file-write", [path, offset]) => {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
            let section = Section::from_file(&file, copydata::Access::ReadWrite)?;
            let text = b"written at an unaligned offset";
            let view = section.map_mut(offset.parse()?, text.len())?;
            view.write_at(0, text)?;
            view.flush()?;
        }
        #[cfg(target_os = "linux")]
        ("handover", [path]) => {
            let stream = std::os::unix::net::UnixStream::connect(path)?;
            stream.set_read_timeout(Some(CHILD_TIMEOUT))?;
            let section = copydata::os::linux::recv_section(&stream)?;
            let text = read_text(&section, 64)?;
            ensure!(text == "handed over by SCM_RIGHTS", "read {text:?}");
            write_text(&section, &format!("received by {me}"))?;
        }
        #[cfg(windows)]
        ("handover", []) => {
            let mut line = String::new();
            BufReader::new(std::io::stdin()).read_line(&mut line)?;
            let mut parts = line.split_whitespace();
            let handle: u64 = parts.next().context("no handle")?.parse()?;
            let len: u64 = parts.next().context("no length")?.parse()?;
            // SAFETY: the parent duplicated this handle into this process for
            // us alone and told us its value; nothing else here owns it.
            let section =
                unsafe { copydata::os::windows::adopt_section(handle, len, copydata::Access::ReadWrite, None) }?;
            let text = read_text(&section, 64)?;
            ensure!(text == "handed over by DuplicateHandle", "read {text:?}");
            write_text(&section, &format!("received by {me}"))?;
        }
        #[cfg(unix)]
        ("socket-echo", [path]) => {
            use std::io::{Read, Write};
            let mut stream = std::os::unix::net::UnixStream::connect(path)?;
            let mut buf = [0u8; 64];
            while stream.read_exact(&mut buf).is_ok() {
                stream.write_all(&buf[..8])?;
            }
        }
        ("mailbox", [name]) => {
            let mailbox = copydata::Mailbox::bind(name)?;
            println!("ready");
            std::io::Write::flush(&mut std::io::stdout())?;
            loop {
                let mut request = mailbox.recv()?;
                let reply = match request.tag() {
                    TAG_DIGEST => copydata::Reply::new(request.payload().len() as i64, sha256(request.payload())),
                    TAG_TOUCH => copydata::Reply::code(i64::from(request.payload().first().copied().unwrap_or(0))),
                    TAG_LOAN_SUM => {
                        let loan = request.loan().context("expected a loaned message")?;
                        let mut sum = 0i64;
                        loan.for_each_chunk(4096, |chunk| {
                            sum += chunk.iter().map(|&b| i64::from(b)).sum::<i64>();
                        });
                        copydata::Reply::code(sum)
                    }
                    TAG_SLOW => {
                        std::thread::sleep(Duration::from_secs(2));
                        copydata::Reply::code(0)
                    }
                    TAG_SECTION => {
                        let sections = request.message_mut().take_sections();
                        let s = sections.first().context("no section came with the message")?;
                        let text = read_text(s, 64)?;
                        write_text(s, &format!("answered in place by {me}"))?;
                        copydata::Reply::new(0, text.into_bytes())
                    }
                    TAG_STOP => {
                        request.reply(copydata::Reply::code(0))?;
                        break;
                    }
                    other => {
                        request.refuse(&format!("unknown tag {other}"));
                        continue;
                    }
                };
                let _ = request.reply(reply);
            }
        }
        ("instance-primary", [app]) => {
            use copydata::instance::{Answer, InstanceOptions, SingleInstance};
            let SingleInstance::Primary(primary) = SingleInstance::acquire(app, &InstanceOptions::new())? else {
                bail!("not the primary");
            };
            println!("primary");
            std::io::Write::flush(&mut std::io::stdout())?;
            for launch in primary.incoming() {
                let stop = launch.args().first().is_some_and(|a| a == "--stop");
                launch.answer(Answer::code(0))?;
                if stop {
                    break;
                }
            }
        }
        (role, rest) => bail!(crate::exit::Usage(format!("unknown demo child role {role:?} {rest:?}"))),
    }
    Ok(ExitCode::SUCCESS)
}
