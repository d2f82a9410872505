//! Sections across real processes, on Linux and (from the same sources)
//! Windows under Wine.

mod common;

use std::sync::atomic::Ordering;

use common::{Kid, hear, park_forever, say, unique};
use copydata::{Access, AccessError, CreateError, InheritError, MapError, NameError, OpenError, Section};

/// The entry point of every child process (see `common`); a no-op otherwise.
#[test]
fn child_entry() {
    common::child_main(role);
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn text_at(s: &Section, offset: u64, len: usize) -> Result<String, String> {
    let bytes = s.map(offset, len).map_err(fail)?.to_vec();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(len);
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

fn put(s: &Section, offset: u64, text: &str) -> Result<(), String> {
    let bytes = format!("{text}\0");
    s.map_mut(offset, bytes.len()).map_err(fail)?.write_at(0, bytes.as_bytes()).map_err(fail)
}

/// The child roles.
fn role(role: &str, args: &[String]) -> Result<(), String> {
    let me = std::process::id();
    match role {
        // Reports every inherited section and writes into the writable ones.
        "inherit-report" => {
            let sections = copydata::inherited_sections().map_err(fail)?;
            for (i, s) in sections.iter().enumerate() {
                say(
                    "section",
                    &format!("{i} {} {} {:?} {}", s.name().unwrap_or("-"), s.len(), s.access(), text_at(s, 0, 64)?),
                );
                match s.access() {
                    Access::ReadWrite => put(s, 0, &format!("child {me} wrote {i}"))?,
                    Access::ReadOnly => match s.map_mut(0, 1) {
                        Err(MapError::ReadOnly) => {}
                        other => {
                            return Err(format!("map_mut on a read-only section gave {other:?}"));
                        }
                    },
                }
            }
            say("done", "");
            Ok(())
        }
        // Reports whether each inherited section is size-sealed.
        "sealed-report" => {
            let sections = copydata::inherited_sections().map_err(fail)?;
            let sealed: Vec<String> = sections.iter().map(|s| s.is_size_sealed().to_string()).collect();
            say("sealed", &sealed.join(" "));
            Ok(())
        }
        // Takes the inherited sections and reports the error, if any.
        "take" => {
            let first = copydata::inherited_sections();
            let second = copydata::inherited_sections();
            let describe = |r: &Result<Vec<Section>, InheritError>| match r {
                Ok(v) => format!("ok:{}", v.len()),
                Err(InheritError::Malformed { .. }) => "malformed".into(),
                Err(InheritError::Stale { .. }) => "stale".into(),
                Err(InheritError::AlreadyTaken) => "taken".into(),
                Err(e) => format!("other:{e}"),
            };
            say("took", &format!("{} {}", describe(&first), describe(&second)));
            Ok(())
        }
        // Takes its sections, then starts a grandchild with the same
        // environment (so the same token) but no sections.
        // Creates `args[0]`, forks without exec; the forked copy drops its
        // share of the section and exits; then this process reports.
        #[cfg(target_os = "linux")]
        "fork-drop" => {
            let s = Section::create(&args[0], 4096).map_err(fail)?;
            // SAFETY: the child only drops the section (system calls on its
            // own descriptor) and leaves with _exit, running nothing else.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                drop(s);
                // SAFETY: ends the forked copy at once.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            say("forked", &status.to_string());
            hear();
            drop(s);
            Ok(())
        }
        // Takes the inherited sections (one of the token's entries is
        // stale), then reports whether each entry's descriptor is still
        // open.
        #[cfg(target_os = "linux")]
        "take-stale-then-look" => {
            let took = match copydata::inherited_sections() {
                Err(InheritError::Stale { .. }) => "stale".to_owned(),
                other => format!("{other:?}"),
            };
            let token = std::env::var(copydata::INHERIT_VAR).map_err(fail)?;
            let (_, entries) = token.split_once(';').ok_or("no entries")?;
            let mut seen = Vec::new();
            for entry in entries.split(',') {
                let fd: i32 = entry.split(':').next().ok_or("no descriptor")?.parse().map_err(fail)?;
                // SAFETY: only asks for the descriptor's flags.
                let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
                seen.push(if open { "open" } else { "closed" });
            }
            say("took", &format!("{took} {}", seen.join(",")));
            Ok(())
        }
        "take-then-spawn" => {
            let sections = copydata::inherited_sections().map_err(fail)?;
            let mut grandchild = Kid::spawn("take", &[]);
            let took = grandchild.expect("took");
            grandchild.wait_ok();
            say("grandchild", &format!("{} {took}", sections.len()));
            Ok(())
        }
        "probe-read-only" => probe_read_only(),
        // Says how many memfds it inherited (Linux), then what its
        // inherited sections hold.
        "what-came" => {
            #[cfg(target_os = "linux")]
            let open = std::fs::read_dir("/proc/self/fd")
                .map_err(fail)?
                .filter_map(|e| e.ok())
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|p| p.to_string_lossy().starts_with("/memfd:")))
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                // SAFETY: only asks for the descriptor's flags.
                .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == 0)
                .count();
            #[cfg(not(target_os = "linux"))]
            let open = 0;
            let sections = copydata::inherited_sections().map_err(fail)?;
            let texts = sections.iter().map(|s| text_at(s, 0, 64)).collect::<Result<Vec<_>, _>>()?.join(",");
            let texts = if sections.is_empty() { "none".to_string() } else { texts };
            say("came", &format!("{open} {texts}"));
            Ok(())
        }
        // Makes read-only hand-outs of each inherited section and reads
        // them.
        "read-only-again" => {
            let sections = copydata::inherited_sections().map_err(fail)?;
            let mut seen = Vec::new();
            for s in &sections {
                let ro = s.read_only().map_err(fail)?;
                seen.push(format!("{:?}:{}", ro.access(), text_at(&ro, 0, 64)?));
            }
            say("seen", &seen.join(","));
            // The writable one, sealed by the parent's read-only hand-out,
            // takes no new writable view (Linux), and says why.
            let writable = match sections[0].map_mut(0, 1) {
                Ok(_) => "writable".to_string(),
                Err(e) => format!("{e:?}"),
            };
            say("writable", &writable);
            Ok(())
        }
        // Takes its sections, then drops them when told `drop` (or keeps
        // them on `keep`), and exits when told `exit`.
        "take-then-told" => {
            let sections = copydata::inherited_sections().map_err(fail)?;
            say("took", &sections.len().to_string());
            match hear().as_str() {
                "drop" => {
                    drop(sections);
                    say("dropped", "");
                }
                _ => say("kept", &sections.len().to_string()),
            }
            hear();
            Ok(())
        }
        "hold-inherited" => {
            say("ready", "");
            park_forever()
        }
        "open-write" => {
            let s = Section::open(&args[0]).map_err(fail)?;
            say("saw", &format!("{} {}", s.len(), text_at(&s, 0, 64)?));
            put(&s, 100, &format!("opened by {me}"))?;
            Ok(())
        }
        "create-hold" => {
            let s = Section::create(&args[0], args[1].parse().map_err(fail)?).map_err(fail)?;
            put(&s, 0, "made by the creator")?;
            say("ready", "");
            let _keep = s;
            park_forever()
        }
        "open-hold" => {
            let s = Section::open(&args[0]).map_err(fail)?;
            let _view = s.map(0, 1).map_err(fail)?;
            say("ready", "");
            park_forever()
        }
        "open-or-create" => {
            assert_eq!(hear(), "go");
            let s = Section::open_or_create(&args[0], 4096).map_err(fail)?;
            let v = s.map_mut(0, 8).map_err(fail)?;
            v.atomic_u64(0).map_err(fail)?.fetch_add(1, Ordering::SeqCst);
            say("result", if s.was_created() { "created" } else { "opened" });
            assert_eq!(hear(), "exit");
            Ok(())
        }
        "file-write" => {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&args[0]).map_err(fail)?;
            let s = Section::from_file(&file, Access::ReadWrite).map_err(fail)?;
            let offset: u64 = args[1].parse().map_err(fail)?;
            let v = s.map_mut(offset, args[2].len()).map_err(fail)?;
            v.write_at(0, args[2].as_bytes()).map_err(fail)?;
            v.flush().map_err(fail)?;
            say("done", "");
            Ok(())
        }
        "handover-recv" => handover_recv(args),
        "handover-send" => handover_send(args),
        _ => Err(format!("unknown role {role}")),
    }
}

// ---------------------------------------------------------------- basics

