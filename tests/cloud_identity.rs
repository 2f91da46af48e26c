//! Workload identities that renew their tokens (`cloud::azure_token`,
//! `cloud::gcp_token`, `cloud::oci_instance_principal`): Azure workload identity and
//! VM instance metadata, GCP workload identity federation with and without service
//! account impersonation, OCI instance principals. Each against a loopback server on
//! 127.0.0.1 speaking the documented wire format and given to the client as an
//! explicit endpoint: nothing here reaches a cloud or a metadata address. Time is a
//! test clock moved by the test, never waited on.

#[path = "common/loopback.rs"]
mod loopback;
#[path = "common/test_clock.rs"]
mod test_clock;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use loopback::{Received, Reply, expect, serve};
use serde_json::json;
use skyfuse::cloud::azure_token::AzureTokenSource;
use skyfuse::error::ErrorKind;
use test_clock::{advance, env, test_clock};

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

const TENANCY: &str = "ocid1.tenancy.oc1..aaaatenancy";

/// An instance's identity as OCI's metadata service holds it: a leaf certificate
/// naming the tenancy (`OU=opc-tenant:...`), its RSA key (PEM) and public key
/// (PKCS#1 DER), and an intermediate certificate.
struct InstanceIdentity {
    leaf_pem: String,
    leaf_der: Vec<u8>,
    key_pem: String,
    public_key: Vec<u8>,
    intermediate_pem: String,
}

fn instance_identity() -> InstanceIdentity {
    let (key_pem, public_key) = loopback::rsa_key();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "ocid1.instance.oc1.iad.aaaainstance",
    );
    params.distinguished_name.push(
        rcgen::DnType::OrganizationalUnitName,
        format!("opc-tenant:{TENANCY}"),
    );
    let leaf = params.self_signed(&key).unwrap();
    let mut intermediate_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    intermediate_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "PKISVC Identity Intermediate");
    let intermediate = intermediate_params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    InstanceIdentity {
        leaf_pem: leaf.pem(),
        leaf_der: leaf.der().to_vec(),
        key_pem,
        public_key,
        intermediate_pem: intermediate.pem(),
    }
}

/// OCI instance metadata v2: the identity's three PEM files, only with the
/// `Authorization: Bearer Oracle` header.
async fn oci_metadata(identity: &InstanceIdentity) -> loopback::TestServer {
    let files: HashMap<&'static str, String> = [
        ("/opc/v2/identity/cert.pem", identity.leaf_pem.clone()),
        ("/opc/v2/identity/key.pem", identity.key_pem.clone()),
        (
            "/opc/v2/identity/intermediate.pem",
            identity.intermediate_pem.clone(),
        ),
    ]
    .into_iter()
    .collect();
    serve(move |received: &Received| {
        if received.header("authorization") != Some("Bearer Oracle") {
            return Ok(Reply::json(
                401,
                json!({"code": "NotAuthenticated", "message": "Bearer Oracle required"}),
            ));
        }
        let file = files
            .get(received.path())
            .ok_or(received.path().to_string())?;
        Ok(Reply::text(200, file))
    })
    .await
}

/// The `Signature` header's parameters.
fn signature_parameters(received: &Received) -> Result<HashMap<String, String>, String> {
    let authorization = received.header("authorization").ok_or("no authorization")?;
    Ok(authorization
        .strip_prefix("Signature ")
        .ok_or("not a Signature")?
        .split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(name, value)| (name.to_string(), value.trim_matches('"').to_string()))
        .collect())
}

/// Checks an OCI signature over the headers it names, with `public_key` (PKCS#1).
fn verify_oci_signature(
    received: &Received,
    parameters: &HashMap<String, String>,
    public_key: &[u8],
) -> Result<(), String> {
    let names: Vec<&str> = parameters
        .get("headers")
        .ok_or("no headers")?
        .split(' ')
        .collect();
    let signing_string = skyfuse::cloud::oci_signing::signing_string(
        &names,
        &received.method,
        &received.target,
        |name| received.header(name).map(str::to_string),
    )
    .ok_or("a signed header was not sent")?;
    let signature = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        parameters.get("signature").ok_or("no signature")?,
    )
    .map_err(|error| error.to_string())?;
    expect(
        loopback::verify_rsa_sha256(public_key, signing_string.as_bytes(), &signature),
        "signature does not verify",
    )
}

/// The public key (PKCS#1) inside an X.509 SubjectPublicKeyInfo, base64.
fn pkcs1_of_spki(spki_base64: &str) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let der =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, spki_base64).ok()?;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).ok()?;
    Some(spki.subject_public_key.data.to_vec())
}

/// A JWT whose payload carries `exp` and which session it is.
fn security_token(number: usize, expires: SystemTime) -> String {
    let encode = |value: serde_json::Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            value.to_string(),
        )
    };
    let exp = expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.c2lnbmF0dXJl",
        encode(json!({"alg": "RS256", "typ": "JWT"})),
        encode(
            json!({"exp": exp, "sub": "ocid1.instance.oc1.iad.aaaainstance", "session": number})
        )
    )
}

