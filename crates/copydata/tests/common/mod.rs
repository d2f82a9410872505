//! Test harness: real child processes, made by re-running this test binary.
//!
//! A child runs the `child_entry` test with `COPYDATA_TEST_ROLE` set and
//! speaks a line protocol on stdout: lines starting with `@TAG` are for the
//! parent, everything else (the test harness's own output) is ignored. Every
//! wait has a deadline, every child has a watchdog that ends it after
//! `CHILD_LIMIT`, and a `Kid` is killed when dropped, so a bug fails a test
//! instead of hanging it or leaving processes behind.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use copydata::{CommandExt, Section};

const ROLE_VAR: &str = "COPYDATA_TEST_ROLE";
const ARGS_VAR: &str = "COPYDATA_TEST_ARGS";
const SEP: char = '\u{1f}';

/// How long a child may live at most.
pub const CHILD_LIMIT: Duration = Duration::from_secs(90);
/// How long the parent waits for any one line or exit.
pub const WAIT: Duration = Duration::from_secs(60);

/// `len` pseudo-random bytes from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
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

/// A name no other test (or test run) uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("copydata-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The child side: call from the `child_entry` test. Returns at once when
/// this process is not a child.
pub fn child_main(run: fn(&str, &[String]) -> Result<(), String>) {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let args: Vec<String> =
        std::env::var(ARGS_VAR).unwrap_or_default().split(SEP).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_LIMIT);
        eprintln!("child watchdog: giving up after {CHILD_LIMIT:?}");
        std::process::exit(99);
    });
    let code = match run(&role, &args) {
        Ok(()) => 0,
        Err(e) => {
            say("error", &e);
            eprintln!("child {role}: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Sends `@tag rest` to the parent.
pub fn say(tag: &str, rest: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@{tag} {rest}");
    let _ = out.flush();
}

/// Reads one line from the parent (stdin).
pub fn hear() -> String {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("reading stdin");
    line.trim_end().to_string()
}

/// Blocks until the process is killed (the watchdog bounds it).
pub fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// A child process, killed on drop.
pub struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    role: String,
}

/// A command that re-runs this test binary as a child with `role`.
pub fn child_command(role: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE_VAR, role)
        .env(ARGS_VAR, args.join(&SEP.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd
}

impl Kid {
    pub fn spawn(role: &str, args: &[&str]) -> Kid {
        Kid::start(child_command(role, args), role, &[])
    }

    pub fn spawn_with(role: &str, args: &[&str], sections: &[&Section]) -> Kid {
        Kid::start(child_command(role, args), role, sections)
    }

    pub fn start(mut cmd: Command, role: &str, sections: &[&Section]) -> Kid {
        let mut attempt = 0;
        let child = loop {
            let spawned = if sections.is_empty() { cmd.spawn() } else { cmd.spawn_with_sections(sections) };
            match spawned {
                Ok(child) => break child,
                // Wine's CreateProcessW now and then fails with
                // ERROR_INTERNAL_ERROR when many processes start at once; a
                // second attempt succeeds. (Not seen on Linux.)
                Err(e) if cfg!(windows) && e.raw_os_error() == Some(1359) && attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("spawning a child ({role}, {} sections): {e:?}", sections.len()),
            }
        };
        Kid::adopt(child, role)
    }

    /// A child already spawned (with piped stdin and stdout, as
    /// [`child_command`] sets them).
    pub fn adopt(mut child: Child, role: &str) -> Kid {
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with('@') && tx.send(line).is_err() {
                    break;
                }
            }
        });
        Kid { child, stdin, lines: rx, role: role.to_string() }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next `@tag ...` line and returns the rest. Panics on a
    /// different tag, an `@error` line, an exit or the deadline.
    pub fn expect(&mut self, tag: &str) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => {
                let (t, rest) = line[1..].split_once(' ').unwrap_or((&line[1..], ""));
                assert_eq!(t, tag, "child {} said {line:?}, expected @{tag}", self.role);
                rest.to_string()
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("child {} said nothing within {WAIT:?} (expected @{tag})", self.role)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                panic!("child {} ended ({status:?}) before saying @{tag}", self.role)
            }
        }
    }

    /// Like [`expect`](Self::expect), but `None` if no line comes within
    /// `limit` (for "has it gone quiet?" checks).
    pub fn expect_within(&mut self, tag: &str, limit: Duration) -> Option<String> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                let (t, rest) = line[1..].split_once(' ').unwrap_or((&line[1..], ""));
                assert_eq!(t, tag, "child {} said {line:?}, expected @{tag}", self.role);
                Some(rest.to_string())
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                panic!("child {} ended ({status:?}) before saying @{tag}", self.role)
            }
        }
    }

    /// The next `@tag rest` line, whatever its tag (`None` after `limit`).
    /// Panics on an `@error` line or an exit.
    pub fn next_line(&mut self, limit: Duration) -> Option<(String, String)> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                let (t, rest) = line[1..].split_once(' ').unwrap_or((&line[1..], ""));
                assert_ne!(t, "error", "child {} said {line:?}", self.role);
                Some((t.to_string(), rest.to_string()))
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                panic!("child {} ended ({status:?})", self.role)
            }
        }
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a line to the child's stdin.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("writing to child");
        stdin.flush().expect("flushing to child");
    }

    /// Waits (with a deadline) for the exit code.
    pub fn wait(mut self) -> i32 {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(std::time::Instant::now() < deadline, "child {} did not exit within {WAIT:?}", self.role);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a successful exit.
    pub fn wait_ok(self) {
        let role = self.role.clone();
        let code = self.wait();
        assert_eq!(code, 0, "child {role} exited with {code}");
    }

    /// `kill -9` (TerminateProcess on Windows), then reap.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reaping the child");
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stops the process `pid` (SIGSTOP) and waits until every thread of it
/// has stopped (`kill` returns before they do), at most 10 s (Linux only).
#[cfg(target_os = "linux")]
pub fn stop(pid: u32) {
    let raw = i32::try_from(pid).expect("a pid");
    rustix::process::kill_process(rustix::process::Pid::from_raw(raw).expect("a pid"), rustix::process::Signal::STOP)
        .expect("SIGSTOP");
    // A thread's state is the field after the name, which ends with ')'.
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .is_ok_and(|st| st.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')))
            })
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stopped() {
        assert!(std::time::Instant::now() < deadline, "process {pid} did not stop within 10 s of SIGSTOP");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether the object `name` exists in `/dev/shm` (Linux only).
#[cfg(target_os = "linux")]
pub fn in_dev_shm(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

/// After killing the last holders of the named section `name`: waits until
/// the system has finished tearing them down.
///
/// Linux closes a dead process's descriptors before its parent can reap it,
/// so there this returns at once (and must not probe: probing would itself
/// reclaim the name, hiding which path did it). Wine closes a killed
/// process's handles a moment after the process counts as exited; a name
/// that is still there after 5 seconds fails the test.
pub fn settle_after_kill(name: &str) {
    #[cfg(windows)]
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while copydata::Section::open_read_only(name).is_ok() {
            assert!(std::time::Instant::now() < deadline, "{name} still open 5 s after its holders were killed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    #[cfg(not(windows))]
    let _ = name;
}

/// The example `name` (from `examples/`), built by `cargo test` with the
/// tests. `None` when it was not built (a run of one test file alone),
/// unless the test script asks for it (`COPYDATA_REQUIRE_EXAMPLES`).
pub fn example(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.exists() {
        return Some(path);
    }
    assert!(std::env::var_os("COPYDATA_REQUIRE_EXAMPLES").is_none(), "example {name} not built: {}", path.display());
    eprintln!("skipped: example {name} not built (cargo test --workspace builds it)");
    None
}