#[test]
fn views_at_unaligned_offsets_see_the_same_bytes() {
    let size = 300_000u64; // several pages and more than one 64 KiB granule
    let s = Section::anonymous(size).unwrap();
    let whole = s.map_mut(0, size as usize).unwrap();
    let pattern: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
    whole.write_at(0, &pattern).unwrap();
    for offset in [1u64, 4095, 4096, 4097, 65_535, 65_536, 65_537, 131_071, 200_003, size - 1] {
        let len = (size - offset).min(10_000) as usize;
        let v = s.map(offset, len).unwrap();
        assert_eq!(v.offset(), offset);
        assert_eq!(v.len(), len);
        assert_eq!(v.to_vec(), &pattern[offset as usize..offset as usize + len], "offset {offset}");
        // Writes through an unaligned view land at the right byte.
        let w = s.map_mut(offset, 1).unwrap();
        w.write_at(0, &[0xAB]).unwrap();
        let mut b = [0];
        whole.read_at(offset as usize, &mut b).unwrap();
        assert_eq!(b[0], 0xAB);
        whole.write_at(offset as usize, &pattern[offset as usize..offset as usize + 1]).unwrap();
    }
}

#[test]
fn out_of_range_requests_are_refused() {
    let s = Section::anonymous(10_000).unwrap();
    assert!(matches!(s.map(0, 0), Err(MapError::ZeroLength)));
    assert!(matches!(s.map(0, 10_001), Err(MapError::OutOfRange { offset: 0, len: 10_001, size: 10_000 })));
    assert!(matches!(s.map(9_999, 2), Err(MapError::OutOfRange { .. })));
    assert!(matches!(s.map(10_000, 1), Err(MapError::OutOfRange { .. })));
    assert!(matches!(s.map(u64::MAX, 1), Err(MapError::OutOfRange { .. })));
    assert!(matches!(s.map_mut(u64::MAX - 1, usize::MAX), Err(MapError::OutOfRange { .. })));
    assert!(s.map(9_999, 1).is_ok());

    let v = s.map_mut(3, 100).unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(v.read_at(91, &mut buf), Err(AccessError::OutOfRange { offset: 91, len: 10, view_len: 100 }));
    assert!(v.read_at(90, &mut buf).is_ok());
    assert!(matches!(v.write_at(usize::MAX, b"x"), Err(AccessError::OutOfRange { .. })));
    // The view starts at byte 3 of a page-aligned mapping: offset 1 is
    // 4-byte aligned, offset 0 is not.
    assert!(matches!(v.atomic_u32(0), Err(AccessError::Misaligned { align: 4, .. })));
    assert!(v.atomic_u32(1).is_ok());
    assert!(matches!(v.atomic_u64(1), Err(AccessError::Misaligned { align: 8, .. })));
    assert!(v.atomic_u64(5).is_ok());
    assert!(matches!(v.load_u32(97, Ordering::Relaxed), Err(AccessError::OutOfRange { .. })));
    // A store's orderings are an error, not a panic; a load's all work.
    for order in [Ordering::Release, Ordering::AcqRel] {
        assert_eq!(v.load_u32(1, order), Err(AccessError::LoadOrdering(order)));
        assert_eq!(v.load_u64(5, order), Err(AccessError::LoadOrdering(order)));
    }
    for order in [Ordering::Relaxed, Ordering::Acquire, Ordering::SeqCst] {
        assert!(v.load_u32(1, order).is_ok() && v.load_u64(5, order).is_ok());
    }

    assert!(matches!(Section::anonymous(0), Err(CreateError::InvalidSize { .. })));
    assert!(matches!(Section::create(&unique("zero"), 0), Err(CreateError::InvalidSize { .. })));
    assert!(matches!(Section::anonymous(u64::MAX), Err(CreateError::InvalidSize { .. })));
}

#[test]
fn bad_names_are_refused_and_touch_nothing() {
    let long = "x".repeat(copydata::MAX_NAME_LEN + 1);
    let bad =
        ["", "../copydata-escape", "a/b", "a\\b", ".hidden", "..", "Global\\x", "/abs", "sp ace", "nul\0", "é", &long];
    // The names of copydata's own locks, events and shared values are not
    // sections' (a section could take one of theirs).
    for name in ["copydata.mutex.x", "copydata.event.x", "copydata.shared.x"] {
        let reserved = |e: &NameError| *e == NameError::Reserved;
        assert!(
            matches!(Section::create(name, 4096), Err(CreateError::InvalidName { reason, .. }) if reserved(&reason))
        );
        assert!(matches!(Section::open(name), Err(OpenError::InvalidName { reason, .. }) if reserved(&reason)));
        assert!(
            matches!(Section::open_or_create(name, 1), Err(CreateError::InvalidName { reason, .. }) if reserved(&reason))
        );
    }
    for name in bad {
        assert!(matches!(Section::create(name, 4096), Err(CreateError::InvalidName { .. })), "create {name:?}");
        assert!(matches!(Section::open(name), Err(OpenError::InvalidName { .. })), "open {name:?}");
        assert!(
            matches!(Section::open_or_create(name, 1), Err(CreateError::InvalidName { .. })),
            "open_or_create {name:?}"
        );
        assert!(matches!(copydata::remove(name), Err(copydata::RemoveError::InvalidName { .. })), "remove {name:?}");
    }
    #[cfg(target_os = "linux")]
    {
        assert!(!std::path::Path::new("/dev/copydata-escape").exists());
        assert!(!std::path::Path::new("/dev/shm/a").exists());
    }
}

// ---------------------------------------------------------------- named

#[test]
fn named_sections_open_by_name_from_another_process() {
    let name = unique("byname");
    let s = Section::create(&name, 8192).unwrap();
    assert_eq!(s.name(), Some(name.as_str()));
    assert!(matches!(Section::create(&name, 8192), Err(CreateError::AlreadyExists { .. })));
    put(&s, 0, "hello").unwrap();
    let mut kid = Kid::spawn("open-write", &[&name]);
    assert_eq!(kid.expect("saw"), "8192 hello");
    let pid = kid.id();
    kid.wait_ok();
    assert_eq!(text_at(&s, 100, 64).unwrap(), format!("opened by {pid}"));
    let ro = Section::open_read_only(&name).unwrap();
    assert_eq!(ro.len(), 8192);
    assert!(matches!(ro.map_mut(0, 1), Err(MapError::ReadOnly)));
    drop((s, ro));
    assert!(matches!(Section::open(&name), Err(OpenError::NotFound { .. })));
    #[cfg(target_os = "linux")]
    assert!(!common::in_dev_shm(&name), "the last holder's close removes the object at once");
}

#[test]
fn open_missing_is_not_found() {
    let name = unique("missing");
    match Section::open(&name) {
        Err(OpenError::NotFound { name: n }) => assert_eq!(n, name),
        other => panic!("{other:?}"),
    }
    assert!(matches!(Section::open_read_only(&name), Err(OpenError::NotFound { .. })));
}

#[test]
fn open_or_create_under_a_race_creates_exactly_once() {
    let name = unique("race");
    let mut kids: Vec<Kid> = (0..6).map(|_| Kid::spawn("open-or-create", &[&name])).collect();
    for k in &mut kids {
        k.tell("go");
    }
    let results: Vec<String> = kids.iter_mut().map(|k| k.expect("result")).collect();
    assert_eq!(results.iter().filter(|r| *r == "created").count(), 1, "{results:?}");
    let s = Section::open(&name).unwrap();
    assert_eq!(s.map(0, 8).unwrap().load_u64(0, Ordering::SeqCst).unwrap(), 6);
    drop(s);
    for mut k in kids {
        k.tell("exit");
        k.wait_ok();
    }
    assert!(matches!(Section::open(&name), Err(OpenError::NotFound { .. })));
}

#[test]
fn a_view_keeps_the_section_alive() {
    let name = unique("view");
    let s = Section::create(&name, 4096).unwrap();
    let v = s.map_mut(10, 10).unwrap();
    drop(s);
    v.write_at(0, b"still here").unwrap();
    let again = Section::open(&name).expect("a live view holds the section");
    assert_eq!(text_at(&again, 10, 10).unwrap(), "still here");
    drop((again, v));
    assert!(matches!(Section::open(&name), Err(OpenError::NotFound { .. })));
}

