//! Workload identities that renew their tokens (`cloud::azure_token`,
//! `cloud::gcp_token`, `cloud::oci_instance_principal`): Azure workload identity and
//! VM instance metadata, GCP workload identity federation with and without service
//! account impersonation, OCI instance principals. Each against a loopback server on
//! 127.0.0.1 speaking the documented wire format and given to the client as an
//! explicit endpoint: nothing here reaches a cloud or a metadata address. Time is a
//! test clock moved by the test, never waited on.

#[path = "common/loopback.rs"]
mod loopback;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use loopback::{Received, Reply, expect, serve};
use serde_json::json;
use skyfuse::cloud::aws_credentials::Clock;
use skyfuse::cloud::azure_token::AzureTokenSource;
use skyfuse::error::ErrorKind;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// A clock the test moves; starts at the real time so answers look current.
fn test_clock() -> (Clock, Arc<Mutex<SystemTime>>) {
    let now = Arc::new(Mutex::new(SystemTime::now()));
    let read = now.clone();
    (Arc::new(move || *read.lock().unwrap()), now)
}

fn advance(clock: &Arc<Mutex<SystemTime>>, by: Duration) {
    *clock.lock().unwrap() += by;
}

fn form(received: &Received) -> HashMap<String, String> {
    url::form_urlencoded::parse(&received.body)
        .into_owned()
        .collect()
}

fn query(received: &Received) -> HashMap<String, String> {
    url::form_urlencoded::parse(received.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The Entra v2.0 token endpoint of tenant `tenant-1`: client credentials with a
/// federated client assertion; each access token names the assertion it was given.
async fn entra_token_endpoint() -> loopback::TestServer {
    serve(|received: &Received| {
        expect(received.method == "POST", "method")?;
        expect(
            received.path() == "/tenant-1/oauth2/v2.0/token",
            received.path(),
        )?;
        expect(
            received.header("content-type") == Some("application/x-www-form-urlencoded"),
            "content-type",
        )?;
        let form = form(received);
        let field = |name: &str| form.get(name).map(String::as_str);
        expect(
            field("grant_type") == Some("client_credentials"),
            "grant_type",
        )?;
        expect(field("client_id") == Some("client-1"), "client_id")?;
        expect(
            field("scope") == Some("https://vault.azure.net/.default"),
            format!("scope {:?}", field("scope")),
        )?;
        expect(
            field("client_assertion_type")
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            "client_assertion_type",
        )?;
        let assertion = field("client_assertion").unwrap_or_default();
        if assertion == "revoked" {
            return Ok(Reply::json(
                400,
                json!({"error": "invalid_client",
                       "error_description": "AADSTS700024: Client assertion is not within its valid time range."}),
            ));
        }
        Ok(Reply::json(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                   "access_token": format!("entra-for-{assertion}")}),
        ))
    })
    .await
}

fn workload_env(
    server: &loopback::TestServer,
    token_file: &std::path::Path,
) -> Vec<(String, String)> {
    vec![
        (
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            token_file.display().to_string(),
        ),
        ("AZURE_CLIENT_ID".into(), "client-1".into()),
        ("AZURE_TENANT_ID".into(), "tenant-1".into()),
        (
            "AZURE_AUTHORITY_HOST".into(),
            format!("{}/", server.base_url),
        ),
    ]
}

#[tokio::test]
async fn azure_workload_identity_sends_the_federated_token_and_the_rotated_file_at_the_next_refresh()
 {
    let server = entra_token_endpoint().await;
    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("azure-identity-token");
    std::fs::write(&token_file, "federated-v1\n").unwrap();
    let env: HashMap<String, String> = workload_env(&server, &token_file).into_iter().collect();
    let (clock, now) = test_clock();
    let source = AzureTokenSource::from_env(
        None,
        None,
        "https://vault.azure.net",
        &env,
        &reqwest::Client::new(),
    )
    .unwrap()
    .unwrap()
    .with_clock(clock);
    assert_eq!(source.source_name(), "azure workload identity");
    let token = source.access_token().await.unwrap();
    assert_eq!(token.expose(), "entra-for-federated-v1");

    // The kubelet rotates the projected token; the cached access token is still
    // fresh, so nothing is exchanged yet.
    std::fs::write(&token_file, "federated-v2\n").unwrap();
    advance(&now, Duration::from_secs(3000));
    assert_eq!(
        source.access_token().await.unwrap().expose(),
        "entra-for-federated-v1"
    );
    assert_eq!(server.count(), 1);

    // Inside the renewal margin: the new file is read and exchanged.
    advance(&now, Duration::from_secs(400));
    assert_eq!(
        source.access_token().await.unwrap().expose(),
        "entra-for-federated-v2"
    );
    assert_eq!(server.count(), 2);
    assert!(!format!("{source:?}").contains("entra-for"), "{source:?}");
}

