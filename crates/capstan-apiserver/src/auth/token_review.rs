//! TokenReview (`authentication.k8s.io/v1`): asks the API server's bearer token authenticators
//! who a token belongs to, for the audiences in the spec (default: the API server's own).

use super::reviews::user_info_json;
use super::tokens::{self, TokenFailure};
use crate::server::ApiServer;
use capstan_api::ApiError;
use serde_json::{Value, json};

/// The status of a TokenReview whose request is `review`.
pub async fn status(server: &ApiServer, review: &Value) -> Result<Value, ApiError> {
    let spec = &review["spec"];
    let token = spec["token"].as_str().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(
        match tokens::authenticate_token(server, token, &audiences).await {
            Ok(found) => json!({
                "authenticated": true,
                "user": user_info_json(&found.user.authenticated()),
                "audiences": found.audiences,
            }),
            Err(TokenFailure(None)) => json!({ "user": {} }),
            Err(TokenFailure(Some(why))) => json!({
                "user": {},
                "error": format!("[invalid bearer token, {why}]"),
            }),
        },
    )
}
