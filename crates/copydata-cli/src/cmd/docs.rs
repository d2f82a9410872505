//! `copydata completions SHELL` and `copydata man`: generated from the
//! same clap definitions as the parser, so they always match it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args as ClapArgs;
use clap_complete::Shell;

#[derive(ClapArgs, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, powershell or elvish.
    shell: Shell,
}

#[derive(ClapArgs, Debug)]
pub struct ManArgs {
    /// Write copydata.1 and one page per subcommand (copydata-send.1,
    /// copydata-section-create.1, ...) into this folder instead (made,
    /// with its parents, if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// The command as completions offer it: without the hidden internal
/// subcommands (clap_complete lists hidden subcommands, unlike the help and
/// clap_mangen). clap has no way to remove a subcommand, so the root is put
/// together again from the parser's own arguments and visible subcommands.
fn visible(full: &clap::Command) -> clap::Command {
    clap::Command::new("copydata")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

pub fn completions(args: CompletionsArgs, full: clap::Command) -> anyhow::Result<ExitCode> {
    let mut command = visible(&full);
    // Into memory first: `generate` panics on a failed write (a closed
    // pipe), writing the buffer reports it instead.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "copydata", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs, command: clap::Command) -> anyhow::Result<ExitCode> {
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir).with_context(|| format!("writing pages into {}", dir.display()))?
        }
        None => {
            // The page `--out-dir` writes as copydata.1: built the same way,
            // without clap's `help` subcommand (which has no page of its own).
            let mut command = command.disable_help_subcommand(true);
            command.build();
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(command).render(&mut out)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
