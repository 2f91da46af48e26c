//! The secret managers behind `azure-kv:`, `gcp-sm:` and `oci-vault:` locations, and
//! `chain:`, against in-process servers on 127.0.0.1 speaking each documented wire
//! format: Key Vault "Get Secret" with a managed identity (App Service / Container
//! Apps) or file token, Secret Manager `versions.access` with a metadata-server token,
//! OCI `GetSecretBundle` with its request signature verified. Every client is given an
//! explicit loopback endpoint: nothing here reaches a cloud or a metadata address.
//! Rotation is shown with `SKYFUSE_SECRETS_CACHE_SECONDS=0` (read again on every
//! call) and caching with the default 300 s: no test waits on a clock.

#[path = "common/loopback.rs"]
mod loopback;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use loopback::{Received, Reply, TestServer, expect, rsa_key, serve, verify_rsa_sha256};
use serde_json::json;
use skyfuse::cloud::rotating_secret::RotatingSecret;
use skyfuse::config::SecretLocation;
use skyfuse::error::ErrorKind;

fn location(text: &str) -> SecretLocation {
    SecretLocation::try_from(text.to_string()).unwrap()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A value the test can rotate while a server holds it.
fn rotatable(value: &str) -> Arc<Mutex<String>> {
    Arc::new(Mutex::new(value.to_string()))
}

async fn read(secret: &RotatingSecret) -> String {
    secret.current().await.unwrap().expose().to_string()
}

/// The App Service / Container Apps managed identity endpoint (API 2019-08-01).
async fn managed_identity(token: &'static str) -> TestServer {
    serve(move |received: &Received| {
        expect(received.path() == "/msi/token", received.path())?;
        let query = received.query().unwrap_or_default();
        expect(
            query.contains("resource=https%3A%2F%2Fvault.azure.net"),
            format!("resource: {query}"),
        )?;
        expect(
            query.contains("api-version=2019-08-01"),
            format!("api-version: {query}"),
        )?;
        expect(
            received.header("x-identity-header") == Some("identity-header-value"),
            "x-identity-header",
        )?;
        let expires_on = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        Ok(Reply::json(
            200,
            json!({"access_token": token, "expires_on": expires_on.to_string(),
                   "resource": "https://vault.azure.net", "token_type": "Bearer"}),
        ))
    })
    .await
}

/// Key Vault "Get Secret" of vault `prod`, secret `openai-key` (any version), under
/// a `/{vault}` prefix so the test sees the vault name substituted.
async fn key_vault(value: Arc<Mutex<String>>, token: &'static str) -> TestServer {
    serve(move |received: &Received| {
        expect(received.method == "GET", "method")?;
        let path = received.path();
        expect(
            path == "/prod/secrets/openai-key" || path == "/prod/secrets/openai-key/0a1b2c",
            path,
        )?;
        expect(received.query() == Some("api-version=7.4"), "api-version")?;
        let bearer = format!("Bearer {token}");
        expect(
            received.header("authorization") == Some(bearer.as_str()),
            format!("authorization {:?}", received.header("authorization")),
        )?;
        Ok(Reply::json(
            200,
            json!({"value": *value.lock().unwrap(),
                   "id": "https://prod.vault.azure.net/secrets/openai-key/0a1b2c",
                   "attributes": {"enabled": true}}),
        ))
    })
    .await
}

#[tokio::test]
async fn azure_key_vault_reads_with_a_managed_identity_token_and_follows_rotation() {
    let identity = managed_identity("kv-token").await;
    let value = rotatable("sk-azure-v1");
    let vault = key_vault(value.clone(), "kv-token").await;
    let env = env(&[
        (
            "IDENTITY_ENDPOINT",
            &format!("{}/msi/token", identity.base_url),
        ),
        ("IDENTITY_HEADER", "identity-header-value"),
        (
            "SKYFUSE_AZURE_KEYVAULT_ENDPOINT",
            &format!("{}/{{vault}}", vault.base_url),
        ),
        ("SKYFUSE_SECRETS_CACHE_SECONDS", "0"),
    ]);
    let http = reqwest::Client::new();
    let secret =
        RotatingSecret::resolve(&location("azure-kv:prod/openai-key"), &env, &http).unwrap();
    assert_eq!(read(&secret).await, "sk-azure-v1");
    *value.lock().unwrap() = "sk-azure-v2".into();
    assert_eq!(read(&secret).await, "sk-azure-v2");
    assert!(!format!("{secret:?}").contains("sk-azure"), "{secret:?}");
    // The token is cached until shortly before it expires.
    assert_eq!(identity.count(), 1);
    assert_eq!(vault.count(), 2);

    let pinned =
        RotatingSecret::resolve(&location("azure-kv:prod/openai-key/0a1b2c"), &env, &http).unwrap();
    assert_eq!(read(&pinned).await, "sk-azure-v2");
    assert_eq!(vault.last().path(), "/prod/secrets/openai-key/0a1b2c");
}

#[tokio::test]
async fn a_managed_value_is_cached_and_a_rewritten_token_file_is_sent_on_the_next_read() {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "file-token-1\n").unwrap();
    let token_location = format!("file:{}", token_file.path().display());
    let env_for = |vault: &TestServer, cache_seconds: Option<&str>| {
        let mut env = env(&[
            ("SKYFUSE_AZURE_KEYVAULT_TOKEN", &token_location),
            (
                "SKYFUSE_AZURE_KEYVAULT_ENDPOINT",
                &format!("{}/{{vault}}", vault.base_url),
            ),
        ]);
        if let Some(seconds) = cache_seconds {
            env.insert("SKYFUSE_SECRETS_CACHE_SECONDS".into(), seconds.into());
        }
        env
    };
    let http = reqwest::Client::new();
    let value = rotatable("sk-cached");

    // The default cache time (300 s): a rotation is not seen within it.
    let first_token = key_vault(value.clone(), "file-token-1").await;
    let cached = RotatingSecret::resolve(
        &location("azure-kv:prod/openai-key"),
        &env_for(&first_token, None),
        &http,
    )
    .unwrap();
    assert_eq!(read(&cached).await, "sk-cached");
    *value.lock().unwrap() = "sk-rotated".into();
    assert_eq!(read(&cached).await, "sk-cached");
    assert_eq!(first_token.count(), 1);

    // The token file rewritten (a sidecar's `az account get-access-token`): the next
    // read sends the new token.
    let second_token = key_vault(value.clone(), "file-token-second").await;
    let secret = RotatingSecret::resolve(
        &location("azure-kv:prod/openai-key"),
        &env_for(&second_token, Some("0")),
        &http,
    )
    .unwrap();
    std::fs::write(token_file.path(), "file-token-second\n").unwrap();
    assert_eq!(read(&secret).await, "sk-rotated");
}

