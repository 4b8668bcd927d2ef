//! The REST operations of every served resource, in a form rendered to both Swagger 2.0 and
//! OpenAPI 3.0: the same paths, operation ids, actions and parameters upstream publishes.

use capstan_api::{ResourceInfo, Subresource};

use super::definitions::{
    API_RESOURCE_LIST, BINDING, DELETE_OPTIONS, Gvk, PATCH, SCALE, STATUS, WATCH_EVENT,
    definition_name, list_definition_name,
};

/// Where a parameter goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum In {
    Path,
    Query,
}

/// One path or query parameter.
#[derive(Clone, Debug)]
pub(super) struct Param {
    pub name: &'static str,
    pub location: In,
    pub ty: &'static str,
    pub description: String,
}

/// A request body: its definition and accepted media types.
#[derive(Clone, Debug)]
pub(super) struct Body {
    pub definition: String,
    pub content_types: &'static [&'static str],
}

/// One HTTP operation on a path.
#[derive(Clone, Debug)]
pub(super) struct Operation {
    pub method: &'static str,
    pub id: String,
    pub description: String,
    pub action: &'static str,
    pub gvk: Gvk,
    pub tag: String,
    pub params: Vec<Param>,
    pub body: Option<Body>,
    /// Status code and the definition returned with it.
    pub responses: Vec<(u16, String)>,
    pub produces: &'static [&'static str],
}

/// One path with its shared parameters and operations.
#[derive(Clone, Debug)]
pub(super) struct PathItem {
    pub path: String,
    pub params: Vec<Param>,
    pub ops: Vec<Operation>,
}

pub(super) const JSON_TYPES: &[&str] = &["application/json", "application/yaml"];
const WATCH_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/json;stream=watch",
];
const LIST_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/json;stream=watch",
];
pub(super) const PATCH_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

fn param(name: &'static str, location: In, ty: &'static str, description: &str) -> Param {
    Param {
        name,
        location,
        ty,
        description: description.to_string(),
    }
}

fn query(name: &'static str) -> Param {
    let (ty, description) = query_param_doc(name);
    param(name, In::Query, ty, description)
}

/// Type and description of each query parameter upstream documents.
fn query_param_doc(name: &str) -> (&'static str, &'static str) {
    match name {
        "allowWatchBookmarks" => (
            "boolean",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag.",
        ),
        "continue" => (
            "string",
            "The continue option should be set when retrieving more results from the server: the value is the continue token returned by the previous list call.",
        ),
        "fieldSelector" => (
            "string",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
        ),
        "labelSelector" => (
            "string",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
        ),
        "limit" => (
            "integer",
            "limit is a maximum number of responses to return for a list call. If more items exist, the server sets the continue field on the list metadata.",
        ),
        "resourceVersion" => (
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from. Defaults to unset.",
        ),
        "resourceVersionMatch" => (
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls: NotOlderThan or Exact.",
        ),
        "sendInitialEvents" => (
            "boolean",
            "sendInitialEvents=true may be set together with watch=true: the stream begins with synthetic events for the current state of all objects, then a bookmark.",
        ),
        "timeoutSeconds" => (
            "integer",
            "Timeout for the list/watch call, regardless of any activity or inactivity.",
        ),
        "watch" => (
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.",
        ),
        "dryRun" => (
            "string",
            "When present, indicates that modifications should not be persisted. Valid value: All (process all dry run stages).",
        ),
        "fieldManager" => (
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes. It is required for apply requests (application/apply-patch) and optional otherwise.",
        ),
        "fieldValidation" => (
            "string",
            "fieldValidation instructs the server how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values: Ignore (drop them silently), Warn (drop them and send a warning header per field; the default), Strict (fail the request with BadRequest).",
        ),
        "force" => (
            "boolean",
            "Force is going to \"force\" Apply requests: the request re-acquires conflicting fields owned by other people. Must be unset for non-apply patch requests.",
        ),
        "gracePeriodSeconds" => (
            "integer",
            "The duration in seconds before the object should be deleted. Zero means delete immediately. Defaults to the per-object value if not specified.",
        ),
        "ignoreStoreReadErrorWithClusterBreakingPotential" => (
            "boolean",
            "if set to true, deletes an object whose data can not be read from storage (corrupt or undecryptable). Unsafe.",
        ),
        "orphanDependents" => (
            "boolean",
            "Deprecated: use propagationPolicy. Whether the dependent objects should be orphaned.",
        ),
        "propagationPolicy" => (
            "string",
            "Whether and how garbage collection will be performed: Orphan, Background or Foreground.",
        ),
        _ => ("string", ""),
    }
}

