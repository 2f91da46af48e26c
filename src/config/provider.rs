//! `[[provider]]`: a connection to one model endpoint (an OpenAI-compatible server,
//! or one cloud's model API in one region with its credentials), used by embedding
//! spaces and by answers alike. Pure types and checks; `cloud::CloudEndpoint` and the
//! provider factories turn a valid one into a client.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::SecretLocation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any server speaking OpenAI's `/v1/...` API: llama.cpp, vLLM, Ollama.
    OpenaiCompat,
    /// Azure OpenAI (classic deployment URLs with `api_version`, else the v1 path).
    AzureOpenai,
    /// AWS Bedrock Runtime, SigV4-signed.
    Bedrock,
    /// GCP Vertex AI, OAuth bearer token.
    Vertex,
    /// OCI Generative AI inference, OCI-signed.
    Oci,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenaiCompat => "openai_compat",
            Self::AzureOpenai => "azure_openai",
            Self::Bedrock => "bedrock",
            Self::Vertex => "vertex",
            Self::Oci => "oci",
        }
    }

    /// The cloud the kind implies; an OpenAI-compatible server can run anywhere.
    pub fn cloud(self) -> Option<&'static str> {
        match self {
            Self::OpenaiCompat => None,
            Self::AzureOpenai => Some("azure"),
            Self::Bedrock => Some("aws"),
            Self::Vertex => Some("gcp"),
            Self::Oci => Some("oci"),
        }
    }
}

/// One model endpoint. Which keys apply depends on `kind`; a key of another kind
/// is refused by [`provider_problems`], naming it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub id: String,
    pub kind: ProviderKind,
    /// Where requests go. Required for `openai_compat` (without `/v1`); for the
    /// clouds it is derived (from `resource` or `region`) and set only to override
    /// it: a private endpoint, a proxy, a local test server.
    pub base_url: Option<String>,
    /// The chat model. Needed only when `answer.provider` names this provider;
    /// embedding spaces name their own model.
    pub model: Option<String>,
    /// `openai_compat`: sent as `Authorization: Bearer`; `azure_openai`: the
    /// `api-key` header.
    pub api_key: Option<SecretLocation>,
    #[serde(default = "default_provider_timeout_ms")]
    pub timeout_ms: u64,
    /// `openai_compat` only (default `local`): the clouds' is implied by `kind`.
    pub cloud: Option<String>,
    /// The region texts and prompts are sent to: required for the clouds
    /// (`bedrock` may take `AWS_REGION` instead), `local` by default otherwise.
    pub region: Option<String>,
    /// Most texts per embedding call, below the kind's default limit.
    pub max_batch: Option<usize>,
    /// List price per million input tokens, for the cost in each answer.
    #[serde(default)]
    pub input_per_1m_usd: f64,
    #[serde(default)]
    pub output_per_1m_usd: f64,

    // azure_openai
    /// The resource name: `https://{resource}.openai.azure.com`.
    pub resource: Option<String>,
    /// `azure_openai`: the data-plane version of the classic deployment URLs
    /// (`2024-10-21`); without it the v1 path is used. `vertex`: `v1` (default) or
    /// `v1beta1`.
    pub api_version: Option<String>,
    /// `azure_openai`: model -> deployment name, where they differ (a model not
    /// listed is taken to be deployed under its own name).
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// An OAuth bearer token: `azure_openai` (Entra ID, instead of `api_key`) or
    /// `vertex` (instead of `service_account_key`).
    pub access_token: Option<SecretLocation>,

    // bedrock: without these, the standard AWS_* variables
    pub aws_access_key_id: Option<SecretLocation>,
    pub aws_secret_access_key: Option<SecretLocation>,
    pub aws_session_token: Option<SecretLocation>,

    // vertex
    pub project: Option<String>,
    /// A service-account key file (JSON) whose token is fetched and cached.
    pub service_account_key: Option<SecretLocation>,
    /// Where tokens are fetched; default the key file's `token_uri`.
    pub token_url: Option<String>,
    /// Take tokens from the GCE metadata server at this URL (`"default"`:
    /// `http://metadata.google.internal`), instead of a key or a static token.
    pub metadata_url: Option<String>,

    // oci
    pub compartment_id: Option<String>,
    pub tenancy_id: Option<String>,
    pub user_id: Option<String>,
    /// The API key's fingerprint, `aa:bb:...`.
    pub key_fingerprint: Option<String>,
    /// The API signing key (PEM).
    pub private_key: Option<SecretLocation>,
    /// model -> dedicated AI cluster endpoint OCID; other models are served on demand.
    #[serde(default)]
    pub dedicated_endpoints: BTreeMap<String, String>,
}

fn default_provider_timeout_ms() -> u64 {
    60_000
}

impl ProviderConfig {
    /// The cloud requests go to: implied by the kind, else `cloud`, else `local`.
    pub fn cloud(&self) -> &str {
        self.kind
            .cloud()
            .or(self.cloud.as_deref())
            .unwrap_or("local")
    }

