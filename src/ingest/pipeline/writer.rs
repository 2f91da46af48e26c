//! The writer: embed, write to every store, commit, and only then let the manifest
//! remember what the commit made durable.
//!
//! It also remembers failed objects, so the next runs do not read them again until they
//! change. An embedding call refused as invalid (an input too long for the provider) costs
//! the objects whose chunks it refuses, found one chunk at a time, not the run: the next
//! call would refuse them again. Any other embedding failure (transport, credentials,
//! throttling) would fail for every object, so it still stops the run.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use super::producer::{ListingCounters, ObjectResult, ProcessedObject, ProducerEvent};
use super::scope::{Disposition, RunScope};
use super::source::BucketSource;
use super::{IndexJob, IndexProgress, IndexReport, ObjectIssue};
use crate::config::RecordIdScope;
use crate::document::{Chunk, EmbeddedChunk};
use crate::embed::{Embedder, Purpose};
use crate::error::{Error, ErrorKind, Result};
use crate::ingest::doc_ids::DocumentOwners;
use crate::ingest::manifest::{
    Manifest, ManifestEntry, ManifestHome, WriteCancel, write_atomically_unless_called_off,
};
use crate::stores::SearchBackend;

/// How many object keys go into one `delete_objects` call for removed objects.
const DELETE_BATCH_KEYS: usize = 1000;

struct PreparedObject {
    object_key: String,
    entry: ManifestEntry,
    chunks: Vec<Chunk>,
}

pub(super) struct IndexRun<P> {
    stores: Vec<Arc<dyn SearchBackend>>,
    embedder: Option<Arc<dyn Embedder>>,
    manifest_path: PathBuf,
    /// Where the manifest lives instead of `manifest_path`, when it is shared.
    shared_manifest: Option<Arc<dyn ManifestHome>>,
    embed_batch_size: usize,
    commit_every_chunks: usize,
    /// The manifest as committed: it never lists more than the stores durably hold.
    manifest: Manifest,
    /// Prepared objects waiting for a full embedding batch.
    batch: Vec<PreparedObject>,
    batch_chunk_count: usize,
    /// Objects whose store writes are under way; dropped from the manifest if they fail.
    writing_keys: Vec<String>,
    /// Written to the stores, waiting for the commit that lets the manifest record them.
    unconfirmed: Vec<(String, ManifestEntry)>,
    unconfirmed_chunk_count: usize,
    /// Deleted from the stores, waiting for the commit that lets the manifest forget them.
    unconfirmed_removals: Vec<String>,
    /// New etags over unchanged content: no store write needed.
    etag_refreshes: Vec<(String, ManifestEntry)>,
    /// Failed objects to remember, with no chunks in the stores (or none after the
    /// deletes already under way): recorded at the next commit.
    failure_records: Vec<(String, ManifestEntry)>,
    /// Failed objects that still have chunks from an earlier run: recorded once
    /// [`Self::finish`] deleted those.
    stale_failure_records: Vec<(String, ManifestEntry)>,
    stores_need_commit: bool,
    seen_keys: HashSet<String>,
    /// Indexed before, unusable now (too large, broken): their old chunks must go.
    stale_keys: Vec<String>,
    listing_finished: bool,
    /// See [`BucketSource::key_prefix`]; the manifest's keys are short, the stores' qualified.
    key_prefix: String,
    /// Which manifest keys this run's listing can judge, and by which globs.
    scope: RunScope,
    /// With `record_ids = "global"`: which object holds each document id.
    owners: Option<DocumentOwners>,
    prune: bool,
    counters: ListingCounters,
    started: Instant,
    report: IndexReport,
    on_progress: P,
}

impl<P: FnMut(&IndexProgress) + Send> IndexRun<P> {
    /// Manifest keys as the stores know them.
    fn qualified(&self, keys: &[String]) -> Vec<String> {
        keys.iter()
            .map(|key| format!("{}{key}", self.key_prefix))
            .collect()
    }

