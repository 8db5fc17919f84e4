#!/usr/bin/env python3
"""Drives a running openai-sim with the official OpenAI Python SDK (`pip install openai`).

Not part of any test runner (CI has no SDK). Start the simulator with short phases, then:

    cargo run -p openai-sim -- --validating-ms 200 --in-progress-ms 1000 --finalizing-ms 200 &
    OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=sk-sim python3 openai-sim/scripts/sdk_smoke.py

Every answer is parsed twice: by the SDK as usual, and strictly with the SDK's own pydantic
types (`model_validate` on the raw JSON), so a missing or mistyped field fails the run.
"""
import base64
import io
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
import urllib.request

import openai
from openai import OpenAI
from openai.types import Batch, FileDeleted, FileObject
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

TINY_PNG = bytes([
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0,
    0, 0, 144, 119, 83, 222, 0, 0, 0, 12, 73, 68, 65, 84, 120, 156, 99, 248, 207, 192, 0, 0, 3, 1,
    1, 0, 201, 254, 146, 239, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
])
TERMINAL = {"completed", "failed", "expired", "cancelled"}
CHECKS = 0


def check(cond, what):
    global CHECKS
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    CHECKS += 1
    print(f"ok: {what}")


def strict(model, raw):
    """Parses raw JSON with the SDK's type; raises on any schema mismatch."""
    return model.model_validate(json.loads(raw) if isinstance(raw, (str, bytes)) else raw)


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["category", "colors", "confidence"],
    "properties": {
        "category": {"type": "string", "enum": ["top", "bottom", "dress", "shoes"]},
        "colors": {"type": "array", "items": {"type": "string"}},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
}


class Garment(BaseModel):
    category: str
    colors: list[str]
    confidence: float


def batch_lines():
    data_url = "data:image/png;base64," + base64.b64encode(TINY_PNG).decode()
    rf = {"type": "json_schema", "json_schema": {"name": "garment", "strict": True, "schema": SCHEMA}}
    bodies = {
        "img-1": [{"type": "text", "text": "Describe the garment."},
                  {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}}],
        "img-2": "Describe a red dress.",
        "img-3": [{"type": "text", "text": "Describe shoes."}],
    }
    for cid, content in bodies.items():
        yield {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "gpt-4o-mini", "max_completion_tokens": 300, "response_format": rf,
                        "messages": [{"role": "user", "content": content}]}}


def wait(client, batch_id, timeout=60.0):
    deadline = time.time() + timeout
    while True:
        raw = client.batches.with_raw_response.retrieve(batch_id)
        b = strict(Batch, raw.text)
        if b.status in TERMINAL:
            return b
        if time.time() > deadline:
            sys.exit(f"FAIL: batch {batch_id} stuck in {b.status}")
        time.sleep(0.2)