#[tokio::test]
async fn azure_workload_identity_refused_is_an_auth_error_and_half_configured_is_a_config_error() {
    let server = entra_token_endpoint().await;
    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("token");
    std::fs::write(&token_file, "revoked").unwrap();
    let env: HashMap<String, String> = workload_env(&server, &token_file).into_iter().collect();
    let http = reqwest::Client::new();
    let source = AzureTokenSource::from_env(None, None, "https://vault.azure.net", &env, &http)
        .unwrap()
        .unwrap();
    let error = source.access_token().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth);
    assert!(
        error.message.contains("invalid_client") && error.message.contains("AADSTS700024"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("revoked"), "{}", error.message);

    let mut half = env.clone();
    half.remove("AZURE_TENANT_ID");
    let error = AzureTokenSource::from_env(None, None, "https://vault.azure.net", &half, &http)
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Config);
    assert!(
        error.message.contains("AZURE_TENANT_ID"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn azure_key_vault_reads_a_secret_with_a_workload_identity_token() {
    let entra = entra_token_endpoint().await;
    let vault = serve(|received: &Received| {
        expect(
            received.path() == "/prod/secrets/openai-key",
            received.path(),
        )?;
        expect(
            received.header("authorization") == Some("Bearer entra-for-federated-v1"),
            format!("authorization {:?}", received.header("authorization")),
        )?;
        Ok(Reply::json(200, json!({"value": "sk-from-vault"})))
    })
    .await;
    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("token");
    std::fs::write(&token_file, "federated-v1").unwrap();
    let mut env: HashMap<String, String> = workload_env(&entra, &token_file).into_iter().collect();
    env.insert(
        "SKYFUSE_AZURE_KEYVAULT_ENDPOINT".into(),
        format!("{}/{{vault}}", vault.base_url),
    );
    let secret = skyfuse::cloud::rotating_secret::RotatingSecret::resolve(
        &skyfuse::config::SecretLocation::try_from("azure-kv:prod/openai-key".to_string()).unwrap(),
        &env,
        &reqwest::Client::new(),
    )
    .unwrap();
    assert_eq!(secret.current().await.unwrap().expose(), "sk-from-vault");
}

/// Azure instance metadata: the token of the VM's identity for the asked resource.
async fn azure_imds(lifetime_seconds: u64) -> loopback::TestServer {
    let served = Arc::new(AtomicUsize::new(0));
    serve(move |received: &Received| {
        expect(received.method == "GET", "method")?;
        expect(
            received.path() == "/metadata/identity/oauth2/token",
            received.path(),
        )?;
        if received.header("metadata") != Some("true") {
            return Ok(Reply::json(
                400,
                json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
            ));
        }
        let query = query(received);
        expect(
            query.get("api-version").map(String::as_str) == Some("2018-02-01"),
            "api-version",
        )?;
        expect(
            query.get("resource").map(String::as_str)
                == Some("https://cognitiveservices.azure.com"),
            "resource",
        )?;
        if query.get("client_id").map(String::as_str) == Some("unknown") {
            return Ok(Reply::json(
                400,
                json!({"error": "invalid_request", "error_description": "Identity not found"}),
            ));
        }
        let number = served.fetch_add(1, Ordering::SeqCst) + 1;
        // IMDS sends its numbers as strings.
        Ok(Reply::json(
            200,
            json!({"access_token": format!("imds-{number}"), "expires_in": lifetime_seconds.to_string(),
                   "expires_on": "0", "resource": "https://cognitiveservices.azure.com",
                   "token_type": "Bearer"}),
        ))
    })
    .await
}

#[tokio::test]
async fn azure_imds_is_used_only_when_configured_and_its_token_is_renewed_before_expiry() {
    let server = azure_imds(3600).await;
    let http = reqwest::Client::new();
    // Not configured: nothing to use, and nothing is called.
    assert!(
        AzureTokenSource::from_env(
            None,
            None,
            "https://cognitiveservices.azure.com",
            &env(&[]),
            &http
        )
        .unwrap()
        .is_none()
    );
    let (clock, now) = test_clock();
    let source = AzureTokenSource::from_env(
        None,
        Some(&server.base_url),
        "https://cognitiveservices.azure.com",
        &env(&[]),
        &http,
    )
    .unwrap()
    .unwrap()
    .with_clock(clock);
    assert_eq!(source.access_token().await.unwrap().expose(), "imds-1");
    advance(&now, Duration::from_secs(3000));
    assert_eq!(source.access_token().await.unwrap().expose(), "imds-1");
    advance(&now, Duration::from_secs(301));
    assert_eq!(source.access_token().await.unwrap().expose(), "imds-2");

    let unknown = AzureTokenSource::from_env(
        None,
        Some(&server.base_url),
        "https://cognitiveservices.azure.com",
        &env(&[("AZURE_CLIENT_ID", "unknown")]),
        &http,
    )
    .unwrap()
    .unwrap();
    let error = unknown.access_token().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth);
    assert!(
        error.message.contains("Identity not found"),
        "{}",
        error.message
    );
}

/// `2026-12-03T02:07:02Z`, as IAM Credentials writes `expireTime`.
fn iso(time: SystemTime) -> String {
    let text = skyfuse::cloud::sigv4::amz_date(time);
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

const POOL_AUDIENCE: &str =
    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/aks";
const JWT_SUBJECT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Google STS `v1/token`: RFC 8693 token exchange of the pool's subject token.
async fn google_sts() -> loopback::TestServer {
    serve(|received: &Received| {
        expect(received.method == "POST", "method")?;
        expect(received.path() == "/v1/token", received.path())?;
        let form = form(received);
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        expect(
            field("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange",
            "grant_type",
        )?;
        expect(field("audience") == POOL_AUDIENCE, "audience")?;
        expect(
            field("requested_token_type") == "urn:ietf:params:oauth:token-type:access_token",
            "requested_token_type",
        )?;
        expect(field("subject_token_type") == JWT_SUBJECT_TYPE, "subject_token_type")?;
        expect(
            field("scope") == "https://www.googleapis.com/auth/cloud-platform",
            "scope",
        )?;
        let subject = field("subject_token");
        if subject == "expired" {
            return Ok(Reply::json(
                400,
                json!({"error": "invalid_grant", "error_description": "The access token has expired."}),
            ));
        }
        Ok(Reply::json(
            200,
            json!({"access_token": format!("federated-for-{subject}"),
                   "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                   "token_type": "Bearer", "expires_in": 3600}),
        ))
    })
    .await
}

/// IAM Credentials `generateAccessToken` for one service account.
async fn iam_credentials() -> loopback::TestServer {
    serve(|received: &Received| {
        expect(received.method == "POST", "method")?;
        expect(
            received.path()
                == "/v1/projects/-/serviceAccounts/reader@proj.iam.gserviceaccount.com:generateAccessToken",
            received.path(),
        )?;
        let bearer = received
            .header("authorization")
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        expect(bearer.starts_with("federated-for-"), "authorization")?;
        let body = received.json();
        expect(
            body["scope"] == json!(["https://www.googleapis.com/auth/cloud-platform"]),
            format!("scope {body}"),
        )?;
        expect(body["lifetime"] == "1800s", format!("lifetime {body}"))?;
        Ok(Reply::json(
            200,
            json!({"accessToken": format!("sa-via-{bearer}"),
                   "expireTime": iso(SystemTime::now() + Duration::from_secs(1800))}),
        ))
    })
    .await
}

fn external_account_json(
    sts: &loopback::TestServer,
    subject_file: &std::path::Path,
    impersonation: Option<&loopback::TestServer>,
) -> String {
    let mut file = json!({
        "type": "external_account",
        "audience": POOL_AUDIENCE,
        "subject_token_type": JWT_SUBJECT_TYPE,
        "token_url": format!("{}/v1/token", sts.base_url),
        "credential_source": {"file": subject_file.display().to_string(),
                              "format": {"type": "text"}},
    });
    if let Some(iam) = impersonation {
        file["service_account_impersonation_url"] = json!(format!(
            "{}/v1/projects/-/serviceAccounts/reader@proj.iam.gserviceaccount.com:generateAccessToken",
            iam.base_url
        ));
        file["service_account_impersonation"] = json!({"token_lifetime_seconds": 1800});
    }
    file.to_string()
}

#[tokio::test]
async fn gcp_workload_identity_federation_exchanges_the_rotated_subject_token_at_the_next_refresh()
{
    let sts = google_sts().await;
    let directory = tempfile::tempdir().unwrap();
    let subject_file = directory.path().join("oidc-token");
    std::fs::write(&subject_file, "oidc-v1\n").unwrap();
    let (clock, now) = test_clock();
    let source = skyfuse::cloud::gcp_token::GcpTokenSource::from_credentials_json(
        &external_account_json(&sts, &subject_file, None),
        None,
        reqwest::Client::new(),
        Duration::from_secs(10),
    )
    .unwrap()
    .with_clock(clock);
    assert_eq!(
        source.access_token().await.unwrap().expose(),
        "federated-for-oidc-v1"
    );
    std::fs::write(&subject_file, "oidc-v2\n").unwrap();
    advance(&now, Duration::from_secs(3000));
    assert_eq!(
        source.access_token().await.unwrap().expose(),
        "federated-for-oidc-v1"
    );
    assert_eq!(sts.count(), 1);
    advance(&now, Duration::from_secs(301));
    assert_eq!(
        source.access_token().await.unwrap().expose(),
        "federated-for-oidc-v2"
    );

    // A refused subject token is an auth error naming STS's reason, not the token.
    std::fs::write(&subject_file, "expired").unwrap();
    let refused = skyfuse::cloud::gcp_token::GcpTokenSource::from_credentials_json(
        &external_account_json(&sts, &subject_file, None),
        None,
        reqwest::Client::new(),
        Duration::from_secs(10),
    )
    .unwrap();
    let error = refused.access_token().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth);
    assert!(error.message.contains("invalid_grant"), "{}", error.message);
}

#[tokio::test]
async fn gcp_secret_manager_reads_with_an_impersonated_service_account_from_an_external_account() {
    let sts = google_sts().await;
    let iam = iam_credentials().await;
    let manager = serve(|received: &Received| {
        expect(
            received.path() == "/v1/projects/proj/secrets/api-key/versions/latest:access",
            received.path(),
        )?;
        expect(
            received.header("authorization") == Some("Bearer sa-via-federated-for-oidc-from-aks"),
            format!("authorization {:?}", received.header("authorization")),
        )?;
        Ok(Reply::json(
            200,
            json!({"name": "projects/proj/secrets/api-key/versions/3",
                   "payload": {"data": "c2stZnJvbS1nY3A="}}),
        ))
    })
    .await;
    let directory = tempfile::tempdir().unwrap();
    let subject_file = directory.path().join("oidc-token");
    std::fs::write(&subject_file, "oidc-from-aks").unwrap();
    let credentials = directory.path().join("credentials.json");
    std::fs::write(
        &credentials,
        external_account_json(&sts, &subject_file, Some(&iam)),
    )
    .unwrap();
    let env = env(&[
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            &credentials.display().to_string(),
        ),
        ("SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT", &manager.base_url),
    ]);
    let secret = skyfuse::cloud::rotating_secret::RotatingSecret::resolve(
        &skyfuse::config::SecretLocation::try_from("gcp-sm:proj/api-key".to_string()).unwrap(),
        &env,
        &reqwest::Client::new(),
    )
    .unwrap();
    assert_eq!(secret.current().await.unwrap().expose(), "sk-from-gcp");
    assert_eq!((sts.count(), iam.count()), (1, 1));
}

#[test]
fn an_aws_sourced_or_malformed_external_account_is_a_config_error() {
    let aws = json!({"type": "external_account", "audience": POOL_AUDIENCE,
        "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
        "token_url": "https://sts.googleapis.com/v1/token",
        "credential_source": {"environment_id": "aws1", "region_url": "http://169.254.169.254/x"}});
    let error = skyfuse::cloud::gcp_token::GcpTokenSource::from_credentials_json(
        &aws.to_string(),
        None,
        reqwest::Client::new(),
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Config);
    assert!(
        error.message.contains("environment_id"),
        "{}",
        error.message
    );
    let no_source = json!({"type": "external_account", "audience": POOL_AUDIENCE,
        "subject_token_type": JWT_SUBJECT_TYPE, "token_url": "https://sts.googleapis.com/v1/token",
        "credential_source": {}});
    let error = skyfuse::cloud::gcp_token::GcpTokenSource::from_credentials_json(
        &no_source.to_string(),
        None,
        reqwest::Client::new(),
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(error.message.contains("file and url"), "{}", error.message);
}