const LIST_QUERY: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
];
const WRITE_QUERY: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];
const PATCH_QUERY: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force"];
const DELETE_QUERY: &[&str] = &[
    "dryRun",
    "gracePeriodSeconds",
    "ignoreStoreReadErrorWithClusterBreakingPotential",
    "orphanDependents",
    "propagationPolicy",
];
const DELETE_COLLECTION_QUERY: &[&str] = &[
    "continue",
    "dryRun",
    "fieldSelector",
    "gracePeriodSeconds",
    "ignoreStoreReadErrorWithClusterBreakingPotential",
    "labelSelector",
    "limit",
    "orphanDependents",
    "propagationPolicy",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
];

fn queries(names: &[&'static str]) -> Vec<Param> {
    names.iter().map(|n| query(n)).collect()
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub(super) fn group_version_prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// Upstream's operation-id infix: `CoreV1`, `AppsV1`, `RbacAuthorizationV1`.
fn id_infix(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.trim_end_matches(".k8s.io")
    };
    let mut out: String = group.split('.').map(capitalize).collect();
    out.push_str(&capitalize(version));
    out
}

/// Upstream's tag: `core_v1`, `apps_v1`, `rbacAuthorization_v1`.
fn tag(group: &str, version: &str) -> String {
    let infix = id_infix(group, version);
    let group_part = infix.strip_suffix(&capitalize(version)).unwrap_or(&infix);
    let mut chars = group_part.chars();
    let head = chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string())
        .unwrap_or_default();
    format!("{head}{}_{version}", chars.as_str())
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn namespace_param() -> Param {
    param(
        "namespace",
        In::Path,
        "string",
        "object name and auth scope, such as for teams and projects",
    )
}

fn pretty_param() -> Param {
    param(
        "pretty",
        In::Query,
        "string",
        "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
    )
}

fn name_param(what: &str) -> Param {
    param("name", In::Path, "string", &format!("name of the {what}"))
}

/// Builds operations for one resource; `scope` is "Namespaced" or "".
struct OpBuilder<'a> {
    info: &'a ResourceInfo,
    infix: String,
    scope: &'static str,
    tag: String,
}

