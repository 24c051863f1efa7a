"""The test MongoDB server (tests/support/mongo_test_server.py) does what the rest of
the suite relies on, checked with real pymongo 4 clients over TCP on
127.0.0.1 -- both in process and behind the fake tests/support/bin/mongod."""

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading

import bson
import gridfs
import pymongo
import pytest
from pymongo import ReturnDocument, WriteConcern
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError

from conftest import SUPPORT
from mongo_test_server import OP_QUERY, OP_REPLY, start_server

MONGOD = SUPPORT / "bin" / "mongod"


class CommandLog(pymongo.monitoring.CommandListener):
    """Names of the commands a client sent."""

    def __init__(self):
        self.names = []

    def started(self, event):
        self.names.append(event.command_name)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


@pytest.fixture(scope="module")
def server():
    srv = start_server()
    yield srv
    srv.shutdown()


def connect(address, **kwargs):
    host, port = address
    return pymongo.MongoClient(host, port, serverSelectionTimeoutMS=3000,
                               connectTimeoutMS=3000, **kwargs)


@pytest.fixture
def commands():
    return CommandLog()


@pytest.fixture
def client(server, commands):
    # One connection, so "the connection stays usable" is really tested.
    c = connect(server.server_address, maxPoolSize=1, event_listeners=[commands])
    yield c
    c.close()


@pytest.fixture
def db(client, request):
    return client[request.node.name.replace("[", "_").replace("]", "_")[:60]]


def test_handshake_and_server_info(client, server):
    assert client.admin.command("ping")["ok"] == 1.0
    info = client.server_info()
    assert info["version"] == "8.0.0-test"
    assert client.address == server.server_address


def test_legacy_op_query_handshake(server):
    """Old drivers say isMaster with OP_QUERY on admin.$cmd; answer OP_REPLY."""
    query = bson.encode({"isMaster": 1, "helloOk": True})
    body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    with socket.create_connection(server.server_address, timeout=3) as sock:
        sock.sendall(struct.pack("<iiii", 16 + len(body), 7, 0, OP_QUERY) + body)
        length, _, response_to, opcode = struct.unpack("<iiii", sock.recv(16))
        payload = b""
        while len(payload) < length - 16:
            payload += sock.recv(length - 16 - len(payload))
    assert (opcode, response_to) == (OP_REPLY, 7)
    flags, cursor_id, _, n_returned = struct.unpack_from("<iqii", payload)
    reply = bson.decode(payload[20:])
    assert (flags, cursor_id, n_returned) == (0, 0, 1)
    assert reply["ismaster"] is True and reply["helloOk"] is True and reply["ok"] == 1.0


def test_insert_and_find(db, commands):
    db.items.insert_one({"i": -1, "tag": "first"})
    db.items.insert_many([{"i": i, "odd": i % 2, "tag": "x"} for i in range(250)])
    docs = list(db.items.find({"i": {"$gte": 0}}, {"_id": 0, "i": 1}, batch_size=20)
                .sort("i", pymongo.DESCENDING).skip(5).limit(200))
    assert docs == [{"i": i} for i in range(244, 44, -1)]
    assert commands.names.count("getMore") == 9  # 200 docs in batches of 20
    everything = list(db.items.find(batch_size=20))
    assert len(everything) == 251 and everything[0]["tag"] == "first"
    assert db.items.find_one({"i": 7}, {"odd": 1, "_id": 0}) == {"odd": 1}
    assert [d["i"] for d in db.items.find({"odd": 0}).sort([("i", -1)]).limit(3)] == [248, 246, 244]


