//! The C examples: examples/c/echo.c against a Rust mailbox in both
//! directions, a Rust-created section, a mutex and an event held by Rust
//! and a value Rust shares; examples/c/instance.c, a single-instance
//! program launched by itself and as the CLI launches; and examples/c/inherit.c, which hands
//! sections to a child (itself, or started by Rust).
//!
//! scripts/test.sh compiles them against the library (gcc on Linux, mingw
//! for Windows) and names the programs in `COPYDATA_FFI_C_EXAMPLE`,
//! `COPYDATA_FFI_C_INSTANCE` and `COPYDATA_FFI_C_INHERIT`. Without those
//! variables the tests are skipped, unless `COPYDATA_REQUIRE_EXAMPLES` is
//! set (as the test script does): then a missing program fails them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use copydata::{Access, Mailbox, Reply, Section};

/// How long any one step may take before the test gives up.
const WAIT: Duration = Duration::from_secs(60);

/// The C program named in the environment variable `var`.
fn program(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(path) => {
            assert!(std::path::Path::new(&path).exists(), "{var} names a missing file: {path}");
            Some(path)
        }
        Err(_) => {
            assert!(
                std::env::var_os("COPYDATA_REQUIRE_EXAMPLES").is_none(),
                "{var} is not set: scripts/test.sh builds the C examples and names them there"
            );
            eprintln!("skipped: {var} is not set (scripts/test.sh builds the C examples)");
            None
        }
    }
}

fn example() -> Option<String> {
    program("COPYDATA_FFI_C_EXAMPLE")
}

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("copydata-test-ffi-{tag}-{}-{n}", std::process::id())
}

/// The C program, killed if the test ends before it does.
struct Kid {
    child: Child,
    lines: Receiver<String>,
}

impl Kid {
    fn spawn(exe: &str, args: &[&str]) -> Kid {
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {exe}: {e}"));
        Kid::of(child)
    }