    pub(super) fn new(
        job: &IndexJob,
        manifest: Manifest,
        source: &BucketSource,
        counters: ListingCounters,
        started: Instant,
        on_progress: P,
    ) -> Self {
        let owners = (job.record_ids == RecordIdScope::Global)
            .then(|| DocumentOwners::from_manifest(&manifest));
        Self {
            stores: job.stores.clone(),
            embedder: job.embedder_in_use(),
            manifest_path: job.manifest_path.clone(),
            shared_manifest: job.shared_manifest.clone(),
            embed_batch_size: job.embed_batch_size,
            commit_every_chunks: job.commit_every_chunks,
            manifest,
            batch: Vec::new(),
            batch_chunk_count: 0,
            writing_keys: Vec::new(),
            unconfirmed: Vec::new(),
            unconfirmed_chunk_count: 0,
            unconfirmed_removals: Vec::new(),
            etag_refreshes: Vec::new(),
            failure_records: Vec::new(),
            stale_failure_records: Vec::new(),
            stores_need_commit: false,
            seen_keys: HashSet::new(),
            stale_keys: Vec::new(),
            listing_finished: false,
            key_prefix: source.key_prefix.clone(),
            scope: source.scope.clone(),
            owners,
            prune: job.prune,
            counters,
            started,
            report: IndexReport {
                location: source.location.clone(),
                ..IndexReport::default()
            },
            on_progress,
        }
    }

    pub(super) async fn consume(
        &mut self,
        mut receiver: mpsc::Receiver<ProducerEvent>,
    ) -> Result<()> {
        while let Some(event) = receiver.recv().await {
            match event {
                ProducerEvent::Object(object) => self.handle_object(*object).await?,
                ProducerEvent::ListingFailed(reason) => {
                    tracing::warn!(%reason, "listing the bucket failed");
                    self.report.listing_errors.push(reason);
                }
                ProducerEvent::ListingFinished => self.listing_finished = true,
            }
            self.report_progress();
        }
        self.finish().await
    }

    async fn handle_object(&mut self, object: ProcessedObject) -> Result<()> {
        let ProcessedObject {
            object_key,
            bytes_read,
            result,
        } = object;
        self.seen_keys.insert(object_key.clone());
        if let Some(bytes_read) = bytes_read {
            self.report.progress.fetched += 1;
            self.report.progress.bytes_read += bytes_read;
        }
        let was_indexed = self.manifest.objects.contains_key(&object_key);
        match result {
            ObjectResult::Unchanged { refreshed_entry } => {
                self.report.progress.unchanged += 1;
                if let Some(entry) = refreshed_entry {
                    self.etag_refreshes.push((object_key, entry));
                }
            }
            ObjectResult::Skipped { reason } => {
                self.report.progress.skipped += 1;
                self.report.skips.push(ObjectIssue {
                    object_key: object_key.clone(),
                    reason,
                });
                if was_indexed {
                    self.stale_keys.push(object_key);
                }
            }
            ObjectResult::Failed {
                reason,
                content_problem,
                record,
            } => {
                tracing::warn!(%object_key, %reason, "object not indexed");
                self.report.progress.failed += 1;
                self.report.failures.push(ObjectIssue {
                    object_key: object_key.clone(),
                    reason,
                });
                // Unreadable now is not gone: keep the old chunks until the content is known.
                if content_problem && was_indexed {
                    self.stale_keys.push(object_key.clone());
                    if let Some(entry) = record {
                        self.stale_failure_records.push((object_key, *entry));
                    }
                } else if let Some(entry) = record {
                    self.failure_records.push((object_key, *entry));
                }
            }
            ObjectResult::KnownBad { reason } => {
                self.report.progress.known_bad += 1;
                self.report.known_bad.push(ObjectIssue {
                    object_key,
                    reason: format!(
                        "failed before as it is now, not read again until it changes: {reason}"
                    ),
                });
            }
            ObjectResult::Prepared {
                mut entry,
                chunks,
                mut record_problems,
                record_problems_left_out,
            } => {
                let chunks =
                    self.keep_unclaimed(&object_key, &mut entry, &mut record_problems, chunks);
                self.report.progress.record_problems +=
                    record_problems.len() as u64 + record_problems_left_out;
                self.report.record_problems.extend(record_problems);
                self.report.record_problems.left_out += record_problems_left_out;
                self.batch_chunk_count += chunks.len();
                self.batch.push(PreparedObject {
                    object_key,
                    entry,
                    chunks,
                });
                if self.batch_chunk_count >= self.embed_batch_size {
                    self.flush_batch().await?;
                }
            }
        }
        Ok(())
    }

