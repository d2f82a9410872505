//! `copydata listen NAME`: bind a mailbox and print what arrives.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args as ClapArgs;
use copydata::{Mailbox, Message, Reply};
use sha2::{Digest, Sha256};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The mailbox's name.
    name: String,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Reply with the message's own payload.
    #[arg(long)]
    echo: bool,
    /// The reply code.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    reply_code: i64,
    /// Wait this long before replying (e.g. 500ms, 2s).
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// One JSON object per message: tag, size, pid, uid, sha256, preview.
    #[arg(long)]
    json: bool,
    /// Linux: also accept senders of this user (repeatable); they send with
    /// `send --owner THIS-UID`.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
}

/// The first bytes of a payload, printable: escapes for everything else.
fn preview(data: &[u8]) -> String {
    let shown: String = data.iter().take(32).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if data.len() > 32 { format!("{shown}...") } else { shown }
}

fn describe(msg: &Message, json: bool) -> String {
    // A loaned message is read out of the sender's buffer.
    let loaned = msg.loan().map(|l| l.to_vec());
    let data: &[u8] = loaned.as_deref().unwrap_or(msg.payload());
    let sender = msg.sender();
    if json {
        let sha: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({
            "tag": msg.tag(),
            "size": data.len(),
            "pid": sender.pid,
            "uid": sender.uid,
            "sections": msg.sections().len(),
            "post": !msg.expects_reply(),
            "sha256": sha,
            "preview": preview(data),
        })
        .to_string()
    } else {
        let uid = sender.uid.map(|u| format!(" uid={u}")).unwrap_or_default();
        let sections =
            if msg.sections().is_empty() { String::new() } else { format!(" sections={}", msg.sections().len()) };
        let post = if msg.expects_reply() { "" } else { " post" };
        format!(
            "tag={} size={} pid={}{uid}{sections}{post} data=\"{}\"",
            msg.tag(),
            data.len(),
            sender.pid,
            preview(data)
        )
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = args.allow_uid.iter().fold(copydata::MailboxOptions::new(), |o, &uid| o.allow_uid(uid));
    let mailbox = Mailbox::bind_with(&args.name, &options)?;
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    // Interrupted or terminated: unbind cleanly (the name is free at once).
    let _ = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    });
    println!("ready {}", args.name);
    std::io::stdout().flush()?;
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        if stop_rx.try_recv().is_ok() {
            break;
        }
        let request = match mailbox.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(copydata::RecvError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        seen += 1;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", describe(&request, args.json))?;
        out.flush()?;
        drop(out);
        if let Some(d) = args.delay {
            std::thread::sleep(d);
        }
        let data = match (args.echo, request.loan()) {
            (false, _) => Vec::new(),
            (true, Some(loan)) => loan.to_vec(),
            (true, None) => request.payload().to_vec(),
        };
        // A sender that gave up meanwhile is no error for the listener.
        let _ = request.reply(Reply::new(args.reply_code, data));
    }
    Ok(ExitCode::SUCCESS)
}
