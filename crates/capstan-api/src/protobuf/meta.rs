//! k8s.io/apimachinery pkg/apis/meta/v1 messages (generated.proto field numbers).

use super::schema::{Kind::*, Message, STR_MAP, p, r, v};

pub static OBJECT_META: Message = Message {
    name: "ObjectMeta",
    fields: &[
        v(1, "name", Str),
        v(2, "generateName", Str),
        v(3, "namespace", Str),
        v(4, "selfLink", Str),
        v(5, "uid", Str),
        v(6, "resourceVersion", Str),
        v(7, "generation", Int64),
        v(8, "creationTimestamp", Time),
        p(9, "deletionTimestamp", Time),
        p(10, "deletionGracePeriodSeconds", Int64),
        v(11, "labels", STR_MAP),
        v(12, "annotations", STR_MAP),
        r(13, "ownerReferences", Msg(&OWNER_REFERENCE)),
        r(14, "finalizers", Str),
        // managedFields (17) is deliberately absent: clients never send it on create, and
        // refusing it beats storing a half-decoded entry.
    ],
};

pub static OWNER_REFERENCE: Message = Message {
    name: "OwnerReference",
    fields: &[
        v(5, "apiVersion", Str),
        v(1, "kind", Str),
        v(3, "name", Str),
        v(4, "uid", Str),
        p(6, "controller", Bool),
        p(7, "blockOwnerDeletion", Bool),
    ],
};

pub static LABEL_SELECTOR: Message = Message {
    name: "LabelSelector",
    fields: &[
        v(1, "matchLabels", STR_MAP),
        r(2, "matchExpressions", Msg(&LABEL_SELECTOR_REQUIREMENT)),
    ],
};

pub static LABEL_SELECTOR_REQUIREMENT: Message = Message {
    name: "LabelSelectorRequirement",
    fields: &[v(1, "key", Str), v(2, "operator", Str), r(3, "values", Str)],
};
