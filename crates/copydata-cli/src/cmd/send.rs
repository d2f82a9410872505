//! `copydata send NAME [DATA]`: send a message and print the reply (or
//! post it, one-way).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use copydata::{PostLoanError, SendError, Sender, TimeoutStage};

use crate::exit;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The mailbox's name.
    name: String,
    /// The tag (`dwData`).
    #[arg(long, default_value_t = 0)]
    tag: u64,
    /// Give up after this long (e.g. 500ms, 2s) in all: the connection's
    /// set-up, the wait for room in the receiver's queue and the reply share
    /// it (so 0 always times out; reading the payload is not counted);
    /// default: the set-up gives up after 10s (a stopped receiver), then the
    /// reply is awaited as long as the receiver lives. With --post: the
    /// connection, room in the receiver's queue and (on Windows, for a
    /// message above 16 KiB) the receiver taking the message off its queue.
    /// With --lines: the set-up, then each message on its own.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Write the reply payload to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The payload; `-` reads it from standard input; none sends an empty one.
    /// Other text starting with `-` is sent as it is, unless it is an
    /// option (-q, -v, -h): a payload that may start with `-` goes after
    /// `--` (`copydata send app -- "$line"`).
    #[arg(conflicts_with = "file", allow_hyphen_values = true, value_parser = clap::value_parser!(std::ffi::OsString))]
    data: Option<std::ffi::OsString>,
    /// Send the contents of this file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Post the message: one-way, no reply awaited (prints nothing).
    #[arg(long, conflicts_with = "out")]
    post: bool,
    /// Send each line of standard input as a message of its own (without
    /// its line ending), in order, on one connection, as the lines come;
    /// print each reply as `code N` and its bytes on one line (with --post,
    /// nothing). --timeout applies to each message; the first failure
    /// stops, the lines before it were sent.
    #[arg(long, conflicts_with_all = ["data", "file", "out"])]
    lines: bool,
    /// Linux: the mailbox belongs to this user (who let this user in with
    /// `listen --allow-uid`); refused unless its process runs as that user.
    #[arg(long, value_name = "UID")]
    owner: Option<u32>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file_meta = match &args.file {
        Some(path) => Some(std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    // (A pipe or a device says nothing of its size: it is read to its end.)
    let file_len = file_meta.as_ref().filter(|m| m.is_file()).map(|m| m.len());
    let mut options = copydata::SenderOptions::new();
    let mut budget = Budget::new(args.timeout);
    if let Some(uid) = args.owner {
        options = options.owner(uid);
    }
    // Made before anything is sent: a reply with nowhere to go would leave
    // a message handled that cannot safely be sent again.
    let mut out = match &args.out {
        Some(path) => OutFile::create(path)?,
        None => None,
    };
    // A post waits for no reply: its timeout covers the set-up and room in
    // the receiver's queue, and either way nothing was posted, which is
    // worth saying.
    let post_timed_out = |e: SendError| -> anyhow::Error {
        match e {
            SendError::TimedOut { name, timeout, stage } => {
                let waited = match stage {
                    TimeoutStage::Connecting => "connecting to it",
                    TimeoutStage::Room => "waiting for room in its queue",
                    _ => return SendError::TimedOut { name, timeout, stage }.into(),
                };
                exit::TimedOut(format!(
                    "mailbox {name:?} did not take the post within {timeout:?} (timed out {waited}; nothing was posted)"
                ))
                .into()
            }
            other => other.into(),
        }
    };
    let connected = Budget::spend(&mut budget, |t| {
        let options = match t {
            Some(t) => options.connect_timeout(t),
            None => options,
        };
        Sender::connect_with(&args.name, &options)
    });
    let mut sender = if args.post { connected.map_err(post_timed_out)? } else { connected? };
    log::debug!("connected to mailbox {:?}", args.name);
    // A file larger than the mailbox takes is refused before it is read.
    if let (Some(size), Some(max)) = (file_len, sender.max_payload())
        && size > max
    {
        return Err(SendError::PayloadTooLarge { name: args.name.clone(), size, max }.into());
    }
    if args.lines {
        return lines(&args, &mut sender, post_timed_out);
    }
    if let (Some(path), Some(len)) = (&args.file, file_len)
        && len >= LEND_FROM
        && let Some(code) = send_file(&args, &mut sender, &mut budget, path, len, out.as_mut(), &post_timed_out)?
    {
        return Ok(code);
    }
    let payload = match (args.data.as_deref(), &args.file) {
        (_, Some(path)) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        (Some(d), None) if d == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading standard input")?;
            buf
        }
        (Some(data), None) => super::arg_bytes(data)?,
        (None, None) => Vec::new(),
    };
    if args.post {
        Budget::spend(&mut budget, |t| match t {
            Some(t) => sender.post_timeout(args.tag, &payload, t),
            None => sender.post(args.tag, &payload),
        })
        .map_err(post_timed_out)?;
        log::debug!("posted tag {}, {} bytes", args.tag, payload.len());
        return posted(&mut sender, &mut budget);
    }
    log::debug!("sending tag {}, {} bytes{}", args.tag, payload.len(), time_left(budget));
    let started = Instant::now();
    let reply = Budget::spend(&mut budget, |t| match t {
        Some(t) => sender.send_timeout(args.tag, &payload, t),
        None => sender.send(args.tag, &payload),
    })?;
    print_reply(&reply, started, out.as_mut())
}

