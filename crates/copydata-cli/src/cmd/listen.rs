//! `copydata listen NAME`: bind a mailbox and print what arrives.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
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
    /// Reply with the message's own payload (from 64 KiB written straight
    /// into shared memory lent for the reply, which the sender reads in
    /// place).
    #[arg(long)]
    echo: bool,
    /// The reply code.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    reply_code: i64,
    /// Wait this long before replying (e.g. 500ms, 2s).
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// One JSON object per line: first {"ready": NAME}, then one per
    /// message: tag, size, pid, uid, sections, post, utf8, sha256, preview
    /// (the first 64 characters, as in the text line); with --hex also
    /// hex, the whole payload in hexadecimal digits.
    #[arg(long, conflicts_with = "raw")]
    json: bool,
    /// Show the whole payload as hexadecimal digits (data=48656c6c6f)
    /// instead of as text (with --json: in the field hex, beside the
    /// preview).
    #[arg(long, conflicts_with = "raw")]
    hex: bool,
    /// Write each payload's bytes, unchanged and nothing else, to stdout
    /// (the payloads of several messages follow each other); the ready
    /// line goes to stderr.
    #[arg(long)]
    raw: bool,
    /// Linux: also accept senders of this user (repeatable); they send with
    /// `send --owner THIS-UID`.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// How many senders may be connected at once; one more gets exit code
    /// 8 (busy) until one of them leaves.
    #[arg(long, value_name = "N", default_value_t = copydata::DEFAULT_MAX_CONNECTIONS as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
}

/// How many characters of a payload a line shows (an invalid byte counts
/// as one).
const PREVIEW: usize = 64;

