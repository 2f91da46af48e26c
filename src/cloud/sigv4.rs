//! AWS Signature Version 4 for requests with the signature in the `Authorization`
//! header: Bedrock Runtime (signing name `bedrock`) now, OpenSearch (`es`, `aoss`) later.
//!
//! Written against the documented algorithm and checked against AWS's published
//! test-suite vectors (see the tests) rather than taken from the SDK: the
//! `aws-sigv4` crate brings the smithy runtime crates with it, and the test servers
//! need these pure steps anyway to verify what the clients send.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use aws_lc_rs::hmac;
use sha2::{Digest, Sha256};

use crate::cloud::aws_credentials::AwsCredentialsProvider;
use crate::config::{AwsKeyLocations, Secret, SecretLocation};
use crate::error::{Error, Result};

/// An access key pair, and the session token that comes with temporary credentials.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl AwsCredentials {
    /// From the configured locations when given (`prefix` spells their keys in
    /// messages), else the standard variables `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    pub fn resolve(
        locations: &AwsKeyLocations,
        prefix: &str,
        env: &HashMap<String, String>,
    ) -> Result<Self> {
        let configured = locations.resolve(prefix, env)?;
        let standard = |name: &str| SecretLocation::Env(name.to_string()).resolve(env);
        let access_key_id = match configured.access_key_id {
            Some(secret) => secret,
            None => standard("AWS_ACCESS_KEY_ID")?,
        };
        let secret_access_key = match configured.secret_access_key {
            Some(secret) => secret,
            None => standard("AWS_SECRET_ACCESS_KEY")?,
        };
        let session_token = configured
            .session_token
            .or_else(|| standard("AWS_SESSION_TOKEN").ok());
        Ok(Self {
            access_key_id,
            secret_access_key,
            session_token,
        })
    }
}

/// Signs requests for one service in one region, with the credentials its provider
/// holds at the time of each request (renewed temporary keys included).
#[derive(Debug, Clone)]
pub struct SigV4Signer {
    pub credentials: AwsCredentialsProvider,
    pub region: String,
    /// The signing name, which is not always the host prefix: Bedrock Runtime is
    /// served by `bedrock-runtime.{region}` but signed as `bedrock`.
    pub service: String,
}

impl SigV4Signer {
    /// The headers to add to a request: `x-amz-date`, `x-amz-security-token` with
    /// temporary credentials, and `authorization`. `headers` are the ones already on
    /// the request (`content-type` and any `x-amz-*` among them are signed); `host`
    /// is taken from the URL, as the HTTP client will send it. Fails only when the
    /// provider has no valid credentials (an auth or unavailable error naming it).
    pub async fn sign(
        &self,
        method: &str,
        url: &url::Url,
        headers: &[(String, String)],
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<(&'static str, String)>> {
        let credentials = self.credentials.current().await?;
        Ok(self.sign_with(&credentials, method, url, headers, body, now))
    }

    /// [`Self::sign`] with the given credentials: pure (test servers check with it).
    pub fn sign_with(
        &self,
        credentials: &AwsCredentials,
        method: &str,
        url: &url::Url,
        headers: &[(String, String)],
        body: &[u8],
        now: SystemTime,
    ) -> Vec<(&'static str, String)> {
        let amz_date = amz_date(now);
        let mut signed: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            if name == "content-type" || name.starts_with("x-amz-") {
                signed.insert(name, value.clone());
            }
        }
        signed.insert("host".into(), host_header(url));
        signed.insert("x-amz-date".into(), amz_date.clone());
        if let Some(token) = &credentials.session_token {
            signed.insert("x-amz-security-token".into(), token.expose().to_string());
        }
        let payload_hash = hex::encode(Sha256::digest(body));
        let (canonical, signed_headers) = canonical_request(
            method,
            &canonical_uri(url.path()),
            &canonical_query(url.query()),
            &signed,
            &payload_hash,
        );
        let date = &amz_date[..8];
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = string_to_sign(&amz_date, &scope, &canonical);
        let key = signing_key(
            credentials.secret_access_key.expose(),
            date,
            &self.region,
            &self.service,
        );
        let signature = signature(&key, &to_sign);
        let mut added = vec![("x-amz-date", amz_date)];
        if let Some(token) = &credentials.session_token {
            added.push(("x-amz-security-token", token.expose().to_string()));
        }
        added.push((
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                credentials.access_key_id.expose()
            ),
        ));
        added
    }
}

