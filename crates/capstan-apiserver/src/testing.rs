//! An in-process API server on a temporary data dir, for integration tests of this and other
//! crates (feature `testing`): several may share one store, like an HA control plane.

use crate::{Running, ServerConfig};
use capstan_store::Store;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::watch;

/// One API server on a free loopback port with its own data dir.
pub struct TestServer {
    pub running: Running,
    stop: watch::Sender<bool>,
    dir: TempDir,
}

impl TestServer {
    /// Starts a server on `store`; panics (it is test support) if it cannot.
    pub async fn start(store: Arc<dyn Store>) -> TestServer {
        TestServer::start_with(store, |_, _| {}).await
    }

    /// Like [`TestServer::start`], with `configure` adjusting the configuration first (it gets
    /// the data dir, e.g. to place a token file or the audit log).
    pub async fn start_with(
        store: Arc<dyn Store>,
        configure: impl FnOnce(&Path, &mut ServerConfig),
    ) -> TestServer {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp data dir");
        let mut config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            bind_address: [127, 0, 0, 1].into(),
            https_port: 0,
            service_cidr: "10.43.0.0/16".into(),
            node_port_range: (30000, 32767),
            tls_sans: vec![],
            token_auth_file: None,
            audit_log_path: None,
        };
        configure(dir.path(), &mut config);
        let (stop, rx) = watch::channel(false);
        let running = crate::start(config, store, rx)
            .await
            .expect("start the API server");
        TestServer { running, stop, dir }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.running.addr)
    }

    /// A client with this server's admin credentials.
    pub async fn client(&self) -> kube::Client {
        self.client_at(None).await
    }

    /// A client with this server's admin credentials, pointed at `url` (default: this server).
    pub async fn client_at(&self, url: Option<String>) -> kube::Client {
        let kc = Kubeconfig::read_from(self.dir.path().join("admin.kubeconfig"))
            .expect("read admin.kubeconfig");
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("client configuration");
        if let Some(url) = url {
            config.cluster_url = url.parse().expect("server URL");
        }
        kube::Client::try_from(config).expect("kube client")
    }

    /// Stops the server and waits (bounded) for its tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.running.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}
