#!/usr/bin/env python3
"""Writes the hand-made seed corpus of every fuzz target into fuzz/corpus/<target>/.

Seeds are small valid (and a few nearly valid) inputs, so the fuzzers start from the
formats' real structure. Re-run after changing a seed; the fuzzers add what they find
to the same folders (`cargo fuzz cmin` keeps them small). The unit tests in
src/fuzzing.rs replay every file here.
"""

import gzip
import json
import shutil
import struct
import zlib
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (folder / name).write_bytes(data)


# --- documents -------------------------------------------------------------------------

TEXT = {
    "plain.txt": "Cold archives are replicated to a second region every night.\n",
    "bom.txt": "\ufeffA text with a byte-order mark.\r\nAnd CRLF lines.\r\n",
    "unicode.txt": "Ünïcödé: 日本語のテキスト, emoji \U0001F600, RTL \u05e9\u05dc\u05d5\u05dd.\n",
    "front-matter.md": "---\ntitle: ignored\n---\n# Runbook\n\nRestart the ingest worker.\n",
    "toml-front-matter.md": "+++\ntitle = \"x\"\n+++\nSetext Title\n============\n\nbody text\n",
    "code-fence.md": "```sh\n# not a title\n```\n\n## Real Title ##\n\n~~~\n# also code\n~~~\ntext\n",
    "hashtag.md": "#hashtag only\n-\n--\n",
}

HTML = {
    "page.html": "<!doctype html><html><head><title> The  Page </title><style>p{}</style></head>"
    "<body><script>var hidden = 1;</script><p>first <b>bold</b></p><div>second</div>tail"
    "<noscript>nope</noscript></body></html>",
    "h1.htm": "<body><h1>Heading</h1><p>words</p><table><tr><td>a</td><td>b</td></tr></table></body>",
    "broken.html": "<html><p>unclosed <div><svg><text>hidden</text></svg><template>t</template>"
    "<iframe>f</iframe>&amp; &lt;entity&gt; &#x1F600;<br>end",
    "invisible.html": "<script>var a;</script><style>b{}</style>",
}

JSON = {
    "object.json": json.dumps({"title": "T", "body": "B"}),
    "array.json": json.dumps([{"_id": "a", "text": "x"}, {"text": "y"}, 3, {"id": 7, "content": "z"}]),
    "beir.jsonl": "\n".join(
        json.dumps(record)
        for record in [
            {"_id": "4983", "title": "Microstructural development", "text": "Alterations.", "metadata": {}},
            {"_id": "5836", "title": "", "text": "Induction of myelodysplasia.", "metadata": {}},
        ]
    )
    + "\n\n",
    "mixed.ndjson": '{"text": "one"}\n{broken\n[1]\n{"id": 7, "content": "three"}\n{"title": ""}\n'
    '{"id": 7, "text": "again"}\n{"id": [1], "text": "bad id"}\n{"id": "x", "text": 5}\n',
    "title-only.json": '{"id": "x", "title": "Only a title", "text": null}',
    "nested.json": "[" * 20 + "]" * 20,
}


def pdf(content, compress=False):
    """A one-page PDF showing `content` (a content stream), with a correct xref table."""
    stream = content.encode()
    stream_dict = b"<< /Length %d >>" % len(stream)
    if compress:
        stream = zlib.compress(stream)
        stream_dict = b"<< /Length %d /Filter /FlateDecode >>" % len(stream)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 /MediaBox [0 0 612 792] >>",
        b"<< /Type /Page /Parent 2 0 R /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        stream_dict + b"\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


PDF = {
    "hello.pdf": pdf("BT /F1 12 Tf 72 712 Td (Revenue grew nine percent) Tj ET"),
    "flate.pdf": pdf("BT /F1 12 Tf 72 712 Td (Zipped stream) Tj 0 -14 Td [(Kern)-200(ed)] TJ ET", compress=True),
    "no-text.pdf": pdf("0 0 m 100 100 l S"),
}


# --- Bedrock event-stream ----------------------------------------------------------------


def frame(headers, payload, raw_headers=b""):
    """One event-stream frame: string headers (type 7), payload, both CRCs."""
    header_bytes = bytearray(raw_headers)
    for name, value in headers:
        header_bytes += bytes([len(name)]) + name.encode() + b"\x07"
        header_bytes += struct.pack(">H", len(value.encode())) + value.encode()
    total = 12 + len(header_bytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(header_bytes))
    out = prelude + struct.pack(">I", zlib.crc32(prelude)) + bytes(header_bytes) + payload
    return out + struct.pack(">I", zlib.crc32(out))


def event(kind, payload):
    headers = [(":event-type", kind), (":content-type", "application/json"), (":message-type", "event")]
    return frame(headers, json.dumps(payload).encode())


def exception(kind, message):
    headers = [(":exception-type", kind), (":content-type", "application/json"), (":message-type", "exception")]
    return frame(headers, json.dumps({"message": message}).encode())


