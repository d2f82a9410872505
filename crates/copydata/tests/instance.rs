//! Single instances across real processes, on Linux and (from the same
//! sources) Windows under Wine.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use common::{Kid, child_command, example, hear, say, unique};
use copydata::instance::{Answer, InstanceOptions, LAUNCH_TAG, SingleInstance};
use copydata::{InstanceError, SendError};

#[test]
fn child_entry() {
    common::child_main(role);
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The arguments of launch `i`: the separators and quoting other libraries
/// trip over, empty strings, newlines, non-ASCII and (Linux) non-UTF-8
/// bytes or (Windows) an unpaired surrogate.
fn tricky(i: usize) -> Vec<OsString> {
    let mut v: Vec<OsString> =
        [format!("n{i}"), "a b".into(), "x|y".into(), String::new(), "\"q\" 'r'".into(), "line1\nline2".into()]
            .into_iter()
            .map(OsString::from)
            .collect();
    v.push("ünï €".into());
    v.push("C:\\path with\\back slashes\\".into());
    v.push(";,\t\u{1f}\u{0}".into());
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        v.push(OsString::from_vec(vec![0xff, 0xfe, b'r', b'a', b'w', 0x80]));
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStringExt;
        v.push(OsString::from_wide(&[0xD800, u16::from(b'r'), 0xDC00]));
    }
    v
}

/// Parses `key=value` arguments.
fn kv(args: &[String]) -> BTreeMap<&str, &str> {
    args.iter().filter_map(|a| a.split_once('=')).collect()
}