def test_update(db):
    db.c.insert_many([{"k": i, "n": 0} for i in range(5)])
    result = db.c.update_one({"k": 1}, {"$set": {"s": "a"}, "$inc": {"n": 2}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    result = db.c.update_many({"k": {"$gte": 2}}, {"$inc": {"n": 1}})
    assert (result.matched_count, result.modified_count) == (3, 3)
    result = db.c.update_one({"k": 99}, {"$set": {"n": 7}}, upsert=True)
    assert result.matched_count == 0 and result.upserted_id is not None
    assert db.c.find_one({"_id": result.upserted_id}, {"_id": 0}) == {"k": 99, "n": 7}
    db.c.replace_one({"k": 0}, {"k": 0, "replaced": True})
    assert db.c.find_one({"k": 0}, {"_id": 0}) == {"k": 0, "replaced": True}
    assert sorted(d["n"] for d in db.c.find({"k": {"$lt": 99}, "n": {"$exists": True}})) == [1, 1, 1, 2]


def test_current_date_is_stored_in_milliseconds_and_matches_what_was_read(db):
    """As in MongoDB (a BSON date has milliseconds): the driver requeues a
    silent worker's trial only if nothing changed since it read the trial,
    matching on the refresh_time it read back."""
    db.jobs.insert_one({"k": 1})
    for _ in range(5):  # one of them would land on a fraction of a millisecond
        db.jobs.update_one({"k": 1}, {"$currentDate": {"refresh_time": True}})
        read = db.jobs.find_one({"k": 1})["refresh_time"]
        assert read.microsecond % 1000 == 0
        assert db.jobs.update_one({"k": 1, "refresh_time": read},
                                  {"$set": {"seen": True}}).matched_count == 1


def test_find_one_and_update(db):
    # The hyperopt new_trial_ids pattern: $inc with upsert on an empty collection.
    ids = db.job_ids
    assert ids.find_one_and_update({"a": 0}, {"$inc": {"last_id": 3}}, upsert=True) is None
    before = ids.find_one_and_update({"a": 0}, {"$inc": {"last_id": 2}}, upsert=True,
                                     return_document=ReturnDocument.BEFORE)
    assert before["last_id"] == 3
    after = ids.find_one_and_update({"a": 0}, {"$inc": {"last_id": 1}},
                                    return_document=ReturnDocument.AFTER)
    assert after["last_id"] == 6
    upserted = ids.find_one_and_update({"a": 1}, {"$set": {"x": 1}}, upsert=True,
                                       projection={"_id": 0},
                                       return_document=ReturnDocument.AFTER)
    assert upserted == {"a": 1, "x": 1}
    assert ids.find_one_and_update({"a": 5}, {"$set": {"x": 1}}) is None
    db.q.insert_many([{"p": p} for p in (3, 1, 2)])
    first = db.q.find_one_and_update({}, {"$set": {"taken": True}}, sort=[("p", 1)],
                                     return_document=ReturnDocument.AFTER)
    assert first["p"] == 1 and first["taken"] is True
    assert db.q.find_one_and_delete({}, sort=[("p", -1)])["p"] == 3
    assert db.q.find_one_and_replace({"p": 2}, {"p": 20})["p"] == 2
    assert sorted(d["p"] for d in db.q.find()) == [1, 20]


def test_delete(db):
    db.d.insert_many([{"g": i % 3} for i in range(9)])
    assert db.d.delete_one({"g": 0}).deleted_count == 1
    assert db.d.delete_many({"g": 1}).deleted_count == 3
    assert db.d.count_documents({}) == 5
    assert db.d.delete_many({}).deleted_count == 5


def test_count_and_distinct(db):
    db.e.insert_many([{"s": i % 4, "name": f"n{i % 3}"} for i in range(20)])
    assert db.e.count_documents({"s": 1}) == 5
    assert db.e.count_documents({"s": {"$in": [1, 2]}}, skip=2, limit=5) == 5
    assert db.e.count_documents({}) == 20
    assert db.e.estimated_document_count() == 20
    assert sorted(db.e.distinct("name")) == ["n0", "n1", "n2"]
    assert sorted(db.e.distinct("name", {"s": 0})) == ["n0", "n1", "n2"]
    assert sorted(db.e.distinct("s", {"name": "n0"})) == [0, 1, 2, 3]


def test_indexes_and_collections(db, client):
    assert db.idx.create_index([("a", 1), ("b", -1)], unique=True) == "a_1_b_-1"
    assert db.idx.create_index("c") == "c_1"
    indexes = {ix["name"]: ix for ix in db.idx.list_indexes()}
    assert set(indexes) == {"_id_", "a_1_b_-1", "c_1"}
    assert dict(indexes["a_1_b_-1"]["key"]) == {"a": 1, "b": -1}
    assert indexes["a_1_b_-1"]["unique"] is True
    db.idx.insert_one({"a": 1, "b": 1})
    with pytest.raises(DuplicateKeyError):
        db.idx.insert_one({"a": 1, "b": 1})
    db.idx.drop_index("c_1")
    assert set(db.idx.index_information()) == {"_id_", "a_1_b_-1"}
    db.create_collection("made")
    assert set(db.list_collection_names()) == {"idx", "made"}
    assert [c["name"] for c in db.list_collections(filter={"name": "made"})] == ["made"]
    assert db.name in client.list_database_names()
    db.made.drop()
    assert db.list_collection_names() == ["idx"]
    assert list(db.missing.list_indexes()) == []
    client.drop_database(db.name)
    assert db.name not in client.list_database_names()


def test_gridfs(db):
    fs = gridfs.GridFS(db)
    blob = os.urandom(600_000)  # several 255 KiB chunks
    first = fs.put(blob, filename="weights")
    second = fs.put(b"v2", filename="weights", encoding=None)
    fs.put(b"other", filename="other")
    assert fs.get(first).read() == blob
    assert fs.exists(first) and fs.exists(filename="weights")
    assert not fs.exists(filename="nope")
    assert sorted(fs.list()) == ["other", "weights"]
    assert fs.get_last_version("weights")._id == second
    assert fs.get_version("weights", 0).read() == blob
    fs.delete(second)
    assert fs.get_last_version(filename="weights").read() == blob
    fs.delete(first)
    assert not fs.exists(filename="weights")
    assert db.fs.chunks.count_documents({"files_id": first}) == 0
    with pytest.raises(gridfs.NoFile):
        fs.get(first)


# What the GridFS spec asks of a server, and kept models rely on
# (https://github.com/mongodb/specifications, source/gridfs/gridfs-spec.md):
# two collections, <bucket>.files and <bucket>.chunks; an index on
# {filename: 1, uploadDate: 1} of the files and a unique one on {files_id: 1,
# n: 1} of the chunks; chunks of chunkSize bytes (255 KiB by default) but the
# last, numbered n = 0, 1, ... and read back in the order of n.
CHUNK = 255 * 1024


def test_gridfs_stores_files_and_chunks_as_the_spec_says(db):
    fs = gridfs.GridFS(db)
    blob = os.urandom(2 * CHUNK + 1000)
    fid = fs.put(blob, _id="hks_kept_model:x:kept_model.keras:w", filename="x_kept_model.keras",
                 metadata={"sha256": "abc"})
    assert set(db.list_collection_names()) >= {"fs.files", "fs.chunks"}
    files = {ix["name"]: ix for ix in db.fs.files.list_indexes()}
    chunks = {ix["name"]: ix for ix in db.fs.chunks.list_indexes()}
    assert dict(files["filename_1_uploadDate_1"]["key"]) == {"filename": 1, "uploadDate": 1}
    assert dict(chunks["files_id_1_n_1"]["key"]) == {"files_id": 1, "n": 1}
    assert chunks["files_id_1_n_1"]["unique"] is True
    doc = db.fs.files.find_one({"_id": fid})
    assert (doc["length"], doc["chunkSize"], doc["metadata"]) == (len(blob), CHUNK, {"sha256": "abc"})
    assert doc["uploadDate"].microsecond % 1000 == 0  # milliseconds, as BSON dates are
    stored = list(db.fs.chunks.find({"files_id": fid}).sort("n"))
    assert [(c["n"], len(c["data"])) for c in stored] == [(0, CHUNK), (1, CHUNK), (2, 1000)]
    assert fs.get(fid).read() == blob
    with pytest.raises(DuplicateKeyError):  # a chunk twice: refused by the unique index
        db.fs.chunks.insert_one({"files_id": fid, "n": 1, "data": b"again"})
    assert db.fs.chunks.distinct("files_id", {"files_id": {"$regex": "^hks_kept_model:"}}) == [fid]


def test_gridfs_reads_chunks_in_the_order_of_n_whatever_order_they_were_written(db):
    blob = os.urandom(3 * CHUNK)
    db.fs.files.insert_one({"_id": "f", "length": len(blob), "chunkSize": CHUNK,
                            "uploadDate": bson.datetime.datetime(2026, 12, 6), "filename": "f"})
    for n in (2, 0, 1):
        db.fs.chunks.insert_one({"files_id": "f", "n": n, "data": blob[n * CHUNK:(n + 1) * CHUNK]})
    assert gridfs.GridFS(db).get("f").read() == blob
    db.fs.chunks.delete_one({"files_id": "f", "n": 1})
    with pytest.raises(gridfs.errors.CorruptGridFile):  # a missing chunk is never skipped
        gridfs.GridFS(db).get("f").read()


def test_gridfs_delete_takes_the_chunks_along_and_lone_chunks_can_be_found(db):
    fs = gridfs.GridFS(db)
    fid = fs.put(os.urandom(CHUNK + 1), _id="kept", filename="kept")
    db.fs.chunks.insert_one({"files_id": "lone", "n": 0, "data": b"cut short"})  # no files doc
    lone = set(db.fs.chunks.distinct("files_id")) - set(db.fs.files.distinct("_id"))
    assert lone == {"lone"}
    fs.delete("lone")  # a file whose files document never came: its chunks go
    fs.delete(fid)
    assert db.fs.chunks.count_documents({}) == 0 and db.fs.files.count_documents({}) == 0


def test_unacknowledged_write_then_command(db):
    db.w.with_options(write_concern=WriteConcern(w=0)).insert_one({"fire": "forget"})
    db.w.with_options(write_concern=WriteConcern(w=0)).update_one({}, {"$set": {"x": 1}})
    assert db.command("ping")["ok"] == 1.0
    assert db.w.find_one({}, {"_id": 0}) == {"fire": "forget", "x": 1}


def test_unknown_command_keeps_connection(db, capsys):
    with pytest.raises(OperationFailure) as info:
        db.command("notACommand")
    assert info.value.code == 59
    assert "unsupported command 'notACommand'" in capsys.readouterr().err
    db.ok.insert_one({"still": "usable"})
    assert db.ok.count_documents({}) == 1


def test_failing_update_is_a_write_error(db, capsys):
    db.bad.insert_one({"name": "x"})
    with pytest.raises(WriteError):
        db.bad.update_one({}, {"$inc": {"name": 1}})  # $inc on a string
    with pytest.raises(OperationFailure):
        db.bad.find_one_and_update({}, {"$inc": {"name": 1}})
    assert "raised:" in capsys.readouterr().err  # tracebacks show in test logs
    assert db.bad.find_one({}, {"_id": 0}) == {"name": "x"}


def test_malformed_message_closes_only_that_connection(server, db):
    with socket.create_connection(server.server_address, timeout=3) as sock:
        sock.sendall(struct.pack("<iiii", 20, 1, 0, 9999) + b"junk")
        assert sock.recv(16) == b""  # unknown opcode: the server hangs up
    assert db.command("ping")["ok"] == 1.0


def test_duplicate_id(db):
    db.dup.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):
        db.dup.insert_one({"_id": 1})
    with pytest.raises(BulkWriteError) as info:
        db.dup.insert_many([{"_id": 2}, {"_id": 1}, {"_id": 3}])
    assert info.value.details["nInserted"] == 1
    assert info.value.details["writeErrors"][0]["code"] == 11000
    assert sorted(d["_id"] for d in db.dup.find()) == [1, 2]


def test_reservation_is_atomic(server, db):
    """8 workers, each with its own client, claim 200 jobs: each exactly once."""
    db.jobs.insert_many([{"job": i, "state": 0} for i in range(200)])
    claimed, errors = {}, []

    def worker(me):
        try:
            with connect(server.server_address) as c:
                jobs = c[db.name].jobs
                mine = claimed.setdefault(me, [])
                while (doc := jobs.find_one_and_update(
                        {"state": 0}, {"$set": {"state": 1, "owner": me}},
                        return_document=ReturnDocument.AFTER)) is not None:
                    assert doc["owner"] == me and doc["state"] == 1
                    mine.append(doc["job"])
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not errors
    all_claims = sorted(j for jobs in claimed.values() for j in jobs)
    assert all_claims == list(range(200))
    owners = {d["job"]: d["owner"] for d in db.jobs.find({"state": 1})}
    assert all(owners[j] == me for me, jobs in claimed.items() for j in jobs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fake_mongod_cli(tmp_path):
    port = free_port()
    env = dict(os.environ, HKS_MONGOD_PYTHON=sys.executable)
    proc = subprocess.Popen([str(MONGOD), f"--port={port}", f"--dbpath={tmp_path}",
                             "--noprealloc", "--bind_ip", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "server did not say it was listening within 10 s"
        assert f"listening on 127.0.0.1:{port}" in proc.stdout.readline().decode()
        with connect(("127.0.0.1", port)) as c:
            c.hks.t.insert_one({"a": 1})
            assert c.hks.t.find_one({}, {"_id": 0}) == {"a": 1}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    assert err == b""
