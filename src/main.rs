//! The `bicache` command: parses the command line and hands it to the library.

use clap::Parser;

fn main() {
    let cli = bicache::cli::Cli::parse();
    std::process::exit(bicache::commands::run(cli));
}