# Every header value type once: bool true/false, byte, short, int, long, bytes, string,
# timestamp, uuid.
ALL_HEADER_TYPES = (
    b"\x01t\x00" + b"\x01f\x01" + b"\x01b\x02\x7f" + b"\x01s\x03\x01\x02" + b"\x01i\x04\x00\x00\x00\x01"
    + b"\x01l\x05" + b"\x00" * 7 + b"\x01" + b"\x02by\x06\x00\x03abc" + b"\x01t\x08" + b"\x00" * 8
    + b"\x01u\x09" + bytes(range(16))
)

EVENT_STREAM = {
    "answer": event("messageStart", {"role": "assistant"})
    + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}, "p": "abcdefgh"})
    + event("contentBlockStop", {"contentBlockIndex": 0})
    + event("messageStop", {"stopReason": "end_turn"})
    + event("metadata", {"usage": {"inputTokens": 12, "outputTokens": 14, "totalTokens": 26}, "metrics": {"latencyMs": 1130}}),
    "exception": exception("throttlingException", "Too many requests, please wait."),
    "all-header-types": frame([], b"{}", raw_headers=ALL_HEADER_TYPES),
    "empty-frame": frame([], b""),
    "truncated": event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "cut"}})[:-7],
}


# --- server-sent events --------------------------------------------------------------------


def sse(data, name=None, newline="\n"):
    lines = ([f"event: {name}"] if name else []) + [f"data: {data}"]
    return newline.join(lines) + newline + newline


def openai_chunk(content):
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]})


SSE = {
    "openai": sse(openai_chunk("Cold archives")) + sse(openai_chunk(" are replicated [1].")) + sse(
        json.dumps({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 388, "completion_tokens": 9}})
    ) + sse("[DONE]"),
    "anthropic": sse('{"type":"message_start","message":{"usage":{"input_tokens":412}}}', "message_start")
    + sse('{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}', "content_block_delta")
    + sse('{"type":"ping"}', "ping")
    + sse('{"type":"content_block_stop","index":0}', "content_block_stop")
    + sse('{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}', "message_delta")
    + sse('{"type":"message_stop"}', "message_stop"),
    "vertex-crlf": sse(
        json.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}], "usageMetadata": {"promptTokenCount": 412}}),
        newline="\r\n",
    ),
    "oci-cr": sse('{"apiFormat":"COHERE","text":"They are","pad":"abc"}', newline="\r")
    + sse('{"apiFormat":"COHERE","text":"They are replicated.","finishReason":"COMPLETE"}', newline="\r"),
    # No byte-order mark in front: eventsource-stream 0.2.3 panics on one (see
    # fuzz/regressions/sse/); the fuzzer would stop at this seed.
    "fields": ": a comment \ufeff\nid: 42\nretry: 1500\nevent: update\ndata: first line\ndata: second line\ndata\ndata:no-space\n\n"
    "retry: not-a-number\nid: with\x00nul\nunknown: field\n\n",
    "unterminated": 'data: {"choices":[{"index":0,"delta":{"content":',
    "in-band-error": sse('{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "error"),
    "unicode": sse(json.dumps({"text": "日本語 \U0001F600"}, ensure_ascii=False)),
}


def main():
    if CORPUS.exists():
        for target in ["extract_text", "extract_html", "extract_json", "extract_pdf", "extract_gzip", "bedrock_event_stream", "sse", "config"]:
            for path in (CORPUS / target).glob("seed-*"):
                path.unlink()
    for name, data in TEXT.items():
        write("extract_text", f"seed-{name}", data)
    for name, data in HTML.items():
        write("extract_html", f"seed-{name}", data)
    for name, data in JSON.items():
        write("extract_json", f"seed-{name}", data)
    for name, data in PDF.items():
        write("extract_pdf", f"seed-{name}", data)
    gz = {
        "text": TEXT["front-matter.md"],
        "html": HTML["page.html"],
        "json": JSON["array.json"],
        "jsonl": JSON["beir.jsonl"],
        "pdf": PDF["hello.pdf"],
    }
    for name, data in gz.items():
        data = data.encode() if isinstance(data, str) else data
        write("extract_gzip", f"seed-{name}.gz", gzip.compress(data, mtime=0))
    write("extract_gzip", "seed-two-members.gz", gzip.compress(b"first ", mtime=0) + gzip.compress(b"second", mtime=0))
    for name, data in EVENT_STREAM.items():
        write("bedrock_event_stream", f"seed-{name}", data)
    for name, data in SSE.items():
        write("sse", f"seed-{name}", data)
    for path in [ROOT / "src/config/default.toml", *sorted((ROOT / "indexes").glob("*.toml")), *sorted((ROOT / "docs/examples").glob("*.toml"))]:
        write("config", f"seed-{path.parent.name}-{path.name}", path.read_bytes())
    default = (ROOT / "src/config/default.toml").read_text()
    # Top-level keys must come before the first table.
    write("config", "seed-default-with-include.toml", 'include = ["indexes/*.toml"]\n' + default)


if __name__ == "__main__":
    main()
