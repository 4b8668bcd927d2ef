//! The typed round trip that normalises an object before it is stored: decoded as its kind's
//! k8s-openapi type (with upstream's decoding tolerance, see `validation::decode`) and encoded
//! again, so unknown fields are dropped and field order is the type's.

use crate::ResourceInfo;
use serde_json::Value;

/// Decode `obj` as its kind's type and encode it again. Kinds without a built-in type pass
/// through unchanged. Err carries the decode error text.
pub fn roundtrip(info: &ResourceInfo, obj: &Value) -> Result<Value, String> {
    match crate::validation::decode::round_trip(info, obj) {
        None => Ok(obj.clone()),
        Some(Ok(v)) => Ok(v),
        Some(Err(f)) => Err(crate::validation::decode::go_message(info.kind, &f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::RESOURCES;

    #[test]
    fn every_resource_has_a_type() {
        for r in RESOURCES {
            assert!(
                crate::validation::decode::round_trip(
                    r,
                    &serde_json::json!({"metadata": {"name": "x"}})
                )
                .is_some(),
                "{} has no registered type",
                r.kind
            );
        }
    }

    #[test]
    fn unknown_fields_are_dropped() {
        let info = crate::resources::find("", "v1", "configmaps").unwrap();
        let obj = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "bogus": 1});
        let out = roundtrip(info, &obj).unwrap();
        assert!(out.get("bogus").is_none());
        assert_eq!(out["data"]["a"], "b");
    }
}
