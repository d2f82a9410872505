//! The bench's child processes and where every process runs.
//!
//! Each child is this executable again (`copydata __bench-child ROLE ...`).
//! A watchdog thread owns each [`Child`]: it kills the child when the row
//! takes longer than [`CHILD_TIMEOUT`], when the [`Proc`] is dropped on an
//! error path, or when the child does not exit soon after being told to, so
//! no child outlives the bench. The children also end themselves when their
//! standard input closes (the bench died) or after [`CHILD_SELF_LIMIT`].

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use copydata::{CommandExt, Section};

/// How long one child may live before the bench kills it.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// A child that still runs this long after it started ends itself.
pub const CHILD_SELF_LIMIT: Duration = Duration::from_secs(90);

/// How long a child has to exit after its standard input closed.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// `copydata __bench-child ROLE`, ready for more arguments.
pub fn child_command(role: &str, cpu: Option<usize>) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("locating the copydata executable")?);
    cmd.args(["__bench-child", role]);
    if let Some(cpu) = cpu {
        cmd.args(["--cpu", &cpu.to_string()]);
    }
    Ok(cmd)
}

/// How a child's standard output is used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// Read line by line (`ready`, results), see [`Proc::line`].
    Lines,
    /// Left to the caller (the pipe baseline's data channel).
    Raw,
}

/// A running child process; killed and reaped if dropped.
pub struct Proc {
    what: String,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    lines: Option<mpsc::Receiver<String>>,
    stderr: Arc<Mutex<(String, bool)>>,
    stop: Option<mpsc::Sender<Duration>>,
    watchdog: Option<JoinHandle<Result<ExitStatus, String>>>,
}

impl Proc {
    /// Spawns `cmd` with `sections` passed by inheritance.
    pub fn start(mut cmd: Command, what: &str, sections: &[&Section], out: Stdout) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = if sections.is_empty() { cmd.spawn() } else { cmd.spawn_with_sections(sections) }
            .with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let err = child.stderr.take();
        let (stop, stop_rx) = mpsc::channel();
        let watchdog = std::thread::Builder::new()
            .name(format!("bench-watchdog-{pid}"))
            .spawn(move || watch(child, stop_rx))
            .context("starting a watchdog thread")?;
        let stderr = Arc::new(Mutex::new((String::new(), false)));
        if let Some(mut err) = err {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.0 = text;
                s.1 = true;
            });
        }
        let mut lines = None;
        if out == Stdout::Lines
            && let Some(out) = stdout.take()
        {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            lines = Some(rx);
        }
        Ok(Proc {
            what: format!("{what} (pid {pid})"),
            stdin,
            stdout,
            lines,
            stderr,
            stop: Some(stop),
            watchdog: Some(watchdog),
        })
    }

    /// The next line the child printed, waiting at most `timeout`.
    pub fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let rx = self.lines.as_ref().context("the child's output is not read by lines")?;
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(self.blame(anyhow!("no answer within {timeout:?}"))),
            Err(RecvTimeoutError::Disconnected) => Err(self.blame(anyhow!("it ended without answering"))),
        }
    }

    /// Waits for the child's `ready` line; returns what follows the word.
    pub fn ready(&mut self) -> anyhow::Result<String> {
        let line = self.line(CHILD_TIMEOUT)?;
        match line.strip_prefix("ready") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(self.blame(anyhow!("it said {line:?} instead of ready"))),
        }
    }

    /// Writes one line to the child's standard input.
    pub fn say(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the child's input is closed")?;
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).with_context(|| format!("writing to {}", self.what))
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// `error`, with what the child printed on stderr (its own error) if it
    /// died.
    pub fn blame(&self, error: anyhow::Error) -> anyhow::Error {
        let deadline = Instant::now() + Duration::from_millis(500);
        let text = loop {
            let s = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
            if s.1 || Instant::now() > deadline {
                break s.0.clone();
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(5));
        };
        let said: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match said.last() {
            Some(last) => error.context(format!("{}: {}", self.what, last)),
            None => error.context(self.what.clone()),
        }
    }

    /// Closes the child's input (its signal to end), waits for it to exit
    /// and checks that it succeeded.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.stdin = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(EXIT_GRACE);
        }
        let end = self.watchdog.take().map(|w| w.join());
        match end {
            Some(Ok(Ok(status))) if status.success() => Ok(()),
            Some(Ok(Ok(status))) => Err(self.blame(anyhow!("exited with {status}"))),
            Some(Ok(Err(why))) => Err(self.blame(anyhow!(why))),
            Some(Err(_)) => bail!("the watchdog of {} panicked", self.what),
            None => Ok(()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        // Dropping the stop channel tells the watchdog to kill at once.
        self.stop = None;
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

/// Owns the child: kills it after [`CHILD_TIMEOUT`], or at once if the
/// [`Proc`] is dropped, or after a grace period once told to finish.
fn watch(mut child: Child, stop: mpsc::Receiver<Duration>) -> Result<ExitStatus, String> {
    let grace = match stop.recv_timeout(CHILD_TIMEOUT) {
        Ok(grace) => grace,
        Err(RecvTimeoutError::Disconnected) => Duration::ZERO,
        Err(RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("killed: still running after {CHILD_TIMEOUT:?}"));
        }
    };
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("killed: did not exit when told to".into());
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for it: {e}"));
            }
        }
    }
}

