//! `--datastore-endpoint` and its TLS flags: which backend to open, and opening it.
//!
//! Accepted forms (k3s's): `sqlite://PATH`, `etcd://HOST:PORT[,HOST:PORT...]`, and lists of
//! etcd client URLs `http(s)://HOST:PORT[,http(s)://HOST:PORT...]`. No flag means SQLite at
//! `<data-dir>/db/state.db`.

use anyhow::{Context, bail};
use capstan_store::Store;
use capstan_store::etcd::{EtcdConfig, EtcdStore};
use capstan_store::sqlite::SqliteStore;
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delay between attempts to reach etcd at start-up.
const CONNECT_RETRY: Duration = Duration::from_millis(500);
/// Upper bound for one connection attempt, so an unanswering address cannot stall the loop.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);

/// The datastore flags shared by `capstan server` and `capstan datastore snapshot ...`.
#[derive(Args, Debug, Clone, Default)]
pub struct DatastoreFlags {
    /// Where state is stored: `sqlite://PATH` (default `<data-dir>/db/state.db`),
    /// `etcd://HOST:PORT[,HOST:PORT...]` or `http(s)://HOST:PORT[,...]` (an etcd cluster).
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
    /// CA bundle that verifies the etcd servers' certificates.
    #[arg(long)]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate presented to etcd.
    #[arg(long)]
    pub datastore_certfile: Option<PathBuf>,
    /// Private key of the client certificate.
    #[arg(long)]
    pub datastore_keyfile: Option<PathBuf>,
    /// Seconds to keep retrying an unreachable etcd before giving up.
    #[arg(long, default_value_t = 30)]
    pub datastore_connect_timeout: u64,
}

/// A parsed `--datastore-endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Sqlite(PathBuf),
    Etcd(Vec<String>),
}