/// A payload as text between double quotes: valid UTF-8 as it is, with
/// `\` and `"` escaped by a backslash, control characters escaped (`\n`,
/// `\r`, `\t`, `\xNN` below 0x80, `\u{NN}` above) and each byte that is not
/// part of valid UTF-8 as `\xNN`. At most `limit` characters, then `...`.
fn text(data: &[u8], limit: usize) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for chunk in data.utf8_chunks() {
        for c in chunk.valid().chars() {
            if shown == limit {
                out.push_str("...");
                return out;
            }
            shown += 1;
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() && c.is_ascii() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            if shown == limit {
                out.push_str("...");
                return out;
            }
            shown += 1;
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe(msg: &Message, data: &[u8], args: &Args) -> String {
    let sender = msg.sender();
    if args.json {
        let sha: String = hex(&Sha256::digest(data));
        let mut o = serde_json::json!({
            "tag": msg.tag(),
            "size": data.len(),
            "pid": sender.pid,
            "uid": sender.uid,
            "sections": msg.sections().len(),
            "post": !msg.expects_reply(),
            "utf8": std::str::from_utf8(data).is_ok(),
            "sha256": sha,
            "preview": text(data, PREVIEW),
        });
        if args.hex {
            o["hex"] = hex(data).into();
        }
        o.to_string()
    } else {
        let uid = sender.uid.map(|u| format!(" uid={u}")).unwrap_or_default();
        let sections =
            if msg.sections().is_empty() { String::new() } else { format!(" sections={}", msg.sections().len()) };
        let post = if msg.expects_reply() { "" } else { " post" };
        let shown = if args.hex { hex(data) } else { format!("\"{}\"", text(data, PREVIEW)) };
        format!("tag={} size={} pid={}{uid}{sections}{post} data={shown}", msg.tag(), data.len(), sender.pid)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = args.allow_uid.iter().fold(
        copydata::MailboxOptions::new().max_connections(usize::try_from(args.max_connections).unwrap_or(usize::MAX)),
        |o, &uid| o.allow_uid(uid),
    );
    let mailbox = Mailbox::bind_with(&args.name, &options)?;
    log::info!("mailbox {:?} bound by pid {}", args.name, std::process::id());
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    // Interrupted or terminated: unbind cleanly (the name is free at once).
    let _ = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    });
    if args.raw {
        // Stdout carries the payloads only.
        eprintln!("ready {}", args.name);
    } else {
        let mut out = std::io::stdout();
        if args.json {
            // Every line of a --json listen is a JSON document.
            writeln!(out, "{}", serde_json::json!({ "ready": args.name }))?;
        } else {
            writeln!(out, "ready {}", args.name)?;
        }
        out.flush()?;
    }
    let mut seen = 0u64;
    // Loaned messages are read out of the sender's buffer into this one,
    // kept from message to message (a fresh one would fault in its pages
    // each time).
    let mut lent = Vec::new();
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
        let loaned = match request.loan() {
            Some(loan) => {
                lent.resize(loan.len(), 0);
                loan.read_at(0, &mut lent).context("reading a loaned message")?;
                true
            }
            None => false,
        };
        let data: &[u8] = if loaned { &lent } else { request.payload() };
        log::debug!(
            "message {seen}: tag {} from pid {}, {} bytes{}",
            request.tag(),
            request.sender().pid,
            data.len(),
            if loaned { " (loaned)" } else { "" }
        );
        let mut out = std::io::stdout().lock();
        if args.raw {
            out.write_all(data)?;
        } else {
            writeln!(out, "{}", describe(&request, data, &args))?;
        }
        out.flush()?;
        drop(out);
        // Interrupted during the delay: stop at once (the message, not
        // answered, is refused to its sender).
        if let Some(d) = args.delay
            && stop_rx.recv_timeout(d).is_ok()
        {
            break;
        }
        let reply = match (args.echo, request.expects_reply()) {
            (false, _) | (true, false) => Reply::code(args.reply_code),
            (true, true) => echo(&request, data, args.reply_code),
        };
        // A sender that gave up meanwhile is no error for the listener.
        if let Err(e) = request.reply(reply) {
            log::info!("message {seen}: the reply was not delivered: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// From this size, `--echo` writes the bytes straight into a buffer lent
/// for the reply (the sender reads them in place) rather than copying
/// them into a reply that is copied again: below it, a reply travels
/// cheaper in the message itself.
const ECHO_LOAN_FROM: usize = 64 << 10;

/// The `--echo` reply: the message's bytes back, lent from
/// [`ECHO_LOAN_FROM`] bytes on.
fn echo(request: &copydata::Request, data: &[u8], code: i64) -> Reply {
    if data.len() >= ECHO_LOAN_FROM
        && let Ok(mut loan) = request.loan_reply(data.len())
        && loan.write_at(0, data).is_ok()
    {
        return Reply::loaned(code, loan);
    }
    Reply::new(code, data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::{hex, text};

    #[test]
    fn valid_utf8_is_shown_as_text() {
        assert_eq!(text("café".as_bytes(), 64), "café");
        assert_eq!(text("日本語 ✓ 🎉".as_bytes(), 64), "日本語 ✓ 🎉");
        assert_eq!(text(b"", 64), "");
    }

    #[test]
    fn control_characters_quotes_and_backslashes_are_escaped() {
        assert_eq!(text(b"a\nb\tc\rd", 64), "a\\nb\\tc\\rd");
        assert_eq!(text(b"\x00\x1b[31m\x7f", 64), "\\x00\\x1b[31m\\x7f");
        assert_eq!(text("\u{85}".as_bytes(), 64), "\\u{85}");
        assert_eq!(text(br#"say "hi" \ bye"#, 64), r#"say \"hi\" \\ bye"#);
    }

    #[test]
    fn invalid_utf8_is_escaped_byte_by_byte() {
        assert_eq!(text(b"ok\xff\xfe", 64), "ok\\xff\\xfe");
        // A truncated sequence among valid text: only its bytes are escaped.
        assert_eq!(text(b"caf\xc3 caf\xc3\xa9", 64), "caf\\xc3 café");
        // Lossless: a literal backslash-x in valid text differs from a byte.
        assert_ne!(text(b"\\xff", 64), text(b"\xff", 64));
    }

    #[test]
    fn the_preview_stops_at_a_character_boundary() {
        assert_eq!(text("éééé".as_bytes(), 2), "éé...");
        assert_eq!(text(b"\xff\xff\xff", 2), "\\xff\\xff...");
        assert_eq!(text(b"abc", 3), "abc");
    }

    #[test]
    fn hex_is_every_byte() {
        assert_eq!(hex(b"Hi\x00\xff"), "486900ff");
    }
}
