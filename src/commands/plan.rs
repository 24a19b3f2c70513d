//! `bicache plan SOURCE [sharding options] [--capacity SIZE]`: this shard's relative paths,
//! computed exactly as a mount with the same options would, without mounting.

use crate::cli::{PlanArgs, ShardSize};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::shard::{AlwaysVisible, list_dataset, make_plan, resolve_shard, sizing_for, summary};
use crate::size::{SizeSpec, parse_size};
use crate::source::{Source, walk};
use crate::stats::Stats;

/// `bicache plan SOURCE [sharding options] [--capacity SIZE] [--null]`: this shard's
/// relative paths on stdout, one a line (NUL-terminated with `--null`) in prefetch order
/// (raw bytes: a name need not be UTF-8), and a summary on stderr.
pub fn run(args: &PlanArgs) -> Result<(), String> {
    let source = Source::open_dataset(&args.source, Arc::new(Stats::default()), false)?;
    let sa = &args.shard;
    let capacity = match (&args.capacity, sa.shard_size) {
        (Some(text), _) => match parse_size(text, false) {
            Ok(SizeSpec::Bytes(b)) => b,
            // parse_size(_, false) rejects percentages; kept as an error, never a panic.
            Ok(SizeSpec::Percent(_)) => {
                return Err(format!(
                    "--capacity '{text}': a percentage is not allowed here"
                ));
            }
            Err(e) => return Err(format!("--capacity: {e}")),
        },
        (None, ShardSize::Auto) => {
            return Err(
                "--shard-size auto needs --capacity SIZE (the cache capacity to fit the shard to)"
                    .into(),
            );
        }
        (None, ShardSize::Full) => 0,
    };
    if args.capacity.is_some() && sa.shard_size == ShardSize::Full {
        eprintln!("bicache: note: --capacity only matters with --shard-size auto");
    }
    let sizing = sizing_for(sa, capacity)?;
    let visible = AlwaysVisible::new(&sa.always_visible)?;
    // Before the (possibly long) listing, so a missing variable fails at once.
    let shard = resolve_shard(sa, &|k| std::env::var(k).ok())?;
    let files = list_dataset(&source, sa.manifest.as_deref(), None)?.files;
    let plan = make_plan(files, &visible, shard.as_ref(), sa.seed, sizing.as_ref());

    let end = if args.null { b"\0" } else { b"\n" };
    if !args.null {
        // Checked before the first line is written: no half list on stdout.
        if let Some(f) = plan.files.iter().find(|f| walk::holds_newline(&f.path)) {
            let full = source.root_path().join(&f.path);
            return Err(format!(
                "'{}': its name holds a newline, which a list of one path a line cannot \
                 hold; use --null (NUL-terminated paths, for xargs -0)",
                walk::show(full.as_os_str().as_bytes())
            ));
        }
    }
    let whole = super::to_stdout("the shard list", |out| {
        plan.files.iter().try_for_each(|f| {
            out.write_all(f.path.as_os_str().as_bytes())?;
            out.write_all(end)
        })
    })?;
    if !whole {
        return Ok(());
    }
    eprintln!("{}", summary(&plan, shard.as_ref(), sizing.as_ref()));
    Ok(())
}
