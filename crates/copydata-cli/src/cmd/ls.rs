//! `copydata ls`: this user's live named objects.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args as ClapArgs;
use copydata::ListError;

use crate::exit;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Print one JSON document: {"sections": [{"name", "size"}], "mailboxes":
    /// [{"name", "pid"}], "objects": [{"name", "kind"}]} (kind: mutex, event
    /// or shared). A kind that could not be listed is empty there.
    #[arg(long)]
    json: bool,
}

/// A list, or an empty one where the platform cannot list that kind or
/// the listing failed; a failure is said on stderr and counted in `failed`.
fn listed<T>(list: Result<Vec<T>, ListError>, failed: &mut u32) -> Vec<T> {
    match list {
        Ok(v) => v,
        Err(ListError::Unsupported { .. }) => Vec::new(),
        Err(e) => {
            log::error!("{}", exit::one_line(&e.into()));
            *failed += 1;
            Vec::new()
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Each kind is listed even if another fails: the listing shows what
    // could be listed, stderr says what could not, and the exit code is 1.
    let mut failed = 0;
    let sections = listed(copydata::list(), &mut failed);
    let mailboxes = listed(copydata::mailboxes(), &mut failed);
    let objects = listed(copydata::sync::objects(), &mut failed);
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
    out.flush()?;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::OTHER) })
}