/// Secret Manager `versions.access` for project `my-project`, secret `api-key`.
async fn secret_manager(value: Arc<Mutex<String>>) -> TestServer {
    serve(move |received: &Received| {
        expect(received.method == "GET", "method")?;
        let path = received.path();
        expect(
            path == "/v1/projects/my-project/secrets/api-key/versions/latest:access"
                || path == "/v1/projects/my-project/secrets/api-key/versions/7:access",
            path,
        )?;
        expect(
            received.header("authorization") == Some("Bearer gcp-token"),
            "authorization",
        )?;
        // Made with `echo`: a trailing newline, which no header may carry.
        let data = base64(&format!("{}\n", value.lock().unwrap()));
        Ok(Reply::json(
            200,
            json!({"name": "projects/123/secrets/api-key/versions/7",
                   "payload": {"data": data, "dataCrc32c": "0"}}),
        ))
    })
    .await
}

async fn metadata_server() -> TestServer {
    serve(|received: &Received| {
        expect(
            received.path() == "/computeMetadata/v1/instance/service-accounts/default/token",
            received.path(),
        )?;
        expect(
            received.header("metadata-flavor") == Some("Google"),
            "metadata-flavor",
        )?;
        Ok(Reply::json(
            200,
            json!({"access_token": "gcp-token", "expires_in": 3599, "token_type": "Bearer"}),
        ))
    })
    .await
}

