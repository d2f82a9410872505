//! Single-instance applications: the first launch becomes the primary, every
//! later one hands it its command line and exits with its answer.
//!
//! This is the classic use of `WM_COPYDATA`: a program that may run only
//! once finds the running instance (`FindWindow`), sends it its command line
//! (`SendMessage(WM_COPYDATA)`), then exits. [`SingleInstance::acquire`] does
//! the whole dance, race-free and bounded in time:
//!
//! ```no_run
//! use copydata::instance::{Answer, InstanceOptions, SingleInstance};
//!
//! match SingleInstance::acquire("my-editor", &InstanceOptions::new())? {
//!     SingleInstance::Primary(primary) => {
//!         // The running instance: open the files later launches ask for.
//!         for launch in primary.incoming() {
//!             println!("pid {} asks to open {:?}", launch.pid(), launch.args());
//!             launch.answer(Answer::new(0, "opened"))?;
//!         }
//!     }
//!     SingleInstance::Secondary(secondary) => {
//!         // Already forwarded; the primary answered.
//!         println!("{}", String::from_utf8_lossy(secondary.data()));
//!         std::process::exit(secondary.code());
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How it works
//!
//! The election *is* binding the mailbox `instance.APP_ID`
//! ([`Mailbox::bind`]): on Linux an `flock` on the mailbox's lock file in
//! the per-user runtime directory, on Windows a named mutex in `Local\`
//! owned by the mailbox's thread. The kernel releases both when the holder
//! dies, so a killed primary's successor is the next launch. Exactly one
//! launch wins the bind; every other one connects to the mailbox and sends
//! its launch record, retrying (within its timeout) while the winner is
//! elected but not listening yet, or while a dead primary's name is being
//! taken over. Because a launch is sent as a mailbox message with a reply,
//! the primary's answer (an exit code and bytes) travels back on the same
//! call.
//!
//! A forwarded launch carries the arguments, the working directory and the
//! environment variables the application chose ([`InstanceOptions::forward_env`]),
//! all as OS strings, losslessly (any bytes on Linux, any UTF-16 on Windows),
//! plus optional bytes; the primary learns the secondary's pid from the OS.
//! On Windows the secondary first calls `AllowSetForegroundWindow` for the
//! primary's process, so a GUI primary may bring its window to the front.
//!
//! # Guarantees
//!
//! - Any number of simultaneous launches give exactly one primary.
//! - A launch is never lost: while no primary answers, a secondary keeps
//!   trying (and may become the primary itself) until its timeout.
//! - A primary that does not answer (stopped, hung) makes secondaries fail
//!   with [`InstanceError::TimedOut`] after their timeout (default
//!   [`DEFAULT_TIMEOUT`], 10 s), never later.
//! - A primary answers each launch at most once. If it dies while handling a
//!   launch, that launch goes to the next primary: it is delivered once to
//!   every primary that did not live to answer it, and to exactly one that
//!   did.
//! - App ids are names ([`crate::validate_name`]) scoped per user (the
//!   runtime directory on Linux) and per login session (`Local\` and the
//!   session's windows on Windows).
//!
//! Plain Win32 programs may also `SendMessage(WM_COPYDATA)` to the primary's
//! mailbox window (class `copydata.mailbox.instance.APP_ID`): their bytes
//! arrive as a [`Launch`] with no arguments and the message's tag in
//! [`Launch::tag`].

pub(crate) mod wire;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::error::InstanceError;
use crate::error::{BindError, RecvError, ReplyError, SendError};
use crate::fork::Made;
use crate::mailbox::{Mailbox, MailboxOptions, Reply, Request, Sender, SenderOptions, Wait};
use crate::name::Name;

/// The longest app id, in bytes: its primary binds the mailbox
/// `instance.APP`, which must be a valid name too.
pub const MAX_APP_ID_LEN: usize = crate::MAX_NAME_LEN - crate::name::INSTANCE_PREFIX.len();

/// How long a secondary waits for the primary's answer unless told
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest launch record a primary takes unless told otherwise
/// ([`InstanceOptions::max_launch`]): 64 MiB.
pub const DEFAULT_MAX_LAUNCH: u64 = 64 << 20;

/// The mailbox tag of a launch record; a message with another tag (a plain
/// `WM_COPYDATA`, say) arrives as a [`Launch`] of bytes only.
pub const LAUNCH_TAG: u64 = u64::from_le_bytes(*b"CDLAUNCH");

