//! Listing a bucket as a stream, one page in memory at a time, that gets past keys
//! `object_store` cannot name.
//!
//! `object_store` parses every key of a listing page into a `Path`, and refuses keys with a
//! `..` or `.` segment, an empty segment (`a//b`) or a control character. One such key fails
//! its whole page, and `ObjectStore::list` then ends: every key after it would go unlisted,
//! and since an incomplete listing must not delete anything, one odd key would freeze the
//! sync of a whole bucket. Cloud stores are therefore listed page by page through
//! [`PaginatedListStore`]: when a page fails on a key, the readable keys before it are found
//! by asking for shorter pages, the key is reported on its own, and the listing restarts
//! just after it (S3 and GCS `start-after`, Azure `startFrom`).

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::list::{PaginatedListOptions, PaginatedListResult, PaginatedListStore};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore};

/// The largest page any backend returns (Azure: 5,000; S3 and GCS: 1,000). Asking for more
/// than a backend gives is harmless: it answers with its own maximum.
const LARGEST_PAGE: usize = 5_000;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Object(ObjectMeta),
    /// A key that cannot be read through `object_store`; report it as a failed object.
    UnreadableKey {
        key: String,
        reason: String,
    },
}

/// An `Err` ends the listing: what it did not list yet is unknown.
pub type ListingStream = BoxStream<'static, Result<Listed, String>>;

/// Every key under `prefix` (whole path segments, as `ObjectStore::list`), a page at a time.
pub fn list_pages(
    store: Arc<dyn PaginatedListStore>,
    prefix: Option<&ObjectPath>,
) -> ListingStream {
    let lister = PageLister {
        store,
        prefix: prefix
            .filter(|prefix| !prefix.as_ref().is_empty())
            .map(|prefix| format!("{}/", prefix.as_ref())),
        next_request: Some(PageRequest::default()),
        last_key: None,
        skipped_key: None,
    };
    futures::stream::unfold(lister, |mut lister| async move {
        let page = lister.next_page().await?;
        Some((futures::stream::iter(page), lister))
    })
    .flatten()
    .boxed()
}

/// For stores without page-level access (local folders, in-memory): `ObjectStore::list`.
pub fn list_objects(store: &dyn ObjectStore, prefix: Option<&ObjectPath>) -> ListingStream {
    store
        .list(prefix)
        .map(|entry| entry.map(Listed::Object).map_err(|error| error.to_string()))
        .boxed()
}

/// Where the next page starts: a continuation token, or a key to start after.
#[derive(Debug, Clone, Default)]
struct PageRequest {
    page_token: Option<String>,
    start_after: Option<String>,
}

struct PageLister {
    store: Arc<dyn PaginatedListStore>,
    prefix: Option<String>,
    /// `None` once the listing ended or failed.
    next_request: Option<PageRequest>,
    /// The last key handed out, readable or not.
    last_key: Option<String>,
    /// The last unreadable key listed past: meeting it again means the store ignored
    /// `start-after`, and going on would loop.
    skipped_key: Option<String>,
}

impl PageLister {
    async fn next_page(&mut self) -> Option<Vec<Result<Listed, String>>> {
        let request = self.next_request.take()?;
        let page = match self.request(&request, None).await {
            Ok(page) => page,
            Err(error) => {
                let Some((key, reason)) = unreadable_key(&error) else {
                    return Some(vec![Err(error.to_string())]);
                };
                return Some(self.list_past(request, key, reason).await);
            }
        };
        self.next_request = page.page_token.map(|token| PageRequest {
            page_token: Some(token),
            start_after: None,
        });
        let objects = self.new_objects(&request, page.result.objects);
        Some(
            objects
                .into_iter()
                .map(|meta| Ok(Listed::Object(meta)))
                .collect(),
        )
    }

    async fn request(
        &self,
        request: &PageRequest,
        max_keys: Option<usize>,
    ) -> object_store::Result<PaginatedListResult> {
        let options = PaginatedListOptions {
            offset: request.start_after.clone(),
            page_token: request.page_token.clone(),
            max_keys,
            ..PaginatedListOptions::default()
        };
        self.store
            .list_paginated(self.prefix.as_deref(), options)
            .await
    }