    /// The configured region, `local` when none is set.
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or("local")
    }

    /// The chat model; [`provider_problems`] with `for_chat` checked it is set.
    pub fn chat_model(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }

    /// Names of the optional keys that are set, for the per-kind checks.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut note = |set: bool, key: &'static str| {
            if set {
                keys.push(key);
            }
        };
        note(self.base_url.is_some(), "base_url");
        note(self.api_key.is_some(), "api_key");
        note(self.cloud.is_some(), "cloud");
        note(self.region.is_some(), "region");
        note(self.resource.is_some(), "resource");
        note(self.api_version.is_some(), "api_version");
        note(!self.deployments.is_empty(), "deployments");
        note(self.access_token.is_some(), "access_token");
        note(self.aws_access_key_id.is_some(), "aws_access_key_id");
        note(
            self.aws_secret_access_key.is_some(),
            "aws_secret_access_key",
        );
        note(self.aws_session_token.is_some(), "aws_session_token");
        note(self.project.is_some(), "project");
        note(self.service_account_key.is_some(), "service_account_key");
        note(self.token_url.is_some(), "token_url");
        note(self.metadata_url.is_some(), "metadata_url");
        note(self.compartment_id.is_some(), "compartment_id");
        note(self.tenancy_id.is_some(), "tenancy_id");
        note(self.user_id.is_some(), "user_id");
        note(self.key_fingerprint.is_some(), "key_fingerprint");
        note(self.private_key.is_some(), "private_key");
        note(!self.dedicated_endpoints.is_empty(), "dedicated_endpoints");
        keys
    }
}

/// The optional keys each kind takes (the common ones, `id`, `kind`, `model`,
/// `timeout_ms`, `max_batch` and prices, are always allowed).
fn allowed_keys(kind: ProviderKind) -> &'static [&'static str] {
    match kind {
        ProviderKind::OpenaiCompat => &["base_url", "api_key", "cloud", "region"],
        ProviderKind::AzureOpenai => &[
            "base_url",
            "region",
            "resource",
            "api_version",
            "deployments",
            "api_key",
            "access_token",
        ],
        ProviderKind::Bedrock => &[
            "base_url",
            "region",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        ],
        ProviderKind::Vertex => &[
            "base_url",
            "region",
            "project",
            "api_version",
            "service_account_key",
            "access_token",
            "token_url",
            "metadata_url",
        ],
        ProviderKind::Oci => &[
            "base_url",
            "region",
            "compartment_id",
            "tenancy_id",
            "user_id",
            "key_fingerprint",
            "private_key",
            "dedicated_endpoints",
        ],
    }
}

