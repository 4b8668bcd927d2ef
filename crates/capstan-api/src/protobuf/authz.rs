//! k8s.io/api authorization/v1 messages (generated.proto field numbers): the access reviews
//! `kubectl auth can-i` sends.

use super::meta::{LABEL_SELECTOR_REQUIREMENT, OBJECT_META};
use super::schema::{Kind::*, Message, p, r, v};

pub static SUBJECT_ACCESS_REVIEW: Message = Message {
    name: "SubjectAccessReview",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&SUBJECT_ACCESS_REVIEW_SPEC)),
        v(3, "status", Msg(&SUBJECT_ACCESS_REVIEW_STATUS)),
    ],
};

pub static LOCAL_SUBJECT_ACCESS_REVIEW: Message = Message {
    name: "LocalSubjectAccessReview",
    fields: SUBJECT_ACCESS_REVIEW.fields,
};

pub static SELF_SUBJECT_ACCESS_REVIEW: Message = Message {
    name: "SelfSubjectAccessReview",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&SELF_SUBJECT_ACCESS_REVIEW_SPEC)),
        v(3, "status", Msg(&SUBJECT_ACCESS_REVIEW_STATUS)),
    ],
};

pub static SELF_SUBJECT_RULES_REVIEW: Message = Message {
    name: "SelfSubjectRulesReview",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&SELF_SUBJECT_RULES_REVIEW_SPEC)),
        v(3, "status", Msg(&SUBJECT_RULES_REVIEW_STATUS)),
    ],
};

static SUBJECT_ACCESS_REVIEW_SPEC: Message = Message {
    name: "SubjectAccessReviewSpec",
    fields: &[
        p(1, "resourceAttributes", Msg(&RESOURCE_ATTRIBUTES)),
        p(2, "nonResourceAttributes", Msg(&NON_RESOURCE_ATTRIBUTES)),
        v(3, "user", Str),
        r(4, "groups", Str),
        v(5, "extra", Map(&Msg(&EXTRA_VALUE))),
        v(6, "uid", Str),
    ],
};

static SELF_SUBJECT_ACCESS_REVIEW_SPEC: Message = Message {
    name: "SelfSubjectAccessReviewSpec",
    fields: &[
        p(1, "resourceAttributes", Msg(&RESOURCE_ATTRIBUTES)),
        p(2, "nonResourceAttributes", Msg(&NON_RESOURCE_ATTRIBUTES)),
    ],
};

static RESOURCE_ATTRIBUTES: Message = Message {
    name: "ResourceAttributes",
    fields: &[
        v(1, "namespace", Str),
        v(2, "verb", Str),
        v(3, "group", Str),
        v(4, "version", Str),
        v(5, "resource", Str),
        v(6, "subresource", Str),
        v(7, "name", Str),
        p(8, "fieldSelector", Msg(&SELECTOR_ATTRIBUTES)),
        p(9, "labelSelector", Msg(&SELECTOR_ATTRIBUTES)),
    ],
};

/// FieldSelectorAttributes and LabelSelectorAttributes share this shape.
static SELECTOR_ATTRIBUTES: Message = Message {
    name: "SelectorAttributes",
    fields: &[
        v(1, "rawSelector", Str),
        r(2, "requirements", Msg(&LABEL_SELECTOR_REQUIREMENT)),
    ],
};

static NON_RESOURCE_ATTRIBUTES: Message = Message {
    name: "NonResourceAttributes",
    fields: &[v(1, "path", Str), v(2, "verb", Str)],
};

/// authorization/v1 ExtraValue: `repeated string items = 1`; JSON renders it as a plain list,
/// which the review handler accepts in either shape.
static EXTRA_VALUE: Message = Message {
    name: "ExtraValue",
    fields: &[r(1, "items", Str)],
};

static SUBJECT_ACCESS_REVIEW_STATUS: Message = Message {
    name: "SubjectAccessReviewStatus",
    fields: &[
        v(1, "allowed", Bool),
        v(2, "reason", Str),
        v(3, "evaluationError", Str),
        v(4, "denied", Bool),
    ],
};

static SELF_SUBJECT_RULES_REVIEW_SPEC: Message = Message {
    name: "SelfSubjectRulesReviewSpec",
    fields: &[v(1, "namespace", Str)],
};

static SUBJECT_RULES_REVIEW_STATUS: Message = Message {
    name: "SubjectRulesReviewStatus",
    fields: &[
        r(1, "resourceRules", Msg(&RESOURCE_RULE)),
        r(2, "nonResourceRules", Msg(&NON_RESOURCE_RULE)),
        v(3, "incomplete", Bool),
        v(4, "evaluationError", Str),
    ],
};

static RESOURCE_RULE: Message = Message {
    name: "ResourceRule",
    fields: &[
        r(1, "verbs", Str),
        r(2, "apiGroups", Str),
        r(3, "resources", Str),
        r(4, "resourceNames", Str),
    ],
};

static NON_RESOURCE_RULE: Message = Message {
    name: "NonResourceRule",
    fields: &[r(1, "verbs", Str), r(2, "nonResourceURLs", Str)],
};

#[cfg(test)]
mod tests {
    use crate::protobuf::decode_request;
    use crate::resources::find;
    use serde_json::json;

    /// A length-delimited field (every field here is short, so lengths fit one byte).
    fn f(n: u8, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    fn body(kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut out = b"k8s\0".to_vec();
        let tm = [f(1, b"authorization.k8s.io/v1"), f(2, kind.as_bytes())].concat();
        out.extend(f(1, &tm));
        out.extend(f(2, raw));
        out
    }

    #[test]
    fn access_reviews_as_kubectl_sends_them() {
        let attrs = [f(1, b"a"), f(2, b"get"), f(5, b"pods")].concat();
        let ssar = body("SelfSubjectAccessReview", &f(2, &f(1, &attrs)));
        let info = find("authorization.k8s.io", "v1", "selfsubjectaccessreviews").unwrap();
        let v = decode_request(info, &ssar).unwrap();
        assert_eq!(
            v["spec"],
            json!({"resourceAttributes": {"namespace": "a", "verb": "get", "resource": "pods"}})
        );
        let extra = f(
            5,
            &[f(1, b"k"), f(2, &[f(1, b"v1"), f(1, b"v2")].concat())].concat(),
        );
        let spec = [
            f(2, &[f(1, b"/x"), f(2, b"get")].concat()),
            f(3, b"u"),
            f(4, b"g"),
            extra,
        ]
        .concat();
        let sar = body("SubjectAccessReview", &f(2, &spec));
        let info = find("authorization.k8s.io", "v1", "subjectaccessreviews").unwrap();
        let v = decode_request(info, &sar).unwrap();
        assert_eq!(
            v["spec"],
            json!({"nonResourceAttributes": {"path": "/x", "verb": "get"}, "user": "u",
                   "groups": ["g"], "extra": {"k": {"items": ["v1", "v2"]}}})
        );
        let rules = body("SelfSubjectRulesReview", &f(2, &f(1, b"ns")));
        let info = find("authorization.k8s.io", "v1", "selfsubjectrulesreviews").unwrap();
        assert_eq!(
            decode_request(info, &rules).unwrap()["spec"],
            json!({"namespace": "ns"})
        );
    }
}