impl OpBuilder<'_> {
    fn op(
        &self,
        method: &'static str,
        verb: &str,
        suffix: &str,
        action: &'static str,
    ) -> Operation {
        Operation {
            method,
            id: format!(
                "{verb}{}{}{}{suffix}",
                self.infix, self.scope, self.info.kind
            ),
            description: String::new(),
            action,
            gvk: Gvk::of(self.info),
            tag: self.tag.clone(),
            params: Vec::new(),
            body: None,
            responses: Vec::new(),
            produces: JSON_TYPES,
        }
    }

    fn with(
        mut op: Operation,
        description: String,
        params: &[&'static str],
        responses: Vec<(u16, String)>,
    ) -> Operation {
        op.description = description;
        op.params = queries(params);
        op.responses = responses;
        op
    }

    fn object(&self) -> String {
        definition_name(self.info)
    }

    fn kind(&self) -> &str {
        self.info.kind
    }

    fn list(&self) -> Operation {
        let op = self.op("get", "list", "", "list");
        let mut op = Self::with(
            op,
            format!("list or watch objects of kind {}", self.kind()),
            LIST_QUERY,
            vec![(200, list_definition_name(self.info))],
        );
        op.produces = LIST_TYPES;
        op
    }

    fn create(&self) -> Operation {
        let op = self.op("post", "create", "", "post");
        let obj = self.object();
        let mut op = Self::with(
            op,
            format!("create a {}", self.kind()),
            WRITE_QUERY,
            vec![(200, obj.clone()), (201, obj.clone()), (202, obj)],
        );
        op.body = Some(self.body_of_object());
        op
    }

    fn delete_collection(&self) -> Operation {
        let mut op = self.op("delete", "delete", "", "deletecollection");
        op.id = format!(
            "delete{}Collection{}{}",
            self.infix,
            self.scope,
            self.kind()
        );
        let mut op = Self::with(
            op,
            format!("delete collection of {}", self.kind()),
            DELETE_COLLECTION_QUERY,
            vec![(200, STATUS.into())],
        );
        op.body = Some(delete_options_body());
        op
    }

    fn read(&self, sub: Option<&str>) -> Operation {
        let op = self.op("get", "read", &suffix(sub), "get");
        let (what, returned) = self.sub_descr(sub);
        Self::with(
            op,
            format!("read {what}the specified {}", self.kind()),
            &[],
            vec![(200, returned)],
        )
    }

    fn replace(&self, sub: Option<&str>) -> Operation {
        let op = self.op("put", "replace", &suffix(sub), "put");
        let (what, returned) = self.sub_descr(sub);
        let mut op = Self::with(
            op,
            format!("replace {what}the specified {}", self.kind()),
            WRITE_QUERY,
            vec![(200, returned.clone()), (201, returned.clone())],
        );
        op.body = Some(body(returned, JSON_TYPES));
        op
    }

    fn patch(&self, sub: Option<&str>) -> Operation {
        let op = self.op("patch", "patch", &suffix(sub), "patch");
        let (what, returned) = self.sub_descr(sub);
        let mut op = Self::with(
            op,
            format!("partially update {what}the specified {}", self.kind()),
            PATCH_QUERY,
            vec![(200, returned.clone()), (201, returned)],
        );
        op.body = Some(body(PATCH.into(), PATCH_TYPES));
        op
    }

    fn delete(&self) -> Operation {
        let op = self.op("delete", "delete", "", "delete");
        // Kinds with graceful deletion answer with the object, the rest with a Status.
        let returned = if self.info.kind == "Pod" {
            self.object()
        } else {
            STATUS.to_string()
        };
        let mut op = Self::with(
            op,
            format!("delete a {}", self.kind()),
            DELETE_QUERY,
            vec![(200, returned.clone()), (202, returned)],
        );
        op.body = Some(delete_options_body());
        op
    }

    fn create_binding(&self) -> Operation {
        let mut op = self.op("post", "create", "Binding", "post");
        op.gvk = Gvk::new("", "v1", "Binding");
        let b = BINDING.to_string();
        let mut op = Self::with(
            op,
            format!("create binding of a {}", self.kind()),
            WRITE_QUERY,
            vec![(200, b.clone()), (201, b.clone()), (202, b)],
        );
        op.body = Some(body(BINDING.into(), JSON_TYPES));
        op
    }

    fn watch(&self, item: bool) -> Operation {
        let (verb_suffix, action) = if item {
            ("", "watch")
        } else {
            ("List", "watchlist")
        };
        let op = self.op("get", "watch", verb_suffix, action);
        let description = if item {
            format!(
                "watch changes to an object of kind {}. deprecated: use the 'watch' parameter with a list operation instead, filtered to a single item with the 'fieldSelector' parameter.",
                self.kind()
            )
        } else {
            format!(
                "watch individual changes to a list of {}. deprecated: use the 'watch' parameter with a list operation instead.",
                self.kind()
            )
        };
        let mut op = Self::with(op, description, &[], vec![(200, WATCH_EVENT.into())]);
        op.produces = WATCH_TYPES;
        op
    }

    /// ("status of ", Deployment) for subresources, ("", Deployment) for the object itself.
    fn sub_descr(&self, sub: Option<&str>) -> (String, String) {
        match sub {
            Some("scale") => ("scale of ".into(), SCALE.into()),
            Some(sub) => (format!("{sub} of "), self.object()),
            None => (String::new(), self.object()),
        }
    }

    fn body_of_object(&self) -> Body {
        body(self.object(), JSON_TYPES)
    }
}

fn suffix(sub: Option<&str>) -> String {
    sub.map(capitalize).unwrap_or_default()
}

fn body(definition: String, content_types: &'static [&'static str]) -> Body {
    Body {
        definition,
        content_types,
    }
}

fn delete_options_body() -> Body {
    body(DELETE_OPTIONS.into(), JSON_TYPES)
}

fn has_verb(info: &ResourceInfo, verb: &str) -> bool {
    info.verbs.contains(&verb)
}

/// Every path of one resource: collection, item, subresources, all-namespaces list and the
/// deprecated watch paths.
pub(super) fn resource_paths(info: &ResourceInfo) -> Vec<PathItem> {
    let prefix = group_version_prefix(info.group, info.version);
    let infix = id_infix(info.group, info.version);
    let tag = tag(info.group, info.version);
    let scoped = if info.namespaced { "Namespaced" } else { "" };
    let b = OpBuilder {
        info,
        infix: infix.clone(),
        scope: scoped,
        tag: tag.clone(),
    };
    let ns_segment = if info.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let collection = format!("{prefix}{ns_segment}/{}", info.plural);
    let item = format!("{collection}/{{name}}");
    let mut base_params = Vec::new();
    if info.namespaced {
        base_params.push(namespace_param());
    }
    base_params.push(pretty_param());
    let mut item_params = vec![name_param(info.kind)];
    item_params.extend(base_params.clone());

    let mut out = Vec::new();
    let coll_ops = [
        ("list", b.list()),
        ("create", b.create()),
        ("deletecollection", b.delete_collection()),
    ];
    out.push(PathItem {
        path: collection.clone(),
        params: base_params.clone(),
        ops: verb_ops(info, coll_ops),
    });
    let item_ops = [
        ("get", b.read(None)),
        ("update", b.replace(None)),
        ("patch", b.patch(None)),
        ("delete", b.delete()),
    ];
    out.push(PathItem {
        path: item.clone(),
        params: item_params.clone(),
        ops: verb_ops(info, item_ops),
    });
    out.extend(subresource_paths(info, &b, &item, &item_params));
    if info.namespaced && has_verb(info, "list") {
        let all = OpBuilder {
            info,
            infix: infix.clone(),
            scope: "",
            tag: tag.clone(),
        };
        let mut op = all.list();
        op.id.push_str("ForAllNamespaces");
        out.push(PathItem {
            path: format!("{prefix}/{}", info.plural),
            params: vec![pretty_param()],
            ops: vec![op],
        });
    }
    if has_verb(info, "watch") {
        out.extend(watch_paths(info, &b, &prefix, ns_segment, &tag, &infix));
    }
    out.retain(|p| !p.ops.is_empty());
    out
}

