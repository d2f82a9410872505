//! `copydata ls`: this user's live named objects.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args as ClapArgs;
use copydata::ListError;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Print one JSON document: {"sections": [{"name", "size"}], "mailboxes":
    /// [{"name", "pid"}], "objects": [{"name", "kind"}]} (kind: mutex, event
    /// or shared).
    #[arg(long)]
    json: bool,
}

/// A list, or an empty one where the platform cannot list that kind.
fn or_empty<T>(list: Result<Vec<T>, ListError>) -> anyhow::Result<Vec<T>> {
    match list {
        Ok(v) => Ok(v),
        Err(ListError::Unsupported) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sections = or_empty(copydata::list())?;
    let mailboxes = or_empty(copydata::mailboxes())?;
    let objects = or_empty(copydata::sync::objects())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let sections: Vec<_> = sections.iter().map(|s| serde_json::json!({ "name": s.name, "size": s.size })).collect();
        let mailboxes: Vec<_> = mailboxes.iter().map(|m| serde_json::json!({ "name": m.name, "pid": m.pid })).collect();
        let objects: Vec<_> =
            objects.iter().map(|o| serde_json::json!({ "name": o.name, "kind": o.kind.to_string() })).collect();
        writeln!(out, "{}", serde_json::json!({ "sections": sections, "mailboxes": mailboxes, "objects": objects }))?;
    } else {
        writeln!(out, "{:<8} {:<40} {:>14} {:>8}", "KIND", "NAME", "SIZE", "PID")?;
        for s in &sections {
            writeln!(out, "{:<8} {:<40} {:>14} {:>8}", "section", s.name, s.size, "-")?;
        }
        for m in &mailboxes {
            writeln!(out, "{:<8} {:<40} {:>14} {:>8}", "mailbox", m.name, "-", m.pid)?;
        }
        for o in &objects {
            writeln!(out, "{:<8} {:<40} {:>14} {:>8}", o.kind.to_string(), o.name, "-", "-")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
