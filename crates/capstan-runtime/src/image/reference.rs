//! Docker-style reference normalization: `busybox` → `docker.io/library/busybox:latest`.

use oci_client::Reference;

use super::ImageError;

/// Parses a reference the way Docker does (default registry docker.io, `library/` for
/// official images, tag `latest` when neither tag nor digest is given).
pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    reference
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
}

/// The canonical string form: `registry/repository:tag`, or `registry/repository@digest`
/// when a digest is present (the digest then pins the content and the tag is dropped).
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    Ok(canonical(&parse_reference(reference)?))
}

pub(crate) fn canonical(r: &Reference) -> String {
    match (r.digest(), r.tag()) {
        (Some(d), _) => format!("{}/{}@{}", r.registry(), r.repository(), d),
        (None, Some(t)) => format!("{}/{}:{}", r.registry(), r.repository(), t),
        (None, None) => format!("{}/{}:latest", r.registry(), r.repository()),
    }
}

/// The repository part (`registry/repository`) of a canonical reference.
pub(crate) fn repository_of(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalize_docker_style() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/app", "docker.io/user/app:latest"),
            ("127.0.0.1:5000/x/y:v1", "127.0.0.1:5000/x/y:v1"),
            ("localhost/app", "localhost/app:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_reference(input).unwrap(), want, "{input}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize_reference(&format!("busybox:1@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        assert!(normalize_reference("UPPER/Case").is_err());
    }
}
