//! An RSA private key from PEM, signing with RSASSA-PKCS1-v1_5 over SHA-256: OCI
//! API-key request signatures and Google service-account JWTs (RS256) both use it.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine;

use crate::error::{Error, Result};

pub struct RsaPrivateKey {
    key_pair: KeyPair,
}

impl fmt::Debug for RsaPrivateKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("RsaPrivateKey([redacted])")
    }
}

impl RsaPrivateKey {
    /// Reads `-----BEGIN PRIVATE KEY-----` (PKCS#8, what OCI's console and Google's
    /// key files hold) or `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1, `openssl genrsa`).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let (label, der) = pem_block(pem)?;
        let key_pair = match label.as_str() {
            "PRIVATE KEY" => KeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => KeyPair::from_der(&der),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(Error::config(
                    "the private key is encrypted; store it decrypted (openssl rsa -in key.pem -out plain.pem) and protect the file instead",
                ));
            }
            other => {
                return Err(Error::config(format!(
                    "expected a PEM private key, found a {other:?} block"
                )));
            }
        }
        .map_err(|error| Error::config(format!("not a usable RSA private key: {error}")))?;
        Ok(Self { key_pair })
    }

    /// A fresh 2048-bit key (an instance principal's session key) and its public half
    /// as X.509 SubjectPublicKeyInfo DER, the form OCI's federation endpoint takes.
    pub fn generate() -> Result<(Self, Vec<u8>)> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        let key_pair = KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| Error::internal("cannot generate an rsa session key"))?;
        let public = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(key_pair.public_key())
            .map_err(|_| Error::internal("cannot encode the rsa session public key"))?
            .as_ref()
            .to_vec();
        Ok((Self { key_pair }, public))
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 of `message`.
    pub fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>> {
        let mut signature = vec![0; self.key_pair.public_modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| Error::internal("rsa signing failed"))?;
        Ok(signature)
    }
}

/// The label and bytes of the first PEM block.
pub fn pem_block(pem: &str) -> Result<(String, Vec<u8>)> {
    let not_pem = || Error::config("the private key is not PEM (-----BEGIN ...-----)");
    let begin = pem.find("-----BEGIN ").ok_or_else(not_pem)?;
    let rest = &pem[begin + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or_else(not_pem)?;
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let end = body.find(&end_marker).ok_or_else(not_pem)?;
    let base64_text: String = body[..end]
        .chars()
        .filter(|character| !character.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64_text)
        .map_err(|error| Error::config(format!("the PEM body is not base64: {error}")))?;
    Ok((label, der))
}

#[cfg(test)]
pub(crate) mod tests {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    use super::*;

    /// A fresh 2048-bit key as PKCS#8 PEM and its public key (PKCS#1 DER).
    pub(crate) fn generated_key() -> (String, Vec<u8>) {
        let key_pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key_pair).unwrap();
        let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|chunk| std::str::from_utf8(chunk).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        (pem, key_pair.public_key().as_ref().to_vec())
    }

    #[test]
    fn signs_what_the_public_key_verifies() {
        let (pem, public_key) = generated_key();
        let key = RsaPrivateKey::from_pem(&pem).unwrap();
        let signature = key.sign_sha256(b"signing string").unwrap();
        let verifier = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public_key);
        verifier.verify(b"signing string", &signature).unwrap();
        assert!(verifier.verify(b"another string", &signature).is_err());
        assert_eq!(format!("{key:?}"), "RsaPrivateKey([redacted])");
    }

    #[test]
    fn refuses_what_is_not_a_plain_private_key() {
        assert!(RsaPrivateKey::from_pem("sk-123").is_err());
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----";
        let error = RsaPrivateKey::from_pem(encrypted).unwrap_err();
        assert!(error.message.contains("encrypted"), "{}", error.message);
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----";
        assert!(RsaPrivateKey::from_pem(garbage).is_err());
    }
}