#[test]
fn kill_9_of_every_holder_frees_the_name() {
    for reclaim_by in ["open", "create", "list"] {
        let name = unique("kill");
        let mut creator = Kid::spawn("create-hold", &[&name, "65536"]);
        creator.expect("ready");
        let mut holders: Vec<Kid> = (0..2).map(|_| Kid::spawn("open-hold", &[&name])).collect();
        for h in &mut holders {
            h.expect("ready");
        }
        creator.kill();
        // Still held by the others.
        assert_eq!(text_at(&Section::open_read_only(&name).unwrap(), 0, 64).unwrap(), "made by the creator");
        for h in holders {
            h.kill();
        }
        common::settle_after_kill(&name);
        match reclaim_by {
            "open" => assert!(matches!(Section::open(&name), Err(OpenError::NotFound { .. }))),
            "create" => {
                let fresh = Section::create(&name, 4096).expect("the name is free again");
                assert_eq!(fresh.len(), 4096);
                assert_eq!(fresh.map(0, 64).unwrap().to_vec(), vec![0; 64], "a new, zeroed section");
            }
            _ => {
                if let Ok(list) = copydata::list() {
                    assert!(list.iter().all(|s| s.name != name), "{list:?}");
                }
                assert!(matches!(Section::open(&name), Err(OpenError::NotFound { .. })));
            }
        }
        #[cfg(target_os = "linux")]
        assert!(!common::in_dev_shm(&name), "{reclaim_by}: /dev/shm/{name} left behind");
    }
}

// ---------------------------------------------------------------- inheritance

/// An anonymous, a named and a read-only section, each with its text, to
/// pass to an `inherit-report` child.
struct Three {
    name: String,
    anon: Section,
    named: Section,
    secret: Section,
    frozen: Section,
}

impl Three {
    fn new(tag: &str) -> Three {
        let name = unique(tag);
        let anon = Section::anonymous(4096).unwrap();
        let named = Section::create(&name, 8192).unwrap();
        let secret = Section::anonymous(4096).unwrap();
        put(&anon, 0, "anon").unwrap();
        put(&named, 0, "named").unwrap();
        put(&secret, 0, "secret").unwrap();
        let frozen = secret.read_only().unwrap();
        Three { name, anon, named, secret, frozen }
    }

    /// What the child gets: the two writable ones and the read-only one.
    fn passed(&self) -> [&Section; 3] {
        [&self.anon, &self.named, &self.frozen]
    }

    /// Checks what the child reported and wrote; returns its pid.
    fn check(&self, mut kid: Kid) -> u32 {
        assert_eq!(kid.expect("section"), "0 - 4096 ReadWrite anon");
        assert_eq!(kid.expect("section"), format!("1 {} 8192 ReadWrite named", self.name));
        assert_eq!(kid.expect("section"), "2 - 4096 ReadOnly secret");
        kid.expect("done");
        let pid = kid.id();
        kid.wait_ok();
        assert_eq!(text_at(&self.anon, 0, 64).unwrap(), format!("child {pid} wrote 0"));
        assert_eq!(text_at(&self.named, 0, 64).unwrap(), format!("child {pid} wrote 1"));
        assert_eq!(text_at(&self.secret, 0, 64).unwrap(), "secret");
        pid
    }
}

#[test]
fn inheritance_passes_exactly_the_given_sections() {
    let three = Three::new("inherit");
    let pid = three.check(Kid::spawn_with("inherit-report", &[], &three.passed()));
    // The child closing its handle does not end the section the parent holds.
    let again = Section::open(&three.name).expect("still held by the parent");
    assert_eq!(text_at(&again, 0, 64).unwrap(), format!("child {pid} wrote 1"));
}

#[test]
fn sections_made_ready_for_a_child_spawned_by_hand_pass_to_it() {
    let three = Three::new("inherit-by-hand");
    let passed = copydata::Inheritance::new(&three.passed()).unwrap();
    assert_eq!(passed.len(), 3);
    let cmd = command_inheriting("inherit-report", &passed);
    #[cfg(windows)]
    assert_eq!(passed.handles().len(), 3);
    let kid = common::Kid::start(cmd, "inherit-report", &[]);
    drop(passed);
    three.check(kid);
}

/// A child of `role` started the way a spawner other than
/// `spawn_with_sections` does it: the token of `passed` in the environment,
/// its duplicates kept open in the child (Linux: close-on-exec cleared
/// after the fork; Windows: std creates the process with bInheritHandles,
/// and the duplicates are inheritable while `passed` lives).
fn command_inheriting(role: &str, passed: &copydata::Inheritance) -> std::process::Command {
    let mut cmd = common::child_command(role, &[]);
    cmd.env(copydata::INHERIT_VAR, passed.token());
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt as _;
        let fds: Vec<i32> = passed.fds().map(|fd| fd.as_raw_fd()).collect();
        // SAFETY: only fcntl (async-signal-safe) on descriptors open at the
        // fork, which `passed` keeps open until after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    cmd
}

#[test]
fn a_token_without_the_duplicates_kept_open_is_refused() {
    // A spawner that sets the token but lets the duplicates close at exec
    // (Linux) or does not keep them (they are gone before the spawn):
    // the child refuses the token instead of taking whatever has those
    // numbers.
    let s = Section::anonymous(4096).unwrap();
    let passed = copydata::Inheritance::new(&[&s]).unwrap();
    let token = passed.token().to_owned();
    drop(passed);
    let mut cmd = common::child_command("take", &[]);
    cmd.env(copydata::INHERIT_VAR, &token);
    let mut kid = common::Kid::start(cmd, "take", &[]);
    assert_eq!(kid.expect("took"), "stale taken");
    kid.wait_ok();
    assert!(copydata::Inheritance::new(&[]).unwrap().is_empty());
}

#[test]
fn a_child_holds_an_inherited_section_after_the_parent_lets_go() {
    let name = unique("inherit-hold");
    let named = Section::create(&name, 4096).unwrap();
    put(&named, 0, "from the parent").unwrap();
    // The child does not even take its sections: holding the inherited
    // handle is enough.
    let mut kid = Kid::spawn_with("hold-inherited", &[], &[&named]);
    kid.expect("ready");
    drop(named);
    let again = Section::open(&name).expect("the child still holds it");
    assert_eq!(text_at(&again, 0, 64).unwrap(), "from the parent");
    drop(again);
    kid.kill();
    common::settle_after_kill(&name);
    assert!(matches!(Section::open(&name), Err(OpenError::NotFound { .. })));
}

#[test]
fn sections_of_any_size_pass_to_a_child() {
    let odd = Section::anonymous(1000).unwrap();
    let named = Section::create(&unique("odd"), 12_345).unwrap();
    put(&odd, 0, "odd").unwrap();
    put(&named, 0, "named").unwrap();
    let mut kid = Kid::spawn_with("inherit-report", &[], &[&odd, &named]);
    assert_eq!(kid.expect("section"), "0 - 1000 ReadWrite odd");
    let name = named.name().unwrap();
    assert_eq!(kid.expect("section"), format!("1 {name} 12345 ReadWrite named"));
    kid.expect("done");
    kid.wait_ok();
}

#[test]
fn opening_by_name_reports_the_size() {
    let name = unique("size");
    let _s = Section::create(&name, 12_345).unwrap();
    let opened = Section::open(&name).unwrap();
    // Windows keeps only the size rounded up to a page; Linux the exact one.
    let expect = if cfg!(windows) { 16_384 } else { 12_345 };
    assert_eq!(opened.len(), expect);
    assert_eq!(
        copydata::list().ok().and_then(|l| l.into_iter().find(|i| i.name == name)).map(|i| i.size),
        Some(expect)
    );
}

#[test]
fn a_child_without_sections_gets_none() {
    let _held = Section::anonymous(4096).unwrap();
    let mut kid = Kid::spawn("take", &[]);
    assert_eq!(kid.expect("took"), "ok:0 ok:0");
    kid.wait_ok();
}

#[test]
fn a_forged_or_leaked_token_is_refused() {
    // A grandchild inherits the environment (and so the token) but not the
    // handles: it must refuse the token rather than take whatever has those
    // numbers.
    let s = Section::anonymous(4096).unwrap();
    let mut kid = Kid::spawn_with("take-then-spawn", &[], &[&s]);
    assert_eq!(kid.expect("grandchild"), "1 stale taken");
    kid.wait_ok();

    for (token, expect) in [
        ("garbage", "malformed"),
        ("2;1:2:3", "malformed"),
        ("1;x:y:z", "malformed"),
        ("1;5:1:2:bad/name", "malformed"),
        ("1;5:1:2,5:1:2", "malformed"),
        // One descriptor spelled twice would be two owners of it.
        ("1;5:1:2,05:1:2", "malformed"),
        ("1;+5:1:2", "malformed"),
        ("1;1000:1:2", "stale"),
        ("1;1000:4096:w", "stale"),
    ] {
        let mut cmd = common::child_command("take", &[]);
        cmd.env(copydata::INHERIT_VAR, token);
        let mut kid = Kid::start(cmd, "take", &[]);
        let took = kid.expect("took");
        kid.wait_ok();
        // Linux and Windows tokens have different fields, so a token of one
        // form is malformed for the other; both must refuse it.
        let (first, second) = took.split_once(' ').unwrap();
        assert!(first == expect || first == "malformed", "{token:?}: {took}");
        assert_eq!(second, "taken", "{token:?}");
    }
}