#[tokio::test]
async fn gcp_secret_manager_reads_with_a_metadata_token_and_follows_rotation() {
    let metadata = metadata_server().await;
    let value = rotatable("sk-gcp-v1");
    let manager = secret_manager(value.clone()).await;
    let env = env(&[
        ("SKYFUSE_GCP_METADATA_URL", &metadata.base_url),
        ("SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT", &manager.base_url),
        ("SKYFUSE_SECRETS_CACHE_SECONDS", "0"),
    ]);
    let http = reqwest::Client::new();
    let secret =
        RotatingSecret::resolve(&location("gcp-sm:my-project/api-key"), &env, &http).unwrap();
    assert_eq!(read(&secret).await, "sk-gcp-v1");
    *value.lock().unwrap() = "sk-gcp-v2".into();
    assert_eq!(read(&secret).await, "sk-gcp-v2");
    assert_eq!(metadata.count(), 1);

    let pinned =
        RotatingSecret::resolve(&location("gcp-sm:my-project/api-key/7"), &env, &http).unwrap();
    assert_eq!(read(&pinned).await, "sk-gcp-v2");
    assert_eq!(
        manager.last().path(),
        "/v1/projects/my-project/secrets/api-key/versions/7:access"
    );
}

const OCID: &str = "ocid1.vaultsecret.oc1.iad.amaaaaaatest";
const OCI_KEY_ID: &str = "ocid1.tenancy.oc1..t/ocid1.user.oc1..u/20:3b:97";

#[tokio::test]
async fn oci_vault_reads_a_signed_secret_bundle_and_follows_rotation() {
    let (pem, public_key) = rsa_key();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), &pem).unwrap();
    let value = rotatable("sk-oci-v1");
    let served = value.clone();
    let vault = serve(move |received: &Received| {
        expect(received.method == "GET", "method")?;
        expect(
            received.path() == format!("/20190301/secretbundles/{OCID}"),
            received.path(),
        )?;
        verify_oci_get(received, &public_key)?;
        Ok(Reply::json(
            200,
            json!({"secretId": OCID, "versionNumber": 2, "stages": ["CURRENT"],
                   "secretBundleContent": {"contentType": "BASE64",
                                           "content": base64(&served.lock().unwrap())}}),
        ))
    })
    .await;
    let env = env(&[
        ("OCI_CLI_TENANCY", "ocid1.tenancy.oc1..t"),
        ("OCI_CLI_USER", "ocid1.user.oc1..u"),
        ("OCI_CLI_FINGERPRINT", "20:3b:97"),
        ("OCI_CLI_KEY_FILE", &key_file.path().display().to_string()),
        ("SKYFUSE_OCI_SECRETS_ENDPOINT", &vault.base_url),
        ("SKYFUSE_SECRETS_CACHE_SECONDS", "0"),
    ]);
    let http = reqwest::Client::new();
    let secret =
        RotatingSecret::resolve(&location(&format!("oci-vault:{OCID}")), &env, &http).unwrap();
    assert_eq!(read(&secret).await, "sk-oci-v1");
    *value.lock().unwrap() = "sk-oci-v2".into();
    assert_eq!(read(&secret).await, "sk-oci-v2");
}

/// What OCI checks on a GET: `date (request-target) host` signed with the user's key.
fn verify_oci_get(received: &Received, public_key: &[u8]) -> Result<(), String> {
    let authorization = received.header("authorization").ok_or("no authorization")?;
    let parameters: HashMap<&str, &str> = authorization
        .strip_prefix("Signature ")
        .ok_or("not a Signature")?
        .split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(name, value)| (name, value.trim_matches('"')))
        .collect();
    expect(parameters.get("keyId") == Some(&OCI_KEY_ID), "keyId")?;
    expect(
        parameters.get("headers") == Some(&"date (request-target) host"),
        "signed headers",
    )?;
    let names = ["date", "(request-target)", "host"];
    let signing_string = skyfuse::cloud::oci_signing::signing_string(
        &names,
        &received.method,
        &received.target,
        |name| received.header(name).map(str::to_string),
    )
    .ok_or("a signed header was not sent")?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(parameters.get("signature").ok_or("no signature")?)
        .map_err(|error| error.to_string())?;
    expect(
        verify_rsa_sha256(public_key, signing_string.as_bytes(), &signature),
        "signature does not verify",
    )
}

