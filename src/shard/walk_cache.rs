//! The walk cache: the dataset's file list kept between mounts, so a remount does not walk
//! a large tree on a metadata-slow filesystem again.
//!
//! Format (text, one record a line; paths percent-escaped so any byte string fits a line):
//!
//! ```text
//! bicache-walk 2
//! source <escaped canonical source path>
//! mtime <source root mtime in ns>
//! <size> <mtime_ns> <ctime_ns> <ino> <escaped relative path>   (sorted by path bytes, unique)
//! end <xxh3-64 of everything above, 16 hex digits>
//! ```
//!
//! A file that is truncated, altered or written by another version fails the checks and is
//! rebuilt. Nothing read from it sizes an allocation.

use std::path::{Path, PathBuf};

use crate::source::FileVersion;
use crate::source::walk::normalize_rel;

const WALK_MAGIC: &str = "bicache-walk 2";

/// What a cached list is valid for: one source, and its root as it was when walked (a
/// walk), or the manifest's bytes (a manifest's checked list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkKey {
    pub source: PathBuf,
    /// The root's mtime in ns for a walk; the xxh3 of the manifest for a manifest.
    pub root_mtime_ns: i128,
    /// "walk" or "manifest": names the file.
    pub what: &'static str,
}

impl WalkKey {
    /// The file name the list is kept under.
    pub fn file_name(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.source.as_os_str().as_encoded_bytes());
        if self.what != "walk" {
            h.update(&self.root_mtime_ns.to_le_bytes());
        }
        format!("{}-{:016x}.txt", self.what, h.digest())
    }
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
}

fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'%' || b < 0x20 || b == 0x7f {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

pub fn encode(key: &WalkKey, files: &[FileVersion]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + files.len() * 80);
    out.extend_from_slice(WALK_MAGIC.as_bytes());
    out.extend_from_slice(b"\nsource ");
    escape_into(&mut out, bytes(&key.source));
    out.extend_from_slice(format!("\nmtime {}\n", key.root_mtime_ns).as_bytes());
    for f in files {
        out.extend_from_slice(
            format!("{} {} {} {} ", f.size, f.mtime_ns, f.ctime_ns, f.ino).as_bytes(),
        );
        escape_into(&mut out, bytes(&f.path));
        out.push(b'\n');
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(format!("end {sum:016x}\n").as_bytes());
    out
}

fn number<T: std::str::FromStr>(field: Option<&[u8]>) -> Option<T> {
    std::str::from_utf8(field?).ok()?.parse().ok()
}

/// Parses a walk cache file; `None` for anything unexpected, including another key.
pub fn decode(data: &[u8], key: &WalkKey) -> Option<Vec<FileVersion>> {
    let body_end = data.strip_suffix(b"\n")?;
    let trailer_at = body_end.iter().rposition(|b| *b == b'\n')? + 1;
    let (body, trailer) = data.split_at(trailer_at);
    let sum = std::str::from_utf8(trailer.strip_prefix(b"end ")?.strip_suffix(b"\n")?).ok()?;
    if sum.len() != 16 || u64::from_str_radix(sum, 16).ok()? != xxhash_rust::xxh3::xxh3_64(body) {
        return None;
    }
    let mut lines = body.strip_suffix(b"\n")?.split(|b| *b == b'\n');
    if lines.next()? != WALK_MAGIC.as_bytes() {
        return None;
    }
    if unescape(lines.next()?.strip_prefix(b"source ")?)? != bytes(&key.source) {
        return None;
    }
    let mtime: i128 = number(lines.next()?.strip_prefix(b"mtime "))?;
    if mtime != key.root_mtime_ns {
        return None;
    }
    let mut files: Vec<FileVersion> = Vec::new();
    for line in lines {
        let mut parts = line.splitn(5, |b| *b == b' ');
        let size: u64 = number(parts.next())?;
        let mtime_ns: i128 = number(parts.next())?;
        let ctime_ns: i128 = number(parts.next())?;
        let ino: u64 = number(parts.next())?;
        let raw = unescape(parts.next()?)?;
        // Only what the walk itself could have produced: clean, relative, sorted, unique.
        let path = normalize_rel(&raw).ok()?;
        if bytes(&path) != raw.as_slice() {
            return None;
        }
        if let Some(prev) = files.last()
            && bytes(&prev.path) >= raw.as_slice()
        {
            return None;
        }
        files.push(FileVersion {
            path,
            size,
            mtime_ns,
            ctime_ns,
            ino,
        });
    }
    Some(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    fn key() -> WalkKey {
        WalkKey {
            source: PathBuf::from("/data/set"),
            root_mtime_ns: 123_456_789_012,
            what: "walk",
        }
    }

    fn files() -> Vec<FileVersion> {
        vec![
            FileVersion {
                path: PathBuf::from(OsStr::from_bytes(b"a/\xff bad\nname%")),
                size: 7,
                mtime_ns: -5,
                ctime_ns: 9,
                ino: 42,
            },
            FileVersion {
                path: PathBuf::from("b/c d"),
                size: u64::MAX,
                mtime_ns: 1,
                ctime_ns: 2,
                ino: u64::MAX,
            },
        ]
    }

    /// Pins the persisted format: a change here must bump WALK_MAGIC.
    #[test]
    fn golden_bytes() {
        let enc = encode(&key(), &files());
        let want: &[u8] = b"bicache-walk 2\nsource /data/set\nmtime 123456789012\n\
            7 -5 9 42 a/\xff bad%0Aname%25\n\
            18446744073709551615 1 2 18446744073709551615 b/c d\n\
            end 28eefb0aeeff8cac\n";
        assert_eq!(String::from_utf8_lossy(&enc), String::from_utf8_lossy(want));
        assert_eq!(enc, want);
        assert_eq!(key().file_name(), "walk-fa0b1f7e3991310f.txt");
        assert_eq!(decode(&enc, &key()), Some(files()));
    }

    #[test]
    fn parsing_is_defensive() {
        let key = key();
        let files = files();
        let enc = encode(&key, &files);
        assert_eq!(decode(&enc, &key), Some(files.clone()));
        let other = WalkKey {
            source: key.source.clone(),
            root_mtime_ns: 1,
            what: "walk",
        };
        assert_eq!(decode(&enc, &other), None);
        // Every truncation and every single-byte change is rejected, never a panic.
        for n in 0..enc.len() {
            assert_eq!(decode(&enc[..n], &key), None, "truncated at {n}");
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = enc.clone();
                bad[n] ^= flip;
                assert_eq!(decode(&bad, &key), None, "byte {n} ^ {flip:#x}");
            }
        }
        // Well-formed checksums over bad content: still rejected.
        let forge = |body: &str| {
            let sum = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
            format!("{body}end {sum:016x}\n").into_bytes()
        };
        let head = "bicache-walk 2\nsource /data/set\nmtime 123456789012\n";
        for body in [
            "1 1 1 1 ../x\n",
            "1 1 1 1 /abs\n",
            "1 1 1 1 b\n1 1 1 1 a\n",
            "1 1 1 1 a\n1 1 1 1 a\n",
            "1 1 1 1 a//b\n",
            "-1 1 1 1 a\n",
            "1 1 1 1\n",
            "1 1 a\n",
            "1 1 1 1 %zz\n",
            "1 1 1 1 %4\n",
            "1 1 1 1 .bicache/x\n",
            "99999999999999999999999 1 1 1 a\n",
        ] {
            assert_eq!(
                decode(&forge(&format!("{head}{body}")), &key),
                None,
                "{body:?}"
            );
        }
        assert_eq!(decode(&forge(head), &key), Some(vec![]));
        // The previous format is not read as this one.
        let v1 = forge("bicache-walk 1\nsource /data/set\nmtime 123456789012\n1 1 a\n");
        assert_eq!(decode(&v1, &key), None);
    }
}
