//! The embedded lexical store: a tantivy index on local disk, searched with BM25.
//!
//! Title and text are stored for hits, and searched as one field, `body`, holding
//! the title then the text. Measured on BEIR SciFact (nDCG@10, one chunk per
//! abstract): one concatenated field 0.686, title and text as two summed BM25
//! fields 0.671, text alone 0.677. The concatenation is also what Pyserini's
//! "flat" BEIR baseline (0.679) does: a title is short, so as its own field its
//! length normalization inflates title matches.
//!
//! `body` is analysed with tantivy's built-in `en_stem` tokenizer (split on
//! non-alphanumerics, drop tokens over 40 bytes, lowercase, English Snowball stem).
//! Using a built-in analyzer means the index reopens without any tokenizer
//! registration and stays readable by plain tantivy tools.
//!
//! Queries never go through tantivy's query language: user text is run through the
//! same analyzer plus Lucene's English stop list, and the resulting terms are OR-ed
//! as BM25 term clauses (removing stop words from queries: 0.686 against 0.685
//! with them, and less work). Repeated query terms count more, as in
//! Lucene's bag-of-words queries. So no input can cause a parse error, and an empty
//! or all-stopword query matches nothing.
//!
//! Write semantics: upserts and deletes are buffered in the tantivy writer and only
//! become visible to searches and to [`SearchBackend::count`] after
//! [`SearchBackend::commit`]. Writes that were never committed are lost when the
//! process stops: a reopened store shows the last commit exactly.

mod exhaustive;
mod stored;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use std::ops::Bound;
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::indexer::LogMergePolicy;

use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, Occur, Query, RangeQuery,
    RegexQuery, TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, STORED, STRING, Schema, TantivyDocument,
    TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Term};

use self::exhaustive::ExhaustiveTopDocs;
use self::stored::StoredFields;
use crate::document::{CharSpan, Chunk, ChunkMetadata, EmbeddedChunk, Hit};
use crate::error::{Error, Result};
use crate::stores::filter::{Condition, Filter, FilterField, Pushdown};
use crate::stores::{SearchBackend, SourceInfo, StoreQuery};

/// An index of up to this many documents is searched on the caller's thread and
/// scored exhaustively ([`exhaustive`]): both bound the work by the index's size. On
/// SciFact (7.8k chunks, 100 candidates) exhaustive scoring took about an eighth off
/// the server's CPU per cached search; at 200k chunks block-max WAND's top 10 was
/// 2.6x faster at the median (`benches/dense_scale.rs --bm25`).
const SMALL_INDEX_DOCS: u64 = 16_384;

/// Bytes of a doc store block in new indexes (tantivy's default is 16 KiB). Every search
/// reads the stored text of its candidates (100 by default), scattered over the store,
/// and a read that misses the cache decompresses a whole block: a quarter of the block
/// is a quarter of that work (decompressing and zeroing 16 KiB blocks was a tenth of the
/// CPU of a cached SciFact search load), for a little less compression.
const DOC_STORE_BLOCK_BYTES: usize = 4096;

/// Decompressed doc store bytes kept per segment, whatever the index's block size (an
/// index keeps the block size it was created with).
const DOC_STORE_CACHE_BYTES: usize = 8 << 20;

/// Tokenizer for title and text: tantivy's built-in English stemming analyzer.
const STEMMING_TOKENIZER_NAME: &str = "en_stem";

/// Memory the tantivy writer may buffer before flushing a segment. 64 MB keeps
/// segments large enough for bulk indexing without holding much memory per store.
const WRITER_MEMORY_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// Segments merge once two are within 4x of each other in size, so an index keeps
/// about one segment per 4x step of size (a few at 1M chunks) instead of up to seven
/// per 1.7x step (tantivy's default). Every search visits every segment and starts
/// its top-k pruning over in each: at 1M chunks six segments cost p99 25.7 ms where
/// one costs 18.9 ms (`benches/dense_scale.rs --bm25`). Merges rewrite a chunk about
/// log2(chunks / first segment) times, in tantivy's background merge threads.
const MIN_SEGMENTS_IN_MERGE: usize = 2;
const MERGE_LEVEL_LOG2_SIZE: f64 = 2.0;

/// A query longer than this many distinct terms is cut: beyond it the query is a
/// document, not a question, and every extra clause only costs time.
const MAX_DISTINCT_QUERY_TERMS: usize = 1024;

/// The fields of the index, resolved once.
#[derive(Debug, Clone, Copy)]
struct Bm25Fields {
    chunk_id: Field,
    doc_id: Field,
    object_key: Field,
    title: Field,
    text: Field,
    ordinal: Field,
    cloud: Field,
    region: Field,
    /// Title and text together: the only field searched.
    body: Field,
    /// Filter-only fields, absent from indexes written before chunks kept metadata:
    /// there no chunk matches a condition on them.
    metadata: Option<MetadataFields>,
    /// The chunk's char span in its document (stored u64s), absent from indexes written
    /// before chunks kept it: their hits have no span.
    span: Option<(Field, Field)>,
}

/// Indexed, never stored: hits do not carry metadata, filters only test it.
#[derive(Debug, Clone, Copy)]
struct MetadataFields {
    content_type: Field,
    size_bytes: Field,
    last_modified: Field,
    /// One `name<US>value` term per user metadata field (US = the unit separator, which
    /// field names cannot hold).
    user_pairs: Field,
}

const METADATA_PAIR_SEPARATOR: char = '\u{1f}';

/// The chunk's namespace is kept as a pair of this name: no user field can have it (names
/// are plain words), and indexes written since metadata was kept need no new field.
const NAMESPACE_PAIR_NAME: &str = "@namespace";

