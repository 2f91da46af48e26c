//! Attacks on identity: callers without a key, with a wrong key or a forged
//! token, and known callers reaching past their roles, over real gRPC and the
//! HTTP facade. See docs/security/identity.md for the threat rows.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use skyfuse::api::proto::{
    self, admin_service_client::AdminServiceClient,
    generation_service_client::GenerationServiceClient,
    ingestion_service_client::IngestionServiceClient,
    retrieval_service_client::RetrievalServiceClient,
};
use skyfuse::auth::hash_key_hex;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::support::AttackServer;

const READER_KEY: &str = "reader-key-7f3a";
const INDEXER_KEY: &str = "indexer-key-91c2";
const OPS_KEY: &str = "ops-key-0d55";

/// Two corpora, `public` and `secret`, each its own bm25 source and index; roles
/// for a reader (public only), an indexer (writes public from its folder) and ops.
fn identity_config(base: &Path, extra: &str) -> String {
    let base = base.display();
    format!(
        r#"
        [server]
        data_dir = "{base}/data"
        [[source]]
        id = "public"
        kind = "tantivy"
        [[source]]
        id = "secret"
        kind = "tantivy"
        [[index]]
        id = "public-docs"
        sources = ["public"]
        [[index]]
        id = "secret-docs"
        sources = ["secret"]
        [[role]]
        id = "reader"
        search_indexes = ["public-docs"]
        [[role]]
        id = "indexer"
        index = ["public-docs"]
        index_prefixes = ["{base}/public"]
        [[role]]
        id = "ops"
        admin = true
        search_sources = ["*"]
        index = ["*"]
        index_prefixes = ["/"]
        prune = true
        [ingest]
        roots = ["{base}"]
        [[caller]]
        id = "reader"
        api_key_sha256 = "{reader}"
        roles = ["reader"]
        [[caller]]
        id = "indexer"
        api_key_sha256 = "{indexer}"
        roles = ["indexer"]
        [[caller]]
        id = "ops"
        api_key_sha256 = "{ops}"
        roles = ["ops"]
        {extra}
        "#,
        reader = hash_key_hex(READER_KEY),
        indexer = hash_key_hex(INDEXER_KEY),
        ops = hash_key_hex(OPS_KEY),
    )
}

/// A folder with `public/` and `secret/` documents that share the word "harbour".
fn corpus() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (folder, text) in [
        (
            "public",
            "The harbour opens at sunrise for the public ferry.",
        ),
        (
            "secret",
            "The harbour vault code is kept in the secret ledger.",
        ),
    ] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        std::fs::write(dir.path().join(folder).join("doc.md"), text).unwrap();
    }
    dir
}

