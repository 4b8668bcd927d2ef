//! The measured operations as [`Op`]s, for Capstan (Kubernetes API) and etcd (raw KV).

use std::sync::Arc;

use reqwest::{Client, StatusCode};

use crate::client::{Etcd, collection, expect};
use crate::payload::{Kind, LABEL_KEY};
use crate::runner::Op;

/// Objects in each list set, read by the get and list runs.
pub const LIST_SET: u64 = 100;
/// Namespace of the list set of `kind`.
pub fn list_ns(kind: Kind) -> String {
    format!("list-{}", kind.plural())
}
/// Namespace the create runs write into.
pub fn create_ns(kind: Kind) -> String {
    format!("create-{}", kind.plural())
}
/// Name of the list set's object `index`.
pub fn list_name(index: u64) -> String {
    format!("obj-{}", index % LIST_SET)
}

/// Capstan's side: one HTTP/2 connection per client.
#[derive(Clone)]
pub struct Kube {
    pub server: String,
    pub clients: Arc<Vec<Client>>,
}

impl Kube {
    /// POST of a new object named `{prefix}-{index}` in `ns`.
    pub fn create(&self, kind: Kind, ns: String, prefix: String, set: &'static str) -> Op {
        let this = self.clone();
        Arc::new(move |client, index| {
            let client = this.clients[client].clone();
            let url = collection(&this.server, &ns, kind.plural());
            let name = format!("{prefix}-{index}");
            let body = serde_json::to_vec(&kind.object(&ns, &name, set));
            Box::pin(async move {
                let req = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body?);
                expect(req, StatusCode::CREATED).await.map(drop)
            })
        })
    }

    /// GET of one object of the list set.
    pub fn get(&self, kind: Kind) -> Op {
        let this = self.clone();
        Arc::new(move |client, index| {
            let client = this.clients[client].clone();
            let url = format!(
                "{}/{}",
                collection(&this.server, &list_ns(kind), kind.plural()),
                list_name(index)
            );
            Box::pin(async move { expect(client.get(url), StatusCode::OK).await.map(drop) })
        })
    }

    /// List of the list set's namespace with a label selector matching all its objects.
    pub fn list(&self, kind: Kind) -> Op {
        let this = self.clone();
        Arc::new(move |client, _| {
            let client = this.clients[client].clone();
            let url = format!(
                "{}?labelSelector={LABEL_KEY}%3Dlist",
                collection(&this.server, &list_ns(kind), kind.plural())
            );
            Box::pin(async move { expect(client.get(url), StatusCode::OK).await.map(drop) })
        })
    }
}

/// etcd's side: the same JSON under the keys kube-apiserver would use.
#[derive(Clone)]
pub struct Kv {
    pub etcd: Etcd,
    pub clients: Arc<Vec<Client>>,
}

impl Kv {
    pub fn put(&self, kind: Kind, ns: String, prefix: String, set: &'static str) -> Op {
        let this = self.clone();
        Arc::new(move |client, index| {
            let (client, etcd) = (this.clients[client].clone(), this.etcd.clone());
            let name = format!("{prefix}-{index}");
            let key = kind.etcd_key(&ns, &name);
            let value = serde_json::to_vec(&kind.object(&ns, &name, set));
            Box::pin(async move { etcd.put(&client, &key, &value?).await })
        })
    }

    pub fn get(&self, kind: Kind) -> Op {
        let this = self.clone();
        Arc::new(move |client, index| {
            let (client, etcd) = (this.clients[client].clone(), this.etcd.clone());
            let key = kind.etcd_key(&list_ns(kind), &list_name(index));
            Box::pin(async move { etcd.get(&client, &key).await.map(drop) })
        })
    }

    pub fn list(&self, kind: Kind) -> Op {
        let this = self.clone();
        Arc::new(move |client, _| {
            let (client, etcd) = (this.clients[client].clone(), this.etcd.clone());
            let prefix = kind.etcd_prefix(&list_ns(kind));
            Box::pin(async move { etcd.list(&client, &prefix).await.map(drop) })
        })
    }
}
