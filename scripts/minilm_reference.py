#!/usr/bin/env python3
"""Write tests/fixtures/minilm_reference.json from the reference implementation.

The fixture pins skyfuse's in-process all-MiniLM-L6-v2 (src/embed/local.rs) to what
sentence-transformers produces for the same model directory: the first 8 dimensions
of a few sentences and the full-vector cosine of a few pairs. The tests compare
within 1e-4, so any tokenizer, pooling, truncation or numeric drift shows up.

Run it from a throwaway virtualenv (the reference needs PyTorch, which the project
itself never does):
    python3 -m venv /tmp/st-venv && /tmp/st-venv/bin/pip install sentence-transformers
    /tmp/st-venv/bin/python scripts/minilm_reference.py [MODEL_DIR]
"""

import json
import os
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = (
    sys.argv[1]
    if len(sys.argv) > 1
    else os.environ.get("SKYFUSE_MODEL_DIR", os.path.join(ROOT, "models", "all-MiniLM-L6-v2"))
)
OUTPUT = os.path.join(ROOT, "tests", "fixtures", "minilm_reference.json")

# A long text is built, not stored: it checks truncation at 256 tokens.
LONG_TEXT = " ".join(f"word{index % 97} sentence{index % 13}." for index in range(2000))

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "0-dimensional biomaterials show inductive properties.",
    "Ünïcödé façade — naïve café, 東京タワー, emoji 🚀 and Ελληνικά.",
    "",
    LONG_TEXT,
]

PAIRS = [(0, 1), (0, 2), (1, 3), (4, 5), (0, 6), (4, 7)]


def main() -> None:
    model = SentenceTransformer(MODEL_DIR, device="cpu")
    if model.max_seq_length != 256:
        raise SystemExit(f"expected max_seq_length 256, got {model.max_seq_length}")
    vectors = model.encode(SENTENCES, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    fixture = {
        "produced_by": "scripts/minilm_reference.py",
        "sentence_transformers_version": sentence_transformers.__version__,
        "torch_version": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "dims": int(vectors.shape[1]),
        "long_text": "built by the test: ' '.join(f'word{i % 97} sentence{i % 13}.' for i in range(2000))",
        "sentences": [
            {
                "text": text if text is not LONG_TEXT else "<long_text>",
                "first_dims": [round(float(value), 7) for value in vectors[index][:8]],
                "norm": round(float((vectors[index] ** 2).sum() ** 0.5), 7),
            }
            for index, text in enumerate(SENTENCES)
        ],
        "cosine_pairs": [
            {"a": a, "b": b, "cosine": round(float(vectors[a] @ vectors[b]), 7)} for a, b in PAIRS
        ],
    }
    with open(OUTPUT, "w", encoding="utf-8") as handle:
        json.dump(fixture, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
