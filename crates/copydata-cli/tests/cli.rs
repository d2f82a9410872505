//! The `copydata` binary, run for real: subcommands, output and exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("copydata-clitest-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn copydata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_copydata"))
}

struct Output {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs copydata with `args`, feeding `stdin`, under a deadline.
fn run_with(args: &[&str], stdin: &[u8]) -> Output {
    run_in(args, stdin, &[])
}

/// [`run_with`] with extra environment variables.
fn run_in(args: &[&str], stdin: &[u8], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut cmd = copydata();
    cmd.envs(env.iter().copied());
    run_command(cmd, args, stdin)
}

/// Runs `cmd` (copydata, its environment set) with `args`, feeding `stdin`,
/// under a deadline.
fn run_command(cmd: Command, args: &[&str], stdin: &[u8]) -> Output {
    run_within(cmd, args, stdin, WAIT)
}

/// [`run_command`] with a deadline of `limit`. Once the command has ended
/// (or been killed at the deadline), its output is collected within
/// [`WAIT`] too: a process it started that still holds its output (as
/// Wine's desktop process, started by the first window of a session, may)
/// fails the test rather than hang it.
fn run_within(mut cmd: Command, args: &[&str], stdin: &[u8], limit: Duration) -> Output {
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut attempt = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            // Wine's CreateProcessW now and then fails with
            // ERROR_INTERNAL_ERROR when many processes start at once; a
            // second attempt succeeds. (Not seen on Linux.)
            Err(e) if cfg!(windows) && e.raw_os_error() == Some(1359) && attempt < 3 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("spawning copydata: {e:?}"),
        }
    };
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let drain = |mut from: Box<dyn Read + Send>| {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = from.read_to_end(&mut v);
            let _ = tx.send(v);
        });
        rx
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let code = wait_within(&mut child, args, limit);
    let _ = writer.join();
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>, what: &str| {
        rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("copydata {args:?} ended (code {code}), but its {what} stayed open: a process it started holds it")
        })
    };
    let stdout = collect(stdout, "standard output");
    let stderr = String::from_utf8_lossy(&collect(stderr, "standard error")).into_owned();
    Output { code, stdout, stderr }
}

fn run(args: &[&str]) -> Output {
    run_with(args, b"")
}

fn wait(child: &mut Child, what: &[&str]) -> i32 {
    wait_within(child, what, WAIT)
}

