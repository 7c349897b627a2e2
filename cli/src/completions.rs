//! `codex-store completions SHELL` and `codex-store man`: the shell completions and the man page,
//! generated from the command-line definition itself (so they never drift from it).

use clap::CommandFactory;

use crate::exit::{write_stdout, Failure};

/// Options of `completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: Args) -> Result<(), Failure> {
    let mut command = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "codex-store", &mut script);
    write_stdout(&String::from_utf8_lossy(&script))
}

/// Prints the man page (roff) on stdout.
pub fn man() -> Result<(), Failure> {
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::Cli::command())
        .render(&mut page)
        .map_err(|e| {
            Failure::other(
                format!("cannot render the man page: {e}"),
                "this is a defect of codex-store: please report it",
            )
        })?;
    write_stdout(&String::from_utf8_lossy(&page))
}
