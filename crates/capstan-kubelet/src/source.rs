//! Where pod workers read the objects a pod refers to (ConfigMaps, Secrets, service-account
//! tokens): the API in production, a map in unit tests.

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};

/// Errors reading referenced objects.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {kind} {namespace}/{name}")]
    Api {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("requesting a token for service account {namespace}/{name}: {message}")]
    Token {
        namespace: String,
        name: String,
        message: String,
    },
}

/// The objects pods refer to. `Ok(None)` means "does not exist" (404), which callers turn into
/// optional-reference semantics or a CreateContainerConfigError / FailedMount.
#[async_trait::async_trait]
pub trait ObjectSource: Send + Sync {
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, SourceError>;
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError>;
    /// A token for `service_account` bound to `pod` (TokenRequest, `serviceaccounts/token`).
    async fn service_account_token(
        &self,
        pod: &Pod,
        service_account: &str,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<String, SourceError>;
}

/// [`ObjectSource`] through the API server.
#[derive(Clone)]
pub struct ApiObjectSource {
    client: kube::Client,
}

impl ApiObjectSource {
    pub fn new(client: kube::Client) -> Self {
        ApiObjectSource { client }
    }
}

fn api_error(kind: &'static str, namespace: &str, name: &str, source: kube::Error) -> SourceError {
    SourceError::Api {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    }
}

#[async_trait::async_trait]
impl ObjectSource for ApiObjectSource {
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, SourceError> {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map_err(|e| api_error("ConfigMap", namespace, name, e))
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError> {
        let api: kube::Api<Secret> = kube::Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map_err(|e| api_error("Secret", namespace, name, e))
    }

    async fn service_account_token(
        &self,
        pod: &Pod,
        service_account: &str,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<String, SourceError> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let request = TokenRequest {
            metadata: ObjectMeta::default(),
            spec: TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: Some(
                    k8s_openapi::api::authentication::v1::BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                    },
                ),
            },
            status: None,
        };
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client.clone(), &namespace);
        let token_error = |message: String| SourceError::Token {
            namespace: namespace.clone(),
            name: service_account.to_string(),
            message,
        };
        let answer: TokenRequest = api
            .create_subresource("token", service_account, &Default::default(), &request)
            .await
            .map_err(|e| token_error(e.to_string()))?;
        answer
            .status
            .map(|s| s.token)
            .ok_or_else(|| token_error("the answer carries no token".into()))
    }
}