fn wait_within(child: &mut Child, what: &[&str], limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("copydata {what:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `copydata section create NAME --size SIZE --hold`, killed on drop; the
/// second field is its ready line (`ready NAME SIZE`).
struct Holder(Child, String);

impl Holder {
    fn start(name: &str, size: &str) -> Holder {
        let mut child = copydata()
            .args(["section", "create", name, "--size", size, "--hold"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut holder = Holder(child, String::new());
        let line = rx.recv_timeout(WAIT).expect("no ready line from --hold");
        assert!(line.starts_with("ready "), "ready line: {line:?}");
        holder.1 = line.trim_end().to_owned();
        holder.check_alive();
        holder
    }

    fn check_alive(&mut self) {
        assert!(self.0.try_wait().unwrap().is_none(), "the holder exited");
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

/// Stops a copydata process as a user would: SIGTERM, then waits (Windows
/// has no such signal; there it is killed, and the kernel drops its names
/// with its handles).
fn terminate(child: &mut Child) {
    #[cfg(unix)]
    {
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Holder {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

#[test]
fn demo_shows_every_step_passing() {
    // Twelve steps, each starting processes: about 12 s under Wine on a
    // quiet machine, several times that on a loaded one.
    let out = run_within(copydata(), &["demo"], b"", Duration::from_secs(240));
    assert_eq!(out.code, 0, "{}{}", out.out(), out.stderr);
    let text = out.out();
    for step in [
        "inheritance",
        "open by name",
        "read-only hand-out",
        "unaligned offset",
        "hand-over",
        "messages to a mailbox",
        "timeout against a slow receiver",
        "receiver killed mid-send",
        "section carried inside a message",
        "the fast path",
        "single-instance application",
        "shared state",
    ] {
        assert!(text.lines().any(|l| l.contains(" ok ") && l.contains(step)), "step {step}: {text}");
    }
    assert!(text.contains("all 12 steps passed"), "{text}");
}

#[test]
fn write_read_roundtrip_through_a_held_section() {
    let name = unique("rw");
    let mut holder = Holder::start(&name, "64KiB");
    assert_eq!(run(&["section", "write", &name, "--offset", "100", "hello world"]).code, 0);
    let out = run(&["section", "read", &name, "--offset", "100", "--len", "11"]);
    assert_eq!((out.code, out.stdout.as_slice()), (0, &b"hello world"[..]));

    // From stdin, binary-safe.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    assert_eq!(run_with(&["section", "write", &name, "--offset", "4095", "-"], &bytes).code, 0);
    let out = run(&["section", "read", &name, "--offset", "4095", "--len", "5000"]);
    assert_eq!(out.stdout, bytes);

    // From a file, and to a file.
    let dir = std::env::temp_dir();
    let src = dir.join(format!("{name}.in"));
    let dst = dir.join(format!("{name}.out"));
    std::fs::write(&src, b"file contents").unwrap();
    assert_eq!(run(&["section", "write", &name, "--file", src.to_str().unwrap()]).code, 0);
    let out = run(&["section", "read", &name, "--len", "13", "--out", dst.to_str().unwrap()]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(&dst).unwrap(), b"file contents");
    let _ = std::fs::remove_file(src);
    let _ = std::fs::remove_file(dst);

    // Reading to the end by default.
    let out = run(&["section", "read", &name, "--offset", "65530"]);
    assert_eq!((out.code, out.stdout.len()), (0, 6));
    holder.check_alive();
}

#[test]
fn exit_codes_are_the_documented_ones() {
    let name = unique("codes");
    let _holder = Holder::start(&name, "4096");
    // (arguments, exit code, what stderr must name, whether copydata itself
    // (not the argument parser) reports it in one line)
    let cases: Vec<(Vec<&str>, i32, &str, bool)> = vec![
        (vec![], 2, "", false),
        (vec!["frobnicate"], 2, "frobnicate", false),
        (vec!["section", "create", "x", "--size", "12XB"], 2, "12XB", false),
        (vec!["section", "create", "bad/name", "--size", "1"], 2, "bad/name", true),
        (vec!["section", "create", "x", "--size", "0"], 2, "size", true),
        (vec!["section", "read", "copydata-clitest-none"], 3, "copydata-clitest-none", true),
        (vec!["section", "write", "copydata-clitest-none", "x"], 3, "copydata-clitest-none", true),
        (vec!["section", "create", &name, "--size", "4096"], 6, &name, true),
        (vec!["section", "read", &name, "--offset", "4096", "--len", "1"], 2, &name, true),
        (vec!["section", "write", &name, "--offset", "4090", "too long"], 2, &name, true),
        (vec!["section", "write", &name], 2, "DATA", true),
    ];
    for (args, code, mention, one_line) in cases {
        let out = run(&args);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(mention), "{args:?}: stderr {:?} should name {mention:?}", out.stderr);
        if one_line {
            assert_eq!(out.stderr.lines().count(), 1, "{args:?}: one line: {:?}", out.stderr);
            assert!(out.stderr.starts_with("copydata: "), "{args:?}: {:?}", out.stderr);
        }
    }
    assert_eq!(run(&["--help"]).code, 0);
    assert!(run(&["--help"]).out().contains("Exit codes"));
}

#[test]
fn killed_holder_leaves_nothing_behind() {
    let name = unique("kill");
    let holder = Holder::start(&name, "1MiB");
    assert_eq!(run(&["section", "write", &name, "x"]).code, 0);
    holder.kill();
    // Wine closes a killed process's handles a moment after it counts as
    // exited; Linux before. Either way the name must be gone within seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = run(&["section", "read", &name]);
    while cfg!(windows) && out.code == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        out = run(&["section", "read", &name]);
    }
    assert_eq!(out.code, 3, "{}", out.stderr);
    #[cfg(target_os = "linux")]
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
}

#[cfg(target_os = "linux")]
#[test]
fn terminating_a_holder_releases_the_name_at_once() {
    let name = unique("term");
    let holder = Holder::start(&name, "4096");
    assert!(std::path::Path::new("/dev/shm").join(&name).exists());
    drop(holder); // SIGTERM, then reaped
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists(), "the holder released the name");
}

#[test]
fn create_without_hold_is_gone_when_the_command_ends() {
    let name = unique("nohold");
    let out = run(&["section", "create", &name, "--size", "4096"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("--hold"), "{}", out.stderr);
    assert_eq!(run(&["section", "read", &name]).code, 3);
}

/// A counter or an event made by a command that then ends is gone again
/// with it: the command says so, and what keeps one.
#[test]
fn a_counter_or_event_made_without_a_holder_says_it_goes_again() {
    let ctr = unique("lone-ctr");
    let out = run(&["shared", "incr", &ctr]);
    assert_eq!((out.code, out.out()), (0, "1\n".to_string()), "{}", out.stderr);
    assert!(out.stderr.contains("gone again") && out.stderr.contains("--hold"), "{}", out.stderr);
    assert_eq!(run(&["shared", "get", &ctr]).code, 3);
    let ev = unique("lone-ev");
    let out = run(&["event", &ev, "set"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("gone again"), "{}", out.stderr);
}

#[test]
fn ls_lists_live_sections_and_rm_removes_names() {
    let name = unique("ls");
    let holder = Holder::start(&name, "2MiB");
    let out = run(&["ls", "--json"]);
    assert_eq!(out.code, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls --json prints JSON");
    let entry = doc["sections"].as_array().unwrap().iter().find(|s| s["name"] == name.as_str()).cloned();
    assert_eq!(entry, Some(serde_json::json!({ "name": name, "size": 2 * 1024 * 1024 })));
    assert!(run(&["ls"]).out().lines().any(|l| l.contains(&name) && l.contains("2097152")));

    if cfg!(windows) {
        // A Windows name lives exactly as long as its handles.
        let out = run(&["section", "rm", &name]);
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains("not supported"), "{}", out.stderr);
    } else {
        assert_eq!(run(&["section", "rm", &name]).code, 0);
        assert_eq!(run(&["section", "read", &name]).code, 3);
        assert_eq!(run(&["section", "rm", &name]).code, 3);
    }
    drop(holder);
    let out = run(&["ls", "--json"]);
    assert!(!out.out().contains(&name));
}

#[cfg(target_os = "linux")]
#[test]
fn other_programs_open_named_sections_by_name() {
    let Ok(probe) = Command::new("python3").arg("-c").arg("import multiprocessing.shared_memory").output() else {
        eprintln!("skipped: python3 is not installed");
        return;
    };
    if !probe.status.success() {
        eprintln!("skipped: python3 has no multiprocessing.shared_memory");
        return;
    }
    let name = unique("py");
    let _holder = Holder::start(&name, "4096");
    assert_eq!(run(&["section", "write", &name, "--offset", "10", "from copydata"]).code, 0);
    // Python's resource tracker would unlink the object at exit; unregister.
    let script = format!(
        "from multiprocessing import shared_memory as s, resource_tracker as rt\n\
         m = s.SharedMemory({name:?}); rt.unregister(m._name, 'shared_memory')\n\
         print(bytes(m.buf[10:23]).decode(), m.size)\n\
         m.buf[0:6] = b'python'; m.close()"
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from copydata 4096");
    assert_eq!(run(&["section", "read", &name, "--len", "6"]).stdout, b"python");
}

/// `copydata listen NAME ...`, killed on drop; its stdout lines arrive on a
/// channel.
struct Listener {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    errors: std::sync::mpsc::Receiver<String>,
}

impl Listener {
    fn start(args: &[&str]) -> Listener {
        let listener = Listener::spawn("listen", args);
        let ready = listener.line();
        if args.contains(&"--json") {
            // Every line of a --json listen is JSON, the ready line too.
            let doc: serde_json::Value = serde_json::from_str(&ready).unwrap();
            assert_eq!(doc["ready"].as_str(), Some(args[0]), "{ready}");
        } else {
            assert!(ready.starts_with("ready "), "{ready}");
        }
        listener
    }

    /// Runs `copydata SUBCOMMAND ARGS` and collects its output lines (and
    /// its standard error's).
    fn spawn(subcommand: &str, args: &[&str]) -> Listener {
        let mut child =
            copydata().arg(subcommand).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = |out: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        Listener { child, lines: stdout, errors: stderr }
    }

    /// Waits for a line of standard error that contains `text`.
    fn stderr_until(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.errors.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no line with {text:?} on standard error ({e})"),
            }
        }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("a line from listen")
    }

    fn wait(mut self) -> i32 {
        wait(&mut self.child, &["listen"])
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

#[test]
fn listen_and_send_exchange_messages() {
    let name = unique("mbox");
    let listener = Listener::start(&[&name, "--count", "4", "--echo", "--reply-code", "42"]);
    let out = run(&["send", &name, "--tag", "7", "Hello"]);
    assert_eq!((out.code, out.out()), (0, "code 42\nHello".to_string()), "{}", out.stderr);
    let line = listener.line();
    assert!(line.starts_with("tag=7 size=5 pid=") && line.ends_with("data=\"Hello\""), "{line}");

    // Empty payload.
    let out = run(&["send", &name]);
    assert_eq!((out.code, out.out()), (0, "code 42\n".to_string()));
    assert!(listener.line().contains("size=0"));

    // A large binary payload from stdin, the reply to a file.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let dst = std::env::temp_dir().join(format!("{name}.reply"));
    let out = run_with(&["send", &name, "--out", dst.to_str().unwrap(), "-"], &data);
    assert_eq!((out.code, out.out()), (0, "code 42\n".to_string()), "{}", out.stderr);
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    let _ = std::fs::remove_file(&dst);
    assert!(listener.line().contains("size=300000"));

    // A reply file that cannot be made fails the command before anything is
    // sent (the next line the listener prints is the post below).
    let nowhere = std::env::temp_dir().join(format!("{name}.missing-dir")).join("reply");
    let out = run(&["send", &name, "--out", nowhere.to_str().unwrap(), "lost"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("creating"), "{}", out.stderr);

    // A post, bounded by a timeout: nothing printed.
    let out = run(&["send", &name, "--post", "--timeout", "5s", "--tag", "8", "posted"]);
    assert_eq!((out.code, out.out()), (0, String::new()), "{}", out.stderr);
    let line = listener.line();
    assert!(line.starts_with("tag=8 size=6 ") && line.ends_with("data=\"posted\""), "{line}");
    assert_eq!(listener.wait(), 0, "listen --count 4 exits after four messages");
    assert_eq!(run(&["send", &name, "x"]).code, 3, "nobody listens any more");
}

/// `send --file`: the file's bytes go (a large one read straight into
/// shared memory), by a call and by a post, an empty file as an empty
/// message.
#[test]
fn send_file_sends_the_files_bytes() {
    let name = unique("file");
    let count = if cfg!(target_os = "linux") { "4" } else { "3" };
    let listener = Listener::start(&[&name, "--count", count, "--echo", "--reply-code", "9"]);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let src = std::env::temp_dir().join(format!("{name}.src"));
    let dst = std::env::temp_dir().join(format!("{name}.reply"));
    std::fs::write(&src, &data).unwrap();
    let out =
        run(&["send", &name, "--timeout", "20s", "--out", dst.to_str().unwrap(), "--file", src.to_str().unwrap()]);
    assert_eq!((out.code, out.out()), (0, "code 9\n".to_string()), "{}", out.stderr);
    assert!(std::fs::read(&dst).unwrap() == data, "the echo differs from the file");
    assert!(listener.line().contains("size=3000000"));
    let out = run(&["send", &name, "--post", "--tag", "4", "--file", src.to_str().unwrap()]);
    assert_eq!((out.code, out.out()), (0, String::new()), "{}", out.stderr);
    let line = listener.line();
    assert!(line.starts_with("tag=4 size=3000000 "), "{line}");
    std::fs::write(&src, b"").unwrap();
    let out = run(&["send", &name, "--file", src.to_str().unwrap()]);
    assert_eq!((out.code, out.out()), (0, "code 9\n".to_string()), "{}", out.stderr);
    assert!(listener.line().contains("size=0"));
    // A file that says nothing true of its size is read to its end.
    #[cfg(target_os = "linux")]
    {
        let out = run(&["send", &name, "--file", "/proc/self/cmdline"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let line = listener.line();
        assert!(!line.contains("size=0 ") && line.contains("copydata"), "{line}");
    }
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    assert_eq!(listener.wait(), 0);
}

/// `send --lines`: one message per line of standard input, in order, on
/// one connection (one sender pid), each reply on a line of its own; with
/// `--post`, nothing printed. Line endings (LF or CRLF) are not sent; an
/// empty line is an empty message; a last line without its ending counts.
#[test]
fn send_lines_sends_a_message_per_line() {
    let name = unique("lines");
    let listener = Listener::start(&[&name, "--count", "4", "--echo", "--reply-code", "5"]);
    let out = run_with(&["send", &name, "--lines", "--tag", "3"], b"one\ntwo\r\n\nthree");
    assert_eq!(
        (out.code, out.out()),
        (0, "code 5 one\ncode 5 two\ncode 5\ncode 5 three\n".to_string()),
        "{}",
        out.stderr
    );
    let got: Vec<String> = (0..4).map(|_| listener.line()).collect();
    let pid = |l: &str| l.split(' ').find(|w| w.starts_with("pid=")).map(str::to_owned);
    for (line, data) in got.iter().zip(["\"one\"", "\"two\"", "\"\"", "\"three\""]) {
        assert!(line.starts_with("tag=3 ") && line.ends_with(&format!("data={data}")), "{line}");
        assert_eq!(pid(line), pid(&got[0]), "one sender for every line");
    }
    assert_eq!(listener.wait(), 0);

    let listener = Listener::start(&[&name, "--count", "3"]);
    let out = run_with(&["send", &name, "--lines", "--post"], b"a\nb\nc\n");
    assert_eq!((out.code, out.out()), (0, String::new()), "{}", out.stderr);
    for data in ["a", "b", "c"] {
        let line = listener.line();
        assert!(line.contains(" post ") && line.ends_with(&format!("data=\"{data}\"")), "{line}");
    }
    assert_eq!(listener.wait(), 0);
    // Lines and a payload argument do not go together.
    assert_eq!(run(&["send", &name, "--lines", "x"]).code, 2);
}

/// `listen --max-connections 1`: while a `send --lines` holds the one
/// connection, another `send` ends with exit code 8 (busy), naming the
/// limit; once the first sender leaves, the mailbox takes the next.
#[test]
fn a_sender_beyond_listens_connection_limit_is_told_busy() {
    let name = unique("busy");
    let listener = Listener::start(&[&name, "--max-connections", "1"]);
    let mut holder = copydata()
        .args(["send", &name, "--lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(b"held\n").unwrap();
    stdin.flush().unwrap();
    assert!(listener.line().ends_with("data=\"held\""));
    let out = run(&["send", &name, "x"]);
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(
        out.stderr.contains("busy") && out.stderr.contains("it already has 1 connection, its limit"),
        "{}",
        out.stderr
    );
    drop(stdin);
    assert_eq!(wait(&mut holder, &["send", "--lines"]), 0);
    // Room again once the receiver has seen the holder leave.
    let deadline = Instant::now() + WAIT;
    let mut out = run(&["send", &name, "after"]);
    while out.code == 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        out = run(&["send", &name, "after"]);
    }
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(listener.line().ends_with("data=\"after\""));
    // Zero senders is not a limit.
    assert_eq!(run(&["listen", &name, "--max-connections", "0"]).code, 2);
}

#[test]
fn send_lines_stops_quietly_when_its_output_is_closed() {
    // `copydata send --lines app < input | head -1`: once nobody reads the
    // replies, no further line is sent, and the command ends with 0 and
    // says nothing, as other tools do.
    let name = unique("lines-closed");
    let listener = Listener::start(&[&name, "--count", "1"]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = copydata();
    cmd.args(["send", &name, "--lines"]).stdin(Stdio::piped()).stdout(writer).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"first\nsecond\nthird\n").unwrap();
    let mut stderr = child.stderr.take().unwrap();
    assert_eq!(wait(&mut child, &["send", "--lines"]), 0);
    let mut said = String::new();
    stderr.read_to_string(&mut said).unwrap();
    assert_eq!(said, "");
    // The first line was handled; the listener, which took one message,
    // saw no other before its exit.
    assert!(listener.line().ends_with("data=\"first\""));
    assert_eq!(listener.wait(), 0);
}

#[test]
fn listen_json_reports_each_message() {
    let name = unique("json");
    let listener = Listener::start(&[&name, "--count", "1", "--json"]);
    assert_eq!(run(&["send", &name, "--tag", "9", "abc"]).code, 0);
    let doc: serde_json::Value = serde_json::from_str(&listener.line()).unwrap();
    assert_eq!(doc["tag"], 9);
    assert_eq!(doc["size"], 3);
    assert_eq!(doc["sha256"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(doc["preview"], "abc");
    assert!(doc["pid"].as_u64().unwrap() > 0);
    assert!(doc.get("hex").is_none());
    assert_eq!(listener.wait(), 0);
    // With --hex, the whole payload too, beyond the preview's 64 characters.
    let listener = Listener::start(&[&name, "--count", "1", "--json", "--hex"]);
    let payload = [&[b'x'; 70][..], b"\0\"\xff"].concat();
    assert_eq!(run_with(&["send", &name, "-"], &payload).code, 0);
    let doc: serde_json::Value = serde_json::from_str(&listener.line()).unwrap();
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(doc["hex"], hex.as_str());
    assert!(doc["preview"].as_str().unwrap().ends_with("..."));
    assert_eq!(listener.wait(), 0);
}

#[test]
fn mailbox_exit_codes() {
    let name = unique("mcodes");
    let slow = Listener::start(&[&name, "--delay", "10s"]);
    // Timed out: 4.
    let out = run(&["send", &name, "--timeout", "200ms", "x"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains(&name) && out.stderr.lines().count() == 1, "{}", out.stderr);
    // It says what it waited for: the message went out, and may still be
    // handled.
    assert!(out.stderr.contains("timed out after 200ms waiting for the reply of mailbox"), "{}", out.stderr);
    // Posts to the busy listener: a small one returns at once; so does a
    // large one on Linux, while on Windows (where the listener takes its
    // buffer out of the sending process) it waits for the listener to take
    // it off its queue, here in vain: 4 too, and it says so.
    let out = run(&["send", &name, "--post", "--timeout", "300ms", "y"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let big = std::env::temp_dir().join(format!("{name}.big"));
    std::fs::write(&big, vec![7u8; 100_000]).unwrap();
    let out = run(&["send", &name, "--post", "--timeout", "300ms", "--file", big.to_str().unwrap()]);
    let _ = std::fs::remove_file(&big);
    if cfg!(windows) {
        assert_eq!(out.code, 4, "{}", out.stderr);
        assert!(out.stderr.contains("did not take the post off its queue within 300ms"), "{}", out.stderr);
    } else {
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    // Already bound: 6.
    let out = run(&["listen", &name]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    // Listed by ls while bound.
    let doc: serde_json::Value = serde_json::from_slice(&run(&["ls", "--json"]).stdout).unwrap();
    assert!(doc["mailboxes"].as_array().unwrap().iter().any(|m| m["name"] == name.as_str()));
    drop(slow);
    // No such mailbox: 3; bad name and bad duration: 2.
    assert_eq!(run(&["send", &unique("none"), "x"]).code, 3);
    assert_eq!(run(&["send", "bad/name", "x"]).code, 2);
    assert_eq!(run(&["send", &name, "--timeout", "soon", "x"]).code, 2);
    // Receiver died while handling: 5.
    let name = unique("died");
    let mut dying = Listener::start(&[&name, "--delay", "30s"]);
    let sender = copydata().args(["send", &name, "x"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(dying.line().starts_with("tag=0"), "the message arrived");
    dying.child.kill().unwrap();
    let mut sender = sender;
    assert_eq!(wait(&mut sender, &["send"]), 5);
    // A killed listener's name is neither listed nor left behind.
    let doc: serde_json::Value = serde_json::from_slice(&run(&["ls", "--json"]).stdout).unwrap();
    assert!(!doc["mailboxes"].as_array().unwrap().iter().any(|m| m["name"] == name.as_str()));
}

/// `copydata instance APP -- ARGS` as a later launch: its output and code.
fn launch(app: &str, extra: &[&str], args: &[std::ffi::OsString]) -> Output {
    let mut cmd = copydata();
    cmd.arg("instance").arg(app).args(extra).arg("--").args(args);
    let out = cmd.output().expect("running a launch");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[test]
fn instance_forwards_launches_losslessly_and_exits_with_the_answer() {
    let app = unique("inst");
    let primary = Listener::spawn("instance", &[&app, "--json", "--", "a.txt", "b c"]);
    let ready: serde_json::Value = serde_json::from_str(&primary.line()).unwrap();
    assert_eq!(ready["ready"], app.as_str());
    let pid = ready["pid"].as_u64().unwrap();
    // The primary's own launch comes first, shown as a forwarded one is.
    let own: serde_json::Value = serde_json::from_str(&primary.line()).unwrap();
    assert_eq!(own["argv"], serde_json::json!(["a.txt", "b c"]), "{own}");
    assert_eq!(own["pid"].as_u64(), Some(pid), "{own}");
    assert!(own["cwd"].as_str().is_some_and(|c| !c.is_empty()), "{own}");
    assert_eq!(own["env"], serde_json::json!({}), "{own}");
    assert!(own.get("escaped").is_none(), "{own}");
    // Simultaneous launches with arguments that break other libraries.
    let tricky = |i: usize| -> Vec<std::ffi::OsString> {
        [format!("n{i}"), "a b".into(), "x|y".into(), String::new(), "q\"uote".into(), "ünï".into(), "new\nline".into()]
            .into_iter()
            .map(Into::into)
            .collect()
    };
    let launches: Vec<_> = (0..5)
        .map(|i| {
            let app = app.clone();
            let args = tricky(i);
            std::thread::spawn(move || launch(&app, &[], &args))
        })
        .collect();
    for l in launches {
        let out = l.join().unwrap();
        assert_eq!((out.code, out.out()), (0, format!("handled by {pid}\n")), "{}", out.stderr);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let doc: serde_json::Value = serde_json::from_str(&primary.line()).unwrap();
        let argv: Vec<String> = serde_json::from_value(doc["argv"].clone()).unwrap();
        let i: usize = argv[0][1..].parse().unwrap();
        assert!(seen.insert(i), "launch {i} arrived twice");
        let want: Vec<String> = tricky(i).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(argv, want);
        assert!(doc["cwd"].as_str().is_some_and(|c| !c.is_empty()), "{doc}");
        assert!(doc["pid"].as_u64().unwrap() > 0 && doc["pid"].as_u64() != Some(pid));
        assert_eq!(doc["env"], serde_json::json!({}));
        assert!(doc.get("escaped").is_none(), "{doc}");
    }
    // Only the chosen variables travel.
    let out = copydata()
        .args(["instance", &app, "--forward-env", "CD_FWD", "--", "env"])
        .env("CD_FWD", "chosen")
        .env("CD_OTHER", "secret")
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_str(&primary.line()).unwrap();
    assert_eq!(doc["env"], serde_json::json!({ "CD_FWD": "chosen" }));
    // Non-UTF-8 arguments are escaped losslessly, never replaced.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        let raw = std::ffi::OsString::from_vec(b"\xff\xferaw\\x".to_vec());
        assert_eq!(launch(&app, &[], &["bin".into(), raw]).code, 0);
        let doc: serde_json::Value = serde_json::from_str(&primary.line()).unwrap();
        assert_eq!(doc["argv"][1], "\\xFF\\xFEraw\\\\x");
        assert_eq!(doc["escaped"], serde_json::json!(["argv.1"]));
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStringExt;
        let raw = std::ffi::OsString::from_wide(&[0xD800, u16::from(b'r'), u16::from(b'\\')]);
        assert_eq!(launch(&app, &[], &["bin".into(), raw]).code, 0);
        let doc: serde_json::Value = serde_json::from_str(&primary.line()).unwrap();
        assert_eq!(doc["argv"][1], "\\uD800r\\\\");
        assert_eq!(doc["escaped"], serde_json::json!(["argv.1"]));
    }
    // Usage errors never become a primary.
    assert_eq!(launch("bad/id", &[], &[]).code, 2);
    assert_eq!(launch(&app, &["--timeout", "soon"], &[]).code, 2);
    drop(primary);
    // Terminated, the primary released the id: the next launch is primary.
    let next = Listener::spawn("instance", &[&app]);
    assert_eq!(next.line(), format!("ready {app}"));
    let own = next.line();
    assert!(own.starts_with(&format!("launch pid={} cwd=", next.child.id())) && own.ends_with("argv=[]"), "{own}");
    assert_eq!(launch(&app, &[], &["x y".into()]).code, 0);
    let line = next.line();
    assert!(line.starts_with("launch pid=") && line.ends_with(r#"argv=["x y"]"#), "{line}");
    // In the text line, an escaped string is marked: the byte 0xFF and the
    // four characters `\xFF` look different.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        let raw = std::ffi::OsString::from_vec(b"x\xff".to_vec());
        assert_eq!(launch(&app, &[], &[raw, r"x\xFF".into()]).code, 0);
        let line = next.line();
        assert!(line.ends_with(r#"argv=[b"x\\xFF", "x\\xFF"]"#), "{line}");
        // A variable's name too.
        let key = std::ffi::OsString::from_vec(b"CD_K\xff".to_vec());
        let out = copydata()
            .arg("instance")
            .arg(&app)
            .arg("--forward-env")
            .arg(&key)
            .args(["--", "e"])
            .env(&key, "1")
            .output();
        assert!(out.unwrap().status.success());
        let line = next.line();
        assert!(line.ends_with(r#"argv=["e"] b"CD_K\\xFF"="1""#), "{line}");
    }
    // `--forward-env` takes one variable; the app id may follow it.
    let out = copydata().args(["instance", "--forward-env", "CD_FWD", &app, "--", "after"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(next.line().ends_with(r#"argv=["after"]"#));
}

#[cfg(unix)]
#[test]
fn instance_with_a_stopped_primary_exits_4_after_its_timeout() {
    use rustix::process::{Pid, Signal, kill_process};
    let app = unique("stopped");
    let mut primary = Listener::spawn("instance", &[&app]);
    assert_eq!(primary.line(), format!("ready {app}"));
    let pid = Pid::from_raw(primary.child.id() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    let started = Instant::now();
    let out = launch(&app, &["--timeout", "500ms"], &["hung".into()]);
    let took = started.elapsed();
    kill_process(pid, Signal::CONT).unwrap();
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains(&app) && out.stderr.contains("did not answer"), "{}", out.stderr);
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(10), "{took:?}");
    // Awake again, it takes the next launch (and then the hung one's).
    assert_eq!(launch(&app, &[], &[]).code, 0);
    terminate(&mut primary.child);
}

/// A plain message to the primary's mailbox (not a launch) is shown with
/// its tag and bytes, losslessly. A primary whose output nobody reads any
/// more does not answer a launch as handled: the launch gets exit code 1
/// and the reason, and the next launch becomes primary.
#[cfg(unix)]
#[test]
fn an_instance_primary_shows_plain_messages_and_refuses_launches_it_cannot_show() {
    use std::os::unix::ffi::OsStrExt;
    let app = unique("unread");
    let primary = copydata().args(["instance", &app]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    // Stopped however the test ends.
    struct Stopped(Child);
    impl Drop for Stopped {
        fn drop(&mut self) {
            terminate(&mut self.0);
        }
    }
    let mut primary = Stopped(primary);
    let mut out = BufReader::new(primary.0.stdout.take().unwrap());
    let mut line = || {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        l
    };
    assert_eq!(line(), format!("ready {app}\n"));
    assert!(line().starts_with("launch pid="));
    let mut cmd = copydata();
    cmd.args(["send", &format!("instance.{app}"), "--tag", "5"]).arg(std::ffi::OsStr::from_bytes(b"gar\xffbage"));
    let sent = run_command(cmd, &[], b"");
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    let shown = line();
    assert!(shown.starts_with("message pid=") && shown.ends_with("tag=5 data=b\"gar\\\\xFFbage\"\n"), "{shown}");
    // Nobody reads the primary's output any more.
    drop(out);
    let refused = launch(&app, &[], &["important.txt".into()]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.out().contains("could not show the launch"), "{}", refused.out());
    wait(&mut primary.0, &["instance"]);
    let next = Listener::spawn("instance", &[&app]);
    assert_eq!(next.line(), format!("ready {app}"));
}

/// `send --timeout` is one budget for the whole command: a set-up that took
/// most of it leaves the rest for the reply (each used to get the whole
/// time). Here the receiver is stopped for 400 ms, then takes 400 ms to
/// answer: 800 ms in all, against 600 ms given.
#[cfg(unix)]
#[test]
fn send_timeout_covers_the_set_up_and_the_reply_together() {
    use rustix::process::{Pid, Signal, kill_process};
    let name = unique("budget");
    let listener = Listener::start(&[&name, "--delay", "400ms"]);
    let pid = Pid::from_raw(listener.child.id() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        kill_process(pid, Signal::CONT).unwrap();
    });
    let out = run(&["send", &name, "--timeout", "600ms", "x"]);
    waker.join().unwrap();
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("timed out after 600ms"), "{}", out.stderr);
}

/// `send --post --lines` into a queue that fills up (the receiver is busy
/// with its first message) stops at the line that found no room, and says
/// that the lines before it were posted: "nothing was posted" would have a
/// script post them again.
#[test]
fn send_post_lines_that_time_out_say_how_many_lines_went() {
    let name = unique("lines-full");
    let _listener = Listener::start(&[&name, "--delay", "20s"]);
    let input: String = (0..20_000).map(|i| format!("{i}\n")).collect();
    let out = run_with(&["send", &name, "--post", "--lines", "--timeout", "300ms"], input.as_bytes());
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("was not posted") && out.stderr.contains("lines before it were"), "{}", out.stderr);
    assert!(!out.stderr.contains("nothing was posted"), "{}", out.stderr);
}

/// `send --out` to something other than a regular file (here /dev/null)
/// writes the reply there instead of failing after the message was handled;
/// DATA may hold any bytes (Unix arguments are bytes).
#[cfg(unix)]
#[test]
fn send_writes_replies_to_devices_and_sends_any_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let name = unique("devnull");
    let _listener = Listener::start(&[&name, "--echo"]);
    let out = run(&["send", &name, "--out", "/dev/null", "hello"]);
    assert_eq!((out.code, out.out()), (0, "code 0\n".to_string()), "{}", out.stderr);
    // `--out /dev/stdout` with standard output redirected to a file: the
    // reply follows the code line (it used to empty the file and write
    // over the code line).
    let path = std::env::temp_dir().join(format!("{name}.stdout"));
    let file = std::fs::File::create(&path).unwrap();
    let mut child = copydata().args(["send", &name, "--out", "/dev/stdout", "hello"]).stdout(file).spawn().unwrap();
    assert_eq!(wait(&mut child, &["send", "--out", "/dev/stdout"]), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "code 0\nhello");
    std::fs::remove_file(&path).unwrap();
    let bytes = b"a\xffb\x00c";
    let mut cmd = copydata();
    cmd.args(["send", &name]).arg(std::ffi::OsStr::from_bytes(&bytes[..3]));
    let out = run_command(cmd, &[], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, b"code 0\na\xffb");
}

/// A file larger than the mailbox takes (4 GiB by default) is refused with
/// exit 7 before it is read: here a sparse file of 4 GiB + 1 byte, which
/// would take seconds and 4 GiB of memory to read.
#[test]
fn send_refuses_a_file_too_large_before_reading_it() {
    let name = unique("huge");
    let mut listener = Listener::start(&[&name]);
    let path = std::env::temp_dir().join(format!("{name}.sparse"));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len((4u64 << 30) + 1).unwrap();
    drop(file);
    let started = Instant::now();
    let out = run(&["send", &name, "--timeout", "20s", "--file", path.to_str().unwrap()]);
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(out.stderr.contains("4294967297") && out.stderr.contains("too large"), "{}", out.stderr);
    assert!(took < Duration::from_secs(5), "refused only after {took:?}");
    terminate(&mut listener.child);
}

/// `send --out FILE` to a mailbox that is not there fails with exit 3 and
/// leaves no file behind; a file that was there keeps its contents.
#[test]
fn a_failed_send_leaves_its_out_file_as_it_was() {
    let name = unique("no-out");
    let fresh = std::env::temp_dir().join(format!("{name}.fresh"));
    let out = run(&["send", &name, "--out", fresh.to_str().unwrap(), "x"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(!fresh.exists(), "a failed send left {}", fresh.display());
    let kept = std::env::temp_dir().join(format!("{name}.kept"));
    std::fs::write(&kept, b"before").unwrap();
    let out = run(&["send", &name, "--out", kept.to_str().unwrap(), "x"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(std::fs::read(&kept).unwrap(), b"before", "a failed send changed an existing file");
    let _ = std::fs::remove_file(&kept);
}

/// `send --out FILE` interrupted by Ctrl-C while it waits for the reply
/// removes the file it made and exits 130.
#[cfg(unix)]
#[test]
fn an_interrupted_send_leaves_no_out_file() {
    use rustix::process::{Pid, Signal, kill_process};
    let name = unique("int-out");
    let mut listener = Listener::start(&[&name, "--delay", "30s"]);
    let file = std::env::temp_dir().join(format!("{name}.out"));
    let mut send = copydata().args(["send", &name, "--out", file.to_str().unwrap(), "x"]).spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    // Once the message is being handled, the file has long been made.
    listener.line();
    assert!(file.exists());
    kill_process(Pid::from_raw(send.id() as i32).unwrap(), Signal::INT).unwrap();
    let status = loop {
        if let Some(status) = send.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "send did not end after Ctrl-C");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130));
    assert!(!file.exists(), "an interrupted send left {}", file.display());
    terminate(&mut listener.child);
}

/// A post to a stopped receiver gives up after its timeout with exit 4 and
/// says what it waited for (no reply is awaited by a post): the set-up,
/// so nothing was posted.
#[cfg(unix)]
#[test]
fn a_post_to_a_stopped_receiver_times_out() {
    use rustix::process::{Pid, Signal, kill_process};
    let name = unique("stopped-rx");
    let mut listener = Listener::start(&[&name]);
    let pid = Pid::from_raw(listener.child.id() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    let started = Instant::now();
    let out = run(&["send", &name, "--post", "--timeout", "300ms", "x"]);
    let took = started.elapsed();
    kill_process(pid, Signal::CONT).unwrap();
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains(&name) && out.stderr.contains("did not take the post within 300ms"), "{}", out.stderr);
    assert!(out.stderr.contains("(timed out connecting to it; nothing was posted)"), "{}", out.stderr);
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "{took:?}");
    terminate(&mut listener.child);
}

/// A listener stopped (SIGTERM) while it holds a message in `--delay`
/// stops at once, not after the delay; the message is refused to its
/// sender (exit 7), which is not left waiting.
#[cfg(unix)]
#[test]
fn a_listener_stopped_during_its_delay_stops_at_once() {
    let name = unique("delay-stop");
    let mut listener = Listener::start(&[&name, "--delay", "60s"]);
    let mut sender =
        copydata().args(["send", &name, "held"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(listener.line().contains("data=\"held\""));
    let pid = rustix::process::Pid::from_raw(listener.child.id() as i32).unwrap();
    let started = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let code = wait(&mut listener.child, &["listen"]);
    assert!(started.elapsed() < Duration::from_secs(10), "stopped after {:?}", started.elapsed());
    assert_eq!(code, 0);
    assert_eq!(wait(&mut sender, &["send"]), 7, "the held message is refused");
}

#[test]
fn shared_lock_and_event_from_the_shell() {
    // A counter: incremented by several processes, read by another.
    let ctr = unique("ctr");
    let mut holder = Listener::spawn("shared", &["incr", &ctr, "--times", "0", "--hold"]);
    assert_eq!(holder.line(), "0");
    let incs: Vec<_> = (0..3)
        .map(|_| {
            let ctr = ctr.clone();
            std::thread::spawn(move || run(&["shared", "incr", &ctr, "--times", "500"]).code)
        })
        .collect();
    for i in incs {
        assert_eq!(i.join().unwrap(), 0);
    }
    // A counter someone holds stays: no word of it going.
    let out = run(&["shared", "incr", &ctr, "--times", "0"]);
    assert!(!out.stderr.contains("gone again"), "{}", out.stderr);
    assert_eq!(run(&["shared", "get", &ctr]).out(), "1500\n");
    let doc: serde_json::Value = serde_json::from_slice(&run(&["ls", "--json"]).stdout).unwrap();
    assert!(doc["objects"].as_array().unwrap().iter().any(|o| o["name"] == ctr.as_str() && o["kind"] == "shared"));
    terminate(&mut holder.child);
    assert_eq!(run(&["shared", "get", &ctr]).code, 3, "nobody holds it any more");

    // A lock: held, timed out (4), owner died, marked consistent.
    let lock = unique("lock");
    let mut owner = Listener::spawn("lock", &[&lock, "--hold"]);
    assert_eq!(owner.line(), "acquired");
    let started = Instant::now();
    let out = run(&["lock", &lock, "--timeout", "300ms"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("lock {lock:?}")), "the error names the lock: {}", out.stderr);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The owner dies only once the waiter has the lock open (on Windows a
    // mutex nobody has open any more is gone, with its "owner died" state).
    let waiter = Listener::spawn("lock", &[&lock, "--timeout", "30s", "--hold", "-v"]);
    waiter.stderr_until("waiting for it");
    owner.child.kill().unwrap();
    owner.child.wait().unwrap();
    assert_eq!(waiter.line(), "acquired (previous owner died)");
    drop(waiter);
    assert_eq!(run(&["lock", "bad/name"]).code, 2);

    // An event: a waiter in one process, set from another; timeouts exit 4.
    let ev = unique("ev");
    let waiting = Listener::spawn("event", &[&ev, "wait", "--timeout", "30s", "-v"]);
    waiting.stderr_until("waiting for it");
    assert_eq!(run(&["event", &ev, "set"]).code, 0);
    assert_eq!(waiting.line(), "set");
    let started = Instant::now();
    let ev2 = unique("ev2");
    let out = run(&["event", &ev2, "wait", "--timeout", "300ms"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("event {ev2:?}")), "the error names the event: {}", out.stderr);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A lock, event or shared command interrupted (Ctrl-C or SIGTERM) while
/// it waits or counts lets go of its object, which goes with its last
/// holder, and exits 130.
#[cfg(target_os = "linux")]
#[test]
fn interrupted_sync_commands_leave_nothing_behind() {
    use rustix::process::{Pid, Signal, kill_process};
    let shm = |kind: &str, name: &str| std::path::Path::new("/dev/shm").join(format!("copydata.{kind}.{name}"));
    let interrupt = |mut waiter: Listener, signal: Signal| {
        kill_process(Pid::from_raw(waiter.child.id() as i32).unwrap(), signal).unwrap();
        wait(&mut waiter.child, &["interrupted"])
    };
    for signal in [Signal::INT, Signal::TERM] {
        // An event nobody sets.
        let ev = unique("int-ev");
        let waiter = Listener::spawn("event", &[&ev, "wait", "-v"]);
        waiter.stderr_until("waiting for it");
        assert!(shm("event", &ev).exists());
        assert_eq!(interrupt(waiter, signal), 130, "event wait, {signal:?}");
        assert!(!shm("event", &ev).exists(), "an interrupted event wait left its event ({signal:?})");

        // A lock another process holds: the waiter lets go of it; the
        // holder still has it.
        let lock = unique("int-lock");
        let owner = Listener::spawn("lock", &[&lock, "--hold"]);
        assert_eq!(owner.line(), "acquired");
        let waiter = Listener::spawn("lock", &[&lock, "-v"]);
        waiter.stderr_until("waiting for it");
        assert_eq!(interrupt(waiter, signal), 130, "lock, {signal:?}");
        assert_eq!(run(&["lock", &lock, "--timeout", "0s"]).code, 4, "the owner still holds the lock");
        drop(owner);
        assert!(!shm("mutex", &lock).exists(), "an interrupted lock left its mutex ({signal:?})");

        // A count that would take days.
        let ctr = unique("int-ctr");
        let counter = Listener::spawn("shared", &["incr", &ctr, "--times", "100000000000", "-v"]);
        counter.stderr_until("incrementing it");
        assert!(shm("shared", &ctr).exists());
        assert_eq!(interrupt(counter, signal), 130, "shared incr, {signal:?}");
        assert!(!shm("shared", &ctr).exists(), "an interrupted shared incr left its value ({signal:?})");
    }
}

/// `copydata demo` run with a runtime directory of its own and a marker in
/// its environment (inherited by its children, so that they can be found);
/// killed, with whatever carries the marker, if the test fails half-way.
#[cfg(target_os = "linux")]
struct Demo {
    child: Child,
    pid: u32,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    dir: std::path::PathBuf,
    mark: String,
}

#[cfg(target_os = "linux")]
impl Demo {
    const MARK: &str = "COPYDATA_TEST_DEMO_MARK";

    fn start(args: &[&str]) -> Demo {
        let dir = private_runtime("demo-rt");
        let mark = unique("demo-mark");
        let mut child = copydata()
            .arg("demo")
            .args(args)
            .env("XDG_RUNTIME_DIR", &dir)
            .env_remove("COPYDATA_RUNTIME_DIR")
            .env(Demo::MARK, &mark)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, stderr) = channel();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = err.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
        Demo { pid: child.id(), child, lines, stderr: Some(stderr), dir, mark }
    }

    /// Waits until step 7 runs: sections, messages and a killed receiver
    /// are behind it, and its receiver is bound and busy with its slow
    /// message.
    fn wait_for_step_7(&self) {
        self.line_starting("[6/12] ok");
        let deadline = Instant::now() + WAIT;
        while !self.runtime_files().iter().any(|f| f.ends_with(".mailbox")) {
            assert!(Instant::now() < deadline, "step 7 bound no mailbox");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a line of standard output that starts with `start`.
    fn line_starting(&self, start: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(start) => return,
                Ok(_) => {}
                Err(e) => panic!("the demo printed no line starting with {start:?} ({e})"),
            }
        }
    }

    /// The mailbox files in its runtime directory.
    fn runtime_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.dir.join("copydata")) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The objects in /dev/shm named after the demo (its names end in its pid
    /// or in its pid and a number).
    fn shm_objects(&self) -> Vec<String> {
        let pid = format!("-{}", self.pid);
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("copydata-demo-") && (n.ends_with(&pid) || n.contains(&format!("{pid}-"))))
            .collect()
    }

    /// The live processes with the demo's marker in their environment: the
    /// demo and its children (zombies have no environment left).
    fn marked(&self) -> Vec<u32> {
        let needle = format!("{}={}\0", Demo::MARK, self.mark);
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
            })
            .collect()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Its exit code (under the deadline) and standard error.
    fn end(&mut self) -> (i32, String) {
        let code = wait(&mut self.child, &["demo"]);
        let stderr = self.stderr.take().unwrap().recv_timeout(WAIT).expect("the demo's standard error stayed open");
        (code, String::from_utf8_lossy(&stderr).into_owned())
    }

    /// Checks that no process of the demo is left, that nothing of it is
    /// in its runtime directory or in /dev/shm, and removes the directory.
    fn check_nothing_left(&self, what: &str) {
        let left = self.marked();
        assert!(left.is_empty(), "{what}: processes of the demo are left: {left:?}");
        assert_eq!(self.runtime_files(), Vec::<String>::new(), "{what}: left in the runtime directory");
        assert_eq!(self.shm_objects(), Vec::<String>::new(), "{what}: left in /dev/shm");
    }
}

#[cfg(target_os = "linux")]
impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.marked() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        // What a killed demo leaves, `ls` removes.
        let _ = copydata().arg("ls").env("XDG_RUNTIME_DIR", &self.dir).env_remove("COPYDATA_RUNTIME_DIR").output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `copydata demo` interrupted part-way (Ctrl-C, SIGTERM) stops its
/// children, removes every mailbox and named object it made, says so and
/// exits 130.
#[cfg(target_os = "linux")]
#[test]
fn an_interrupted_demo_leaves_nothing_behind() {
    use rustix::process::Signal;
    let mut demo = Demo::start(&[]);
    demo.wait_for_step_7();
    assert!(demo.marked().len() > 1, "the demo has no child running");
    demo.signal(Signal::INT);
    let (code, stderr) = demo.end();
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("demo interrupted during step 7"), "{stderr}");
    demo.check_nothing_left("Ctrl-C in step 7");

    // Step 12 holds a shared counter and a lock in /dev/shm for some
    // milliseconds, while its children use them: SIGTERM as soon as one is
    // there (tried again if the step was over first).
    let mut caught = false;
    for _ in 0..20 {
        let mut demo = Demo::start(&["--step", "12"]);
        let deadline = Instant::now() + WAIT;
        let seen = loop {
            if !demo.shm_objects().is_empty() {
                break true;
            }
            if demo.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        if !seen {
            let (code, stderr) = demo.end();
            assert_eq!(code, 0, "{stderr}");
            continue;
        }
        demo.signal(Signal::TERM);
        let (code, stderr) = demo.end();
        assert!(code == 130 || code == 0, "exit {code}: {stderr}");
        demo.check_nothing_left("SIGTERM in step 12");
        if code == 130 {
            assert!(stderr.contains("demo interrupted during step 12"), "{stderr}");
            caught = true;
            break;
        }
    }
    assert!(caught, "step 12 was always over before it could be interrupted");
}

/// The children of a demo killed outright (SIGKILL) die with it.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_demos_children_die_with_it() {
    let mut demo = Demo::start(&[]);
    demo.wait_for_step_7();
    let children: Vec<u32> = demo.marked().into_iter().filter(|&p| p != demo.pid).collect();
    assert!(!children.is_empty(), "the demo has no child running");
    demo.signal(rustix::process::Signal::KILL);
    assert_eq!(demo.end().0, -1, "the demo was not killed");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = demo.marked();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the killed demo's children {left:?} still run");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Issue: the demo wrote `/tmp/copydata-demo-PID.bin` with a plain create
/// that followed a symlink planted there. Symlinks are planted for the pids
/// the demo is likely to get; the file they point at must stay untouched.
#[cfg(target_os = "linux")]
#[test]
fn demo_never_follows_a_symlink_planted_in_tmp() {
    let tmp = std::env::temp_dir().join(unique("tmpdir"));
    std::fs::create_dir_all(&tmp).unwrap();
    let victim = tmp.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let mut probe = Command::new("true").spawn().unwrap();
    let next = probe.id();
    probe.wait().unwrap();
    for pid in next + 1..next + 400 {
        std::os::unix::fs::symlink(&victim, tmp.join(format!("copydata-demo-{pid}.bin"))).unwrap();
    }
    let out = copydata().args(["demo", "--step", "4"]).env("TMPDIR", &tmp).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("[4/12] ok"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the demo wrote through a planted symlink");
    // Its private directory is gone again.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".bin") && n != "victim")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Runs copydata with `args` and extra environment, under the deadline;
/// also says how long it took.
#[cfg(target_os = "linux")]
fn run_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> (Output, Duration) {
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let started = Instant::now();
    let out = run_in(args, b"", &env);
    (out, started.elapsed())
}

/// A private runtime directory for one test (mode 0700), removed by the test.
#[cfg(target_os = "linux")]
fn private_runtime(tag: &str) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(unique(tag));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    dir
}

/// Issue: a FIFO planted in the runtime directory under a mailbox's file
/// name made `ls` and `send --timeout 1s` block for ever.
#[cfg(target_os = "linux")]
#[test]
fn a_fifo_in_the_runtime_directory_blocks_nothing() {
    let dir = private_runtime("fifo-rt");
    let name = unique("fifo");
    let fifo = dir.join(format!("{name}.mailbox"));
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let env = [("COPYDATA_RUNTIME_DIR", dir.as_path())];
    let (out, took) = run_env(&["ls"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(took < Duration::from_secs(10), "ls took {took:?}");
    let (out, took) = run_env(&["send", &name, "--timeout", "1s", "x"], &env);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(took < Duration::from_secs(10), "send --timeout 1s took {took:?}");
    let (out, took) = run_env(&["listen", &name], &env);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not a copydata mailbox file"), "{}", out.stderr);
    assert!(took < Duration::from_secs(10), "listen took {took:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ls` with a runtime directory it cannot use lists the other kinds, says
/// on stderr that listing mailboxes failed (not sections), and exits 1.
#[cfg(target_os = "linux")]
#[test]
fn ls_lists_what_it_can_and_names_the_listing_that_failed() {
    let name = unique("ls-part");
    let _holder = Holder::start(&name, "4096");
    let missing = std::env::temp_dir().join(unique("no-rt")).join("runtime");
    let env = [("COPYDATA_RUNTIME_DIR", missing.as_path())];
    for json in [false, true] {
        let args: &[&str] = if json { &["ls", "--json"] } else { &["ls"] };
        let (out, _) = run_env(args, &env);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(out.out().contains(&name), "{args:?}: the section is listed: {}", out.out());
        assert!(out.stderr.contains("listing mailboxes failed"), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(missing.to_str().unwrap()), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("listing sections"), "{args:?}: {}", out.stderr);
        if json {
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls --json prints JSON");
            assert_eq!(doc["mailboxes"], serde_json::json!([]));
        }
    }
    assert!(!missing.exists());
}

/// Issue: another user creating the runtime directory first (it is a
/// predictable name in /tmp without XDG_RUNTIME_DIR) disabled every
/// mailbox with an unclear error. Needs root (to hand the directory to
/// `nobody`).
#[cfg(target_os = "linux")]
#[test]
fn a_runtime_directory_of_another_user_is_refused_with_the_way_out() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to give a directory to another user");
        return;
    }
    let dir = private_runtime("squat-rt");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let env = [("COPYDATA_RUNTIME_DIR", dir.as_path())];
    for args in [&["listen", "x"][..], &["send", "x", "--timeout", "1s", "y"][..]] {
        let (out, _) = run_env(args, &env);
        assert_eq!(out.code, 7, "{args:?}: {}", out.stderr);
        for part in [dir.to_str().unwrap(), "owned by uid 65534", "COPYDATA_RUNTIME_DIR"] {
            assert!(out.stderr.contains(part), "{args:?}: {part:?} missing from {}", out.stderr);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue: `copydata section read NAME` printed another user's planted data
/// with exit 0. Now: refused (7) unless asked for. Needs root (to plant the
/// object as `nobody`).
#[cfg(target_os = "linux")]
#[test]
fn another_users_section_is_refused_by_the_cli() {
    use std::os::unix::process::CommandExt as _;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let name = unique("squat");
    let path = format!("/dev/shm/{name}");
    let planted = Command::new("sh")
        .arg("-c")
        .arg(format!("printf ATTACKERDATA > {path} && chmod 666 {path}"))
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(planted.success());
    let out = run(&["section", "read", &name]);
    assert_eq!(out.code, 7, "{}{}", out.out(), out.stderr);
    assert!(out.stdout.is_empty() && out.stderr.contains("owned by uid 65534"), "{}", out.stderr);
    assert_eq!(run(&["section", "write", &name, "mine"]).code, 7);
    let out = run(&["section", "read", &name, "--allow-other-owner"]);
    assert_eq!((out.code, out.stdout), (0, b"ATTACKERDATA".to_vec()));
    std::fs::remove_file(&path).unwrap();
}

/// Mailboxes serve their own user unless told otherwise: `listen
/// --allow-uid` lets another user in, who sends with `--owner`; users not
/// named are refused. Needs root (to send as `nobody`).
#[cfg(target_os = "linux")]
#[test]
fn another_user_sends_only_when_allowed() {
    use std::os::unix::process::CommandExt as _;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let me = rustix::process::getuid().as_raw().to_string();
    let as_nobody = |args: &[&str]| {
        let out = copydata()
            .args(args)
            .env("COPYDATA_RUNTIME_DIR", std::env::temp_dir().join(unique("nobody-rt")))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let name = unique("invited");
    let listener = Listener::start(&[&name, "--allow-uid", "65534", "--count", "1", "--echo"]);
    let (code, out, err) = as_nobody(&["send", &name, "--owner", &me, "--timeout", "10s", "from nobody"]);
    assert_eq!((code, out.as_str()), (0, "code 0\nfrom nobody"), "{err}");
    assert!(listener.line().contains("uid=65534"));
    assert_eq!(listener.wait(), 0);
    // Not allowed: refused (7).
    let name = unique("not-invited");
    let _other = Listener::start(&[&name, "--allow-uid", "12345"]);
    let (code, _, err) = as_nobody(&["send", &name, "--owner", &me, "--timeout", "10s", "x"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("does not accept uid 65534"), "{err}");
    // No opt-in at all: there is no way in (no such mailbox, 3).
    let name = unique("private");
    let _private = Listener::start(&[&name]);
    let (code, _, err) = as_nobody(&["send", &name, "--owner", &me, "--timeout", "10s", "x"]);
    assert_eq!(code, 3, "{err}");
}

/// A copydata process stopped (SIGTERM, then reaped) when the test ends,
/// even one that fails half-way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Runs copydata with `args` with RUST_LOG set to `rust_log` (or unset),
/// so a RUST_LOG in the test's own environment changes nothing.
fn run_logged(args: &[&str], rust_log: Option<&str>) -> Output {
    let mut cmd = copydata();
    match rust_log {
        Some(filter) => cmd.env("RUST_LOG", filter),
        None => cmd.env_remove("RUST_LOG"),
    };
    run_command(cmd, args, b"")
}

#[test]
fn help_opens_with_what_the_tool_does() {
    for flag in ["--help", "-h"] {
        let out = run(&[flag]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let text = out.out();
        let first = text.lines().next().unwrap_or_default();
        assert!(first.contains("process") || first.contains("IPC"), "{flag}: first line {first:?}");
        assert!(first.contains("messages") && first.contains("shared memory"), "{flag}: first line {first:?}");
        assert!(!first.contains("command-line tool"), "{flag}: the package description, not what it does");
        assert!(text.contains("Exit codes"), "{flag}: {text}");
        for flag_doc in ["-v, --verbose", "-q, --quiet"] {
            assert!(text.contains(flag_doc), "{flag}: {flag_doc} missing: {text}");
        }
    }
    // The long help explains units, diagnostics, completions and the manual.
    let text = run(&["--help"]).out();
    for part in ["kB", "KiB", "powers of 1000", "powers of 1024", "RUST_LOG", "-vv", "completions", "man"] {
        assert!(text.contains(part), "--help should mention {part:?}: {text}");
    }
    // Every size option says which units it takes.
    let text = run(&["section", "create", "--help"]).out();
    assert!(text.contains("1kB (1000)") && text.contains("64k (65536)"), "{text}");
    let text = run(&["section", "read", "--help"]).out();
    assert!(text.contains("4KiB is 4096, 4kB 4000"), "{text}");
}

#[test]
fn sizes_take_decimal_and_binary_units() {
    // (size, bytes): kB, MB are powers of 1000; KiB and a bare k powers of 1024.
    for (size, bytes) in [("1kB", 1000), ("1KB", 1000), ("1KiB", 1024), ("1k", 1024), ("2K", 2048), ("1MB", 1_000_000)]
    {
        let name = unique("units");
        let holder = Holder::start(&name, size);
        assert_eq!(holder.1, format!("ready {name} {bytes}"), "--size {size}");
        #[cfg(target_os = "linux")]
        {
            let doc: serde_json::Value = serde_json::from_slice(&run(&["ls", "--json"]).stdout).unwrap();
            let entry = doc["sections"].as_array().unwrap().iter().find(|s| s["name"] == name.as_str()).cloned();
            assert_eq!(entry, Some(serde_json::json!({ "name": name, "size": bytes })), "--size {size}");
            assert_eq!(run(&["section", "read", &name]).stdout.len(), bytes, "--size {size}");
        }
    }
    // Offsets and lengths take the same units.
    let name = unique("units-rw");
    let _holder = Holder::start(&name, "4KiB");
    assert_eq!(run(&["section", "write", &name, "--offset", "1kB", "at 1000"]).code, 0);
    let out = run(&["section", "read", &name, "--offset", "1000", "--len", "7"]);
    assert_eq!((out.code, out.stdout.as_slice()), (0, &b"at 1000"[..]));
    let out = run(&["section", "read", &name, "--offset", "1k", "--len", "2KiB"]);
    assert_eq!((out.code, out.stdout.len()), (0, 2048));

    // Unknown units: exit 2, naming the unit and the accepted ones.
    let out = run(&["section", "create", &unique("units-bad"), "--size", "4XB"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for part in ["\"XB\"", "kB", "MB", "GB", "KiB", "MiB", "GiB", "bare k, m, g"] {
        assert!(out.stderr.contains(part), "{part:?} missing from {}", out.stderr);
    }
    // Too large for 64 bits: an error, not a panic.
    for size in ["99999999999999999999", "99999999999TiB", "18446744073709552kB"] {
        let out = run(&["section", "create", &unique("units-big"), "--size", size]);
        assert_eq!(out.code, 2, "{size}: {}", out.stderr);
        assert!(out.stderr.contains("too large") && !out.stderr.contains("panicked"), "{size}: {}", out.stderr);
    }
    let out = run(&["section", "read", &name, "--offset", "1.5k"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not a size"), "{}", out.stderr);
}

#[test]
fn listen_prints_utf8_payloads_as_text() {
    let name = unique("text");
    let listener = Listener::start(&[&name, "--count", "5"]);
    let data = |line: String| line.split_once(" data=").map(|(_, d)| d.to_owned()).unwrap_or(line);
    assert_eq!(run(&["send", &name, "café"]).code, 0);
    assert_eq!(data(listener.line()), "\"café\"");
    assert_eq!(run(&["send", &name, "日本語 ✓"]).code, 0);
    assert_eq!(data(listener.line()), "\"日本語 ✓\"");
    // Control characters, quotes and backslashes are escaped.
    assert_eq!(run_with(&["send", &name, "-"], b"a\tb\n\x1b[31m \"q\" \\").code, 0);
    assert_eq!(data(listener.line()), r#""a\tb\n\x1b[31m \"q\" \\""#);
    // Invalid UTF-8: each bad byte as \xNN, valid text around it kept.
    assert_eq!(run_with(&["send", &name, "-"], b"ok\xff\xfe caf\xc3\xa9").code, 0);
    assert_eq!(data(listener.line()), r#""ok\xff\xfe café""#);
    // A long payload: the first 64 characters, never half a character.
    let long = "é".repeat(100);
    assert_eq!(run(&["send", &name, &long]).code, 0);
    let line = listener.line();
    assert!(line.contains("size=200"), "{line}");
    assert_eq!(data(line), format!("\"{}...\"", "é".repeat(64)));
    assert_eq!(listener.wait(), 0);

    // --hex: every byte of the payload.
    let name = unique("hex");
    let listener = Listener::start(&[&name, "--count", "1", "--hex"]);
    assert_eq!(run_with(&["send", &name, "-"], b"Hi\x00\xff").code, 0);
    let line = listener.line();
    assert!(line.starts_with("tag=0 size=4 ") && line.ends_with(" data=486900ff"), "{line}");
    assert_eq!(listener.wait(), 0);

    // --json: the preview is text too, and says whether the payload is UTF-8.
    let name = unique("jtext");
    let listener = Listener::start(&[&name, "--count", "2", "--json"]);
    assert_eq!(run(&["send", &name, "café"]).code, 0);
    let doc: serde_json::Value = serde_json::from_str(&listener.line()).unwrap();
    assert_eq!(
        (doc["preview"].as_str(), doc["utf8"].as_bool(), doc["size"].as_u64()),
        (Some("café"), Some(true), Some(5))
    );
    assert_eq!(run_with(&["send", &name, "-"], b"\xff").code, 0);
    let doc: serde_json::Value = serde_json::from_str(&listener.line()).unwrap();
    assert_eq!((doc["preview"].as_str(), doc["utf8"].as_bool()), (Some("\\xff"), Some(false)));
    assert_eq!(listener.wait(), 0);

    // Only one way of showing the payload at a time (--json --hex adds the
    // hex digits to the object: see `listen_json_reports_each_message`).
    for args in [&["--hex", "--raw"][..], &["--json", "--raw"]] {
        let out = run(&[&["listen", &unique("conflict")], args].concat());
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
}

#[test]
fn listen_raw_writes_the_payloads_unchanged() {
    let name = unique("raw");
    let mut child = Running(
        copydata()
            .args(["listen", &name, "--count", "2", "--raw"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    // The ready line goes to stderr: stdout holds the payloads only.
    assert_eq!(rx.recv_timeout(WAIT).expect("a ready line on stderr"), format!("ready {name}"));
    let binary: Vec<u8> = (0..=255u8).chain(*b"\n\r\x00end").collect();
    assert_eq!(run_with(&["send", &name, "-"], &binary).code, 0);
    assert_eq!(run(&["send", &name, "café"]).code, 0);
    assert_eq!(wait(&mut child.0, &["listen", "--raw"]), 0);
    let mut want = binary;
    want.extend_from_slice("café".as_bytes());
    assert_eq!(reader.join().unwrap(), want);
}

#[test]
fn completions_for_every_shell() {
    // (shell, a line every script of that shell has)
    for (shell, marker) in [
        ("bash", "complete -F _copydata"),
        ("zsh", "#compdef copydata"),
        ("fish", "complete -c copydata"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[copydata]"),
    ] {
        let out = run(&["completions", shell]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        let script = out.out();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        // (fish spells options without their dashes: `-l verbose`)
        for word in ["section", "listen", "send", "completions", "verbose", "allow-uid", "hex"] {
            assert!(script.contains(word), "{shell}: {word:?} missing");
        }
        // The internal subcommands stay internal.
        assert!(!script.contains("__demo-child") && !script.contains("__bench-child"), "{shell}");
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.code, 2, "{}", out.stderr);

    // Loaded into bash, the script completes subcommands and options.
    #[cfg(target_os = "linux")]
    if Command::new("bash").arg("-c").arg("true").status().is_ok_and(|s| s.success()) {
        let script = run(&["completions", "bash"]).out();
        let test = format!(
            "{script}\n\
             complete -p copydata\n\
             COMP_WORDS=(copydata li); COMP_CWORD=1; _copydata copydata li copydata; echo \"1:${{COMPREPLY[*]}}\"\n\
             COMP_WORDS=(copydata listen --he); COMP_CWORD=2; _copydata copydata --he listen; echo \"2:${{COMPREPLY[*]}}\""
        );
        let out = Command::new("bash").arg("-c").arg(&test).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("-F _copydata copydata"), "{text}");
        assert!(text.lines().any(|l| l == "1:listen"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("2:") && l.contains("--hex") && l.contains("--help")), "{text}");
    }
}

#[test]
fn man_page_is_roff_naming_every_subcommand() {
    let out = run(&["man"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let page = out.out();
    assert!(page.lines().any(|l| l.starts_with(".TH copydata 1")), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section} missing: {page}");
    }
    assert!(page.contains("Local IPC between processes"), "{page}");
    for sub in ["demo", "section", "listen", "send", "instance", "shared", "lock", "event", "ls", "bench"] {
        assert!(page.contains(&format!("copydata\\-{sub}(1)")), "{sub} missing: {page}");
    }
    assert!(!page.contains("__demo") && !page.contains("\\-\\-demo\\-child"), "{page}");

    // One page per subcommand into a folder, made with its parents.
    let top = std::env::temp_dir().join(unique("man"));
    let dir = top.join("man1");
    let out = run(&["man", "--out-dir", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for file in ["copydata.1", "copydata-send.1", "copydata-section-create.1", "copydata-completions.1"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(".TH "), "{file}: {text}");
    }
    let size = std::fs::read_to_string(dir.join("copydata-section-create.1")).unwrap();
    assert!(size.contains("powers of 1000"), "{size}");
    // The folder's copydata.1 is the page printed above, and names no page
    // the folder lacks (clap's `help` subcommand has none).
    assert_eq!(std::fs::read_to_string(dir.join("copydata.1")).unwrap(), page);
    assert!(!page.contains("copydata\\-help(1)"), "{page}");
    assert!(!dir.join("copydata-__demo-child.1").exists());
    std::fs::remove_dir_all(&top).unwrap();

    // Rendered by groff, where there is one, it reads as a manual, with no
    // warning (-ww) and plain text (-P -cbou: no colours, no overstrikes).
    #[cfg(target_os = "linux")]
    if let Ok(mut groff) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P", "-cbou"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        groff.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
        let out = groff.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
        for part in ["NAME", "SUBCOMMANDS", "copydata-listen(1)", "Local IPC between processes"] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }
    }
}

#[test]
fn verbosity_flags_and_rust_log_set_the_diagnostics() {
    let name = unique("log");
    let listener = Listener::start(&[&name]);
    let debug_line = "copydata: debug: copydata::cmd::send: connected to mailbox";
    // (global flags, RUST_LOG, whether send's debug lines show)
    let cases: [(&[&str], Option<&str>, bool); 8] = [
        (&[], None, false),
        (&["-v"], None, false),
        (&["-vv"], None, true),
        (&["--verbose", "--verbose", "--verbose"], None, true),
        (&[], Some("debug"), true),
        (&[], Some("copydata::cmd::send=debug"), true),
        (&[], Some("copydata::mailbox=debug"), false),
        (&["-q"], Some("debug"), false),
    ];
    for (flags, rust_log, shows) in cases {
        // The flags are global: before or after the subcommand.
        let args = [flags, &["send", &name, "x"]].concat();
        let out = run_logged(&args, rust_log);
        assert_eq!((out.code, out.out()), (0, "code 0\n".to_string()), "{flags:?} {rust_log:?}: {}", out.stderr);
        assert!(listener.line().contains("data=\"x\""));
        assert_eq!(out.stderr.contains(debug_line), shows, "{flags:?} {rust_log:?}: {:?}", out.stderr);
        if !shows {
            assert_eq!(out.stderr, "", "{flags:?} {rust_log:?}");
        }
        let args = [&["send", &name, "x"], flags].concat();
        assert_eq!(run_logged(&args, rust_log).stderr.contains(debug_line), shows, "{args:?}");
        assert!(listener.line().contains("data=\"x\""));
    }
    // -q leaves errors: the one line that says why the command failed; -qq
    // nothing, the exit code alone tells.
    let out = run_logged(&["-q", "send", &unique("nobody"), "x"], None);
    assert_eq!(out.code, 3);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let out = run_logged(&["-qq", "send", &unique("nobody"), "x"], None);
    assert_eq!((out.code, out.stderr.as_str()), (3, ""));
    // -v and -q together are a usage error.
    assert_eq!(run_logged(&["-v", "-q", "ls"], None).code, 2);
}

/// The library's warning about a connection it dropped reaches the user by
/// default, and -q silences it. A client that speaks nothing copydata knows
/// connects to the mailbox's socket (Linux).
#[cfg(target_os = "linux")]
#[test]
fn a_dropped_connection_is_explained_unless_quiet() {
    for quiet in [false, true] {
        let dir = private_runtime("log-rt");
        let name = unique("dropped");
        let mut cmd = copydata();
        cmd.env_remove("RUST_LOG").env("COPYDATA_RUNTIME_DIR", &dir);
        if quiet {
            cmd.arg("-q");
        }
        let mut child = Running(
            cmd.args(["listen", &name, "--count", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
        );
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
        let mut stderr = child.0.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert_eq!(ready.trim_end(), format!("ready {name}"));
        let socket = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "sock"))
            .expect("the mailbox's socket");
        let mut stranger = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stranger.write_all(&[0u8; 32]).unwrap();
        drop(stranger);
        // A real message after it ends the listener (--count 1).
        let env = [("COPYDATA_RUNTIME_DIR", dir.as_path())];
        assert_eq!(run_env(&["send", &name, "x"], &env).0.code, 0);
        assert_eq!(wait(&mut child.0, &["listen"]), 0);
        let errors = errors.join().unwrap();
        if quiet {
            assert_eq!(errors, "");
        } else {
            let want = format!("copydata: warn: mailbox {name}: set-up with pid ");
            assert!(errors.contains(&want) && errors.contains("not a copydata hello"), "{errors}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn send_prints_a_loaned_reply() {
    let name = unique("loanreply");
    let server = copydata::Mailbox::bind(&name).unwrap().serve(|m| {
        let mut loan = m.loan_reply(5).unwrap();
        loan.write_at(0, b"HELLO").unwrap();
        copydata::Reply::loaned(3, loan)
    });
    let out = run(&["send", &name, "x"]);
    assert_eq!((out.code, out.stdout.as_slice()), (0, b"code 3\nHELLO".as_slice()), "{}", out.stderr);
    let file = std::env::temp_dir().join(unique("loanreply-out"));
    let out = run(&["send", &name, "x", "--out", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), b"HELLO");
    std::fs::remove_file(&file).unwrap();
    drop(server);
}

/// Output to a reader that has gone (a pipe closed early) ends the command
/// quietly with 0, never with a panic.
#[cfg(unix)]
#[test]
fn a_closed_stdout_is_no_panic() {
    use std::io::Read as _;
    for args in [&["ls"][..], &["ls", "--json"]] {
        let mut child = copydata().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let code = wait(&mut child, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Text that starts with `-` is a payload, not a flag: sent, and written,
/// as it is (after `--` when it could be an option).
#[test]
fn payloads_starting_with_a_hyphen_are_data() {
    let name = unique("hyphen");
    let listener = Listener::start(&[&name, "--count", "3", "--json"]);
    for args in [&["-hello"][..], &["--", "-q"], &["--", "-h"]] {
        let out = run(&[&["send", &name, "--timeout", "10s"][..], args].concat());
        assert_eq!(out.code, 0, "send {args:?}: {}", out.stderr);
        let doc: serde_json::Value = serde_json::from_str(&listener.line()).unwrap();
        assert_eq!(doc["preview"].as_str(), args.last().copied(), "{doc}");
    }
    let section = unique("hyphen-s");
    let holder = Holder::start(&section, "4KiB");
    assert_eq!(run(&["section", "write", &section, "-x1"]).code, 0);
    assert_eq!(run(&["section", "write", &section, "--offset", "3", "--", "-h"]).code, 0);
    assert_eq!(run(&["section", "read", &section, "--len", "5"]).stdout, b"-x1-h");
    drop(holder);
}

/// A read that fails leaves the file named by --out as it was; writing
/// nothing to a missing section is still an error.
#[test]
fn failed_section_commands_leave_files_alone() {
    let section = unique("outfile");
    let holder = Holder::start(&section, "4KiB");
    let dir = std::env::temp_dir().join(unique("out-dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("kept");
    std::fs::write(&out, b"keep").unwrap();
    let r = run(&["section", "read", &section, "--len", "70000", "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    let fresh = dir.join("fresh");
    assert_eq!(run(&["section", "read", &section, "--offset", "5000", "--out", fresh.to_str().unwrap()]).code, 2);
    assert!(!fresh.exists());
    drop(holder);
    assert_eq!(run(&["section", "write", &unique("nosuch"), ""]).code, 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
