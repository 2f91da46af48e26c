//! `[[provider]]`: a connection to one model endpoint (an OpenAI-compatible server,
//! or one cloud's model API in one region with its credentials), used by embedding
//! spaces and by answers alike. Pure types and checks; `cloud::CloudEndpoint` and the
//! provider factories turn a valid one into a client.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{AwsKeyLocations, SecretLocation};

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

/// A `[[provider]]`: the keys every kind takes, and the kind's own in `settings`.
/// `kind` selects a struct with exactly its keys, so a key of another kind is
/// refused by serde, naming the key, the provider and its kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct ProviderConfig {
    pub id: String,
    /// The chat model. Needed only when `answer.provider` names this provider;
    /// embedding spaces name their own model.
    pub model: Option<String>,
    pub timeout_ms: u64,
    /// Most texts per embedding call, below the kind's default limit.
    pub max_batch: Option<usize>,
    /// List price per million input tokens, for the cost in each answer.
    pub input_per_1m_usd: f64,
    pub output_per_1m_usd: f64,
    /// Where requests go. Required for `openai_compat` (without `/v1`); for the
    /// clouds it is derived (from `resource` or `region`) and set only to override
    /// it: a private endpoint, a proxy, a local test server.
    pub base_url: Option<String>,
    /// The region texts and prompts are sent to: required for azure_openai, vertex
    /// and oci (`bedrock` may take `AWS_REGION` instead), `local` by default otherwise.
    pub region: Option<String>,
    pub settings: ProviderSettings,
}

/// The kind-specific keys of a provider.
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    OpenaiCompat(OpenAiCompatConfig),
    AzureOpenai(AzureOpenAiConfig),
    Bedrock(BedrockConfig),
    Vertex(VertexConfig),
    Oci(OciConfig),
}