    /// With global record ids, API documents (`api/<index>/<id>`) keep their ids: a record
    /// whose raw id is one is reported, never written over the API document's chunks.
    pub(super) fn reserve_api_documents(&mut self, object_keys: Vec<String>) {
        if let Some(owners) = &mut self.owners {
            for object_key in object_keys {
                owners.reserve(object_key.clone(), object_key);
            }
        }
    }

    /// With global record ids, leaves out the documents another object already holds
    /// (reported as record problems, never overwritten) and drops them from the entry.
    fn keep_unclaimed(
        &mut self,
        object_key: &str,
        entry: &mut ManifestEntry,
        record_problems: &mut Vec<ObjectIssue>,
        chunks: Vec<Chunk>,
    ) -> Vec<Chunk> {
        let Some(owners) = &mut self.owners else {
            return chunks;
        };
        let previous_chunk_ids = self
            .manifest
            .objects
            .get(object_key)
            .map_or(&[][..], |previous| &previous.chunk_ids[..]);
        let (kept, collisions) = owners.claim(object_key, previous_chunk_ids, chunks);
        if collisions.is_empty() {
            return kept;
        }
        for collision in collisions {
            tracing::warn!(%object_key, doc_id = %collision.doc_id, owner = %collision.owner, "record id already used");
            record_problems.push(ObjectIssue {
                object_key: object_key.to_owned(),
                reason: format!(
                    "record id {:?} is already used by {} (record_ids = \"global\"): not indexed, the first keeps it",
                    collision.doc_id, collision.owner
                ),
            });
        }
        entry.chunk_ids = kept.iter().map(|chunk| chunk.chunk_id.clone()).collect();
        kept
    }

