//! A connection to one provider endpoint: where requests go (derived from the
//! region, resource or project, or the configured `base_url`), how they are
//! authorized, and one way to send them. Embedding and chat providers both hold one.

use std::collections::HashMap;
use std::time::Duration;

use crate::cloud::auth::RequestAuth;
use crate::cloud::http::{EMBEDDINGS_BODY_LIMIT, HttpReply, read_reply, transport_error};
use crate::config::{ProviderConfig, ProviderKind, ProviderSettings};
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct CloudEndpoint {
    /// The provider's config id.
    pub id: String,
    pub cloud: String,
    pub region: String,
    /// Without a trailing `/`.
    pub base_url: String,
    pub auth: RequestAuth,
    pub http: reqwest::Client,
    /// Per request, from `timeout_ms`.
    pub timeout: Duration,
}

impl CloudEndpoint {
    pub fn from_config(
        config: &ProviderConfig,
        env: &HashMap<String, String>,
        http: reqwest::Client,
    ) -> Result<Self> {
        let region = resolve_region(config, env)?;
        let base_url = base_url(config, &region)?;
        let auth = RequestAuth::from_config(config, &region, env, &http)?;
        Ok(Self {
            id: config.id.clone(),
            cloud: config.cloud().to_string(),
            region,
            base_url,
            auth,
            http,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// `base_url` joined with an absolute path (which may carry a query).
    pub fn url(&self, path: &str) -> Result<url::Url> {
        url::Url::parse(&format!("{}{path}", self.base_url))
            .map_err(|error| Error::config(format!("bad request url for {path:?}: {error}")))
    }

    /// POSTs a JSON body, authorized, and reads the whole answer (a success body up
    /// to [`EMBEDDINGS_BODY_LIMIT`], an error body's start). Only a request
    /// that got no answer is an error here; the caller maps statuses.
    pub async fn post_json(
        &self,
        service: &str,
        url: url::Url,
        body: &serde_json::Value,
    ) -> Result<HttpReply> {
        let bytes = serde_json::to_vec(body)
            .map_err(|error| Error::internal(format!("cannot encode request: {error}")))?;
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(bytes)
            .timeout(self.timeout)
            .build()
            .map_err(|error| Error::internal(format!("cannot build request: {error}")))?;
        crate::telemetry::trace::inject_traceparent(request.headers_mut());
        self.auth.authorize(&mut request).await?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|error| transport_error(service, &error))?;
        read_reply(service, response, EMBEDDINGS_BODY_LIMIT).await
    }
}

/// The configured region; Bedrock falls back to `AWS_REGION` / `AWS_DEFAULT_REGION`.
fn resolve_region(config: &ProviderConfig, env: &HashMap<String, String>) -> Result<String> {
    if let Some(region) = &config.region {
        return Ok(region.clone());
    }
    match config.kind() {
        ProviderKind::OpenaiCompat => Ok("local".into()),
        ProviderKind::Bedrock => ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|name| env.get(*name).filter(|value| !value.is_empty()))
            .cloned()
            .ok_or_else(|| Error::config("region is not set, nor AWS_REGION")),
        ProviderKind::AzureOpenai | ProviderKind::Vertex | ProviderKind::Oci => {
            Err(Error::config("region is not set"))
        }
    }
}

/// The configured `base_url`, else the kind's public endpoint for the region.
pub fn base_url(config: &ProviderConfig, region: &str) -> Result<String> {
    if let Some(base_url) = &config.base_url {
        return Ok(base_url.trim_end_matches('/').to_string());
    }
    // Names go into a host: refuse anything that could change which host.
    let host_part = |value: &str, key: &str| -> Result<String> {
        if !value.is_empty()
            && value
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || character == '-')
        {
            Ok(value.to_string())
        } else {
            Err(Error::config(format!(
                "{key} {value:?} must be letters, digits and '-'"
            )))
        }
    };
    Ok(match config.kind() {
        ProviderKind::OpenaiCompat => return Err(Error::config("base_url is not set")),
        ProviderKind::AzureOpenai => {
            let resource = match &config.settings {
                ProviderSettings::AzureOpenai(azure) => azure.resource.as_deref(),
                _ => None,
            }
            .ok_or_else(|| Error::config("resource (or base_url) is not set"))?;
            format!(
                "https://{}.openai.azure.com",
                host_part(resource, "resource")?
            )
        }
        ProviderKind::Bedrock => format!(
            "https://bedrock-runtime.{}.amazonaws.com",
            host_part(region, "region")?
        ),
        ProviderKind::Vertex if region == "global" => "https://aiplatform.googleapis.com".into(),
        ProviderKind::Vertex => format!(
            "https://{}-aiplatform.googleapis.com",
            host_part(region, "region")?
        ),
        ProviderKind::Oci => format!(
            "https://inference.generativeai.{}.oci.oraclecloud.com",
            host_part(region, "region")?
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn provider(toml: &str) -> ProviderConfig {
        Config::parse(toml, Path::new("/"))
            .unwrap()
            .providers
            .remove(0)
    }

    const OCI_KEYS: &str = "compartment_id = \"c\"\ntenancy_id = \"t\"\nuser_id = \"u\"\nkey_fingerprint = \"f\"\nprivate_key = \"env:K\"";

    #[test]
    fn endpoints_are_derived_per_kind() {
        let cases: [(&str, &str); 6] = [
            (
                "kind = \"azure_openai\"\nresource = \"contoso-weu\"\nregion = \"westeurope\"",
                "https://contoso-weu.openai.azure.com",
            ),
            (
                "kind = \"bedrock\"\nregion = \"eu-central-1\"",
                "https://bedrock-runtime.eu-central-1.amazonaws.com",
            ),
            (
                "kind = \"vertex\"\nproject = \"p\"\nregion = \"europe-west4\"",
                "https://europe-west4-aiplatform.googleapis.com",
            ),
            (
                "kind = \"vertex\"\nproject = \"p\"\nregion = \"global\"",
                "https://aiplatform.googleapis.com",
            ),
            (
                &format!("kind = \"oci\"\nregion = \"eu-frankfurt-1\"\n{OCI_KEYS}"),
                "https://inference.generativeai.eu-frankfurt-1.oci.oraclecloud.com",
            ),
            (
                &format!(
                    "kind = \"oci\"\nregion = \"eu-frankfurt-1\"\nbase_url = \"http://127.0.0.1:9/\"\n{OCI_KEYS}"
                ),
                "http://127.0.0.1:9",
            ),
        ];
        for (keys, expected) in cases {
            let config = provider(&format!("[[provider]]\nid = \"p\"\n{keys}\n"));
            assert_eq!(
                base_url(&config, config.region()).unwrap(),
                expected,
                "{keys}"
            );
        }
    }

    #[test]
    fn a_region_cannot_redirect_the_host() {
        let config =
            provider("[[provider]]\nid = \"p\"\nkind = \"bedrock\"\nregion = \"evil.com/x\"\n");
        assert!(base_url(&config, config.region()).is_err());
    }

    #[test]
    fn bedrock_region_from_the_standard_variable() {
        let config = provider("[[provider]]\nid = \"p\"\nkind = \"bedrock\"\n");
        let env = HashMap::from([("AWS_REGION".to_string(), "ap-south-1".to_string())]);
        assert_eq!(resolve_region(&config, &env).unwrap(), "ap-south-1");
        let error = resolve_region(&config, &HashMap::new()).unwrap_err();
        assert!(error.message.contains("AWS_REGION"), "{}", error.message);
    }
}
