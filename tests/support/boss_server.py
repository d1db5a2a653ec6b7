"""A local stand-in for the Boss v1 REST API (BossDB), for tests that drive intern's real code.

:class:`BossServer` serves on 127.0.0.1 what intern 1.4.2's ``BossRemote`` calls for projects
and cutouts: ``GET``/``POST`` of ``/v1/collection/{c}[/experiment/{e}[/channel/{ch}]]`` and
``/v1/coord/{name}`` (the JSON fields intern parses) and their list routes; ``GET``/``POST``
``/v1/cutout/{c}/{e}/{ch}/{res}/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/[0:1/]`` (blosc-compressed C-order
ZYX bodies; ``?filter=`` on annotation channels, other query parameters ignored) and
``PUT /v1/cutout/to_black/...``.  Every request needs ``Authorization: Token <token>`` (else
403); errors are JSON with the Boss's ``status``/``code``/``message`` and DRF's ``detail``;
cutout reads can be made to fail on purpose (:meth:`BossServer.fail_next`).

Not covered: metadata, ids, bounding boxes, reservations, downsample requests, groups,
permissions, users, updates, deletes, time samples other than 0, and isotropic hierarchies.
Level ``r > 0`` halves x and y (z kept) by decimation, not averaging.  Volumes are dense
``np.zeros`` arrays of a whole level (pages untouched stay unallocated on Linux), so keep
coordinate frames modest.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from urllib.parse import parse_qs, urlsplit

import blosc
import numpy as np

DATATYPES = ("uint8", "uint16", "uint64")
CHANNEL_TYPES = ("image", "annotation")
VOXEL_UNITS = ("nanometers", "micrometers", "millimeters", "centimeters")
KINDS = ("Collection", "Experiment", "Channel")
_RANGE = re.compile(r"^(\d+):(\d+)$")


class BossError(Exception):
    """An error the server answers as JSON: Boss's ``status``/``code``/``message`` and DRF's ``detail``."""

    def __init__(self, status: int, message: str, code: int = 0):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def payload(self) -> bytes:
        """Return the JSON body."""
        body = {"status": self.status, "code": self.code, "message": self.message, "detail": self.message}
        return json.dumps(body).encode()


class _HTTPServer(ThreadingHTTPServer):
    def server_bind(self):  # skip HTTPServer's getfqdn(), which can stall on a machine without DNS
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as intern's requests.Session expects
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    timeout = 30

    def log_message(self, *args):
        pass

    def _dispatch(self):
        boss: BossServer = self.server.boss
        method = self.command
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url, fault = urlsplit(self.path), None
        parts = [part for part in url.path.split("/") if part]
        boss.log.append((method, self.path))
        try:
            given = self.headers.get("Authorization")
            if given != f"Token {boss.token}":
                raise BossError(403, "Invalid token." if given else "Authentication credentials were not provided.")
            if method == "GET" and parts[:2] == ["v1", "cutout"]:
                fault = boss._cutout_read()
            if parts[:1] != ["v1"]:
                raise BossError(404, f"No Boss v1 route for {url.path}", 1000)
            status, ctype, payload = boss._route(method, parts[1:], parse_qs(url.query), body)
        except BossError as error:
            status, ctype, payload = error.status, "application/json", error.payload()
        except Exception as error:  # a bug in this server: say so rather than drop the connection
            status, ctype, payload = 500, "application/json", BossError(500, repr(error), 9002).payload()
        if fault == "503":
            status, ctype, payload = 503, "application/json", BossError(503, "Service unavailable (fault).").payload()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault == "drop":  # half the promised body, then the connection closes
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
        else:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch


class BossServer:
    """An in-memory Boss v1 API on 127.0.0.1, served from a daemon thread.

    Parameters
    ----------
    token : str
        The only token accepted (``Authorization: Token <token>``).
    creator : str
        The ``creator`` reported for every resource.

    Attributes
    ----------
    token : str
    cutout_requests : int
        Authenticated cutout GETs received, including those answered with an injected fault.
    log : list of (str, str)
        Method and path (with query) of every request, in order.
    """

    def __init__(self, token: str = "test-token", creator: str = "testuser"):
        self.token, self.creator = token, creator
        self.cutout_requests = 0
        self.log: list[tuple[str, str]] = []
        self._records: dict[tuple, dict] = {}  # (c,), (c, e), (c, e, ch) -> JSON record
        self._coords: dict[str, dict] = {}
        self._volumes: dict[tuple, np.ndarray] = {}  # (c, e, ch, level) -> ZYX array of the level box
        self._faults: list[str] = []
        self._lock = threading.RLock()
        self._httpd = self._thread = None

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "BossServer":
        """Bind a free port on 127.0.0.1 and serve from a daemon thread; returns ``self``."""
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.boss = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="boss-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = self._thread = None

    def __enter__(self) -> "BossServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port served (after :meth:`start`)."""
        return self._httpd.server_address[1]

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as intern's ``host`` setting wants it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    def remote(self, token: str | None = None):
        """Return an ``intern.remote.boss.BossRemote`` for this server (``token`` defaults to :attr:`token`)."""
        from intern.remote.boss import BossRemote

        return BossRemote({"protocol": "http", "host": self.host, "token": token or self.token})

    def fail_next(self, n: int, mode: str) -> None:
        """Make the next ``n`` cutout GETs fail (queued after faults already pending).

        Parameters
        ----------
        n : int
        mode : {"drop", "503"}
            ``"drop"``: headers and half the body are sent, then the connection closes;
            ``"503"``: HTTP 503 with a JSON ``detail``.
        """
        if mode not in ("drop", "503"):
            raise ValueError(f"mode must be 'drop' or '503', not {mode!r}")
        with self._lock:
            self._faults.extend([mode] * n)

    # --- seeding and inspection -----------------------------------------------------------
    def add_channel(self, collection: str, experiment: str, channel: str, data_zyx: np.ndarray,
                    voxel_size=(1, 1, 1), voxel_unit: str = "nanometers", offset_zyx=(0, 0, 0),
                    channel_type: str = "image", levels: int | None = None) -> None:
        """Create a channel holding ``data_zyx``, with its collection, frame and experiment if new.

        Parameters
        ----------
        collection, experiment, channel : str
        data_zyx : ndarray
            3-D, of dtype uint8, uint16 or uint64 (the channel's datatype).
        voxel_size : tuple of float
            ZYX, in ``voxel_unit``; used only when the coordinate frame is created.
        voxel_unit : str
        offset_zyx : tuple of int
            Where ``data_zyx[0, 0, 0]`` lies.  A new frame (named ``{collection}_{experiment}``)
            spans exactly the data; in an existing experiment the data must fit its frame.
        channel_type : {"image", "annotation"}
        levels : int, optional
            ``num_hierarchy_levels`` of a new experiment (default 1); level ``r`` holds every
            ``2**r``-th voxel in x and y.  For an existing experiment it must match, if given.
        """
        data = np.asarray(data_zyx)
        if data.ndim != 3 or data.dtype.name not in DATATYPES:
            raise ValueError(f"data must be 3-D uint8, uint16 or uint64, not {data.ndim}-D {data.dtype}")
        stops = [o + s for o, s in zip(offset_zyx, data.shape)]
        key = (collection, experiment, channel)
        with self._lock:
            try:
                if (collection,) not in self._records:
                    self._create((collection,), {})
                if (collection, experiment) not in self._records:
                    frame = f"{collection}_{experiment}"
                    self._create_coord(frame, {
                        **{f"{a}_start": int(o) for a, o in zip("zyx", offset_zyx)},
                        **{f"{a}_stop": int(s) for a, s in zip("zyx", stops)},
                        **{f"{a}_voxel_size": v for a, v in zip("zyx", voxel_size)}, "voxel_unit": voxel_unit})
                    self._create((collection, experiment), {"coord_frame": frame, "num_hierarchy_levels": levels or 1})
                count = self._records[(collection, experiment)]["num_hierarchy_levels"]
                box = self._level_box(key, 0)
                if levels is not None and levels != count:
                    raise BossError(400, f"experiment {experiment} has {count} levels, not {levels}")
                if any(o < b0 or s > b1 for o, s, (b0, b1) in zip(offset_zyx, stops, box)):
                    raise BossError(400, f"data at {tuple(offset_zyx)} of shape {data.shape} lies outside the "
                                         f"frame {box} (ZYX)")
                self._create(key, {"datatype": data.dtype.name, "type": channel_type})
            except BossError as error:
                raise ValueError(error.message) from None
            self._records[key]["downsample_status"] = "DOWNSAMPLED" if count > 1 else "NOT_DOWNSAMPLED"
            full = self._volume(key, 0)[0]
            full[tuple(slice(o - b0, s - b0) for o, s, (b0, _) in zip(offset_zyx, stops, box))] = data
            for level in range(1, count):  # level r, voxel i: level 0 voxel i * 2**r (the first inside the frame)
                f = 2 ** level
                rows, cols = ([max(i * f - b0, 0) for i in range(*self._level_box(key, level)[axis])]
                              for axis, b0 in ((1, box[1][0]), (2, box[2][0])))
                self._volumes[key + (level,)] = np.ascontiguousarray(full[:, rows][:, :, cols])

    def array(self, collection: str, experiment: str, channel: str, resolution: int = 0) -> np.ndarray:
        """Return a copy of the channel's whole level ``resolution`` (ZYX, its frame box at that level)."""
        with self._lock:
            if not 0 <= resolution < self._record((collection, experiment))["num_hierarchy_levels"]:
                raise ValueError(f"experiment {experiment} has no resolution {resolution}")
            return self._volume((collection, experiment, channel), resolution)[0].copy()

    # --- project service ------------------------------------------------------------------
    def _route(self, method: str, parts: list, query: dict, body: bytes):
        with self._lock:
            if parts[:1] == ["cutout"]:
                return self._cutout(method, parts[1:], query, body)
            if parts[:1] == ["coord"] and len(parts) <= 2 and method in ("GET", "POST"):
                if len(parts) == 1:
                    return _json(200, {"coords": sorted(self._coords)})
                return _json(200, self._coord(parts[1])) if method == "GET" else \
                    _json(201, self._create_coord(parts[1], _fields(body)))
            if parts[:1] == ["collection"] and len(parts) <= 6 and parts[2:3] in ([], ["experiment"]) \
                    and parts[4:5] in ([], ["channel"]) and method in ("GET", "POST"):
                return self._project(method, tuple(parts[1::2]), len(parts) % 2 == 1, body)
            raise BossError(404, f"No Boss v1 route for {method} /v1/{'/'.join(parts)}", 1000)

    def _project(self, method: str, key: tuple, listing: bool, body: bytes):
        if not listing:
            return _json(200, self._record(key)) if method == "GET" else _json(201, self._create(key, _fields(body)))
        if method != "GET":
            raise BossError(405, "Lists are read-only", 1000)
        if key:
            self._record(key)
        names = sorted(k[-1] for k in self._records if len(k) == len(key) + 1 and k[:-1] == key)
        return _json(200, {("collections", "experiments", "channels")[len(key)]: names})

    def _record(self, key: tuple) -> dict:
        for n in range(1, len(key) + 1):
            if key[:n] not in self._records:
                raise BossError(404, f"{KINDS[n - 1]} {key[n - 1]} not found", 4000)
        record = dict(self._records[key])
        children = sorted(k[-1] for k in self._records if len(k) == len(key) + 1 and k[:-1] == key)
        if len(key) < 3:
            record[("experiments", "channels")[len(key) - 1]] = children
        return record

    def _coord(self, name: str) -> dict:
        if name not in self._coords:
            raise BossError(404, f"Coordinate frame {name} not found", 4000)
        return dict(self._coords[name])

    def _create(self, key: tuple, fields: dict) -> dict:
        if len(key) > 1:
            parent = self._record(key[:-1])
        if key in self._records:
            raise BossError(400, f"{KINDS[len(key) - 1]} {key[-1]} already exists", 6002)
        common = {"name": key[-1], "description": fields.get("description") or "", "creator": self.creator,
                  "public": False}
        if len(key) == 1:
            record = common
        elif len(key) == 2:
            self._coord(fields.get("coord_frame") or "")
            method, levels = fields.get("hierarchy_method") or "anisotropic", _int(fields, "num_hierarchy_levels", 1)
            if method != "anisotropic" or levels < 1:
                raise BossError(400, f"Unsupported hierarchy {method!r} with {levels} levels (anisotropic only)", 1003)
            record = {**common, "collection": key[0], "coord_frame": fields["coord_frame"],
                      "num_hierarchy_levels": levels, "hierarchy_method": method,
                      "num_time_samples": _int(fields, "num_time_samples", 1),
                      "time_step": fields.get("time_step") or 0, "time_step_unit": fields.get("time_step_unit") or ""}
        else:
            datatype, kind = fields.get("datatype"), fields.get("type") or "image"
            if datatype not in DATATYPES or kind not in CHANNEL_TYPES or (kind == "annotation" and
                                                                          datatype != "uint64"):
                raise BossError(400, f"Invalid channel type {kind!r} / datatype {datatype!r} (image: "
                                     f"{', '.join(DATATYPES)}; annotation: uint64)", 1003)
            record = {**common, "experiment": parent["name"], "type": kind, "datatype": datatype,
                      "default_time_sample": _int(fields, "default_time_sample", 0),
                      "base_resolution": _int(fields, "base_resolution", 0),
                      "sources": list(fields.get("sources") or []), "related": list(fields.get("related") or []),
                      "downsample_status": "NOT_DOWNSAMPLED", "storage_type": "spdb"}
        self._records[key] = record
        return self._record(key)

    def _create_coord(self, name: str, fields: dict) -> dict:
        if name in self._coords:
            raise BossError(400, f"Coordinate frame {name} already exists", 6002)
        try:
            record = {"name": name, "description": fields.get("description") or "",
                      **{f"{a}_{end}": int(fields[f"{a}_{end}"]) for a in "xyz" for end in ("start", "stop")},
                      **{f"{a}_voxel_size": float(fields.get(f"{a}_voxel_size", 1)) for a in "xyz"},
                      "voxel_unit": fields.get("voxel_unit") or "nanometers"}
        except (KeyError, TypeError, ValueError) as error:
            raise BossError(400, f"Invalid coordinate frame fields: {error}", 1003) from None
        if any(record[f"{a}_start"] >= record[f"{a}_stop"] for a in "xyz") or record["voxel_unit"] not in VOXEL_UNITS:
            raise BossError(400, f"Invalid coordinate frame {name}: empty extent or unknown voxel unit", 1003)
        self._coords[name] = record
        return dict(record)

    # --- volume service -------------------------------------------------------------------
    def _level_box(self, key: tuple, level: int) -> list:
        """ZYX (start, stop) of the channel's frame at ``level``: x and y start // 2**level, stop rounded up."""
        frame = self._coords[self._records[key[:2]]["coord_frame"]]
        f = 2 ** level
        return [(frame["z_start"], frame["z_stop"])] + [(frame[f"{a}_start"] // f, -(-frame[f"{a}_stop"] // f))
                                                        for a in "yx"]

    def _volume(self, key: tuple, level: int):
        box = self._level_box(key, level)
        if key + (level,) not in self._volumes:
            dtype = self._record(key)["datatype"]
            self._volumes[key + (level,)] = np.zeros([b1 - b0 for b0, b1 in box], dtype=dtype)
        return self._volumes[key + (level,)], box

    def _cutout_read(self):
        with self._lock:
            self.cutout_requests += 1
            return self._faults.pop(0) if self._faults else None

    def _cutout(self, method: str, parts: list, query: dict, body: bytes):
        black = parts[:1] == ["to_black"]
        if (method, black) not in (("GET", False), ("POST", False), ("PUT", True)):
            raise BossError(405, f"{method} is not supported on this cutout route", 1000)
        key, array, region = self._cutout_region(parts[1:] if black else parts)
        if black:
            array[region] = 0
            return 200, "application/json", b""
        if method == "POST":
            try:
                raw = blosc.decompress(body)
            except Exception as error:
                raise BossError(400, f"Cannot decompress the body as blosc: {error}", 5003) from None
            if len(raw) != array[region].nbytes:
                raise BossError(400, f"Data dimensions do not match the cutout arguments: {len(raw)} bytes, want "
                                     f"{array[region].nbytes} ({array.dtype} {array[region].shape} ZYX)", 2002)
            array[region] = np.frombuffer(raw, dtype=array.dtype).reshape(array[region].shape)
            return 201, "application/json", b""
        data = array[region]
        if query.get("filter"):
            if self._records[key]["type"] != "annotation":
                raise BossError(400, "Filter only supported on annotation channels", 1005)
            try:
                ids = np.array([int(i) for i in query["filter"][0].split(",")], dtype=np.uint64)
            except ValueError:
                raise BossError(400, f"Invalid filter ids {query['filter'][0]!r}", 1005) from None
            data = np.where(np.isin(data, ids), data, 0).astype(data.dtype)
        return 200, "application/blosc", blosc.compress(np.ascontiguousarray(data).tobytes(), typesize=data.itemsize)

    def _cutout_region(self, parts: list):
        """Check ``c/e/ch/res/x/y/z[/t]``; return the channel key, its level array and the ZYX slices."""
        if len(parts) not in (7, 8):
            raise BossError(400, f"Invalid cutout URL /{'/'.join(parts)}: want c/e/ch/res/x0:x1/y0:y1/z0:z1/", 1000)
        key, args = tuple(parts[:3]), "/".join(parts[3:7])
        self._record(key)
        levels = self._records[key[:2]]["num_hierarchy_levels"]
        if not parts[3].isdigit() or int(parts[3]) >= levels:
            raise BossError(400, f"Invalid resolution {parts[3]}. The resolution must be between 0 and {levels - 1}",
                            1001)
        matches = [_RANGE.match(arg) for arg in parts[4:7]]
        if not all(matches):
            raise BossError(400, f"Type error in cutout argument {args}", 1002)
        ranges = [(int(m[1]), int(m[2])) for m in matches][::-1]  # ZYX
        array, box = self._volume(key, int(parts[3]))
        if any(a0 >= a1 or a0 < b0 or a1 > b1 for (a0, a1), (b0, b1) in zip(ranges, box)):
            frame = ", ".join(f"{a} {b0}:{b1}" for a, (b0, b1) in zip("zyx", box))
            raise BossError(400, f"Incorrect cutout arguments {args} (frame at this resolution: {frame})", 1001)
        if len(parts) == 8 and parts[7] != "0:1":
            raise BossError(400, f"Invalid time range {parts[7]}: this test server stores time sample 0 only", 1000)
        return key, array, tuple(slice(a0 - b0, a1 - b0) for (a0, a1), (b0, _) in zip(ranges, box))


def _json(status: int, body: dict):
    return status, "application/json", json.dumps(body).encode()


def _int(fields: dict, name: str, default: int) -> int:
    try:
        return int(fields.get(name) or default)
    except (TypeError, ValueError):
        raise BossError(400, f"{name} must be an integer, not {fields.get(name)!r}", 1003) from None


def _fields(body: bytes) -> dict:
    try:
        fields = json.loads(body or b"{}")
    except ValueError:
        raise BossError(400, "The request body is not JSON", 1003) from None
    if not isinstance(fields, dict):
        raise BossError(400, "The request body is not a JSON object", 1003)
    return fields
