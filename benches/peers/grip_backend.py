#!/usr/bin/env python3
"""The tiny backend behind Pushpin in the fan-out comparison (benches/compare.sh).

Every GET is held as an SSE stream on the channel named by its `topic` query parameter
(`Grip-Hold: stream`); every WebSocket-over-HTTP OPEN (route flag `over_http`) is subscribed to
that channel with a GRIP control message. Publishing goes to Pushpin, not here.

Usage: grip_backend.py PORT   (listens on 127.0.0.1 only)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def topic_of(path):
    return parse_qs(urlsplit(path).query).get("topic", ["bench/0"])[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Grip-Hold", "stream")
        self.send_header("Grip-Channel", topic_of(self.path))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Type", "").startswith("application/websocket-events"):
            out = b""
            if body.startswith(b"OPEN"):
                control = json.dumps({"type": "subscribe", "channel": topic_of(self.path)})
                message = b"c:" + control.encode()
                out = b"OPEN\r\nTEXT %x\r\n%s\r\n" % (len(message), message)
            elif b"CLOSE" in body:
                out = b"CLOSE\r\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/websocket-events")
            self.send_header("Sec-WebSocket-Extensions", "grip")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
