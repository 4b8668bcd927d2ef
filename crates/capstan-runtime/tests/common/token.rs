//! A Docker Hub-style token service for a real docker-registry: `GET /token?service=&scope=`
//! with basic credentials answers an ES256 JWT (x5c-signed by a self-signed cert the registry
//! trusts through `rootcertbundle`). Stopped on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

pub const SERVICE: &str = "capstan-test-registry";
pub const ISSUER: &str = "capstan-test-issuer";

pub struct TokenServer {
    pub port: u16,
    pub cert_path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
}

impl TokenServer {
    /// Starts the service; tokens are issued only for `user`/`password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate().expect("generating a P-256 key");
        let cert = rcgen::CertificateParams::new(vec!["capstan-token".to_string()])
            .expect("cert params")
            .self_signed(&key)
            .expect("self-signed cert");
        let cert_path = dir.join("token-cert.pem");
        std::fs::write(&cert_path, cert.pem()).expect("writing cert");
        let signer = Arc::new(Signer {
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der())
                .expect("loading the key"),
            cert_der: cert.der().to_vec(),
            user: user.into(),
            password: password.into(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the token service");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    serve(c, &signer);
                }
            }
        });
        TokenServer {
            port,
            cert_path,
            stop,
            thread: Some(thread),
        }
    }

    /// The registry config's `auth:` section pointing at this service.
    pub fn registry_auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    \
             issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.port,
            self.cert_path.display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, signer: &Signer) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(v.trim().to_string());
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(|s| {
            s.replace("%3A", ":")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
        .collect();
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", signer.user, signer.password))
    );
    let (status, body) = if authorization.as_deref() == Some(expected.as_str()) {
        let token = signer.token(&scopes);
        (
            "200 OK",
            format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#),
        )
    } else {
        (
            "401 Unauthorized",
            r#"{"details":"incorrect username or password"}"#.to_string(),
        )
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Signer {
    fn token(&self, scopes: &[String]) -> String {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()
                }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)]
        });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": self.user, "aud": SERVICE, "exp": now + 300,
            "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", scopes.len()), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("signing");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}
