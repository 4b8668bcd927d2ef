//! k8s.io/api authentication/v1 review messages (generated.proto field numbers): TokenReview
//! and SelfSubjectReview, which kubectl and client-go may send as protobuf.

use super::meta::OBJECT_META;
use super::schema::{Kind::*, Message, r, v};

pub static TOKEN_REVIEW: Message = Message {
    name: "TokenReview",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&TOKEN_REVIEW_SPEC)),
        v(3, "status", Msg(&TOKEN_REVIEW_STATUS)),
    ],
};

static TOKEN_REVIEW_SPEC: Message = Message {
    name: "TokenReviewSpec",
    fields: &[v(1, "token", Str), r(2, "audiences", Str)],
};

static TOKEN_REVIEW_STATUS: Message = Message {
    name: "TokenReviewStatus",
    fields: &[
        v(1, "authenticated", Bool),
        v(2, "user", Msg(&USER_INFO)),
        v(3, "error", Str),
        r(4, "audiences", Str),
    ],
};

/// Status is answered by the server; a client never sends it, but it decodes like the rest.
pub static SELF_SUBJECT_REVIEW: Message = Message {
    name: "SelfSubjectReview",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "status", Msg(&SELF_SUBJECT_REVIEW_STATUS)),
    ],
};

static SELF_SUBJECT_REVIEW_STATUS: Message = Message {
    name: "SelfSubjectReviewStatus",
    fields: &[v(1, "userInfo", Msg(&USER_INFO))],
};

static USER_INFO: Message = Message {
    name: "UserInfo",
    fields: &[
        v(1, "username", Str),
        v(2, "uid", Str),
        r(3, "groups", Str),
        v(4, "extra", Map(&Msg(&EXTRA_VALUE))),
    ],
};

/// ExtraValue is a Go `[]string`; its JSON form differs but only server-set status holds it.
static EXTRA_VALUE: Message = Message {
    name: "ExtraValue",
    fields: &[r(1, "items", Str)],
};

#[cfg(test)]
mod tests {
    use crate::resources::find;
    use serde_json::json;

    /// A length-delimited field (all fields here are short: one-byte tags and lengths).
    fn ld(n: u8, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    fn body(kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = [ld(1, b"authentication.k8s.io/v1"), ld(2, kind.as_bytes())].concat();
        [b"k8s\0".to_vec(), ld(1, &tm), ld(2, raw)].concat()
    }

    #[test]
    fn token_review_and_self_subject_review_decode() {
        let spec = [ld(1, b"tok"), ld(2, b"a1"), ld(2, b"a2")].concat();
        let raw = [ld(1, &ld(1, b"r")), ld(2, &spec)].concat();
        let info = find("authentication.k8s.io", "v1", "tokenreviews").unwrap();
        let v = super::super::decode_request(info, &body("TokenReview", &raw)).unwrap();
        assert_eq!(
            v["spec"],
            json!({"token": "tok", "audiences": ["a1", "a2"]})
        );
        assert_eq!(v["metadata"]["name"], "r");
        let info = find("authentication.k8s.io", "v1", "selfsubjectreviews").unwrap();
        let v =
            super::super::decode_request(info, &body("SelfSubjectReview", &ld(1, &[]))).unwrap();
        assert_eq!(v["kind"], "SelfSubjectReview");
        assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
    }
}