    /// Delete the batch's objects from every store (whatever an earlier or interrupted run
    /// left), then embed and upsert their chunks.
    async fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let objects = std::mem::take(&mut self.batch);
        self.batch_chunk_count = 0;
        self.writing_keys = objects
            .iter()
            .map(|object| object.object_key.clone())
            .collect();
        self.stores_need_commit = true;
        let writing_keys = self.qualified(&self.writing_keys);
        on_every_store(&self.stores, "removing previous chunks", |store| {
            store.delete_objects(&writing_keys)
        })
        .await?;
        let mut entries = Vec::with_capacity(objects.len());
        // Each chunk with the index of its object in `entries`.
        let mut chunks = Vec::new();
        for (object_index, object) in objects.into_iter().enumerate() {
            entries.push((object.object_key, object.entry));
            chunks.extend(object.chunks.into_iter().map(|chunk| (object_index, chunk)));
        }
        // Objects whose chunks the embedder refused, with why.
        let mut refused: BTreeMap<usize, String> = BTreeMap::new();
        let mut chunk_count = 0;
        let mut remaining = chunks.into_iter();
        loop {
            let group: Vec<(usize, Chunk)> = remaining
                .by_ref()
                .filter(|(object_index, _)| !refused.contains_key(object_index))
                .take(self.embed_batch_size)
                .collect();
            if group.is_empty() {
                break;
            }
            let written = self.write_group(group, &mut refused).await? as u64;
            chunk_count += written as usize;
            self.report.progress.chunks_written += written;
            self.report_progress();
        }
        if !refused.is_empty() {
            self.drop_refused_objects(&mut entries, refused).await?;
        }
        self.report.progress.indexed += entries.len() as u64;
        self.unconfirmed.extend(entries);
        self.unconfirmed_chunk_count += chunk_count;
        self.writing_keys.clear();
        if self.unconfirmed_chunk_count >= self.commit_every_chunks {
            self.commit_and_save().await?;
        }
        Ok(())
    }

    /// Removes the chunks of refused objects that earlier groups wrote, and reports and
    /// remembers them as failed instead of indexed. Their old chunks went with the
    /// deletes at the start of the batch, so they are recorded at the next commit.
    async fn drop_refused_objects(
        &mut self,
        entries: &mut Vec<(String, ManifestEntry)>,
        refused: BTreeMap<usize, String>,
    ) -> Result<()> {
        let refused_keys: Vec<String> = refused
            .keys()
            .map(|&object_index| entries[object_index].0.clone())
            .collect();
        let qualified_keys = self.qualified(&refused_keys);
        on_every_store(&self.stores, "removing refused objects", |store| {
            store.delete_objects(&qualified_keys)
        })
        .await?;
        for (object_index, reason) in refused.into_iter().rev() {
            let (object_key, entry) = entries.remove(object_index);
            // Not written: its global ids are free for the objects after it.
            if let Some(owners) = &mut self.owners {
                owners.release(&object_key, &entry.chunk_ids);
            }
            tracing::warn!(%object_key, %reason, "object not indexed");
            self.report.progress.failed += 1;
            self.report.failures.push(ObjectIssue {
                object_key: object_key.clone(),
                reason: reason.clone(),
            });
            let record =
                ManifestEntry::failed(entry.etag, entry.size, entry.sha256, entry.settings, reason);
            self.failure_records.push((object_key, record));
        }
        Ok(())
    }

    /// Embeds and upserts one group; returns how many chunks were written. When the
    /// embedder refuses the group as invalid, each chunk is embedded alone to find the
    /// objects it refuses (added to `refused`); the others are written.
    async fn write_group(
        &self,
        group: Vec<(usize, Chunk)>,
        refused: &mut BTreeMap<usize, String>,
    ) -> Result<usize> {
        let texts: Vec<String> = group
            .iter()
            .map(|(_, chunk)| embedding_text(chunk))
            .collect();
        let vectors = match self.embed_texts(&texts).await {
            Ok(vectors) => vectors,
            Err(error) if error.kind == ErrorKind::InvalidArgument => {
                return self.write_one_at_a_time(group, texts, refused).await;
            }
            Err(error) => return Err(error),
        };
        let embedded: Vec<EmbeddedChunk> = group
            .into_iter()
            .zip(vectors)
            .map(|((_, chunk), vector)| EmbeddedChunk { chunk, vector })
            .collect();
        self.upsert(&embedded).await?;
        Ok(embedded.len())
    }

    async fn write_one_at_a_time(
        &self,
        group: Vec<(usize, Chunk)>,
        texts: Vec<String>,
        refused: &mut BTreeMap<usize, String>,
    ) -> Result<usize> {
        let mut embedded = Vec::new();
        let mut owners = Vec::new();
        for ((object_index, chunk), text) in group.into_iter().zip(texts) {
            if refused.contains_key(&object_index) {
                continue;
            }
            match self.embed_texts(std::slice::from_ref(&text)).await {
                Ok(mut vectors) => {
                    owners.push(object_index);
                    embedded.push(EmbeddedChunk {
                        chunk,
                        vector: vectors.remove(0),
                    });
                }
                Err(error) if error.kind == ErrorKind::InvalidArgument => {
                    refused.insert(
                        object_index,
                        format!(
                            "the embedder refused chunk {}: {}",
                            chunk.ordinal, error.message
                        ),
                    );
                }
                Err(error) => return Err(error),
            }
        }
        // A chunk embedded before its object's refusal is not written.
        let embedded: Vec<EmbeddedChunk> = embedded
            .into_iter()
            .zip(owners)
            .filter(|(_, object_index)| !refused.contains_key(object_index))
            .map(|(chunk, _)| chunk)
            .collect();
        self.upsert(&embedded).await?;
        Ok(embedded.len())
    }

    async fn upsert(&self, embedded: &[EmbeddedChunk]) -> Result<()> {
        if embedded.is_empty() {
            return Ok(());
        }
        on_every_store(&self.stores, "writing chunks", |store| {
            store.upsert(embedded)
        })
        .await
    }

    /// One vector per text; empty vectors when only lexical stores are written.
    async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        embed_texts(self.embedder.as_ref(), texts).await
    }

    /// Commit every store, then let the manifest record what the commit made durable.
    async fn commit_and_save(&mut self) -> Result<()> {
        if self.stores_need_commit {
            on_every_store(&self.stores, "committing", |store| store.commit()).await?;
            self.stores_need_commit = false;
        }
        let manifest_changed = !self.unconfirmed.is_empty()
            || !self.unconfirmed_removals.is_empty()
            || !self.etag_refreshes.is_empty()
            || !self.failure_records.is_empty();
        for (object_key, entry) in self.unconfirmed.drain(..) {
            self.manifest.objects.insert(object_key, entry);
        }
        for object_key in self.unconfirmed_removals.drain(..) {
            self.manifest.objects.remove(&object_key);
        }
        for (object_key, entry) in self.etag_refreshes.drain(..) {
            self.manifest.objects.insert(object_key, entry);
        }
        // After the removals: a failed object with old chunks is removed, then remembered.
        for (object_key, entry) in self.failure_records.drain(..) {
            self.manifest.objects.insert(object_key, entry);
        }
        self.unconfirmed_chunk_count = 0;
        if !manifest_changed {
            return Ok(());
        }
        self.save_manifest().await
    }

    /// The write runs on a blocking thread, which outlives this future if the run is
    /// dropped; the guard then calls the write off, so a dropped run's save either landed
    /// before the drop or never does (nor after the next run started on this manifest).
    ///
    /// A shared manifest is saved by fenced scripts on the shared connection: one sent
    /// before a drop lands before the lease's release, so before any next run reads it.
    async fn save_manifest(&self) -> Result<()> {
        if let Some(shared) = &self.shared_manifest {
            return shared.save(&self.manifest).await;
        }
        save_unless_dropped(self.manifest_path.clone(), self.manifest.to_json()?).await
    }

    /// Flush the last batch, remove objects gone from the bucket (only when the listing is
    /// known complete), commit and save.
    async fn finish(&mut self) -> Result<()> {
        self.flush_batch().await?;
        let listing_complete = self.listing_finished && self.report.listing_errors.is_empty();
        if !self.listing_finished {
            self.report
                .listing_errors
                .push("the listing stopped before its end".to_owned());
        }
        let absent_keys = if listing_complete {
            self.absent_keys_to_remove()
        } else {
            Vec::new()
        };
        let mut removals = std::mem::take(&mut self.stale_keys);
        removals.extend(absent_keys.iter().cloned());
        for keys in removals.chunks(DELETE_BATCH_KEYS) {
            self.stores_need_commit = true;
            let keys = &self.qualified(keys);
            on_every_store(&self.stores, "removing deleted objects", |store| {
                store.delete_objects(keys)
            })
            .await?;
        }
        self.unconfirmed_removals.extend(removals);
        self.failure_records.append(&mut self.stale_failure_records);
        self.commit_and_save().await?;
        self.report.progress.deleted += absent_keys.len() as u64 - self.report.progress.pruned;
        self.report_progress();
        Ok(())
    }

    /// Manifest keys of this run's scope that its complete listing did not give: gone, or
    /// left out by the operator's globs (removed), or left out by the request's (removed
    /// only with `prune`, and each reported). An empty listing of a URL with indexed
    /// objects (an unmounted folder, a typo) removes nothing without `prune`.
    fn absent_keys_to_remove(&mut self) -> Vec<String> {
        let mut remove = Vec::new();
        let mut pruned = Vec::new();
        for object_key in self.manifest.objects.keys() {
            if self.seen_keys.contains(object_key) {
                continue;
            }
            match self.scope.disposition(object_key) {
                Disposition::OutOfScope => {}
                Disposition::OperatorExcluded | Disposition::Wanted => {
                    remove.push(object_key.clone());
                }
                Disposition::RequestExcluded if self.prune => pruned.push(object_key.clone()),
                Disposition::RequestExcluded => self.report.progress.kept_not_pruned += 1,
            }
        }
        let listing_was_empty = self.counters.listed.load(Ordering::Relaxed) == 0
            && self.counters.excluded.load(Ordering::Relaxed) == 0;
        if listing_was_empty && !remove.is_empty() && !self.prune {
            tracing::warn!(
                kept = remove.len(),
                "the listing was empty: indexed objects kept (prune deletes them)"
            );
            self.report.not_pruned.push(format!(
                "the listing was empty, so the {} objects indexed from it were kept; index again with prune to delete them",
                remove.len()
            ));
            self.report.progress.kept_not_pruned += remove.len() as u64;
            remove.clear();
        }
        self.report.progress.pruned += pruned.len() as u64;
        self.report
            .pruned
            .extend(pruned.iter().map(|object_key| ObjectIssue {
                object_key: object_key.clone(),
                reason: "left out by the request's globs; pruned".to_owned(),
            }));
        remove.extend(pruned);
        remove
    }

    /// After a failed write: the objects being written or written but not committed must be
    /// redone by the next run, so the manifest must not claim their old content either.
    pub(super) async fn forget_unconfirmed_objects(&mut self) {
        let mut forgotten = false;
        let unconfirmed_keys = self.unconfirmed.drain(..).map(|(object_key, _)| object_key);
        for object_key in self.writing_keys.drain(..).chain(unconfirmed_keys) {
            forgotten |= self.manifest.objects.remove(&object_key).is_some();
        }
        if !forgotten {
            return;
        }
        if let Err(error) = self.save_manifest().await {
            tracing::warn!(%error, "could not save the manifest after a failed write");
        }
    }

    fn report_progress(&mut self) {
        self.report.progress.listed = self.counters.listed.load(Ordering::Relaxed);
        self.report.progress.excluded = self.counters.excluded.load(Ordering::Relaxed);
        self.report.progress.elapsed = self.started.elapsed();
        (self.on_progress)(&self.report.progress);
    }

    pub(super) fn into_report(self) -> IndexReport {
        self.report
    }
}