/// A descriptor that is not a memory object (here a pipe, inherited with
/// its true device and inode) is refused, not taken as an empty section.
#[cfg(target_os = "linux")]
#[test]
fn an_inherited_pipe_is_not_taken_for_a_section() {
    use std::os::fd::AsRawFd;
    let (reader, _writer) = std::io::pipe().unwrap();
    // An inheritable duplicate at 3 or above, as a parent would pass it.
    let fd = rustix::io::fcntl_dupfd_cloexec(&reader, 10).unwrap();
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
    let st = rustix::fs::fstat(&fd).unwrap();
    let token = format!("1;{}:{}:{}", fd.as_raw_fd(), st.st_dev, st.st_ino);
    let mut cmd = common::child_command("take", &[]);
    cmd.env(copydata::INHERIT_VAR, &token);
    let mut kid = Kid::start(cmd, "take", &[]);
    let took = kid.expect("took");
    kid.wait_ok();
    drop(fd);
    assert_eq!(took, "malformed taken", "{token}");
}

/// A token whose last entry is stale: the descriptors of the entries
/// before it, already checked, are closed, not left open (and inheritable)
/// in the child.
#[cfg(target_os = "linux")]
#[test]
fn a_stale_entry_leaves_no_earlier_descriptor_open() {
    let s = Section::anonymous(4096).unwrap();
    let passed = copydata::Inheritance::new(&[&s]).unwrap();
    let mut cmd = command_inheriting("take-stale-then-look", &passed);
    cmd.env(copydata::INHERIT_VAR, format!("{},1000:1:2", passed.token()));
    let mut kid = common::Kid::start(cmd, "take-stale-then-look", &[]);
    assert_eq!(kid.expect("took"), "stale closed,closed");
    kid.wait_ok();
}

/// A token whose first entry is stale: the descriptors of the entries
/// after it, which nothing could take any more, are closed too, not left
/// open (and inheritable) in the child.
#[cfg(target_os = "linux")]
#[test]
fn a_stale_entry_leaves_no_later_descriptor_open() {
    let (a, b) = (Section::anonymous(4096).unwrap(), Section::anonymous(4096).unwrap());
    let passed = copydata::Inheritance::new(&[&a, &b]).unwrap();
    let mut cmd = command_inheriting("take-stale-then-look", &passed);
    let (version, entries) = passed.token().split_once(';').unwrap();
    cmd.env(copydata::INHERIT_VAR, format!("{version};1000:1:2,{entries}"));
    let mut kid = common::Kid::start(cmd, "take-stale-then-look", &[]);
    assert_eq!(kid.expect("took"), "stale closed,closed,closed");
    kid.wait_ok();
}

// ---------------------------------------------------------------- read-only

#[test]
fn read_only_hand_out_is_enforced_in_the_receiver() {
    let s = Section::anonymous(64 * 1024).unwrap();
    put(&s, 0, "version 1").unwrap();
    let frozen = s.read_only().unwrap();
    assert_eq!(frozen.access(), Access::ReadOnly);
    let mut kid = Kid::spawn_with("probe-read-only", &[], &[&frozen]);
    assert_eq!(kid.expect("read"), "version 1");
    let refused = kid.expect("refused");
    // The owner still writes, also through views made after the hand-out.
    put(&s, 0, "version 2").unwrap();
    kid.tell("check");
    assert_eq!(kid.expect("read"), "version 2");
    kid.wait_ok();
    eprintln!("refused in the receiver: {refused}");
}

/// A memfd made elsewhere (not by copydata, so without size seals) and
/// wrapped with `from_file`: its read-only hand-out is sealed like an
/// anonymous section's, since its holder could otherwise reopen it
/// writable through `/proc`. One that cannot be sealed is refused, and so
/// is an unlinked file.
#[cfg(target_os = "linux")]
#[test]
fn read_only_hand_out_of_unlinked_memory_is_sealed_or_refused() {
    use rustix::fs::{MemfdFlags, Mode, OFlags};
    use std::fs::File;

    let memfd = |flags: MemfdFlags| {
        let name = if flags.is_empty() { "copydata-test-unsealable" } else { "copydata-test-foreign" };
        let fd = rustix::fs::memfd_create(name, flags | MemfdFlags::CLOEXEC).unwrap();
        let file = File::from(fd);
        file.set_len(64 * 1024).unwrap();
        file
    };
    let sealable = memfd(MemfdFlags::ALLOW_SEALING);
    let s = Section::from_file(&sealable, Access::ReadWrite).unwrap();
    put(&s, 0, "version 1").unwrap();
    let frozen = s.read_only().unwrap();
    let mut kid = Kid::spawn_with("probe-read-only", &[], &[&frozen]);
    assert_eq!(kid.expect("read"), "version 1");
    kid.expect("refused");
    put(&s, 0, "version 2").unwrap();
    kid.tell("check");
    assert_eq!(kid.expect("read"), "version 2");
    kid.wait_ok();

    let unsealable = memfd(MemfdFlags::empty());
    let s = Section::from_file(&unsealable, Access::ReadWrite).unwrap();
    let refused = s.read_only().unwrap_err().to_string();
    assert!(refused.contains("cannot be sealed"), "{refused}");
    // Refused before anything was mapped for it.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(!maps.contains("copydata-test-unsealable"), "a failed read_only left a mapping:\n{maps}");

    let dir = std::env::temp_dir();
    if let Ok(fd) = rustix::fs::open(&dir, OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, Mode::RUSR | Mode::WUSR) {
        let file = File::from(fd);
        file.set_len(4096).unwrap();
        let s = Section::from_file(&file, Access::ReadWrite).unwrap();
        let refused = s.read_only().unwrap_err().to_string();
        assert!(refused.contains("cannot be sealed"), "{refused}");
    }
    // A linked file stays reachable by its path (as documented): its
    // read-only hand-out is a read-only descriptor, not refused.
    let path = dir.join(unique("linked"));
    std::fs::write(&path, [0u8; 4096]).unwrap();
    let linked = Section::from_path(&path, Access::ReadWrite).unwrap();
    assert_eq!(linked.read_only().unwrap().access(), Access::ReadOnly);
    std::fs::remove_file(&path).unwrap();
}

/// A section already handed out read-only (so sealed against new writable
/// mappings), passed writable to a child together with that hand-out, as
/// the `CommandExt` docs show: the child can make read-only hand-outs of
/// both.
#[test]
fn a_sealed_section_can_be_handed_out_read_only_again() {
    let s = Section::anonymous(4096).unwrap();
    put(&s, 0, "sealed").unwrap();
    let frozen = s.read_only().unwrap();
    let mut kid = Kid::spawn_with("read-only-again", &[], &[&s, &frozen]);
    assert_eq!(kid.expect("seen"), "ReadOnly:sealed,ReadOnly:sealed");
    assert_eq!(kid.expect("writable"), if cfg!(target_os = "linux") { "Sealed" } else { "writable" });
    kid.wait_ok();
}

/// One Command spawned twice: each child gets the sections of its own
/// spawn only, and a plain spawn after them gets none (nor the token).
#[test]
fn a_command_spawned_again_passes_only_the_new_sections() {
    use copydata::CommandExt;
    let (secret, public) = (Section::anonymous(4096).unwrap(), Section::anonymous(4096).unwrap());
    put(&secret, 0, "secret").unwrap();
    put(&public, 0, "public").unwrap();
    let public = public.read_only().unwrap();
    let mut cmd = common::child_command("what-came", &[]);
    let linux = cfg!(target_os = "linux");
    for (sections, expect) in [(vec![&secret], "secret"), (vec![&public], "public")] {
        let mut kid = Kid::adopt(cmd.spawn_with_sections(&sections).unwrap(), "what-came");
        let passed = if linux { 1 } else { 0 };
        assert_eq!(kid.expect("came"), format!("{passed} {expect}"));
        kid.wait_ok();
    }
    let mut kid = Kid::adopt(cmd.spawn().unwrap(), "what-came");
    assert_eq!(kid.expect("came"), "0 none");
    kid.wait_ok();
}

fn probe_read_only() -> Result<(), String> {
    let sections = copydata::inherited_sections().map_err(fail)?;
    let s = &sections[0];
    say("read", &text_at(s, 0, 64)?);
    if !matches!(s.map_mut(0, 1), Err(MapError::ReadOnly)) {
        return Err("map_mut was allowed".into());
    }
    let refused = raw_upgrade_attempts(s)?;
    say("refused", &refused.join(","));
    assert_eq!(hear(), "check");
    say("read", &text_at(s, 0, 64)?);
    Ok(())
}

