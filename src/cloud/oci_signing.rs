//! OCI API-key request signing: draft-cavage HTTP signatures, version 1, RSA-SHA256,
//! carried in `Authorization`. keyId is `{tenancy}/{user}/{fingerprint}` for an API
//! key, `ST${token}` for a security token (instance principals), and
//! `{tenancy}/fed-x509/{fingerprint}` for the federation request that gets one.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::cloud::rsa_key::RsaPrivateKey;
use crate::cloud::sigv4::host_header;
use crate::error::Result;

/// The headers signed on requests with a body, in this order; requests without one
/// sign only the first three.
pub const BODY_SIGNED_HEADERS: [&str; 6] = [
    "date",
    "(request-target)",
    "host",
    "content-length",
    "content-type",
    "x-content-sha256",
];

#[derive(Clone)]
pub struct OciSigner {
    key_id: String,
    key: Arc<RsaPrivateKey>,
    /// The federation endpoint's signatures leave `host` out, as the SDKs send them.
    sign_host: bool,
}

impl std::fmt::Debug for OciSigner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A security token keyId is a credential: never printed.
        formatter.write_str("OciSigner([redacted])")
    }
}

impl OciSigner {
    pub fn new(tenancy_id: &str, user_id: &str, fingerprint: &str, key: RsaPrivateKey) -> Self {
        Self::with_key_id(
            format!("{tenancy_id}/{user_id}/{fingerprint}"),
            Arc::new(key),
            true,
        )
    }

    /// Any keyId: `ST${token}` with a session key, or the x509 federation's.
    pub fn with_key_id(key_id: String, key: Arc<RsaPrivateKey>, sign_host: bool) -> Self {
        Self {
            key_id,
            key,
            sign_host,
        }
    }

    /// The headers to add: `date`, and for a body `x-content-sha256`,
    /// `content-type` (when the request has none) and `content-length`, then
    /// `authorization`. The HTTP client sends the body's length itself; it is
    /// signed here from the same bytes.
    pub fn sign(
        &self,
        method: &str,
        url: &url::Url,
        content_type: Option<&str>,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<Vec<(&'static str, String)>> {
        let date = httpdate::fmt_http_date(now);
        let mut target = url.path().to_string();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        let method = method.to_ascii_lowercase();
        let mut lines = vec![
            format!("date: {date}"),
            format!("(request-target): {method} {target}"),
        ];
        let mut names: Vec<&str> = vec!["date", "(request-target)"];
        if self.sign_host {
            lines.push(format!("host: {}", host_header(url)));
            names.push("host");
        }
        let mut added = vec![("date", date.clone())];
        if let Some(body) = body {
            let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
            lines.push(format!("content-length: {}", body.len()));
            lines.push(format!(
                "content-type: {}",
                content_type.unwrap_or("application/json")
            ));
            lines.push(format!("x-content-sha256: {digest}"));
            added.push(("x-content-sha256", digest));
            if content_type.is_none() {
                added.push(("content-type", "application/json".to_string()));
            }
            names.extend(&BODY_SIGNED_HEADERS[3..]);
        }
        let signing_string = lines.join("\n");
        let signature = base64::engine::general_purpose::STANDARD
            .encode(self.key.sign_sha256(signing_string.as_bytes())?);
        added.push((
            "authorization",
            format!(
                "Signature version=\"1\",keyId=\"{}\",algorithm=\"rsa-sha256\",headers=\"{}\",signature=\"{signature}\"",
                self.key_id,
                names.join(" ")
            ),
        ));
        Ok(added)
    }
}

/// The signing string a server rebuilds from a received request, for the headers
/// named in the signature's `headers` parameter (test servers verify with it).
pub fn signing_string(
    header_names: &[&str],
    method: &str,
    target: &str,
    header: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let mut lines = Vec::new();
    for name in header_names {
        if *name == "(request-target)" {
            lines.push(format!(
                "(request-target): {} {target}",
                method.to_ascii_lowercase()
            ));
        } else {
            lines.push(format!("{name}: {}", header(name)?));
        }
    }
    Some(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    use super::*;
    use crate::cloud::rsa_key::tests::generated_key;

    #[test]
    fn body_digest_matches_the_reference_vector() {
        // The 273-byte GENERIC chat body of the provider reference (d.6).
        let body = r#"{"compartmentId":"ocid1.compartment.oc1..example","servingMode":{"servingType":"ON_DEMAND","modelId":"meta.llama-3.3-70b-instruct"},"chatRequest":{"apiFormat":"GENERIC","messages":[{"role":"USER","content":[{"type":"TEXT","text":"ping"}]}],"maxTokens":16,"isStream":false}}"#;
        assert_eq!(body.len(), 273);
        let (pem, _) = generated_key();
        let signer = OciSigner::new("t", "u", "f", RsaPrivateKey::from_pem(&pem).unwrap());
        let url = url::Url::parse(
            "https://inference.generativeai.eu-frankfurt-1.oci.oraclecloud.com/20231130/actions/chat",
        )
        .unwrap();
        let added = signer
            .sign(
                "POST",
                &url,
                None,
                Some(body.as_bytes()),
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        assert_eq!(
            added[1],
            (
                "x-content-sha256",
                "IYlV86JWotxnht2DZkxDpCv1wvQJlq5EAUhfmOaFQX8=".to_string()
            )
        );
    }

    #[test]
    fn signature_verifies_over_the_documented_signing_string() {
        let (pem, public_key) = generated_key();
        let signer = OciSigner::new(
            "ocid1.tenancy.oc1..t",
            "ocid1.user.oc1..u",
            "20:3b:97",
            RsaPrivateKey::from_pem(&pem).unwrap(),
        );
        let url = url::Url::parse("http://127.0.0.1:4000/20231130/actions/embedText?x=1").unwrap();
        let body = br#"{"inputs":["a"]}"#;
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_736_244_930);
        let added = signer.sign("POST", &url, None, Some(body), at).unwrap();
        let header = |name: &str| {
            added
                .iter()
                .find(|(added_name, _)| *added_name == name)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(header("date").unwrap(), "Tue, 07 Jan 2025 10:15:30 GMT");
        let authorization = header("authorization").unwrap();
        assert!(authorization.starts_with(
            "Signature version=\"1\",keyId=\"ocid1.tenancy.oc1..t/ocid1.user.oc1..u/20:3b:97\",algorithm=\"rsa-sha256\",headers=\"date (request-target) host content-length content-type x-content-sha256\",signature=\""
        ), "{authorization}");
        let signature_b64 = authorization
            .rsplit("signature=\"")
            .next()
            .unwrap()
            .trim_end_matches('"');
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature_b64)
            .unwrap();
        let expected = format!(
            "date: Tue, 07 Jan 2025 10:15:30 GMT\n(request-target): post /20231130/actions/embedText?x=1\nhost: 127.0.0.1:4000\ncontent-length: {}\ncontent-type: application/json\nx-content-sha256: {}",
            body.len(),
            header("x-content-sha256").unwrap()
        );
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public_key)
            .verify(expected.as_bytes(), &signature)
            .unwrap();
    }

    #[test]
    fn requests_without_a_body_sign_three_headers() {
        let (pem, _) = generated_key();
        let signer = OciSigner::new("t", "u", "f", RsaPrivateKey::from_pem(&pem).unwrap());
        let url = url::Url::parse("http://127.0.0.1:4000/20231130/models").unwrap();
        let added = signer
            .sign("GET", &url, None, None, SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(added.len(), 2);
        assert!(
            added[1]
                .1
                .contains("headers=\"date (request-target) host\"")
        );
    }
}