/// One server answering every manager's path with the same status and body.
async fn answering(status: u16, body: serde_json::Value) -> TestServer {
    serve(move |_: &Received| Ok(Reply::json(status, body.clone()))).await
}

fn gcp_env(metadata: &TestServer, manager: &TestServer) -> HashMap<String, String> {
    env(&[
        ("SKYFUSE_GCP_METADATA_URL", &metadata.base_url),
        ("SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT", &manager.base_url),
    ])
}

fn azure_env(vault: &TestServer) -> HashMap<String, String> {
    env(&[
        ("SKYFUSE_AZURE_KEYVAULT_TOKEN", "env:KV_TOKEN"),
        ("KV_TOKEN", "kv-token"),
        ("SKYFUSE_AZURE_KEYVAULT_ENDPOINT", &vault.base_url),
    ])
}

async fn failure(text: &str, env: &HashMap<String, String>) -> skyfuse::error::Error {
    let secret = RotatingSecret::resolve(&location(text), env, &reqwest::Client::new()).unwrap();
    secret.current().await.unwrap_err()
}

/// The failure is of `kind` and its message starts with `prefix` (the location first).
fn refused(error: skyfuse::error::Error, kind: ErrorKind, prefix: impl AsRef<str>) {
    assert_eq!(error.kind, kind, "{}", error.message);
    assert!(
        error.message.starts_with(prefix.as_ref()),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn not_found_and_refused_name_the_location() {
    let vault = answering(
        404,
        json!({"error": {"code": "SecretNotFound",
               "message": "A secret with (name/id) missing was not found in this key vault."}}),
    )
    .await;
    refused(
        failure("azure-kv:prod/missing", &azure_env(&vault)).await,
        ErrorKind::NotFound,
        "azure-kv:prod/missing: secret not found",
    );

    let metadata = metadata_server().await;
    let manager = answering(
        404,
        json!({"error": {"code": 404, "status": "NOT_FOUND",
               "message": "Secret [projects/1/secrets/missing] not found or has no versions."}}),
    )
    .await;
    refused(
        failure("gcp-sm:my-project/missing", &gcp_env(&metadata, &manager)).await,
        ErrorKind::NotFound,
        "gcp-sm:my-project/missing: secret not found",
    );

    let (pem, _) = rsa_key();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), &pem).unwrap();
    let oci = answering(
        404,
        json!({"code": "NotAuthorizedOrNotFound",
               "message": "Authorization failed or requested resource not found."}),
    )
    .await;
    let oci_env = env(&[
        ("OCI_CLI_TENANCY", "t"),
        ("OCI_CLI_USER", "u"),
        ("OCI_CLI_FINGERPRINT", "f"),
        ("OCI_CLI_KEY_FILE", &key_file.path().display().to_string()),
        ("SKYFUSE_OCI_SECRETS_ENDPOINT", &oci.base_url),
    ]);
    refused(
        failure(&format!("oci-vault:{OCID}"), &oci_env).await,
        ErrorKind::NotFound,
        format!("oci-vault:{OCID}: secret not found"),
    );

    let forbidden = answering(
        403,
        json!({"error": {"code": "Forbidden",
               "message": "The user, group or application does not have secrets get permission on key vault 'prod'."}}),
    )
    .await;
    refused(
        failure("azure-kv:prod/openai-key", &azure_env(&forbidden)).await,
        ErrorKind::Auth,
        "azure-kv:prod/openai-key: access refused",
    );
}