/// `Host` as the HTTP client sends it: the port only when it is not the scheme's default.
pub fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// The canonical request and the `;`-joined signed header names. `headers` are
/// lower-case names; values are trimmed and inner runs of spaces collapsed.
pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    headers: &BTreeMap<String, String>,
    payload_hash: &str,
) -> (String, String) {
    let mut canonical_headers = String::new();
    for (name, value) in headers {
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let signed_headers = headers.keys().cloned().collect::<Vec<_>>().join(";");
    let canonical = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    );
    (canonical, signed_headers)
}

/// Every service but S3 encodes the (already encoded) wire path once more, so a
/// Bedrock model id's `%3A` becomes `%253A`; `/` separators stay.
pub fn canonical_uri(wire_path: &str) -> String {
    if wire_path.is_empty() {
        return "/".into();
    }
    wire_path
        .split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// Query parameters decoded, re-encoded strictly, sorted by name then value.
pub fn canonical_query(query: Option<&str>) -> String {
    let Some(query) = query.filter(|query| !query.is_empty()) else {
        return String::new();
    };
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (uri_encode(&decode(name)), uri_encode(&decode(value)))
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// SigV4's URI encoding: everything but `A-Z a-z 0-9 - _ . ~` as upper-case `%XX`.
pub fn uri_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = hex::encode(Sha256::digest(canonical_request.as_bytes()));
    format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hash}")
}

/// `HMAC("AWS4" + secret, date) -> region -> service -> "aws4_request"`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    key
}