    /// The page that `request` names failed on `key`: list the readable keys before it,
    /// report it, and continue right after it.
    async fn list_past(
        &mut self,
        request: PageRequest,
        key: String,
        reason: String,
    ) -> Vec<Result<Listed, String>> {
        if self.skipped_key.as_deref() == Some(key.as_str()) {
            return vec![Err(format!(
                "the listing cannot get past the unreadable key {key:?}: the store does not honour start-after"
            ))];
        }
        // Pages of up to `readable_count` keys parse, longer ones reach `key`. Binary search
        // on the page length: about 13 requests for one odd key.
        let (mut readable_count, mut failing_count) = (0, LARGEST_PAGE);
        let mut readable = Vec::new();
        while failing_count - readable_count > 1 {
            let length = readable_count + (failing_count - readable_count) / 2;
            match self.request(&request, Some(length)).await {
                Ok(page) => {
                    readable_count = length;
                    readable = page.result.objects;
                }
                Err(error) if unreadable_key(&error).is_some() => failing_count = length,
                Err(error) => return vec![Err(error.to_string())],
            }
        }
        let mut entries: Vec<Result<Listed, String>> = self
            .new_objects(&request, readable)
            .into_iter()
            .map(|meta| Ok(Listed::Object(meta)))
            .collect();
        entries.push(Ok(Listed::UnreadableKey {
            key: key.clone(),
            reason,
        }));
        self.last_key = Some(key.clone());
        self.skipped_key = Some(key.clone());
        self.next_request = Some(PageRequest {
            page_token: None,
            start_after: Some(key),
        });
        entries
    }

    /// The objects of a page, minus any the listing handed out already: after a restart
    /// past an odd key, a store that ignored `start-after` would list from the top again.
    fn new_objects(&mut self, request: &PageRequest, objects: Vec<ObjectMeta>) -> Vec<ObjectMeta> {
        let restarted = request.start_after.is_some();
        let last_key = self.last_key.clone();
        let objects: Vec<ObjectMeta> = objects
            .into_iter()
            .filter(|meta| {
                !restarted
                    || last_key
                        .as_deref()
                        .is_none_or(|last| meta.location.as_ref() > last)
            })
            .collect();
        if let Some(last) = objects.last() {
            self.last_key = Some(last.location.to_string());
        }
        objects
    }
}

