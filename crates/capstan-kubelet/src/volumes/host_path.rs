//! hostPath volumes: the `type` check (and creation for the *OrCreate types), as upstream.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use super::VolumeError;

/// Checks (or creates) `path` for hostPath `type`; `""`/unset means no check.
pub fn check_type(path: &Path, host_path_type: Option<&str>) -> Result<(), VolumeError> {
    let shown = path.display();
    let fail = |what: &str| {
        Err(VolumeError::HostPathType(format!(
            "hostPath type check failed: {shown} is not {what}"
        )))
    };
    let meta = std::fs::metadata(path).ok();
    let ty = meta.as_ref().map(|m| m.file_type());
    match host_path_type.unwrap_or("") {
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_none() => {
            std::fs::create_dir_all(path).map_err(|e| io(path, e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io(path, e))
        }
        "DirectoryOrCreate" | "Directory" => match ty {
            Some(t) if t.is_dir() => Ok(()),
            _ => fail("a directory"),
        },
        "FileOrCreate" if meta.is_none() => {
            // As upstream, the parent directory is not created.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| io(path, e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| io(path, e))
        }
        "FileOrCreate" | "File" => match ty {
            Some(t) if t.is_file() => Ok(()),
            _ => fail("a file"),
        },
        "Socket" => match ty {
            Some(t) if t.is_socket() => Ok(()),
            _ => fail("a socket file"),
        },
        "CharDevice" => match ty {
            Some(t) if t.is_char_device() => Ok(()),
            _ => fail("a character device"),
        },
        "BlockDevice" => match ty {
            Some(t) if t.is_block_device() => Ok(()),
            _ => fail("a block device"),
        },
        other => Err(VolumeError::HostPathType(format!(
            "{other} is an invalid volume type"
        ))),
    }
}

fn io(path: &Path, e: std::io::Error) -> VolumeError {
    VolumeError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