pub fn signature(signing_key: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(signing_key, string_to_sign.as_bytes()))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
pub fn amz_date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Parses `YYYYMMDDTHHMMSSZ` back to a time (test servers check the clock skew).
pub fn parse_amz_date(text: &str) -> Result<SystemTime> {
    let bad = || Error::invalid(format!("{text:?} is not an x-amz-date"));
    if text.len() != 16 || !text.ends_with('Z') || text.as_bytes()[8] != b'T' {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64> {
        text.get(range)
            .and_then(|part| part.parse().ok())
            .ok_or_else(bad)
    };
    let days = days_from_civil(number(0..4)?, number(4..6)?, number(6..8)?);
    let seconds = days * 86_400 + number(9..11)? * 3600 + number(11..13)? * 60 + number(13..15)?;
    let seconds = u64::try_from(seconds).map_err(|_| bad())?;
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn empty_hash() -> String {
        hex::encode(Sha256::digest(b""))
    }

    /// One request of AWS's SigV4 test suite: credentials AKIDEXAMPLE, region
    /// us-east-1, service `service`, 2015-08-30T12:36:00Z, host example.amazonaws.com.
    fn suite_signature(method: &str, path: &str, query: Option<&str>) -> String {
        let headers = BTreeMap::from([
            ("host".to_string(), "example.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
        ]);
        let (canonical, signed) = canonical_request(
            method,
            &canonical_uri(path),
            &canonical_query(query),
            &headers,
            &empty_hash(),
        );
        assert_eq!(signed, "host;x-amz-date");
        let to_sign = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            &canonical,
        );
        let key = signing_key(SECRET, "20150830", "us-east-1", "service");
        signature(&key, &to_sign)
    }

    #[test]
    fn aws_test_suite_vectors() {
        // get-vanilla
        assert_eq!(
            suite_signature("GET", "/", None),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        // get-vanilla-query-order-key-case: parameters are sorted before signing
        assert_eq!(
            suite_signature("GET", "/", Some("Param2=value2&Param1=value1")),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
        // get-utf8: the suite's path is the raw `/ሴ`, encoded once to /%E1%88%B4
        assert_eq!(
            suite_signature("GET", "/\u{1234}", None),
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"
        );
        // post-vanilla
        assert_eq!(
            suite_signature("POST", "/", None),
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
    }

    /// The Bedrock example of the provider reference: model id with `:` encoded
    /// once on the wire and twice in the canonical request, signing name `bedrock`.
    #[test]
    fn bedrock_reference_vector_through_the_signer() {
        let credentials = AwsCredentials {
            access_key_id: SecretLocation::Env("ID".into())
                .resolve(&HashMap::from([("ID".into(), "AKIDEXAMPLE".into())]))
                .unwrap(),
            secret_access_key: SecretLocation::Env("KEY".into())
                .resolve(&HashMap::from([("KEY".into(), SECRET.into())]))
                .unwrap(),
            session_token: None,
        };
        let signer = SigV4Signer {
            credentials: credentials.clone().into(),
            region: "us-east-1".into(),
            service: "bedrock".into(),
        };
        let url = url::Url::parse(
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        )
        .unwrap();
        assert_eq!(
            canonical_uri(url.path()),
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse"
        );
        let body = br#"{"messages":[{"role":"user","content":[{"text":"ping"}]}],"inferenceConfig":{"maxTokens":16}}"#;
        let at = parse_amz_date("20250101T000000Z").unwrap();
        let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        let added = signer.sign_with(&credentials, "POST", &url, &headers, body, at);
        assert_eq!(added[0], ("x-amz-date", "20250101T000000Z".to_string()));
        assert_eq!(
            added[1].1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=59912dcbd84c23c77c7d6cd5bb720080cfd89a1dfacacd49979b1b9cb16dcf08"
        );
    }

    #[tokio::test]
    async fn session_token_is_sent_and_signed() {
        let env = HashMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIDEXAMPLE".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET.to_string()),
            (
                "AWS_SESSION_TOKEN".to_string(),
                "token/with+chars".to_string(),
            ),
        ]);
        let credentials =
            AwsCredentials::resolve(&AwsKeyLocations::default(), "aws_", &env).unwrap();
        let signer = SigV4Signer {
            credentials: credentials.into(),
            region: "eu-west-1".into(),
            service: "bedrock".into(),
        };
        let url = url::Url::parse("http://127.0.0.1:9000/model/x/invoke").unwrap();
        let added = signer
            .sign("POST", &url, &[], b"{}", SystemTime::UNIX_EPOCH)
            .await
            .unwrap();
        assert_eq!(
            added[1],
            ("x-amz-security-token", "token/with+chars".to_string())
        );
        assert!(
            added[2]
                .1
                .contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"),
            "{}",
            added[2].1
        );
    }

    #[test]
    fn missing_credentials_name_the_variable() {
        let error = AwsCredentials::resolve(&AwsKeyLocations::default(), "aws_", &HashMap::new())
            .unwrap_err();
        assert!(
            error.message.contains("AWS_ACCESS_KEY_ID"),
            "{}",
            error.message
        );
    }

    #[test]
    fn dates_round_trip() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160);
        assert_eq!(amz_date(at), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z").unwrap(), at);
        // a leap day and the end of a century year
        for text in ["20240229T235959Z", "20000301T000000Z", "19700101T000000Z"] {
            assert_eq!(amz_date(parse_amz_date(text).unwrap()), text);
        }
        assert!(parse_amz_date("2015-08-30").is_err());
    }

    #[test]
    fn host_keeps_only_a_non_default_port() {
        let with_port = url::Url::parse("http://127.0.0.1:8080/x").unwrap();
        let default_port =
            url::Url::parse("https://bedrock-runtime.us-east-1.amazonaws.com:443/x").unwrap();
        assert_eq!(host_header(&with_port), "127.0.0.1:8080");
        assert_eq!(
            host_header(&default_port),
            "bedrock-runtime.us-east-1.amazonaws.com"
        );
    }
}