/// What a launch sends and how long it waits; see
/// [`SingleInstance::acquire`].
#[derive(Debug, Clone)]
pub struct InstanceOptions {
    timeout: Duration,
    max_launch: u64,
    args: Option<Vec<OsString>>,
    cwd: Option<Option<PathBuf>>,
    forward_env: Vec<OsString>,
    data: Vec<u8>,
}

impl Default for InstanceOptions {
    fn default() -> InstanceOptions {
        InstanceOptions {
            timeout: DEFAULT_TIMEOUT,
            max_launch: DEFAULT_MAX_LAUNCH,
            args: None,
            cwd: None,
            forward_env: Vec::new(),
            data: Vec::new(),
        }
    }
}

impl InstanceOptions {
    /// Defaults: this process's arguments (without the program name) and
    /// working directory, no environment variables, no data, a timeout of
    /// [`DEFAULT_TIMEOUT`].
    pub fn new() -> InstanceOptions {
        InstanceOptions::default()
    }

    /// The longest a secondary waits for the primary to take its launch
    /// and answer (election and connection set-up included).
    pub fn timeout(mut self, timeout: Duration) -> InstanceOptions {
        self.timeout = timeout;
        self
    }

    /// If this launch becomes the primary: the largest launch record it
    /// takes (arguments, environment and data together; default
    /// [`DEFAULT_MAX_LAUNCH`]). A larger one is refused (the secondary gets
    /// [`InstanceError::Refused`]), and so is one whose decoded form would
    /// be larger (each argument and variable costs an `OsString` besides
    /// its bytes), so no other process can make the primary allocate more.
    pub fn max_launch(mut self, bytes: u64) -> InstanceOptions {
        self.max_launch = bytes;
        self
    }

    /// The arguments to forward, instead of `std::env::args_os().skip(1)`.
    pub fn args<I, S>(mut self, args: I) -> InstanceOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// The working directory to forward (`None`: none), instead of this
    /// process's.
    pub fn cwd(mut self, cwd: Option<PathBuf>) -> InstanceOptions {
        self.cwd = Some(cwd);
        self
    }

    /// Forwards this environment variable's value (if it is set). Only the
    /// variables named this way are forwarded.
    pub fn forward_env(mut self, name: impl Into<OsString>) -> InstanceOptions {
        self.forward_env.push(name.into());
        self
    }

    /// Bytes to send along with the launch ([`Launch::data`]).
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> InstanceOptions {
        self.data = data.into();
        self
    }

    fn record(&self) -> wire::Record {
        let args = self.args.clone().unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let cwd = match &self.cwd {
            Some(c) => c.clone(),
            None => std::env::current_dir().ok(),
        };
        let env = self.forward_env.iter().filter_map(|k| std::env::var_os(k).map(|v| (k.clone(), v))).collect();
        wire::Record { args, cwd: cwd.map(PathBuf::into_os_string), env, data: self.data.clone() }
    }
}

/// The result of [`SingleInstance::acquire`]: this launch is the primary,
/// or it has been forwarded to the primary, which answered.
#[derive(Debug)]
pub enum SingleInstance {
    /// This process is the running instance: it receives later launches.
    Primary(Primary),
    /// Another process is the running instance; this launch was handed to
    /// it and it answered.
    Secondary(Secondary),
}