/// The key that made a page unparseable, with why.
fn unreadable_key(error: &object_store::Error) -> Option<(String, String)> {
    use object_store::path::Error as PathError;
    let object_store::Error::InvalidPath { source } = error else {
        return None;
    };
    let key = match source {
        PathError::EmptySegment { path } | PathError::BadSegment { path, .. } => path.clone(),
        _ => return None,
    };
    let reason = match source {
        PathError::EmptySegment { .. } => "the key has an empty segment (`//`)".to_owned(),
        _ => format!("the key cannot be read: {source}"),
    };
    Some((key, reason))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use object_store::ListResult;

    use super::*;

    /// A sorted bucket that pages like S3 (`max_keys`, continuation tokens, `start-after`)
    /// and fails a page on an odd key exactly as `object_store`'s clients do.
    struct FakeBucket {
        keys: Vec<String>,
        page_size: usize,
        honours_start_after: bool,
        requests: Mutex<usize>,
    }

    impl FakeBucket {
        fn new(keys: &[&str], page_size: usize) -> Arc<Self> {
            let mut keys: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
            keys.sort();
            Arc::new(Self {
                keys,
                page_size,
                honours_start_after: true,
                requests: Mutex::new(0),
            })
        }
    }

    #[async_trait]
    impl PaginatedListStore for FakeBucket {
        async fn list_paginated(
            &self,
            prefix: Option<&str>,
            options: PaginatedListOptions,
        ) -> object_store::Result<PaginatedListResult> {
            *self.requests.lock().unwrap() += 1;
            // The token is the last key of the previous page, as opaque to the lister as
            // S3's continuation tokens.
            let matching: Vec<&String> = self
                .keys
                .iter()
                .filter(|key| key.starts_with(prefix.unwrap_or_default()))
                .filter(|key| options.page_token.as_ref().is_none_or(|token| *key > token))
                .filter(|key| {
                    !self.honours_start_after
                        || options.offset.as_ref().is_none_or(|offset| *key > offset)
                })
                .collect();
            let length = options
                .max_keys
                .unwrap_or(self.page_size)
                .min(self.page_size);
            let end = length.min(matching.len());
            let objects = matching[..end]
                .iter()
                .map(|key| {
                    Ok(ObjectMeta {
                        location: ObjectPath::parse(key.as_str())?,
                        last_modified: Default::default(),
                        size: 1,
                        e_tag: None,
                        version: None,
                    })
                })
                .collect::<object_store::Result<Vec<_>>>()?;
            Ok(PaginatedListResult {
                result: ListResult {
                    common_prefixes: Vec::new(),
                    objects,
                    extensions: Default::default(),
                },
                page_token: (end < matching.len()).then(|| matching[end - 1].clone()),
            })
        }
    }

    async fn listing(bucket: Arc<FakeBucket>, prefix: Option<&str>) -> Vec<Result<Listed, String>> {
        let prefix = prefix.map(ObjectPath::from);
        list_pages(bucket, prefix.as_ref()).collect().await
    }

    fn summary(entries: &[Result<Listed, String>]) -> Vec<String> {
        entries
            .iter()
            .map(|entry| match entry {
                Ok(Listed::Object(meta)) => meta.location.to_string(),
                Ok(Listed::UnreadableKey { key, .. }) => format!("unreadable {key}"),
                Err(reason) => format!("error {reason}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_end_under_whole_segment_prefixes() {
        let keys: Vec<String> = (0..25)
            .map(|index| format!("docs/{index:02}.txt"))
            .collect();
        let mut all: Vec<&str> = keys.iter().map(String::as_str).collect();
        all.push("docsx/not-under-the-prefix.txt");
        let bucket = FakeBucket::new(&all, 10);
        let entries = listing(Arc::clone(&bucket), Some("docs")).await;
        assert_eq!(summary(&entries), keys);
        assert_eq!(*bucket.requests.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn odd_keys_are_reported_one_by_one_and_the_listing_goes_on() {
        let bucket = FakeBucket::new(
            &[
                "a.txt",
                "b/../c.txt",
                "b/x.txt",
                "d//e.txt",
                "f.txt",
                "g\u{1}.txt",
                "h.txt",
            ],
            3,
        );
        let entries = listing(bucket, None).await;
        assert_eq!(
            summary(&entries),
            [
                "a.txt",
                "unreadable b/../c.txt",
                "b/x.txt",
                "unreadable d//e.txt",
                "f.txt",
                "unreadable g\u{1}.txt",
                "h.txt"
            ]
        );
        let Ok(Listed::UnreadableKey { reason, .. }) = &entries[1] else {
            panic!("{entries:?}");
        };
        assert!(reason.contains(".."), "{reason}");
    }

    #[tokio::test]
    async fn a_store_that_ignores_start_after_ends_in_an_error_not_a_loop() {
        let mut bucket = FakeBucket::new(&["a.txt", "b/../c.txt", "d.txt"], 10);
        Arc::get_mut(&mut bucket).unwrap().honours_start_after = false;
        let entries = listing(bucket, None).await;
        let summary = summary(&entries);
        assert_eq!(summary[..2], ["a.txt", "unreadable b/../c.txt"]);
        assert_eq!(summary.len(), 3, "{summary:?}");
        assert!(summary[2].contains("start-after"), "{summary:?}");
    }

    #[tokio::test]
    async fn other_errors_end_the_listing() {
        struct Broken;
        #[async_trait]
        impl PaginatedListStore for Broken {
            async fn list_paginated(
                &self,
                _prefix: Option<&str>,
                _options: PaginatedListOptions,
            ) -> object_store::Result<PaginatedListResult> {
                Err(object_store::Error::NotFound {
                    path: "bucket".into(),
                    source: "NoSuchBucket".into(),
                })
            }
        }
        let entries: Vec<_> = list_pages(Arc::new(Broken), None).collect().await;
        assert_eq!(entries.len(), 1);
        assert!(entries[0].as_ref().unwrap_err().contains("NoSuchBucket"));
    }
}