fn metadata_pair(name: &str, value: &str) -> String {
    format!("{name}{METADATA_PAIR_SEPARATOR}{value}")
}

impl Bm25Fields {
    /// The fields of an existing index's schema; the metadata ones may be missing.
    fn resolve(schema: &Schema) -> std::result::Result<Self, String> {
        let field = |name: &str| {
            schema
                .get_field(name)
                .map_err(|_| format!("it has no {name:?} field"))
        };
        let optional = |name: &str| schema.get_field(name).ok();
        let metadata = match (
            optional("content_type"),
            optional("size_bytes"),
            optional("last_modified"),
            optional("metadata_pairs"),
        ) {
            (Some(content_type), Some(size_bytes), Some(last_modified), Some(user_pairs)) => {
                Some(MetadataFields {
                    content_type,
                    size_bytes,
                    last_modified,
                    user_pairs,
                })
            }
            _ => None,
        };
        let span = optional("start_char").zip(optional("end_char"));
        Ok(Self {
            span,
            chunk_id: field("chunk_id")?,
            doc_id: field("doc_id")?,
            object_key: field("object_key")?,
            title: field("title")?,
            text: field("text")?,
            ordinal: field("ordinal")?,
            cloud: field("cloud")?,
            region: field("region")?,
            body: field("body")?,
            metadata,
        })
    }

    fn build_schema() -> (Schema, Self) {
        let mut schema_builder = Schema::builder();
        // Term frequencies are needed for BM25; positions are not, since queries
        // are bags of words, so they are not written.
        let stemmed_text_indexing = TextFieldIndexing::default()
            .set_tokenizer(STEMMING_TOKENIZER_NAME)
            .set_index_option(IndexRecordOption::WithFreqs);
        let searched_not_stored =
            TextOptions::default().set_indexing_options(stemmed_text_indexing);
        // Title and text are only returned, never searched on their own: indexing
        // them apart from `body` would double the index for no query that uses it.
        let stored_not_searched = TextOptions::default().set_stored();
        let chunk_id = schema_builder.add_text_field("chunk_id", STRING | STORED);
        let doc_id = schema_builder.add_text_field("doc_id", STRING | STORED);
        let object_key = schema_builder.add_text_field("object_key", STRING | STORED);
        let title = schema_builder.add_text_field("title", stored_not_searched.clone());
        let text = schema_builder.add_text_field("text", stored_not_searched);
        let ordinal =
            schema_builder.add_u64_field("ordinal", NumericOptions::default().set_stored());
        let cloud = schema_builder.add_text_field("cloud", STRING | STORED);
        let region = schema_builder.add_text_field("region", STRING | STORED);
        let body = schema_builder.add_text_field("body", searched_not_stored);
        // Fast as well as indexed: tantivy runs numeric ranges on fast fields.
        let filter_number = NumericOptions::default().set_indexed().set_fast();
        let metadata = MetadataFields {
            content_type: schema_builder.add_text_field("content_type", STRING),
            size_bytes: schema_builder.add_i64_field("size_bytes", filter_number.clone()),
            last_modified: schema_builder.add_i64_field("last_modified", filter_number),
            user_pairs: schema_builder.add_text_field("metadata_pairs", STRING),
        };
        let stored_number = NumericOptions::default().set_stored();
        let span = Some((
            schema_builder.add_u64_field("start_char", stored_number.clone()),
            schema_builder.add_u64_field("end_char", stored_number),
        ));
        let fields = Self {
            span,
            chunk_id,
            doc_id,
            object_key,
            title,
            text,
            ordinal,
            cloud,
            region,
            body,
            metadata: Some(metadata),
        };
        (schema_builder.build(), fields)
    }
}

/// A BM25 store over a tantivy index in one directory.
pub struct LocalBm25Store {
    info: SourceInfo,
    inner: Arc<Bm25Inner>,
}

struct Bm25Inner {
    index: Index,
    reader: IndexReader,
    fields: Bm25Fields,
    /// Created on the first write, so a process that only searches (the CLI beside
    /// a running server) never takes tantivy's writer lock.
    writer: Mutex<Option<IndexWriter<TantivyDocument>>>,
    /// `en_stem` plus the English stop list, for queries only.
    query_analyzer: TextAnalyzer,
    directory: PathBuf,
}

impl LocalBm25Store {
    /// Open the index in `directory`, creating the directory and an empty index if
    /// there is none yet.
    pub fn open(info: SourceInfo, directory: &Path) -> Result<Self> {
        std::fs::create_dir_all(directory).map_err(|error| {
            Error::from(error).context(format!(
                "cannot create bm25 index directory {}",
                directory.display()
            ))
        })?;
        let (schema, _) = Bm25Fields::build_schema();
        let mmap_directory = MmapDirectory::open(directory).map_err(|error| {
            Error::internal(format!(
                "cannot open bm25 index directory {}: {error}",
                directory.display()
            ))
        })?;
        let exists = Index::exists(&mmap_directory).map_err(|error| {
            Error::internal(format!(
                "cannot open bm25 index at {}: {error}",
                directory.display()
            ))
        })?;
        // An existing index opens with the schema it was written with, so one written
        // before the metadata fields still answers (unfiltered, and on the old fields).
        let opened = if exists {
            Index::open(mmap_directory)
        } else {
            let settings = tantivy::IndexSettings {
                docstore_blocksize: DOC_STORE_BLOCK_BYTES,
                ..tantivy::IndexSettings::default()
            };
            Index::create(mmap_directory, schema, settings)
        };
        let index = opened.map_err(|error| {
            Error::internal(format!(
                "cannot open bm25 index at {}: {error}",
                directory.display()
            ))
        })?;
        let fields = Bm25Fields::resolve(&index.schema()).map_err(|why| {
            Error::config(format!(
                "the bm25 index at {} was built with a different schema ({why}); \
                 remove it and reindex",
                directory.display()
            ))
        })?;
        // Reloaded by hand after each commit, so searches see exactly the
        // committed state and never a half-applied one.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .doc_store_cache_num_blocks(
                DOC_STORE_CACHE_BYTES / index.settings().docstore_blocksize.max(1),
            )
            .try_into()
            .map_err(|error| {
                Error::internal(format!(
                    "cannot open bm25 index reader at {}: {error}",
                    directory.display()
                ))
            })?;
        let inner = Bm25Inner {
            index,
            reader,
            fields,
            writer: Mutex::new(None),
            query_analyzer: build_query_analyzer(),
            directory: directory.to_path_buf(),
        };
        Ok(Self {
            info,
            inner: Arc::new(inner),
        })
    }

    /// Where the index lives.
    pub fn directory(&self) -> &Path {
        &self.inner.directory
    }

    /// Segments of the committed index: each search visits every one.
    pub fn segment_count(&self) -> usize {
        self.inner.reader.searcher().segment_readers().len()
    }
}

