//! Cgroup facts the runtime needs beyond what the OCI runtime does: where the hierarchies are
//! mounted (v1, hybrid or pure v2), the OOM-kill counter of a container's memory cgroup, and
//! removal of the empty parent directories runc leaves behind.

use std::fs;
use std::path::{Path, PathBuf};

/// The cgroup hierarchies mounted on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// Every cgroup (v1 or v2) mount point.
    pub mount_points: Vec<PathBuf>,
    /// Where the memory controller lives and whether that hierarchy is v2.
    pub memory: Option<(PathBuf, bool)>,
}

impl CgroupMounts {
    /// Reads /proc/self/mountinfo.
    pub fn detect() -> Self {
        match fs::read_to_string("/proc/self/mountinfo") {
            Ok(text) => Self::parse(&text, |p| {
                fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default()
            }),
            Err(_) => CgroupMounts::default(),
        }
    }

    /// Parses mountinfo text; `v2_controllers` reads a v2 mount's cgroup.controllers.
    pub fn parse(mountinfo: &str, v2_controllers: impl Fn(&Path) -> String) -> Self {
        let mut mounts = CgroupMounts::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mut right = right.split_whitespace();
            let fstype = right.next().unwrap_or("");
            let super_opts = right.nth(1).unwrap_or("");
            let path = PathBuf::from(mount_point);
            match fstype {
                "cgroup" => {
                    if super_opts.split(',').any(|o| o == "memory") {
                        mounts.memory = Some((path.clone(), false));
                    }
                    mounts.mount_points.push(path);
                }
                "cgroup2" => {
                    let has_memory = v2_controllers(&path)
                        .split_whitespace()
                        .any(|c| c == "memory");
                    if has_memory && mounts.memory.is_none() {
                        mounts.memory = Some((path.clone(), true));
                    }
                    mounts.mount_points.push(path);
                }
                _ => {}
            }
        }
        mounts
    }

    /// The memory cgroup directory of `cgroups_path` and whether it is v2.
    pub fn memory_dir(&self, cgroups_path: &str) -> Option<(PathBuf, bool)> {
        let (root, v2) = self.memory.as_ref()?;
        Some((root.join(cgroups_path.trim_start_matches('/')), *v2))
    }

    /// Removes `cgroups_path` and then its parents up to and including `stop_at` from every
    /// hierarchy, each only if empty (rmdir refuses a cgroup with tasks or children).
    pub fn remove_empty(&self, cgroups_path: &str, stop_at: &str) {
        let stop_at = stop_at.trim_matches('/');
        for root in &self.mount_points {
            let mut rel = PathBuf::from(cgroups_path.trim_start_matches('/'));
            loop {
                if rel.as_os_str().is_empty() {
                    break;
                }
                let dir = root.join(&rel);
                if dir.exists() && fs::remove_dir(&dir).is_err() {
                    break;
                }
                if rel == Path::new(stop_at) {
                    break;
                }
                if !rel.pop() {
                    break;
                }
            }
        }
    }

    /// Directories left for `cgroups_path` in any hierarchy (for tests and diagnostics).
    pub fn leftovers(&self, cgroups_path: &str) -> Vec<PathBuf> {
        self.mount_points
            .iter()
            .map(|r| r.join(cgroups_path.trim_start_matches('/')))
            .filter(|p| p.exists())
            .collect()
    }
}

/// How many times the kernel's OOM killer killed a task of the memory cgroup `dir`.
pub fn oom_kill_count(dir: &Path, v2: bool) -> u64 {
    let (file, key) = if v2 {
        ("memory.events", "oom_kill")
    } else {
        ("memory.oom_control", "oom_kill")
    };
    let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout_keeps_memory_on_v1() {
        let m = CgroupMounts::parse(HYBRID, |_| "hugetlb".into());
        assert_eq!(m.mount_points.len(), 3);
        assert_eq!(
            m.memory,
            Some((PathBuf::from("/sys/fs/cgroup/memory"), false))
        );
        let (dir, v2) = m.memory_dir("/capstan/pod/c1").unwrap();
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/memory/capstan/pod/c1"));
        assert!(!v2);
    }

    #[test]
    fn pure_v2_has_memory_in_the_unified_hierarchy() {
        let text = "40 24 0:36 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = CgroupMounts::parse(text, |_| "cpu memory pids".into());
        assert_eq!(m.memory, Some((PathBuf::from("/sys/fs/cgroup"), true)));
    }

    #[test]
    fn oom_counters_are_read_from_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("memory.events"),
            "low 0\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(oom_kill_count(dir.path(), false), 2);
        assert_eq!(oom_kill_count(dir.path(), true), 1);
        assert_eq!(oom_kill_count(&dir.path().join("none"), true), 0);
    }

    #[test]
    fn remove_empty_stops_at_the_parent_and_at_busy_dirs() {
        let root = tempfile::tempdir().unwrap();
        let m = CgroupMounts {
            mount_points: vec![root.path().to_path_buf()],
            memory: None,
        };
        fs::create_dir_all(root.path().join("parent/pod/c1")).unwrap();
        fs::create_dir_all(root.path().join("parent/pod/c2")).unwrap();
        m.remove_empty("/parent/pod/c1", "/parent");
        assert!(!root.path().join("parent/pod/c1").exists());
        assert!(root.path().join("parent/pod/c2").exists());
        m.remove_empty("/parent/pod/c2", "/parent");
        assert!(!root.path().join("parent").exists());
    }
}
