//! k8s.io/api rbac/v1, scheduling/v1 and authentication/v1 messages (generated.proto field numbers).

use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::schema::{Kind::*, Message, p, r, v};

pub static ROLE: Message = Message {
    name: "Role",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        r(2, "rules", Msg(&POLICY_RULE)),
    ],
};

pub static CLUSTER_ROLE: Message = Message {
    name: "ClusterRole",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        r(2, "rules", Msg(&POLICY_RULE)),
        p(3, "aggregationRule", Msg(&AGGREGATION_RULE)),
    ],
};

static POLICY_RULE: Message = Message {
    name: "PolicyRule",
    fields: &[
        r(1, "verbs", Str),
        r(2, "apiGroups", Str),
        r(3, "resources", Str),
        r(4, "resourceNames", Str),
        r(5, "nonResourceURLs", Str),
    ],
};

static AGGREGATION_RULE: Message = Message {
    name: "AggregationRule",
    fields: &[r(1, "clusterRoleSelectors", Msg(&LABEL_SELECTOR))],
};

pub static ROLE_BINDING: Message = Message {
    name: "RoleBinding",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        r(2, "subjects", Msg(&SUBJECT)),
        v(3, "roleRef", Msg(&ROLE_REF)),
    ],
};

pub static CLUSTER_ROLE_BINDING: Message = Message {
    name: "ClusterRoleBinding",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        r(2, "subjects", Msg(&SUBJECT)),
        v(3, "roleRef", Msg(&ROLE_REF)),
    ],
};

static SUBJECT: Message = Message {
    name: "Subject",
    fields: &[
        v(1, "kind", Str),
        v(2, "apiGroup", Str),
        v(3, "name", Str),
        v(4, "namespace", Str),
    ],
};

static ROLE_REF: Message = Message {
    name: "RoleRef",
    fields: &[v(1, "apiGroup", Str), v(2, "kind", Str), v(3, "name", Str)],
};

pub static PRIORITY_CLASS: Message = Message {
    name: "PriorityClass",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "value", Int32),
        v(3, "globalDefault", Bool),
        v(4, "description", Str),
        p(5, "preemptionPolicy", Str),
    ],
};

/// authentication/v1 TokenRequest (`kubectl create token`); status is never sent by clients
/// but decodes like the rest.
pub static TOKEN_REQUEST: Message = Message {
    name: "TokenRequest",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&TOKEN_REQUEST_SPEC)),
        v(3, "status", Msg(&TOKEN_REQUEST_STATUS)),
    ],
};

static TOKEN_REQUEST_SPEC: Message = Message {
    name: "TokenRequestSpec",
    fields: &[
        r(1, "audiences", Str),
        p(3, "boundObjectRef", Msg(&BOUND_OBJECT_REFERENCE)),
        p(4, "expirationSeconds", Int64),
    ],
};

static BOUND_OBJECT_REFERENCE: Message = Message {
    name: "BoundObjectReference",
    fields: &[
        v(1, "kind", Str),
        v(2, "apiVersion", Str),
        v(3, "name", Str),
        v(4, "uid", Str),
    ],
};

static TOKEN_REQUEST_STATUS: Message = Message {
    name: "TokenRequestStatus",
    fields: &[v(1, "token", Str), v(2, "expirationTimestamp", Time)],
};
