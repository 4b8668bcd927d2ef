//! DefaultBinder (Bind): POST pods/NAME/binding.

use crate::framework::BindPlugin;
use crate::podinfo::PodInfo;
use crate::status::Status;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

pub const NAME: &str = "DefaultBinder";

pub struct DefaultBinder {
    pub client: Client,
}

impl BindPlugin for DefaultBinder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn bind<'a>(&'a self, pod: &'a PodInfo, node: &'a str) -> BoxFuture<'a, Status> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}
            });
            match api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &pod.name,
                    &PostParams::default(),
                    &binding,
                )
                .await
            {
                Ok(_) => Status::success(),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                    // Gone, or placed by someone else: not retriable.
                    Status::unresolvable(e.message.clone())
                }
                Err(e) => Status::error(e.to_string()),
            }
        })
    }
}