/// Tries every way around the read-only handle; each must fail.
#[cfg(target_os = "linux")]
fn raw_upgrade_attempts(s: &Section) -> Result<Vec<&'static str>, String> {
    use rustix::fs::{FallocateFlags, Mode, OFlags};
    use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
    use std::os::fd::{AsFd, AsRawFd};

    let mut refused = Vec::new();
    let fd = s.as_fd();
    let rw = ProtFlags::READ | ProtFlags::WRITE;
    // SAFETY: a fresh mapping at a kernel-chosen address; unmapped at once if
    // it (wrongly) succeeds.
    let direct = unsafe { rustix::mm::mmap(std::ptr::null_mut(), 4096, rw, MapFlags::SHARED, fd, 0) };
    if let Ok(p) = direct {
        // SAFETY: unmapping the mapping just made.
        let _ = unsafe { rustix::mm::munmap(p, 4096) };
        return Err("mmap(PROT_WRITE) of the descriptor succeeded".into());
    }
    refused.push("mmap-write");
    if rustix::io::write(fd, b"x").is_ok() {
        return Err("write() succeeded".into());
    }
    refused.push("write");
    // SAFETY: a fresh read-only mapping, unmapped below.
    let p = unsafe { rustix::mm::mmap(std::ptr::null_mut(), 4096, ProtFlags::READ, MapFlags::SHARED, fd, 0) }
        .map_err(fail)?;
    // SAFETY: changes protection of our own fresh mapping only.
    let upgraded = unsafe { rustix::mm::mprotect(p, 4096, MprotectFlags::READ | MprotectFlags::WRITE) };
    // SAFETY: unmapping the mapping just made.
    let _ = unsafe { rustix::mm::munmap(p, 4096) };
    if upgraded.is_ok() {
        return Err("mprotect(PROT_WRITE) succeeded".into());
    }
    refused.push("mprotect");
    // Re-opening through /proc may give a read-write descriptor, but the
    // seals still refuse every write path.
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    if let Ok(rw_fd) = rustix::fs::open(path.as_str(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        // SAFETY: a fresh mapping at a kernel-chosen address; unmapped at
        // once if it (wrongly) succeeds.
        let mapped = unsafe { rustix::mm::mmap(std::ptr::null_mut(), 4096, rw, MapFlags::SHARED, &rw_fd, 0) };
        if let Ok(p) = mapped {
            // SAFETY: unmapping the mapping just made.
            let _ = unsafe { rustix::mm::munmap(p, 4096) };
            return Err("mmap(PROT_WRITE) of a re-opened descriptor succeeded".into());
        }
        if rustix::io::write(&rw_fd, b"x").is_ok() {
            return Err("write() to a re-opened descriptor succeeded".into());
        }
        if rustix::fs::ftruncate(&rw_fd, 1).is_ok() || rustix::fs::ftruncate(&rw_fd, 1 << 30).is_ok() {
            return Err("ftruncate succeeded".into());
        }
        if rustix::fs::fallocate(&rw_fd, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, 0, 4096).is_ok() {
            return Err("punching a hole succeeded".into());
        }
        refused.push("reopen-rw");
    } else {
        refused.push("reopen");
    }
    Ok(refused)
}

#[cfg(windows)]
fn raw_upgrade_attempts(s: &Section) -> Result<Vec<&'static str>, String> {
    use std::os::windows::io::{AsHandle, AsRawHandle};
    use windows_sys::Win32::Foundation::{CloseHandle, DuplicateHandle, HANDLE};
    use windows_sys::Win32::System::Memory::{
        FILE_MAP_ALL_ACCESS, FILE_MAP_READ, FILE_MAP_WRITE, MapViewOfFile, PAGE_READWRITE, UnmapViewOfFile,
        VirtualProtect,
    };
    use windows_sys::Win32::System::Threading::GetCurrentProcess;

    let mut refused = Vec::new();
    let h = s.as_handle().as_raw_handle() as HANDLE;
    // SAFETY: maps a view of our own section handle; unmapped if it succeeds.
    let view = unsafe { MapViewOfFile(h, FILE_MAP_WRITE, 0, 0, 4096) };
    if !view.Value.is_null() {
        // SAFETY: unmapping the view just made.
        unsafe { UnmapViewOfFile(view) };
        return Err("MapViewOfFile(FILE_MAP_WRITE) succeeded".into());
    }
    refused.push("map-write");
    for rights in [FILE_MAP_WRITE | FILE_MAP_READ, FILE_MAP_ALL_ACCESS] {
        let mut dup: HANDLE = std::ptr::null_mut();
        // SAFETY: duplicates our own handle within this process.
        let ok = unsafe { DuplicateHandle(GetCurrentProcess(), h, GetCurrentProcess(), &mut dup, rights, 0, 0) };
        if ok != 0 {
            // SAFETY: `dup` is a handle we own.
            let view = unsafe { MapViewOfFile(dup, FILE_MAP_WRITE, 0, 0, 4096) };
            let writable = !view.Value.is_null();
            if writable {
                // SAFETY: unmapping the view just made.
                unsafe { UnmapViewOfFile(view) };
            }
            // SAFETY: closing the handle we own.
            unsafe { CloseHandle(dup) };
            if writable {
                return Err(format!("DuplicateHandle({rights:#x}) gave write access"));
            }
        }
    }
    refused.push("duplicate");
    // SAFETY: a read-only view of our own section.
    let view = unsafe { MapViewOfFile(h, FILE_MAP_READ, 0, 0, 4096) };
    if view.Value.is_null() {
        return Err("read-only MapViewOfFile failed".into());
    }
    let mut old = 0;
    // SAFETY: changes the protection of our own fresh view only.
    let ok = unsafe { VirtualProtect(view.Value, 4096, PAGE_READWRITE, &mut old) };
    // SAFETY: unmapping the view just made.
    unsafe { UnmapViewOfFile(view) };
    if ok != 0 {
        return Err("VirtualProtect(PAGE_READWRITE) succeeded".into());
    }
    refused.push("protect");
    Ok(refused)
}

// ---------------------------------------------------------------- files

#[test]
fn file_backed_sections_reach_the_file() {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("{}.bin", unique("file")));
    let _cleanup = Cleanup(path.clone());
    let size = 300_000usize;
    std::fs::write(&path, vec![b'.'; size]).unwrap();
    {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let s = Section::from_file(&file, Access::ReadWrite).unwrap();
        drop(file);
        assert_eq!(s.len(), size as u64);
        let v = s.map_mut(65_537, 5).unwrap();
        v.write_at(0, b"HELLO").unwrap();
        v.flush().unwrap();
    }
    let mut kid = Kid::spawn("file-write", &[path.to_str().unwrap(), "131075", "child"]);
    kid.expect("done");
    kid.wait_ok();
    let data = std::fs::read(&path).unwrap();
    assert_eq!(&data[65_537..65_542], b"HELLO");
    assert_eq!(&data[131_075..131_080], b"child");
    assert_eq!(data.iter().filter(|&&b| b != b'.').count(), 10);

    let ro_file = std::fs::File::open(&path).unwrap();
    let ro = Section::from_file(&ro_file, Access::ReadOnly).unwrap();
    assert_eq!(ro.map(65_537, 5).unwrap().to_vec(), b"HELLO");
    assert!(matches!(ro.map_mut(0, 1), Err(MapError::ReadOnly)));
    assert!(Section::from_file(&ro_file, Access::ReadWrite).is_err());
    // A file open for writing only cannot be mapped at all: refused at
    // once rather than a section whose every view fails.
    let wo_file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for access in [Access::ReadWrite, Access::ReadOnly] {
        let refused = Section::from_file(&wo_file, access);
        assert!(matches!(refused, Err(CreateError::PermissionDenied { .. })), "{refused:?}");
    }
    drop(ro);

    let empty = dir.join(format!("{}.empty", unique("file")));
    let _cleanup2 = Cleanup(empty.clone());
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&empty).unwrap();
    assert!(matches!(Section::from_file(&f, Access::ReadWrite), Err(CreateError::InvalidSize { .. })));
}

