"""A stand-in for the Docker Engine API on a unix socket, shared by the fake agent's and
the health daemon's tests. A subclass answers in `respond`; every call is kept in
`calls`, and `release` frees requests a test left hanging."""
import json
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler


class FakeDockerServer:
    def __init__(self, path):
        self.mode = "ok"
        self.calls = []  # (method, path as the subclass records it, json body)
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._handle(self)

            do_POST = do_PUT = do_DELETE = do_GET  # every call is answered and recorded

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _handle(self, req):
        length = int(req.headers.get("Content-Length") or 0)
        body = json.loads(req.rfile.read(length)) if length else None
        self.respond(req, urllib.parse.urlsplit(req.path).path, body)

    def respond(self, req, path: str, body) -> None:
        raise NotImplementedError

    @staticmethod
    def reply(req, status, payload):
        """PAYLOAD as JSON (or a str as it is; None: no body)."""
        data = b"" if payload is None else payload.encode() if isinstance(payload, str) \
            else json.dumps(payload).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
