//! Fusion cost: 4 source lists of 1000 hits each, overlapping, into a top 10 and a top 100.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use skyfuse::config::FusionMethod;
use skyfuse::document::Hit;
use skyfuse::retrieve::fusion::{RankedList, fuse};

fn lists() -> Vec<RankedList> {
    (0..4)
        .map(|source| RankedList {
            source: format!("source-{source}"),
            weight: 1.0,
            hits: (0..1000)
                .map(|rank| {
                    // Sources share about half their documents, in different orders.
                    let doc = (rank * (source + 1) * 7919) % 2000;
                    Hit {
                        chunk_id: format!("doc-{doc}#0"),
                        doc_id: format!("doc-{doc}"),
                        object_key: format!("bucket/doc-{doc}.txt"),
                        title: "".into(),
                        text: "".into(),
                        cloud: String::new(),
                        region: String::new(),
                        classes: Vec::new(),
                        score: 1000.0 - rank as f32,
                        span: None,
                    }
                })
                .collect(),
        })
        .collect()
}

fn bench_fusion(criterion: &mut Criterion) {
    let lists = lists();
    let mut group = criterion.benchmark_group("fuse_4x1000");
    for (name, method) in [("rrf", FusionMethod::Rrf), ("dbsf", FusionMethod::Dbsf)] {
        for top_k in [10, 100] {
            group.bench_with_input(BenchmarkId::new(name, top_k), &top_k, |bencher, &top_k| {
                bencher.iter(|| fuse(&lists, method, 60.0, top_k));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_fusion);
criterion_main!(benches);
