//! `copydata ls`: live named objects of this user.

use std::process::ExitCode;

use clap::Args as ClapArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Print one JSON document: {"sections": [{"name", "size"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sections = copydata::list()?;
    if args.json {
        let list: Vec<_> = sections.iter().map(|s| serde_json::json!({ "name": s.name, "size": s.size })).collect();
        println!("{}", serde_json::json!({ "sections": list }));
    } else {
        println!("{:<8} {:<40} {:>14}", "KIND", "NAME", "SIZE");
        for s in &sections {
            println!("{:<8} {:<40} {:>14}", "section", s.name, s.size);
        }
    }
    Ok(ExitCode::SUCCESS)
}
