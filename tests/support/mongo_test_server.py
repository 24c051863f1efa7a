"""A tiny MongoDB wire-protocol server for TESTS ONLY -- it is not MongoDB.

Real pymongo 4 clients, in this process or in others, talk TCP to it on
127.0.0.1 as if it were a standalone `mongod` (it reports itself as MongoDB
8.0, wire version 25). It lets the test suite run hyperopt's MongoTrials,
MongoJobs, MongoWorker and GridFS on a machine without MongoDB, both in
process (`start_server()`) and behind the fake `tests/support/bin/mongod` executable
(`python tests/support/mongo_test_server.py --port N`).

Use:
    server = start_server()            # in process, free port, daemon thread
    host, port = server.server_address
    ...
    server.shutdown()                  # also closes the open connections
or  python tests/support/mongo_test_server.py [--host 127.0.0.1] [--port 27017]
    (prints one "listening" line on stdout; SIGTERM/SIGINT: exits 0 quietly)

How it works: every command is translated into calls on one shared, in-memory
`mongomock.MongoClient`, and ONE lock is held around each whole command
(only the storage-free handshake skips it), so a command is atomic with
respect to every other connection: a worker claiming a job with
findAndModify can never race another worker.

Supported:
  * wire protocol: OP_MSG (kind-0 body and kind-1 document sequences,
    checksumPresent, moreToCome = unacknowledged w=0 writes, which are run
    and get no reply; exhaustAllowed is ignored: every reply is a plain one)
    and legacy OP_QUERY commands on `<db>.$cmd` answered with OP_REPLY
    (pymongo 4.20 does even its first handshake with OP_MSG; OP_QUERY is for
    older clients);
  * commands (see COMMANDS below): the handshake (hello, isMaster), ping,
    buildInfo, getParameter, getCmdLineOpts, endSessions, find/getMore/
    killCursors (server-side cursors), insert, update, delete, findAndModify,
    aggregate, count, distinct, create, drop, dropDatabase, renameCollection,
    createIndexes, listIndexes, dropIndexes, listCollections, listDatabases
    -- what pymongo 4's CRUD methods and GridFS send.

Errors: MongoDB-style rejections (duplicate key, ...) become error replies
or writeErrors; any other exception inside a command does too, with its
traceback on stderr. The connection always stays usable. A command the
server does not know gets CommandNotFound (code 59) and a line
`mongo_test_server: unsupported command ...` on stderr, so gaps show in logs.

Not supported: authentication, TLS, compression, replication/sharding
(it is always a standalone primary), retryable writes, transactions, change
streams, exhaust cursors, collations, explain. Nothing is persisted: data
lives in memory for the life of the process (`--dbpath` is ignored), and
query/update semantics are mongomock's, not MongoDB's.
"""

import argparse
import datetime
import itertools
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import traceback
from collections import deque

import bson
import bson.errors
from bson.int64 import Int64
from bson.son import SON

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
CHECKSUM_PRESENT, MORE_TO_COME = 1 << 0, 1 << 1
MAX_BSON_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 48_000_000
MAX_BATCH_BYTES = MAX_BSON_SIZE - 64 * 1024  # leaves room for the reply wrapper
DEFAULT_FIRST_BATCH = 101
MAX_WIRE_VERSION = 25  # MongoDB 8.0
VERSION = "8.0.0-test"

# Generic fields drivers add to any command; the server has no use for them
# ($db is read before they are dropped).
IGNORED_FIELDS = frozenset({
    "$db", "lsid", "$clusterTime", "$readPreference", "txnNumber", "autocommit",
    "startTransaction", "writeConcern", "readConcern", "comment", "apiVersion",
    "apiStrict", "apiDeprecationErrors", "maxTimeMS", "$audit", "backpressure",
})

CODE_NAMES = {
    1: "InternalError", 2: "BadValue", 9: "FailedToParse", 14: "TypeMismatch",
    26: "NamespaceNotFound", 27: "IndexNotFound", 43: "CursorNotFound",
    48: "NamespaceExists", 59: "CommandNotFound", 72: "InvalidOptions",
    115: "CommandNotSupported", 11000: "DuplicateKey",
}


def log(message):
    print(f"mongo_test_server: {message}", file=sys.stderr, flush=True)