/// Prints the reply's code, then its bytes to stdout or to `out`.
fn print_reply(reply: &copydata::Reply, started: Instant, out: Option<&mut OutFile>) -> anyhow::Result<ExitCode> {
    // A loaned reply is read through its view, not as a slice (which is
    // empty for it).
    let data: std::borrow::Cow<'_, [u8]> = match reply.data.loan() {
        Some(view) => view.to_vec().into(),
        None => (&*reply.data).into(),
    };
    log::debug!("reply code {}, {} bytes, after {:?}", reply.code, data.len(), started.elapsed());
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "code {}", reply.code)?;
    match out {
        Some(file) => file.write(&data)?,
        None => {
            stdout.write_all(&data)?;
            // On a terminal, a reply that does not end a line is not left
            // for the shell's prompt to run on from; piped or redirected,
            // the bytes stay exactly the reply's.
            if !data.is_empty() && !data.ends_with(b"\n") && std::io::IsTerminal::is_terminal(&stdout) {
                stdout.write_all(b"\n")?;
            }
        }
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Files at least this large go as a loan (see [`send_file`]); smaller
/// ones are copied into the message, which costs less than a loan's
/// buffer for so few bytes.
const LEND_FROM: u64 = 64 << 10;

/// `--file` of a regular file: read straight into a buffer lent in shared
/// memory (a loan), which then goes: one copy of the bytes on the sender's
/// side, not two. The wait for the buffer and the exchange spend one
/// `--timeout` (reading the file is not counted). `None` when
/// the file turns out not to have the size it said (a file still being
/// written, or one of `/proc`): nothing was sent, and the caller reads it
/// to its end instead.
fn send_file(
    args: &Args,
    sender: &mut Sender,
    budget: &mut Option<Budget>,
    path: &std::path::Path,
    len: u64,
    out: Option<&mut OutFile>,
    post_timed_out: &impl Fn(SendError) -> anyhow::Error,
) -> anyhow::Result<Option<ExitCode>> {
    let reading = || format!("reading {}", path.display());
    let len = usize::try_from(len).map_err(|_| anyhow::anyhow!("{} is larger than memory", path.display()))?;
    let mut file = std::fs::File::open(path).with_context(reading)?;
    let lent = Budget::spend(budget, |t| match t {
        Some(t) => sender.loan_timeout(len, t),
        None => sender.loan(len),
    });
    let mut loan = if args.post { lent.map_err(post_timed_out)? } else { lent? };
    // SAFETY: the loan's contract (`Loan::as_mut_slice`): no other process
    // writes the buffer before it is sent (the receiver was handed it
    // read-only), and the slice is gone before it is.
    let buf = unsafe { loan.as_mut_slice() };
    match file.read_exact(buf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).with_context(reading),
    }
    let mut more = [0u8; 1];
    let grew = loop {
        match file.read(&mut more) {
            Ok(n) => break n != 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(reading),
        }
    };
    if grew {
        return Ok(None);
    }
    log::debug!(
        "{} tag {}, {len} bytes lent{}",
        if args.post { "posting" } else { "sending" },
        args.tag,
        time_left(*budget)
    );
    if args.post {
        Budget::spend(budget, |t| match t {
            Some(t) => loan.post_timeout(args.tag, t).map_err(PostLoanError::into_error),
            None => loan.post(args.tag),
        })
        .map_err(post_timed_out)?;
        return posted(sender, budget).map(Some);
    }
    let started = Instant::now();
    let reply = Budget::spend(budget, |t| match t {
        Some(t) => loan.send_timeout(args.tag, t),
        None => loan.send(args.tag),
    })?;
    print_reply(&reply, started, out).map(Some)
}

