//! Users from client certificates: the subject's CommonName is the user name and its
//! Organizations are the groups, as upstream's x509 authenticator reads them. The chain was
//! already verified against the cluster CA by the TLS layer.

use super::UserInfo;
use rustls::pki_types::CertificateDer;

/// The user named by the leaf certificate of a verified client chain.
pub fn user_of(chain: &[CertificateDer<'_>]) -> Option<UserInfo> {
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Some(UserInfo {
        name,
        groups,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_is_the_user_and_organizations_the_groups() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::ClusterCa::load_or_create(dir.path()).unwrap();
        let cert = ca.client_cert("system:node:n1", &["system:nodes"]).unwrap();
        let der: Vec<_> = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let user = user_of(&der).unwrap();
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(user.groups, ["system:nodes"]);
    }
}