/// In a child: ends this process after [`CHILD_SELF_LIMIT`], whatever it is
/// doing, so a child never outlives a bench that could not kill it.
pub fn self_limit() {
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_SELF_LIMIT);
        eprintln!("copydata: bench child still running after {CHILD_SELF_LIMIT:?}; ending");
        std::process::exit(crate::exit::TIMED_OUT.into());
    });
}

/// The CPUs the bench puts its processes on.
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    /// The measuring process (and extra senders).
    pub client: Option<usize>,
    /// The server, receiver or peer process.
    pub server: Option<usize>,
}

impl Cpus {
    /// The first two CPUs this process may run on.
    pub fn choose() -> Cpus {
        let allowed = allowed_cpus();
        match allowed.as_slice() {
            [] => Cpus { client: None, server: None },
            [one] => Cpus { client: Some(*one), server: Some(*one) },
            [a, b, ..] => Cpus { client: Some(*a), server: Some(*b) },
        }
    }

    pub fn describe(&self) -> String {
        match (self.client, self.server) {
            (Some(c), Some(s)) if c == s => {
                format!("client cpu {c}, server cpu {s} (only one CPU available; extra senders on cpu {c})")
            }
            (Some(c), Some(s)) => format!("client cpu {c}, server cpu {s} (extra senders on cpu {c})"),
            _ => "processes not pinned (not supported on this platform)".into(),
        }
    }
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(windows)]
fn allowed_cpus() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n.min(usize::BITS as usize)).collect()
}

#[cfg(not(any(target_os = "linux", windows)))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Pins this process to `cpu`. Call before starting threads: on Linux the
/// affinity is the calling thread's, inherited by threads it starts later
/// and by child processes.
#[cfg(target_os = "linux")]
pub fn pin(cpu: usize) -> anyhow::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    anyhow::ensure!(cpu < rustix::thread::CpuSet::MAX_CPU, "no cpu {cpu}");
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).with_context(|| format!("pinning to cpu {cpu}"))
}

/// Pins this process to `cpu`.
#[cfg(windows)]
pub fn pin(cpu: usize) -> anyhow::Result<()> {
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, SetProcessAffinityMask};
    anyhow::ensure!(cpu < usize::BITS as usize, "no cpu {cpu}");
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no
    // closing; SetProcessAffinityMask only reads its two arguments.
    let ok = unsafe { SetProcessAffinityMask(GetCurrentProcess(), 1usize << cpu) };
    if ok == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pinning to cpu {cpu}"));
    }
    Ok(())
}

/// Pinning is not supported here; processes run where the OS puts them.
#[cfg(not(any(target_os = "linux", windows)))]
pub fn pin(_cpu: usize) -> anyhow::Result<()> {
    Ok(())
}
