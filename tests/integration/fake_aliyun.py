"""A strict fake of the Aliyundrive (alipan) Open API, plus a real nginx that
serves the download bytes behind signed, expiring, connection-limited URLs.

The API half is an http.server (ThreadingMixIn) on 127.0.0.1, port 0:

  POST /oauth/access_token                  refresh-token exchange (client id + secret)
  POST /relay/token                         the same exchange through a token relay
                                            (client id/secret may be empty or absent)
  POST /adrive/v1.0/user/getDriveInfo       drive ids of the account
  POST /adrive/v1.0/openFile/list           one page of a folder
  POST /adrive/v1.0/openFile/getDownloadUrl a signed nginx URL for one file

It is deliberately strict, so that a client passing it does not fail real
users: POST only, `Content-Type: application/json`, a JSON object body,
refresh tokens rotate (a consumed one presented again is a 401 and is
recorded), access tokens expire, list pages are capped and markers opaque,
getDownloadUrl and the other /adrive/ calls have per-account token buckets.
Errors are always JSON {"code": ..., "message": ...} with an HTTP status.

The order of checks on every call: path (404 NotFound), method (405
MethodNotAllowed), Content-Type and JSON object body (400 InvalidParameter);
then for the token endpoints client credentials (401 InvalidClient),
grant_type (400 InvalidParameter.GrantType), refresh token (400 when absent,
401 InvalidParameter.RefreshToken when unknown, consumed or revoked); for
/adrive/ the access token (401 AccessTokenInvalid / AccessTokenExpired), the
rate limit (429 TooManyRequests, consumes nothing), then the parameters. A
call refused at the parameter stage (400/404) has consumed its rate token.

Timing: access tokens die access_ttl seconds after issue although
expires_in says max(1, int(access_ttl)); the rate buckets admit a call once
0.9 of a token has refilled (so 0.9/rate seconds after the last admitted
call); a download link is valid until `expiration` (milliseconds,
truncated) and nginx, which counts whole seconds, refuses it with 410 from
ceil(expiration) + 1 s on.

The download half is a real nginx (daemon off, master_process off, its own
prefix dir under workdir/nginx) with `secure_link` (403 for a bad sign, 410
once expired), `limit_conn` keyed by the account id in the URI (403 over the
limit), an optional `limit_rate`, ranges and ETags. Its access log uses the
harness format with one more field, "$limit_conn_status", so that the
requests that really held a connection slot can be told apart.

Tokens look like the real service's: every refresh and access token is a
JWT (base64url header.payload.signature, RS256-sized signature), a refresh
token about 600 characters, an access token about 1000, so that the gateway
handles them at their real size (INI lines, headers, JSON, the state file).
The first refresh token is one too (`initial_refresh_token`) unless the
caller names one.

Python standard library only; everything on 127.0.0.1.
"""

import base64
import hashlib
import http.server
import json
import math
import os
import re
import secrets
import socketserver
import threading
import time

import harness