impl Drop for Bm25Inner {
    /// Let merges the last commits started finish: tantivy's writer cancels them when
    /// dropped, so a bulk indexing run that exits right after its last commit would
    /// leave every small segment it flushed, and each search visits every segment.
    fn drop(&mut self) {
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(writer) = writer
            && let Err(error) = writer.wait_merging_threads()
        {
            tracing::warn!(directory = %self.directory.display(), %error, "bm25 segment merges did not finish");
        }
    }
}

/// Same steps as tantivy's `en_stem`, with Lucene's English stop words removed
/// before stemming: stop words carry almost no BM25 weight but still cost a
/// posting-list scan each, and a query made only of them should match nothing.
fn build_query_analyzer() -> TextAnalyzer {
    let builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .dynamic();
    let builder = match StopWordFilter::new(Language::English) {
        Some(stop_word_filter) => builder.filter_dynamic(stop_word_filter),
        None => builder,
    };
    builder
        .filter_dynamic(Stemmer::new(Language::English))
        .build()
}

impl Bm25Inner {
    /// Distinct analysed query terms with how often each occurs, in first-seen order.
    fn query_terms(&self, query_text: &str) -> Vec<(String, u32)> {
        let mut analyzer = self.query_analyzer.clone();
        let mut token_stream = analyzer.token_stream(query_text);
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut terms_in_order: Vec<(String, u32)> = Vec::new();
        while token_stream.advance() {
            let token_text = &token_stream.token().text;
            if token_text.is_empty() {
                continue;
            }
            if let Some(&position) = counts.get(token_text.as_str()) {
                terms_in_order[position].1 = terms_in_order[position].1.saturating_add(1);
                continue;
            }
            if terms_in_order.len() >= MAX_DISTINCT_QUERY_TERMS {
                continue;
            }
            counts.insert(token_text.clone(), terms_in_order.len());
            terms_in_order.push((token_text.clone(), 1));
        }
        terms_in_order
    }

    /// One BM25 clause per distinct term, summed; a term that occurs twice in the
    /// query weighs twice.
    fn build_query(&self, query_terms: &[(String, u32)]) -> BooleanQuery {
        let clauses: Vec<(Occur, Box<dyn Query>)> = query_terms
            .iter()
            .map(|(term_text, occurrences)| {
                let term_query = TermQuery::new(
                    Term::from_field_text(self.fields.body, term_text),
                    IndexRecordOption::WithFreqs,
                );
                let clause: Box<dyn Query> = if *occurrences > 1 {
                    Box::new(BoostQuery::new(Box::new(term_query), *occurrences as f32))
                } else {
                    Box::new(term_query)
                };
                (Occur::Should, clause)
            })
            .collect();
        BooleanQuery::new(clauses)
    }

