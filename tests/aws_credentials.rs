//! AWS credentials that renew themselves (`cloud::aws_credentials`): web identity
//! against moto's STS (then a real signed call with the keys it gave) and a loopback
//! STS, EC2 instance metadata (IMDSv2) and the container endpoint against loopback
//! servers on 127.0.0.1. Every source is given an explicit loopback endpoint: nothing
//! here reaches a cloud or 169.254.169.254. Time is a test clock moved by the test,
//! never waited on.

#[path = "common/loopback.rs"]
mod loopback;
#[path = "common/test_clock.rs"]
mod test_clock;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use loopback::{Received, Reply, expect, serve};
use skyfuse::cloud::aws_credentials::{AwsCredentialsProvider, Clock};
use skyfuse::cloud::aws_secrets::AwsSecretsManager;
use skyfuse::cloud::sigv4::{SigV4Signer, amz_date};
use skyfuse::config::AwsKeyLocations;
use skyfuse::error::ErrorKind;
use test_clock::{advance, env, test_clock};

/// `2026-12-03T02:07:02Z`, as STS and instance metadata write `Expiration`.
fn iso(time: SystemTime) -> String {
    let text = amz_date(time);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    )
}

fn provider(pairs: &[(&str, &str)], clock: Clock) -> AwsCredentialsProvider {
    AwsCredentialsProvider::from_env(
        &AwsKeyLocations::default(),
        "aws_",
        Some("us-east-1"),
        &env(pairs),
        &reqwest::Client::new(),
    )
    .unwrap()
    .with_clock(clock)
}

fn form(received: &Received) -> HashMap<String, String> {
    url::form_urlencoded::parse(&received.body)
        .into_owned()
        .collect()
}

fn moto_endpoint() -> Option<String> {
    match std::env::var("SKYFUSE_TEST_S3_ENDPOINT") {
        Ok(endpoint) => Some(endpoint),
        Err(_) => {
            assert!(
                std::env::var_os("SKYFUSE_REQUIRE_EMULATORS").is_none(),
                "the emulators were required"
            );
            eprintln!(
                "SKIPPED: SKYFUSE_TEST_S3_ENDPOINT is not set; ./scripts/test.sh starts moto and runs this test"
            );
            None
        }
    }
}

/// STS `GetCallerIdentity` signed by `signer`: moto answers with the identity the
/// access key belongs to, so the ARN shows which credentials signed.
async fn caller_arn(moto: &str, signer: &SigV4Signer) -> String {
    let url = url::Url::parse(moto).unwrap();
    let body = b"Action=GetCallerIdentity&Version=2011-06-15".to_vec();
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let headers = [("content-type".to_string(), content_type.to_string())];
    let signed = signer
        .sign("POST", &url, &headers, &body, SystemTime::now())
        .await
        .unwrap();
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type);
    for (name, value) in signed {
        request = request.header(name, value);
    }
    let answer = request.body(body).send().await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let text = answer.text().await.unwrap();
    let start = text.find("<Arn>").expect("an Arn") + "<Arn>".len();
    let end = text.find("</Arn>").unwrap();
    text[start..end].to_string()
}

