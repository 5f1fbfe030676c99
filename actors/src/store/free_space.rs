//! How much room the disk under the data directory has left.

use std::path::Path;

/// Free bytes a reopen after a full disk wants: opening writes a new journal (or log segment)
/// and the probe that follows writes again.
pub(super) const MIN_FREE_TO_REOPEN: u64 = 8 << 20;

/// Bytes the file system holding `path` has free for this process.
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is written by the call
    // before it is read; on failure it is not read.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // Both are 64-bit on the 64-bit Linux the hub is built for; elsewhere they widen.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Some(blocks.saturating_mul(size))
}