impl SingleInstance {
    /// Becomes the primary instance of `app_id`, or forwards this launch to
    /// the running primary and returns its answer.
    ///
    /// The Win32 idiom this replaces: `CreateMutexW` and a check for
    /// `ERROR_ALREADY_EXISTS`, then `FindWindowW` and
    /// `SendMessageW(WM_COPYDATA)` with the command line. Here the election
    /// is binding a mailbox (a named mutex on Windows, an `flock` on Linux),
    /// see the [module docs](self).
    ///
    /// Waits at most [`InstanceOptions::timeout`] for a primary to answer
    /// (a primary that is elected but not listening yet, or one that just
    /// died and whose successor is being elected, is waited for).
    #[doc(alias = "CreateMutexW")]
    #[doc(alias = "ERROR_ALREADY_EXISTS")]
    #[doc(alias = "FindWindowW")]
    #[doc(alias = "flock")]
    pub fn acquire(app_id: &str, options: &InstanceOptions) -> Result<SingleInstance, InstanceError> {
        let app =
            Name::app_id(app_id).map_err(|reason| InstanceError::InvalidAppId { app_id: app_id.into(), reason })?;
        let name = Name::instance_mailbox(&app);
        let started = Instant::now();
        // A timeout too large to add (Duration::MAX) means "as long as it takes".
        let deadline = started
            .checked_add(options.timeout)
            .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut record = None;
        let mut pause = Duration::from_millis(1);
        let bind = MailboxOptions::new().max_payload(options.max_launch);
        // A primary that exits while this launch connects ends the
        // connection mid-set-up, which looks like an incompatible peer: one
        // such failure is retried (the next round elects this launch, or
        // finds the new primary); a primary still there that fails again is
        // incompatible.
        let mut hung_up = false;
        loop {
            match Mailbox::bind_name(name.clone(), &bind) {
                Ok(mailbox) => {
                    return Ok(SingleInstance::Primary(Primary { mailbox, app, max_launch: options.max_launch }));
                }
                Err(BindError::AlreadyBound { pid, .. }) => {
                    let bytes = match &record {
                        Some(b) => b,
                        None => record.insert(
                            wire::encode(&options.record())
                                .map_err(|reason| InstanceError::Refused { app_id: app_id.into(), reason })?,
                        ),
                    };
                    match forward(&app, &name, pid, bytes, deadline, options.timeout) {
                        Ok(Some(answer)) => return Ok(SingleInstance::Secondary(answer)),
                        Ok(None) => {}
                        Err(InstanceError::Incompatible { .. }) if !hung_up => hung_up = true,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(InstanceError::from_bind(&app, e)),
            }
            // No primary took the launch: it is being elected, or it died.
            let now = Instant::now();
            if now >= deadline {
                return Err(InstanceError::TimedOut { app_id: app_id.into(), timeout: options.timeout });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Sends the launch to the primary. `None` when there is no primary to take
/// it right now (not listening yet, or gone): the caller tries again.
fn forward(
    app: &Name,
    name: &Name,
    pid: Option<u32>,
    record: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Option<Secondary>, InstanceError> {
    let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) else {
        return Err(InstanceError::TimedOut { app_id: app.to_string(), timeout });
    };
    if let Some(pid) = pid {
        crate::sys::mailbox::allow_foreground(pid);
    }
    // Latency does not matter here; many launches at once should not spin.
    let options = SenderOptions::new().wait(Wait::Park).connect_timeout(left);
    let mut sender = Sender::of_name(name.clone(), options);
    let shown = || app.to_string();
    match sender.send_timeout(LAUNCH_TAG, record, left) {
        Ok(reply) => {
            let code = i32::try_from(reply.code).unwrap_or(if reply.code < 0 { i32::MIN } else { i32::MAX });
            let data = match reply.loan() {
                Some(l) => l.to_vec(),
                None => reply.data.into_vec(),
            };
            // The process that answered, as the connection knows it (the
            // name's lock file may still name a predecessor that died).
            Ok(Some(Secondary { answer: Answer { code, data }, primary_pid: sender.receiver_pid().or(pid) }))
        }
        // Elected but not listening yet, or gone meanwhile, or taking as
        // many launches at once as it can: try again.
        Err(SendError::NoSuchMailbox { .. } | SendError::ReceiverDied { .. } | SendError::Busy { .. }) => Ok(None),
        Err(SendError::TimedOut { .. }) => {
            // Never report a timeout before it has passed.
            if let Some(rest) = deadline.checked_duration_since(Instant::now()) {
                std::thread::sleep(rest);
            }
            Err(InstanceError::TimedOut { app_id: shown(), timeout })
        }
        Err(SendError::Refused { reason, .. }) => Err(InstanceError::Refused { app_id: shown(), reason }),
        Err(SendError::PayloadTooLarge { size, max, .. }) => Err(InstanceError::Refused {
            app_id: shown(),
            reason: format!("a launch of {size} bytes is larger than the primary takes ({max})"),
        }),
        Err(SendError::Incompatible { reason, .. } | SendError::Protocol { reason, .. }) => {
            Err(InstanceError::Incompatible { app_id: shown(), reason })
        }
        Err(SendError::Unsupported) => Err(InstanceError::Unsupported),
        Err(SendError::Io { source, .. }) => Err(InstanceError::Io { app_id: shown(), source }),
        Err(other) => Err(InstanceError::Io { app_id: shown(), source: std::io::Error::other(other) }),
    }
}

/// The answer a primary gives a launch: an exit code for the secondary and
/// optional bytes (text for it to print, say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The code; the CLI's secondary exits with it.
    pub code: i32,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Answer {
    /// An answer with a code and bytes.
    pub fn new(code: i32, data: impl Into<Vec<u8>>) -> Answer {
        Answer { code, data: data.into() }
    }

    /// An answer with just a code.
    pub fn code(code: i32) -> Answer {
        Answer { code, data: Vec::new() }
    }
}

/// A launch that was forwarded to the primary; carries its answer.
#[derive(Debug, Clone)]
pub struct Secondary {
    answer: Answer,
    primary_pid: Option<u32>,
}

impl Secondary {
    /// The primary's exit code for this launch.
    pub fn code(&self) -> i32 {
        self.answer.code
    }

    /// The primary's bytes for this launch.
    pub fn data(&self) -> &[u8] {
        &self.answer.data
    }

    /// The whole answer.
    pub fn into_answer(self) -> Answer {
        self.answer
    }

    /// The primary's process id, when known.
    pub fn primary_pid(&self) -> Option<u32> {
        self.primary_pid
    }
}

/// The running instance: receives the launches of later processes.
///
/// Take them with [`recv`](Self::recv), [`recv_timeout`](Self::recv_timeout)
/// or [`incoming`](Self::incoming), or hand a handler to
/// [`serve`](Self::serve). Dropping the primary releases the app id at once:
/// the next launch becomes primary.
#[derive(Debug)]
pub struct Primary {
    mailbox: Mailbox,
    app: Name,
    /// [`InstanceOptions::max_launch`]: also the most a launch may take
    /// decoded.
    max_launch: u64,
}

impl Primary {
    /// The app id.
    pub fn app_id(&self) -> &str {
        self.app.as_str()
    }

    /// Waits for the next launch.
    pub fn recv(&self) -> Result<Launch, RecvError> {
        next_launch(&self.mailbox, None, self.max_launch)
    }

    /// Waits at most `timeout` for the next launch.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Launch, RecvError> {
        next_launch(&self.mailbox, crate::deadline(timeout), self.max_launch)
    }

    /// The launches, as they come, for as long as the primary lives.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { primary: self }
    }

    /// Runs `handler` for every launch on a background thread, answering
    /// with what it returns, until the returned [`InstanceServer`] is
    /// dropped (which releases the app id). A handler that panics refuses
    /// that launch ([`InstanceError::Refused`] for the secondary) and goes
    /// on serving.
    pub fn serve<F>(self, handler: F) -> InstanceServer
    where
        F: Fn(&Launch) -> Answer + Send + 'static,
    {
        let Primary { mailbox, app, max_launch } = self;
        let mailbox = Arc::new(mailbox);
        let shared = mailbox.clone();
        let thread = std::thread::Builder::new().name(format!("copydata-instance-{app}")).spawn(move || {
            while let Ok(mut launch) = next_launch(&shared, None, max_launch) {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&launch))) {
                    Ok(answer) => {
                        let _ = launch.answer_in_place(answer);
                    }
                    Err(_) => {
                        if let Some(r) = launch.request.take() {
                            r.refuse("the primary's handler panicked");
                        }
                    }
                }
            }
        });
        match thread {
            Ok(t) => InstanceServer { mailbox: Some(mailbox), thread: Some(t), app, made: Made::here() },
            Err(e) => {
                log::warn!("instance {app}: could not start the handler thread: {e}");
                InstanceServer { mailbox: Some(mailbox), thread: None, app, made: Made::here() }
            }
        }
    }
}

/// Takes the next launch, refusing (and logging) records that do not decode.
fn next_launch(mailbox: &Mailbox, deadline: Option<Instant>, max_launch: u64) -> Result<Launch, RecvError> {
    loop {
        let request = match deadline {
            None => mailbox.recv()?,
            Some(d) => mailbox.recv_timeout(d.saturating_duration_since(Instant::now()))?,
        };
        let pid = request.sender().pid;
        let tag = request.tag();
        // (A loan is copied out of shared memory first; a payload is
        // already this process's own.)
        let lent = request.loan().map(|l| l.to_vec());
        let bytes: &[u8] = lent.as_deref().unwrap_or(request.payload());
        let record = if tag == LAUNCH_TAG {
            match wire::decode_within(bytes, max_launch) {
                Ok(r) => r,
                Err(reason) => {
                    log::warn!("instance {}: refused a launch from pid {pid}: {reason}", mailbox.name());
                    request.refuse(&format!("bad launch record: {reason}"));
                    continue;
                }
            }
        } else {
            wire::Record { data: bytes.to_vec(), ..wire::Record::default() }
        };
        return Ok(Launch { record, pid, tag, request: Some(request) });
    }
}

/// The launches a [`Primary`] receives, from [`Primary::incoming`]. Ends
/// only if the primary's mailbox closes.
#[derive(Debug)]
pub struct Incoming<'a> {
    primary: &'a Primary,
}

