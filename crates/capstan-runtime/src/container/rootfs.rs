//! Mounts: the container's root filesystem (an overlay of the image's layer directories with a
//! per-container upper/work directory) and the sandbox's network namespace bind mount. Kernel
//! calls sit behind [`Mounter`] so the bookkeeping is testable without root.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::cri::runtime_service::RuntimeError;

/// The mount calls the runtime makes.
pub trait Mounter: Send + Sync {
    fn mount_overlay(&self, target: &Path, options: &str) -> Result<(), RuntimeError>;
    fn bind(&self, source: &Path, target: &Path) -> Result<(), RuntimeError>;
    /// Unmounts `target` (lazily); not mounted is fine.
    fn unmount(&self, target: &Path) -> Result<(), RuntimeError>;
}

/// The real kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMounter;

impl Mounter for KernelMounter {
    fn mount_overlay(&self, target: &Path, options: &str) -> Result<(), RuntimeError> {
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
        .map_err(|e| RuntimeError::sys(format!("mounting overlay at {}", target.display()), e))
    }

    fn bind(&self, source: &Path, target: &Path) -> Result<(), RuntimeError> {
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            RuntimeError::sys(
                format!("bind-mounting {} at {}", source.display(), target.display()),
                e,
            )
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), RuntimeError> {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(RuntimeError::sys(
                format!("unmounting {}", target.display()),
                e,
            )),
        }
    }
}

/// The overlay mount options for `layers` (bottom first) with the given upper and work dirs.
pub fn overlay_options(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String, RuntimeError> {
    if layers.is_empty() {
        return Err(RuntimeError::InvalidArgument("image has no layers".into()));
    }
    for p in layers.iter().map(|p| p.as_path()).chain([upper, work]) {
        let s = p.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(RuntimeError::InvalidArgument(format!(
                "overlay path {s:?} contains ',' or ':'"
            )));
        }
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    // The kernel takes at most one page of mount data.
    if options.len() >= 4096 {
        return Err(RuntimeError::InvalidArgument(format!(
            "overlay options for {} layers exceed one page",
            layers.len()
        )));
    }
    Ok(options)
}

/// Creates `<dir>/{upper,work,bundle/rootfs}` and mounts the overlay at `bundle/rootfs`;
/// returns the rootfs path, made absolute and free of symlinks (runc refuses symlinks).
pub fn mount_rootfs(
    mounter: &dyn Mounter,
    container_dir: &Path,
    layers: &[PathBuf],
) -> Result<PathBuf, RuntimeError> {
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    let rootfs = container_dir.join("bundle").join("rootfs");
    for d in [&upper, &work, &rootfs] {
        fs::create_dir_all(d)
            .map_err(|e| RuntimeError::io(format!("creating {}", d.display()), e))?;
    }
    let rootfs = fs::canonicalize(&rootfs)
        .map_err(|e| RuntimeError::io(format!("resolving {}", rootfs.display()), e))?;
    let options = overlay_options(layers, &upper, &work)?;
    mounter.mount_overlay(&rootfs, &options)?;
    Ok(rootfs)
}

/// True when `path` is a mount point listed in /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|m| m == target)
}

/// Mount points under `prefix` (for leak checks).
pub fn mounts_under(prefix: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = prefix.to_string_lossy().to_string();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lists_the_top_layer_first() {
        let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let o = overlay_options(&layers, Path::new("/c/upper"), Path::new("/c/work")).unwrap();
        assert_eq!(
            o,
            "lowerdir=/l/top:/l/bottom,upperdir=/c/upper,workdir=/c/work"
        );
        assert!(overlay_options(&[], Path::new("/u"), Path::new("/w")).is_err());
        let bad = vec![PathBuf::from("/l/a:b")];
        assert!(overlay_options(&bad, Path::new("/u"), Path::new("/w")).is_err());
    }

    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl Mounter for Recorder {
        fn mount_overlay(&self, target: &Path, options: &str) -> Result<(), RuntimeError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("overlay {} {options}", target.display()));
            Ok(())
        }
        fn bind(&self, _: &Path, _: &Path) -> Result<(), RuntimeError> {
            Ok(())
        }
        fn unmount(&self, _: &Path) -> Result<(), RuntimeError> {
            Ok(())
        }
    }

    #[test]
    fn mount_rootfs_prepares_dirs_and_resolves_symlinks() {
        let real = tempfile::tempdir().unwrap();
        let link_parent = tempfile::tempdir().unwrap();
        let link = link_parent.path().join("link");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let rec = Recorder::default();
        let rootfs = mount_rootfs(&rec, &link, &[PathBuf::from("/layer")]).unwrap();
        let real_root = fs::canonicalize(real.path()).unwrap();
        assert_eq!(rootfs, real_root.join("bundle/rootfs"));
        assert!(real.path().join("upper").is_dir());
        assert_eq!(rec.0.lock().unwrap().len(), 1);
    }
}
