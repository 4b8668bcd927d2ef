//! Service account tokens: JWTs signed with the cluster's service account key (ES256), issued
//! through the TokenRequest API with upstream's claims (`sub`, `aud`, `exp`, and the
//! `kubernetes.io` claim naming the namespace, service account and bound object).
//!
//! The key lives in the store at [`SA_KEY`], like the cluster CA, so every server of an HA
//! cluster signs and verifies with the same key.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// Store key of the service account signing key (PKCS#8, base64, in a JSON document).
pub const SA_KEY: &str = "/capstan/bootstrap/service-account-key";
/// The issuer (and default audience), as upstream's default `--service-account-issuer`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("service account key: {0}")]
    Key(String),
    #[error("store: {0}")]
    Store(#[from] capstan_store::StoreError),
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// Signs and verifies service account tokens.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    /// Key id: a digest of the public key, as upstream derives `kid`.
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish()
    }
}

impl TokenSigner {
    /// A new random key (tests, and the first server of a cluster).
    pub fn generate() -> Result<TokenSigner, TokenError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| TokenError::Key("generating a P-256 key failed".into()))?;
        TokenSigner::from_pkcs8(pkcs8.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<TokenSigner, TokenError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| TokenError::Key(format!("not a P-256 PKCS#8 key: {e}")))?;
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        Ok(TokenSigner {
            key,
            kid,
            rng: SystemRandom::new(),
        })
    }

    /// The cluster's key: the stored one, or a new one stored first (racing servers agree on
    /// whichever was stored first).
    pub async fn shared(store: &dyn capstan_store::Store) -> Result<TokenSigner, TokenError> {
        if let Some(kv) = store.get(SA_KEY).await? {
            return TokenSigner::decode_stored(&kv.value);
        }
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| TokenError::Key("generating a P-256 key failed".into()))?;
        let value = serde_json::to_vec(&json!({"pkcs8": STANDARD.encode(pkcs8.as_ref())}))
            .map_err(|e| TokenError::Key(e.to_string()))?;
        match store.create(SA_KEY, value).await {
            Ok(_) => TokenSigner::from_pkcs8(pkcs8.as_ref()),
            Err(capstan_store::StoreError::AlreadyExists(_)) => {
                let kv = store
                    .get(SA_KEY)
                    .await?
                    .ok_or_else(|| capstan_store::StoreError::NotFound(SA_KEY.into()))?;
                TokenSigner::decode_stored(&kv.value)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn decode_stored(value: &[u8]) -> Result<TokenSigner, TokenError> {
        let doc: Value = serde_json::from_slice(value)
            .map_err(|e| TokenError::Key(format!("stored key is corrupt: {e}")))?;
        let der = doc["pkcs8"]
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| TokenError::Key("stored key has no pkcs8 field".into()))?;
        TokenSigner::from_pkcs8(&der)
    }

    /// A compact JWS of `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| TokenError::Key("signing failed".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// The claims of a token this key signed, if the signature holds and it has not expired
    /// at `now` (seconds since the epoch). Binding checks (pod still exists) are the caller's.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid("not a compact JWS"));
        };
        let header: Value = decode_part(h)?;
        if header["alg"] != "ES256" {
            return Err(TokenError::Invalid("unexpected algorithm"));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Invalid("signature is not base64url"))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| TokenError::Invalid("bad signature"))?;
        let claims: Value = decode_part(c)?;
        if claims["iss"] != ISSUER {
            return Err(TokenError::Invalid("unknown issuer"));
        }
        if claims["exp"].as_i64().is_none_or(|exp| exp <= now) {
            return Err(TokenError::Invalid("token has expired"));
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf > now + 60) {
            return Err(TokenError::Invalid("token is not valid yet"));
        }
        Ok(claims)
    }
}

fn decode_part(part: &str) -> Result<Value, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Invalid("part is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid("part is not JSON"))
}

/// What a token is bound to besides its service account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoundObject {
    /// "Pod", "Secret" or "Node".
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// Upstream's claims of a bound service account token.
pub fn claims(
    namespace: &str,
    sa_name: &str,
    sa_uid: &str,
    audiences: &[String],
    issued_at: i64,
    expiration_seconds: i64,
    bound: Option<&BoundObject>,
) -> Value {
    let mut k8s = json!({
        "namespace": namespace,
        "serviceaccount": {"name": sa_name, "uid": sa_uid},
    });
    if let Some(b) = bound {
        let field = match b.kind.as_str() {
            "Pod" => "pod",
            "Secret" => "secret",
            _ => "node",
        };
        k8s[field] = json!({"name": b.name, "uid": b.uid});
    }
    json!({
        "aud": audiences,
        "exp": issued_at + expiration_seconds,
        "iat": issued_at,
        "nbf": issued_at,
        "iss": ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": format!("system:serviceaccount:{namespace}:{sa_name}"),
        "kubernetes.io": k8s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_tampering_or_expiry_is_refused() {
        let signer = TokenSigner::generate().unwrap();
        let c = claims("ns", "default", "u1", &[ISSUER.into()], 1_000, 600, None);
        let token = signer.sign(&c).unwrap();
        let back = signer.verify(&token, 1_100).unwrap();
        assert_eq!(back["sub"], "system:serviceaccount:ns:default");
        assert_eq!(back["kubernetes.io"]["serviceaccount"]["uid"], "u1");
        assert!(matches!(
            signer.verify(&token, 1_600),
            Err(TokenError::Invalid(_))
        ));
        let other = TokenSigner::generate().unwrap();
        assert!(other.verify(&token, 1_100).is_err(), "another key's token");
        let mut forged = c.clone();
        forged["sub"] = json!("system:serviceaccount:kube-system:admin");
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged.to_string()),
            parts[2]
        );
        assert!(signer.verify(&tampered, 1_100).is_err());
    }

    #[tokio::test]
    async fn servers_sharing_a_store_share_the_key() {
        let store = capstan_store::MemoryStore::new();
        let a = TokenSigner::shared(&store).await.unwrap();
        let b = TokenSigner::shared(&store).await.unwrap();
        assert_eq!(a.kid, b.kid);
        let token = a.sign(&claims("n", "s", "u", &[], 10, 600, None)).unwrap();
        assert!(b.verify(&token, 20).is_ok());
    }
}