/// `--lines`: a message per line of standard input, on `sender`'s
/// connection.
fn lines(
    args: &Args,
    sender: &mut Sender,
    post_timed_out: impl Fn(SendError) -> anyhow::Error,
) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    let mut input = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut line = Vec::new();
    let mut sent = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).context("reading standard input")? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if args.post {
            match args.timeout {
                Some(t) => sender.post_timeout(args.tag, &line, t).map_err(|e| match e {
                    // The lines before it went: saying "nothing was posted"
                    // would have a script post them again.
                    SendError::TimedOut { .. } if sent > 0 => {
                        let before = if sent == 1 {
                            "the line before it was".into()
                        } else {
                            format!("the {sent} lines before it were")
                        };
                        exit::TimedOut(format!("line {} was not posted ({e}); {before}", sent + 1)).into()
                    }
                    e => post_timed_out(e),
                })?,
                None => sender.post(args.tag, &line)?,
            }
        } else {
            let reply = match args.timeout {
                Some(t) => sender.send_timeout(args.tag, &line, t)?,
                None => sender.send(args.tag, &line)?,
            };
            let data = reply.data.loan().map_or_else(|| reply.data.to_vec(), |view| view.to_vec());
            write!(stdout, "code {}", reply.code)?;
            if !data.is_empty() {
                stdout.write_all(b" ")?;
                stdout.write_all(&data)?;
            }
            stdout.write_all(b"\n")?;
            // Each reply as it comes (the input may be a live stream).
            stdout.flush()?;
        }
        sent += 1;
    }
    log::debug!("{} {sent} lines", if args.post { "posted" } else { "sent" });
    if args.post {
        return posted(sender, &mut Budget::new(args.timeout));
    }
    Ok(ExitCode::SUCCESS)
}

