//! An in-process HTTP/1.1 server on 127.0.0.1:0 that hands every request to a
//! handler and answers what it returns, plus what the provider tests share.
//! Written on a bare socket so faults (a stall, a dropped connection) are easy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use skyfuse::config::{Config, ProviderConfig};
use skyfuse::embed::{EmbedRequest, EmbeddingProvider, Purpose};
use skyfuse::error::{Error, ErrorKind};
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

pub enum Reply {
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
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
            body: body.to_string(),
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self::Http {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.to_string(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Http { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
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
                let mut reply = match handler(&received) {
                    Ok(reply) => reply,
                    Err(reason) => Reply::text(418, &format!("test server refused: {reason}")),
                };
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
                            let _ = socket.write_all(body.as_bytes()).await;
                            let _ = socket.shutdown().await;
                            return;
                        }
                    }
                }
            });
        }
    });
    TestServer { base_url, requests }
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

/// The one `[[provider]]` of a TOML snippet, validated.
pub fn provider_config(toml: &str) -> ProviderConfig {
    let config = Config::parse(toml, std::path::Path::new("/")).unwrap();
    config.validate().unwrap();
    config.providers.into_iter().next().unwrap()
}

pub fn build(toml: &str, env: &HashMap<String, String>) -> Arc<dyn EmbeddingProvider> {
    skyfuse::embed::providers::build(&provider_config(toml), env, reqwest::Client::new()).unwrap()
}

pub fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

pub fn request<'a>(
    model: &'a str,
    texts: &'a [String],
    purpose: Purpose,
    dims: Option<usize>,
) -> EmbedRequest<'a> {
    EmbedRequest {
        model,
        texts,
        purpose,
        dims,
    }
}

/// A vector the server derives from a text, so tests can see order is kept.
pub fn vector_for(text: &str, dims: usize) -> Vec<f32> {
    let seed = text.len() as f32;
    (0..dims)
        .map(|index| seed + index as f32 / 1000.0)
        .collect()
}

pub fn field<'a>(body: &'a Value, name: &str) -> Result<&'a Value, String> {
    body.get(name)
        .ok_or_else(|| format!("body has no {name:?}: {body}"))
}

pub fn expect(condition: bool, what: impl Into<String>) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what.into()) }
}

/// The kind of an embedding error, with its message when it is not the one expected.
pub fn assert_kind(result: skyfuse::error::Result<Vec<Vec<f32>>>, kind: ErrorKind) -> Error {
    match result {
        Ok(vectors) => panic!("expected {kind:?}, got {} vectors", vectors.len()),
        Err(error) => {
            assert_eq!(error.kind, kind, "{}", error.message);
            error
        }
    }
}

/// A fresh RSA-2048 key: PKCS#8 PEM and the public key (PKCS#1 DER).
pub fn rsa_key() -> (String, Vec<u8>) {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine;
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
