//! `copydata instance APP_ID -- ARGS...`: run once; later launches forward.
//!
//! The first launch becomes the primary: it prints `ready APP_ID`, then a
//! line for its own launch (its pid, working directory, the arguments after
//! `--` and the variables `--forward-env` names, as a forwarded launch
//! shows them), then one line per forwarded launch, and answers each with
//! code 0 and the text `handled by PID` (code 1 and the reason if it could
//! not show the launch: its output was closed, and it ends). A plain
//! message to its mailbox shows as `message pid=.. tag=.. data=".."`. A
//! later launch forwards its
//! arguments, working directory and chosen variables, prints the primary's
//! text and exits with its code (4 if the primary did not answer within
//! `--timeout`).
//!
//! Strings that are not valid UTF-8 (UTF-16 on Windows) are shown
//! losslessly: in such a string each backslash is doubled, each byte that
//! is not part of valid UTF-8 becomes `\xNN` (each unpaired surrogate
//! `\uXXXX` on Windows), and the JSON object lists the field under
//! `"escaped"` (`argv.N`, `cwd`, `env.NAME`); the text line marks it with a
//! `b` before its quotes (`b"x\\xFF"`: not the valid `"x\\xFF"`). Valid
//! strings are shown as they are.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args as ClapArgs;
use copydata::instance::{Answer, InstanceOptions, Launch, SingleInstance};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The application's id (a name: letters, digits, '.', '_', '-').
    app_id: String,
    /// How long a later launch waits for the primary's answer (e.g. 500ms,
    /// 10s); exit code 4 after it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// The primary prints one JSON object per launch, its own first: argv,
    /// cwd, pid, env (and "escaped", see above).
    #[arg(long)]
    json: bool,
    /// Forward this environment variable's value (repeatable).
    #[arg(long = "forward-env", value_name = "VAR", action = clap::ArgAction::Append)]
    forward_env: Vec<OsString>,
    /// The arguments to forward, after `--` (the primary shows them as its
    /// own launch's).
    #[arg(last = true, value_parser = clap::value_parser!(OsString))]
    args: Vec<OsString>,
}

/// A string shown losslessly (see the module doc); `true` if it had to be
/// escaped.
pub fn show(s: &OsStr) -> (String, bool) {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        show_bytes(s.as_bytes())
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStrExt;
        if let Some(valid) = s.to_str() {
            return (valid.to_owned(), false);
        }
        let mut out = String::new();
        for c in char::decode_utf16(s.encode_wide()) {
            match c {
                Ok('\\') => out.push_str("\\\\"),
                Ok(c) => out.push(c),
                Err(e) => out.push_str(&format!("\\u{:04X}", e.unpaired_surrogate())),
            }
        }
        (out, true)
    }
    #[cfg(not(any(unix, windows)))]
    {
        match s.to_str() {
            Some(valid) => (valid.to_owned(), false),
            None => (s.to_string_lossy().into_owned(), true),
        }
    }
}

/// Bytes shown losslessly as text (see the module doc: valid UTF-8 as it
/// is, otherwise `\xNN` for each byte that is not); `true` if escaped.
pub fn show_bytes(bytes: &[u8]) -> (String, bool) {
    if let Ok(valid) = std::str::from_utf8(bytes) {
        return (valid.to_owned(), false);
    }
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    (out, true)
}

/// What a launch line shows: a forwarded launch's, or the primary's own.
pub struct Shown<'a> {
    pid: u32,
    args: &'a [OsString],
    cwd: Option<&'a Path>,
    env: &'a [(OsString, OsString)],
    data: &'a [u8],
    /// The tag of a plain message (not a launch: see [`Launch::tag`]).
    tag: Option<u64>,
}

impl<'a> From<&'a Launch> for Shown<'a> {
    fn from(launch: &'a Launch) -> Shown<'a> {
        let tag = (launch.tag() != copydata::instance::LAUNCH_TAG).then(|| launch.tag());
        Shown { pid: launch.pid(), args: launch.args(), cwd: launch.cwd(), env: launch.env(), data: launch.data(), tag }
    }
}