/// A post's last step: waits until what this command posted no longer
/// needs it (bounded by `--timeout`): on Windows the receiver takes a large
/// post's buffer out of the sending process when it takes the message off
/// its queue, and would find it gone after the command's exit. Elsewhere,
/// and for small posts, at once.
fn posted(sender: &mut Sender, budget: &mut Option<Budget>) -> anyhow::Result<ExitCode> {
    let flushed = Budget::spend(budget, |t| match t {
        Some(t) => sender.flush_timeout(t),
        None => sender.flush(),
    });
    match flushed {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(SendError::TimedOut { name, timeout, .. }) => Err(exit::TimedOut(format!(
            "mailbox {name:?} did not take the post off its queue within {timeout:?} (it stays queued, but its \
             buffer, which the mailbox takes out of this process, goes when the command exits)"
        ))
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// For the debug log: what is left of `--timeout`, if one was given.
fn time_left(budget: Option<Budget>) -> String {
    budget.map(|b| format!(" ({} of the timeout left)", humantime::format_duration(b.left))).unwrap_or_default()
}

/// Whether `file` is the file standard output writes to (the same file on
/// the same device). Windows: never said (`--out` there names another file).
fn is_stdout(file: &std::fs::File) -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let stdout = std::io::stdout().as_fd().try_clone_to_owned().map(std::fs::File::from).and_then(|f| f.metadata());
        match (file.metadata(), stdout) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        false
    }
}

/// What `--timeout` leaves of its time: one budget for the whole command
/// (the set-up, the wait for a buffer or room, the reply, a post's flush),
/// not the same time again at each step. Reading the payload (standard
/// input, a file) is not counted: only waits on the mailbox are.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// The time given (`--timeout`), for the messages.
    given: Duration,
    /// What is left of it.
    left: Duration,
}

impl Budget {
    fn new(timeout: Option<Duration>) -> Option<Budget> {
        timeout.map(|given| Budget { given, left: given })
    }

    /// Runs `wait` with the time left, then takes off the time it took. A
    /// time-out says the whole time given, not what was left of it.
    fn spend<T>(
        budget: &mut Option<Budget>,
        wait: impl FnOnce(Option<Duration>) -> Result<T, SendError>,
    ) -> Result<T, SendError> {
        let Some(b) = budget else { return wait(None) };
        let started = Instant::now();
        let result = wait(Some(b.left));
        b.left = b.left.saturating_sub(started.elapsed());
        result.map_err(|e| match e {
            SendError::TimedOut { name, stage, .. } => SendError::TimedOut { name, timeout: b.given, stage },
            other => other,
        })
    }
}

/// The reply's file, made before the message goes out. A file this command
/// made is removed again if no reply gets written to it (the send failed,
/// or Ctrl-C interrupted the wait), so a failed send leaves nothing behind;
/// a file that was there is only overwritten by a reply.
struct OutFile {
    path: PathBuf,
    file: std::fs::File,
    /// A regular file, emptied before the reply goes in; anything else
    /// (`/dev/null`, `/dev/stdout`, a pipe) is written as it is.
    regular: bool,
    /// Whether this command made the file and no reply is in it yet (read
    /// by the Ctrl-C handler too).
    made: Arc<AtomicBool>,
}

impl OutFile {
    /// `None` when `path` is the file standard output writes to (`--out
    /// /dev/stdout`, or the file it was redirected to): the reply goes to
    /// standard output then, as without `--out` (two writers at offsets of
    /// their own would write over each other).
    fn create(path: &std::path::Path) -> anyhow::Result<Option<OutFile>> {
        let made = !path.exists();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        if is_stdout(&file) {
            return Ok(None);
        }
        let regular = file.metadata().with_context(|| format!("creating {}", path.display()))?.is_file();
        let made = Arc::new(AtomicBool::new(made && regular));
        if made.load(Ordering::Acquire) {
            // Interrupted before the reply came: remove the empty file, then
            // exit as the shell does for Ctrl-C (128 + SIGINT).
            let (made, path) = (made.clone(), path.to_owned());
            let _ = ctrlc::set_handler(move || {
                if made.swap(false, Ordering::AcqRel) {
                    let _ = std::fs::remove_file(&path);
                }
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            });
        }
        Ok(Some(OutFile { path: path.to_owned(), file, regular, made }))
    }

    fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let what = || format!("writing {}", self.path.display());
        if self.regular {
            self.file.set_len(0).with_context(what)?;
        }
        self.file.write_all(data).with_context(what)?;
        self.made.store(false, Ordering::Release);
        Ok(())
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if self.made.swap(false, Ordering::AcqRel) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
