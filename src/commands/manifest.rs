//! `bicache manifest SOURCE`: a sized manifest of SOURCE on stdout, for `--manifest`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::source::{Source, walk};
use crate::stats::Stats;

/// Walks SOURCE (in parallel, as a mount does) and prints every regular file as
/// `SIZE<TAB>PATH` under the sized header, sorted by path: the list `--manifest` reads
/// with no stat of the dataset. A summary goes to stderr.
pub fn run(source: &Path) -> Result<(), String> {
    let src = Source::open_dataset(source, Arc::new(Stats::default()), false)?;
    let files = walk::walk(&src)?;
    // Checked before the first line is written: no half manifest on stdout.
    for f in &files {
        if let Some(why) = walk::unlistable(&f.path) {
            let full = src.root_path().join(&f.path);
            return Err(format!(
                "'{}' cannot be a manifest line: {why}",
                walk::show(full.as_os_str().as_bytes())
            ));
        }
    }
    let whole = super::to_stdout("the manifest", |out| {
        out.write_all(walk::SIZED_HEADER)?;
        out.write_all(b"\n")?;
        files.iter().try_for_each(|f| {
            write!(out, "{}\t", f.size)?;
            out.write_all(f.path.as_os_str().as_bytes())?;
            out.write_all(b"\n")
        })
    })?;
    if !whole {
        return Ok(());
    }
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    eprintln!(
        "bicache: {} files, {} in {}",
        files.len(),
        crate::size::human(bytes),
        source.display()
    );
    Ok(())
}
