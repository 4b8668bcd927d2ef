//! The cluster CA and the certificates the API server needs: its serving certificate and the
//! admin client certificate written into `admin.kubeconfig`. The CA is shared by every API
//! server of a cluster through the store (key [`CA_KEY`], outside `/registry/`), with a copy in
//! each data dir, and is reused on restart, so kubeconfigs issued earlier keep working against
//! any server.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading or writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation")]
    Rcgen(#[from] rcgen::Error),
    #[error("cluster CA in the store")]
    Store(#[from] capstan_store::StoreError),
    #[error("cluster CA stored at {CA_KEY} is unreadable")]
    CorruptStoredCa(#[source] serde_json::Error),
    #[error("the value stored at {0} is unreadable")]
    CorruptStored(&'static str),
}

/// Store key of the cluster CA (certificate and key PEM), shared by all API servers.
pub const CA_KEY: &str = "/capstan/bootstrap/ca";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// PEM-encoded certificate and private key.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster certificate authority.
pub struct ClusterCa {
    pub cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `contents` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl ClusterCa {
    /// Load `<dir>/ca.crt` and `<dir>/ca.key`, or create them on first start.
    pub fn load_or_create(dir: &Path) -> Result<ClusterCa, PkiError> {
        if let Some(ca) = ClusterCa::load(dir)? {
            return Ok(ca);
        }
        let ca = ClusterCa::generate()?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// The CA in `<dir>`, if both files are there.
    pub fn load(dir: &Path) -> Result<Option<ClusterCa>, PkiError> {
        let crt = dir.join("ca.crt");
        let key = dir.join("ca.key");
        if !(crt.exists() && key.exists()) {
            return Ok(None);
        }
        let cert_pem = fs::read_to_string(&crt).map_err(io_err(&crt))?;
        let key_pem = fs::read_to_string(&key).map_err(io_err(&key))?;
        ClusterCa::from_pem(cert_pem, key_pem).map(Some)
    }

    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<ClusterCa, PkiError> {
        let kp = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, kp)?;
        Ok(ClusterCa {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// A new self-signed CA.
    pub fn generate() -> Result<ClusterCa, PkiError> {
        let kp = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "capstan-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&kp)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: kp.serialize_pem(),
            issuer: Issuer::new(params, kp),
        })
    }

    /// Write `<dir>/ca.crt` and `<dir>/ca.key` (mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_private(&dir.join("ca.key"), self.key_pem.as_bytes())?;
        write_private(&dir.join("ca.crt"), self.cert_pem.as_bytes())
    }

    /// The cluster's CA, shared through `store`: the stored one if any; otherwise this data
    /// dir's (uploaded) or a new one. Racing first starts agree on the one stored first. The
    /// result is also written to `<dir>` so the files match what every server uses.
    pub async fn shared(
        store: &dyn capstan_store::Store,
        dir: &Path,
    ) -> Result<ClusterCa, PkiError> {
        let ca = match store.get(CA_KEY).await? {
            Some(kv) => ClusterCa::decode_stored(&kv.value)?,
            None => {
                let local = match ClusterCa::load(dir)? {
                    Some(ca) => ca,
                    None => ClusterCa::generate()?,
                };
                let value = serde_json::to_vec(&StoredCa {
                    cert_pem: local.cert_pem.clone(),
                    key_pem: local.key_pem.clone(),
                })
                .map_err(PkiError::CorruptStoredCa)?;
                match store.create(CA_KEY, value).await {
                    Ok(_) => local,
                    Err(capstan_store::StoreError::AlreadyExists(_)) => {
                        let kv = store
                            .get(CA_KEY)
                            .await?
                            .ok_or_else(|| capstan_store::StoreError::NotFound(CA_KEY.into()))?;
                        ClusterCa::decode_stored(&kv.value)?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if ClusterCa::load(dir).ok().flatten().map(|c| c.cert_pem) != Some(ca.cert_pem.clone()) {
            ca.save(dir)?;
        }
        Ok(ca)
    }

    fn decode_stored(value: &[u8]) -> Result<ClusterCa, PkiError> {
        let s: StoredCa = serde_json::from_slice(value).map_err(PkiError::CorruptStoredCa)?;
        ClusterCa::from_pem(s.cert_pem, s.key_pem)
    }

    /// A serving certificate for the API server with DNS and IP SANs.
    pub fn serving_cert(&self, dns: &[String], ips: &[IpAddr]) -> Result<CertKey, PkiError> {
        let mut params = CertificateParams::new(dns.to_vec())?;
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params)
    }

    /// A kubelet serving certificate: `CN=system:node:<name>`, `O=system:nodes`, the node's
    /// names and addresses as SANs.
    pub fn kubelet_serving_cert(
        &self,
        user: &str,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<CertKey, PkiError> {
        let mut params = CertificateParams::new(dns.to_vec())?;
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.distinguished_name.push(DnType::CommonName, user);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params)
    }

    /// A client certificate with `CN=user` and `O=group...` (Kubernetes' x509 identity mapping).
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Result<CertKey, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertKey, PkiError> {
        let kp = KeyPair::generate()?;
        let cert = params.signed_by(&kp, &self.issuer)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: kp.serialize_pem(),
        })
    }
}

/// A kubeconfig with one cluster, one user (client certificate) and one current context.
pub fn kubeconfig(server_url: &str, ca_pem: &str, client: &CertKey, name: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}-admin\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-admin\ncurrent-context: {name}\npreferences: {{}}\n",
        ca = b64(ca_pem),
        crt = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_reused_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterCa::load_or_create(dir.path()).unwrap();
        let b = ClusterCa::load_or_create(dir.path()).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = b.client_cert("system:admin", &["system:masters"]).unwrap();
        assert!(c.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[tokio::test]
    async fn servers_with_different_data_dirs_share_one_ca() {
        let store = capstan_store::MemoryStore::new();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = tokio::join!(
            ClusterCa::shared(&store, d1.path()),
            ClusterCa::shared(&store, d2.path())
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.cert_pem, b.cert_pem);
        let on_disk = ClusterCa::load(d2.path()).unwrap().unwrap();
        assert_eq!(on_disk.cert_pem, a.cert_pem);
    }

    #[tokio::test]
    async fn an_existing_local_ca_is_uploaded_when_the_store_has_none() {
        let store = capstan_store::MemoryStore::new();
        let d1 = tempfile::tempdir().unwrap();
        let local = ClusterCa::load_or_create(d1.path()).unwrap();
        let shared = ClusterCa::shared(&store, d1.path()).await.unwrap();
        assert_eq!(local.cert_pem, shared.cert_pem);
        let d2 = tempfile::tempdir().unwrap();
        ClusterCa::load_or_create(d2.path()).unwrap();
        // A second server with its own old CA adopts the cluster's.
        let other = ClusterCa::shared(&store, d2.path()).await.unwrap();
        assert_eq!(other.cert_pem, local.cert_pem);
    }
}