/// One line describing a launch.
pub fn describe(launch: Shown<'_>, json: bool) -> String {
    let mut escaped = Vec::new();
    // (The text line marks escaped strings with a `b`; JSON lists them.)
    // `shown`: what `show` or `show_bytes` made of the string.
    let mut field = |(text, esc): (String, bool), path: &dyn Fn(&str) -> String| {
        if esc {
            escaped.push(path(&text));
        }
        let quoted = serde_json::Value::from(text.as_str()).to_string();
        (text, if esc { format!("b{quoted}") } else { quoted })
    };
    let argv: Vec<(String, String)> =
        launch.args.iter().enumerate().map(|(i, a)| field(show(a), &|_| format!("argv.{i}"))).collect();
    let cwd = launch.cwd.map(|c| field(show(c.as_os_str()), &|_| "cwd".into()));
    let env: Vec<((String, String), (String, String))> = launch
        .env
        .iter()
        .map(|(k, v)| {
            let key = field(show(k), &|key| format!("env.{key}"));
            let value = field(show(v), &|_| format!("env.{}", key.0));
            (key, value)
        })
        .collect();
    let data = (!launch.data.is_empty()).then(|| field(show_bytes(launch.data), &|_| "data".into()));
    escaped.dedup();
    if json {
        let mut o = serde_json::json!({
            "argv": argv.iter().map(|(text, _)| text).collect::<Vec<_>>(),
            "cwd": cwd.as_ref().map(|(text, _)| text),
            "pid": launch.pid,
            "env": env.iter().map(|((k, _), (v, _))| (k.clone(), serde_json::Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>(),
        });
        if let Some(tag) = launch.tag {
            o["tag"] = tag.into();
        }
        if let Some((text, _)) = &data {
            o["data"] = text.as_str().into();
        }
        if !escaped.is_empty() {
            o["escaped"] = escaped.into();
        }
        o.to_string()
    } else {
        let cwd = cwd.map_or("-".into(), |(_, shown)| shown);
        let mut line = match launch.tag {
            // A plain message, not a launch: who sent it, its tag and bytes.
            Some(tag) => format!("message pid={} tag={tag}", launch.pid),
            None => format!("launch pid={} cwd={cwd} argv=[", launch.pid),
        };
        if launch.tag.is_none() {
            line.push_str(&argv.iter().map(|(_, shown)| shown.as_str()).collect::<Vec<_>>().join(", "));
            line.push(']');
            for ((k, shown_key), (_, v)) in &env {
                // A name is shown bare, unless it had to be escaped: then
                // quoted and marked like any escaped string.
                let k = if shown_key.starts_with('b') { shown_key } else { k };
                line.push_str(&format!(" {k}={v}"));
            }
        }
        if let Some((_, shown)) = &data {
            line.push_str(&format!(" data={shown}"));
        }
        line
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut options = InstanceOptions::new().timeout(args.timeout).args(args.args.iter().cloned());
    for var in &args.forward_env {
        options = options.forward_env(var.clone());
    }
    let primary = match SingleInstance::acquire(&args.app_id, &options)? {
        SingleInstance::Secondary(secondary) => {
            let mut out = std::io::stdout().lock();
            out.write_all(secondary.data())?;
            if !secondary.data().is_empty() && !secondary.data().ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            // The primary's code, whatever it is (ExitCode only carries
            // 0-255). A Unix exit status has 8 bits: a code outside them
            // (256 would read as 0, success) exits 1 (other error).
            let code = secondary.code();
            #[cfg(unix)]
            let code = if (0..=255).contains(&code) { code } else { i32::from(crate::exit::OTHER) };
            std::process::exit(code);
        }
        SingleInstance::Primary(primary) => primary,
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    // Interrupted or terminated: release the app id cleanly.
    let _ = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    });
    let me = std::process::id();
    let mut out = std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "ready": args.app_id, "pid": me }))?;
    } else {
        writeln!(out, "ready {}", args.app_id)?;
    }
    // Its own launch, as a later launch would have forwarded it.
    let cwd: Option<PathBuf> = std::env::current_dir().ok();
    let env: Vec<(OsString, OsString)> =
        args.forward_env.iter().filter_map(|k| std::env::var_os(k).map(|v| (k.clone(), v))).collect();
    let own = Shown { pid: me, args: &args.args, cwd: cwd.as_deref(), env: &env, data: &[], tag: None };
    writeln!(out, "{}", describe(own, args.json))?;
    out.flush()?;
    while stop_rx.try_recv().is_err() {
        let launch = match primary.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => l,
            Err(copydata::RecvError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        let shown = writeln!(out, "{}", describe(Shown::from(&launch), args.json)).and_then(|()| out.flush());
        if let Err(e) = shown {
            // Nobody reads the launches any more (the output was closed):
            // the launch was not handled, and its secondary must not take
            // it for handled. (A broken pipe ends the primary quietly.)
            let why = format!("the primary (pid {me}) could not show the launch: {e}");
            let _ = launch.answer(Answer::new(i32::from(crate::exit::OTHER), why));
            return Err(e.into());
        }
        // A secondary that gave up meanwhile is no error for the primary.
        let _ = launch.answer(Answer::new(0, format!("handled by {me}")));
    }
    Ok(ExitCode::SUCCESS)
}
