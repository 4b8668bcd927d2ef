//! Unpacked layers stacked as overlayfs lower dirs show exactly the image filesystem:
//! whiteouts hide files, opaque dirs hide lower contents, modes/owners/links survive.
//! Needs root (mount).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use capstan_runtime::testimage::{TestFile, TestImageOptions, busybox_oci_archive_with};
use common::store;

/// An overlay mount removed on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lower_bottom_first: &[PathBuf], target: &Path) -> Overlay {
        let lower: Vec<String> = lower_bottom_first
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        std::fs::create_dir_all(target).unwrap();
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lower.join(":")))
            .arg(target)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount overlay failed (root needed): {out:?}"
        );
        Overlay(target.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn overlay_of_unpacked_layers_shows_the_image_filesystem() {
    let (tmp, store) = store();
    let opts = TestImageOptions {
        files: vec![
            TestFile::file("/data/a", "a"),
            TestFile::file("/data/b", "b"),
            TestFile::file("/keep/gone", "to be whited out"),
            TestFile::file("/keep/stays", "stays"),
            TestFile::Dir {
                path: "/olddir".into(),
                mode: 0o755,
            },
            TestFile::file("/olddir/inner", "x"),
            TestFile::File {
                path: "/secret".into(),
                content: b"s".to_vec(),
                mode: 0o600,
                uid: 1000,
                gid: 2000,
            },
        ],
        extra_layers: vec![vec![
            TestFile::Opaque {
                dir: "/data".into(),
            },
            TestFile::file("/data/c", "c"),
            TestFile::Whiteout {
                path: "/keep/gone".into(),
            },
            TestFile::Whiteout {
                path: "/olddir".into(),
            },
            TestFile::Whiteout {
                path: "/etc/group".into(),
            },
            TestFile::file("/new/file", "new"),
            TestFile::Hardlink {
                path: "/new/link".into(),
                target: "/new/file".into(),
            },
            TestFile::Symlink {
                path: "/new/sym".into(),
                target: "../data/c".into(),
            },
        ]],
        ..Default::default()
    };
    let archive = tmp.path().join("two-layers.tar");
    busybox_oci_archive_with(&archive, "overlay:test", &opts).unwrap();
    let img = store.import_archive(&archive).unwrap().remove(0);
    let layers = store.layer_dirs(&img).unwrap();
    assert_eq!(layers.len(), 2);

    // Overlay form in the upper layer: a 0/0 char device and the opaque xattr.
    let wh = std::fs::symlink_metadata(layers[1].join("keep/gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        xattr::get(layers[1].join("data"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!layers[1].join("keep/.wh.gone").exists());

    let merged = tmp.path().join("merged");
    let _mount = Overlay::mount(&layers, &merged);
    assert_eq!(names(&merged.join("data")), vec!["c"]);
    assert_eq!(names(&merged.join("keep")), vec!["stays"]);
    assert!(!merged.join("olddir").exists());
    assert!(!merged.join("etc/group").exists());
    assert!(merged.join("etc/passwd").is_file());
    assert_eq!(
        std::fs::read_link(merged.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let secret = std::fs::metadata(merged.join("secret")).unwrap();
    assert_eq!(
        (
            secret.uid(),
            secret.gid(),
            secret.permissions().mode() & 0o777
        ),
        (1000, 2000, 0o600)
    );
    let (f, l) = (
        std::fs::metadata(merged.join("new/file")).unwrap(),
        std::fs::metadata(merged.join("new/link")).unwrap(),
    );
    assert_eq!(f.ino(), l.ino(), "hardlink kept");
    assert_eq!(
        std::fs::read_to_string(merged.join("new/sym")).unwrap(),
        "c"
    );
    let out = Command::new(merged.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(out.success(), "the unpacked busybox runs");
}
