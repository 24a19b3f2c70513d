//! Which shard a mount serves: from `--shard-index/--shard-count`, or from the launcher's
//! environment (torchrun or Slurm) for `--shard rank|node|disk`.

use crate::cli::{ShardArgs, ShardMode};

/// Which shard a mount serves, and where the numbers came from (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardId {
    pub index: u64,
    pub count: u64,
    pub origin: String,
}

/// The shard this process serves, or `None` for an unsharded mount. Explicit
/// `--shard-index/--shard-count` win; otherwise the numbers come from torchrun's variables,
/// or Slurm's when no torchrun variable is set (torchrun started by srun sees both, and its
/// own are the ones that describe the ranks).
pub fn resolve_shard(
    args: &ShardArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ShardId>, String> {
    match (args.shard_index, args.shard_count) {
        (Some(index), Some(count)) => {
            if count == 0 {
                return Err("--shard-count must be at least 1".into());
            }
            if index >= count {
                return Err(format!(
                    "--shard-index {index} must be less than --shard-count {count}"
                ));
            }
            return Ok(Some(ShardId {
                index,
                count,
                origin: "flags".into(),
            }));
        }
        (Some(_), None) => {
            return Err(
                "--shard-index needs --shard-count (give both, or neither to read \
                        them from the launcher's environment)"
                    .into(),
            );
        }
        (None, Some(_)) => {
            return Err(
                "--shard-count needs --shard-index (give both, or neither to read \
                        them from the launcher's environment)"
                    .into(),
            );
        }
        (None, None) => {}
    }
    if args.shard != ShardMode::Disk && (args.disks.is_some() || args.disk_index.is_some()) {
        // Silently ignoring them would hand this mount another shard than the user meant.
        return Err("--disks and --disk-index only apply to --shard disk".into());
    }
    match args.shard {
        ShardMode::None => Ok(None),
        ShardMode::Rank => rank_from_env(env).map(Some),
        ShardMode::Node => node_from_env(env, "node").map(Some),
        ShardMode::Disk => {
            let (disks, disk) = match (args.disks, args.disk_index) {
                (Some(d), Some(j)) => (d, j),
                _ => return Err("--shard disk needs --disks D and --disk-index J".into()),
            };
            if disks == 0 {
                return Err("--disks must be at least 1".into());
            }
            if disk >= disks {
                return Err(format!(
                    "--disk-index {disk} must be less than --disks {disks}"
                ));
            }
            let node = node_from_env(env, "disk")?;
            let index = node
                .index
                .checked_mul(disks)
                .and_then(|v| v.checked_add(disk));
            let count = node.count.checked_mul(disks);
            match (index, count) {
                (Some(index), Some(count)) => Ok(Some(ShardId {
                    index,
                    count,
                    origin: format!("{}, disk {disk} of {disks}", node.origin),
                })),
                _ => Err(format!(
                    "--shard disk: {} nodes x {disks} disks is too many shards",
                    node.count
                )),
            }
        }
    }
}

const HINT: &str = "give --shard-index I --shard-count K instead";

/// Looks up `names`; `Ok` with their values when all are set and numbers, else the problems.
fn env_numbers(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
) -> Result<Vec<u64>, Vec<String>> {
    let mut values = Vec::new();
    let mut problems = Vec::new();
    for name in names {
        match env(name) {
            None => problems.push(format!("{name} is not set")),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) => values.push(n),
                Err(_) => problems.push(format!("{name}='{}' is not a number", v.trim())),
            },
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(problems)
    }
}