impl Endpoint {
    /// Parses `flag`, defaulting to SQLite under `data_dir`; `tls` decides the scheme that
    /// `etcd://` hosts get.
    pub fn parse(flag: Option<&str>, data_dir: &Path, tls: bool) -> anyhow::Result<Endpoint> {
        let default_db = || data_dir.join("db").join("state.db");
        let Some(flag) = flag.map(str::trim).filter(|f| !f.is_empty()) else {
            return Ok(Endpoint::Sqlite(default_db()));
        };
        if let Some(rest) = flag.strip_prefix("sqlite://") {
            // kine's DSNs may carry `?options`; the path is what comes before them.
            let path = rest.split('?').next().unwrap_or_default();
            return Ok(Endpoint::Sqlite(if path.is_empty() {
                default_db()
            } else {
                PathBuf::from(path)
            }));
        }
        if let Some(rest) = flag.strip_prefix("etcd://") {
            let scheme = if tls { "https" } else { "http" };
            let hosts = split_list(rest)
                .map(|h| {
                    if h.contains("://") {
                        bail!("etcd://{rest}: list HOST:PORT entries without a scheme ({h:?})");
                    }
                    host_port(h)?;
                    Ok(format!("{scheme}://{h}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            return non_empty(flag, hosts);
        }
        if flag.starts_with("http://") || flag.starts_with("https://") {
            let urls = split_list(flag)
                .map(|u| {
                    let Some((scheme, hp)) = u.split_once("://") else {
                        bail!("{u:?} in {flag:?} needs an http:// or https:// scheme");
                    };
                    if scheme != "http" && scheme != "https" {
                        bail!("{u:?} in {flag:?}: etcd URLs are http:// or https://");
                    }
                    host_port(hp.trim_end_matches('/'))?;
                    Ok(u.trim_end_matches('/').to_string())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            return non_empty(flag, urls);
        }
        bail!(
            "unsupported --datastore-endpoint {flag:?}: use sqlite://PATH, \
             etcd://HOST:PORT[,HOST:PORT...] or http(s)://HOST:PORT[,http(s)://HOST:PORT...]"
        )
    }
}

fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn non_empty(flag: &str, list: Vec<String>) -> anyhow::Result<Endpoint> {
    if list.is_empty() {
        bail!("--datastore-endpoint {flag:?} names no etcd server");
    }
    Ok(Endpoint::Etcd(list))
}

fn host_port(hp: &str) -> anyhow::Result<()> {
    let (host, port) = hp
        .rsplit_once(':')
        .with_context(|| format!("etcd endpoint {hp:?} must be HOST:PORT"))?;
    if host.is_empty() {
        bail!("etcd endpoint {hp:?} has no host");
    }
    port.parse::<u16>()
        .with_context(|| format!("etcd endpoint {hp:?} has an invalid port"))?;
    Ok(())
}

impl DatastoreFlags {
    /// True when any TLS file is given (then `etcd://` hosts are reached over https).
    fn tls(&self) -> bool {
        self.datastore_cafile.is_some()
            || self.datastore_certfile.is_some()
            || self.datastore_keyfile.is_some()
    }

    /// The endpoint these flags name, SQLite under `data_dir` by default.
    pub fn endpoint(&self, data_dir: &Path) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::parse(self.datastore_endpoint.as_deref(), data_dir, self.tls())?;
        if matches!(endpoint, Endpoint::Sqlite(_)) && self.tls() {
            bail!("--datastore-cafile/--datastore-certfile/--datastore-keyfile apply to etcd only");
        }
        if self.datastore_certfile.is_some() != self.datastore_keyfile.is_some() {
            bail!("--datastore-certfile and --datastore-keyfile go together");
        }
        Ok(endpoint)
    }

    fn etcd_config(&self, endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            ca_file: self.datastore_cafile.clone(),
            cert_file: self.datastore_certfile.clone(),
            key_file: self.datastore_keyfile.clone(),
        }
    }

    /// Connects to etcd, retrying until `--datastore-connect-timeout` passes.
    pub async fn connect_etcd(&self, endpoints: &[String]) -> anyhow::Result<EtcdStore> {
        let budget = Duration::from_secs(self.datastore_connect_timeout);
        let deadline = Instant::now() + budget;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let limit = CONNECT_ATTEMPT
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(CONNECT_RETRY);
            let error = match tokio::time::timeout(limit, self.try_etcd(endpoints)).await {
                Ok(Ok(store)) => return Ok(store),
                Ok(Err(err)) => err,
                Err(_) => anyhow::anyhow!("no answer within {:.1}s", limit.as_secs_f64()),
            };
            if Instant::now() + CONNECT_RETRY >= deadline {
                return Err(error.context(format!(
                    "etcd at {} unreachable after {attempts} attempts over {budget:?} \
                     (--datastore-connect-timeout)",
                    endpoints.join(",")
                )));
            }
            tracing::warn!(
                endpoints = %endpoints.join(","),
                attempts,
                error = format!("{error:#}"),
                "etcd not reachable yet; retrying"
            );
            tokio::time::sleep(CONNECT_RETRY).await;
        }
    }

    /// One attempt: connect and read the revision, so a dead cluster fails here.
    async fn try_etcd(&self, endpoints: &[String]) -> anyhow::Result<EtcdStore> {
        let store = EtcdStore::connect(self.etcd_config(endpoints.to_vec()))
            .await
            .context("connecting")?;
        store
            .current_revision()
            .await
            .context("reading the current revision")?;
        Ok(store)
    }

    /// Opens the store these flags name. A SQLite database is created when `create` is set;
    /// otherwise a missing file is an error (a snapshot of nothing is a mistake).
    pub async fn open(&self, data_dir: &Path, create: bool) -> anyhow::Result<Arc<dyn Store>> {
        match self.endpoint(data_dir)? {
            Endpoint::Sqlite(path) => Ok(Arc::new(open_sqlite(&path, create)?)),
            Endpoint::Etcd(endpoints) => Ok(Arc::new(self.connect_etcd(&endpoints).await?)),
        }
    }
}

/// Opens the SQLite store at `path`, creating its directory and file when `create` is set.
pub fn open_sqlite(path: &Path, create: bool) -> anyhow::Result<SqliteStore> {
    if create {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    } else if !path.is_file() {
        bail!("no SQLite database at {}", path.display());
    }
    SqliteStore::open(path).with_context(|| format!("opening SQLite store {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flag: &str, tls: bool) -> anyhow::Result<Endpoint> {
        Endpoint::parse(Some(flag), Path::new("/d"), tls)
    }

    #[test]
    fn no_flag_means_sqlite_under_the_data_dir() {
        let e = Endpoint::parse(None, Path::new("/d"), false).unwrap();
        assert_eq!(e, Endpoint::Sqlite(PathBuf::from("/d/db/state.db")));
        let e = parse("sqlite://", false).unwrap();
        assert_eq!(e, Endpoint::Sqlite(PathBuf::from("/d/db/state.db")));
    }

    #[test]
    fn sqlite_path_drops_dsn_options() {
        let e = parse("sqlite:///var/x.db?_journal=WAL", false).unwrap();
        assert_eq!(e, Endpoint::Sqlite(PathBuf::from("/var/x.db")));
    }

    #[test]
    fn etcd_hosts_get_a_scheme_from_the_tls_flags() {
        let e = parse("etcd://a:2379, b:2380", false).unwrap();
        assert_eq!(
            e,
            Endpoint::Etcd(vec!["http://a:2379".into(), "http://b:2380".into()])
        );
        let e = parse("etcd://127.0.0.1:2379", true).unwrap();
        assert_eq!(e, Endpoint::Etcd(vec!["https://127.0.0.1:2379".into()]));
    }

    #[test]
    fn url_lists_are_etcd_as_in_k3s() {
        let e = parse("https://a:2379,http://b:2379/", false).unwrap();
        assert_eq!(
            e,
            Endpoint::Etcd(vec!["https://a:2379".into(), "http://b:2379".into()])
        );
    }

    #[test]
    fn bad_endpoints_name_the_accepted_forms() {
        let err = parse("mysql://u@tcp(h)/db", false).unwrap_err().to_string();
        assert!(err.contains("sqlite://PATH"), "{err}");
        assert!(err.contains("etcd://HOST:PORT"), "{err}");
        assert!(parse("etcd://", false).is_err());
        assert!(parse("etcd://host", false).is_err());
        assert!(parse("etcd://host:notaport", false).is_err());
        assert!(parse("http://a:1,ftp://b:2", false).is_err());
    }

    #[test]
    fn tls_files_are_refused_for_sqlite_and_cert_needs_key() {
        let flags = DatastoreFlags {
            datastore_cafile: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(flags.endpoint(Path::new("/d")).is_err());
        let flags = DatastoreFlags {
            datastore_endpoint: Some("etcd://a:1".into()),
            datastore_certfile: Some("/c.pem".into()),
            ..Default::default()
        };
        assert!(flags.endpoint(Path::new("/d")).is_err());
    }
}