    /// A child started elsewhere, with its standard output piped.
    fn of(mut child: Child) -> Kid {
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line.trim_end().to_owned()).is_err() {
                    break;
                }
            }
        });
        Kid { child, lines }
    }

    fn expect_line(&self, want: &str) {
        let got = self.lines.recv_timeout(WAIT).unwrap_or_else(|e| panic!("waiting for {want:?}: {e}"));
        assert_eq!(got, want);
    }

    fn wait_success(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the C example failed: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the C example did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_c_example_talks_to_a_rust_mailbox_and_shares_a_section() {
    let Some(exe) = example() else { return };
    let name = unique("echo");
    let section_name = format!("{name}-s");

    // Rust's side: a mailbox answering with the length and the bytes in
    // capitals, and a section holding a greeting.
    let (seen_tx, seen) = channel();
    let (sections_tx, sections) = channel();
    let server = Mailbox::bind(&name).unwrap().serve(move |msg| {
        let _ = seen_tx.send((msg.tag(), msg.payload().to_vec(), msg.sender().pid));
        // A section handed over: how it came, and what it says.
        for s in msg.sections() {
            let text = s.map(0, 10).ok().and_then(|v| {
                let mut text = [0u8; 10];
                v.read_at(0, &mut text).ok().map(|()| text)
            });
            let _ = sections_tx.send((s.access(), s.map_mut(0, 10).is_ok(), text));
        }
        Reply::new(msg.payload().len() as i64, msg.payload().to_ascii_uppercase())
    });
    let section = Section::create(&section_name, 4096).unwrap();
    let view = section.map_mut(0, 4096).unwrap();
    view.write_at(0, b"hello from Rust\0").unwrap();

    let mut kid = Kid::spawn(&exe, &[&name, &section_name]);
    kid.expect_line("section says: hello from Rust");
    kid.expect_line("reply 12: HELLO FROM C");
    let (tag, payload, pid) = seen.recv_timeout(WAIT).unwrap();
    assert_eq!((tag, payload.as_slice(), pid), (7, &b"hello from C"[..], kid.child.id()));
    // Then one connection for three calls, a post and a loan, in order;
    // the connection names this process as the receiver.
    kid.expect_line(&format!("sender: connected to pid {}", std::process::id()));
    kid.expect_line("sender: 3 replies, a post, a loan and a section");
    let pattern: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sent = [(11, &b"one"[..]), (12, b"two"), (13, b"three"), (14, b"posted"), (15, &pattern[..]), (16, b"section")];
    for (tag, want) in sent {
        let (got, payload, pid) = seen.recv_timeout(WAIT).unwrap();
        assert_eq!((got, payload.as_slice(), pid), (tag, want, kid.child.id()));
    }
    // The section came read-only: readable, not writable.
    assert_eq!(sections.recv_timeout(WAIT).unwrap(), (Access::ReadOnly, false, Some(*b"made in C\0")));
    assert!(sections.try_recv().is_err(), "one section only");
    let mut back = [0; 18];
    view.read_at(100, &mut back).unwrap();
    assert_eq!(&back, b"hello back from C\0");

    // The C side's mailbox: code = tag, the bytes reversed.
    kid.expect_line("ready");
    let theirs = format!("{name}-c");
    let mut reversed = pattern.clone();
    reversed.reverse();
    for (tag, data) in [(5u64, &b"abc"[..]), (6, b""), (9, &pattern[..])] {
        let reply = copydata::send_timeout(&theirs, tag, data, WAIT).unwrap();
        let mut reversed = data.to_vec();
        reversed.reverse();
        assert_eq!(reply.code, tag as i64);
        // From 64 KiB, C writes its reply in a buffer lent for it.
        assert_eq!(reply.loan().is_some(), data.len() >= 65536, "tag {tag}: a loaned reply or not");
        assert!(reply.data.into_vec() == reversed, "tag {tag}: not the bytes reversed");
    }
    // A loan, which C reads in place.
    let mut sender = copydata::Sender::connect(&theirs).unwrap();
    let mut loan = sender.loan(pattern.len()).unwrap();
    loan.write_at(0, &pattern).unwrap();
    let reply = loan.send_timeout(10, WAIT).unwrap();
    assert_eq!(reply.code, 10);
    assert_eq!(reply.loan().map(|l| l.to_vec()), Some(reversed.clone()), "the loan: a loaned reply, reversed");
    assert!(reply.data.into_vec() == reversed, "the loan: not the bytes reversed");
    drop(sender);
    assert!(copydata::mailboxes().unwrap().iter().any(|m| m.name == theirs && m.pid == kid.child.id()));
    // A mutex held here, and the event that says it was let go.
    let lock = copydata::sync::Mutex::open_or_create(&format!("{name}-lock")).unwrap();
    let go =
        copydata::sync::Event::open_or_create(&format!("{name}-go"), copydata::sync::EventKind::ManualReset).unwrap();
    let held = lock.lock().unwrap();
    // Two numbers C adds to under their lock.
    let stats =
        copydata::sync::Shared::<[u64; 2]>::open_or_create_tagged(&format!("{name}-stats"), "echo-stats", || [41, 0])
            .unwrap();
    let bye = copydata::send_timeout(&theirs, 0, b"bye", WAIT).unwrap();
    assert_eq!((bye.code, bye.data.into_vec()), (0, b"eyb".to_vec()));
    kid.expect_line("lock held elsewhere");
    drop(held);
    go.set().unwrap();
    kid.expect_line("lock taken, owner died 0");
    kid.expect_line("shared 41 -> 42");
    kid.wait_success();
    assert_eq!(*stats.lock().unwrap(), [42, 7]);
    assert!(!copydata::mailboxes().unwrap().iter().any(|m| m.name == theirs), "the C mailbox outlived its program");
    drop(server);
}

/// A later launch of the C single-instance program hands the first its own
/// arguments (read from the OS: spaces and non-ASCII bytes intact) and
/// exits with the first one's answer.
#[test]
fn the_c_instance_example_forwards_its_arguments() {
    let Some(exe) = program("COPYDATA_FFI_C_INSTANCE") else { return };
    let app = unique("inst");
    let primary = Kid::spawn(&exe, &[&app]);
    primary.expect_line("primary");
    let dir = std::env::temp_dir();
    let out = Command::new(&exe)
        .args([&app, "one", "two words", "caf\u{e9}"])
        .current_dir(&dir)
        .env("INSTANCE_THEME", "dark")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "answer 3 ok");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let line = primary.lines.recv_timeout(WAIT).unwrap();
    assert!(line.starts_with("launch pid=") && line.ends_with(" args=one|two words|caf\u{e9}"), "{line}");
    assert!(line.contains(" theme=dark "), "the forwarded environment variable: {line}");
    let cwd = line.split(" cwd=").nth(1).and_then(|r| r.split(" args=").next()).unwrap();
    assert_eq!(
        std::fs::canonicalize(cwd).unwrap(),
        std::fs::canonicalize(&dir).unwrap(),
        "the secondary's working directory"
    );
    let quit =
        Command::new(&exe).args([&app, "quit"]).env_remove("INSTANCE_THEME").stdin(Stdio::null()).output().unwrap();
    assert_eq!(quit.status.code(), Some(0), "{}", String::from_utf8_lossy(&quit.stderr));
    let mut primary = primary;
    let line = primary.lines.recv_timeout(WAIT).unwrap();
    assert!(line.contains(" theme=- "), "not set, not forwarded: {line}");
    primary.wait_success();
}