impl Iterator for Incoming<'_> {
    type Item = Launch;
    fn next(&mut self) -> Option<Launch> {
        self.primary.recv().ok()
    }
}

/// A primary served by a background thread; see [`Primary::serve`].
/// Dropping it stops the handler (after the launch in hand) and releases the
/// app id.
#[derive(Debug)]
pub struct InstanceServer {
    mailbox: Option<Arc<Mailbox>>,
    thread: Option<JoinHandle<()>>,
    app: Name,
    made: Made,
}

impl InstanceServer {
    /// The app id.
    pub fn app_id(&self) -> &str {
        self.app.as_str()
    }
}

impl Drop for InstanceServer {
    fn drop(&mut self) {
        if self.made.copied_by_fork() {
            // The parent's thread (see `crate::fork`).
            std::mem::forget(self.thread.take());
            return;
        }
        if let Some(m) = &self.mailbox {
            m.close();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The last reference: unbinding releases the app id.
        self.mailbox = None;
    }
}

/// A launch forwarded to the primary.
///
/// Answer it with [`answer`](Self::answer); a launch dropped unanswered is
/// answered with [`Answer::default`] (code 0, no bytes), so the secondary
/// never waits for nothing.
pub struct Launch {
    record: wire::Record,
    pid: u32,
    tag: u64,
    request: Option<Request>,
}

impl Launch {
    /// The arguments, exactly as the secondary had them.
    pub fn args(&self) -> &[OsString] {
        &self.record.args
    }