#[tokio::test]
async fn web_identity_keys_from_moto_sts_sign_real_calls_and_are_renewed_before_they_expire() {
    let Some(moto) = moto_endpoint() else {
        return;
    };
    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("token");
    std::fs::write(&token_file, "eyJ.projected-service-account-token.v1\n").unwrap();
    let session = format!("skyfuse-test-{}", std::process::id());
    let pairs = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/skyfuse-irsa",
        ),
        ("AWS_ROLE_SESSION_NAME", session.as_str()),
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let (clock, now) = test_clock();
    let credentials = provider(&pairs, clock);
    let first = credentials.current().await.unwrap();
    assert!(
        first.access_key_id.expose().starts_with("ASIA"),
        "temporary keys: {}",
        first.access_key_id.expose()
    );
    assert!(first.session_token.is_some());

    // A real signed call with them: STS knows the key as the assumed role's.
    let signer = SigV4Signer {
        credentials: credentials.clone(),
        region: "us-east-1".into(),
        service: "sts".into(),
    };
    let expected_arn = format!("arn:aws:sts::123456789012:assumed-role/skyfuse-irsa/{session}");
    assert_eq!(caller_arn(&moto, &signer).await, expected_arn);

    // Cached while fresh; moto's keys last STS's default hour, so 56 minutes later
    // they are within the 5-minute margin and the next signature renews them.
    let cached = credentials.current().await.unwrap();
    assert_eq!(cached.access_key_id.expose(), first.access_key_id.expose());
    advance(&now, Duration::from_secs(56 * 60));
    std::fs::write(&token_file, "eyJ.projected-service-account-token.v2\n").unwrap();
    let renewed = credentials.current().await.unwrap();
    assert_ne!(renewed.access_key_id.expose(), first.access_key_id.expose());
    assert_eq!(caller_arn(&moto, &signer).await, expected_arn);

    // aws-sm: through the same chain, GetSecretValue on moto signed with STS's keys.
    let name = format!("skyfuse/irsa-{}", std::process::id());
    let create = reqwest::Client::new()
        .post(&moto)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "secretsmanager.CreateSecret")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(serde_json::json!({"Name": name, "SecretString": "from-irsa"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(create.status().is_success(), "{}", create.status());
    let manager = AwsSecretsManager::from_env(&env(&pairs), &reqwest::Client::new()).unwrap();
    assert_eq!(manager.get(&name).await.unwrap().expose(), "from-irsa");
}

/// A loopback STS: answers `AssumeRoleWithWebIdentity` with keys numbered by call,
/// expiring `lifetime` after the test clock's time, or refuses when told to.
struct FakeSts {
    calls: Arc<AtomicUsize>,
    refuse: Arc<Mutex<bool>>,
    server: loopback::TestServer,
}

async fn fake_sts(now: Arc<Mutex<SystemTime>>, lifetime: Duration) -> FakeSts {
    let calls = Arc::new(AtomicUsize::new(0));
    let refuse = Arc::new(Mutex::new(false));
    let (counter, refusing) = (calls.clone(), refuse.clone());
    let server = serve(move |received: &Received| {
        expect(received.method == "POST", &received.method)?;
        expect(
            received.header("authorization").is_none(),
            "AssumeRoleWithWebIdentity is unsigned",
        )?;
        let form = form(received);
        expect(
            form.get("Action").map(String::as_str) == Some("AssumeRoleWithWebIdentity"),
            format!("{form:?}"),
        )?;
        expect(
            form.get("RoleArn").map(String::as_str) == Some("arn:aws:iam::1:role/r"),
            "RoleArn",
        )?;
        if *refusing.lock().unwrap() {
            return Ok(Reply::Http {
                status: 403,
                headers: vec![("content-type".into(), "text/xml".into())],
                body: br#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error><RequestId>1</RequestId></ErrorResponse>"#.to_vec(),
            });
        }
        let call = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let expiration = iso(*now.lock().unwrap() + lifetime);
        let body = format!(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
             <AccessKeyId>ASIAFAKE{call}</AccessKeyId><SecretAccessKey>secret-{call}</SecretAccessKey>\
             <SessionToken>session-{call}</SessionToken><Expiration>{expiration}</Expiration>\
             </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
        );
        Ok(Reply::Http {
            status: 200,
            headers: vec![("content-type".into(), "text/xml".into())],
            body: body.into_bytes(),
        })
    })
    .await;
    FakeSts {
        calls,
        refuse,
        server,
    }
}

#[tokio::test]
async fn web_identity_rereads_its_token_file_keeps_keys_through_a_failed_renewal_then_fails_clearly()
 {
    let (clock, now) = test_clock();
    let sts = fake_sts(now.clone(), Duration::from_secs(3600)).await;
    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("token");
    std::fs::write(&token_file, "token-v1").unwrap();
    let credentials = provider(
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_ENDPOINT_URL_STS", sts.server.base_url.as_str()),
        ],
        clock,
    );
    let first = credentials.current().await.unwrap();
    assert_eq!(first.access_key_id.expose(), "ASIAFAKE1");
    assert_eq!(form(&sts.server.last())["WebIdentityToken"], "token-v1");
    assert!(form(&sts.server.last())["RoleSessionName"].starts_with("skyfuse-"));

    // The kubelet rewrote the token; the renewal 4 minutes before expiry sends it.
    std::fs::write(&token_file, "token-v2").unwrap();
    advance(&now, Duration::from_secs(56 * 60));
    let renewed = credentials.current().await.unwrap();
    assert_eq!(renewed.access_key_id.expose(), "ASIAFAKE2");
    assert_eq!(form(&sts.server.last())["WebIdentityToken"], "token-v2");

    // STS refuses the next renewal: the current keys are used until they expire...
    *sts.refuse.lock().unwrap() = true;
    advance(&now, Duration::from_secs(56 * 60));
    let kept = credentials.current().await.unwrap();
    assert_eq!(kept.access_key_id.expose(), "ASIAFAKE2");
    // ...and not asked again on every call right after a failure.
    let requests = sts.server.count();
    credentials.current().await.unwrap();
    assert_eq!(sts.server.count(), requests);

    // ...then the call fails with an auth error naming the source and STS's code.
    advance(&now, Duration::from_secs(5 * 60));
    let error = credentials.current().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth);
    for part in ["web identity", "AccessDenied", "403"] {
        assert!(error.message.contains(part), "{part}: {}", error.message);
    }
    assert!(!error.message.contains("secret-2"), "{}", error.message);
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_first_exchange_fails_the_signature_with_the_source_named() {
    let (clock, now) = test_clock();
    let sts = fake_sts(now, Duration::from_secs(3600)).await;
    *sts.refuse.lock().unwrap() = true;
    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("token");
    std::fs::write(&token_file, "token").unwrap();
    let signer = SigV4Signer {
        credentials: provider(
            &[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
                ("AWS_ENDPOINT_URL", sts.server.base_url.as_str()),
            ],
            clock,
        ),
        region: "us-east-1".into(),
        service: "bedrock".into(),
    };
    let url = url::Url::parse("http://127.0.0.1:9/model/m/converse").unwrap();
    let error = signer
        .sign("POST", &url, &[], b"{}", SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth);
    assert!(
        error.message.contains("aws credentials from web identity")
            && error.message.contains("Not authorized"),
        "{}",
        error.message
    );
}

/// A loopback IMDSv2: the token PUT, then the role list and the role's credentials,
/// each GET refused without the token. Keys are numbered by fetch and expire
/// `lifetime` after the test clock's time; `failing` makes the token PUT answer 500.
struct FakeImds {
    failing: Arc<Mutex<bool>>,
    server: loopback::TestServer,
}

async fn fake_imds(now: Arc<Mutex<SystemTime>>, lifetime: Duration) -> FakeImds {
    let fetches = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(Mutex::new(false));
    let refusing = failing.clone();
    let server =
        serve(
            move |received: &Received| match (received.method.as_str(), received.path()) {
                ("PUT", "/latest/api/token") => {
                    expect(
                        received.header("x-aws-ec2-metadata-token-ttl-seconds") == Some("21600"),
                        "the token ttl header",
                    )?;
                    if *refusing.lock().unwrap() {
                        return Ok(Reply::text(500, "internal error"));
                    }
                    let token = tokens.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(Reply::text(200, &format!("imds-session-{token}")))
                }
                (method, path) => {
                    expect(method == "GET", method)?;
                    let current = format!("imds-session-{}", tokens.load(Ordering::SeqCst));
                    if received.header("x-aws-ec2-metadata-token") != Some(current.as_str()) {
                        return Ok(Reply::text(401, "missing or stale token"));
                    }
                    match path {
                        "/latest/meta-data/iam/security-credentials/" => {
                            Ok(Reply::text(200, "skyfuse-node-role"))
                        }
                        "/latest/meta-data/iam/security-credentials/skyfuse-node-role" => {
                            let fetch = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                            let expiration = iso(*now.lock().unwrap() + lifetime);
                            Ok(Reply::json(
                                200,
                                serde_json::json!({
                                    "Code": "Success",
                                    "LastUpdated": "2026-01-01T00:00:00Z",
                                    "Type": "AWS-HMAC",
                                    "AccessKeyId": format!("ASIAIMDS{fetch}"),
                                    "SecretAccessKey": format!("imds-secret-{fetch}"),
                                    "Token": format!("imds-token-{fetch}"),
                                    "Expiration": expiration,
                                }),
                            ))
                        }
                        other => Ok(Reply::text(404, other)),
                    }
                }
            },
        )
        .await;
    FakeImds { failing, server }
}

#[tokio::test]
async fn imds_puts_for_a_session_token_first_and_renews_keys_about_to_expire() {
    let (clock, now) = test_clock();
    let imds = fake_imds(now.clone(), Duration::from_secs(6 * 3600)).await;
    let credentials = provider(
        &[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            imds.server.base_url.as_str(),
        )],
        clock,
    );
    let first = credentials.current().await.unwrap();
    assert_eq!(first.access_key_id.expose(), "ASIAIMDS1");
    assert_eq!(
        first.session_token.as_ref().map(|token| token.expose()),
        Some("imds-token-1")
    );
    let methods: Vec<String> = imds
        .server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|received| format!("{} {}", received.method, received.path()))
        .collect();
    assert_eq!(
        methods,
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/iam/security-credentials/",
            "GET /latest/meta-data/iam/security-credentials/skyfuse-node-role",
        ]
    );

    // Fresh: served from the cache.
    advance(&now, Duration::from_secs(3600));
    credentials.current().await.unwrap();
    assert_eq!(imds.server.count(), 3);

    // Four minutes left: renewed once, however many requests sign at that moment.
    advance(&now, Duration::from_secs(5 * 3600 - 4 * 60));
    let signing = (0..8).map(|_| {
        let credentials = credentials.clone();
        tokio::spawn(async move { credentials.current().await.unwrap() })
    });
    for renewed in futures::future::join_all(signing).await {
        assert_eq!(renewed.unwrap().access_key_id.expose(), "ASIAIMDS2");
    }
    assert_eq!(imds.server.count(), 6);

    // The metadata service fails: the current keys until they expire, then an
    // unavailable error naming instance metadata.
    *imds.failing.lock().unwrap() = true;
    advance(&now, Duration::from_secs(6 * 3600 - 60));
    let kept = credentials.current().await.unwrap();
    assert_eq!(kept.access_key_id.expose(), "ASIAIMDS2");
    advance(&now, Duration::from_secs(120));
    let error = credentials.current().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable);
    assert!(
        error.message.contains("ec2 instance metadata") && error.message.contains("500"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn imds_without_a_token_endpoint_is_a_clear_error_and_never_falls_back_to_v1() {
    // An IMDSv1-only endpoint: no PUT /latest/api/token.
    let server = serve(|received: &Received| {
        if received.method == "PUT" {
            return Ok(Reply::text(404, "not found"));
        }
        Ok(Reply::text(200, "skyfuse-node-role"))
    })
    .await;
    let (clock, _) = test_clock();
    let credentials = provider(
        &[
            ("SKYFUSE_AWS_IMDS", "1"),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                server.base_url.as_str(),
            ),
        ],
        clock,
    );
    let error = credentials.current().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth);
    for part in [
        "ec2 instance metadata",
        "404",
        "session token",
        "IMDSv1 is never used",
    ] {
        assert!(error.message.contains(part), "{part}: {}", error.message);
    }
    assert_eq!(server.count(), 1, "no GET without a session token");
}