/// The C primary takes the launches `copydata instance APP -- ARGS` makes:
/// those forward exactly ARGS (the CLI's `InstanceOptions::args`, as
/// here), and the C program's own launches forward exactly the arguments
/// after APP, so both show and count the same arguments, and "quit" as
/// the first one stops the primary.
#[test]
fn the_c_instance_example_takes_the_clis_launches() {
    use copydata::instance::{InstanceOptions, SingleInstance};
    let Some(exe) = program("COPYDATA_FFI_C_INSTANCE") else { return };
    let app = unique("inst-cli");
    let mut primary = Kid::spawn(&exe, &[&app]);
    primary.expect_line("primary");
    // As `copydata instance APP -- ...` launches.
    let cli_launch = |args: &[&str]| {
        let options = InstanceOptions::new().args(args.iter().copied()).timeout(WAIT);
        match SingleInstance::acquire(&app, &options).unwrap() {
            SingleInstance::Secondary(answer) => (answer.code(), String::from_utf8_lossy(answer.data()).into_owned()),
            SingleInstance::Primary(_) => panic!("the C primary is gone"),
        }
    };
    assert_eq!(cli_launch(&["x", "y", "z"]), (3, "ok".to_owned()));
    let line = primary.lines.recv_timeout(WAIT).unwrap();
    assert!(line.starts_with("launch pid=") && line.ends_with(" args=x|y|z"), "{line}");
    // The C program's own launch with the same arguments reads the same.
    let out = Command::new(&exe).args([&app, "x", "y", "z"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "answer 3 ok");
    let line = primary.lines.recv_timeout(WAIT).unwrap();
    assert!(line.ends_with(" args=x|y|z"), "{line}");
    // No arguments at all: nothing shown, code 0, and the primary goes on.
    assert_eq!(cli_launch(&[]), (0, "ok".to_owned()));
    let line = primary.lines.recv_timeout(WAIT).unwrap();
    assert!(line.ends_with(" args="), "{line}");
    assert_eq!(cli_launch(&["quit"]), (0, "ok".to_owned()));
    let line = primary.lines.recv_timeout(WAIT).unwrap();
    assert!(line.ends_with(" args=quit"), "{line}");
    primary.wait_success();
}

#[test]
fn the_c_inherit_example_hands_sections_to_its_child() {
    let Some(exe) = program("COPYDATA_FFI_C_INHERIT") else { return };
    let mut kid = Kid::spawn(&exe, &[]);
    kid.wait_success();
    // The child's own lines go to the same output on Linux; on Windows it
    // inherits only the sections, so only the parent's lines are sure.
    let parent: Vec<String> = kid.lines.try_iter().filter(|l| l.starts_with("parent:")).collect();
    assert_eq!(parent.len(), 3, "{parent:?}");
    assert_eq!(parent[0], "parent: passed 2");
    assert!(parent[1].starts_with("parent: read back written by child "), "{parent:?}");
    assert_eq!(parent[2], "parent: kept only for reading");
}

#[test]
fn a_rust_parent_hands_sections_to_the_c_child() {
    use copydata::CommandExt;
    let Some(exe) = program("COPYDATA_FFI_C_INHERIT") else { return };
    let name = unique("inherit");
    let named = Section::create(&name, 10_000).unwrap();
    let secret = Section::anonymous(4096).unwrap();
    for (s, text) in [(&named, &b"from Rust\0"[..]), (&secret, &b"read only\0"[..])] {
        s.map_mut(0, text.len()).unwrap().write_at(0, text).unwrap();
    }
    let frozen = secret.read_only().unwrap();
    let child = Command::new(&exe)
        .arg("child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn_with_sections(&[&named, &frozen])
        .unwrap();
    let mut kid = Kid::of(child);
    kid.expect_line("child: section 0 10000 rw from Rust");
    kid.expect_line("child: section 1 4096 ro read only");
    kid.wait_success();
    let mut back = [0u8; 30];
    named.map(0, 30).unwrap().read_at(0, &mut back).unwrap();
    let text = String::from_utf8_lossy(&back[..back.iter().position(|&b| b == 0).unwrap()]).into_owned();
    assert_eq!(text, format!("written by child {}", kid.child.id()));
}