/// The federation endpoint `/v1/x509`: checks the leaf-key signature under
/// `{tenancy}/fed-x509/{fingerprint}` and the body, keeps each session's public key
/// by token, and answers a security token of an hour.
struct Federation {
    server: loopback::TestServer,
    sessions: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

async fn oci_federation(identity: &InstanceIdentity) -> Federation {
    let sessions: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let issued = sessions.clone();
    let leaf_public_key = identity.public_key.clone();
    let leaf_base64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &identity.leaf_der,
    );
    let key_id = format!(
        "{TENANCY}/fed-x509/{}",
        skyfuse::cloud::oci_instance_principal::sha1_fingerprint(&identity.leaf_der)
    );
    let server = serve(move |received: &Received| {
        expect(received.method == "POST", "method")?;
        expect(received.path() == "/v1/x509", received.path())?;
        let parameters = signature_parameters(received)?;
        expect(
            parameters.get("keyId") == Some(&key_id),
            format!("keyId {:?}", parameters.get("keyId")),
        )?;
        expect(
            parameters.get("headers").map(String::as_str)
                == Some("date (request-target) content-length content-type x-content-sha256"),
            "signed headers",
        )?;
        verify_oci_signature(received, &parameters, &leaf_public_key)?;
        let body = received.json();
        expect(body["certificate"] == json!(leaf_base64), "certificate")?;
        expect(
            body["intermediateCertificates"]
                .as_array()
                .is_some_and(|certificates| certificates.len() == 1),
            "intermediateCertificates",
        )?;
        let session_key = pkcs1_of_spki(body["publicKey"].as_str().unwrap_or_default())
            .ok_or("publicKey is not an X.509 public key")?;
        let mut sessions = issued.lock().unwrap();
        let token = security_token(
            sessions.len() + 1,
            SystemTime::now() + Duration::from_secs(3600),
        );
        sessions.insert(token.clone(), session_key);
        Ok(Reply::json(200, json!({"token": token})))
    })
    .await;
    Federation { server, sessions }
}

/// OCI Vault `GetSecretBundle` that accepts only `ST$` signatures by a session key
/// the federation endpoint issued a token for.
async fn vault_for_sessions(
    sessions: Arc<Mutex<HashMap<String, Vec<u8>>>>,
) -> loopback::TestServer {
    serve(move |received: &Received| {
        let parameters = signature_parameters(received)?;
        let token = parameters
            .get("keyId")
            .and_then(|key_id| key_id.strip_prefix("ST$"))
            .ok_or("keyId is not a security token")?;
        let session_key = sessions
            .lock()
            .unwrap()
            .get(token)
            .cloned()
            .ok_or("unknown security token")?;
        expect(
            parameters.get("headers").map(String::as_str) == Some("date (request-target) host"),
            "signed headers",
        )?;
        verify_oci_signature(received, &parameters, &session_key)?;
        Ok(Reply::json(
            200,
            json!({"secretBundleContent": {"contentType": "BASE64", "content": "c2stZnJvbS1vY2k="}}),
        ))
    })
    .await
}

#[tokio::test]
async fn oci_instance_principal_federates_signs_with_its_session_key_and_renews_before_expiry() {
    let identity = instance_identity();
    let metadata = oci_metadata(&identity).await;
    let federation = oci_federation(&identity).await;
    let vault = vault_for_sessions(federation.sessions.clone()).await;
    let (clock, now) = test_clock();
    let principal = skyfuse::cloud::oci_instance_principal::InstancePrincipal::new(
        &metadata.base_url,
        Some(&format!("{}/v1/x509", federation.server.base_url)),
        None,
        Some(TENANCY),
        &reqwest::Client::new(),
    )
    .unwrap()
    .with_clock(clock);
    let url = url::Url::parse(&format!(
        "{}/20190301/secretbundles/ocid1.vaultsecret.oc1..s",
        vault.base_url
    ))
    .unwrap();
    let get = |signer: skyfuse::cloud::oci_signing::OciSigner| {
        let url = url.clone();
        async move {
            let mut request = reqwest::Client::new().get(url.clone());
            for (name, value) in signer
                .sign("GET", &url, None, None, SystemTime::now())
                .unwrap()
            {
                request = request.header(name, value);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get(principal.signer().await.unwrap()).await, 200);
    advance(&now, Duration::from_secs(3000));
    assert_eq!(get(principal.signer().await.unwrap()).await, 200);
    assert_eq!(federation.server.count(), 1);
    assert_eq!(metadata.count(), 3);
    // Inside the margin: certificates read again, a new session key and token.
    advance(&now, Duration::from_secs(400));
    assert_eq!(get(principal.signer().await.unwrap()).await, 200);
    assert_eq!(federation.server.count(), 2);
    assert_eq!(metadata.count(), 6);
    assert_eq!(federation.sessions.lock().unwrap().len(), 2);
    assert!(!format!("{principal:?}").contains("ST$"), "{principal:?}");
}

#[tokio::test]
async fn oci_vault_reads_a_secret_as_the_instance_and_a_foreign_tenancy_is_refused() {
    let identity = instance_identity();
    let metadata = oci_metadata(&identity).await;
    let federation = oci_federation(&identity).await;
    let vault = vault_for_sessions(federation.sessions.clone()).await;
    let federation_url = format!("{}/v1/x509", federation.server.base_url);
    let mut env = env(&[
        ("SKYFUSE_OCI_METADATA_URL", &metadata.base_url),
        ("SKYFUSE_OCI_FEDERATION_URL", &federation_url),
        ("SKYFUSE_OCI_SECRETS_ENDPOINT", &vault.base_url),
    ]);
    let location =
        skyfuse::config::SecretLocation::try_from("oci-vault:ocid1.vaultsecret.oc1..s".to_string())
            .unwrap();
    let http = reqwest::Client::new();
    let secret =
        skyfuse::cloud::rotating_secret::RotatingSecret::resolve(&location, &env, &http).unwrap();
    assert_eq!(secret.current().await.unwrap().expose(), "sk-from-oci");

    env.insert("OCI_CLI_TENANCY".into(), "ocid1.tenancy.oc1..other".into());
    let foreign =
        skyfuse::cloud::rotating_secret::RotatingSecret::resolve(&location, &env, &http).unwrap();
    let error = foreign.current().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth);
    assert!(
        error.message.contains("not the configured"),
        "{}",
        error.message
    );
}
