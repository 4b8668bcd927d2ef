//! The container's user: numeric ids or names resolved in the container's own /etc/passwd and
//! /etc/group (never the host's), as the image's USER or the pod's securityContext give them.

use std::path::Path;

use crate::cri::runtime_service::{LinuxContainerSecurityContext, RuntimeError};

/// The process identity for the OCI spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: Option<String>,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_passwd(rootfs: &Path) -> Vec<Passwd> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Passwd {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn read_group(rootfs: &Path) -> Vec<Group> {
    let text = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Group {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves the identity from the security context (which wins) and the image's USER
/// (`user`, `uid`, `user:group`, `uid:gid`) against the files under `rootfs`.
pub fn resolve(
    rootfs: &Path,
    image_user: &str,
    security: &LinuxContainerSecurityContext,
) -> Result<Identity, RuntimeError> {
    let passwd = read_passwd(rootfs);
    let groups = read_group(rootfs);
    let (image_u, image_g) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let user_spec: String = if let Some(uid) = security.run_as_user {
        uid.to_string()
    } else if let Some(name) = &security.run_as_username {
        name.clone()
    } else {
        image_u.to_string()
    };
    let entry = if user_spec.is_empty() {
        passwd.iter().find(|p| p.uid == 0)
    } else if let Ok(uid) = user_spec.parse::<u32>() {
        passwd.iter().find(|p| p.uid == uid)
    } else {
        Some(passwd.iter().find(|p| p.name == user_spec).ok_or_else(|| {
            RuntimeError::InvalidArgument(format!(
                "user {user_spec:?} not found in the image's /etc/passwd"
            ))
        })?)
    };
    let uid = match user_spec.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map_or(0, |e| e.uid),
    };
    // An explicit runAsUser resets the image's group, as upstream does.
    let group_spec = match (security.run_as_group, security.run_as_user) {
        (Some(g), _) => Some(g.to_string()),
        (None, Some(_)) => None,
        (None, None) => image_g.map(String::from),
    };
    let gid = match group_spec {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|gr| gr.name == g)
                .map(|gr| gr.gid)
                .ok_or_else(|| {
                    RuntimeError::InvalidArgument(format!(
                        "group {g:?} not found in the image's /etc/group"
                    ))
                })?,
        },
        None => entry.map_or(0, |e| e.gid),
    };
    let mut additional: Vec<u32> = Vec::new();
    if let Some(e) = entry {
        for g in groups.iter().filter(|g| g.members.contains(&e.name)) {
            additional.push(g.gid);
        }
    }
    for g in &security.supplemental_groups {
        let g = u32::try_from(*g)
            .map_err(|_| RuntimeError::InvalidArgument(format!("invalid group id {g}")))?;
        additional.push(g);
    }
    additional.sort_unstable();
    additional.dedup();
    additional.retain(|g| *g != gid);
    Ok(Identity {
        uid,
        gid,
        additional_gids: additional,
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_resolve_in_the_container_files() {
        let r = rootfs();
        let sc = LinuxContainerSecurityContext::default();
        let id = resolve(r.path(), "www", &sc).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.additional_gids.clone()),
            (33, 33, vec![50])
        );
        assert_eq!(id.home.as_deref(), Some("/var/www"));
        let id = resolve(r.path(), "www:staff", &sc).unwrap();
        assert_eq!((id.uid, id.gid), (33, 50));
        let id = resolve(r.path(), "", &sc).unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
        assert!(resolve(r.path(), "nobody", &sc).is_err());
    }

    #[test]
    fn security_context_overrides_the_image() {
        let r = rootfs();
        let sc = LinuxContainerSecurityContext {
            run_as_user: Some(1234),
            ..Default::default()
        };
        let id = resolve(r.path(), "www:staff", &sc).unwrap();
        assert_eq!((id.uid, id.gid), (1234, 0));
        let sc = LinuxContainerSecurityContext {
            run_as_username: Some("www".into()),
            run_as_group: Some(7),
            supplemental_groups: vec![9],
            ..Default::default()
        };
        let id = resolve(r.path(), "", &sc).unwrap();
        assert_eq!((id.uid, id.gid, id.additional_gids), (33, 7, vec![9, 50]));
    }
}
