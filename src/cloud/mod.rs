//! Credentials, request signing and endpoints shared by the embedding providers
//! (`embed::providers`) and the chat providers (`llm`): one place that knows how
//! each cloud authenticates a request and how its errors read.
//!
//! - [`endpoint::CloudEndpoint`]: base URL, auth, HTTP client and timeout of one
//!   `[[provider]]`, with `post_json`.
//! - [`auth::RequestAuth`]: bearer / Azure `api-key` / SigV4 / OCI signature / Google
//!   token, added to a built request.
//! - [`aws_credentials`]: AWS keys that renew themselves (web identity, container
//!   endpoint, IMDSv2; fetched by [`aws_credential_sources`]), read by every SigV4 signer.
//! - [`sigv4`], [`oci_signing`], [`gcp_token`], [`rsa_key`]: the schemes themselves.
//! - [`http`]: every cloud's error shape mapped to one `ErrorKind`, `Retry-After`.
//! - [`http_client`]: the client every cloud call is sent with, and the facade threads' pools.
//! - [`upstream`]: the leaner client model endpoints are called with (chat providers).
//! - [`rotating_secret`]: a key or token read again when its file is rewritten or its
//!   secret manager's copy is older than the cache time; [`managed_secret`] picks the
//!   manager: [`aws_secrets`], [`azure_key_vault`] (tokens from [`azure_token`]:
//!   a file, [`azure_imds`], [`azure_workload_identity`] or App Service's endpoint),
//!   [`gcp_secret_manager`], [`oci_vault`].

pub mod auth;
pub mod aws_credential_sources;
pub mod aws_credentials;
pub mod aws_secrets;
pub mod azure_imds;
pub mod azure_key_vault;
pub mod azure_token;
pub mod azure_workload_identity;
pub mod endpoint;
pub mod gcp_external_account;
pub mod gcp_secret_manager;
pub mod gcp_token;
pub mod http;
pub mod http_client;
pub mod managed_secret;
pub mod oci_instance_principal;
pub mod oci_signing;
pub mod oci_vault;
pub mod rotating_secret;
pub mod rsa_key;
pub mod sigv4;
pub mod token_cache;
pub mod upstream;

pub use auth::RequestAuth;
pub use endpoint::CloudEndpoint;