    /// The text query, restricted to the chunks `filter` keeps. The restriction scores
    /// nothing, so BM25 scores are the same with and without it.
    fn filtered_query(
        &self,
        text_query: BooleanQuery,
        filter: Option<&Filter>,
    ) -> Result<Box<dyn Query>> {
        let Some(filter) = filter else {
            return Ok(Box::new(text_query));
        };
        let restriction = ConstScoreQuery::new(self.filter_query(filter)?, 0.0);
        Ok(Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(text_query) as Box<dyn Query>),
            (Occur::Must, Box::new(restriction)),
        ])))
    }

    /// The filter as tantivy clauses: terms on the STRING fields, a regex for the object
    /// key prefix, ranges on the fast numeric fields.
    fn filter_query(&self, filter: &Filter) -> Result<Box<dyn Query>> {
        let combine = |children: &[Filter], occur: Occur| -> Result<Box<dyn Query>> {
            let clauses = children
                .iter()
                .map(|child| Ok((occur, self.filter_query(child)?)))
                .collect::<Result<Vec<_>>>()?;
            Ok(Box::new(BooleanQuery::new(clauses)))
        };
        match filter {
            Filter::And(children) => combine(children, Occur::Must),
            Filter::Or(children) => combine(children, Occur::Should),
            Filter::Not(inner) => Ok(Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
                (Occur::MustNot, self.filter_query(inner)?),
            ]))),
            Filter::Condition(Condition::ObjectKeyPrefix(prefix)) => {
                let pattern = format!("{}(?s:.*)", escape_regex(prefix));
                let query = RegexQuery::from_pattern(&pattern, self.fields.object_key)
                    .map_err(|error| Error::internal(format!("object key prefix: {error}")))?;
                Ok(Box::new(query))
            }
            Filter::Condition(Condition::In { field, values }) => {
                let term = |value: &String| -> Option<Term> {
                    let metadata = self.fields.metadata;
                    let (field, text) = match field {
                        FilterField::ObjectKey => (self.fields.object_key, value.clone()),
                        FilterField::Cloud => (self.fields.cloud, value.clone()),
                        FilterField::Region => (self.fields.region, value.clone()),
                        FilterField::DocId => (self.fields.doc_id, value.clone()),
                        FilterField::ContentType => (metadata?.content_type, value.clone()),
                        FilterField::Metadata(name) => {
                            (metadata?.user_pairs, metadata_pair(name, value))
                        }
                        FilterField::Namespace => (
                            metadata?.user_pairs,
                            metadata_pair(NAMESPACE_PAIR_NAME, value),
                        ),
                        // Decided before the query is built; numbers take ranges.
                        FilterField::Source
                        | FilterField::LastModified
                        | FilterField::SizeBytes => return None,
                    };
                    Some(Term::from_field_text(field, &text))
                };
                let clauses: Vec<(Occur, Box<dyn Query>)> = values
                    .iter()
                    .filter_map(term)
                    .map(|term| {
                        let query = TermQuery::new(term, IndexRecordOption::Basic);
                        (Occur::Should, Box::new(query) as Box<dyn Query>)
                    })
                    .collect();
                if clauses.is_empty() {
                    return Ok(Box::new(EmptyQuery));
                }
                Ok(Box::new(BooleanQuery::new(clauses)))
            }
            Filter::Condition(Condition::Range { field, min, max }) => {
                let number_field = match (field, self.fields.metadata) {
                    (FilterField::SizeBytes, Some(metadata)) => metadata.size_bytes,
                    (FilterField::LastModified, Some(metadata)) => metadata.last_modified,
                    _ => return Ok(Box::new(EmptyQuery)),
                };
                let bound = |value: Option<i64>, unbounded: i64| {
                    Bound::Included(Term::from_field_i64(
                        number_field,
                        value.unwrap_or(unbounded),
                    ))
                };
                Ok(Box::new(RangeQuery::new(
                    bound(*min, i64::MIN),
                    bound(*max, i64::MAX),
                )))
            }
        }
    }

    fn search_blocking(
        &self,
        query_text: &str,
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Hit>> {
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let query_terms = self.query_terms(query_text);
        if query_terms.is_empty() {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let document_count = usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX);
        // The collector allocates for its limit: never ask for more than exist.
        let limit = top_k.min(document_count);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let query = self.filtered_query(self.build_query(&query_terms), filter)?;
        let scored_addresses = if searcher.num_docs() <= SMALL_INDEX_DOCS {
            searcher.search(query.as_ref(), &ExhaustiveTopDocs::with_limit(limit))
        } else {
            searcher.search(query.as_ref(), &TopDocs::with_limit(limit).order_by_score())
        }
        .map_err(|error| Error::internal(format!("bm25 search failed: {error}")))?;
        let mut hits = Vec::with_capacity(scored_addresses.len());
        for (score, address) in scored_addresses {
            let mut stored: StoredFields = searcher.doc(address).map_err(|error| {
                Error::internal(format!("cannot read a stored bm25 document: {error}"))
            })?;
            hits.push(Hit {
                chunk_id: stored.take_text(self.fields.chunk_id),
                doc_id: stored.take_text(self.fields.doc_id),
                object_key: stored.take_text(self.fields.object_key),
                title: stored.take_text(self.fields.title).into(),
                text: stored.take_text(self.fields.text).into(),
                cloud: stored.take_text(self.fields.cloud),
                region: stored.take_text(self.fields.region),
                classes: Vec::new(),
                score,
                span: self.stored_span(&stored),
            });
        }
        Ok(hits)
    }

    /// Every `step`-th live document of each segment, up to `n`.
    fn sample_blocking(&self, n: usize) -> Result<Vec<(String, String)>> {
        let searcher = self.reader.searcher();
        let total = usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX);
        let step = (total / n.max(1)).max(1);
        let mut sample = Vec::with_capacity(n.min(total));
        for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
            let store = segment
                .get_store_reader(16)
                .map_err(|error| Error::internal(format!("cannot read the bm25 store: {error}")))?;
            for doc in (0..segment.max_doc()).step_by(step) {
                if sample.len() == n {
                    return Ok(sample);
                }
                if segment.is_deleted(doc) {
                    continue;
                }
                let mut stored: StoredFields = store.get(doc).map_err(|error| {
                    Error::internal(format!("cannot read segment {ordinal}'s document: {error}"))
                })?;
                sample.push((
                    stored.take_text(self.fields.title),
                    stored.take_text(self.fields.text),
                ));
            }
        }
        Ok(sample)
    }

    fn stored_span(&self, stored: &StoredFields) -> Option<CharSpan> {
        let (start, end) = self.fields.span?;
        Some(CharSpan {
            start: stored.number(start)?,
            end: stored.number(end)?,
        })
    }

    /// Run `write` with the writer, creating it on first use.
    fn with_writer<T>(
        &self,
        write: impl FnOnce(&mut IndexWriter<TantivyDocument>) -> Result<T>,
    ) -> Result<T> {
        let mut writer_slot = self
            .writer
            .lock()
            .map_err(|_| Error::internal("the bm25 writer lock is poisoned"))?;
        if writer_slot.is_none() {
            let writer = self
                .index
                .writer(WRITER_MEMORY_BUDGET_BYTES)
                .map_err(|error| {
                    Error::unavailable(format!(
                        "cannot open the bm25 index writer at {}: {error}",
                        self.directory.display()
                    ))
                })?;
            let mut merge_policy = LogMergePolicy::default();
            merge_policy.set_min_num_segments(MIN_SEGMENTS_IN_MERGE);
            merge_policy.set_level_log_size(MERGE_LEVEL_LOG2_SIZE);
            writer.set_merge_policy(Box::new(merge_policy));
            *writer_slot = Some(writer);
        }
        match writer_slot.as_mut() {
            Some(writer) => write(writer),
            None => Err(Error::internal("the bm25 writer is missing")),
        }
    }

    fn upsert_blocking(&self, chunks: &[Chunk]) -> Result<()> {
        self.with_writer(|writer| {
            for chunk in chunks {
                // Delete then add under one writer: tantivy orders operations by
                // opstamp, so the delete removes the old version only, and the
                // last upsert of a chunk id wins.
                writer.delete_term(Term::from_field_text(self.fields.chunk_id, &chunk.chunk_id));
                let mut document = TantivyDocument::default();
                document.add_text(self.fields.chunk_id, &chunk.chunk_id);
                document.add_text(self.fields.doc_id, &chunk.doc_id);
                document.add_text(self.fields.object_key, &chunk.object_key);
                document.add_text(self.fields.title, &chunk.title);
                document.add_text(self.fields.text, &chunk.text);
                document.add_text(self.fields.cloud, &chunk.cloud);
                document.add_text(self.fields.region, &chunk.region);
                document.add_text(self.fields.body, format!("{}\n{}", chunk.title, chunk.text));
                document.add_u64(self.fields.ordinal, u64::from(chunk.ordinal));
                if let (Some((start, end)), Some(span)) = (self.fields.span, chunk.span) {
                    document.add_u64(start, span.start);
                    document.add_u64(end, span.end);
                }
                match self.fields.metadata {
                    Some(fields) => add_metadata(&mut document, fields, &chunk.metadata),
                    // Written without its namespace, the chunk would leave its tenant.
                    None if chunk.metadata.namespace.is_some() => {
                        return Err(Error::invalid(format!(
                            "bm25 index {} predates metadata and cannot keep a chunk's \
                             namespace; index into a new data dir",
                            self.directory.display()
                        )));
                    }
                    None => {}
                }
                writer.add_document(document).map_err(|error| {
                    Error::internal(format!(
                        "cannot add chunk {} to the bm25 index: {error}",
                        chunk.chunk_id
                    ))
                })?;
            }
            Ok(())
        })
    }

    fn delete_objects_blocking(&self, object_keys: &[String]) -> Result<()> {
        self.with_writer(|writer| {
            for object_key in object_keys {
                writer.delete_term(Term::from_field_text(self.fields.object_key, object_key));
            }
            Ok(())
        })
    }

    fn commit_blocking(&self) -> Result<()> {
        let mut writer_slot = self
            .writer
            .lock()
            .map_err(|_| Error::internal("the bm25 writer lock is poisoned"))?;
        // No writer means nothing was written since open: nothing to make durable.
        if let Some(writer) = writer_slot.as_mut() {
            writer
                .commit()
                .map_err(|error| Error::internal(format!("bm25 commit failed: {error}")))?;
        }
        self.reader
            .reload()
            .map_err(|error| Error::internal(format!("cannot reload the bm25 reader: {error}")))
    }
}

