//! Extended attributes pass through read-only: values and lists as at the source,
//! a missing one is ENODATA, setting or removing one is EROFS.

mod common;

use std::ffi::CString;

use common::*;

fn getxattr(path: &std::path::Path, name: &str) -> Result<Vec<u8>, i32> {
    let p = cpath(path);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn setxattr(path: &std::path::Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let p = cpath(path);
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(())
}

#[test]
fn xattrs_pass_through_read_only() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("labelled.bin", 1000, 1);
    let src = s.src.join("labelled.bin");
    if setxattr(&src, "user.label", b"cat").is_err() {
        panic!("the test's source filesystem must support user xattrs");
    }
    let m = s.mount(&["--disk", "16MiB"]);
    let f = m.path("labelled.bin");
    assert_eq!(getxattr(&f, "user.label"), Ok(b"cat".to_vec()));
    assert_eq!(getxattr(&f, "user.missing"), Err(libc::ENODATA));
    let p = cpath(&f);
    let mut list = vec![0u8; 256];
    let n = unsafe { libc::llistxattr(p.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(n > 0);
    assert!(
        list[..n as usize]
            .split(|b| *b == 0)
            .any(|x| x == b"user.label")
    );
    assert_eq!(setxattr(&f, "user.other", b"x"), Err(libc::EROFS));
    let name = CString::new("user.label").unwrap();
    let r = unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        getxattr(&src, "user.label"),
        Ok(b"cat".to_vec()),
        "source unchanged"
    );
}