def jsonl(client, file_id):
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def main():
    base = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8089/v1")
    client = OpenAI(base_url=base, api_key=os.environ.get("OPENAI_API_KEY", "sk-sim"), max_retries=2)
    print(f"openai {openai.__version__} against {base}")

    payload = "".join(json.dumps(l) + "\n" for l in batch_lines()).encode()
    raw = client.files.with_raw_response.create(file=("batchinput.jsonl", io.BytesIO(payload)), purpose="batch")
    f = strict(FileObject, raw.text)
    check(f.bytes == len(payload) and f.purpose == "batch", "upload returns a File with the byte count")

    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"run": "sdk-smoke"})
    check(b.status == "validating" and b.metadata == {"run": "sdk-smoke"}, "batch created, validating")
    b = wait(client, b.id)
    check(b.status == "completed", f"batch completed (got {b.status})")
    check(b.request_counts.total == 3 and b.request_counts.completed == 3, "request_counts 3/3")
    check(b.usage is not None and b.usage.input_tokens > 2833, "batch usage counts the low-detail image")

    out = jsonl(client, b.output_file_id) + jsonl(client, b.error_file_id)
    check(sorted(l["custom_id"] for l in out) == ["img-1", "img-2", "img-3"], "every custom_id is in the output")
    for line in out:
        completion = strict(ChatCompletion, line["response"]["body"])
        Garment.model_validate_json(completion.choices[0].message.content)
    check(True, "every output body parses as ChatCompletion with schema-valid content")

    page = client.batches.list(limit=10)
    check(any(x.id == b.id for x in page.data), "batches.list includes the batch")
    strict(Batch, page.data[0].model_dump())
    files = client.files.list()
    check(any(x.id == f.id for x in files.data), "files.list includes the upload")
    check(any(x.id == b.output_file_id for x in client.files.list(purpose="batch_output")),
          "files.list(purpose=batch_output) includes the output file")

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Describe the outfit."}],
        response_format={"type": "json_schema", "json_schema": {"name": "garment", "strict": True, "schema": SCHEMA}},
    )
    chat = strict(ChatCompletion, raw.text)
    check(raw.headers.get("x-ratelimit-limit-requests") is not None, "chat answer carries x-ratelimit headers")
    check(chat.model == "gpt-4o-mini-2024-07-18", "chat model is the dated snapshot")
    Garment.model_validate_json(chat.choices[0].message.content)
    check(chat.usage.prompt_tokens > 0, "chat with json_schema parses")
    parsed = client.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Describe."}], response_format=Garment)
    check(isinstance(parsed.choices[0].message.parsed, Garment), "chat.completions.parse yields the pydantic model")

    # One injected 429 on chat: the SDK must honour retry-after-ms and succeed on its retry.
    control = base.rsplit("/v1", 1)[0] + "/_sim/config"
    patch = {"faults": [{"path_prefix": "/v1/chat/completions", "fault_429_rate": 1.0,
                         "retry_after_ms": 200, "remaining": 1}]}
    req = urllib.request.Request(control, data=json.dumps(patch).encode(), method="PATCH",
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req).read()
    retried = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    check(retried.choices[0].message.content, "SDK retried an injected 429 and got an answer")
    journal = json.load(urllib.request.urlopen(control.replace("/config", "/journal")))["data"]
    chat_statuses = [e["status"] for e in journal if e["path"] == "/v1/chat/completions"][-2:]
    check(chat_statuses == [429, 200], f"journal shows the 429 then the 200 (got {chat_statuses})")

    second = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    c = client.batches.cancel(second.id)
    check(c.status == "cancelling", "cancel answers cancelling")
    c = wait(client, second.id)
    check(c.status == "cancelled" and c.cancelled_at is not None, "second batch cancelled")
    try:
        client.batches.cancel(second.id)
        check(False, "cancelling a cancelled batch must fail")
    except openai.ConflictError as e:
        check(e.status_code == 409 and "Cannot cancel a batch with status 'cancelled'." in str(e),
              "cancelling a terminal batch raises ConflictError (409)")
    try:
        client.batches.retrieve("batch_does_not_exist")
        check(False, "unknown batch must 404")
    except openai.NotFoundError:
        check(True, "unknown batch raises NotFoundError")

    # Webhooks: a local receiver, then the SDK's own signature check (client.webhooks.unwrap).
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((dict(self.headers), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    secret = "whsec_" + base64.b64encode(b"sdk-smoke-secret-0123456789abcdef").decode()
    patch = {"webhook_url": f"http://127.0.0.1:{hook.server_port}/hook", "webhook_secret": secret}
    req = urllib.request.Request(control, data=json.dumps(patch).encode(), method="PATCH",
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req).read()
    third = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 60
    while not received and time.time() < deadline:
        time.sleep(0.1)
    check(received, "a webhook arrived")
    headers, body = received[0]
    event = client.webhooks.unwrap(body, headers, secret=secret)
    check(event.type == "batch.completed" and event.data.id == third.id,
          "client.webhooks.unwrap verifies the signature and parses batch.completed")
    hook.shutdown()

    deleted = strict(FileDeleted, client.files.with_raw_response.delete(f.id).text)
    check(deleted.deleted and deleted.id == f.id, "file deleted")
    print(f"sdk smoke: {CHECKS} checks passed")


if __name__ == "__main__":
    main()
