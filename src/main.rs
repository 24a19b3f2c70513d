//! bicache: a read-only FUSE overlay caching a slow dataset directory in RAM and on local SSD.

mod buf;
mod cache;
mod cli;
mod config;
mod control;
mod daemon;
mod fs;
mod prefetch;
mod shard;
mod size;
mod source;
mod stats;
mod tree;

use clap::Parser;

use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Mount(args) => match config::MountConfig::from_args(&args) {
            Ok(cfg) => daemon::mount(cfg),
            Err(e) => {
                eprintln!("bicache: {e}");
                2
            }
        },
        Command::Unmount { mountpoint } => match control::unmount(&mountpoint) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bicache: {e}");
                1
            }
        },
        Command::Stats { mountpoint, json } => match control::stats(&mountpoint, json) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("bicache: {e}");
                1
            }
        },
        Command::Plan(args) => match shard::run_plan(&args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bicache: {e}");
                2
            }
        },
        Command::Warm { mountpoint, quiet } => match control::warm(&mountpoint, quiet) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bicache: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}