#[derive(Debug, Clone)]
pub struct OpenAiCompatConfig {
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<SecretLocation>,
    /// Where the server runs (default `local`): the clouds' is implied by `kind`.
    pub cloud: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AzureOpenAiConfig {
    /// The resource name: `https://{resource}.openai.azure.com`.
    pub resource: Option<String>,
    /// The data-plane version of the classic deployment URLs (`2024-10-21`); without
    /// it the v1 path is used.
    pub api_version: Option<String>,
    /// model -> deployment name, where they differ (a model not listed is taken to
    /// be deployed under its own name).
    pub deployments: BTreeMap<String, String>,
    /// The `api-key` header; or `access_token`, an Entra ID bearer token.
    pub api_key: Option<SecretLocation>,
    pub access_token: Option<SecretLocation>,
    /// Take Entra tokens from the VM's instance metadata service at this URL
    /// (`"default"`: `http://169.254.169.254`), instead of a key or a token.
    pub imds_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BedrockConfig {
    /// Without them, the standard `AWS_*` variables.
    pub aws: AwsKeyLocations,
}

#[derive(Debug, Clone)]
pub struct VertexConfig {
    pub project: String,
    /// `v1` (default) or `v1beta1`.
    pub api_version: Option<String>,
    /// A service-account key file (JSON) whose token is fetched and cached.
    pub service_account_key: Option<SecretLocation>,
    /// A static OAuth bearer token.
    pub access_token: Option<SecretLocation>,
    /// Where tokens are fetched; default the key file's `token_uri`.
    pub token_url: Option<String>,
    /// Take tokens from the GCE metadata server at this URL (`"default"`:
    /// `http://metadata.google.internal`), instead of a key or a static token.
    pub metadata_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OciConfig {
    pub compartment_id: String,
    pub tenancy_id: String,
    /// The API key's user, fingerprint (`aa:bb:...`) and signing key (PEM); all three,
    /// or none with `metadata_url` (instance principals).
    pub user_id: Option<String>,
    pub key_fingerprint: Option<String>,
    pub private_key: Option<SecretLocation>,
    /// Sign as the compute instance (instance principals), its certificates read from
    /// the instance metadata service at this URL (`"default"`: `http://169.254.169.254`).
    pub metadata_url: Option<String>,
    /// The federation endpoint; default `https://auth.{region}.oraclecloud.com/v1/x509`.
    pub federation_url: Option<String>,
    /// model -> dedicated AI cluster endpoint OCID; other models are served on demand.
    pub dedicated_endpoints: BTreeMap<String, String>,
}

fn default_provider_timeout_ms() -> u64 {
    60_000
}

impl ProviderConfig {
    pub fn kind(&self) -> ProviderKind {
        match &self.settings {
            ProviderSettings::OpenaiCompat(_) => ProviderKind::OpenaiCompat,
            ProviderSettings::AzureOpenai(_) => ProviderKind::AzureOpenai,
            ProviderSettings::Bedrock(_) => ProviderKind::Bedrock,
            ProviderSettings::Vertex(_) => ProviderKind::Vertex,
            ProviderSettings::Oci(_) => ProviderKind::Oci,
        }
    }

    /// The cloud requests go to: implied by the kind, else `cloud`, else `local`.
    pub fn cloud(&self) -> &str {
        let configured = match &self.settings {
            ProviderSettings::OpenaiCompat(settings) => settings.cloud.as_deref(),
            _ => None,
        };
        self.kind().cloud().or(configured).unwrap_or("local")
    }

    /// The configured region, `local` when none is set.
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or("local")
    }

    /// The chat model; [`provider_problems`] with `for_chat` checked it is set.
    pub fn chat_model(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }
}

/// Declares one kind's table: the keys every provider takes, then the kind's own
/// (`base_url` and `region` among them, required or not by kind),
/// `deny_unknown_fields` over the whole (serde's `flatten` would defeat it).
macro_rules! provider_table {
    ($name:ident { $($(#[$meta:meta])* $field:ident: $type:ty,)* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            id: String,
            model: Option<String>,
            #[serde(default = "default_provider_timeout_ms")]
            timeout_ms: u64,
            max_batch: Option<usize>,
            #[serde(default)]
            input_per_1m_usd: f64,
            #[serde(default)]
            output_per_1m_usd: f64,
            $($(#[$meta])* $field: $type,)*
        }

        impl $name {
            fn common(
                self,
                base_url: Option<String>,
                region: Option<String>,
                settings: ProviderSettings,
            ) -> ProviderConfig {
                ProviderConfig {
                    id: self.id,
                    model: self.model,
                    timeout_ms: self.timeout_ms,
                    max_batch: self.max_batch,
                    input_per_1m_usd: self.input_per_1m_usd,
                    output_per_1m_usd: self.output_per_1m_usd,
                    base_url,
                    region,
                    settings,
                }
            }
        }
    };
}

provider_table!(OpenAiCompatTable {
    base_url: String,
    region: Option<String>,
    api_key: Option<SecretLocation>,
    cloud: Option<String>,
});

provider_table!(AzureOpenAiTable {
    base_url: Option<String>,
    region: String,
    resource: Option<String>,
    api_version: Option<String>,
    #[serde(default)]
    deployments: BTreeMap<String, String>,
    api_key: Option<SecretLocation>,
    access_token: Option<SecretLocation>,
    imds_url: Option<String>,
});

provider_table!(BedrockTable {
    base_url: Option<String>,
    region: Option<String>,
    aws_access_key_id: Option<SecretLocation>,
    aws_secret_access_key: Option<SecretLocation>,
    aws_session_token: Option<SecretLocation>,
});

provider_table!(VertexTable {
    base_url: Option<String>,
    region: String,
    project: String,
    api_version: Option<String>,
    service_account_key: Option<SecretLocation>,
    access_token: Option<SecretLocation>,
    token_url: Option<String>,
    metadata_url: Option<String>,
});

provider_table!(OciTable {
    base_url: Option<String>,
    region: String,
    compartment_id: String,
    tenancy_id: String,
    user_id: Option<String>,
    key_fingerprint: Option<String>,
    private_key: Option<SecretLocation>,
    metadata_url: Option<String>,
    federation_url: Option<String>,
    #[serde(default)]
    dedicated_endpoints: BTreeMap<String, String>,
});

/// The tables by `kind`, as serde reads them.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ProviderTable {
    OpenaiCompat(OpenAiCompatTable),
    AzureOpenai(AzureOpenAiTable),
    Bedrock(BedrockTable),
    Vertex(VertexTable),
    Oci(OciTable),
}

impl TryFrom<toml::Table> for ProviderConfig {
    type Error = String;

    /// Serde's message names the key; this adds which provider and kind it is in.
    fn try_from(table: toml::Table) -> Result<Self, String> {
        let parsed: ProviderTable = super::parse_tagged(table, "provider")?;
        Ok(match parsed {
            ProviderTable::OpenaiCompat(mut table) => {
                let settings = ProviderSettings::OpenaiCompat(OpenAiCompatConfig {
                    api_key: table.api_key.take(),
                    cloud: table.cloud.take(),
                });
                let (base_url, region) = (Some(table.base_url.clone()), table.region.take());
                table.common(base_url, region, settings)
            }
            ProviderTable::AzureOpenai(mut table) => {
                let settings = ProviderSettings::AzureOpenai(AzureOpenAiConfig {
                    resource: table.resource.take(),
                    api_version: table.api_version.take(),
                    deployments: std::mem::take(&mut table.deployments),
                    api_key: table.api_key.take(),
                    access_token: table.access_token.take(),
                    imds_url: table.imds_url.take(),
                });
                let (base_url, region) = (table.base_url.take(), Some(table.region.clone()));
                table.common(base_url, region, settings)
            }
            ProviderTable::Bedrock(mut table) => {
                let settings = ProviderSettings::Bedrock(BedrockConfig {
                    aws: AwsKeyLocations {
                        access_key_id: table.aws_access_key_id.take(),
                        secret_access_key: table.aws_secret_access_key.take(),
                        session_token: table.aws_session_token.take(),
                    },
                });
                let (base_url, region) = (table.base_url.take(), table.region.take());
                table.common(base_url, region, settings)
            }
            ProviderTable::Vertex(mut table) => {
                let settings = ProviderSettings::Vertex(VertexConfig {
                    project: table.project.clone(),
                    api_version: table.api_version.take(),
                    service_account_key: table.service_account_key.take(),
                    access_token: table.access_token.take(),
                    token_url: table.token_url.take(),
                    metadata_url: table.metadata_url.take(),
                });
                let (base_url, region) = (table.base_url.take(), Some(table.region.clone()));
                table.common(base_url, region, settings)
            }
            ProviderTable::Oci(mut table) => {
                let settings = ProviderSettings::Oci(OciConfig {
                    compartment_id: table.compartment_id.clone(),
                    tenancy_id: table.tenancy_id.clone(),
                    user_id: table.user_id.take(),
                    key_fingerprint: table.key_fingerprint.take(),
                    private_key: table.private_key.take(),
                    metadata_url: table.metadata_url.take(),
                    federation_url: table.federation_url.take(),
                    dedicated_endpoints: std::mem::take(&mut table.dedicated_endpoints),
                });
                let (base_url, region) = (table.base_url.take(), Some(table.region.clone()));
                table.common(base_url, region, settings)
            }
        })
    }
}

/// An optional endpoint key that must be an http(s) URL; where `default_allowed`,
/// `"default"` stands for the cloud's well-known metadata address.
fn endpoint_problem(
    problems: &mut Vec<String>,
    name: &str,
    key: &str,
    value: &Option<String>,
    default_allowed: bool,
) {
    if let Some(url) = value
        && !url.starts_with("http://")
        && !url.starts_with("https://")
        && !(default_allowed && url == "default")
    {
        problems.push(format!("{name}: {key} {url:?} is not an http(s) URL"));
    }
}

/// Pure checks of the values serde cannot judge; each message names the provider
/// and key.
pub fn provider_problems(providers: &[ProviderConfig], problems: &mut Vec<String>) {
    super::unique_ids(
        "provider",
        providers.iter().map(|provider| provider.id.as_str()),
        problems,
    );
    for provider in providers {
        let name = format!("provider {:?}", provider.id);
        let kind = provider.kind();
        if let Some(base_url) = &provider.base_url {
            match url::Url::parse(base_url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => problems.push(format!(
                    "{name}: base_url {base_url:?} is not an http(s) URL"
                )),
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
        if let ProviderSettings::Vertex(vertex) = &provider.settings {
            endpoint_problem(problems, &name, "token_url", &vertex.token_url, false);
            endpoint_problem(problems, &name, "metadata_url", &vertex.metadata_url, true);
        }
        let mut require = |set: bool, what: &str| {
            if !set {
                problems.push(format!("{name}: kind {} needs {what}", kind.as_str()));
            }
        };
        match &provider.settings {
            ProviderSettings::OpenaiCompat(_) => {}
            ProviderSettings::AzureOpenai(azure) => {
                require(
                    provider.base_url.is_some() || azure.resource.is_some(),
                    "resource (or base_url)",
                );
                // Neither: the managed identity of the environment (checked at build).
                let credentials = [
                    azure.api_key.is_some(),
                    azure.access_token.is_some(),
                    azure.imds_url.is_some(),
                ];
                require(
                    credentials.iter().filter(|set| **set).count() <= 1,
                    "at most one of api_key, access_token and imds_url (none: the workload or managed identity of the environment)",
                );
                endpoint_problem(problems, &name, "imds_url", &azure.imds_url, true);
            }
            ProviderSettings::Bedrock(bedrock) => require(
                bedrock.aws.pair_is_whole(),
                "aws_access_key_id and aws_secret_access_key together (or neither, for the AWS_* variables)",
            ),
            ProviderSettings::Vertex(vertex) => {
                let credentials = [
                    vertex.service_account_key.is_some(),
                    vertex.access_token.is_some(),
                    vertex.metadata_url.is_some(),
                ];
                require(
                    credentials.iter().filter(|set| **set).count() == 1,
                    "exactly one of service_account_key, access_token and metadata_url",
                );
            }
            ProviderSettings::Oci(oci) => {
                let key_parts = [
                    oci.user_id.is_some(),
                    oci.key_fingerprint.is_some(),
                    oci.private_key.is_some(),
                ];
                let api_key = key_parts.iter().all(|set| *set);
                let no_key = key_parts.iter().all(|set| !*set);
                require(
                    (api_key && oci.metadata_url.is_none())
                        || (no_key && oci.metadata_url.is_some()),
                    "user_id, key_fingerprint and private_key (an API key), or metadata_url alone (instance principals)",
                );
                endpoint_problem(problems, &name, "metadata_url", &oci.metadata_url, true);
                endpoint_problem(
                    problems,
                    &name,
                    "federation_url",
                    &oci.federation_url,
                    false,
                );
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

    fn parse_error(toml: &str) -> String {
        Config::parse(toml, Path::new("/base")).unwrap_err().message
    }

    #[test]
    fn missing_and_foreign_keys_are_named_with_the_provider_and_kind() {
        let message = parse_error(
            r#"
            [[provider]]
            id = "vertex"
            kind = "vertex"
            region = "us-central1"
            "#,
        );
        assert!(
            message.contains("provider \"vertex\" (kind vertex): missing field `project`"),
            "{message}"
        );
        for foreign in [
            "api_key = \"env:KEY\"",
            "compartment_id = \"c\"",
            "cloud = \"aws\"",
        ] {
            let message = parse_error(&format!(
                "[[provider]]\nid = \"vertex\"\nkind = \"vertex\"\nregion = \"us-central1\"\nproject = \"p\"\n{foreign}\n"
            ));
            let key = foreign.split(' ').next().unwrap();
            assert!(
                message.contains(&format!(
                    "provider \"vertex\" (kind vertex): unknown field `{key}`"
                )),
                "{message}"
            );
        }
        let message = problems_of(
            r#"
            [[provider]]
            id = "vertex"
            kind = "vertex"
            region = "us-central1"
            project = "p"
            "#,
        );
        assert!(
            message.contains("exactly one of service_account_key, access_token and metadata_url"),
            "{message}"
        );
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
            "#,
        );
        assert!(message.contains("provider \"azure\": kind azure_openai needs at most one of api_key, access_token and imds_url"), "{message}");
        let message = problems_of(
            r#"
            [[provider]]
            id = "azure"
            kind = "azure_openai"
            resource = "r"
            region = "eastus"
            imds_url = "169.254.169.254"
            "#,
        );
        assert!(
            message.contains("imds_url \"169.254.169.254\" is not an http(s) URL"),
            "{message}"
        );
        let message = parse_error(
            r#"
            [[provider]]
            id = "oci"
            kind = "oci"
            region = "us-chicago-1"
            compartment_id = "c"
            "#,
        );
        assert!(
            message.contains("provider \"oci\" (kind oci): missing field `tenancy_id`"),
            "{message}"
        );
        let message = problems_of(
            r#"
            [[provider]]
            id = "oci"
            kind = "oci"
            region = "us-chicago-1"
            compartment_id = "c"
            tenancy_id = "t"
            user_id = "u"
            metadata_url = "default"
            "#,
        );
        assert!(
            message.contains("or metadata_url alone (instance principals)"),
            "{message}"
        );
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