fn with_bearer<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn search(
    channel: &Channel,
    token: Option<&str>,
    sources: &[&str],
) -> Result<proto::SearchResponse, tonic::Status> {
    RetrievalServiceClient::new(channel.clone())
        .search(with_bearer(
            proto::SearchRequest {
                query: "harbour".into(),
                top_k: 5,
                sources: sources.iter().map(|source| source.to_string()).collect(),
                include_text: true,
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn index(
    channel: &Channel,
    token: Option<&str>,
    url: &str,
    index: &str,
) -> Result<proto::IndexProgress, tonic::Status> {
    let mut stream = IngestionServiceClient::new(channel.clone())
        .index(with_bearer(
            proto::IndexRequest {
                url: url.into(),
                index: index.into(),
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner();
    let mut last = None;
    while let Some(event) = stream.message().await? {
        last = Some(event);
    }
    Ok(last.expect("a final progress event"))
}

fn assert_status(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    message: &str,
) {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message, "{status:?}");
}

/// The server with both corpora indexed by ops.
async fn indexed_server(dir: &TempDir, extra: &str) -> AttackServer {
    let server = AttackServer::start(&identity_config(dir.path(), extra), dir.path()).await;
    for (folder, target) in [("public", "public-docs"), ("secret", "secret-docs")] {
        let url = dir.path().join(folder).display().to_string();
        let report = index(&server.channel, Some(OPS_KEY), &url, target)
            .await
            .unwrap();
        assert_eq!(report.indexed, 1, "{report:?}");
    }
    server
}

#[tokio::test]
async fn no_key_or_a_wrong_key_is_unauthenticated_on_every_service() {
    let dir = corpus();
    let server = indexed_server(&dir, "").await;
    let channel = &server.channel;
    for token in [None, Some("not-a-key"), Some("reader-key-7f3")] {
        let refused = search(channel, token, &[]).await;
        let status = refused.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().starts_with("authentication failed: "),
            "{status:?}"
        );
        assert!(!status.message().contains("public"), "{status:?}");
        let admin = AdminServiceClient::new(channel.clone())
            .list_sources(with_bearer(proto::ListSourcesRequest {}, token))
            .await;
        assert_eq!(admin.unwrap_err().code(), tonic::Code::Unauthenticated);
        let url = dir.path().join("public").display().to_string();
        let indexing = index(channel, token, &url, "public-docs").await;
        assert_eq!(indexing.unwrap_err().code(), tonic::Code::Unauthenticated);
    }
    assert_status(
        search(channel, None, &[]).await,
        tonic::Code::Unauthenticated,
        "authentication failed: send authorization: Bearer <api key or token>, or a client certificate",
    );
    // Still serving the callers it knows.
    assert_eq!(
        search(channel, Some(OPS_KEY), &[])
            .await
            .unwrap()
            .hits
            .len(),
        2
    );
    server.stop().await;
}

#[tokio::test]
async fn an_extractive_answer_needs_a_key_and_reads_only_granted_sources() {
    let dir = corpus();
    let server = indexed_server(&dir, "").await;
    let answer = |token: Option<&'static str>, sources: Vec<String>| {
        let channel = server.channel.clone();
        async move {
            GenerationServiceClient::new(channel)
                .answer(with_bearer(
                    proto::AnswerRequest {
                        question: "what about the harbour?".into(),
                        model: "extractive".into(),
                        sources,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ())
        }
    };
    let anonymous = answer(None, Vec::new()).await.unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    let wrong = answer(Some("wrong"), Vec::new()).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    assert_status(
        answer(Some(READER_KEY), vec!["secret".into()]).await,
        tonic::Code::PermissionDenied,
        "permission denied: search on the requested sources",
    );
    // The reader's own answer cites the public document only.
    let mut stream = GenerationServiceClient::new(server.channel.clone())
        .answer(with_bearer(
            proto::AnswerRequest {
                question: "what about the harbour?".into(),
                model: "extractive".into(),
                ..Default::default()
            },
            Some(READER_KEY),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut cited = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(proto::answer_event::Event::Done(done)) = event.event {
            cited.extend(done.citations.into_iter().map(|citation| citation.text));
        }
    }
    assert!(
        !cited.is_empty() && cited.iter().all(|text| !text.contains("vault")),
        "{cited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_reader_searching_a_forbidden_or_unknown_source_gets_one_answer() {
    let dir = corpus();
    let server = indexed_server(&dir, "").await;
    let channel = &server.channel;
    let expected = "permission denied: search on the requested sources";
    assert_status(
        search(channel, Some(READER_KEY), &["secret"]).await,
        tonic::Code::PermissionDenied,
        expected,
    );
    assert_status(
        search(channel, Some(READER_KEY), &["no-such-source"]).await,
        tonic::Code::PermissionDenied,
        expected,
    );
    assert_status(
        search(channel, Some(READER_KEY), &["public", "secret"]).await,
        tonic::Code::PermissionDenied,
        expected,
    );
    // Naming no source searches only what the role grants.
    let own = search(channel, Some(READER_KEY), &[]).await.unwrap();
    assert_eq!(own.hits.len(), 1, "{:?}", own.hits);
    assert!(own.hits[0].text.contains("public ferry"), "{:?}", own.hits);
    assert!(
        own.sources.iter().all(|outcome| outcome.source != "secret"),
        "{:?}",
        own.sources
    );
    // A caller whose roles grant no source searches nothing.
    assert_status(
        search(channel, Some(INDEXER_KEY), &[]).await,
        tonic::Code::PermissionDenied,
        "permission denied: search (no source is granted)",
    );
    server.stop().await;
}

#[tokio::test]
async fn index_outside_the_granted_prefix_or_index_is_permission_denied() {
    let dir = corpus();
    let server = indexed_server(&dir, "").await;
    let channel = &server.channel;
    let public = dir.path().join("public").display().to_string();
    let secret = dir.path().join("secret").display().to_string();
    // Checked on the resolved path: `..`, a look-alike prefix and a path outside the
    // roots all get the one refusal that does not say which server paths exist.
    for url in [
        secret.clone(),
        format!("{public}/../secret"),
        format!("{public}-evil"),
        "/etc".to_owned(),
    ] {
        assert_status(
            index(channel, Some(INDEXER_KEY), &url, "public-docs").await,
            tonic::Code::PermissionDenied,
            "not found or not allowed",
        );
    }
    let into = "permission denied: index into the requested index";
    assert_status(
        index(channel, Some(INDEXER_KEY), &public, "secret-docs").await,
        tonic::Code::PermissionDenied,
        into,
    );
    assert_status(
        index(channel, Some(INDEXER_KEY), &public, "no-such-index").await,
        tonic::Code::PermissionDenied,
        into,
    );
    assert_status(
        index(channel, Some(READER_KEY), &public, "public-docs").await,
        tonic::Code::PermissionDenied,
        into,
    );
    // Its own prefix into its own index still runs.
    let report = index(channel, Some(INDEXER_KEY), &public, "public-docs")
        .await
        .unwrap();
    assert_eq!(report.unchanged, 1, "{report:?}");
    server.stop().await;
}

#[tokio::test]
async fn prune_needs_the_role_and_a_detached_run_is_seen_by_its_owner_and_admins_only() {
    let dir = corpus();
    let server = indexed_server(&dir, "").await;
    let channel = &server.channel;
    let public = dir.path().join("public").display().to_string();
    let mut client = IngestionServiceClient::new(channel.clone());
    let pruning = client
        .index(with_bearer(
            proto::IndexRequest {
                url: public.clone(),
                index: "public-docs".into(),
                exclude: vec!["**".into()],
                prune: true,
                ..Default::default()
            },
            Some(INDEXER_KEY),
        ))
        .await;
    let status = match pruning {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "permission denied: prune");

    let mut stream = client
        .index(with_bearer(
            proto::IndexRequest {
                url: public,
                index: "public-docs".into(),
                detached: true,
                ..Default::default()
            },
            Some(INDEXER_KEY),
        ))
        .await
        .unwrap()
        .into_inner();
    let run_id = stream.message().await.unwrap().unwrap().run_id;
    // The stream ends when the detached run does.
    while stream.message().await.unwrap().is_some() {}
    let mut admin = AdminServiceClient::new(channel.clone());
    let get = |token: &'static str| {
        let mut admin = admin.clone();
        let run_id = run_id.clone();
        async move {
            admin
                .get_index_run(with_bearer(
                    proto::GetIndexRunRequest { run_id },
                    Some(token),
                ))
                .await
        }
    };
    let owner = get(INDEXER_KEY).await.unwrap().into_inner();
    assert_eq!(owner.state, "succeeded", "{owner:?}");
    assert_eq!(owner.progress.unwrap().unchanged, 1);
    assert_eq!(get(OPS_KEY).await.unwrap().into_inner().state, "succeeded");
    let other = get(READER_KEY).await.unwrap_err();
    assert_eq!(other.code(), tonic::Code::NotFound, "{other:?}");
    let unknown = admin
        .get_index_run(with_bearer(
            proto::GetIndexRunRequest {
                run_id: "0".repeat(32),
            },
            Some(READER_KEY),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        unknown.message().replace("0".repeat(32).as_str(), ""),
        other.message().replace(run_id.as_str(), "")
    );
    server.stop().await;
}

#[tokio::test]
async fn admin_needs_the_admin_role_and_lists_only_what_the_caller_may_see() {
    let dir = corpus();
    let server = indexed_server(&dir, "[[role]]\nid = \"public-admin\"\nadmin = true\nsearch_sources = [\"public\"]\n[[caller]]\nid = \"public-admin\"\napi_key_sha256 = \"{hash}\"\nroles = [\"public-admin\"]\n".replace("{hash}", &hash_key_hex("public-admin-key")).as_str()).await;
    let admin = || AdminServiceClient::new(server.channel.clone());
    let refused = admin()
        .list_sources(with_bearer(proto::ListSourcesRequest {}, Some(READER_KEY)))
        .await;
    assert_status(
        refused,
        tonic::Code::PermissionDenied,
        "permission denied: admin",
    );
    let refused = admin()
        .list_indexes(with_bearer(proto::ListIndexesRequest {}, Some(READER_KEY)))
        .await;
    assert_status(
        refused,
        tonic::Code::PermissionDenied,
        "permission denied: admin",
    );
    let all = admin()
        .list_sources(with_bearer(proto::ListSourcesRequest {}, Some(OPS_KEY)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.sources.len(), 2);
    let narrow = admin()
        .list_sources(with_bearer(
            proto::ListSourcesRequest {},
            Some("public-admin-key"),
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = narrow
        .sources
        .iter()
        .map(|source| source.id.as_str())
        .collect();
    assert_eq!(ids, ["public"]);
    let indexes = admin()
        .list_indexes(with_bearer(
            proto::ListIndexesRequest {},
            Some("public-admin-key"),
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = indexes
        .indexes
        .iter()
        .map(|index| index.id.as_str())
        .collect();
    assert_eq!(ids, ["public-docs"]);
    server.stop().await;
}

#[tokio::test]
async fn the_facade_answers_401_with_www_authenticate_and_403_without_a_model() {
    let dir = corpus();
    // A deployment nobody reaches: every call here is refused before routing.
    let facade = r#"
        [facade]
        listen = "127.0.0.1:0"
        [[provider]]
        id = "local-llm"
        kind = "openai_compat"
        base_url = "http://127.0.0.1:9/v1"
        [[deployment]]
        provider = "local-llm"
        model = "gpt-4o"
    "#;
    let server = AttackServer::start(&identity_config(dir.path(), facade), dir.path()).await;
    let base = format!("http://{}", server.http.expect("the facade listens"));
    let http = reqwest::Client::new();
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    for token in [None, Some("wrong-key")] {
        let mut request = http.post(format!("{base}/v1/chat/completions")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "authentication_error");
    }
    let forbidden = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(READER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let error: Value = forbidden.json().await.unwrap();
    assert_eq!(
        error["error"]["message"],
        "permission denied: chat (no model is granted)"
    );

    let models = http.get(format!("{base}/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 401);
    assert_eq!(models.headers()["www-authenticate"], "Bearer");
    let models: Value = http
        .get(format!("{base}/v1/models"))
        .bearer_auth(READER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"], json!([]));
    // Still serving.
    assert!(search(&server.channel, Some(OPS_KEY), &[]).await.is_ok());
    server.stop().await;
}

// --- OIDC / JWT -------------------------------------------------------------

/// A signing key of the test issuer and its public JWK.
enum TestKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl TestKey {
    fn rsa() -> Self {
        Self::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
    }

    fn ec() -> Self {
        Self::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "RS256",
            Self::Ec(_) => "ES256",
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        match self {
            Self::Rsa(key) => {
                let (n, e) = rsa_public_components(key.public_key().as_ref());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                       "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)})
            }
            Self::Ec(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                       "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
            }
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Rsa(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .unwrap();
                signature
            }
            Self::Ec(key) => key.sign(&rng, message).unwrap().as_ref().to_vec(),
        }
    }

    fn token(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }
}

/// n and e of a DER RSAPublicKey (SEQUENCE { INTEGER n, INTEGER e }).
fn rsa_public_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn read(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = der[0];
        // Only what aws-lc writes: definite lengths, at most a few length bytes.
        let (length, header) = if der[1] & 0x80 == 0 {
            (der[1] as usize, 2)
        } else {
            let bytes = (der[1] & 0x7f) as usize;
            let length = der[2..2 + bytes]
                .iter()
                .fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte));
            (length, 2 + bytes)
        };
        (tag, &der[header..header + length], &der[header + length..])
    }
    let (_, sequence, _) = read(der);
    let (_, n, rest) = read(sequence);
    let (_, e, _) = read(rest);
    let strip = |bytes: &[u8]| -> Vec<u8> {
        bytes
            .iter()
            .skip_while(|byte| **byte == 0)
            .copied()
            .collect()
    };
    (strip(n), strip(e))
}

/// An OpenID issuer on 127.0.0.1: discovery and a JWKS that the test can rotate,
/// counting how often the JWKS is fetched.
struct TestIssuer {
    issuer: String,
    keys: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl TestIssuer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let issuer = format!("{base}/tenant/v2.0");
        let keys = Arc::new(std::sync::Mutex::new(json!({"keys": []})));
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery =
            json!({"issuer": issuer, "jwks_uri": format!("{base}/tenant/discovery/keys")});
        let served_keys = keys.clone();
        let counted = fetches.clone();
        let app = axum::Router::new()
            .route(
                "/tenant/v2.0/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let discovery = discovery.clone();
                    async move { axum::Json(discovery) }
                }),
            )
            .route(
                "/tenant/discovery/keys",
                axum::routing::get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let keys = served_keys.lock().unwrap().clone();
                    async move { axum::Json(keys) }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            issuer,
            keys,
            fetches,
        }
    }

    fn publish(&self, jwks: Vec<Value>) {
        *self.keys.lock().unwrap() = json!({"keys": jwks});
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn claims(&self, audience: &str, exp_offset: i64, groups: &[&str]) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        json!({"iss": self.issuer, "aud": audience, "sub": "alice", "iat": now,
               "exp": now + exp_offset, "groups": groups, "scp": "skyfuse.search other.scope"})
    }
}

fn issuer_config(issuer: &str) -> String {
    format!(
        r#"
        [[issuer]]
        id = "entra"
        issuer = "{issuer}"
        audiences = ["api://skyfuse"]
        leeway_s = 30
        role_claims = ["groups", "scp"]
        [issuer.role_mapping]
        "Public_Readers" = "reader"
        "skyfuse.index" = "indexer"
        "#
    )
}

#[tokio::test]
async fn oidc_tokens_are_checked_for_signature_issuer_audience_and_expiry() {
    let dir = corpus();
    let issuer = TestIssuer::start().await;
    let rsa = TestKey::rsa();
    let ec = TestKey::ec();
    issuer.publish(vec![rsa.jwk("rsa-1"), ec.jwk("ec-1")]);
    let server = indexed_server(&dir, &issuer_config(&issuer.issuer)).await;
    let channel = &server.channel;
    let good = issuer.claims("api://skyfuse", 600, &["Public_Readers"]);

    // Valid RS256 and ES256 tokens name a reader: public hits only.
    for (key, kid) in [(&rsa, "rsa-1"), (&ec, "ec-1")] {
        let found = search(channel, Some(&key.token(kid, &good)), &[])
            .await
            .unwrap();
        assert_eq!(found.hits.len(), 1, "{:?}", found.hits);
        assert!(found.hits[0].text.contains("public ferry"));
        assert_status(
            search(channel, Some(&key.token(kid, &good)), &["secret"]).await,
            tonic::Code::PermissionDenied,
            "permission denied: search on the requested sources",
        );
    }
    // A valid token without a mapped group holds no role.
    let no_role = rsa.token(
        "rsa-1",
        &issuer.claims("api://skyfuse", 600, &["Strangers"]),
    );
    assert_status(
        search(channel, Some(&no_role), &[]).await,
        tonic::Code::PermissionDenied,
        "permission denied: search (no source is granted)",
    );

    let refused = |token: String, message: &'static str| {
        let channel = channel.clone();
        async move {
            assert_status(
                search(&channel, Some(&token), &[]).await,
                tonic::Code::Unauthenticated,
                message,
            );
        }
    };
    // Expired beyond the 30 s leeway.
    refused(
        rsa.token(
            "rsa-1",
            &issuer.claims("api://skyfuse", -120, &["Public_Readers"]),
        ),
        "authentication failed: the token has expired",
    )
    .await;
    // Within the leeway it still counts.
    assert!(
        search(
            channel,
            Some(&rsa.token(
                "rsa-1",
                &issuer.claims("api://skyfuse", -5, &["Public_Readers"])
            )),
            &[]
        )
        .await
        .is_ok()
    );
    // Another audience.
    refused(
        rsa.token(
            "rsa-1",
            &issuer.claims("api://other-app", 600, &["Public_Readers"]),
        ),
        "authentication failed: the token is not for this service (audience)",
    )
    .await;
    // Another issuer, even one on this host.
    let mut foreign = good.clone();
    foreign["iss"] = json!("http://127.0.0.1:1/evil/v2.0");
    refused(
        rsa.token("rsa-1", &foreign),
        "authentication failed: the token's issuer is not trusted",
    )
    .await;
    // Signed by a key the issuer never published, under a published kid.
    refused(
        TestKey::rsa().token("rsa-1", &good),
        "authentication failed: the token's signature is not valid",
    )
    .await;
    // A kid of one type with a signature of the other.
    refused(
        ec.token("rsa-1", &good),
        "authentication failed: the token's algorithm does not match its key",
    )
    .await;
    // alg: none.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    refused(unsigned, "authentication failed: malformed token").await;
    // HS256 "signed" with the issuer's public key as the HMAC secret.
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).to_string());
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(good.to_string()));
    let secret = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        rsa.jwk("rsa-1").to_string().as_bytes(),
    );
    let mac = aws_lc_rs::hmac::sign(&secret, input.as_bytes());
    refused(
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())),
        "authentication failed: the token's algorithm is not accepted",
    )
    .await;
    // Garbage that looks like a JWT.
    refused(
        "a.b.c".into(),
        "authentication failed: the token's issuer is not trusted",
    )
    .await;

    assert!(
        search(channel, Some(OPS_KEY), &[]).await.is_ok(),
        "still serving"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_once_then_random_kids_fetch_nothing() {
    let dir = corpus();
    let issuer = TestIssuer::start().await;
    let old = TestKey::ec();
    issuer.publish(vec![old.jwk("2026-01")]);
    let server = indexed_server(&dir, &issuer_config(&issuer.issuer)).await;
    let channel = &server.channel;
    let good = issuer.claims("api://skyfuse", 600, &["Public_Readers"]);
    assert!(
        search(channel, Some(&old.token("2026-01", &good)), &[])
            .await
            .is_ok()
    );
    assert_eq!(issuer.fetches(), 1);
    assert!(
        search(channel, Some(&old.token("2026-01", &good)), &[])
            .await
            .is_ok()
    );
    assert_eq!(issuer.fetches(), 1, "the key set is cached");

    // The issuer rotates: a token under the new kid is accepted after one refetch.
    let new = TestKey::rsa();
    issuer.publish(vec![new.jwk("2026-02")]);
    assert!(
        search(channel, Some(&new.token("2026-02", &good)), &[])
            .await
            .is_ok()
    );
    assert_eq!(issuer.fetches(), 2);

    // An attacker's random kids: refused, and the issuer is not asked again.
    for kid in ["random-1", "random-2", "random-3"] {
        assert_status(
            search(channel, Some(&new.token(kid, &good)), &[]).await,
            tonic::Code::Unauthenticated,
            "authentication failed: the token is not signed by a known key",
        );
    }
    assert_eq!(
        issuer.fetches(),
        2,
        "unknown kids refetch at most once a minute"
    );
    server.stop().await;
}