/// Pure checks of every `[[provider]]`; each message names the provider and key.
pub fn provider_problems(providers: &[ProviderConfig], problems: &mut Vec<String>) {
    super::unique_ids(
        "provider",
        providers.iter().map(|provider| provider.id.as_str()),
        problems,
    );
    for provider in providers {
        let name = format!("provider {:?}", provider.id);
        let kind = provider.kind;
        let allowed = allowed_keys(kind);
        for key in provider.set_keys() {
            if !allowed.contains(&key) {
                let why = if key == "cloud" {
                    format!(
                        "the cloud of kind {} is {:?}",
                        kind.as_str(),
                        provider.cloud()
                    )
                } else {
                    format!("it is not a key of kind {}", kind.as_str())
                };
                problems.push(format!("{name}: {key} is not allowed here: {why}"));
            }
        }
        if let Some(base_url) = &provider.base_url {
            match url::Url::parse(base_url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => problems.push(format!(
                    "{name}: base_url {base_url:?} is not an http(s) URL"
                )),
            }
        }
        for (key, value) in [
            ("token_url", &provider.token_url),
            ("metadata_url", &provider.metadata_url),
        ] {
            if let Some(url) = value
                && !url.starts_with("http://")
                && !url.starts_with("https://")
                && !(key == "metadata_url" && url == "default")
            {
                problems.push(format!("{name}: {key} {url:?} is not an http(s) URL"));
            }
        }
        if provider
            .model
            .as_deref()
            .is_some_and(|model| model.trim().is_empty())
        {
            problems.push(format!("{name}: model must not be empty"));
        }
        if !(provider.input_per_1m_usd >= 0.0 && provider.output_per_1m_usd >= 0.0) {
            problems.push(format!("{name}: prices must be numbers >= 0"));
        }
        if provider.timeout_ms == 0 {
            problems.push(format!("{name}: timeout_ms must be at least 1"));
        }
        if provider.max_batch == Some(0) {
            problems.push(format!("{name}: max_batch must be at least 1"));
        }
        let mut require = |set: bool, what: &str| {
            if !set {
                problems.push(format!("{name}: kind {} needs {what}", kind.as_str()));
            }
        };
        match kind {
            ProviderKind::OpenaiCompat => require(provider.base_url.is_some(), "base_url"),
            ProviderKind::AzureOpenai => {
                require(
                    provider.base_url.is_some() || provider.resource.is_some(),
                    "resource (or base_url)",
                );
                require(provider.region.is_some(), "region (where the resource is)");
                require(
                    provider.api_key.is_some() != provider.access_token.is_some(),
                    "exactly one of api_key and access_token",
                );
            }
            ProviderKind::Bedrock => require(
                provider.aws_access_key_id.is_some() == provider.aws_secret_access_key.is_some(),
                "aws_access_key_id and aws_secret_access_key together (or neither, for the AWS_* variables)",
            ),
            ProviderKind::Vertex => {
                require(provider.project.is_some(), "project");
                require(provider.region.is_some(), "region (the Vertex location)");
                let credentials = [
                    provider.service_account_key.is_some(),
                    provider.access_token.is_some(),
                    provider.metadata_url.is_some(),
                ];
                require(
                    credentials.iter().filter(|set| **set).count() == 1,
                    "exactly one of service_account_key, access_token and metadata_url",
                );
            }
            ProviderKind::Oci => {
                require(provider.region.is_some(), "region");
                require(provider.compartment_id.is_some(), "compartment_id");
                require(provider.tenancy_id.is_some(), "tenancy_id");
                require(provider.user_id.is_some(), "user_id");
                require(provider.key_fingerprint.is_some(), "key_fingerprint");
                require(provider.private_key.is_some(), "private_key");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn problems_of(toml: &str) -> String {
        let config = Config::parse(toml, Path::new("/base")).unwrap();
        config
            .validate()
            .err()
            .map(|error| error.message)
            .unwrap_or_default()
    }

    #[test]
    fn each_cloud_kind_parses_and_validates() {
        let toml = r#"
            [[provider]]
            id = "local-llama"
            kind = "openai_compat"
            base_url = "http://127.0.0.1:8080"
            [[provider]]
            id = "azure-weu"
            kind = "azure_openai"
            resource = "contoso-weu"
            region = "westeurope"
            api_version = "2024-10-21"
            api_key = "env:AZURE_OPENAI_API_KEY"
            deployments = { "text-embedding-3-large" = "emb3-large" }
            [[provider]]
            id = "bedrock-use1"
            kind = "bedrock"
            region = "us-east-1"
            [[provider]]
            id = "vertex-euw4"
            kind = "vertex"
            project = "acme"
            region = "europe-west4"
            service_account_key = "file:/etc/skyfuse/sa.json"
            [[provider]]
            id = "oci-fra"
            kind = "oci"
            region = "eu-frankfurt-1"
            compartment_id = "ocid1.compartment.oc1..c"
            tenancy_id = "ocid1.tenancy.oc1..t"
            user_id = "ocid1.user.oc1..u"
            key_fingerprint = "20:3b:97"
            private_key = "file:/etc/skyfuse/oci.pem"
        "#;
        assert_eq!(problems_of(toml), "");
        let config = Config::parse(toml, Path::new("/")).unwrap();
        let clouds: Vec<&str> = config.providers.iter().map(|p| p.cloud()).collect();
        assert_eq!(clouds, ["local", "azure", "aws", "gcp", "oci"]);
    }

    #[test]
    fn missing_and_foreign_keys_are_named() {
        let message = problems_of(
            r#"
            [[provider]]
            id = "vertex"
            kind = "vertex"
            region = "us-central1"
            api_key = "env:KEY"
            compartment_id = "ocid1.compartment.oc1..c"
            cloud = "aws"
            "#,
        );
        assert!(message.contains("kind vertex needs project"), "{message}");
        assert!(
            message.contains("exactly one of service_account_key, access_token and metadata_url"),
            "{message}"
        );
        assert!(message.contains("api_key is not allowed here"), "{message}");
        assert!(
            message.contains("compartment_id is not allowed here"),
            "{message}"
        );
        assert!(message.contains("cloud is not allowed here"), "{message}");
    }

    #[test]
    fn azure_needs_one_credential_and_oci_its_key_material() {
        let message = problems_of(
            r#"
            [[provider]]
            id = "azure"
            kind = "azure_openai"
            resource = "r"
            region = "eastus"
            api_key = "env:A"
            access_token = "env:B"
            [[provider]]
            id = "oci"
            kind = "oci"
            region = "us-chicago-1"
            compartment_id = "c"
            "#,
        );
        assert!(message.contains("provider \"azure\": kind azure_openai needs exactly one of api_key and access_token"), "{message}");
        for key in ["tenancy_id", "user_id", "key_fingerprint", "private_key"] {
            assert!(
                message.contains(&format!("provider \"oci\": kind oci needs {key}")),
                "{message}"
            );
        }
    }

    #[test]
    fn bedrock_key_pair_must_come_together() {
        let message = problems_of(
            r#"
            [[provider]]
            id = "aws"
            kind = "bedrock"
            aws_access_key_id = "env:ID"
            "#,
        );
        assert!(
            message.contains("aws_secret_access_key together"),
            "{message}"
        );
    }

    #[test]
    fn unknown_provider_key_is_refused_with_its_name() {
        let error = Config::parse(
            "[[provider]]\nid = \"x\"\nkind = \"bedrock\"\nsecret_key = \"env:K\"\n",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(error.message.contains("secret_key"), "{}", error.message);
    }
}
