//! Runs every example in `examples/` (each a multi-process program) and
//! checks what it prints, so none of them rots. The editor has its own test
//! in `instance.rs`.
//!
//! `cargo test` builds the examples with the tests; run alone (without
//! them) these tests skip, unless `COPYDATA_REQUIRE_EXAMPLES` is set, as
//! scripts/test.sh does.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the example to its end (killed and failed after `common::WAIT`),
/// checks that it succeeded and left no named object behind, and returns
/// its standard output and its process id.
fn run(name: &str) -> Option<(String, u32)> {
    let exe = common::example(name)?;
    let mut child = Command::new(&exe).stdout(Stdio::piped()).spawn().expect("starting the example");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + common::WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the example") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} did not finish within {:?}", common::WAIT);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().expect("the reader thread").expect("reading the example's output");
    assert!(status.success(), "example {name}: {status}; printed:\n{out}");
    assert_nothing_left(pid);
    Some((out, pid))
}

/// The examples name their objects `copydata-example-WHAT-PID`: none may
/// outlive the run.
fn assert_nothing_left(pid: u32) {
    let ours = |n: &str| n.starts_with("copydata-example-") && n.ends_with(&format!("-{pid}"));
    let sections: Vec<_> = copydata::list().unwrap().into_iter().map(|s| s.name).filter(|n| ours(n)).collect();
    assert!(sections.is_empty(), "sections left behind: {sections:?}");
    let mailboxes: Vec<_> = copydata::mailboxes().unwrap().into_iter().map(|m| m.name).filter(|n| ours(n)).collect();
    assert!(mailboxes.is_empty(), "mailboxes left behind: {mailboxes:?}");
    let objects: Vec<_> = copydata::sync::objects().unwrap().into_iter().map(|o| o.name).filter(|n| ours(n)).collect();
    assert!(objects.is_empty(), "shared objects left behind: {objects:?}");
}

#[test]
fn named_section_shares_memory_by_name() {
    let Some((out, _)) = run("named_section") else { return };
    assert_eq!(out, "child: read \"hello, child\"\nparent: read \"hello, parent\"\n");
}

#[test]
fn inherit_passes_a_read_only_and_a_writable_section() {
    let Some((out, _)) = run("inherit") else { return };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("child: COPYDATA_SECTIONS=1;"), "{out}");
    assert_eq!(lines[1], "child: read \"hello, child\"");
    assert_eq!(lines[2], "child: the read-only hand-out refuses to map writable (the section is read-only)");
    assert_eq!(lines[3], "parent: read \"hello, parent\"");
}

#[test]
fn handover_reaches_a_process_that_inherited_nothing() {
    let Some((out, pid)) = run("handover") else { return };
    assert_eq!(out, "receiver: got 4096 bytes: \"handed over!\"\n");
    // Linux: the rendezvous socket is gone too.
    let socket = std::env::temp_dir().join(format!("copydata-example-handover-{pid}.sock"));
    assert!(!socket.exists(), "{} left behind", socket.display());
}

#[test]
fn echo_replies_and_a_slow_reply_times_out() {
    let Some((out, pid)) = run("echo") else { return };
    let timed_out =
        format!("sender: timed out after 200ms waiting for the reply of mailbox \"copydata-example-echo-{pid}\"");
    assert_eq!(out, format!("sender: reply 0 \"hello\"\n{timed_out}\n"));
}

#[test]
fn counter_adds_up_across_processes() {
    let Some((out, _)) = run("counter") else { return };
    assert_eq!(out, "4 processes x 1000 increments = 4000\n");
}

#[test]
fn win32_window_gets_an_answer_from_a_plain_window() {
    let Some((out, _)) = run("win32_window") else { return };
    if cfg!(windows) {
        assert_eq!(out, "reply 1 \"HELLO, WINDOW\"\n");
    } else {
        assert_eq!(out, "win32_window: a plain Win32 window is Windows only\n");
    }
}