class CommandError(Exception):
    """An error the server reports on purpose: becomes {ok: 0, code, ...}."""

    def __init__(self, code, errmsg):
        super().__init__(errmsg)
        self.code, self.errmsg = code, errmsg


def error_reply(code, errmsg):
    return {"ok": 0.0, "errmsg": errmsg, "code": code,
            "codeName": CODE_NAMES.get(code, "UnknownError")}


# ---------------------------------------------------------------- storage --

class Backend:
    """The shared mongomock client, the command lock and the open cursors."""

    def __init__(self):
        self.lock = threading.Lock()
        self.cursors = {}  # cursor id -> (ns, deque of remaining documents)
        self._cursor_ids = itertools.count(1)
        self._client = None
        self._client_lock = threading.Lock()

    @property
    def client(self):
        with self._client_lock:  # mongomock imports pymongo: ~0.25 s, so lazily
            if self._client is None:
                import mongomock
                mongomock.utcnow = stored_now  # $currentDate, as MongoDB stores it
                self._client = mongomock.MongoClient()
        return self._client

    def warm_up(self):
        """Import mongomock in the background so the first command is quick."""
        threading.Thread(target=lambda: self.client, daemon=True).start()

    def collection(self, db, name):
        if not isinstance(name, str) or not name:
            raise CommandError(2, f"collection name must be a non-empty string, not {name!r}")
        return self.client[db][name]

    def collection_exists(self, db, name):
        return name in self.client[db].list_collection_names()

    def run(self, db, body):
        """Run one command document; always returns a reply document."""
        name = next(iter(body), None)
        handler = COMMANDS.get(name)
        if handler is None:
            log(f"unsupported command {name!r} on db {db!r}: {dict(body)!r:.300}")
            return error_reply(59, f"no such command: '{name}' (mongo_test_server)")
        cmd = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
        try:
            with self.lock:
                reply = handler(self, db, cmd)
        except Exception as exc:  # noqa: BLE001 -- every error becomes a reply
            return error_reply(*describe_error(exc, f"command {name!r}"))
        reply.setdefault("ok", 1.0)
        return reply

    # -- cursors --
    def cursor_reply(self, ns, docs, batch_size=None, single_batch=False):
        """Reply {cursor: {firstBatch, id, ns}}, keeping the rest server-side."""
        docs = deque(map(id_first, docs))
        first = take_batch(docs, batch_size or DEFAULT_FIRST_BATCH)
        cursor_id = 0
        if docs and not single_batch:
            cursor_id = next(self._cursor_ids)
            self.cursors[cursor_id] = (ns, docs)
        return {"cursor": {"firstBatch": first, "id": Int64(cursor_id), "ns": ns}}

    def get_more(self, cursor_id, batch_size):
        if cursor_id not in self.cursors:
            raise CommandError(43, f"cursor id {cursor_id} not found")
        ns, docs = self.cursors[cursor_id]
        batch = take_batch(docs, batch_size or 0)
        if not docs:
            del self.cursors[cursor_id]
            cursor_id = 0
        return {"cursor": {"nextBatch": batch, "id": Int64(cursor_id), "ns": ns}}


def take_batch(docs, max_count):
    """Pop up to max_count documents (0: no count limit) and at most ~16 MiB."""
    batch, size = [], 0
    while docs and (not max_count or len(batch) < max_count):
        doc_size = len(bson.encode(docs[0]))
        if batch and size + doc_size > MAX_BATCH_BYTES:
            break
        batch.append(docs.popleft())
        size += doc_size
    return batch


