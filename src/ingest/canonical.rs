//! One name per bucket: every URL form a cloud accepts for a bucket (`s3a://`, the
//! virtual-hosted and path-style `https://` hosts, `abfss://container@account...`) is
//! reduced to `scheme://bucket` plus a key prefix. Everything that matches a URL against
//! policy (`[[bucket]]` entries, a role's granted prefixes) or names a bucket's objects
//! (manifests, store keys) goes through [`canonical_url`], so an alias can neither dodge an
//! entry's filters nor give an object a second identity.

use crate::error::{Error, Result};

/// A bucket URL reduced to its one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalUrl {
    /// `s3://bucket`, `az://container` or `gs://bucket`: no trailing slash.
    pub bucket: String,
    /// The key prefix under the bucket, without leading or trailing slashes ("" for all).
    pub prefix: String,
    /// The Azure storage account the URL names, if any: it must be the configured one.
    pub account: Option<String>,
}

impl CanonicalUrl {
    /// `bucket/prefix`, the form the indexer opens and policy prefixes are compared in.
    pub fn full(&self) -> String {
        if self.prefix.is_empty() {
            self.bucket.clone()
        } else {
            format!("{}/{}", self.bucket, self.prefix)
        }
    }

    /// Whether `self` lies under `granted` (same bucket, prefix on whole path segments)
    /// and any account `self` names is the one `granted` names.
    pub fn is_under(&self, granted: &CanonicalUrl) -> bool {
        if self.bucket != granted.bucket {
            return false;
        }
        if self.account.is_some() && self.account != granted.account {
            return false;
        }
        granted.prefix.is_empty()
            || self.prefix == granted.prefix
            || self
                .prefix
                .strip_prefix(&granted.prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// `(canonical bucket URL, prefix)` of a cloud bucket URL, for every alias the clouds
/// accept; an error for anything that is not a bucket URL (local paths included).
pub fn canonical_url(url: &str) -> Result<(String, String)> {
    let canonical = canonicalize(url)?;
    Ok((canonical.bucket, canonical.prefix))
}

/// As [`canonical_url`], with the Azure account the URL names.
pub fn canonicalize(url: &str) -> Result<CanonicalUrl> {
    let not_a_bucket = || Error::invalid(format!("{url:?} is not a bucket URL"));
    let parsed = url::Url::parse(url.trim()).map_err(|_| not_a_bucket())?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let path = decoded_path(&parsed).ok_or_else(not_a_bucket)?;
    let (cloud, bucket, prefix, account) = match parsed.scheme() {
        "s3" | "s3a" | "s3n" => ("s3", host, path, None),
        "gs" => ("gs", host, path, None),
        "az" | "adl" | "azure" => ("az", host, path, None),
        "abfs" | "abfss" => {
            // abfss://container@account.dfs.core.windows.net/path
            let account = azure_account(&host);
            let container = parsed.username().to_ascii_lowercase();
            if container.is_empty() {
                // abfss://container/path: the account comes from config.
                ("az", host, path, None)
            } else {
                ("az", container, path, account)
            }
        }
        "https" | "http" => https_alias(&host, &path).ok_or_else(not_a_bucket)?,
        _ => return Err(not_a_bucket()),
    };
    if bucket.is_empty() || bucket.contains('@') {
        return Err(not_a_bucket());
    }
    Ok(CanonicalUrl {
        bucket: format!("{cloud}://{bucket}"),
        prefix,
        account,
    })
}

/// Path segments percent-decoded, empty and `.` segments dropped; `None` on `..`, which no
/// bucket key prefix needs and which would make prefix comparison lie.
fn decoded_path(parsed: &url::Url) -> Option<String> {
    let mut segments = Vec::new();
    for segment in parsed.path().split('/') {
        let segment = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .ok()?;
        match segment.as_ref() {
            "" | "." => {}
            ".." => return None,
            other => segments.push(other.to_owned()),
        }
    }
    Some(segments.join("/"))
}

fn split_first(path: &str) -> (String, String) {
    match path.split_once('/') {
        Some((first, rest)) => (first.to_owned(), rest.to_owned()),
        None => (path.to_owned(), String::new()),
    }
}

/// `<account>.blob.core.windows.net` or `<account>.dfs.core.windows.net`.
fn azure_account(host: &str) -> Option<String> {
    let account = host
        .strip_suffix(".blob.core.windows.net")
        .or_else(|| host.strip_suffix(".dfs.core.windows.net"))?;
    (!account.is_empty() && !account.contains('.')).then(|| account.to_owned())
}

type Parts = (&'static str, String, String, Option<String>);

/// The `https://` forms of S3, Azure and GCS buckets.
fn https_alias(host: &str, path: &str) -> Option<Parts> {
    if host == "storage.googleapis.com" {
        let (bucket, prefix) = split_first(path);
        return Some(("gs", bucket, prefix, None));
    }
    if let Some(account) = azure_account(host) {
        let (container, prefix) = split_first(path);
        return Some(("az", container, prefix, Some(account)));
    }
    let rest = host.strip_suffix(".amazonaws.com")?;
    // Path style: s3.amazonaws.com, s3.<region>.amazonaws.com, s3-<region>.amazonaws.com.
    if rest == "s3" || rest.starts_with("s3.") || rest.starts_with("s3-") {
        let (bucket, prefix) = split_first(path);
        return Some(("s3", bucket, prefix, None));
    }
    // Virtual-hosted: <bucket>.s3.amazonaws.com, <bucket>.s3.<region>.amazonaws.com,
    // <bucket>.s3-<region>.amazonaws.com (bucket names may hold dots).
    let position = rest.rfind(".s3.").or_else(|| rest.rfind(".s3-"));
    let bucket = match position {
        Some(position) => &rest[..position],
        None => rest.strip_suffix(".s3")?,
    };
    Some(("s3", bucket.to_owned(), path.to_owned(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alias_names_the_same_bucket() {
        let table = [
            ("s3://docs", "s3://docs", ""),
            ("s3://docs/", "s3://docs", ""),
            ("s3a://docs/team/a", "s3://docs", "team/a"),
            ("s3n://docs/team/", "s3://docs", "team"),
            ("S3A://Docs/team", "s3://docs", "team"),
            (
                "https://docs.s3.eu-west-1.amazonaws.com/team",
                "s3://docs",
                "team",
            ),
            ("https://docs.s3.amazonaws.com/team", "s3://docs", "team"),
            (
                "https://my.dotted.bucket.s3-eu-west-1.amazonaws.com/x",
                "s3://my.dotted.bucket",
                "x",
            ),
            (
                "https://s3.eu-west-1.amazonaws.com/docs/team",
                "s3://docs",
                "team",
            ),
            ("https://s3.amazonaws.com/docs", "s3://docs", ""),
            ("az://container/folder", "az://container", "folder"),
            ("azure://container/folder", "az://container", "folder"),
            ("adl://container/folder", "az://container", "folder"),
            ("abfs://container/folder", "az://container", "folder"),
            (
                "abfss://container@acct.dfs.core.windows.net/folder",
                "az://container",
                "folder",
            ),
            (
                "https://acct.blob.core.windows.net/container/folder",
                "az://container",
                "folder",
            ),
            (
                "https://acct.dfs.core.windows.net/container",
                "az://container",
                "",
            ),
            ("gs://bucket/a//b/./c", "gs://bucket", "a/b/c"),
            (
                "https://storage.googleapis.com/bucket/p%20q",
                "gs://bucket",
                "p q",
            ),
        ];
        for (url, bucket, prefix) in table {
            let canonical = canonical_url(url).unwrap_or_else(|error| panic!("{url}: {error}"));
            assert_eq!(canonical, (bucket.to_owned(), prefix.to_owned()), "{url}");
        }
        assert_eq!(
            canonicalize("abfss://container@acct.dfs.core.windows.net/f")
                .unwrap()
                .account
                .as_deref(),
            Some("acct")
        );
    }

    #[test]
    fn non_bucket_urls_are_refused() {
        for url in [
            "/etc/passwd",
            "file:///etc/passwd",
            "https://example.com/docs",
            "https://acct.r2.cloudflarestorage.com/docs",
            "ftp://docs",
            "s3://",
            "memory:///",
        ] {
            assert!(canonical_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn is_under_compares_whole_segments_and_accounts() {
        let granted = canonicalize("s3://docs/team").unwrap();
        assert!(
            canonicalize("s3a://docs/team/x")
                .unwrap()
                .is_under(&granted)
        );
        assert!(canonicalize("s3://docs/team").unwrap().is_under(&granted));
        assert!(
            !canonicalize("s3://docs/teammates")
                .unwrap()
                .is_under(&granted)
        );
        assert!(!canonicalize("s3://docs").unwrap().is_under(&granted));
        let container = canonicalize("az://c").unwrap();
        let other_account = canonicalize("https://evil.blob.core.windows.net/c/x").unwrap();
        assert!(!other_account.is_under(&container));
    }
}
