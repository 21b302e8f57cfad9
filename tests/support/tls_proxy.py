"""A loopback forward proxy that terminates TLS, so clients with Google's endpoints compiled in reach fake-gcs-server.

TensorFlow's own gs:// file system (what `tensorboard --logdir gs://...` and `tf.train.latest_checkpoint` use) ignores
STORAGE_EMULATOR_HOST and always calls https://www.googleapis.com and https://storage.googleapis.com. It does honour
`https_proxy` and `CURL_CA_BUNDLE`, and NO_GCE_CHECK=true stops it from looking for a metadata server (it then sends
no credentials, which the fake server accepts). So: the client sends `CONNECT host:443` to this proxy, which answers
with a certificate for that host signed by a throwaway CA made for the test, reads the HTTP requests inside the tunnel
and replays them as plain HTTP to the fake server, with the Host header rewritten to the server's public host (its
XML-style download path only answers to that), chunked request bodies (TF's uploads) de-chunked, and the Location
of resumable upload sessions pointed back at the Google host, so the upload itself goes through the proxy too.

Run as `python -m tests.support.tls_proxy UPSTREAM_URL CERT_DIR`: prints "listening PORT", serves until SIGTERM.
Tests use `TlsProxy` (start/stop by pid) and `make_throwaway_ca`; `TlsProxy.env()` is what a client process needs.
"""
from __future__ import annotations

import datetime
import http.client
import http.server
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path

from tests.support.child_io import ChildLines
from tests.support.gcs_proxy import INCOMPLETE, read_request_body
from tests.support.trainer_runs import ROOT, stop_process

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com", "*.googleapis.com",
                "*.storage.googleapis.com")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "expect", "content-length"}


# ------------------------------------------------------------------------------------------------- the throwaway CA

def make_throwaway_ca(directory: Path, hosts=GOOGLE_HOSTS) -> dict[str, Path]:
    """A CA valid for a day and one server certificate for `hosts` signed by it, as PEM files in `directory`:
    {"ca": CA certificate (give it to clients as CURL_CA_BUNDLE), "cert": server chain, "key": server key}."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "throwaway test CA")])
    ca_cert = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                       serial_number=x509.random_serial_number(), **valid)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
                                    issuer_name=ca_name, public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    pem = serialization.Encoding.PEM
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    paths["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


# ------------------------------------------------------------------------------------------------- the proxy

class _TunnelledRequests(http.server.BaseHTTPRequestHandler):
    """The HTTP requests inside one CONNECT tunnel, after TLS: replayed to the upstream server."""

    protocol_version = "HTTP/1.1"  # keep-alive, as curl expects; also answers "Expect: 100-continue"
    upstream: str = ""  # host:port

    def do_GET(self):
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _forward(self) -> None:
        body = read_request_body(self)
        if body is INCOMPLETE:  # the client went away while sending it: nothing of it is forwarded
            self.close_connection = True
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        host = headers.pop("Host", "www.googleapis.com")
        headers["Host"] = self.upstream
        if body is not None:
            headers["Content-Length"] = str(len(body))
        try:
            conn = http.client.HTTPConnection(self.upstream, timeout=120)
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
        except OSError as e:
            self.send_error(502, f"upstream {self.upstream}: {e}")
            return
        self.send_response(response.status, response.reason)
        for k, v in response.getheaders():
            if k.lower() == "location":  # resumable upload sessions: keep the client on the Google host
                v = v.replace(f"http://{self.upstream}", f"https://{host}", 1)
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", response.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format, *args):  # quiet; errors still reach stderr through send_error
        pass


class _ConnectHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        request = self.rfile.readline().decode("latin-1").split()
        while self.rfile.readline().strip():  # the CONNECT request's headers
            pass
        if len(request) < 2 or request[0] != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        try:
            tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print(f"tls_proxy: TLS handshake for {request[1]} failed: {e}", file=sys.stderr, flush=True)
            return
        _TunnelledRequests(tls, self.client_address, self.server)


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str, cert: Path, key: Path):
        super().__init__(("127.0.0.1", 0), _ConnectHandler)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.tls.set_alpn_protocols(["http/1.1"])
        _TunnelledRequests.upstream = upstream


def serve(upstream_url: str, cert_dir: Path) -> None:
    upstream = urllib.parse.urlsplit(upstream_url).netloc
    server = _ProxyServer(upstream, cert_dir / "server.pem", cert_dir / "server.key")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


# ------------------------------------------------------------------------------------------------- for tests

class TlsProxy:
    """The proxy as a process of its own on 127.0.0.1, in front of `upstream_url` (fake-gcs-server's endpoint)."""

    def __init__(self, upstream_url: str, cert_dir: Path):
        self.upstream_url = upstream_url
        self.cert_dir = cert_dir
        self.paths = make_throwaway_ca(cert_dir)
        self.port: int | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # for tests.support.*
        self._proc = subprocess.Popen([sys.executable, "-m", "tests.support.tls_proxy", self.upstream_url,
                                       str(self.cert_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": path})
        self.pid = self._proc.pid
        try:
            line = ChildLines(self._proc, "tests/support/tls_proxy.py").next(60, "its 'listening PORT' line").split()
        except AssertionError:
            self.stop()
            raise
        if line[:1] != ["listening"]:
            self.stop()
            raise RuntimeError(f"tls_proxy did not start: {line}")
        self.port = int(line[1])

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc)
        self._proc.stdout.close()
        self._proc, self.pid = None, None

    def env(self) -> dict[str, str]:
        """Environment for a process whose TensorFlow should reach the fake server through this proxy."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {"https_proxy": proxy, "HTTPS_PROXY": proxy, "no_proxy": "127.0.0.1,localhost",
                "NO_PROXY": "127.0.0.1,localhost", "CURL_CA_BUNDLE": str(self.paths["ca"]), "NO_GCE_CHECK": "true",
                "GOOGLE_APPLICATION_CREDENTIALS": ""}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    serve(sys.argv[1], Path(sys.argv[2]))