    /// The secondary's working directory, if it sent one.
    pub fn cwd(&self) -> Option<&Path> {
        self.record.cwd.as_deref().map(Path::new)
    }

    /// The environment variables the secondary forwarded, in its order.
    pub fn env(&self) -> &[(OsString, OsString)] {
        &self.record.env
    }

    /// The value of one forwarded variable.
    pub fn var(&self, name: impl AsRef<OsStr>) -> Option<&OsStr> {
        self.record.env.iter().find(|(k, _)| k == name.as_ref()).map(|(_, v)| v.as_os_str())
    }

    /// The bytes sent with the launch ([`InstanceOptions::data`]).
    pub fn data(&self) -> &[u8] {
        &self.record.data
    }

    /// The secondary's process id (from the OS, not from the launch).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The message tag: [`LAUNCH_TAG`] for copydata launches; anything else
    /// for a plain `WM_COPYDATA` (whose bytes are in [`data`](Self::data)).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Answers the launch; the secondary's `acquire` returns the answer (the
    /// `ReplyMessage` of the launch's message). Fails if the secondary gave
    /// up waiting (it timed out or died).
    #[doc(alias = "ReplyMessage")]
    pub fn answer(mut self, answer: Answer) -> Result<(), ReplyError> {
        self.answer_in_place(answer)
    }

    fn answer_in_place(&mut self, answer: Answer) -> Result<(), ReplyError> {
        match self.request.take() {
            Some(r) => r.reply(Reply::new(i64::from(answer.code), answer.data)),
            None => Ok(()),
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        if self.request.as_ref().is_some_and(Request::copied_by_fork) {
            // The parent's to answer (see `crate::fork`; the request's own
            // drop does nothing here).
            return;
        }
        let _ = self.answer_in_place(Answer::default());
    }
}

impl fmt::Debug for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launch")
            .field("pid", &self.pid)
            .field("args", &self.record.args)
            .field("cwd", &self.record.cwd)
            .field("env", &self.record.env)
            .field("data", &self.record.data.len())
            .finish()
    }
}