/// Sections in memory say so; one backed by a file on a disk does not
/// (Linux: unless its directory is on a memory file system, as `stat -f`
/// says), and a hand-over keeps what it is.
#[test]
fn a_section_says_whether_its_pages_live_in_memory() {
    let anonymous = Section::anonymous(4096).unwrap();
    assert!(anonymous.is_memory_backed());
    assert!(anonymous.read_only().unwrap().is_memory_backed());
    let name = unique("in-memory");
    let named = Section::create(&name, 4096).unwrap();
    assert!(named.is_memory_backed());
    assert!(Section::open(&name).unwrap().is_memory_backed());
    // A file under the build directory: on the disk the project lives on.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{}.bin", unique("on-disk")));
    let _cleanup = Cleanup(path.clone());
    std::fs::write(&path, [1u8; 4096]).unwrap();
    let file = Section::from_path(&path, Access::ReadWrite).unwrap();
    #[cfg(target_os = "linux")]
    let on_disk = {
        let out = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(&dir).output().unwrap();
        let fs = String::from_utf8(out.stdout).unwrap();
        !["tmpfs", "ramfs", "hugetlbfs"].contains(&fs.trim())
    };
    #[cfg(windows)]
    let on_disk = true;
    assert_eq!(file.is_memory_backed(), !on_disk);
    assert_eq!(file.read_only().unwrap().is_memory_backed(), !on_disk);
}

#[test]
fn a_section_opens_a_file_by_its_path() {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("{}.bin", unique("path")));
    let _cleanup = Cleanup(path.clone());
    std::fs::write(&path, vec![b'.'; 10_000]).unwrap();
    let s = Section::from_path(&path, Access::ReadWrite).unwrap();
    assert_eq!(s.len(), 10_000);
    s.map_mut(9_000, 4).unwrap().write_at(0, b"PATH").unwrap();
    drop(s);
    assert_eq!(&std::fs::read(&path).unwrap()[9_000..9_004], b"PATH");
    let ro = Section::from_path(&path, Access::ReadOnly).unwrap();
    assert_eq!(ro.access(), Access::ReadOnly);
    assert!(matches!(ro.map_mut(0, 1), Err(MapError::ReadOnly)));

    let missing = dir.join(format!("{}.missing", unique("path")));
    assert!(matches!(Section::from_path(&missing, Access::ReadOnly), Err(CreateError::NoSuchFile { .. })));
    assert!(matches!(Section::from_path(&dir, Access::ReadOnly), Err(CreateError::NotAFile { .. })));
    let empty = dir.join(format!("{}.empty", unique("path")));
    let _cleanup2 = Cleanup(empty.clone());
    std::fs::File::create(&empty).unwrap();
    assert!(matches!(Section::from_path(&empty, Access::ReadWrite), Err(CreateError::InvalidSize { size: 0, .. })));
    // A FIFO is refused at once, not waited on for a writer.
    #[cfg(target_os = "linux")]
    {
        let fifo = dir.join(format!("{}.fifo", unique("path")));
        let _cleanup3 = Cleanup(fifo.clone());
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(Section::from_path(&fifo, Access::ReadOnly), Err(CreateError::NotAFile { .. })));
    }
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------- hand-over

/// Two sibling processes, neither the other's parent: the sender hands the
/// receiver a read-write, a read-only and a named section.
#[test]
fn hand_over_between_unrelated_processes() {
    let name = unique("handover-named");
    #[cfg(target_os = "linux")]
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("handover")));
    #[cfg(target_os = "linux")]
    let _cleanup = Cleanup(sock.clone());
    #[cfg(target_os = "linux")]
    let (mut recv, mut send) = {
        let mut recv = Kid::spawn("handover-recv", &[sock.to_str().unwrap()]);
        recv.expect("ready");
        let send = Kid::spawn("handover-send", &[sock.to_str().unwrap(), &name]);
        (recv, send)
    };
    #[cfg(windows)]
    let (mut recv, mut send) = {
        let mut recv = Kid::spawn("handover-recv", &[]);
        let pid = recv.expect("ready");
        let mut send = Kid::spawn("handover-send", &[&pid, &name]);
        let handles = send.expect("handles");
        recv.tell(&handles);
        (recv, send)
    };
    assert_eq!(recv.expect("got"), format!("from the sender|read-only data|named {name}"));
    recv.wait_ok();
    // The receiver has closed its handles; the sender's named section lives on.
    send.tell("check");
    assert_eq!(send.expect("back"), "from the receiver|still named");
    send.wait_ok();
    assert!(matches!(Section::open(&name), Err(OpenError::NotFound { .. })));
}

