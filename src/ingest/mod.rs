//! Ingestion: list a bucket, fetch, extract, chunk, embed, write, remember.
