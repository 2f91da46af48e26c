//! Pages of a fused list. A token carries the offset of the next page and a hash of
//! the request and of the documents on the pages before it, so a page is served only
//! when the list up to it is the one the caller already saw: pages never overlap or
//! skip a document. Each page searches again (nothing is kept on the server); when the
//! index changed what comes before the offset, the token is stale and the caller
//! starts over. Tokens are opaque but not secret: a forged one only fails to match.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::{FusedHit, SearchRequest};
use crate::error::{Error, Result};

const TOKEN_VERSION: u8 = 1;
const FINGERPRINT_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    /// Position in the fused list of the page's first hit.
    pub offset: usize,
    fingerprint: [u8; FINGERPRINT_BYTES],
}

impl PageToken {
    /// The token of the page at `offset`, after `earlier` (the documents before it).
    fn new(request: &SearchRequest, earlier: &[FusedHit]) -> Self {
        Self {
            offset: earlier.len(),
            fingerprint: fingerprint(request, earlier),
        }
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(5 + FINGERPRINT_BYTES);
        bytes.push(TOKEN_VERSION);
        bytes.extend_from_slice(&(self.offset as u32).to_be_bytes());
        bytes.extend_from_slice(&self.fingerprint);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(token: &str) -> Result<Self> {
        let invalid = || Error::invalid("page_token is not a token this server issued");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        if bytes.len() != 5 + FINGERPRINT_BYTES || bytes[0] != TOKEN_VERSION {
            return Err(invalid());
        }
        let offset = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let mut fingerprint = [0; FINGERPRINT_BYTES];
        fingerprint.copy_from_slice(&bytes[5..]);
        Ok(Self {
            offset,
            fingerprint,
        })
    }
}

/// Everything that decides the fused list's order, and the documents before a page.
/// `top_k` is left out: a page asks for a deeper list than the one before, and a prefix
/// of a fused list does not depend on how much of it is computed.
fn fingerprint(request: &SearchRequest, earlier: &[FusedHit]) -> [u8; FINGERPRINT_BYTES] {
    let mut sources = request.sources.clone();
    sources.sort();
    let mut weights: Vec<(&String, &f64)> = request.controls.weights.iter().collect();
    weights.sort_by(|left, right| left.0.cmp(right.0));
    let controls = format!(
        "{:?}",
        (
            &request.query,
            sources,
            request.fusion,
            &request.adapter_from,
            weights,
            request.controls.rrf_k,
            request.controls.candidates,
            request.controls.min_score,
            // A page of another filter's list is another list.
            &request.filter,
        )
    );
    let mut hash = Sha256::new();
    hash.update([TOKEN_VERSION]);
    hash.update(controls.as_bytes());
    for hit in earlier {
        hash.update([0]);
        hash.update(hit.hit.doc_id.as_bytes());
    }
    let digest = hash.finalize();
    let mut fingerprint = [0; FINGERPRINT_BYTES];
    fingerprint.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
    fingerprint
}

/// Which page a request asks for.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub size: usize,
    /// None: the first page.
    pub token: Option<PageToken>,
    /// How deep the fused list may be paged.
    pub limit: usize,
}

impl PageRequest {
    pub fn offset(&self) -> usize {
        self.token.as_ref().map_or(0, |token| token.offset)
    }

    /// How deep the fused list must be computed to serve this page and to know whether
    /// another follows.
    pub fn depth(&self) -> usize {
        (self.offset() + self.size + 1).min(self.limit)
    }
}

/// The page of `hits` (the fused list, computed to [`PageRequest::depth`]) and the
/// next page's token, if a next page exists within the limit.
pub fn page(
    request: &SearchRequest,
    page: &PageRequest,
    mut hits: Vec<FusedHit>,
) -> Result<(Vec<FusedHit>, Option<String>)> {
    let offset = page.offset();
    if let Some(token) = &page.token {
        let matches = hits.len() >= offset
            && token.fingerprint == fingerprint(request, &hits[..offset.min(hits.len())]);
        if !matches {
            return Err(Error::invalid("page token is stale, search again"));
        }
    }
    let end = (offset + page.size).min(hits.len());
    let next = (hits.len() > end && end < page.limit)
        .then(|| PageToken::new(request, &hits[..end]).encode());
    hits.truncate(end);
    Ok((hits.split_off(offset), next))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::document::Hit;

    fn hits(ids: &[&str]) -> Vec<FusedHit> {
        ids.iter()
            .map(|id| FusedHit {
                hit: Hit {
                    chunk_id: format!("{id}#0"),
                    doc_id: id.to_string(),
                    object_key: String::new(),
                    title: "".into(),
                    text: "".into(),
                    cloud: String::new(),
                    region: String::new(),
                    classes: Vec::new(),
                    score: 1.0,
                    span: None,
                },
                score: 1.0,
                contributions: Vec::new(),
                snippet: None,
            })
            .collect()
    }

    fn request(query: &str) -> SearchRequest {
        SearchRequest {
            query: query.into(),
            top_k: 10,
            sources: Vec::new(),
            fusion: None,
            deadline: Instant::now(),
            adapter_from: None,
            controls: Default::default(),
            filter: None,
            zone: Default::default(),
        }
    }

    fn ids(hits: &[FusedHit]) -> Vec<&str> {
        hits.iter().map(|hit| hit.hit.doc_id.as_str()).collect()
    }

    #[test]
    fn pages_follow_each_other_and_a_changed_prefix_is_stale() {
        let list = ["a", "b", "c", "d", "e"];
        let asked = request("q");
        let first = PageRequest {
            size: 2,
            token: None,
            limit: 100,
        };
        let (page_one, next) = page(&asked, &first, hits(&list)).unwrap();
        assert_eq!(ids(&page_one), ["a", "b"]);
        let token = PageToken::decode(&next.unwrap()).unwrap();
        assert_eq!(token.offset, 2);
        let second = PageRequest {
            size: 2,
            token: Some(token.clone()),
            limit: 100,
        };
        assert_eq!(second.depth(), 5);
        let (page_two, next) = page(&asked, &second, hits(&list)).unwrap();
        assert_eq!(ids(&page_two), ["c", "d"]);
        let third = PageRequest {
            size: 2,
            token: Some(PageToken::decode(&next.unwrap()).unwrap()),
            limit: 100,
        };
        let (page_three, next) = page(&asked, &third, hits(&list)).unwrap();
        assert_eq!((ids(&page_three), next), (vec!["e"], None));

        // A new document ahead of the offset, or another query: stale.
        for (asked, list) in [
            (request("q"), vec!["z", "a", "b", "c"]),
            (request("other"), list.to_vec()),
        ] {
            let error = page(&asked, &second, hits(&list)).unwrap_err();
            assert!(error.message.contains("stale"), "{}", error.message);
        }
        // The list's limit ends the pages.
        let shallow = PageRequest { limit: 2, ..first };
        let (_, next) = page(&asked, &shallow, hits(&list)).unwrap();
        assert_eq!(next, None);
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let token = PageToken::new(&request("q"), &hits(&["a", "b", "c"]));
        assert_eq!(PageToken::decode(&token.encode()).unwrap(), token);
        for garbage in ["", "!!", "AAAA"] {
            assert!(PageToken::decode(garbage).is_err(), "{garbage}");
        }
    }
}