#[tokio::test]
async fn the_container_endpoint_gets_the_authorization_token_read_from_its_file() {
    let server = serve(|received: &Received| {
        expect(received.path() == "/v1/credentials", received.path())?;
        expect(
            received.header("authorization") == Some("pod-identity-token-2"),
            format!("authorization: {:?}", received.header("authorization")),
        )?;
        Ok(Reply::json(
            200,
            serde_json::json!({
                "AccessKeyId": "ASIAPOD",
                "SecretAccessKey": "pod-secret",
                "Token": "pod-session",
                "Expiration": "2099-01-01T00:00:00Z",
            }),
        ))
    })
    .await;
    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("token");
    std::fs::write(&token_file, "pod-identity-token-2\n").unwrap();
    let (clock, _) = test_clock();
    let full_uri = format!("{}/v1/credentials", server.base_url);
    let credentials = provider(
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri.as_str()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.to_str().unwrap(),
            ),
        ],
        clock,
    );
    let fetched = credentials.current().await.unwrap();
    assert_eq!(fetched.access_key_id.expose(), "ASIAPOD");
    assert_eq!(
        fetched.session_token.as_ref().map(|token| token.expose()),
        Some("pod-session")
    );
}

#[tokio::test]
async fn configured_key_files_rewritten_in_place_are_signed_with_on_the_next_request() {
    use skyfuse::config::SecretLocation;
    let directory = tempfile::tempdir().unwrap();
    let (id_file, secret_file) = (
        directory.path().join("access_key_id"),
        directory.path().join("secret_access_key"),
    );
    std::fs::write(&id_file, "AKIDBEFORE\n").unwrap();
    std::fs::write(&secret_file, "secret-before\n").unwrap();
    let locations = AwsKeyLocations {
        access_key_id: Some(SecretLocation::File(id_file.clone())),
        secret_access_key: Some(SecretLocation::File(secret_file.clone())),
        session_token: None,
    };
    let signer = SigV4Signer {
        credentials: AwsCredentialsProvider::from_env(
            &locations,
            "aws_",
            Some("us-east-1"),
            &HashMap::new(),
            &reqwest::Client::new(),
        )
        .unwrap(),
        region: "us-east-1".into(),
        service: "bedrock".into(),
    };
    assert_eq!(signer.credentials.source_name(), "key files");
    let url = url::Url::parse("http://127.0.0.1:9/model/m/converse").unwrap();
    let key_id = |signed: Vec<(&'static str, String)>| {
        let authorization = signed
            .into_iter()
            .find(|(name, _)| *name == "authorization")
            .unwrap()
            .1;
        authorization
            .split("Credential=")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let at = SystemTime::now();
    let before = signer.sign("POST", &url, &[], b"{}", at).await.unwrap();
    assert_eq!(key_id(before), "AKIDBEFORE");
    // A different length, so the rewrite is seen even within the mtime's resolution.
    std::fs::write(&id_file, "AKIDAFTERROTATION\n").unwrap();
    std::fs::write(&secret_file, "secret-after-rotation\n").unwrap();
    let after = signer.sign("POST", &url, &[], b"{}", at).await.unwrap();
    assert_eq!(key_id(after), "AKIDAFTERROTATION");
}
