//! Several mounts on one node often put their caches on the same local disk. Each has its
//! own budget; when together they claim more than the disk holds, the disk fills and each
//! falls back to RAM and the source. At mount, bicache looks at the other bicache mounts
//! it can see and warns when the sum of their SSD budgets and its own exceeds the disk.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::CONTROL_DIR;
use crate::stats::Snapshot;

/// (cache dir, SSD budget) of each other live bicache mount whose cache dir is on the
/// filesystem `dev`. A mount that does not answer within a second is left out.
pub fn other_caches_on(dev: u64, own_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for m in crate::mountinfo::mounts()
        .into_iter()
        .filter(|m| m.is_bicache())
    {
        let stats_file = m.mount_point.join(CONTROL_DIR).join("stats.json");
        let (tx, rx) = mpsc::channel();
        // A hung daemon must not hang this mount: read on a thread, wait a second.
        let spawned = std::thread::Builder::new()
            .name("bicache-peek".into())
            .spawn(move || {
                let snap = std::fs::read_to_string(&stats_file)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Snapshot>(&t).ok());
                let _ = tx.send(snap);
            });
        if spawned.is_err() {
            continue;
        }
        let Ok(Some(snap)) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        let dir = PathBuf::from(&snap.cache.dir);
        if dir == own_dir || snap.disk.tier.capacity == 0 {
            continue;
        }
        if std::fs::metadata(&dir).is_ok_and(|md| md.dev() == dev) {
            out.push((dir, snap.disk.tier.capacity));
        }
    }
    out
}