def id_first(doc):
    """MongoDB keeps _id first; mongomock's projections and $group put it last."""
    if isinstance(doc, dict) and "_id" in doc and next(iter(doc)) != "_id":
        doc = {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    return doc


def sort_list(sort):
    """{field: direction} (a command's sort document) -> [(field, direction)]."""
    return list(sort.items()) if sort else None


def projection(fields):
    """An empty projection means 'whole documents' in MongoDB, None here."""
    return fields or None


def is_replacement(update):
    return isinstance(update, dict) and not any(k.startswith("$") for k in update)


def apply_update(coll, query, update, upsert=False, multi=False, array_filters=None):
    """One update statement (replacement, operators or pipeline) via mongomock."""
    if is_replacement(update):
        if multi:
            raise CommandError(9, "multi update is not supported for replacement-style update")
        return coll.replace_one(query, update, upsert=upsert)
    method = coll.update_many if multi else coll.update_one
    return method(query, update, upsert=upsert, array_filters=array_filters)


def describe_error(exc, where):
    """(MongoDB error code, errmsg) for an exception raised by a command.

    Errors MongoDB would raise too -- CommandError, and the pymongo errors
    mongomock raises (DuplicateKeyError: 11000, ...) -- are passed on
    quietly. Anything else (TypeError for $inc on a string, ValueError for
    an unknown update operator, a mongomock gap or a bug here) gets its
    traceback printed on stderr and a best-guess code."""
    from pymongo.errors import PyMongoError  # already imported by mongomock

    if isinstance(exc, (CommandError, PyMongoError)):
        return getattr(exc, "code", None) or 2, str(exc)
    log(f"{where} raised:")
    traceback.print_exception(exc, file=sys.stderr)
    code = 1
    for exc_type, exc_code in ((NotImplementedError, 115), (TypeError, 14), (ValueError, 2)):
        if isinstance(exc, exc_type):
            code = exc_code
            break
    return code, f"{type(exc).__name__}: {exc}"


def run_writes(statements, ordered, execute, where):
    """execute(index, statement) for each statement; failures -> writeErrors."""
    errors = []
    for index, statement in enumerate(statements):
        try:
            execute(index, statement)
        except Exception as exc:  # noqa: BLE001 -- reported as a write error
            code, errmsg = describe_error(exc, f"{where} statement {index}")
            errors.append({"index": index, "code": code, "errmsg": errmsg,
                           "codeName": CODE_NAMES.get(code, "UnknownError")})
            if ordered:
                break
    return errors


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def stored_now():
    """Now as MongoDB stores a date: UTC milliseconds. mongomock's own
    $currentDate keeps microseconds, so a document could never be matched
    again by the date a client read back from it (BSON has milliseconds)."""
    now = now_utc().replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# ---------------------------------------------------- admin/handshake cmds --

def cmd_hello(backend, db, cmd, connection_id=0):
    """hello/isMaster. No topologyVersion in the reply: pymongo then polls
    instead of streaming awaitable hellos (exhaust), which this server lacks."""
    legacy = "isMaster" in cmd or "ismaster" in cmd
    reply = {
        "ismaster" if legacy else "isWritablePrimary": True,
        "maxBsonObjectSize": MAX_BSON_SIZE, "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
        "maxWriteBatchSize": 100000, "localTime": now_utc(),
        "logicalSessionTimeoutMinutes": 30, "connectionId": connection_id,
        "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION, "readOnly": False,
    }
    if cmd.get("helloOk"):
        reply["helloOk"] = True
    return reply


def cmd_ping(backend, db, cmd):
    return {}


def cmd_build_info(backend, db, cmd):
    return {"version": VERSION, "versionArray": [8, 0, 0, 0], "gitVersion": "test",
            "bits": 64, "debug": False, "maxBsonObjectSize": MAX_BSON_SIZE,
            "storageEngines": ["mongomock"], "modules": []}


def cmd_get_parameter(backend, db, cmd):
    reply = {}
    if cmd.get("featureCompatibilityVersion") or cmd["getParameter"] == "*":
        reply["featureCompatibilityVersion"] = {"version": "8.0"}
    return reply


def cmd_get_cmd_line_opts(backend, db, cmd):
    return {"argv": ["mongo_test_server"], "parsed": {}}


def cmd_end_sessions(backend, db, cmd):
    return {}


# ----------------------------------------------------------------- reads --

def cmd_find(backend, db, cmd):
    coll = backend.collection(db, cmd["find"])
    limit = int(cmd.get("limit") or 0)
    docs = list(coll.find(cmd.get("filter") or {}, projection(cmd.get("projection")),
                          skip=int(cmd.get("skip") or 0), limit=abs(limit),
                          sort=sort_list(cmd.get("sort"))))
    return backend.cursor_reply(f"{db}.{coll.name}", docs, cmd.get("batchSize"),
                                bool(cmd.get("singleBatch")) or limit < 0)


def cmd_get_more(backend, db, cmd):
    return backend.get_more(int(cmd["getMore"]), cmd.get("batchSize"))


def cmd_kill_cursors(backend, db, cmd):
    killed, not_found = [], []
    for cursor_id in cmd.get("cursors", []):
        found = backend.cursors.pop(int(cursor_id), None) is not None
        (killed if found else not_found).append(Int64(cursor_id))
    return {"cursorsKilled": killed, "cursorsNotFound": not_found,
            "cursorsAlive": [], "cursorsUnknown": []}


def cmd_aggregate(backend, db, cmd):
    if not isinstance(cmd["aggregate"], str):
        raise CommandError(115, "database-level aggregate is not supported (mongo_test_server)")
    if cmd.get("explain"):
        raise CommandError(115, "aggregate explain is not supported (mongo_test_server)")
    coll = backend.collection(db, cmd["aggregate"])
    docs = list(coll.aggregate(cmd.get("pipeline", [])))
    batch_size = (cmd.get("cursor") or {}).get("batchSize")
    return backend.cursor_reply(f"{db}.{coll.name}", docs, batch_size)


def cmd_count(backend, db, cmd):
    coll = backend.collection(db, cmd["count"])
    options = {"skip": int(cmd.get("skip") or 0)}
    if cmd.get("limit"):
        options["limit"] = abs(int(cmd["limit"]))
    return {"n": coll.count_documents(cmd.get("query") or {}, **options)}


def cmd_distinct(backend, db, cmd):
    coll = backend.collection(db, cmd["distinct"])
    return {"values": list(coll.distinct(cmd["key"], cmd.get("query") or None))}


# ---------------------------------------------------------------- writes --

def cmd_insert(backend, db, cmd):
    coll = backend.collection(db, cmd["insert"])
    inserted = []
    errors = run_writes(cmd.get("documents", []), cmd.get("ordered", True),
                        lambda index, doc: inserted.append(coll.insert_one(doc)), "insert")
    return with_write_errors({"n": len(inserted)}, errors)


def with_write_errors(reply, errors):
    if errors:
        reply["writeErrors"] = errors
    return reply


def cmd_update(backend, db, cmd):
    coll = backend.collection(db, cmd["update"])
    totals = {"n": 0, "nModified": 0}
    upserted = []

    def execute(index, spec):
        result = update_statement(coll, spec)
        totals["n"] += result.matched_count
        totals["nModified"] += result.modified_count
        if result.upserted_id is not None:
            totals["n"] += 1
            upserted.append({"index": index, "_id": result.upserted_id})

    errors = run_writes(cmd.get("updates", []), cmd.get("ordered", True), execute, "update")
    if upserted:
        totals["upserted"] = upserted
    return with_write_errors(totals, errors)


def update_statement(coll, spec):
    query, multi = spec.get("q") or {}, bool(spec.get("multi"))
    if spec.get("sort") and not multi:  # updateOne with sort (MongoDB 8.0)
        target = coll.find_one(query, {"_id": 1}, sort=sort_list(spec["sort"]))
        query = {"_id": target["_id"]} if target else query
    return apply_update(coll, query, spec["u"], upsert=bool(spec.get("upsert")),
                        multi=multi, array_filters=spec.get("arrayFilters"))


def cmd_delete(backend, db, cmd):
    coll = backend.collection(db, cmd["delete"])
    deleted = []

    def execute(index, spec):
        method = coll.delete_one if spec.get("limit") == 1 else coll.delete_many
        deleted.append(method(spec.get("q") or {}).deleted_count)

    errors = run_writes(cmd.get("deletes", []), cmd.get("ordered", True), execute, "delete")
    return with_write_errors({"n": sum(deleted)}, errors)


def cmd_find_and_modify(backend, db, cmd):
    """findAndModify, answered exactly like MongoDB: {value, lastErrorObject}."""
    coll = backend.collection(db, cmd.get("findAndModify", cmd.get("findandmodify")))
    query, fields = cmd.get("query") or {}, projection(cmd.get("fields"))
    target = coll.find_one(query, {"_id": 1}, sort=sort_list(cmd.get("sort")))
    by_id = {"_id": target["_id"]} if target else None
    if cmd.get("remove"):
        value = coll.find_one(by_id, fields) if target else None
        if target:
            coll.delete_one(by_id)
        return {"lastErrorObject": {"n": 1 if target else 0}, "value": id_first(value)}
    if cmd.get("update") is None:
        raise CommandError(9, "Either an update or remove=true must be specified")
    update, new = cmd["update"], bool(cmd.get("new"))
    array_filters = cmd.get("arrayFilters")
    if target:
        before = None if new else coll.find_one(by_id, fields)
        apply_update(coll, by_id, update, array_filters=array_filters)
        value = coll.find_one(by_id, fields) if new else before
        return {"lastErrorObject": {"n": 1, "updatedExisting": True}, "value": id_first(value)}
    if not cmd.get("upsert"):
        return {"lastErrorObject": {"n": 0, "updatedExisting": False}, "value": None}
    upserted_id = apply_update(coll, query, update, upsert=True,
                               array_filters=array_filters).upserted_id
    value = coll.find_one({"_id": upserted_id}, fields) if new else None
    return {"lastErrorObject": {"n": 1, "updatedExisting": False, "upserted": upserted_id},
            "value": id_first(value)}


# -------------------------------------------------- collections, indexes --

def cmd_create(backend, db, cmd):
    if backend.collection_exists(db, cmd["create"]):
        raise CommandError(48, f"Collection {db}.{cmd['create']} already exists.")
    backend.client[db].create_collection(cmd["create"])
    return {}


def cmd_drop(backend, db, cmd):
    name = cmd["drop"]
    if not backend.collection_exists(db, name):
        return {}  # MongoDB >= 7 answers ok for a missing collection
    n_indexes = len(backend.collection(db, name).index_information())
    backend.client[db].drop_collection(name)
    return {"ns": f"{db}.{name}", "nIndexesWas": n_indexes}


def cmd_drop_database(backend, db, cmd):
    backend.client.drop_database(db)
    return {"dropped": db}


def cmd_rename_collection(backend, db, cmd):
    (from_db, from_name), (to_db, to_name) = (
        ns.split(".", 1) for ns in (cmd["renameCollection"], cmd["to"]))
    if from_db != to_db:
        raise CommandError(115, "renaming across databases is not supported (mongo_test_server)")
    if not backend.collection_exists(from_db, from_name):
        raise CommandError(26, f"Source collection {cmd['renameCollection']} does not exist")
    backend.client[from_db].rename_collection(from_name, to_name,
                                              dropTarget=bool(cmd.get("dropTarget")))
    return {}


def cmd_create_indexes(backend, db, cmd):
    coll = backend.collection(db, cmd["createIndexes"])
    created = not backend.collection_exists(db, coll.name)
    before = 0 if created else len(coll.index_information())
    for spec in cmd.get("indexes", []):
        options = {k: v for k, v in spec.items() if k not in ("key", "v", "background")}
        coll.create_index(list(spec["key"].items()), **options)
    return {"createdCollectionAutomatically": created, "numIndexesBefore": before,
            "numIndexesAfter": len(coll.index_information())}


def cmd_list_indexes(backend, db, cmd):
    name = cmd["listIndexes"]
    if not backend.collection_exists(db, name):
        raise CommandError(26, f"ns does not exist: {db}.{name}")
    docs = []
    for index_name, info in backend.collection(db, name).index_information().items():
        doc = {"v": info.get("v", 2), "key": SON(info["key"]), "name": index_name}
        doc.update((k, v) for k, v in info.items() if k not in ("v", "key"))
        docs.append(doc)
    return backend.cursor_reply(f"{db}.{name}", docs, (cmd.get("cursor") or {}).get("batchSize"))


def cmd_drop_indexes(backend, db, cmd):
    coll = backend.collection(db, cmd["dropIndexes"])
    if not backend.collection_exists(db, coll.name):
        raise CommandError(26, f"ns not found {db}.{coll.name}")
    info = coll.index_information()
    index = cmd.get("index", "*")
    names = index if isinstance(index, list) else [index]
    for name in names:
        if name == "*":
            coll.drop_indexes()
            continue
        if isinstance(name, dict):  # a key pattern
            name = next((n for n, i in info.items() if dict(i["key"]) == name), None)
        if name not in info:
            raise CommandError(27, f"index not found with name [{name}]")
        if name == "_id_":
            raise CommandError(72, "cannot drop _id index")
        coll.drop_index(name)
    return {"nIndexesWas": len(info)}


def cmd_list_collections(backend, db, cmd):
    from mongomock.filtering import filter_applies

    docs = []
    for name in sorted(backend.client[db].list_collection_names()):
        doc = {"name": name, "type": "collection"}
        if not cmd.get("nameOnly"):
            doc.update(options={}, info={"readOnly": False},
                       idIndex={"v": 2, "key": {"_id": 1}, "name": "_id_"})
        if filter_applies(cmd.get("filter") or {}, doc):
            docs.append(doc)
    return backend.cursor_reply(f"{db}.$cmd.listCollections", docs,
                                (cmd.get("cursor") or {}).get("batchSize"))


def cmd_list_databases(backend, db, cmd):
    from mongomock.filtering import filter_applies

    docs = [{"name": name, "sizeOnDisk": 0, "empty": False}
            for name in sorted(backend.client.list_database_names())]
    if cmd.get("nameOnly"):
        docs = [{"name": d["name"]} for d in docs]
    docs = [d for d in docs if filter_applies(cmd.get("filter") or {}, d)]
    return {"databases": docs, "totalSize": 0}


COMMANDS = {
    "hello": cmd_hello, "isMaster": cmd_hello, "ismaster": cmd_hello,
    "ping": cmd_ping, "buildInfo": cmd_build_info, "buildinfo": cmd_build_info,
    "getParameter": cmd_get_parameter, "getCmdLineOpts": cmd_get_cmd_line_opts,
    "endSessions": cmd_end_sessions,
    "find": cmd_find, "getMore": cmd_get_more, "killCursors": cmd_kill_cursors,
    "aggregate": cmd_aggregate, "count": cmd_count, "distinct": cmd_distinct,
    "insert": cmd_insert, "update": cmd_update, "delete": cmd_delete,
    "findAndModify": cmd_find_and_modify, "findandmodify": cmd_find_and_modify,
    "create": cmd_create, "drop": cmd_drop, "dropDatabase": cmd_drop_database,
    "renameCollection": cmd_rename_collection,
    "createIndexes": cmd_create_indexes, "listIndexes": cmd_list_indexes,
    "dropIndexes": cmd_drop_indexes, "deleteIndexes": cmd_drop_indexes,
    "listCollections": cmd_list_collections, "listDatabases": cmd_list_databases,
}
HANDSHAKE_COMMANDS = {"hello", "isMaster", "ismaster"}


# -------------------------------------------------------- wire protocol --

class ProtocolError(Exception):
    pass


def recv_exact(sock, n):
    """n bytes from sock, or None if the peer closed the connection first."""
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def parse_op_msg(payload):
    """OP_MSG payload (after the header) -> (flagBits, command document)."""
    (flags,) = struct.unpack_from("<I", payload, 0)
    end = len(payload) - (4 if flags & CHECKSUM_PRESENT else 0)
    body, sequences, pos = None, {}, 4
    while pos < end:
        kind = payload[pos]
        (size,) = struct.unpack_from("<i", payload, pos + 1)
        if kind == 0:
            body = bson.decode(payload[pos + 1:pos + 1 + size])
        elif kind == 1:
            name_end = payload.index(b"\x00", pos + 5)
            name = payload[pos + 5:name_end].decode()
            docs = bson.decode_all(payload[name_end + 1:pos + 1 + size])
            sequences.setdefault(name, []).extend(docs)
        else:
            raise ProtocolError(f"unknown OP_MSG section kind {kind}")
        pos += 1 + size
    if body is None:
        raise ProtocolError("OP_MSG without a body section")
    for name, docs in sequences.items():
        body[name] = list(body.get(name, [])) + docs
    return flags, body


def op_msg_reply(request_id, reply):
    payload = struct.pack("<IB", 0, 0) + bson.encode(reply)
    return struct.pack("<iiii", 16 + len(payload), 0, request_id, OP_MSG) + payload


def parse_op_query(payload):
    """OP_QUERY payload -> (full collection name, query document)."""
    name_end = payload.index(b"\x00", 4)
    collection = payload[4:name_end].decode()
    pos = name_end + 1 + 8  # numberToSkip, numberToReturn
    (size,) = struct.unpack_from("<i", payload, pos)
    return collection, bson.decode(payload[pos:pos + size])


def op_reply(request_id, doc, flags=0):
    payload = struct.pack("<iqii", flags, 0, 0, 1) + bson.encode(doc)
    return struct.pack("<iiii", 16 + len(payload), 0, request_id, OP_REPLY) + payload


class ConnectionHandler(socketserver.BaseRequestHandler):
    """One client connection: read messages until the client hangs up."""

    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection_id = self.server.register(sock)
        try:
            while self.handle_one(sock):
                pass
        except (ConnectionError, OSError):
            pass  # the client (or shutdown()) closed the socket
        except ProtocolError as exc:
            log(f"protocol error, closing connection {self.connection_id}: {exc}")
        finally:
            self.server.unregister(sock)

    def handle_one(self, sock):
        header = recv_exact(sock, 16)
        if header is None:
            return False
        length, request_id, _, opcode = struct.unpack("<iiii", header)
        if not 16 <= length <= MAX_MESSAGE_SIZE:
            raise ProtocolError(f"bad message length {length}")
        payload = recv_exact(sock, length - 16)
        if payload is None:
            return False
        handlers = {OP_MSG: self.handle_op_msg, OP_QUERY: self.handle_op_query}
        if opcode not in handlers:
            raise ProtocolError(f"unsupported opcode {opcode}")
        try:
            reply = handlers[opcode](request_id, payload)
        except (struct.error, ValueError, UnicodeDecodeError, bson.errors.BSONError) as exc:
            raise ProtocolError(f"malformed message (opcode {opcode}): {exc!r}") from exc
        if reply is not None:
            sock.sendall(reply)
        return True

    def run(self, db, cmd):
        if next(iter(cmd), None) in HANDSHAKE_COMMANDS:
            reply = cmd_hello(None, db, cmd, self.connection_id)
            reply["ok"] = 1.0
            return reply
        return self.server.backend.run(db, cmd)

    def handle_op_msg(self, request_id, payload):
        flags, body = parse_op_msg(payload)
        reply = self.run(body.get("$db", "admin"), body)
        if flags & MORE_TO_COME:
            return None  # unacknowledged (w=0): the client reads no reply
        return op_msg_reply(request_id, reply)

    def handle_op_query(self, request_id, payload):
        collection, query = parse_op_query(payload)
        if not collection.endswith(".$cmd"):
            return op_reply(request_id, {"$err": "OP_QUERY is only supported for commands",
                                         "code": 115}, flags=2)  # QueryFailure
        cmd = query["$query"] if "$query" in query else query  # wrapped with $readPreference
        return op_reply(request_id, self.run(collection[:-len(".$cmd")], cmd))


class MongoTestServer(socketserver.ThreadingTCPServer):
    """The TCP server; `backend` holds the data. Use start_server() in tests."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host="127.0.0.1", port=0):
        super().__init__((host, port), ConnectionHandler)
        self.backend = Backend()
        self._thread = None
        self._sockets = set()
        self._sockets_lock = threading.Lock()
        self._connection_ids = itertools.count(1)

    @property
    def host(self):
        return self.server_address[0]

    @property
    def port(self):
        return self.server_address[1]

    @property
    def uri(self):
        return f"mongodb://{self.host}:{self.port}/"

    def register(self, sock):
        with self._sockets_lock:
            self._sockets.add(sock)
            return next(self._connection_ids)

    def unregister(self, sock):
        with self._sockets_lock:
            self._sockets.discard(sock)

    def start(self):
        """Serve from a daemon thread; returns self."""
        self.backend.warm_up()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="mongo_test_server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self):
        """Stop serving, close the listening socket and every open connection."""
        if self._thread is not None:
            super().shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        with self._sockets_lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    close = shutdown

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.shutdown()


def start_server(host="127.0.0.1", port=0):
    """A running server on host:port (port 0: a free one); see .server_address."""
    return MongoTestServer(host, port).start()


# -------------------------------------------------------------------- CLI --

def main(argv=None):
    """Serve until SIGTERM/SIGINT, then exit 0 without a word."""
    # Block the stop signals before any thread exists (threads inherit the
    # mask) and wait for them with sigwait: no handler can then interrupt,
    # or be swallowed by, the serving code.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    parser = argparse.ArgumentParser(description="MongoDB wire-protocol TEST server "
                                     "(in-memory, mongomock-backed; not MongoDB).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    args = parser.parse_args(argv)
    try:
        server = MongoTestServer(args.host, args.port)
    except OSError as exc:
        log(f"cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    server.start()
    print(f"mongo_test_server: listening on {args.host}:{server.port}", flush=True)
    signal.sigwait(stop_signals)
    server.server_close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: handler threads may be mid-command


if __name__ == "__main__":
    sys.exit(main())