fn verb_ops<const N: usize>(info: &ResourceInfo, ops: [(&str, Operation); N]) -> Vec<Operation> {
    ops.into_iter()
        .filter(|(verb, _)| has_verb(info, verb))
        .map(|(_, op)| op)
        .collect()
}

fn subresource_paths(
    info: &ResourceInfo,
    b: &OpBuilder<'_>,
    item: &str,
    item_params: &[Param],
) -> Vec<PathItem> {
    let mut out = Vec::new();
    for sub in info.subresources {
        let ops = match sub {
            Subresource::Status | Subresource::Scale => {
                let name = sub.name();
                let mut ops = vec![
                    b.read(Some(name)),
                    b.replace(Some(name)),
                    b.patch(Some(name)),
                ];
                if *sub == Subresource::Scale {
                    ops.iter_mut()
                        .for_each(|op| op.gvk = Gvk::new("autoscaling", "v1", "Scale"));
                }
                ops
            }
            Subresource::Binding => vec![b.create_binding()],
            Subresource::Finalize => vec![b.replace(Some(sub.name()))],
            // Connect operations (streamed, proxied to the kubelet) are not described yet.
            Subresource::Log
            | Subresource::Exec
            | Subresource::Attach
            | Subresource::PortForward
            | Subresource::Token => {
                continue;
            }
        };
        let mut params = item_params.to_vec();
        if let Some(name) = params.first_mut() {
            name.description = match sub {
                Subresource::Binding => "name of the Binding".to_string(),
                Subresource::Scale => "name of the Scale".to_string(),
                _ => format!("name of the {}", info.kind),
            };
        }
        out.push(PathItem {
            path: format!("{item}/{}", sub.name()),
            params,
            ops,
        });
    }
    out
}

fn watch_paths(
    info: &ResourceInfo,
    b: &OpBuilder<'_>,
    prefix: &str,
    ns_segment: &str,
    tag: &str,
    infix: &str,
) -> Vec<PathItem> {
    let mut common = queries(LIST_QUERY);
    if info.namespaced {
        common.push(namespace_param());
    }
    common.push(pretty_param());
    let collection = format!("{prefix}/watch{ns_segment}/{}", info.plural);
    let mut item_params = vec![name_param(info.kind)];
    item_params.extend(common.clone());
    let mut out = vec![
        PathItem {
            path: collection.clone(),
            params: common,
            ops: vec![b.watch(false)],
        },
        PathItem {
            path: format!("{collection}/{{name}}"),
            params: item_params,
            ops: vec![b.watch(true)],
        },
    ];
    if info.namespaced {
        let all = OpBuilder {
            info,
            infix: infix.to_string(),
            scope: "",
            tag: tag.to_string(),
        };
        let mut op = all.watch(false);
        op.id.push_str("ForAllNamespaces");
        let mut params = queries(LIST_QUERY);
        params.push(pretty_param());
        out.push(PathItem {
            path: format!("{prefix}/watch/{}", info.plural),
            params,
            ops: vec![op],
        });
    }
    out
}

/// `GET /apis/<group>/<version>/`: the group-version's resource list.
pub(super) fn resources_path(group: &str, version: &str) -> PathItem {
    let op = Operation {
        method: "get",
        id: format!("get{}APIResources", id_infix(group, version)),
        description: "get available resources".to_string(),
        action: "",
        gvk: Gvk::new("", "", ""),
        tag: tag(group, version),
        params: Vec::new(),
        body: None,
        responses: vec![(200, API_RESOURCE_LIST.to_string())],
        produces: JSON_TYPES,
    };
    PathItem {
        path: format!("{}/", group_version_prefix(group, version)),
        params: Vec::new(),
        ops: vec![op],
    }
}
