//! HTTP clients for both servers: the Kubernetes API of Capstan (mTLS from the admin
//! kubeconfig, HTTP/2 by ALPN) and etcd's v3 JSON gateway (plain HTTP on loopback).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// Upper bound for any single request; a hung server fails the run instead of stalling it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a client needs from the admin kubeconfig.
pub struct Kubeconfig {
    pub server: String,
    ca_pem: Vec<u8>,
    identity_pem: Vec<u8>,
}

impl Kubeconfig {
    pub fn load(path: &Path) -> anyhow::Result<Kubeconfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let doc: Value = serde_saphyr::from_str(&text).context("parse kubeconfig YAML")?;
        let field = |ptr: &str| {
            doc.pointer(ptr)
                .and_then(Value::as_str)
                .with_context(|| format!("kubeconfig lacks {ptr}"))
        };
        let decode = |ptr: &str| -> anyhow::Result<Vec<u8>> {
            B64.decode(field(ptr)?)
                .with_context(|| format!("kubeconfig {ptr} is not base64"))
        };
        let mut identity_pem = decode("/users/0/user/client-certificate-data")?;
        identity_pem.push(b'\n');
        identity_pem.extend(decode("/users/0/user/client-key-data")?);
        Ok(Kubeconfig {
            server: field("/clusters/0/cluster/server")?
                .trim_end_matches('/')
                .to_string(),
            ca_pem: decode("/clusters/0/cluster/certificate-authority-data")?,
            identity_pem,
        })
    }

    /// A client with its own connection (one HTTP/2 connection, like one kubectl).
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem).context("CA PEM")?)
            .identity(
                reqwest::Identity::from_pem(&self.identity_pem).context("client cert/key PEM")?,
            )
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("build HTTPS client")
    }
}

/// A plain-HTTP client for etcd's gateway.
pub fn etcd_client() -> anyhow::Result<Client> {
    Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("build HTTP client")
}

/// The collection path of a core/v1 namespaced resource.
pub fn collection(server: &str, ns: &str, plural: &str) -> String {
    format!("{server}/api/v1/namespaces/{ns}/{plural}")
}

/// Sends a request and returns the whole body, failing on any status but `want`.
pub async fn expect(req: reqwest::RequestBuilder, want: StatusCode) -> anyhow::Result<Bytes> {
    let resp = req.send().await.context("send")?;
    let status = resp.status();
    let body = resp.bytes().await.context("read body")?;
    if status != want {
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        bail!("HTTP {status} (want {want}): {shown}");
    }
    Ok(body)
}

/// Creates a namespace, tolerating one that already exists.
pub async fn create_namespace(client: &Client, server: &str, name: &str) -> anyhow::Result<()> {
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let resp = client
        .post(format!("{server}/api/v1/namespaces"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    ensure!(
        status == StatusCode::CREATED || status == StatusCode::CONFLICT,
        "create namespace {name}: HTTP {status}: {}",
        resp.text().await.unwrap_or_default()
    );
    Ok(())
}

/// The list's resourceVersion, to start a watch right after it.
pub async fn list_resource_version(client: &Client, url: &str) -> anyhow::Result<String> {
    let body = expect(client.get(format!("{url}?limit=1")), StatusCode::OK).await?;
    let list: Value = serde_json::from_slice(&body).context("list JSON")?;
    list.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
        .context("list has no metadata.resourceVersion")
}

/// etcd's v3 JSON gateway: keys and values travel base64-encoded.
#[derive(Clone)]
pub struct Etcd {
    pub url: String,
}

impl Etcd {
    pub async fn health(&self, client: &Client) -> anyhow::Result<()> {
        let body = expect(client.get(format!("{}/health", self.url)), StatusCode::OK).await?;
        let v: Value = serde_json::from_slice(&body).context("health JSON")?;
        ensure!(v["health"] == "true", "etcd health: {v}");
        Ok(())
    }

    pub async fn put(&self, client: &Client, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let body = json!({"key": B64.encode(key), "value": B64.encode(value)});
        expect(
            client.post(format!("{}/v3/kv/put", self.url)).json(&body),
            StatusCode::OK,
        )
        .await?;
        Ok(())
    }

    /// Range of one key (the body is not parsed: the timed path does only what a client must).
    pub async fn get(&self, client: &Client, key: &str) -> anyhow::Result<Bytes> {
        let body = json!({"key": B64.encode(key)});
        expect(
            client.post(format!("{}/v3/kv/range", self.url)).json(&body),
            StatusCode::OK,
        )
        .await
    }

    /// Range of every key under `prefix` (body not parsed).
    pub async fn list(&self, client: &Client, prefix: &str) -> anyhow::Result<Bytes> {
        let body = json!({"key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix))});
        expect(
            client.post(format!("{}/v3/kv/range", self.url)).json(&body),
            StatusCode::OK,
        )
        .await
    }

    /// How many keys lie under `prefix`, to check a data set before timing it.
    pub async fn count(&self, client: &Client, prefix: &str) -> anyhow::Result<u64> {
        range_count(&self.list(client, prefix).await?)
    }
}

/// The gateway prints int64 as strings and omits zero values.
fn range_count(body: &[u8]) -> anyhow::Result<u64> {
    let v: Value = serde_json::from_slice(body).context("range JSON")?;
    match v.get("count") {
        None => Ok(0),
        Some(Value::String(s)) => s.parse().context("range count"),
        Some(other) => other.as_u64().context("range count"),
    }
}

/// The first key after every key with this prefix (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(
            prefix_end("/registry/pods/x/"),
            b"/registry/pods/x0".to_vec()
        );
        assert_eq!(prefix_end("a"), b"b".to_vec());
    }

    #[test]
    fn range_count_reads_gateway_int64_strings() {
        assert_eq!(
            range_count(br#"{"header":{},"count":"100"}"#).ok(),
            Some(100)
        );
        assert_eq!(range_count(br#"{"header":{}}"#).ok(), Some(0));
        assert!(range_count(b"not json").is_err());
    }

    #[test]
    fn kubeconfig_yields_server_ca_and_identity() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("admin.kubeconfig");
        let (ca, crt, key) = (B64.encode("CA"), B64.encode("CRT"), B64.encode("KEY"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443/\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\n"
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        let kc = Kubeconfig::load(&path).expect("load");
        assert_eq!(kc.server, "https://127.0.0.1:6443");
        assert_eq!(kc.ca_pem, b"CA".to_vec());
        assert_eq!(kc.identity_pem, b"CRT\nKEY".to_vec());
    }
}