#[tokio::test]
async fn a_managed_identity_refusal_is_an_auth_error_naming_the_location() {
    let identity = answering(
        400,
        json!({"statusCode": 400, "message": "No managed identity found for specified ClientId/ResourceId/PrincipalId."}),
    )
    .await;
    let vault = key_vault(rotatable("sk-never-read"), "kv-token").await;
    let env = env(&[
        (
            "IDENTITY_ENDPOINT",
            &format!("{}/msi/token", identity.base_url),
        ),
        ("IDENTITY_HEADER", "identity-header-value"),
        ("AZURE_CLIENT_ID", "00000000-1111-2222-3333-444444444444"),
        (
            "SKYFUSE_AZURE_KEYVAULT_ENDPOINT",
            &format!("{}/{{vault}}", vault.base_url),
        ),
    ]);
    let error = failure("azure-kv:prod/openai-key", &env).await;
    assert_eq!(error.kind, ErrorKind::Auth);
    assert!(
        error.message.starts_with("azure-kv:prod/openai-key: ")
            && error.message.contains("No managed identity found"),
        "{}",
        error.message
    );
    assert!(
        identity
            .last()
            .query()
            .unwrap_or_default()
            .contains("client_id=00000000-1111-2222-3333-444444444444")
    );
    assert_eq!(vault.count(), 0);
}

#[tokio::test]
async fn gcp_secret_manager_takes_its_token_from_a_service_account_key_file() {
    let (pem, public_key) = rsa_key();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    let token_endpoint = serve(move |received: &Received| {
        expect(received.method == "POST", "method")?;
        let form: HashMap<String, String> = url::form_urlencoded::parse(&received.body)
            .into_owned()
            .collect();
        expect(
            form.get("grant_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            "grant_type",
        )?;
        let assertion = form.get("assertion").ok_or("no assertion")?;
        let (signed, signature) = assertion.rsplit_once('.').ok_or("not a JWT")?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|error| error.to_string())?;
        expect(
            verify_rsa_sha256(&public_key, signed.as_bytes(), &signature),
            "assertion signature",
        )?;
        Ok(Reply::json(
            200,
            json!({"access_token": "gcp-token", "expires_in": 3600, "token_type": "Bearer"}),
        ))
    })
    .await;
    std::fs::write(
        key_file.path(),
        json!({"type": "service_account", "client_email": "skyfuse@my-project.iam.gserviceaccount.com",
               "private_key": pem, "private_key_id": "k1",
               "token_uri": "https://oauth2.googleapis.com/token"})
        .to_string(),
    )
    .unwrap();
    let manager = secret_manager(rotatable("sk-gcp-from-key")).await;
    let env = env(&[
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            &key_file.path().display().to_string(),
        ),
        (
            "SKYFUSE_GCP_TOKEN_URL",
            &format!("{}/token", token_endpoint.base_url),
        ),
        ("SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT", &manager.base_url),
    ]);
    let secret = RotatingSecret::resolve(
        &location("gcp-sm:my-project/api-key"),
        &env,
        &reqwest::Client::new(),
    )
    .unwrap();
    assert_eq!(read(&secret).await, "sk-gcp-from-key");
    assert_eq!(token_endpoint.count(), 1);
}

#[tokio::test]
async fn a_malformed_answer_is_an_error_that_never_quotes_the_value() {
    for body in [
        json!({"value": {"nested": "sk-leak-azure"}}),
        json!({"id": "https://prod.vault.azure.net/secrets/k"}),
    ] {
        let vault = answering(200, body).await;
        let error = failure("azure-kv:prod/k", &azure_env(&vault)).await;
        assert_eq!(error.kind, ErrorKind::Unavailable);
        assert!(error.message.contains("malformed"), "{}", error.message);
        assert!(!error.message.contains("sk-leak"), "{}", error.message);
    }
    let vault = serve(|_: &Received| Ok(Reply::text(200, "sk-leak-not-json"))).await;
    let error = failure("azure-kv:prod/k", &azure_env(&vault)).await;
    assert!(error.message.contains("not JSON"), "{}", error.message);
    assert!(!error.message.contains("sk-leak"), "{}", error.message);

    let metadata = metadata_server().await;
    let manager = answering(200, json!({"payload": {"data": "sk-leak-%%%-not-base64"}})).await;
    let error = failure("gcp-sm:my-project/api-key", &gcp_env(&metadata, &manager)).await;
    assert!(error.message.contains("not base64"), "{}", error.message);
    assert!(!error.message.contains("sk-leak"), "{}", error.message);
}

