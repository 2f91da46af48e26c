//! mTLS client certificates: the verified leaf's subject CN or a SAN, mapped to a
//! caller by `[[client_cert]]`. The transport verified the chain; this only reads names.

use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::ClientCertConfig;

/// A subject alternative name as `[[client_cert]] san` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanPattern {
    Dns(String),
    Uri(String),
    Email(String),
    Ip(IpAddr),
}

impl SanPattern {
    /// Parses `dns:NAME`, `uri:URI`, `email:ADDRESS` or `ip:ADDRESS`.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, value) = text.split_once(':')?;
        if value.is_empty() {
            return None;
        }
        match kind {
            "dns" => Some(Self::Dns(value.to_ascii_lowercase())),
            "uri" => Some(Self::Uri(value.to_string())),
            "email" => Some(Self::Email(value.to_string())),
            "ip" => value.parse().ok().map(Self::Ip),
            _ => None,
        }
    }
}

/// The names a certificate carries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CertificateNames {
    pub common_names: Vec<String>,
    pub sans: Vec<SanPattern>,
}

/// Reads the subject CNs and SANs of a DER certificate; None when it does not parse.
pub fn certificate_names(der: &[u8]) -> Option<CertificateNames> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let common_names = certificate
        .subject()
        .iter_common_name()
        .filter_map(|name| name.as_str().ok())
        .map(str::to_string)
        .collect();
    let mut sans = Vec::new();
    if let Ok(Some(extension)) = certificate.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push(SanPattern::Dns(dns.to_ascii_lowercase())),
                GeneralName::URI(uri) => sans.push(SanPattern::Uri(uri.to_string())),
                GeneralName::RFC822Name(email) => sans.push(SanPattern::Email(email.to_string())),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    sans.extend(ip.map(SanPattern::Ip));
                }
                _ => {}
            }
        }
    }
    Some(CertificateNames { common_names, sans })
}

/// The first `[[client_cert]]` whose CN or SAN the certificate carries.
pub fn match_certificate<'a>(
    mappings: &'a [ClientCertConfig],
    names: &CertificateNames,
) -> Option<&'a ClientCertConfig> {
    mappings.iter().find(|mapping| {
        let by_cn = mapping
            .subject_cn
            .as_ref()
            .is_some_and(|cn| names.common_names.iter().any(|name| name == cn));
        let by_san = mapping
            .san
            .as_deref()
            .and_then(SanPattern::parse)
            .is_some_and(|san| names.sans.contains(&san));
        by_cn || by_san
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(cn: &str, sans: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(
            sans.iter().map(|san| san.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn mapping(id: &str, cn: Option<&str>, san: Option<&str>) -> ClientCertConfig {
        ClientCertConfig {
            id: id.into(),
            subject_cn: cn.map(str::to_string),
            san: san.map(str::to_string),
            roles: Vec::new(),
        }
    }

    #[test]
    fn certificates_map_by_common_name_or_san() {
        let der = certificate("ingest-worker", &["worker.internal.example"]);
        let names = certificate_names(&der).unwrap();
        assert_eq!(names.common_names, vec!["ingest-worker"]);
        assert_eq!(
            names.sans,
            vec![SanPattern::Dns("worker.internal.example".into())]
        );
        let mappings = [
            mapping("by-san", None, Some("dns:worker.internal.example")),
            mapping("by-cn", Some("ingest-worker"), None),
        ];
        assert_eq!(match_certificate(&mappings, &names).unwrap().id, "by-san");
        assert_eq!(
            match_certificate(&mappings[1..], &names).unwrap().id,
            "by-cn"
        );
        let stranger = certificate_names(&certificate("someone", &["other.example"])).unwrap();
        assert!(match_certificate(&mappings, &stranger).is_none());
        assert!(certificate_names(b"not a certificate").is_none());
    }

    #[test]
    fn san_patterns_parse_by_kind() {
        assert_eq!(
            SanPattern::parse("uri:spiffe://corp/ns/rag/sa/indexer"),
            Some(SanPattern::Uri("spiffe://corp/ns/rag/sa/indexer".into()))
        );
        assert_eq!(
            SanPattern::parse("ip:127.0.0.1"),
            Some(SanPattern::Ip([127, 0, 0, 1].into()))
        );
        assert_eq!(SanPattern::parse("cn:x"), None);
        assert_eq!(SanPattern::parse("dns:"), None);
    }
}
