//! Upstream's atomic writer layout for API-data volumes: the files live in a timestamped dir
//! (`..2026_11_27_08_00_00.1234`), `..data` is a symlink to it swapped atomically by rename, and
//! each user-visible top-level name is a symlink into `..data`. Readers never see a half update.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::VolumeError;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path -> content and mode.
pub type Payload = BTreeMap<String, FileProjection>;

/// Checks a payload path: relative, no `..` component, not starting with `..`.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("invalid path: must not be empty".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("invalid path: must be relative path: {path}"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("invalid path: must not contain '..': {path}"));
    }
    if path.starts_with("..") {
        return Err(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

/// Writes `payload` into `dir` unless it already holds exactly that; returns whether it wrote.
pub fn write(dir: &Path, payload: &Payload) -> Result<bool, VolumeError> {
    let err = |path: &Path, e: std::io::Error| VolumeError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    for path in payload.keys() {
        validate_path(path).map_err(|message| VolumeError::Io {
            path: dir.join(path),
            message,
        })?;
    }
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let data_link = dir.join(DATA);
    let old_ts = std::fs::read_link(&data_link).ok();
    let old_paths = match &old_ts {
        Some(ts) => list_files(&dir.join(ts)),
        None => BTreeSet::new(),
    };
    if let Some(ts) = &old_ts
        && unchanged(&dir.join(ts), &old_paths, payload)
        && user_visible_present(dir, payload)
    {
        return Ok(false);
    }

    let ts_name = timestamp_dir_name();
    let ts_dir = dir.join(&ts_name);
    std::fs::create_dir(&ts_dir).map_err(|e| err(&ts_dir, e))?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| err(&ts_dir, e))?;
    for (path, file) in payload {
        let full = ts_dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
        }
        std::fs::write(&full, &file.data).map_err(|e| err(&full, e))?;
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| err(&full, e))?;
    }

    let tmp_link = dir.join(DATA_TMP);
    match std::fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(&tmp_link, e)),
    }
    std::os::unix::fs::symlink(&ts_name, &tmp_link).map_err(|e| err(&tmp_link, e))?;
    std::fs::rename(&tmp_link, &data_link).map_err(|e| err(&data_link, e))?;

    let new_top: BTreeSet<String> = payload.keys().map(|p| top(p)).collect();
    for name in &new_top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA).join(name), &link)
                .map_err(|e| err(&link, e))?;
        }
    }
    for name in old_paths.iter().map(|p| top(p)).collect::<BTreeSet<_>>() {
        if !new_top.contains(&name) {
            let link = dir.join(&name);
            if let Err(e) = std::fs::remove_file(&link)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(err(&link, e));
            }
        }
    }
    if let Some(ts) = old_ts {
        let old = dir.join(ts);
        if old != ts_dir {
            std::fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
        }
    }
    Ok(true)
}

fn top(path: &str) -> String {
    path.split('/').next().unwrap_or(path).to_string()
}

fn timestamp_dir_name() -> String {
    let now = jiff::Timestamp::now();
    format!(
        "..{}.{}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        rand::random::<u32>()
    )
}

/// Regular files below `dir`, as relative paths.
fn list_files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) => {
                    if let Ok(rel) = path.strip_prefix(dir) {
                        out.insert(rel.to_string_lossy().into_owned());
                    }
                }
                Err(_) => {}
            }
        }
    }
    out
}

fn unchanged(ts_dir: &Path, old_paths: &BTreeSet<String>, payload: &Payload) -> bool {
    if old_paths.len() != payload.len() || !payload.keys().all(|k| old_paths.contains(k)) {
        return false;
    }
    payload.iter().all(|(path, file)| {
        let full = ts_dir.join(path);
        let same_mode = std::fs::metadata(&full)
            .map(|m| m.permissions().mode() & 0o7777 == file.mode & 0o7777)
            .unwrap_or(false);
        same_mode
            && std::fs::read(&full)
                .map(|d| d == file.data)
                .unwrap_or(false)
    })
}

fn user_visible_present(dir: &Path, payload: &Payload) -> bool {
    payload
        .keys()
        .all(|p| std::fs::symlink_metadata(dir.join(top(p))).is_ok())
}