def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims, key):
    """A JWT shaped like the Open API's (RS256: a 256-byte signature). The
    signature is a keyed hash stretched to that size: the fake checks tokens
    by lookup, not by signature."""
    head = _b64url(json.dumps({"typ": "JWT", "alg": "RS256"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signed = (head + "." + body).encode()
    sig = b"".join(hashlib.sha256(key + bytes([i]) + signed).digest() for i in range(8))
    return head + "." + body + "." + _b64url(sig)


# path -> short endpoint name (the keys of stats()["too_many"])
ENDPOINTS = {
    "/oauth/access_token": "access_token",
    "/relay/token": "relay",
    "/adrive/v1.0/user/getDriveInfo": "getDriveInfo",
    "/adrive/v1.0/openFile/list": "list",
    "/adrive/v1.0/openFile/getDownloadUrl": "getDownloadUrl",
}

LIST_DEFAULT_LIMIT = 50  # the real service's default when "limit" is absent
LINK_DEFAULT_EXPIRE = 900  # ... and when "expire_sec" is absent
LINK_MAX_EXPIRE = 115200

# The harness log format plus "$limit_conn_status" (PASSED / REJECTED, "-"
# when limit_conn never ran, e.g. a secure_link refusal).
assert harness.NGINX_LOG_FORMAT.endswith("';")
DL_LOG_FORMAT = harness.NGINX_LOG_FORMAT[:-2] + " \"$limit_conn_status\"';"
DL_LOG_RE = re.compile(harness.LOG_RE.pattern + r' "([^"]*)"')


class ManualClock:
    """A monotonic clock that moves only when told (advance)."""

    def __init__(self, start=1000.0):
        self.now = start
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            return self.now

    def advance(self, seconds):
        with self.lock:
            self.now += seconds


class ApiError(Exception):
    """An error answer: HTTP status plus the JSON {"code", "message"}."""

    def __init__(self, status, code, message):
        super().__init__("%d %s: %s" % (status, code, message))
        self.status = status
        self.code = code
        self.message = message


def iso_ms(t):
    """Unix time -> "2024-05-01T10:00:00.000Z" (UTC, milliseconds truncated,
    so the text never says later than `t`)."""
    ms = int(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def nginx_md5(expires, uri, secret):
    """secure_link_md5 "$secure_link_expires$uri <secret>": base64url without
    padding of the binary MD5."""
    d = hashlib.md5(("%d%s %s" % (expires, uri, secret)).encode()).digest()
    return base64.urlsafe_b64encode(d).decode().rstrip("=")


class _Bucket:
    """A token bucket of capacity 1 refilled at `rate` per second. A request
    is admitted when the bucket holds >= 0.9 (arrival jitter) and then takes
    1, clamped at 0; a refusal takes nothing. rate None/0 = no limit."""

    def __init__(self, rate, clock=time.monotonic):
        self.rate = rate
        self.clock = clock
        self.tokens = 1.0
        self.t = clock()

    def take(self):
        if not self.rate:
            return True
        now = self.clock()
        self.tokens = min(1.0, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 0.9:
            return False
        self.tokens = max(0.0, self.tokens - 1.0)
        return True


class _Node:
    """A file or folder of the resource drive."""

    def __init__(self, drive_id, file_id, parent_id, name, kind):
        self.drive_id = drive_id
        self.file_id = file_id
        self.parent_id = parent_id
        self.name = name
        self.type = kind  # "file" | "folder"
        self.children = {}  # name -> file_id (folders)
        self.size = 0
        self.sha1 = ""
        self.created = self.updated = time.time()

    def item(self):
        """The openFile/list item."""
        it = dict(drive_id=self.drive_id, file_id=self.file_id, parent_file_id=self.parent_id,
                  name=self.name, type=self.type, created_at=iso_ms(self.created),
                  updated_at=iso_ms(self.updated))
        if self.type == "file":
            ext = self.name.rsplit(".", 1)[1].lower() if "." in self.name.strip(".") else ""
            it.update(size=self.size, content_hash=self.sha1, content_hash_name="sha1", file_extension=ext)
        else:
            it["file_extension"] = ""
        return it


class _DownloadNginx(harness.NginxOrigin):
    """The real nginx behind the download URLs (see the module docstring).
    Reuses NginxOrigin's start check and url(); the config is its own."""

    def __init__(self, prefix, blobs, secret, download_conns, download_rate, expires_arg="expires"):
        self.dir = prefix
        self.root = blobs
        self.log = os.path.join(prefix, "access.log")
        conn = ""
        if download_conns:
            conn = "limit_conn dl_accounts %d;\n      limit_conn_status 403;" % download_conns
        rate = "limit_rate %s;" % download_rate if download_rate else ""

        def make_conf(port):
            http = """
  types { }
  # The account a download belongs to, from /dl/<account>/<file_id>.
  map $uri $dl_account {
    "~^/dl/(?<dl_acct>[^/]+)/" $dl_acct;
    default "";
  }
  limit_conn_zone $dl_account zone=dl_accounts:1m;
  server {
    listen 127.0.0.1:%(port)d;
    etag on;
    location ~ ^/dl/(?<acct>[^/]+)/(?<fid>[0-9a-f]+)$ {
      secure_link $arg_md5,$arg_%(expires_arg)s;
      secure_link_md5 "$secure_link_expires$uri %(secret)s";
      if ($secure_link = "") { return 403; }
      if ($secure_link = "0") { return 410; }
      %(conn)s
      %(rate)s
      alias %(blobs)s/$fid;
    }
    location / { return 404; }
  }
""" % dict(port=port, secret=secret, conn=conn, rate=rate, blobs=blobs, expires_arg=expires_arg)
            return harness.nginx_conf(prefix, DL_LOG_FORMAT, self.log, http)

        harness.launch_nginx(self, make_conf, what="download nginx to listen")

    log_re = DL_LOG_RE

    def _entry(self, g):
        """NginxOrigin's fields plus limit_conn ("PASSED", "REJECTED" or "-"
        when limit_conn never ran)."""
        return dict(super()._entry(g), limit_conn=g[12])

    keep_dir = True  # the prefix dir (and its log) is under the caller's workdir


class FakeAliyun:
    """The fake account: one API server, one download nginx, one file tree
    (in the resource drive). See the module docstring for the contract.

    access_ttl and url_life are float seconds; link_rate and list_rate are
    requests per second (None/0: unlimited); download_conns is nginx's
    limit_conn per account (None/0: unlimited); download_rate is nginx
    limit_rate syntax ("2m") or None.

    `clock` (default time.monotonic) is what access-token lifetimes and the
    rate buckets are measured with: the fake's own tests hand a ManualClock
    and move it instead of sleeping. Download links expire by the wall
    clock whatever it is (nginx checks them)."""

    def __init__(self, workdir, refresh_token=None, client_id="cid", client_secret="csecret",
                 access_ttl=3.0, url_life=4.0, page_size=4, link_rate=1.0, list_rate=4.0,
                 download_conns=3, download_rate=None, account_id="acct1", clock=None,
                 expires_arg="expires"):
        self.workdir = workdir
        self.clock = clock or time.monotonic
        # The download URL's expiry parameter. The gateway reads `expires`
        # (issue 11); a test that needs links to die unannounced names it
        # something else.
        self.expires_arg = expires_arg
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_ttl = float(access_ttl)
        self.url_life = float(url_life)
        self.page_size = page_size
        self.account_id = account_id
        self.secret = secrets.token_hex(16)  # nginx secure_link secret
        self.blobs = os.path.join(workdir, "blobs")
        os.makedirs(self.blobs, exist_ok=True)
        self.drive_ids = {"default": "10001", "resource": "10002", "backup": "10003"}
        self.lock = threading.Lock()

        self.user_id = secrets.token_hex(16)
        self._jwt_key = secrets.token_bytes(32)
        if refresh_token is None:
            refresh_token = self._refresh_jwt()
        self.initial_refresh_token = refresh_token
        # tokens: refresh token -> "live" | "used" | "revoked"; access token -> expiry by self.clock
        self._refresh = {refresh_token: "live"}
        self._current = refresh_token
        self._access = {}
        self._link_bucket = _Bucket(link_rate, self.clock)
        self._api_bucket = _Bucket(list_rate, self.clock)

        # drive id -> {file_id: _Node}; only the resource drive holds files.
        self._drives = {}
        for d in self.drive_ids.values():
            self._drives[d] = {"root": _Node(d, "root", "", "", "folder")}
        self._tree = self._drives[self.drive_ids["resource"]]

        self._stats = dict(refreshes=0, reused_tokens=[], invalid_tokens=0, access_expired=0,
                           access_invalid=0, list_calls=0, link_calls={}, too_many={},
                           drive_info_calls=0)
        self.calls = []  # every API request: time, path, status, code, json body
        # Knobs for the gateway's tests:
        self.token_delay = 0.0     # seconds between rotating a refresh token and answering:
                                   # the window in which a dying client would lose the account
        self.expiration_lie = 0.0  # seconds added to the `expiration` reported for links
                                   # (the link still dies on time): forces 410s mid-object
        self.presented = []        # every refresh token presented to the token endpoints
        self._stopped = False

        self.nginx = _DownloadNginx(os.path.join(workdir, "nginx"), self.blobs, self.secret,
                                    download_conns, download_rate, expires_arg)
        try:
            self._start_api()
        except BaseException:
            self.nginx.stop()
            raise
        self.api_url = "http://127.0.0.1:%d" % self.port
        self.relay_url = self.api_url + "/relay/token"

    # ----------------------------------------------------------------- tree

    def _split(self, path):
        if not path.startswith("/"):
            raise ValueError("absolute path expected: %r" % path)
        return [p for p in path.split("/") if p]

    def _mkdirs(self, parts):
        """The folder at `parts`, created (with parents) if missing. Lock held."""
        node = self._tree["root"]
        for name in parts:
            fid = node.children.get(name)
            if fid is None:
                child = _Node(node.drive_id, secrets.token_hex(20), node.file_id, name, "folder")
                self._tree[child.file_id] = child
                node.children[name] = child.file_id
                node = child
            else:
                node = self._tree[fid]
                if node.type != "folder":
                    raise ValueError("%r is a file" % name)
        return node

    def add_folder(self, path):
        """Creates the folder (and its parents); returns its file_id ("root"
        for "/"). Existing folders are kept."""
        with self.lock:
            return self._mkdirs(self._split(path)).file_id

    def add_file(self, path, data):
        """Stores `data` at `path` in the resource drive (parents created);
        returns the file_id. An existing file keeps its id, new contents."""
        parts = self._split(path)
        if not parts:
            raise ValueError("a file needs a name")
        with self.lock:
            parent = self._mkdirs(parts[:-1])
            fid = parent.children.get(parts[-1])
            if fid is None:
                node = _Node(parent.drive_id, secrets.token_hex(20), parent.file_id, parts[-1], "file")
            else:
                node = self._tree[fid]
                if node.type != "file":
                    raise ValueError("%r is a folder" % path)
            # Write then rename: nginx never serves a half-written blob.
            blob = os.path.join(self.blobs, node.file_id)
            with open(blob + ".tmp", "wb") as f:
                f.write(data)
            os.replace(blob + ".tmp", blob)
            node.size = len(data)
            node.sha1 = hashlib.sha1(data).hexdigest().upper()
            node.updated = time.time()
            self._tree[node.file_id] = node
            parent.children[node.name] = node.file_id
            return node.file_id

    def file_id(self, path):
        """The file_id at `path` (KeyError if there is none)."""
        with self.lock:
            node = self._tree["root"]
            for name in self._split(path):
                node = self._tree[node.children[name]]
            return node.file_id

    # ----------------------------------------------------------------- tokens

    def _refresh_jwt(self):
        now = int(time.time())
        return make_jwt({"sub": self.user_id, "aud": self.client_id, "iss": "https://open.alipan.com",
                         "exp": now + 90 * 86400, "iat": now, "jti": secrets.token_hex(16),
                         "typ": "refresh", "device_id": secrets.token_hex(16)}, self._jwt_key)

    def _access_jwt(self):
        now = int(time.time())
        custom = json.dumps({"clientId": self.client_id, "domainId": "bj29", "scope": [
            "user:base", "file:all:read", "file:all:write", "album:shared:read", "DRIVE.ALL",
            "FILE.ALL", "USER.ALL", "VIEW.ALL", "STORAGE.ALL", "STORAGEFILE.LIST", "BATCH",
            "OAUTH.ALL", "IMAGE.ALL", "INVITE.ALL", "ACCOUNT.ALL", "SYNCMAPPING.LIST"],
            "role": "user", "ref": "https://open.alipan.com", "device_id": secrets.token_hex(16)},
            separators=(",", ":"))
        return make_jwt({"userId": self.user_id, "customJson": custom, "exp": now + 7200, "iat": now,
                         "jti": secrets.token_hex(16)}, self._jwt_key)

    @property
    def current_refresh_token(self):
        """The refresh token a correct client holds now (the latest issued)."""
        with self.lock:
            return self._current

    def revoke(self):
        """The current refresh token stops working (401 invalid refresh
        token, counted in invalid_tokens, not as reuse) as when the user
        revokes the authorization. Issued access tokens stay valid until they
        expire. Returns a fresh refresh token (the user authorizing again),
        which becomes current_refresh_token."""
        with self.lock:
            self._refresh[self._current] = "revoked"
            self._current = self._refresh_jwt()
            self._refresh[self._current] = "live"
            return self._current

    def _exchange(self, body, relay):
        if not relay and (body.get("client_id") != self.client_id
                          or body.get("client_secret") != self.client_secret):
            raise ApiError(401, "InvalidClient", "client_id or client_secret is invalid")
        if body.get("grant_type") != "refresh_token":
            raise ApiError(400, "InvalidParameter.GrantType", "grant_type must be refresh_token")
        rt = body.get("refresh_token")
        if not isinstance(rt, str) or not rt:
            raise ApiError(400, "InvalidParameter.RefreshToken", "refresh_token is required")
        with self.lock:
            self.presented.append(rt)
            state = self._refresh.get(rt)
            if state != "live":
                if state == "used":
                    self._stats["reused_tokens"].append(rt)
                else:
                    self._stats["invalid_tokens"] += 1
                raise ApiError(401, "InvalidParameter.RefreshToken", "invalid refresh token")
            # Rotation: the presented token is consumed as the new pair is
            # issued. Older access tokens stay valid until their own expiry.
            self._refresh[rt] = "used"
            new_rt = self._refresh_jwt()
            self._refresh[new_rt] = "live"
            self._current = new_rt
            at = self._access_jwt()
            self._access[at] = self.clock() + self.access_ttl
            self._stats["refreshes"] += 1
        if self.token_delay:
            time.sleep(self.token_delay)  # rotated already: the answer is still on its way
        return dict(access_token=at, refresh_token=new_rt,
                    expires_in=max(1, int(self.access_ttl)), token_type="Bearer")

    def _authorize(self, header):
        """Checks `Authorization: Bearer <access token>`."""
        tok = header[len("Bearer "):].strip() if header and header.startswith("Bearer ") else None
        with self.lock:
            exp = self._access.get(tok)
            if exp is None:
                self._stats["access_invalid"] += 1
                raise ApiError(401, "AccessTokenInvalid", "AccessToken is invalid. ErrValidateTokenFailed")
            if self.clock() >= exp:
                self._stats["access_expired"] += 1
                raise ApiError(401, "AccessTokenExpired", "AccessToken is expired. ErrValidateTokenFailed")

    def _admit(self, endpoint):
        """The account's rate limits: getDownloadUrl has its own bucket, the
        other /adrive/ calls share one. 429 consumes nothing."""
        bucket = self._link_bucket if endpoint == "getDownloadUrl" else self._api_bucket
        with self.lock:
            if bucket.take():
                return
            self._stats["too_many"][endpoint] = self._stats["too_many"].get(endpoint, 0) + 1
        raise ApiError(429, "TooManyRequests", "Too Many Requests")

    # ----------------------------------------------------------------- /adrive

    def _drive(self, body):
        """The tree of body["drive_id"]. Lock held."""
        d = body.get("drive_id")
        if not isinstance(d, str) or not d:
            raise ApiError(400, "InvalidParameter.DriveId", "drive_id is required")
        if d not in self._drives:
            raise ApiError(404, "NotFound.Drive", "The resource drive cannot be found. drive not exist")
        return self._drives[d]

    @staticmethod
    def _node(tree, fid, field):
        if not isinstance(fid, str) or not fid:
            raise ApiError(400, "InvalidParameter.%s" % field, "%s is required" % field)
        node = tree.get(fid)
        if node is None:
            raise ApiError(404, "NotFound.File", "The resource file cannot be found. file not exist")
        return node

    def _drive_info(self, body):
        with self.lock:
            self._stats["drive_info_calls"] += 1
        return dict(user_id=self.account_id, name="Fake User", avatar="",
                    default_drive_id=self.drive_ids["default"],
                    resource_drive_id=self.drive_ids["resource"],
                    backup_drive_id=self.drive_ids["backup"])

    def _list(self, body):
        limit = body.get("limit", LIST_DEFAULT_LIMIT)
        if type(limit) is not int or not 1 <= limit <= 100:
            raise ApiError(400, "InvalidParameter.Limit", "limit must be an integer in [1, 100]")
        marker = body.get("marker", "")
        if marker is None:
            marker = ""
        if not isinstance(marker, str):
            raise ApiError(400, "InvalidParameter.Marker", "marker is invalid")
        with self.lock:
            tree = self._drive(body)
            parent = self._node(tree, body.get("parent_file_id"), "ParentFileId")
            if parent.type != "folder":
                raise ApiError(404, "NotFound.File", "The resource file cannot be found. file not exist")
            items = sorted((tree[f] for f in parent.children.values()), key=lambda n: n.name)
            # Opaque marker: base64url of "<drive>/<parent>/<offset>", which
            # must name this very listing and a real position in it.
            offset = 0
            if marker:
                try:
                    d, p, o = base64.urlsafe_b64decode(marker.encode()).decode().split("/")
                    offset = int(o)
                    ok = d == parent.drive_id and p == parent.file_id and 0 < offset <= len(items)
                except (ValueError, UnicodeDecodeError):
                    ok = False
                if not ok:
                    raise ApiError(400, "InvalidParameter.Marker", "marker is invalid")
            end = offset + min(limit, self.page_size)
            page = [n.item() for n in items[offset:end]]
            nxt = ""
            if end < len(items):
                nxt = base64.urlsafe_b64encode(("%s/%s/%d" % (parent.drive_id, parent.file_id, end))
                                               .encode()).decode()
            self._stats["list_calls"] += 1
        return dict(items=page, next_marker=nxt)

    def _link(self, body):
        exp = body.get("expire_sec", LINK_DEFAULT_EXPIRE)
        if type(exp) is not int or not 1 <= exp <= LINK_MAX_EXPIRE:
            raise ApiError(400, "InvalidParameter.ExpireSec",
                           "expire_sec must be an integer in [1, %d]" % LINK_MAX_EXPIRE)
        with self.lock:
            tree = self._drive(body)
            node = self._node(tree, body.get("file_id"), "FileId")
            if node.type != "file":
                raise ApiError(400, "NotSupported.File", "The file type is not supported. folder cannot be downloaded")
            deadline = time.time() + min(exp, self.url_life)
            # nginx compares whole seconds (dead once time() > expires):
            # round up, so the link lives at least as long as `expiration` says.
            expires = math.ceil(deadline)
            uri = "/dl/%s/%s" % (self.account_id, node.file_id)
            url = "%s%s?%s=%d&md5=%s" % (self.nginx.url(""), uri, self.expires_arg, expires,
                                             nginx_md5(expires, uri, self.secret))
            lc = self._stats["link_calls"]
            lc[node.file_id] = lc.get(node.file_id, 0) + 1
            return dict(domain_id="bj29", drive_id=node.drive_id, file_id=node.file_id, url=url,
                        expiration=iso_ms(deadline + self.expiration_lie), method="GET",
                        size=node.size)

    # ----------------------------------------------------------------- server

    def _dispatch(self, path, headers, raw):
        """One POST: returns (status, JSON object, parsed body or raw text)."""
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            raise ApiError(404, "NotFound", "The resource cannot be found. %s" % path)
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(400, "InvalidParameter", "Content-Type must be application/json")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "InvalidParameter", "the body is not valid JSON")
        if not isinstance(body, dict):
            raise ApiError(400, "InvalidParameter", "the body must be a JSON object")
        if endpoint in ("access_token", "relay"):  # not rate-limited
            return self._exchange(body, relay=endpoint == "relay")
        self._authorize(headers.get("Authorization"))
        self._admit(endpoint)
        return {"getDriveInfo": self._drive_info, "list": self._list,
                "getDownloadUrl": self._link}[endpoint](body)

    def _record(self, path, status, code, raw):
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            body = raw.decode("utf-8", "replace")
        with self.lock:
            self.calls.append(dict(time=time.time(), path=path, status=status, code=code, json=body))

    def _start_api(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, obj, body=True):
                data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _read_body(self):
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):
                path = self.path.split("?", 1)[0]
                try:
                    raw = self._read_body()
                except ValueError:
                    self.close_connection = True
                    raw = b""
                    status, obj = 400, dict(code="InvalidParameter", message="bad chunked body")
                else:
                    try:
                        status, obj = 200, fake._dispatch(path, self.headers, raw)
                    except ApiError as e:
                        status, obj = e.status, dict(code=e.code, message=e.message)
                fake._record(path, status, obj.get("code") if status != 200 else None, raw)
                self._send(status, obj)

            def _not_post(self, body=True):
                path = self.path.split("?", 1)[0]
                fake._record(path, 405, "MethodNotAllowed", b"")
                self._send(405, dict(code="MethodNotAllowed", message="only POST is supported"), body)

            do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_post

            def do_HEAD(self):
                self._not_post(body=False)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        # A short poll interval: stop() (server.shutdown) returns quickly.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs=dict(poll_interval=0.05),
                                       daemon=True)
        self.thread.start()

    # ----------------------------------------------------------------- observation

    def stats(self):
        """A consistent snapshot (copies) of the counters, plus `calls`."""
        with self.lock:
            s = json.loads(json.dumps(self._stats))
            s["calls"] = [dict(c) for c in self.calls]
            return s

    def download_entries(self, settle=True):
        """Parsed nginx access-log lines for /dl/ (NginxOrigin.entries keys
        and its `settle`:
        start, end, time, status, uri, bytes, range, complete, ... plus
        limit_conn: "PASSED" / "REJECTED" / "-")."""
        return [e for e in self.nginx.entries(settle) if e["uri"].startswith("/dl/")]

    def max_concurrent_downloads(self, settle=True):
        """The most /dl/ requests in flight at once, from the log's
        [end - request_time, end) intervals. Only the requests limit_conn let
        through count (a 403 for being over the limit, or for a bad sign,
        never held a slot), and one connection counts once (nginx serves a
        connection's requests one after another).

        The log has millisecond resolution: a request ending in the same
        millisecond another starts does not overlap it, while requests that
        took 0 ms count as in flight with everything else in that
        millisecond."""
        events = []
        for e in self.download_entries(settle):
            if e["limit_conn"] != "PASSED":
                continue
            start, end = round(e["start"], 3), round(e["end"], 3)
            # At equal times: ends of real intervals, then starts, then the
            # ends of 0 ms requests (so those are seen with their peers).
            events.append((start, 1, e["conn"]))
            events.append((end, 0 if end > start else 2, e["conn"]))
        active = {}  # nginx connection number -> requests in flight on it
        best = 0
        for _, kind, conn in sorted(events):
            if kind == 1:
                active[conn] = active.get(conn, 0) + 1
                best = max(best, len(active))
            else:
                active[conn] -= 1
                if not active[conn]:
                    del active[conn]
        return best

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        try:
            self.server.shutdown()
            self.server.server_close()
        finally:
            self.nginx.stop()