fn handover_recv(args: &[String]) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    let got = {
        let listener = std::os::unix::net::UnixListener::bind(&args[0]).map_err(fail)?;
        say("ready", "");
        let (stream, _) = listener.accept().map_err(fail)?;
        stream.set_read_timeout(Some(common::WAIT)).map_err(fail)?;
        (0..3).map(|_| copydata::os::linux::recv_section(&stream).map_err(fail)).collect::<Result<Vec<_>, _>>()?
    };
    #[cfg(windows)]
    let got = {
        let _ = args;
        say("ready", &std::process::id().to_string());
        let line = hear();
        let (numbers, name) = line.rsplit_once(' ').unwrap();
        let v: Vec<u64> = numbers.split(' ').map(|x| x.parse().unwrap()).collect();
        let names = [None, None, Some(name)];
        (0..3)
            .map(|i| {
                // SAFETY: the sender duplicated these handles into this
                // process for this test alone.
                unsafe { copydata::os::windows::adopt_section(v[2 * i], v[2 * i + 1], Access::ReadWrite, names[i]) }
                    .map_err(fail)
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let [rw, ro, named] = <[Section; 3]>::try_from(got).map_err(|_| "three sections".to_string())?;
    if !matches!(ro.map_mut(0, 1), Err(MapError::ReadOnly)) {
        return Err("the read-only hand-over was writable".into());
    }
    let named_name = named.name().unwrap_or("-").to_string();
    say("got", &format!("{}|{}|{} {named_name}", text_at(&rw, 0, 64)?, text_at(&ro, 0, 64)?, text_at(&named, 0, 64)?));
    put(&rw, 0, "from the receiver")?;
    Ok(())
}

fn handover_send(args: &[String]) -> Result<(), String> {
    let rw = Section::anonymous(4096).map_err(fail)?;
    let data = Section::anonymous(8192).map_err(fail)?;
    let named = Section::create(&args[1], 4096).map_err(fail)?;
    put(&rw, 0, "from the sender")?;
    put(&data, 0, "read-only data")?;
    put(&named, 0, "named")?;
    let ro = data.read_only().map_err(fail)?;
    #[cfg(target_os = "linux")]
    {
        let stream = std::os::unix::net::UnixStream::connect(&args[0]).map_err(fail)?;
        for s in [&rw, &ro, &named] {
            copydata::os::linux::send_section(&stream, s).map_err(fail)?;
        }
    }
    #[cfg(windows)]
    {
        let pid: u32 = args[0].parse().map_err(fail)?;
        let mut line = String::new();
        for s in [&rw, &ro, &named] {
            let d = copydata::os::windows::duplicate_into(s, pid).map_err(fail)?;
            line.push_str(&format!("{} {} ", d.handle, d.len));
        }
        line.push_str(&args[1]);
        say("handles", &line);
    }
    assert_eq!(hear(), "check");
    let still = Section::open(&args[1]).map(|_| "still named").map_err(fail)?;
    say("back", &format!("{}|{still}", text_at(&rw, 0, 64)?));
    Ok(())
}

/// `recv_section` treats what arrives as untrusted: every malformed frame is
/// refused with `Malformed` (closing any descriptors that came), never a
/// panic or a section that does not match.
#[cfg(target_os = "linux")]
#[test]
fn hostile_hand_over_frames_are_refused() {
    use copydata::HandoverError;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    let memfd = Section::anonymous(4096).unwrap();
    let frame = |magic: &[u8], flags: u8, len: u64, name: &[u8]| {
        let mut f = magic.to_vec();
        f.push(flags);
        f.extend_from_slice(&len.to_le_bytes());
        f.push(name.len() as u8);
        f.extend_from_slice(name);
        f
    };
    let send = |bytes: &[u8], fds: usize| {
        let (a, b) = UnixStream::pair().unwrap();
        let fds: Vec<_> = (0..fds).map(|_| memfd.as_fd()).collect();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(&fds));
        }
        rustix::net::sendmsg(&a, &[std::io::IoSlice::new(bytes)], &mut control, SendFlags::empty()).unwrap();
        drop(a);
        copydata::os::linux::recv_section(&b)
    };
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("no descriptor", frame(b"CDS1", 0, 4096, b""), 0),
        ("two descriptors", frame(b"CDS1", 0, 4096, b""), 2),
        ("bad magic", frame(b"XXXX", 0, 4096, b""), 1),
        ("unknown flags", frame(b"CDS1", 0x40, 4096, b""), 1),
        ("size larger than the object", frame(b"CDS1", 0, 1 << 30, b""), 1),
        ("zero size", frame(b"CDS1", 0, 0, b""), 1),
        ("named flag without a name", frame(b"CDS1", 2, 4096, b""), 1),
        ("a name without the flag", frame(b"CDS1", 0, 4096, b"x"), 1),
        ("a bad name", frame(b"CDS1", 2, 4096, b"../x"), 1),
        ("a short name", frame(b"CDS1", 2, 4096, b"abc")[..16].to_vec(), 1),
        ("a short header", b"CDS1\x00".to_vec(), 1),
    ];
    for (what, bytes, fds) in cases {
        match send(&bytes, fds) {
            Err(HandoverError::Malformed(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    // A peer that closes without sending anything.
    let (a, b) = UnixStream::pair().unwrap();
    drop(a);
    assert!(matches!(copydata::os::linux::recv_section(&b), Err(HandoverError::PeerClosed)));
    // And the well-formed frame is accepted.
    let s = send(&frame(b"CDS1", 1, 4096, b""), 1).unwrap();
    assert_eq!((s.len(), s.access()), (4096, copydata::Access::ReadOnly));
}

/// The `_checked` hand-overs wait in slices and end with the check's error:
/// a receive with nothing coming, one stopped part-way through a frame, and
/// a send to a peer that does not read. Without an error they go on as the
/// plain calls do.
#[cfg(target_os = "linux")]
#[test]
fn checked_hand_overs_end_with_their_checks_error() {
    use copydata::HandoverError;
    use copydata::os::linux::{recv_section_checked, send_section, send_section_checked};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    let slice = Duration::from_millis(20);
    let give_up_after = |looks: u32| {
        let mut n = 0;
        move || {
            n += 1;
            if n >= looks { Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "given up")) } else { Ok(()) }
        }
    };
    let given_up = |r: Result<_, HandoverError>| match r {
        Err(HandoverError::Io(e)) => e.kind() == std::io::ErrorKind::Interrupted && e.to_string() == "given up",
        _ => false,
    };
    // Nothing comes.
    let (a, b) = UnixStream::pair().unwrap();
    assert!(given_up(recv_section_checked(&b, slice, give_up_after(3)).map(drop)));
    // Part of a header comes, then nothing.
    (&a).write_all(b"CDS1").unwrap();
    assert!(given_up(recv_section_checked(&b, slice, give_up_after(3)).map(drop)));
    drop((a, b));
    // A peer that does not read: the socket fills, then the check ends it.
    let s = Section::anonymous(4096).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    while (&a).write(&[0u8; 4096]).is_ok() {}
    a.set_nonblocking(false).unwrap();
    assert!(given_up(send_section_checked(&a, &s, slice, give_up_after(3))));
    // With checks that pass, a frame goes through as with the plain calls.
    let (a, b) = UnixStream::pair().unwrap();
    send_section(&a, &s).unwrap();
    let got = recv_section_checked(&b, slice, || Ok(())).unwrap();
    assert_eq!(got.len(), 4096);
    send_section_checked(&a, &s, slice, || Ok(())).unwrap();
    assert_eq!(recv_section_checked(&b, slice, || Ok(())).unwrap().len(), 4096);
}

/// The check's error ends a `_checked` hand-over as it is, whatever its
/// kind: not taken for a peer that hung up (`BrokenPipe`), a malformed
/// frame (`InvalidData`) or a name cut short (`UnexpectedEof`).
#[cfg(target_os = "linux")]
#[test]
fn checked_hand_overs_pass_their_checks_error_on_as_it_is() {
    use copydata::HandoverError;
    use copydata::os::linux::{recv_section_checked, send_section_checked};
    use std::io::{ErrorKind, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    let slice = Duration::from_millis(5);
    let fails = |kind: ErrorKind| move || Err(std::io::Error::new(kind, "the check's own"));
    let as_is = |r: Result<(), HandoverError>, kind: ErrorKind| match r {
        Err(HandoverError::Io(e)) => e.kind() == kind && e.to_string() == "the check's own",
        _ => false,
    };
    for kind in [ErrorKind::BrokenPipe, ErrorKind::ConnectionReset, ErrorKind::InvalidData, ErrorKind::UnexpectedEof] {
        // Nothing comes.
        let (_a, b) = UnixStream::pair().unwrap();
        assert!(as_is(recv_section_checked(&b, slice, fails(kind)).map(drop), kind), "{kind:?}: nothing came");
        // A header announcing a name, then nothing.
        let (a, b) = UnixStream::pair().unwrap();
        let s = Section::anonymous(4096).unwrap();
        {
            use std::os::fd::AsFd;
            let mut header = b"CDS1".to_vec();
            header.push(2);
            header.extend_from_slice(&4096u64.to_le_bytes());
            header.push(10);
            let fd = s.as_fd();
            let fds = [fd];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
            rustix::net::sendmsg(&a, &[std::io::IoSlice::new(&header)], &mut control, rustix::net::SendFlags::empty())
                .unwrap();
        }
        assert!(as_is(recv_section_checked(&b, slice, fails(kind)).map(drop), kind), "{kind:?}: the name did not come");
        drop((a, b));
        // A peer that does not read.
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        while (&a).write(&[0u8; 4096]).is_ok() {}
        a.set_nonblocking(false).unwrap();
        assert!(as_is(send_section_checked(&a, &s, slice, fails(kind)), kind), "{kind:?}: the peer did not read");
    }
}

// ---------------------------------------------------------------- other users

/// Runs `script` with `sh` as the user `nobody` (the attacker).
#[cfg(target_os = "linux")]
fn as_nobody(script: &str) {
    use std::os::unix::process::CommandExt as _;
    let status =
        std::process::Command::new("sh").arg("-c").arg(script).uid(65534).gid(65534).status().expect("running sh");
    assert!(status.success(), "{script}: {status}");
}

#[cfg(target_os = "linux")]
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Issue: another user could squat a name in /dev/shm (a world-writable
/// object, even carrying copydata's marker): the victim read the attacker's
/// data, wrote where the attacker could read, and could be crashed by a
/// truncate. Such objects are refused, never listed and never unlinked.
/// Needs root (to run the attacker as `nobody`).
#[cfg(target_os = "linux")]
#[test]
fn another_users_object_is_refused_and_never_reclaimed() {
    if !is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let name = unique("squat");
    let path = format!("/dev/shm/{name}");
    as_nobody(&format!("printf ATTACKERDATA > {path} && chmod 666 {path}"));
    // Anyone can mark their own object as copydata's (where there are no
    // extended attributes, before Linux 6.6, by the sticky bit).
    match rustix::fs::setxattr(path.as_str(), "user.copydata", b"section", rustix::fs::XattrFlags::empty()) {
        Err(rustix::io::Errno::OPNOTSUPP) => as_nobody(&format!("chmod 1666 {path}")),
        other => other.unwrap(),
    }
    for r in [Section::open(&name), Section::open_read_only(&name)] {
        match r {
            Err(OpenError::OtherOwner { reason, .. }) => assert!(reason.contains("uid 65534"), "{reason}"),
            other => panic!("another user's object was opened: {other:?}"),
        }
    }
    assert!(matches!(Section::open_or_create(&name, 4096), Err(CreateError::OtherOwner { .. })));
    assert!(matches!(Section::create(&name, 4096), Err(CreateError::OtherOwner { .. })));
    // Not listed, and (though nobody holds it) not unlinked.
    assert!(!copydata::list().unwrap().iter().any(|s| s.name == name));
    assert!(std::path::Path::new(&path).exists(), "another user's object was unlinked");
    // Sharing on purpose: accepted when asked for, and still not unlinked
    // when this process lets go.
    let opts = copydata::SectionOptions::new().access(Access::ReadOnly).allow_other_owner(true);
    let shared = Section::open_with_options(&name, &opts).unwrap();
    assert_eq!(shared.map(0, 12).unwrap().to_vec(), b"ATTACKERDATA");
    drop(shared);
    assert!(std::path::Path::new(&path).exists());
    // Nor removed by name, even by root (who passes the sticky bit).
    match copydata::remove(&name) {
        Err(copydata::RemoveError::PermissionDenied { source, .. }) => {
            assert!(source.to_string().contains("uid 65534"), "{source}")
        }
        other => panic!("another user's object was removed: {other:?}"),
    }
    assert!(std::path::Path::new(&path).exists());
    std::fs::remove_file(&path).unwrap();

    // The same for the objects of copydata::sync.
    let lock = unique("squat-lock");
    let lock_path = format!("/dev/shm/copydata.mutex.{lock}");
    as_nobody(&format!("head -c 4096 /dev/zero > {lock_path} && chmod 666 {lock_path}"));
    match rustix::fs::setxattr(lock_path.as_str(), "user.copydata", b"mutex", rustix::fs::XattrFlags::empty()) {
        Err(rustix::io::Errno::OPNOTSUPP) => as_nobody(&format!("chmod 1666 {lock_path}")),
        other => other.unwrap(),
    }
    match copydata::sync::Mutex::open_or_create(&lock) {
        Err(copydata::sync::SyncOpenError::OtherOwner { .. }) => {}
        other => panic!("another user's mutex was used: {other:?}"),
    }
    assert!(!copydata::sync::objects().unwrap().iter().any(|o| o.name == lock));
    assert!(std::path::Path::new(&lock_path).exists());
    std::fs::remove_file(&lock_path).unwrap();
}

/// An object of this user that others may write is not trusted either; the
/// creator chooses who may open what it makes.
#[cfg(target_os = "linux")]
#[test]
fn modes_are_the_creators_choice_and_writable_objects_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let name = unique("mode");
    let s = Section::create(&name, 4096).unwrap();
    let all = |n: &str| std::fs::metadata(format!("/dev/shm/{n}")).unwrap().permissions().mode();
    let mode = |n: &str| all(n) & 0o777;
    assert_eq!(mode(&name), 0o600);
    // (The bits above the permissions kept: before Linux 6.6 the sticky bit
    // marks copydata's objects.)
    let writable = std::fs::Permissions::from_mode(all(&name) & !0o777 | 0o666);
    std::fs::set_permissions(format!("/dev/shm/{name}"), writable).unwrap();
    match Section::open(&name) {
        Err(OpenError::OtherOwner { reason, .. }) => assert!(reason.contains("666"), "{reason}"),
        other => panic!("a world-writable object was opened: {other:?}"),
    }
    let opts = copydata::SectionOptions::new().allow_other_owner(true);
    drop(Section::open_with_options(&name, &opts).unwrap());
    drop(s);
    let name = unique("mode640");
    let s = Section::create_with(&name, 4096, &copydata::SectionOptions::new().mode(0o640)).unwrap();
    assert_eq!(mode(&name), 0o640);
    // Readable by the group, writable by the owner only: trusted.
    drop(Section::open(&name).unwrap());
    drop(s);
}

/// Issue: a section that arrives from elsewhere can be shrunk under the
/// receiver's views unless it is sealed; the receiver can tell.
#[test]
fn size_sealing_is_reported() {
    let anon = Section::anonymous(4096).unwrap();
    assert!(anon.is_size_sealed());
    let name = unique("sealed");
    let named = Section::create(&name, 4096).unwrap();
    let file_path = std::env::temp_dir().join(unique("sealed-file"));
    std::fs::write(&file_path, [0u8; 4096]).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&file_path).unwrap();
    let backed = Section::from_file(&file, Access::ReadWrite).unwrap();
    // Linux: named and file-backed sections can be truncated by whoever
    // holds them; Windows cannot shrink a mapped section.
    assert_eq!(named.is_size_sealed(), cfg!(windows));
    assert_eq!(backed.is_size_sealed(), cfg!(windows));
    // What a child inherits says the same.
    let mut kid = Kid::spawn_with("sealed-report", &[], &[&anon, &named]);
    let report = kid.expect("sealed");
    kid.wait_ok();
    assert_eq!(report, format!("true {}", cfg!(windows)));
    drop((anon, named, backed, file));
    std::fs::remove_file(&file_path).unwrap();
}

/// Issue: a process that forks without exec shares its open descriptions
/// with the child; the child dropping its copy of a named section unlinked
/// the name while the parent still held it.
#[cfg(target_os = "linux")]
#[test]
fn a_forked_copy_dropping_a_section_leaves_the_name_to_its_holder() {
    let name = unique("fork");
    let mut kid = Kid::spawn("fork-drop", &[&name]);
    assert_eq!(kid.expect("forked"), "0");
    assert!(common::in_dev_shm(&name), "the forked copy unlinked the name its parent holds");
    let s = Section::open(&name).expect("the parent still holds it");
    drop(s);
    kid.tell("exit");
    kid.wait_ok();
    assert!(!common::in_dev_shm(&name), "the last holder is gone but the name is not");
}

/// Issue: a creator killed before publishing left a hidden temporary object
/// that only `ls` removed; the next create removes it too.
#[cfg(target_os = "linux")]
#[test]
fn a_dead_creators_temporary_object_goes_at_the_next_create() {
    let temp = format!("/dev/shm/.copydata-tmp-{}-dead-{}", std::process::id(), unique("t"));
    std::fs::write(&temp, b"left by a creator killed before publishing").unwrap();
    let s = Section::create(&unique("next"), 4096).unwrap();
    assert!(!std::path::Path::new(&temp).exists(), "the dead creator's temporary object is still there");
    drop(s);
}

/// Two children started by hand from one set of inherited descriptors (as
/// a parent reusing one `Inheritance` does) share its open descriptions:
/// one of them dropping the named section must not free the name while the
/// other still holds it.
#[cfg(target_os = "linux")]
#[test]
fn siblings_sharing_inherited_descriptors_each_hold_the_name() {
    let name = unique("siblings");
    let named = Section::create(&name, 4096).unwrap();
    put(&named, 0, "from the parent").unwrap();
    let passed = copydata::Inheritance::new(&[&named]).unwrap();
    let child = || Kid::start(command_inheriting("take-then-told", &passed), "take-then-told", &[]);
    let (mut first, mut second) = (child(), child());
    assert_eq!(first.expect("took"), "1");
    assert_eq!(second.expect("took"), "1");
    drop(passed);
    drop(named);
    first.tell("drop");
    first.expect("dropped");
    second.tell("keep");
    second.expect("kept");
    let again = Section::open(&name).expect("the second child still holds the name");
    assert_eq!(text_at(&again, 0, 64).unwrap(), "from the parent");
    drop(again);
    for mut kid in [first, second] {
        kid.tell("exit");
        kid.wait_ok();
    }
    assert!(matches!(Section::open(&name), Err(OpenError::NotFound { .. })));
}

/// A read-only section of a file open for writing holds, and passes on, a
/// read-only descriptor: a child it is handed to gets it read-only.
#[cfg(target_os = "linux")]
#[test]
fn a_read_only_section_of_a_writable_file_passes_on_read_only() {
    use std::os::fd::AsFd;

    let path = std::env::temp_dir().join(unique("ro-file"));
    let mut bytes = b"file bytes".to_vec();
    bytes.resize(4096, 0);
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let ro = Section::from_file(&file, Access::ReadOnly).unwrap();
    let mode = rustix::fs::fcntl_getfl(ro.as_fd()).unwrap() & rustix::fs::OFlags::RWMODE;
    assert_eq!(mode, rustix::fs::OFlags::RDONLY, "the section holds a writable descriptor");
    let mut kid = Kid::spawn_with("inherit-report", &[], &[&ro]);
    assert_eq!(kid.expect("section"), "0 - 4096 ReadOnly file bytes");
    kid.expect("done");
    kid.wait_ok();
    drop((ro, file));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    std::fs::remove_file(&path).unwrap();
}

/// A section cannot take a synchronisation object's name
/// (`copydata.mutex.NAME`): creating or opening one is refused
/// (`NameError::Reserved`), whether or not the mutex exists, and the mutex
/// of that name is untouched. Such a section used to be made, and took
/// the mutex's name from it.
#[cfg(target_os = "linux")]
#[test]
fn a_section_cannot_take_a_mutexs_name() {
    let inner = unique("looks-like-mutex");
    let name = format!("copydata.mutex.{inner}");
    let path = format!("/dev/shm/{name}");
    let reserved = |e: &NameError| *e == NameError::Reserved;
    let created = Section::create(&name, 4096).map(drop);
    assert!(matches!(&created, Err(CreateError::InvalidName { reason, .. }) if reserved(reason)), "{created:?}");
    assert!(!std::path::Path::new(&path).exists(), "a refused section left {path}");
    let mutex = copydata::sync::Mutex::open_or_create(&inner).unwrap();
    assert!(std::path::Path::new(&path).exists());
    let opened = Section::open(&name).map(drop);
    assert!(matches!(&opened, Err(OpenError::InvalidName { reason, .. }) if reserved(reason)), "{opened:?}");
    let created = Section::open_or_create(&name, 4096).map(drop);
    assert!(matches!(&created, Err(CreateError::InvalidName { reason, .. }) if reserved(reason)), "{created:?}");
    // Nor can the section API remove it.
    let removed = copydata::remove(&name);
    assert!(
        matches!(&removed, Err(copydata::RemoveError::InvalidName { reason, .. }) if reserved(reason)),
        "{removed:?}"
    );
    assert!(std::path::Path::new(&path).exists(), "removing a section of the mutex's name took the mutex's");
    drop(mutex.lock().unwrap());
    drop(mutex);
    assert!(!std::path::Path::new(&path).exists(), "the mutex's name outlived it");
}
