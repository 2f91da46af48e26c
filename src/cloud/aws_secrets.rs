//! AWS Secrets Manager's `GetSecretValue`, for `aws-sm:NAME` secret locations: the JSON
//! protocol (`X-Amz-Target: secretsmanager.GetSecretValue`) signed with SigV4.
//!
//! Configured the way the AWS SDKs are, from the environment skyfuse was given:
//! `AWS_REGION` (or `AWS_DEFAULT_REGION`), credentials from the chain of
//! [`crate::cloud::aws_credentials`] (keys, web identity, container, IMDS), and the endpoint
//! from `AWS_ENDPOINT_URL_SECRETS_MANAGER` or `AWS_ENDPOINT_URL` (a VPC endpoint, or
//! moto in tests), else `https://secretsmanager.<region>.amazonaws.com`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::cloud::aws_credentials::AwsCredentialsProvider;
use crate::cloud::http::{
    HttpReply, TOKEN_BODY_LIMIT, malformed, read_error_body, read_limited, secret_store_error,
    transport_error,
};
use crate::cloud::sigv4::SigV4Signer;
use crate::config::{AwsKeyLocations, Secret};
use crate::error::{Error, Result};

const SERVICE: &str = "aws secrets manager";
/// One `GetSecretValue` call may take this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A client for one region's Secrets Manager.
#[derive(Debug)]
pub struct AwsSecretsManager {
    endpoint: url::Url,
    signer: SigV4Signer,
    http: reqwest::Client,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SecretValue {
    secret_string: Option<String>,
}

impl AwsSecretsManager {
    /// The client the environment describes; a missing region or key is a config error.
    pub fn from_env(env: &HashMap<String, String>, http: &reqwest::Client) -> Result<Self> {
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|name| env.get(*name).filter(|value| !value.is_empty()))
            .ok_or_else(|| {
                Error::config("aws-sm: secrets need AWS_REGION (or AWS_DEFAULT_REGION)")
            })?
            .clone();
        let endpoint = ["AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|name| env.get(*name).filter(|value| !value.is_empty()))
            .cloned()
            .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"));
        let endpoint = url::Url::parse(&endpoint)
            .map_err(|error| Error::config(format!("aws-sm: endpoint {endpoint:?}: {error}")))?;
        let credentials = AwsCredentialsProvider::from_env(
            &AwsKeyLocations::default(),
            "",
            Some(&region),
            env,
            http,
        )
        .map_err(|error| error.context("aws-sm"))?;
        Ok(Self {
            endpoint,
            signer: SigV4Signer {
                credentials,
                region,
                service: "secretsmanager".into(),
            },
            http: http.clone(),
        })
    }

    /// The current `SecretString` of `secret_id` (a name or an ARN).
    pub async fn get(&self, secret_id: &str) -> Result<Secret> {
        let body = serde_json::to_vec(&serde_json::json!({ "SecretId": secret_id }))
            .map_err(|error| Error::internal(format!("cannot encode request: {error}")))?;
        let content_type = "application/x-amz-json-1.1";
        let target = "secretsmanager.GetSecretValue";
        let headers = [
            ("content-type".to_owned(), content_type.to_owned()),
            ("x-amz-target".to_owned(), target.to_owned()),
        ];
        let signed = self
            .signer
            .sign("POST", &self.endpoint, &headers, &body, SystemTime::now())
            .await
            .map_err(|error| error.context(format!("aws-sm:{secret_id}")))?;
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .header("content-type", content_type)
            .header("x-amz-target", target)
            .timeout(TIMEOUT)
            .body(body);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        // Not signed: added after the signature, so the signature stays valid.
        let response = crate::telemetry::trace::with_traceparent(request)
            .send()
            .await
            .map_err(|error| transport_error(SERVICE, &error))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let success = response.status().is_success();
        let body = if success {
            read_limited(SERVICE, response, TOKEN_BODY_LIMIT).await?
        } else {
            read_error_body(response).await
        };
        let reply = HttpReply {
            status,
            headers,
            body,
        };
        if !success {
            return Err(secret_store_error(
                SERVICE,
                format!("aws-sm:{secret_id}"),
                &reply,
            ));
        }
        let value: SecretValue = serde_json::from_slice(&reply.body)
            // Not the decoder's message: it may quote part of the value.
            .map_err(|error| {
                malformed(
                    SERVICE,
                    format!(
                        "aws-sm:{secret_id}: GetSecretValue answer is not the expected JSON (line {}, column {})",
                        error.line(),
                        error.column()
                    ),
                )
            })?;
        value
            .secret_string
            .map(Secret::new)
            .ok_or_else(|| Error::config(format!("aws-sm:{secret_id} holds no SecretString")))
    }
}