fn role(role: &str, args: &[String]) -> Result<(), String> {
    let a = kv(args);
    let app = a["app"];
    match role {
        // One of many simultaneous launches: waits for "go", then acquires.
        // The primary takes `expect` launches, checks each one's arguments
        // against `tricky(i)` (i in its data), answers "ok i" with code i,
        // and reports the indices it got; a secondary reports its answer.
        "launch" => {
            let i: usize = a["i"].parse().map_err(fail)?;
            let expect: usize = a["expect"].parse().map_err(fail)?;
            say("up", "");
            hear();
            let options = InstanceOptions::new().timeout(Duration::from_secs(60)).args(tricky(i)).data(i.to_string());
            match SingleInstance::acquire(app, &options).map_err(fail)? {
                SingleInstance::Primary(primary) => {
                    say("primary", "");
                    let mut got = Vec::new();
                    while got.len() < expect {
                        let launch = primary.recv_timeout(Duration::from_secs(60)).map_err(fail)?;
                        let j: usize = std::str::from_utf8(launch.data()).map_err(fail)?.parse().map_err(fail)?;
                        if launch.args() != tricky(j) {
                            return Err(format!("launch {j}: arguments {:?}", launch.args()));
                        }
                        if launch.pid() == std::process::id() || launch.pid() == 0 {
                            return Err(format!("launch {j}: pid {}", launch.pid()));
                        }
                        got.push(j);
                        launch.answer(Answer::new(j as i32, format!("ok {j}"))).map_err(fail)?;
                    }
                    got.sort_unstable();
                    say("received", &got.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
                    // Stay primary until every secondary has its answer.
                    hear();
                }
                SingleInstance::Secondary(s) => {
                    let text = String::from_utf8_lossy(s.data()).into_owned();
                    say("secondary", &format!("{} {text}", s.code()));
                }
            }
        }
        // A primary that prints each launch and answers it (code 0, "by
        // PID"). `hold=1`: it takes launches but never answers them; `late=MS`:
        // it starts receiving only after MS milliseconds.
        "primary" => {
            let SingleInstance::Primary(primary) =
                SingleInstance::acquire(app, &InstanceOptions::new()).map_err(fail)?
            else {
                return Err("expected to be the primary".into());
            };
            say("primary", &std::process::id().to_string());
            if let Some(ms) = a.get("late") {
                std::thread::sleep(Duration::from_millis(ms.parse().map_err(fail)?));
            }
            let mut held = Vec::new();
            for launch in primary.incoming() {
                say("launch", &format!("{}", launch.args().len()));
                if a.contains_key("hold") {
                    held.push(launch);
                } else {
                    let _ = launch.answer(Answer::new(0, format!("by {}", std::process::id())));
                }
            }
        }
        // Checks what a secondary sent (arguments, cwd, variables, data) and
        // answers 42 with a text.
        "checker" => {
            let SingleInstance::Primary(primary) =
                SingleInstance::acquire(app, &InstanceOptions::new()).map_err(fail)?
            else {
                return Err("expected to be the primary".into());
            };
            say("primary", "");
            let launch = primary.recv_timeout(Duration::from_secs(60)).map_err(fail)?;
            let cwd = launch.cwd().ok_or("no cwd")?;
            let want = std::path::Path::new(a["cwd"]);
            if std::fs::canonicalize(cwd).map_err(fail)? != std::fs::canonicalize(want).map_err(fail)? {
                return Err(format!("cwd {cwd:?}, expected {want:?}"));
            }
            if launch.args() != tricky(7) {
                return Err(format!("arguments {:?}", launch.args()));
            }
            let fwd = launch.var("COPYDATA_TEST_FWD").ok_or("COPYDATA_TEST_FWD was not forwarded")?;
            if fwd != a["fwd"] {
                return Err(format!("COPYDATA_TEST_FWD={fwd:?}"));
            }
            if launch.var("COPYDATA_TEST_SECRET").is_some() || launch.env().len() != 1 {
                return Err(format!("variables not asked for arrived: {:?}", launch.env()));
            }
            if launch.data() != b"\x00\x01bytes" {
                return Err(format!("data {:?}", launch.data()));
            }
            launch.answer(Answer::new(42, "the answer")).map_err(fail)?;
            say("checked", "");
            hear();
        }
        // A secondary launched in its own cwd with its own environment.
        "secondary" => {
            let options = InstanceOptions::new()
                .timeout(Duration::from_secs(60))
                .args(tricky(7))
                .forward_env("COPYDATA_TEST_FWD")
                .forward_env("COPYDATA_TEST_UNSET")
                .data(b"\x00\x01bytes".to_vec());
            match SingleInstance::acquire(app, &options).map_err(fail)? {
                SingleInstance::Secondary(s) => {
                    say("answer", &format!("{} {}", s.code(), String::from_utf8_lossy(s.data())));
                }
                SingleInstance::Primary(_) => return Err("became primary".into()),
            }
        }
        other => return Err(format!("unknown role {other}")),
    }
    Ok(())
}

/// Kills a primary, then takes the id over and lets it go, which also
/// removes what the killed primary left in the runtime directory.
fn kill_primary(primary: Kid, app: &str) {
    primary.kill();
    match SingleInstance::acquire(app, &InstanceOptions::new()) {
        Ok(SingleInstance::Primary(p)) => drop(p),
        other => panic!("after the primary was killed: {other:?}"),
    }
}

/// Launch `n` processes at once (each waits for "go", all are told at
/// once): exactly one becomes primary, every other launch reaches it exactly
/// once with its arguments intact, and gets its own answer.
fn simultaneous(n: usize) {
    let app = unique("race");
    let mut kids: Vec<Kid> = (0..n)
        .map(|i| Kid::spawn("launch", &[&format!("app={app}"), &format!("i={i}"), &format!("expect={}", n - 1)]))
        .collect();
    for k in &mut kids {
        k.expect("up");
    }
    for k in &mut kids {
        k.tell("go");
    }
    let mut primaries = Vec::new();
    let mut answered = Vec::new();
    for (i, k) in kids.iter_mut().enumerate() {
        let (tag, rest) = k.next_line(common::WAIT).unwrap_or_else(|| panic!("launch {i} said nothing"));
        match tag.as_str() {
            "primary" => primaries.push(i),
            "secondary" => {
                assert_eq!(rest, format!("{i} ok {i}"), "launch {i}'s answer");
                answered.push(i);
            }
            other => panic!("launch {i} said @{other} {rest}"),
        }
    }
    assert_eq!(primaries.len(), 1, "primaries: {primaries:?}");
    let p = primaries[0];
    let received = kids[p].expect("received");
    let want: Vec<String> = (0..n).filter(|&i| i != p).map(|i| i.to_string()).collect();
    assert_eq!(received, want.join(","), "each launch exactly once");
    assert_eq!(answered.len(), n - 1);
    kids[p].tell("done");
    for k in kids {
        k.wait_ok();
    }
}

#[test]
fn fifty_simultaneous_launches_give_one_primary_and_lose_nothing() {
    simultaneous(50);
}

#[test]
fn cwd_chosen_variables_data_and_the_answer_arrive() {
    let app = unique("fields");
    let dir = std::env::temp_dir().join(unique("cwd"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_s = dir.to_str().unwrap().to_owned();
    let fwd = format!("value with spaces|and=signs-{}", std::process::id());
    let mut primary = Kid::spawn("checker", &[&format!("app={app}"), &format!("cwd={dir_s}"), &format!("fwd={fwd}")]);
    primary.expect("primary");
    let mut cmd = child_command("secondary", &[&format!("app={app}")]);
    cmd.current_dir(&dir).env("COPYDATA_TEST_FWD", &fwd).env("COPYDATA_TEST_SECRET", "not asked for");
    let mut secondary = Kid::start(cmd, "secondary", &[]);
    assert_eq!(secondary.expect("answer"), "42 the answer");
    primary.expect("checked");
    secondary.wait_ok();
    primary.tell("done");
    primary.wait_ok();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_primary_is_succeeded_by_the_next_launch_at_once() {
    let app = unique("killed");
    let mut first = Kid::spawn("primary", &[&format!("app={app}")]);
    first.expect("primary");
    first.kill();
    let started = Instant::now();
    match SingleInstance::acquire(&app, &InstanceOptions::new()).unwrap() {
        SingleInstance::Primary(p) => {
            let took = started.elapsed();
            assert!(took < Duration::from_secs(1), "the successor took {took:?}");
            drop(p);
        }
        SingleInstance::Secondary(s) => panic!("forwarded to a dead primary? {s:?}"),
    }
}

#[test]
fn a_launch_waiting_on_a_primary_that_dies_is_not_lost() {
    let app = unique("orphan");
    let mut first = Kid::spawn("primary", &[&format!("app={app}"), "hold=1"]);
    first.expect("primary");
    let app2 = app.clone();
    let waiter = std::thread::spawn(move || {
        SingleInstance::acquire(&app2, &InstanceOptions::new().timeout(Duration::from_secs(60)).args(["orphan"]))
    });
    // The primary takes the launch and sits on it; then it is killed.
    first.expect("launch");
    first.kill();
    match waiter.join().unwrap().unwrap() {
        // No other primary came: this launch became the primary itself.
        SingleInstance::Primary(p) => drop(p),
        SingleInstance::Secondary(s) => panic!("answered by a dead primary? {s:?}"),
    }
}

#[test]
fn a_primary_that_does_not_answer_times_secondaries_out_in_time() {
    let app = unique("hung");
    let mut primary = Kid::spawn("primary", &[&format!("app={app}"), "hold=1"]);
    primary.expect("primary");
    let limit = Duration::from_millis(500);
    let started = Instant::now();
    let result = SingleInstance::acquire(&app, &InstanceOptions::new().timeout(limit));
    let took = started.elapsed();
    assert!(matches!(result, Err(InstanceError::TimedOut { .. })), "{result:?}");
    assert!(took >= limit, "gave up after {took:?}, before its {limit:?}");
    assert!(took < Duration::from_secs(10), "took {took:?} with a {limit:?} timeout");
    kill_primary(primary, &app);
}

#[cfg(target_os = "linux")]
#[test]
fn a_stopped_primary_times_secondaries_out_in_time() {
    use rustix::process::{Pid, Signal, kill_process};
    let app = unique("stopped");
    let mut primary = Kid::spawn("primary", &[&format!("app={app}")]);
    primary.expect("primary");
    let pid = Pid::from_raw(primary.id() as i32).unwrap();
    common::stop(primary.id());
    for limit in [Duration::from_millis(500), Duration::from_millis(1500)] {
        let started = Instant::now();
        let result = SingleInstance::acquire(&app, &InstanceOptions::new().timeout(limit));
        let took = started.elapsed();
        assert!(matches!(result, Err(InstanceError::TimedOut { .. })), "{result:?}");
        assert!(took >= limit, "gave up after {took:?}, before its {limit:?}");
        assert!(took < limit + Duration::from_secs(10), "took {took:?} with a {limit:?} timeout");
    }
    kill_process(pid, Signal::CONT).unwrap();
    // Awake again, it answers the next launch.
    let answer = SingleInstance::acquire(&app, &InstanceOptions::new());
    assert!(matches!(answer, Ok(SingleInstance::Secondary(_))), "{answer:?}");
    kill_primary(primary, &app);
}

#[test]
fn a_secondary_waits_for_a_primary_that_is_not_receiving_yet() {
    let app = unique("late");
    let mut primary = Kid::spawn("primary", &[&format!("app={app}"), "late=1500"]);
    let pid = primary.expect("primary");
    let started = Instant::now();
    let answer = match SingleInstance::acquire(&app, &InstanceOptions::new().args(["hello"])).unwrap() {
        SingleInstance::Secondary(s) => s,
        SingleInstance::Primary(_) => panic!("two primaries"),
    };
    assert_eq!(answer.data(), format!("by {pid}").as_bytes());
    assert_eq!(answer.primary_pid().map(|p| p.to_string()), Some(pid));
    assert!(started.elapsed() >= Duration::from_millis(1000), "answered before the primary listened?");
    kill_primary(primary, &app);
}

#[test]
fn a_primary_that_exits_releases_the_id_at_once() {
    let app = unique("release");
    for _ in 0..3 {
        match SingleInstance::acquire(&app, &InstanceOptions::new()).unwrap() {
            SingleInstance::Primary(p) => drop(p),
            SingleInstance::Secondary(s) => panic!("the id was not released: {s:?}"),
        }
    }
    // The same with a served primary.
    let SingleInstance::Primary(p) = SingleInstance::acquire(&app, &InstanceOptions::new()).unwrap() else {
        panic!("not primary");
    };
    let server = p.serve(|launch| Answer::new(launch.args().len() as i32, "served"));
    drop(server);
    assert!(matches!(SingleInstance::acquire(&app, &InstanceOptions::new()), Ok(SingleInstance::Primary(_))));
}

/// A launch record of many empty arguments (4 bytes each on the wire, an
/// `OsString` each decoded) would make the primary allocate several times
/// its size: it is refused when its decoded form would exceed
/// `max_launch`, before anything is allocated for it.
#[test]
fn a_launch_that_would_decode_beyond_max_launch_is_refused() {
    let app = unique("budget");
    let options = InstanceOptions::new().max_launch(1 << 20);
    let SingleInstance::Primary(p) = SingleInstance::acquire(&app, &options).unwrap() else {
        panic!("not primary");
    };
    let server = p.serve(|launch| Answer::new(launch.args().len() as i32, ""));
    let record = |argc: u32| {
        let mut r = b"CDL1".to_vec();
        // Strings as bytes (Unix) or UTF-16 code units (Windows).
        r.extend_from_slice(&[if cfg!(windows) { 2 } else { 1 }, 0, 0, 0]);
        r.extend_from_slice(&argc.to_le_bytes());
        r.resize(r.len() + 4 * argc as usize, 0); // empty arguments
        r.extend_from_slice(&0u32.to_le_bytes()); // no variables
        r.extend_from_slice(&0u64.to_le_bytes()); // no data
        r
    };
    let mailbox = format!("instance.{app}");
    // 800 KB on the wire (under the limit), several MB decoded.
    match copydata::send_timeout(&mailbox, LAUNCH_TAG, &record(200_000), Duration::from_secs(60)) {
        Err(SendError::Refused { reason, .. }) => assert!(reason.contains("decoded"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A launch within the limit, decoded too, is taken.
    let reply = copydata::send_timeout(&mailbox, LAUNCH_TAG, &record(1000), Duration::from_secs(60)).unwrap();
    assert_eq!(reply.code, 1000);
    drop(server);
}

/// A primary with as many launches connected as its mailbox takes makes
/// the next launch wait for room (by its timeout), not fail: the stand-in
/// primary here is a mailbox bound under the id's name with room for one
/// connection, which the test holds for a while.
#[test]
fn a_launch_beyond_the_primarys_connections_waits_for_room() {
    let app = unique("busy");
    let mailbox = format!("instance.{app}");
    let server = copydata::Mailbox::bind_with(&mailbox, &copydata::MailboxOptions::new().max_connections(1))
        .unwrap()
        .serve(|_| copydata::Reply::code(3));
    let mut holder = copydata::Sender::connect(&mailbox).unwrap();
    assert_eq!(holder.send(0, b"").unwrap().code, 3);
    match copydata::Sender::connect(&mailbox) {
        Err(SendError::Busy { reason, .. }) => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("a second connection: {other:?}"),
    }
    let app2 = app.clone();
    let launch = std::thread::spawn(move || {
        SingleInstance::acquire(&app2, &InstanceOptions::new().timeout(Duration::from_secs(30)))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!launch.is_finished(), "the launch did not wait for room");
    drop(holder);
    match launch.join().unwrap() {
        Ok(SingleInstance::Secondary(s)) => assert_eq!(s.code(), 3),
        Ok(SingleInstance::Primary(_)) => panic!("two primaries"),
        Err(e) => panic!("{e}"),
    }
    drop(server);
}

#[test]
fn serve_answers_and_survives_panics_and_garbage() {
    let app = unique("serve");
    let SingleInstance::Primary(p) = SingleInstance::acquire(&app, &InstanceOptions::new()).unwrap() else {
        panic!("not primary");
    };
    let server = p.serve(|launch| {
        if launch.args().first().is_some_and(|a| a == "panic") {
            panic!("asked to");
        }
        if launch.tag() != LAUNCH_TAG {
            return Answer::new(7, launch.data().to_vec());
        }
        Answer::new(launch.args().len() as i32, "served")
    });
    let ask = |args: &[&str]| SingleInstance::acquire(&app, &InstanceOptions::new().args(args.iter().copied()));
    match ask(&["panic"]) {
        Err(InstanceError::Refused { reason, .. }) => assert!(reason.contains("panicked"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A garbage launch record is refused; the primary keeps serving.
    let mailbox = format!("instance.{app}");
    match copydata::send(&mailbox, LAUNCH_TAG, b"CDL1garbage") {
        Err(SendError::Refused { reason, .. }) => assert!(reason.contains("bad launch record"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Another tag (a plain WM_COPYDATA, say) arrives as bytes.
    let reply = copydata::send(&mailbox, 5, b"raw bytes").unwrap();
    assert_eq!((reply.code, &reply.data[..]), (7, &b"raw bytes"[..]));
    match ask(&["a", "b"]).unwrap() {
        SingleInstance::Secondary(s) => assert_eq!((s.code(), s.data()), (2, &b"served"[..])),
        SingleInstance::Primary(_) => panic!("two primaries"),
    }
    // A timeout too large to add to the clock means "wait for ever".
    match SingleInstance::acquire(&app, &InstanceOptions::new().timeout(Duration::MAX)).unwrap() {
        SingleInstance::Secondary(s) => assert_eq!(s.data(), b"served"),
        SingleInstance::Primary(_) => panic!("two primaries"),
    }
    assert_eq!(server.app_id(), app);
}

#[test]
fn an_unanswered_launch_gets_code_zero() {
    let app = unique("dropped");
    let SingleInstance::Primary(p) = SingleInstance::acquire(&app, &InstanceOptions::new()).unwrap() else {
        panic!("not primary");
    };
    let app2 = app.clone();
    let t = std::thread::spawn(move || SingleInstance::acquire(&app2, &InstanceOptions::new()));
    drop(p.recv_timeout(Duration::from_secs(60)).unwrap());
    match t.join().unwrap().unwrap() {
        SingleInstance::Secondary(s) => assert_eq!((s.code(), s.data()), (0, &b""[..])),
        SingleInstance::Primary(_) => panic!("two primaries"),
    }
}

#[test]
fn bad_app_ids_are_refused() {
    let long = "x".repeat(copydata::instance::MAX_APP_ID_LEN + 1);
    for bad in ["", "a/b", "..", "with space", &long] {
        assert!(
            matches!(SingleInstance::acquire(bad, &InstanceOptions::new()), Err(InstanceError::InvalidAppId { .. })),
            "{bad:?}"
        );
    }
}

/// The longest app id's primary is listed and reachable under its
/// mailbox's name. App ids up to the longest name used to be taken, and
/// their primary's mailbox (`instance.APP`) was then neither listed nor
/// reachable by name.
#[test]
fn the_longest_app_ids_primary_is_listed_and_reachable() {
    let app = unique("long");
    let app = format!("{app}{}", "x".repeat(copydata::instance::MAX_APP_ID_LEN - app.len()));
    let SingleInstance::Primary(primary) = SingleInstance::acquire(&app, &InstanceOptions::new()).unwrap() else {
        panic!("a secondary of a fresh app id");
    };
    let mailbox = format!("instance.{app}");
    assert!(copydata::mailboxes().unwrap().iter().any(|m| m.name == mailbox), "{mailbox} not listed");
    assert!(copydata::validate_name(&mailbox).is_ok());
    drop(primary);
}

#[test]
fn the_editor_example_opens_files_in_the_running_instance() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let Some(editor) = example("editor") else { return };
    let app = unique("editor");
    let mut primary =
        Command::new(&editor).arg("first.txt").env("EDITOR_APP_ID", &app).stdout(Stdio::piped()).spawn().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = primary.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = || lines.recv_timeout(common::WAIT).expect("a line from the editor");
    let pid = primary.id();
    assert_eq!(line(), format!("editor {pid}: running"));
    assert_eq!(line(), "opening first.txt");
    let dir = std::env::temp_dir().join(unique("edit-dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(&editor).args(["a b.txt", "c.rs"]).current_dir(&dir).env("EDITOR_APP_ID", &app).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), format!("opened 2 file(s) in editor {pid}"));
    let cwd = std::fs::canonicalize(&dir).unwrap();
    for want in ["a b.txt", "c.rs"] {
        let got = line();
        let path = got.strip_prefix("opening ").unwrap_or_else(|| panic!("{got}"));
        let path = std::path::Path::new(path);
        assert_eq!(path.file_name().unwrap(), want);
        assert_eq!(std::fs::canonicalize(path.parent().unwrap()).unwrap(), cwd);
    }
    let out = Command::new(&editor).arg("--quit").env("EDITOR_APP_ID", &app).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), format!("editor {pid} closed"));
    assert_eq!(line(), format!("editor {pid}: closed"));
    let deadline = Instant::now() + common::WAIT;
    while primary.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the editor did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(primary.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A launch record above the primary's limit (`InstanceOptions::max_launch`)
/// is refused, so no process can make the primary allocate gigabytes; a
/// launch within it goes through.
#[test]
fn a_launch_above_the_primarys_limit_is_refused() {
    let app = unique("max-launch");
    let small = |data: Vec<u8>| InstanceOptions::new().args(["x"]).data(data).timeout(Duration::from_secs(10));
    let Ok(SingleInstance::Primary(primary)) = SingleInstance::acquire(&app, &small(Vec::new()).max_launch(64 << 10))
    else {
        panic!("the first launch is not primary");
    };
    let server = primary.serve(|launch| Answer::code(launch.data().len() as i32));
    match SingleInstance::acquire(&app, &small(vec![7; 128 << 10])) {
        Err(InstanceError::Refused { reason, .. }) => {
            assert!(reason.contains("larger than the primary takes"), "{reason}")
        }
        other => panic!("a launch of 128 KiB past a 64 KiB limit: {other:?}"),
    }
    match SingleInstance::acquire(&app, &small(vec![7; 1000])) {
        Ok(SingleInstance::Secondary(s)) => assert_eq!(s.code(), 1000),
        other => panic!("a launch of 1000 bytes: {other:?}"),
    }
    drop(server);
}

/// A primary that exits while a launch is setting up its connection (the
/// connection then ends mid-set-up) does not lose the launch: it becomes
/// the primary itself.
#[cfg(target_os = "linux")]
#[test]
fn a_primary_gone_during_set_up_leaves_the_launch_to_be_primary() {
    use std::os::unix::net::UnixListener;

    let app = unique("hung-up");
    let mailbox = format!("instance.{app}");
    let socket = copydata::os::linux::mailbox_socket_path(&mailbox).unwrap();
    let dir = socket.parent().unwrap().to_owned();
    std::fs::create_dir_all(&dir).unwrap();
    // A "primary": the mailbox's lock taken, its socket listening, and
    // nothing answering.
    let lock_path = dir.join(format!("{mailbox}.mailbox"));
    let lock = std::fs::File::create(&lock_path).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let listener = UnixListener::bind(&socket).unwrap();
    let launch = {
        let app = app.clone();
        std::thread::spawn(move || {
            SingleInstance::acquire(&app, &InstanceOptions::new().args(["x"]).timeout(Duration::from_secs(20)))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // It exits with the launch's connection queued.
    drop(listener);
    std::fs::remove_file(&socket).unwrap();
    std::fs::remove_file(&lock_path).unwrap();
    drop(lock);
    match launch.join().unwrap() {
        Ok(SingleInstance::Primary(primary)) => drop(primary),
        other => panic!("the launch after its primary went: {other:?}"),
    }
}
