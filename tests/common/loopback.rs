//! What the provider tests share: an in-process HTTP/1.1 server on 127.0.0.1:0 that
//! hands every request to a handler and answers what it returns (a whole body, a
//! chunked stream written part by part with pauses and cut short on demand, a late
//! answer, a dropped connection), and the credential checks the clouds make (SigV4
//! recomputed, OCI signatures verified with the key's public half). Written on a
//! bare socket so faults are easy. Included by `tests/*_providers/support.rs`.

#![allow(dead_code)] // each test crate uses its own part

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};
use skyfuse::cloud::sigv4;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query exactly as sent on the wire.
    pub target: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A piece of a streamed body.
#[derive(Debug, Clone)]
pub enum Part {
    Bytes(Vec<u8>),
    Pause(Duration),
    /// Close the connection here, without ending the chunked body.
    Cut,
}

pub enum Reply {
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A 200 whose body is sent in chunks as the parts say; it ends cleanly unless
    /// a `Cut` comes first.
    Stream {
        content_type: String,
        parts: Vec<Part>,
    },
    /// Wait this long, then answer.
    Delayed(Duration, Box<Reply>),
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self::Http {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self::Http {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Http { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    pub fn stream(content_type: &str, parts: Vec<Part>) -> Self {
        Self::Stream {
            content_type: content_type.into(),
            parts,
        }
    }
}

/// What a handler returns: an answer, or why the request broke the protocol (sent
/// back as a 418 whose text the test's error then shows).
pub type Handled = Result<Reply, String>;

pub struct TestServer {
    pub base_url: String,
    pub requests: Arc<Mutex<Vec<Received>>>,
}

impl TestServer {
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last(&self) -> Received {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

pub async fn serve<F>(handler: F) -> TestServer
where
    F: Fn(&Received) -> Handled + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(received) = read_request(&mut socket).await else {
                    return;
                };
                seen.lock().unwrap().push(received.clone());
                let reply = handler(&received).unwrap_or_else(|reason| Reply::Http {
                    status: 418,
                    headers: vec![],
                    body: format!("test server refused: {reason}").into_bytes(),
                });
                write_reply(&mut socket, reply).await;
            });
        }
    });
    TestServer { base_url, requests }
}

async fn write_reply(socket: &mut tokio::net::TcpStream, mut reply: Reply) {
    loop {
        match reply {
            Reply::Delayed(wait, inner) => {
                tokio::time::sleep(wait).await;
                reply = *inner;
            }
            Reply::Drop => return,
            Reply::Http {
                status,
                headers,
                body,
            } => {
                let mut head = format!("HTTP/1.1 {status} X\r\n");
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str(&format!(
                    "content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                ));
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
                return;
            }
            Reply::Stream {
                content_type,
                parts,
            } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.flush().await;
                for part in parts {
                    match part {
                        Part::Bytes(bytes) if bytes.is_empty() => {}
                        Part::Bytes(bytes) => {
                            let _ = socket
                                .write_all(format!("{:x}\r\n", bytes.len()).as_bytes())
                                .await;
                            let _ = socket.write_all(&bytes).await;
                            let _ = socket.write_all(b"\r\n").await;
                            let _ = socket.flush().await;
                        }
                        Part::Pause(wait) => tokio::time::sleep(wait).await,
                        Part::Cut => return,
                    }
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
                let _ = socket.shutdown().await;
                return;
            }
        }
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next()?.split(' ');
        let method = request_line.next()?.to_string();
        let target = request_line.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        while buffer.len() < end + 4 + length {
            let read = socket.read(&mut chunk).await.ok()?;
            if read == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
        return Some(Received {
            method,
            target,
            headers,
            body: buffer[end + 4..end + 4 + length].to_vec(),
        });
    }
}

pub fn expect(condition: bool, what: impl Into<String>) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what.into()) }
}

