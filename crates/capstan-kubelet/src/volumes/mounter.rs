//! The mounts volumes need (tmpfs), behind a trait so unit tests need not be root.

use std::path::{Path, PathBuf};

use super::VolumeError;

/// Mounting and unmounting; [`RealMounter`] on a node, a fake in unit tests.
pub trait Mounter: Send + Sync {
    /// Mounts a tmpfs at `target`, limited to `size_bytes` when given.
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> Result<(), VolumeError>;
    /// Unmounts `target` (lazily, so a busy mount does not block pod teardown).
    fn unmount(&self, target: &Path) -> Result<(), VolumeError>;
    /// Every mount point at or below `dir`, deepest first.
    fn mount_points_under(&self, dir: &Path) -> Result<Vec<PathBuf>, VolumeError>;
}

/// Real mounts through mount(2) / umount2(2), mount points from /proc/self/mountinfo.
pub struct RealMounter;

impl Mounter for RealMounter {
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> Result<(), VolumeError> {
        use nix::mount::{MsFlags, mount};
        let mut data = String::from("mode=0777");
        if let Some(size) = size_bytes {
            data.push_str(&format!(",size={size}"));
        }
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|e| VolumeError::Mount {
            path: target.to_path_buf(),
            message: e.to_string(),
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), VolumeError> {
        use nix::mount::{MntFlags, umount2};
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(VolumeError::Mount {
                path: target.to_path_buf(),
                message: format!("unmount: {e}"),
            }),
        }
    }

    fn mount_points_under(&self, dir: &Path) -> Result<Vec<PathBuf>, VolumeError> {
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| VolumeError::Mount {
                path: dir.to_path_buf(),
                message: format!("reading mountinfo: {e}"),
            })?;
        Ok(mount_points_in(&info, dir))
    }
}

/// Mount points of a mountinfo text at or below `dir`, deepest first.
pub fn mount_points_in(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = u32::from(bytes[i + 1] - b'0') * 64
                + u32::from(bytes[i + 2] - b'0') * 8
                + u32::from(bytes[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
