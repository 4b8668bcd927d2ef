//! [`RuntimeService`] for [`ContainerRuntime`]: each call runs its blocking work (files,
//! mounts, process spawning) on tokio's blocking pool.

use std::time::Duration;

use super::{ContainerRuntime, blocking, exec};
use crate::cri::runtime_service::{
    Container, ContainerConfig, ContainerFilter, ContainerStatus, ExecRequest, ExecSession,
    ExecSyncResponse, PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxStatus,
    RuntimeError, RuntimeService,
};

macro_rules! off_thread {
    ($self:ident, |$inner:ident| $body:expr) => {{
        let $inner = $self.inner.clone();
        blocking(move || $body).await
    }};
}

#[async_trait::async_trait]
impl RuntimeService for ContainerRuntime {
    async fn run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, RuntimeError> {
        let (config, handler) = (config.clone(), runtime_handler.to_string());
        off_thread!(self, |inner| inner.run_pod_sandbox(&config, &handler))
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        off_thread!(self, |inner| inner.stop_pod_sandbox(&id))
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        off_thread!(self, |inner| inner.remove_pod_sandbox(&id))
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        let id = id.to_string();
        off_thread!(self, |inner| inner.pod_sandbox_status(&id))
    }

    async fn list_pod_sandboxes(
        &self,
        filter: &PodSandboxFilter,
    ) -> Result<Vec<PodSandbox>, RuntimeError> {
        let filter = filter.clone();
        off_thread!(self, |inner| inner.list_pod_sandboxes(&filter))
    }

    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: &ContainerConfig,
        _sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let (sandbox, config) = (pod_sandbox_id.to_string(), config.clone());
        off_thread!(self, |inner| inner.create_container(&sandbox, &config))
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        off_thread!(self, |inner| inner.start_container(&id))
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let id = id.to_string();
        off_thread!(self, |inner| inner.stop_container(&id, timeout))
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        off_thread!(self, |inner| inner.remove_container(&id))
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let id = id.to_string();
        off_thread!(self, |inner| inner.container_status(&id))
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<Container>, RuntimeError> {
        let filter = filter.clone();
        off_thread!(self, |inner| inner.list_containers(&filter))
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecSyncResponse, RuntimeError> {
        let oci = {
            let id = id.to_string();
            off_thread!(self, |inner| inner.running(&id))?
        };
        exec::exec_sync(oci, id, cmd, timeout).await
    }

    async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecSession, RuntimeError> {
        let oci = {
            let id = id.to_string();
            off_thread!(self, |inner| inner.running(&id))?
        };
        exec::exec_streaming(oci, id, request).await
    }
}