/// A fresh RSA-2048 key: PKCS#8 PEM and the public key (PKCS#1 DER).
pub fn rsa_key() -> (String, Vec<u8>) {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::signature::KeyPair as _;
    let key_pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = AsDer::<Pkcs8V1Der>::as_der(&key_pair).unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<String> = body
        .as_bytes()
        .chunks(64)
        .map(|line| String::from_utf8(line.to_vec()).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    (pem, key_pair.public_key().as_ref().to_vec())
}

pub fn verify_rsa_sha256(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(message, signature)
        .is_ok()
}

/// What AWS does with a request: rebuild the canonical request from what arrived,
/// derive the key from the secret it knows (signing name `bedrock`), and compare
/// signatures.
pub fn verify_sigv4(
    received: &Received,
    access_key_id: &str,
    secret: &str,
    region: &str,
    token: Option<&str>,
) -> Result<(), String> {
    let authorization = received.header("authorization").ok_or("no authorization")?;
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut parts = HashMap::new();
    for part in rest.split(", ") {
        let (name, value) = part.split_once('=').ok_or("malformed authorization")?;
        parts.insert(name, value);
    }
    let credential = parts.get("Credential").ok_or("no Credential")?;
    let scope_parts: Vec<&str> = credential.split('/').collect();
    expect(scope_parts.len() == 5, "credential scope")?;
    expect(scope_parts[0] == access_key_id, "access key id")?;
    expect(
        scope_parts[2] == region,
        format!("region {}", scope_parts[2]),
    )?;
    expect(
        scope_parts[3] == "bedrock",
        format!("signing name {}", scope_parts[3]),
    )?;
    expect(scope_parts[4] == "aws4_request", "terminator")?;
    let amz_date = received.header("x-amz-date").ok_or("no x-amz-date")?;
    expect(
        amz_date.starts_with(scope_parts[1]),
        "scope date is not the request date",
    )?;
    let sent_at = sigv4::parse_amz_date(amz_date).map_err(|error| error.message)?;
    let skew = SystemTime::now()
        .duration_since(sent_at)
        .unwrap_or_else(|error| error.duration());
    expect(skew < Duration::from_secs(300), "clock skew over 5 minutes")?;
    let signed_names: Vec<&str> = parts
        .get("SignedHeaders")
        .ok_or("no SignedHeaders")?
        .split(';')
        .collect();
    for required in ["content-type", "host", "x-amz-date"] {
        expect(
            signed_names.contains(&required),
            format!("{required} is not signed"),
        )?;
    }
    expect(
        received.header("x-amz-security-token") == token,
        "session token header",
    )?;
    if token.is_some() {
        expect(
            signed_names.contains(&"x-amz-security-token"),
            "session token is not signed",
        )?;
    }
    let mut headers = BTreeMap::new();
    for name in &signed_names {
        let value = received
            .header(name)
            .ok_or(format!("signed header {name} not sent"))?;
        headers.insert(name.to_string(), value.to_string());
    }
    let payload_hash = hex::encode(Sha256::digest(&received.body));
    let (canonical, signed) = sigv4::canonical_request(
        &received.method,
        &sigv4::canonical_uri(received.path()),
        &sigv4::canonical_query(received.query()),
        &headers,
        &payload_hash,
    );
    expect(
        signed == signed_names.join(";"),
        "signed headers not sorted",
    )?;
    let scope = scope_parts[1..].join("/");
    let to_sign = sigv4::string_to_sign(amz_date, &scope, &canonical);
    let key = sigv4::signing_key(secret, scope_parts[1], region, "bedrock");
    let expected = sigv4::signature(&key, &to_sign);
    expect(
        parts.get("Signature") == Some(&expected.as_str()),
        "signature does not match",
    )
}

/// What OCI does: rebuild the signing string from the headers the signature names,
/// check the body digest and length, and verify with the key's public half.
pub fn verify_oci(received: &Received, key_id: &str, public_key: &[u8]) -> Result<(), String> {
    const SIGNED: &str = "date (request-target) host content-length content-type x-content-sha256";
    let authorization = received.header("authorization").ok_or("no authorization")?;
    let parameters = authorization
        .strip_prefix("Signature ")
        .ok_or("not a Signature")?;
    let mut values = HashMap::new();
    for part in parameters.split(',') {
        let (name, value) = part.split_once('=').ok_or("malformed parameter")?;
        values.insert(name.trim(), value.trim().trim_matches('"'));
    }
    expect(values.get("version") == Some(&"1"), "version")?;
    expect(values.get("keyId") == Some(&key_id), "keyId")?;
    expect(values.get("algorithm") == Some(&"rsa-sha256"), "algorithm")?;
    expect(values.get("headers") == Some(&SIGNED), "signed headers")?;
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&received.body));
    expect(
        received.header("x-content-sha256") == Some(digest.as_str()),
        "x-content-sha256",
    )?;
    expect(
        received.header("content-length") == Some(received.body.len().to_string().as_str()),
        "content-length",
    )?;
    let date = received.header("date").ok_or("no date")?;
    let sent = httpdate::parse_http_date(date).map_err(|error| error.to_string())?;
    let skew = std::time::SystemTime::now()
        .duration_since(sent)
        .unwrap_or_else(|error| error.duration());
    expect(skew.as_secs() < 300, "clock skew over 5 minutes")?;
    let names: Vec<&str> = SIGNED.split(' ').collect();
    let signing_string = skyfuse::cloud::oci_signing::signing_string(
        &names,
        &received.method,
        &received.target,
        |name| received.header(name).map(str::to_string),
    )
    .ok_or("a signed header was not sent")?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(values.get("signature").ok_or("no signature")?)
        .map_err(|error| error.to_string())?;
    expect(
        verify_rsa_sha256(public_key, signing_string.as_bytes(), &signature),
        "signature does not verify",
    )
}