/// One vector per text from `embedder` (empty vectors without one: lexical stores only).
pub(super) async fn embed_texts(
    embedder: Option<&Arc<dyn Embedder>>,
    texts: &[String],
) -> Result<Vec<Vec<f32>>> {
    let Some(embedder) = embedder else {
        return Ok(vec![Vec::new(); texts.len()]);
    };
    let vectors = embedder
        .embed(texts, Purpose::Document)
        .await
        .map_err(|error| error.context("embedding chunks"))?;
    if vectors.len() != texts.len() {
        return Err(Error::internal(format!(
            "embedder returned {} vectors for {} chunks",
            vectors.len(),
            texts.len()
        )));
    }
    Ok(vectors)
}

/// Writes `contents` to `path` atomically on a blocking thread, which outlives this
/// future if it is dropped; the guard then calls the write off, so a dropped caller's
/// save either landed before the drop or never does.
pub(super) async fn save_unless_dropped(path: PathBuf, contents: Vec<u8>) -> Result<()> {
    let cancel = WriteCancel::default();
    let _call_off_if_dropped = cancel.call_off_on_drop();
    tokio::task::spawn_blocking(move || {
        write_atomically_unless_called_off(&path, &contents, &cancel)
    })
    .await
    .map_err(|error| Error::internal(format!("saving the manifest: {error}")))?
    .map(|_written| ())
}

/// Run one operation on every store at once; an error names the store and what failed.
pub(super) async fn on_every_store<'a, Operation, Call>(
    stores: &'a [Arc<dyn SearchBackend>],
    what: &str,
    operation: Operation,
) -> Result<()>
where
    Operation: Fn(&'a dyn SearchBackend) -> Call,
    Call: std::future::Future<Output = Result<()>> + 'a,
{
    let calls = stores.iter().map(|store| {
        let call = operation(store.as_ref());
        async move {
            call.await
                .map_err(|error| error.context(format!("store {}: {what}", store.describe().id)))
        }
    });
    futures::future::try_join_all(calls).await.map(|_| ())
}

/// The text a chunk is embedded from (the same rule `calibrate` samples by).
pub(super) fn embedding_text(chunk: &Chunk) -> String {
    crate::document::embedding_text(&chunk.title, &chunk.text)
}