fn add_metadata(document: &mut TantivyDocument, fields: MetadataFields, metadata: &ChunkMetadata) {
    if let Some(content_type) = &metadata.content_type {
        document.add_text(fields.content_type, content_type);
    }
    if let Some(size) = metadata
        .size_bytes
        .and_then(|size| i64::try_from(size).ok())
    {
        document.add_i64(fields.size_bytes, size);
    }
    if let Some(last_modified) = metadata.last_modified {
        document.add_i64(fields.last_modified, last_modified);
    }
    for (name, value) in &metadata.fields {
        document.add_text(fields.user_pairs, metadata_pair(name, value));
    }
    if let Some(namespace) = &metadata.namespace {
        document.add_text(
            fields.user_pairs,
            metadata_pair(NAMESPACE_PAIR_NAME, namespace),
        );
    }
}

/// `text` as a regex matching itself.
fn escape_regex(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if "\\.+*?()|[]{}^$".contains(character) {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

fn validate_chunks(chunks: &[EmbeddedChunk]) -> Result<()> {
    for embedded_chunk in chunks {
        if embedded_chunk.chunk.chunk_id.is_empty() {
            return Err(Error::invalid("a chunk has an empty chunk id"));
        }
    }
    Ok(())
}

/// Run blocking index work on tokio's blocking pool, not on an async worker.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::internal(format!("bm25 task failed: {error}")))?
}

#[async_trait]
impl SearchBackend for LocalBm25Store {
    fn describe(&self) -> &SourceInfo {
        &self.info
    }

    async fn search(&self, query: &StoreQuery) -> Result<Vec<Hit>> {
        if query.top_k == 0 || query.text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let top_k = query.top_k;
        let filter = match query
            .filter
            .as_ref()
            .map(|filter| filter.for_source(&self.info.id))
        {
            None | Some(Pushdown::All) => None,
            Some(Pushdown::Nothing) => return Ok(Vec::new()),
            Some(Pushdown::Only(filter)) => Some(filter),
        };
        // A small index is searched in place (SciFact's 7.8k chunks take about 0.2 ms,
        // its files stay in the page cache): the blocking pool would add two thread
        // wake-ups to every search. A larger one may read disk or score long lists.
        if self.inner.reader.searcher().num_docs() <= SMALL_INDEX_DOCS {
            return self
                .inner
                .search_blocking(&query.text, top_k, filter.as_ref());
        }
        let inner = Arc::clone(&self.inner);
        let query_text = query.text.clone();
        run_blocking(move || inner.search_blocking(&query_text, top_k, filter.as_ref())).await
    }

    async fn upsert(&self, chunks: &[EmbeddedChunk]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        validate_chunks(chunks)?;
        let inner = Arc::clone(&self.inner);
        // Only the chunks cross to the blocking pool: the vectors are not indexed here.
        let chunks: Vec<Chunk> = chunks
            .iter()
            .map(|embedded_chunk| embedded_chunk.chunk.clone())
            .collect();
        run_blocking(move || inner.upsert_blocking(&chunks)).await
    }

    async fn delete_objects(&self, object_keys: &[String]) -> Result<()> {
        if object_keys.is_empty() {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        let object_keys = object_keys.to_vec();
        run_blocking(move || inner.delete_objects_blocking(&object_keys)).await
    }

    async fn commit(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || inner.commit_blocking()).await
    }

    /// Committed chunks only: uncommitted writes are not counted.
    async fn sample_texts(&self, n: usize) -> Result<Vec<(String, String)>> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || inner.sample_blocking(n)).await
    }

    async fn count(&self) -> Result<u64> {
        Ok(self.inner.reader.searcher().num_docs())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::stores::StoreKind;

    fn source_info() -> SourceInfo {
        SourceInfo {
            id: "local-bm25".to_string(),
            backend: "tantivy".to_string(),
            kind: StoreKind::Lexical,
            space: None,
            dims: None,
            cloud: "local".to_string(),
            region: "local".to_string(),
        }
    }

    fn chunk(
        doc_id: &str,
        ordinal: u32,
        object_key: &str,
        title: &str,
        text: &str,
    ) -> EmbeddedChunk {
        EmbeddedChunk {
            chunk: Chunk {
                chunk_id: Chunk::make_id(doc_id, ordinal),
                doc_id: doc_id.to_string(),
                object_key: object_key.to_string(),
                title: title.into(),
                text: text.into(),
                ordinal,
                cloud: "oci".to_string(),
                region: "eu-frankfurt-1".to_string(),
                metadata: Default::default(),
                span: None,
            },
            vector: Vec::new(),
        }
    }

    fn query(text: &str, top_k: usize) -> StoreQuery {
        StoreQuery {
            text: text.to_string(),
            vector: None,
            top_k,
            deadline: Instant::now() + Duration::from_secs(10),
            filter: None,
        }
    }

    fn sample_chunks() -> Vec<EmbeddedChunk> {
        vec![
            chunk(
                "cats",
                0,
                "pets/cats.txt",
                "Cats",
                "The cat sleeps on the warm windowsill all afternoon.",
            ),
            chunk(
                "dogs",
                0,
                "pets/dogs.txt",
                "Dogs",
                "The dog runs in the park and fetches the ball.",
            ),
            chunk(
                "dogs",
                1,
                "pets/dogs.txt",
                "Dogs",
                "Dogs need a walk every day.",
            ),
            chunk(
                "rust",
                0,
                "code/rust.md",
                "Rust ownership",
                "Ownership and borrowing make memory safety checkable at compile time.",
            ),
        ]
    }

    async fn store_with_samples(directory: &Path) -> LocalBm25Store {
        let store = LocalBm25Store::open(source_info(), directory).expect("open");
        store.upsert(&sample_chunks()).await.expect("upsert");
        store.commit().await.expect("commit");
        store
    }

    /// The schema before chunks kept metadata: what indexes written then hold.
    fn schema_before_metadata() -> Schema {
        let mut builder = Schema::builder();
        let indexing = TextFieldIndexing::default()
            .set_tokenizer(STEMMING_TOKENIZER_NAME)
            .set_index_option(IndexRecordOption::WithFreqs);
        for name in ["chunk_id", "doc_id", "object_key"] {
            builder.add_text_field(name, STRING | STORED);
        }
        builder.add_text_field("title", TextOptions::default().set_stored());
        builder.add_text_field("text", TextOptions::default().set_stored());
        builder.add_u64_field("ordinal", NumericOptions::default().set_stored());
        builder.add_text_field("cloud", STRING | STORED);
        builder.add_text_field("region", STRING | STORED);
        builder.add_text_field(
            "body",
            TextOptions::default().set_indexing_options(indexing),
        );
        builder.build()
    }

    fn filtered(text: &str, filter: crate::stores::filter::FilterRequest) -> StoreQuery {
        StoreQuery {
            filter: Some(filter.check(&["team".to_string()]).expect("a valid filter")),
            ..query(text, 10)
        }
    }

    #[tokio::test]
    async fn an_index_written_before_metadata_opens_answers_and_matches_no_metadata_condition() {
        use crate::stores::filter::FilterRequest;
        let directory = tempfile::tempdir().expect("tempdir");
        Index::create_in_dir(directory.path(), schema_before_metadata()).expect("old index");
        let store = LocalBm25Store::open(source_info(), directory.path()).expect("opens");
        store.upsert(&sample_chunks()).await.expect("upsert");
        store.commit().await.expect("commit");
        let hits = store.search(&query("dog", 10)).await.expect("search");
        assert_eq!(hits.len(), 2);
        let pdf = FilterRequest::Eq {
            field: "content_type".into(),
            value: "application/pdf".into(),
        };
        let hits = store
            .search(&filtered("dog", pdf.clone()))
            .await
            .expect("search");
        assert!(hits.is_empty(), "no chunk there has a content type");
        let not_pdf = FilterRequest::Not(Box::new(pdf));
        let hits = store
            .search(&filtered("dog", not_pdf))
            .await
            .expect("search");
        assert_eq!(hits.len(), 2);
        let prefix = FilterRequest::Prefix {
            field: "object_key".into(),
            prefix: "pets/d".into(),
        };
        let hits = store
            .search(&filtered("cat dog", prefix))
            .await
            .expect("search");
        let mut ids: Vec<&str> = hits.iter().map(|hit| hit.chunk_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec!["dogs#0", "dogs#1"], "the cat is not under pets/d");
    }

    #[tokio::test]
    async fn most_relevant_chunk_comes_first_with_whole_fields() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        let hits = store
            .search(&query("memory safety in rust", 10))
            .await
            .expect("search");
        assert_eq!(hits[0].chunk_id, "rust#0");
        assert_eq!(hits[0].doc_id, "rust");
        assert_eq!(hits[0].object_key, "code/rust.md");
        assert_eq!(
            (hits[0].cloud.as_str(), hits[0].region.as_str()),
            ("oci", "eu-frankfurt-1")
        );
        assert_eq!(&*hits[0].title, "Rust ownership");
        assert!(hits[0].text.starts_with("Ownership and borrowing"));
        assert!(hits[0].score > 0.0);
        assert!(hits.windows(2).all(|pair| pair[0].score >= pair[1].score));
        assert_eq!(store.describe(), &source_info());
    }

    #[tokio::test]
    async fn stemming_matches_other_forms_of_a_word() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        let hits = store.search(&query("running", 10)).await.expect("search");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].chunk_id, "dogs#0");
        let hits = store
            .search(&query("SLEEPING cats", 10))
            .await
            .expect("search");
        assert_eq!(hits[0].chunk_id, "cats#0");
    }

    #[tokio::test]
    async fn title_is_searched_too() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        // "rust" only occurs in the title of its chunk.
        let hits = store.search(&query("rust", 10)).await.expect("search");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].chunk_id, "rust#0");
    }

    #[tokio::test]
    async fn hostile_empty_and_stopword_queries_return_nothing_without_error() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        for text in [
            "",
            "   ",
            "the of and",
            "The AND a",
            "\u{0}\u{1}",
            "((()))",
            "***",
        ] {
            let hits = store.search(&query(text, 10)).await.expect("search");
            assert!(hits.is_empty(), "{text:?} matched {hits:?}");
        }
        // Query-language syntax is just text here.
        for text in [
            "title:dog AND (",
            "\"unclosed phrase",
            "dog^",
            "-dog +cat",
            "dog~2",
            "[a TO",
            "ünïcödé 日本語 🐕",
        ] {
            store
                .search(&query(text, 10))
                .await
                .expect("search must not fail");
        }
        let long_query = "dog park ".repeat(50_000);
        let hits = store.search(&query(&long_query, 10)).await.expect("search");
        assert_eq!(hits[0].chunk_id, "dogs#0");
    }

    #[tokio::test]
    async fn top_k_zero_and_huge_top_k() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        assert!(
            store
                .search(&query("dog", 0))
                .await
                .expect("search")
                .is_empty()
        );
        let hits = store
            .search(&query("dog cat rust", usize::MAX))
            .await
            .expect("search");
        assert_eq!(hits.len(), 4);
    }

    #[tokio::test]
    async fn searching_an_empty_index_returns_nothing() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = LocalBm25Store::open(source_info(), directory.path()).expect("open");
        assert!(
            store
                .search(&query("dog", 10))
                .await
                .expect("search")
                .is_empty()
        );
        assert_eq!(store.count().await.expect("count"), 0);
        store.commit().await.expect("commit with nothing written");
    }

    #[tokio::test]
    async fn re_upserting_is_idempotent_and_replaces_by_chunk_id() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        assert_eq!(store.count().await.expect("count"), 4);
        store.upsert(&sample_chunks()).await.expect("upsert");
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 4);

        let replacement = chunk(
            "cats",
            0,
            "pets/cats.txt",
            "Cats",
            "The cat chases a laser pointer.",
        );
        // Twice in one batch: the last one wins and only one copy remains.
        store
            .upsert(&[replacement.clone(), replacement])
            .await
            .expect("upsert");
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 4);
        assert!(
            store
                .search(&query("windowsill", 10))
                .await
                .expect("search")
                .is_empty()
        );
        let hits = store.search(&query("laser", 10)).await.expect("search");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].chunk_id, "cats#0");
    }

    #[tokio::test]
    async fn delete_objects_removes_exactly_their_chunks() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        store
            .delete_objects(&["pets/dogs.txt".to_string(), "missing/object".to_string()])
            .await
            .expect("delete");
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 2);
        let hits = store
            .search(&query("dog dogs cat rust", 10))
            .await
            .expect("search");
        let mut chunk_ids: Vec<&str> = hits.iter().map(|hit| hit.chunk_id.as_str()).collect();
        chunk_ids.sort_unstable();
        assert_eq!(chunk_ids, ["cats#0", "rust#0"]);
    }

    #[tokio::test]
    async fn writes_are_invisible_until_commit() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        store
            .upsert(&[chunk(
                "birds",
                0,
                "pets/birds.txt",
                "Birds",
                "Parrots talk.",
            )])
            .await
            .expect("upsert");
        store
            .delete_objects(&["pets/cats.txt".to_string()])
            .await
            .expect("delete");
        assert_eq!(store.count().await.expect("count"), 4);
        assert!(
            store
                .search(&query("parrots", 10))
                .await
                .expect("search")
                .is_empty()
        );
        assert_eq!(
            store.search(&query("cat", 10)).await.expect("search").len(),
            1
        );
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 4);
        assert_eq!(
            store
                .search(&query("parrots", 10))
                .await
                .expect("search")
                .len(),
            1
        );
        assert!(
            store
                .search(&query("cat", 10))
                .await
                .expect("search")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_store_closed_after_many_commits_reopens_merged_and_whole() {
        let directory = tempfile::tempdir().expect("tempdir");
        {
            let store = LocalBm25Store::open(source_info(), directory.path()).expect("open");
            // Each commit of new chunks flushes at least one segment.
            for batch in 0..6 {
                let chunks: Vec<EmbeddedChunk> = (0..20)
                    .map(|item| {
                        let doc_id = format!("doc{batch}-{item}");
                        chunk(&doc_id, 0, "batch.txt", "", &format!("word{batch} filler"))
                    })
                    .collect();
                store.upsert(&chunks).await.expect("upsert");
                store.commit().await.expect("commit");
            }
            // Dropped right after the last commit, as a bulk indexing run exits.
        }
        let store = LocalBm25Store::open(source_info(), directory.path()).expect("reopen");
        assert_eq!(store.count().await.expect("count"), 120);
        assert_eq!(store.segment_count(), 1);
        let hits = store.search(&query("word5", 100)).await.expect("search");
        assert_eq!(hits.len(), 20);
    }

    #[tokio::test]
    async fn reopen_restores_committed_state_and_drops_uncommitted_writes() {
        let directory = tempfile::tempdir().expect("tempdir");
        {
            let store = store_with_samples(directory.path()).await;
            store
                .upsert(&[chunk(
                    "birds",
                    0,
                    "pets/birds.txt",
                    "Birds",
                    "Parrots talk.",
                )])
                .await
                .expect("upsert");
            store
                .delete_objects(&["pets/cats.txt".to_string()])
                .await
                .expect("delete");
            // Dropped without commit: as if the process had stopped here.
        }
        let store = LocalBm25Store::open(source_info(), directory.path()).expect("reopen");
        assert_eq!(store.count().await.expect("count"), 4);
        assert!(
            store
                .search(&query("parrots", 10))
                .await
                .expect("search")
                .is_empty()
        );
        let hits = store
            .search(&query("warm windowsill", 10))
            .await
            .expect("search");
        assert_eq!(hits[0].chunk_id, "cats#0");
        assert_eq!(&*hits[0].title, "Cats");
        // The reopened store can write again (the old writer lock was released).
        store
            .delete_objects(&["pets/cats.txt".to_string()])
            .await
            .expect("delete");
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 3);
    }

    #[tokio::test]
    async fn empty_chunk_id_is_rejected() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = LocalBm25Store::open(source_info(), directory.path()).expect("open");
        let mut bad = chunk("x", 0, "x", "x", "x");
        bad.chunk.chunk_id.clear();
        let error = store.upsert(&[bad]).await.expect_err("must reject");
        assert_eq!(error.kind, crate::error::ErrorKind::InvalidArgument);
    }

    /// nDCG@10 on BEIR SciFact, one chunk per abstract. Not a pass/fail test: run
    /// with `cargo test --release --lib scifact -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "needs the SciFact dataset; prints a quality figure"]
    async fn scifact_ndcg_at_10() {
        let dataset = std::env::var("SKYFUSE_SCIFACT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact")
            });
        let corpus = std::fs::read_to_string(dataset.join("corpus.jsonl")).expect("corpus");
        let chunks: Vec<EmbeddedChunk> = corpus
            .lines()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).expect("json");
                let doc_id = record["_id"].as_str().expect("_id");
                chunk(
                    doc_id,
                    0,
                    doc_id,
                    record["title"].as_str().unwrap_or_default(),
                    record["text"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        let directory = tempfile::tempdir().expect("tempdir");
        let store = LocalBm25Store::open(source_info(), directory.path()).expect("open");
        store.upsert(&chunks).await.expect("upsert");
        store.commit().await.expect("commit");

        let mut relevant: HashMap<String, HashMap<String, f64>> = HashMap::new();
        let qrels = std::fs::read_to_string(dataset.join("qrels/test.tsv")).expect("qrels");
        for line in qrels.lines().skip(1) {
            let columns: Vec<&str> = line.split('\t').collect();
            let grade: f64 = columns[2].parse().expect("grade");
            relevant
                .entry(columns[0].to_string())
                .or_default()
                .insert(columns[1].to_string(), grade);
        }
        let queries = std::fs::read_to_string(dataset.join("queries.jsonl")).expect("queries");
        let mut ndcg_sum = 0.0;
        let mut evaluated = 0usize;
        for line in queries.lines() {
            let record: serde_json::Value = serde_json::from_str(line).expect("json");
            let query_id = record["_id"].as_str().expect("_id");
            let Some(judged) = relevant.get(query_id) else {
                continue;
            };
            let hits = store
                .search(&query(record["text"].as_str().expect("text"), 10))
                .await
                .expect("search");
            let dcg: f64 = hits
                .iter()
                .enumerate()
                .map(|(rank, hit)| {
                    judged.get(&hit.doc_id).copied().unwrap_or(0.0) / ((rank + 2) as f64).log2()
                })
                .sum();
            let mut ideal: Vec<f64> = judged.values().copied().collect();
            ideal.sort_by(|left, right| right.total_cmp(left));
            let ideal_dcg: f64 = ideal
                .iter()
                .take(10)
                .enumerate()
                .map(|(rank, grade)| grade / ((rank + 2) as f64).log2())
                .sum();
            ndcg_sum += dcg / ideal_dcg;
            evaluated += 1;
        }
        let ndcg_at_10 = ndcg_sum / evaluated as f64;
        println!("scifact bm25 ndcg@10 = {ndcg_at_10:.4} over {evaluated} queries");
        assert!(ndcg_at_10 > 0.6);
    }
}