fn any_set(env: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> bool {
    names.iter().any(|n| env(n).is_some())
}

/// Reads one launcher's (index, count) variables, checking index < count.
fn launcher_pair(
    env: &dyn Fn(&str) -> Option<String>,
    mode: &str,
    launcher: &str,
    names: [&str; 2],
) -> Result<ShardId, String> {
    let v = env_numbers(env, &names).map_err(|p| {
        format!(
            "--shard {mode}: incomplete {launcher} environment: {}; {HINT}",
            p.join(", ")
        )
    })?;
    let (index, count) = (v[0], v[1]);
    if index >= count {
        return Err(format!(
            "--shard {mode}: {}={index} is not below {}={count}; {HINT}",
            names[0], names[1]
        ));
    }
    Ok(ShardId {
        index,
        count,
        origin: format!("{launcher} {}={index} {}={count}", names[0], names[1]),
    })
}

fn rank_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<ShardId, String> {
    const TORCHRUN: [&str; 2] = ["RANK", "WORLD_SIZE"];
    const SLURM: [&str; 2] = ["SLURM_PROCID", "SLURM_NTASKS"];
    if any_set(env, &TORCHRUN) {
        launcher_pair(env, "rank", "torchrun", TORCHRUN)
    } else if any_set(env, &SLURM) {
        launcher_pair(env, "rank", "Slurm", SLURM)
    } else {
        Err(format!(
            "--shard rank: no launcher environment (neither torchrun's RANK/WORLD_SIZE nor \
             Slurm's SLURM_PROCID/SLURM_NTASKS is set); {HINT}"
        ))
    }
}

/// Node index and node count (for `node` and `disk`).
fn node_from_env(env: &dyn Fn(&str) -> Option<String>, mode: &str) -> Result<ShardId, String> {
    const TORCHRUN: [&str; 3] = ["GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"];
    const SLURM: [&str; 2] = ["SLURM_NODEID", "SLURM_NNODES"];
    if any_set(env, &TORCHRUN) {
        let v = env_numbers(env, &TORCHRUN).map_err(|p| {
            format!(
                "--shard {mode}: incomplete torchrun environment: {}; {HINT}",
                p.join(", ")
            )
        })?;
        let (group, world, local) = (v[0], v[1], v[2]);
        if local == 0 || world % local != 0 {
            // Nodes with different numbers of ranks have no single node count to derive.
            return Err(format!(
                "--shard {mode}: WORLD_SIZE={world} is not a multiple of \
                 LOCAL_WORLD_SIZE={local}; {HINT}"
            ));
        }
        let nodes = world / local;
        if group >= nodes {
            return Err(format!(
                "--shard {mode}: GROUP_RANK={group} is not below the node count \
                 WORLD_SIZE/LOCAL_WORLD_SIZE={nodes}; {HINT}"
            ));
        }
        Ok(ShardId {
            index: group,
            count: nodes,
            origin: format!(
                "torchrun GROUP_RANK={group} WORLD_SIZE={world} LOCAL_WORLD_SIZE={local}"
            ),
        })
    } else if any_set(env, &SLURM) {
        launcher_pair(env, mode, "Slurm", SLURM)
    } else {
        Err(format!(
            "--shard {mode}: no launcher environment (neither torchrun's GROUP_RANK/\
             WORLD_SIZE/LOCAL_WORLD_SIZE nor Slurm's SLURM_NODEID/SLURM_NNODES is set); {HINT}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::collections::HashMap;

    fn shard_args(extra: &[&str]) -> ShardArgs {
        let argv = ["bicache", "plan", "/src"].iter().chain(extra);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Plan(p) => p.shard,
            _ => unreachable!(),
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(extra: &[&str], env: &[(&str, &str)]) -> Result<Option<ShardId>, String> {
        resolve_shard(&shard_args(extra), &env_of(env))
    }

    fn id(index: u64, count: u64, origin: &str) -> Option<ShardId> {
        Some(ShardId {
            index,
            count,
            origin: origin.into(),
        })
    }

    #[test]
    fn flags_override_everything() {
        let torch = [("RANK", "3"), ("WORLD_SIZE", "8")];
        assert_eq!(resolve(&[], &torch), Ok(None));
        assert_eq!(
            resolve(&["--shard-index", "1", "--shard-count", "4"], &torch),
            Ok(id(1, 4, "flags"))
        );
        assert_eq!(
            resolve(
                &[
                    "--shard",
                    "rank",
                    "--shard-index",
                    "0",
                    "--shard-count",
                    "1"
                ],
                &torch
            ),
            Ok(id(0, 1, "flags"))
        );
        for (flags, needle) in [
            (
                &["--shard-index", "4", "--shard-count", "4"][..],
                "less than",
            ),
            (
                &["--shard-index", "0", "--shard-count", "0"][..],
                "at least 1",
            ),
            (&["--shard-index", "0"][..], "--shard-count"),
            (&["--shard-count", "2"][..], "--shard-index"),
        ] {
            let e = resolve(flags, &torch).unwrap_err();
            assert!(e.contains(needle), "{flags:?}: {e}");
        }
    }

    #[test]
    fn rank_from_torchrun_or_slurm() {
        let torch = [("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")];
        assert_eq!(
            resolve(&["--shard", "rank"], &torch),
            Ok(id(3, 8, "torchrun RANK=3 WORLD_SIZE=8"))
        );
        let slurm = [("SLURM_PROCID", "5"), ("SLURM_NTASKS", "6")];
        assert_eq!(
            resolve(&["--shard", "rank"], &slurm),
            Ok(id(5, 6, "Slurm SLURM_PROCID=5 SLURM_NTASKS=6"))
        );
        // torchrun started by srun: torchrun's ranks are the real ones.
        let both = [torch[0], torch[1], slurm[0], slurm[1]];
        assert_eq!(
            resolve(&["--shard", "rank"], &both)
                .unwrap()
                .unwrap()
                .origin,
            "torchrun RANK=3 WORLD_SIZE=8"
        );
    }

    #[test]
    fn node_from_torchrun_or_slurm() {
        let torch = [
            ("GROUP_RANK", "1"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("RANK", "6"),
        ];
        assert_eq!(
            resolve(&["--shard", "node"], &torch),
            Ok(id(
                1,
                2,
                "torchrun GROUP_RANK=1 WORLD_SIZE=8 LOCAL_WORLD_SIZE=4"
            ))
        );
        let slurm = [
            ("SLURM_NODEID", "2"),
            ("SLURM_NNODES", "3"),
            ("SLURM_PROCID", "9"),
        ];
        assert_eq!(
            resolve(&["--shard", "node"], &slurm),
            Ok(id(2, 3, "Slurm SLURM_NODEID=2 SLURM_NNODES=3"))
        );
    }

    #[test]
    fn disk_mode_multiplies_out() {
        let slurm = [("SLURM_NODEID", "2"), ("SLURM_NNODES", "3")];
        assert_eq!(
            resolve(
                &["--shard", "disk", "--disks", "4", "--disk-index", "1"],
                &slurm
            ),
            Ok(id(
                9,
                12,
                "Slurm SLURM_NODEID=2 SLURM_NNODES=3, disk 1 of 4"
            ))
        );
        let torch = [
            ("GROUP_RANK", "0"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_WORLD_SIZE", "2"),
        ];
        assert_eq!(
            resolve(
                &["--shard", "disk", "--disks", "2", "--disk-index", "1"],
                &torch
            )
            .unwrap()
            .map(|s| (s.index, s.count)),
            Some((1, 4))
        );
        for (flags, needle) in [
            (&["--shard", "disk"][..], "--disks D and --disk-index J"),
            (&["--shard", "disk", "--disks", "2"][..], "--disk-index"),
            (
                &["--shard", "disk", "--disks", "2", "--disk-index", "2"][..],
                "less than",
            ),
            (
                &["--shard", "disk", "--disks", "0", "--disk-index", "0"][..],
                "at least 1",
            ),
            (
                &["--shard", "node", "--disks", "2", "--disk-index", "0"][..],
                "only apply",
            ),
        ] {
            let e = resolve(flags, &slurm).unwrap_err();
            assert!(e.contains(needle), "{flags:?}: {e}");
        }
        let big = [
            ("SLURM_NODEID", "1"),
            ("SLURM_NNODES", &*u64::MAX.to_string()),
        ];
        let e = resolve(
            &["--shard", "disk", "--disks", "2", "--disk-index", "0"],
            &big,
        );
        assert!(e.unwrap_err().contains("too many"));
    }

    /// Launcher variables of one case.
    type Env<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn env_errors_name_the_variables() {
        let cases: &[(&str, Env, &[&str])] = &[
            ("rank", &[], &["RANK", "SLURM_PROCID", "--shard-index"]),
            (
                "node",
                &[],
                &["GROUP_RANK", "SLURM_NODEID", "--shard-count"],
            ),
            ("rank", &[("RANK", "1")], &["WORLD_SIZE is not set"]),
            ("rank", &[("RANK", "x"), ("WORLD_SIZE", "2")], &["RANK='x'"]),
            (
                "rank",
                &[("RANK", "2"), ("WORLD_SIZE", "2")],
                &["RANK=2", "WORLD_SIZE=2"],
            ),
            (
                "rank",
                &[("SLURM_NTASKS", "2")],
                &["SLURM_PROCID is not set"],
            ),
            (
                "node",
                &[("WORLD_SIZE", "8")],
                &["GROUP_RANK", "LOCAL_WORLD_SIZE"],
            ),
            (
                "node",
                &[
                    ("GROUP_RANK", "0"),
                    ("WORLD_SIZE", "6"),
                    ("LOCAL_WORLD_SIZE", "4"),
                ],
                &["not a multiple"],
            ),
            (
                "node",
                &[
                    ("GROUP_RANK", "0"),
                    ("WORLD_SIZE", "6"),
                    ("LOCAL_WORLD_SIZE", "0"),
                ],
                &["LOCAL_WORLD_SIZE=0"],
            ),
            (
                "node",
                &[
                    ("GROUP_RANK", "3"),
                    ("WORLD_SIZE", "6"),
                    ("LOCAL_WORLD_SIZE", "2"),
                ],
                &["GROUP_RANK=3"],
            ),
            (
                "node",
                &[("SLURM_NODEID", "-1"), ("SLURM_NNODES", "2")],
                &["SLURM_NODEID='-1'"],
            ),
        ];
        for (mode, env, needles) in cases {
            let e = resolve(&["--shard", mode], env).unwrap_err();
            assert!(!e.contains('\n'), "one line: {e}");
            for n in *needles {
                assert!(e.contains(n), "{mode} {env:?}: {e:?} lacks {n:?}");
            }
        }
    }
}
