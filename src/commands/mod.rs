//! The subcommands: each turns its arguments into work and an exit code. Errors are one
//! line on stderr, prefixed `bicache:`.

pub mod control;
pub mod manifest;
pub mod plan;
pub mod watch;

use std::io::{self, BufWriter, Write};

use crate::cli::{Cli, Command};

/// Writes a command's output to stdout, buffered; `what` names it in an error. Ok(false):
/// the reader went away first (`bicache plan ... | head`), which is not an error.
fn to_stdout(
    what: &str,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<bool, String> {
    let mut out = BufWriter::new(io::stdout().lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(format!("cannot write {what}: {e}")),
    }
}

/// Runs one command line; returns the process exit code (2: bad input, 1: failure).
pub fn run(cli: Cli) -> i32 {
    let (result, fail_code) = match cli.command {
        Command::Mount(args) => {
            return match crate::config::MountConfig::from_args(&args) {
                Ok(cfg) => crate::daemon::mount(cfg),
                Err(e) => {
                    eprintln!("bicache: {e}");
                    2
                }
            };
        }
        Command::Unmount { mountpoint } => (control::unmount(&mountpoint), 1),
        Command::Stats { mountpoint, opts } => (
            control::stats(&mountpoint, opts).map(|text| print!("{text}")),
            1,
        ),
        Command::Plan(args) => (plan::run(&args), 2),
        Command::Manifest { source } => (manifest::run(&source), 2),
        Command::Warm { mountpoint, quiet } => (control::warm(&mountpoint, quiet), 1),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bicache: {e}");
            fail_code
        }
    }
}