#[tokio::test]
async fn a_chain_returns_the_first_member_that_resolves_and_lists_every_failure() {
    let metadata = metadata_server().await;
    let missing = answering(
        404,
        json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "Secret not found."}}),
    )
    .await;
    let mut env = gcp_env(&metadata, &missing);
    env.insert("FALLBACK_KEY".into(), "sk-from-env".into());
    let http = reqwest::Client::new();
    let chain = RotatingSecret::resolve(
        &location("chain:gcp-sm:my-project/api-key|env:UNSET|env:FALLBACK_KEY"),
        &env,
        &http,
    )
    .unwrap();
    assert_eq!(read(&chain).await, "sk-from-env");
    // The member that failed is not asked again within the cache time.
    assert_eq!(read(&chain).await, "sk-from-env");
    assert_eq!(missing.count(), 1);

    let exhausted = RotatingSecret::resolve(
        &location("chain:gcp-sm:my-project/api-key|env:UNSET"),
        &env,
        &http,
    )
    .unwrap();
    let error = exhausted.current().await.unwrap_err();
    for part in [
        "chain:gcp-sm:my-project/api-key|env:UNSET: no member resolved",
        "gcp-sm:my-project/api-key: secret not found",
        "env:UNSET: environment variable UNSET is not set",
    ] {
        assert!(error.message.contains(part), "{}", error.message);
    }

    // Nothing a chain could ever read: refused at startup, every member named.
    let error = RotatingSecret::resolve(&location("chain:env:A|env:B"), &env, &http).unwrap_err();
    assert!(
        error.message.contains("variable A") && error.message.contains("variable B"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_chain_member_rotated_in_its_manager_is_read_on_the_next_call() {
    let value = rotatable("sk-kv-v1");
    let vault = key_vault(value.clone(), "kv-token").await;
    let env = env(&[
        ("SKYFUSE_AZURE_KEYVAULT_TOKEN", "env:KV_TOKEN"),
        ("KV_TOKEN", "kv-token"),
        (
            "SKYFUSE_AZURE_KEYVAULT_ENDPOINT",
            &format!("{}/{{vault}}", vault.base_url),
        ),
        ("SKYFUSE_SECRETS_CACHE_SECONDS", "0"),
        ("FALLBACK", "sk-fallback"),
    ]);
    let chain = RotatingSecret::resolve(
        &location("chain:azure-kv:prod/openai-key|env:FALLBACK"),
        &env,
        &reqwest::Client::new(),
    )
    .unwrap();
    assert_eq!(read(&chain).await, "sk-kv-v1");
    *value.lock().unwrap() = "sk-kv-v2".into();
    assert_eq!(read(&chain).await, "sk-kv-v2");
}

#[test]
fn a_manager_with_no_credentials_configured_is_a_startup_error_not_a_metadata_call() {
    let http = reqwest::Client::new();
    for (text, needs) in [
        ("azure-kv:prod/k", "IDENTITY_ENDPOINT"),
        ("gcp-sm:p/n", "SKYFUSE_GCP_METADATA_URL"),
        ("oci-vault:ocid1.vaultsecret.x", "OCI_CLI_TENANCY"),
    ] {
        let error = RotatingSecret::resolve(&location(text), &HashMap::new(), &http).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Config);
        assert!(error.message.contains(needs), "{text}: {}", error.message);
    }
}

#[tokio::test]
async fn a_secret_deleted_or_revoked_in_its_manager_stops_being_used_but_an_outage_keeps_it() {
    let metadata = metadata_server().await;
    // What the manager answers next: 200 with the value, or an error status.
    let status = Arc::new(Mutex::new(200u16));
    let answer = status.clone();
    let manager = serve(move |_received: &Received| {
        let status = *answer.lock().unwrap();
        Ok(if status == 200 {
            Reply::json(200, json!({"payload": {"data": base64("sk-live")}}))
        } else {
            Reply::json(status, json!({"error": {"code": status, "message": "no"}}))
        })
    })
    .await;
    let env = env(&[
        ("SKYFUSE_GCP_METADATA_URL", &metadata.base_url),
        ("SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT", &manager.base_url),
        ("SKYFUSE_SECRETS_CACHE_SECONDS", "0"),
    ]);
    let http = reqwest::Client::new();
    let secret =
        RotatingSecret::resolve(&location("gcp-sm:my-project/api-key"), &env, &http).unwrap();
    assert_eq!(read(&secret).await, "sk-live");
    // The manager is failing: the last value carries on.
    *status.lock().unwrap() = 503;
    assert_eq!(read(&secret).await, "sk-live");
    for (revoked, kind) in [(403, ErrorKind::Auth), (404, ErrorKind::NotFound)] {
        *status.lock().unwrap() = 200;
        assert_eq!(read(&secret).await, "sk-live");
        // Access revoked, or the secret deleted: it is not sent again.
        *status.lock().unwrap() = revoked;
        let error = secret.current().await.unwrap_err();
        assert_eq!(error.kind, kind, "{}", error.message);
        *status.lock().unwrap() = 503;
        assert!(
            secret.current().await.is_err(),
            "after {revoked}, an outage does not bring the old value back"
        );
    }
}

#[tokio::test]
async fn callers_that_find_a_managed_secret_stale_together_share_one_fetch() {
    let metadata = metadata_server().await;
    let manager = secret_manager(rotatable("sk-shared")).await;
    let env = env(&[
        ("SKYFUSE_GCP_METADATA_URL", &metadata.base_url),
        ("SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT", &manager.base_url),
    ]);
    let http = reqwest::Client::new();
    let secret =
        RotatingSecret::resolve(&location("gcp-sm:my-project/api-key"), &env, &http).unwrap();
    let values = futures::future::join_all((0..8).map(|_| read(&secret))).await;
    assert!(values.iter().all(|value| value == "sk-shared"));
    assert_eq!(manager.count(), 1, "eight callers, one fetch");
}

#[tokio::test]
async fn a_secret_read_within_a_trace_sends_its_traceparent_to_the_manager() {
    use skyfuse::telemetry::trace::{Tracing, within};
    let metadata = metadata_server().await;
    let manager = secret_manager(rotatable("sk-traced")).await;
    let http = reqwest::Client::new();
    let secret = RotatingSecret::resolve(
        &location("gcp-sm:my-project/api-key"),
        &gcp_env(&metadata, &manager),
        &http,
    )
    .unwrap();
    // Spans go nowhere (nothing listens on port 9); only what is sent on matters.
    let tracing = Tracing::from_config(
        Some(&skyfuse::config::TracesConfig {
            endpoint: "http://127.0.0.1:9".into(),
            protocol: skyfuse::config::OtlpProtocol::HttpProtobuf,
            sample_ratio: 1.0,
            service_name: "skyfuse-test".into(),
            export_timeout_ms: 100,
            headers: Default::default(),
            ca_file: None,
        }),
        &Default::default(),
    )
    .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut incoming = http::HeaderMap::new();
    incoming.insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let call = tracing
        .http_call("POST", "/v1/chat/completions", &incoming)
        .unwrap();
    let value = within(Some(&call), secret.current()).await.unwrap();
    assert_eq!(value.expose(), "sk-traced");
    let sent = manager.last();
    let traceparent = sent.header("traceparent").unwrap_or_default();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")) && !traceparent.contains(caller_span),
        "{traceparent:?}"
    );
    // Outside a trace nothing is added.
    let untraced = RotatingSecret::resolve(
        &location("gcp-sm:my-project/api-key/7"),
        &gcp_env(&metadata, &manager),
        &http,
    )
    .unwrap();
    untraced.current().await.unwrap();
    assert_eq!(manager.last().header("traceparent"), None);
}
