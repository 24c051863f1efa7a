"""mongo_compat: every legacy pymongo call hyperopt makes is covered, and each
translation returns what hyperopt expects (run against the test server, or
HKS_TEST_MONGO_URL)."""

import re
import subprocess
import sys
import time
from pathlib import Path

import hyperopt.mongoexp
import pytest
from bson.errors import InvalidDocument

from hks.mongo import mongo_compat

MONGOEXP_SOURCE = Path(hyperopt.mongoexp.__file__).read_text()


@pytest.fixture
def coll(mongo_db):
    mongo_compat.install()
    return mongo_db["things"]


NOT_PYMONGO = {"logger", "logging", "warnings"}  # logger.error(...) is not Database.error


def legacy_calls(source):
    """Names of methods pymongo 4 removed that `source` calls as `x.name(`."""
    removed = {name for names in mongo_compat.REMOVED_IN_PYMONGO4.values() for name in names}
    return {name for name in removed
            if any(receiver not in NOT_PYMONGO
                   for receiver in re.findall(rf"([\w\])]+)\s*\.\s*{name}\(", source))}


def covered_names():
    methods = {name for methods in mongo_compat.LEGACY_METHODS.values() for name in methods}
    return methods | {"authenticate"}  # replaced with mongo_compat.connect


def test_every_legacy_call_in_hyperopts_mongoexp_is_covered():
    uncovered = legacy_calls(MONGOEXP_SOURCE) - covered_names()
    assert not uncovered, (
        f"hyperopt/mongoexp.py now calls {sorted(uncovered)}, which pymongo 4 removed "
        "and mongo_compat does not translate: add them to mongo_compat.LEGACY_METHODS")


def test_the_scan_finds_legacy_calls():
    assert legacy_calls("x = coll.find_and_modify(q, u)\ny = c.save(doc)\n"
                        "logger.error('no')") == {"find_and_modify", "save"}


def test_docstring_lists_every_covered_call_and_hyperopt_still_makes_each():
    for cls, methods in mongo_compat.LEGACY_METHODS.items():
        for name in methods:
            assert f"{cls.__name__}.{name}" in mongo_compat.__doc__
    assert "Database.authenticate" in mongo_compat.__doc__
    # If hyperopt stops calling one, this layer can shrink.
    assert covered_names() <= legacy_calls(MONGOEXP_SOURCE)


def test_install_is_idempotent_and_replaces_hyperopts_connection():
    mongo_compat.install()
    mongo_compat.install()
    assert mongo_compat.installed()
    assert hyperopt.mongoexp.connection_with_tunnel is mongo_compat.connect
    assert mongo_compat._original_connect is not mongo_compat.connect


def test_insert_sets_and_returns_the_id(coll):
    doc = {"a": 1}
    new_id = coll.insert(doc)
    assert doc["_id"] == new_id
    assert coll.find_one({"_id": new_id})["a"] == 1
    ids = coll.insert([{"b": 1}, {"b": 2}])
    assert len(ids) == 2 and coll.count_documents({"b": {"$gt": 0}}) == 2


def test_insert_refuses_keys_mongodb_would_read_as_operators(coll):
    with pytest.raises(InvalidDocument):
        coll.insert({"a": {"$bad": 1}})
    with pytest.raises(InvalidDocument):
        coll.insert({"a.b": 1})
    assert coll.count_documents({}) == 0


def test_update_changes_one_document_unless_multi(coll):
    coll.insert_many([{"k": 1, "v": 0}, {"k": 1, "v": 0}])
    reply = coll.update({"k": 1}, {"$set": {"v": 1}}, upsert=False, multi=False)
    assert reply["n"] == 1 and reply["nModified"] == 1 and reply["updatedExisting"]
    assert coll.count_documents({"v": 1}) == 1
    reply = coll.update({"k": 1}, {"$set": {"v": 2}}, multi=True)
    assert reply["n"] == 2 and coll.count_documents({"v": 2}) == 2
    reply = coll.update({"k": 9}, {"$set": {"v": 3}})
    assert reply["n"] == 0 and not reply["updatedExisting"]


def test_update_with_a_plain_document_replaces_it(coll):
    coll.insert_one({"_id": 1, "a": 1, "b": 2})
    coll.update({"_id": 1}, {"c": 3})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "c": 3}
    with pytest.raises(ValueError):
        coll.update({"_id": 1}, {"c": 4}, multi=True)


def test_find_and_modify_returns_the_old_or_the_new_document(coll):
    coll.insert_one({"_id": 1, "state": 0})
    old = coll.find_and_modify({"state": 0}, {"$set": {"state": 1}})
    assert old["state"] == 0
    new = coll.find_and_modify({"state": 1}, {"$set": {"state": 2}}, new=True, upsert=False)
    assert new["state"] == 2
    assert coll.find_and_modify({"state": 0}, {"$set": {"state": 5}}, new=True) is None


def test_find_and_modify_upsert_inc_returns_none_then_the_old_counter(coll):
    """MongoTrials.new_trial_ids: $inc with upsert=True, old document back."""
    assert coll.find_and_modify({"a": 0}, {"$inc": {"last_id": 3}}, upsert=True) is None
    assert coll.find_and_modify({"a": 0}, {"$inc": {"last_id": 2}}, upsert=True)["last_id"] == 3
    assert coll.find_one({"a": 0})["last_id"] == 5


def test_find_and_modify_remove_and_sort(coll):
    coll.insert_many([{"_id": i, "q": 1} for i in range(3)])
    first = coll.find_and_modify({"q": 1}, {"$set": {"q": 2}}, sort={"_id": -1}, new=True)
    assert first["_id"] == 2
    removed = coll.find_and_modify({"_id": 0}, remove=True)
    assert removed["_id"] == 0 and coll.count_documents({}) == 2


def test_remove_by_document_by_id_and_all(coll):
    coll.insert_many([{"_id": i, "x": i % 2} for i in range(5)])
    doc = coll.find_one({"_id": 1})
    assert coll.remove(doc)["n"] == 1  # hyperopt passes whole job documents
    assert coll.remove(2)["n"] == 1
    assert coll.remove({"x": 0}, multi=False)["n"] == 1
    assert coll.count_documents({}) == 2
    assert coll.remove()["n"] == 2
    assert coll.count_documents({}) == 0


def test_collection_and_cursor_count(coll):
    coll.insert_many([{"i": i} for i in range(10)])
    assert coll.count() == 10
    assert coll.count({"i": {"$lt": 4}}) == 4
    cursor = coll.find({"i": {"$gte": 2}}).skip(1).limit(3)
    assert cursor.count() == 8
    assert cursor.count(with_limit_and_skip=True) == 3


def test_mongojobs_len_counts_instead_of_hiding_an_error(mongo_url):
    """MongoJobs.__len__ wraps Collection.count in a bare except returning 0."""
    jobs = mongo_compat.open_jobs(hyperopt_url(mongo_url))
    assert len(jobs) == 0
    jobs.insert({"a": 7})
    jobs.insert({"a": 8})
    assert len(jobs) == 2


def test_hyperopt_trials_work_through_the_layer(mongo_url):
    from hyperopt import JOB_STATE_NEW
    from hyperopt.mongoexp import MongoTrials
    trials = MongoTrials(mongo_compat.open_jobs(hyperopt_url(mongo_url)), exp_key="e")
    first, second = trials.new_trial_ids(2), trials.new_trial_ids(1)
    assert len(first) == 2 and second == [first[-1] + 1]  # unique across the database
    assert trials.count_by_state_unsynced(JOB_STATE_NEW) == 0
    job = trials.handle.reserve("host:1", exp_key="e")
    assert job is None  # nothing queued


def test_connect_gives_credentials_to_the_client_and_fails_fast():
    client, tunnel = mongo_compat.connect("db", host="127.0.0.1", port=1,
                                          user="us%40er", pw="p%2Fw", auth_dbname=None)
    credentials = client.options.pool_options._credentials
    assert (credentials.username, credentials.password, credentials.source) == (
        "us@er", "p/w", "db")  # as pymongo 3's authenticate: the URL's database
    client.close()
    client, _ = mongo_compat.connect("db", host="::1", port=1, user="u", pw="p",
                                     auth_dbname="admin")  # IPv6, explicit authSource
    assert client.options.pool_options._credentials.source == "admin"
    assert client.options.server_selection_timeout == mongo_compat.SERVER_SELECTION_TIMEOUT_S
    assert tunnel is None
    client.close()


def test_a_user_without_password_gets_a_message_not_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.hyperopt either
    with pytest.raises(mongo_compat.MongoUnavailable, match="no password for MongoDB user 'alice'"):
        mongo_compat.open_jobs("mongo://alice@127.0.0.1:1/db/jobs")


def test_open_jobs_says_clearly_when_mongodb_is_unreachable(monkeypatch):
    monkeypatch.setattr(mongo_compat, "SERVER_SELECTION_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(mongo_compat.MongoUnavailable, match="cannot reach MongoDB at "
                       r"127\.0\.0\.1:1/nowhere within 0.5 s .*Is mongod running"):
        mongo_compat.open_jobs("mongo://127.0.0.1:1/nowhere/jobs")
    assert time.monotonic() - started < 5


def test_without_the_layer_hyperopt_fails_on_pymongo_4(mongo_url):
    """Why the layer exists: if this starts passing, hyperopt fixed its
    pymongo 4 support and mongo_compat may be retired."""
    code = ("import sys; from hyperopt.mongoexp import MongoTrials\n"
            "t = MongoTrials(sys.argv[1], exp_key='e')\n"
            "t.count_by_state_unsynced(0)\n")
    url = hyperopt_url(mongo_url)
    run = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    assert "'Cursor' object has no attribute 'count'" in run.stderr


def hyperopt_url(mongo_url):
    from hks.mongo import mongo_settings
    return mongo_settings.mongo_url(mongo_url)


# ------------------------------------------------ the trust boundary ----

def test_tls_options_in_the_address_reach_pymongo(monkeypatch):
    """mongodb://...?tls=true&tlsCAFile=... : hyperopt drops URL options, so
    open_jobs hands them to MongoClient itself."""
    import pymongo
    from hks.mongo import mongo_settings
    url = mongo_settings.mongo_url("mongodb://hks:secret@db.example.org:27017/hks?authSource=admin"
                                   "&tls=true&tlsCAFile=/etc/hks/ca.pem"
                                   "&tlsAllowInvalidHostnames=false")
    assert url == ("mongo://hks:secret@db.example.org:27017/hks/jobs?authSource=admin&tls=true"
                   "&tlsCAFile=/etc/hks/ca.pem&tlsAllowInvalidHostnames=false")
    made = []

    def client(*args, **kwargs):  # what would go to db.example.org; nothing is reached
        made.append(kwargs)
        return real_client("127.0.0.1", 1, serverSelectionTimeoutMS=50)

    real_client = pymongo.MongoClient
    monkeypatch.setattr(mongo_compat.pymongo, "MongoClient", client)
    with pytest.raises(mongo_compat.MongoUnavailable):
        mongo_compat.open_jobs(url)
    assert made[0]["tls"] is True and made[0]["tlsCAFile"] == "/etc/hks/ca.pem"
    assert made[0]["tlsAllowInvalidHostnames"] is False
    assert made[0]["username"] == "hks" and made[0]["authSource"] == "admin"
    with pytest.raises(mongo_compat.MongoUnavailable):
        mongo_compat.open_jobs(mongo_settings.mongo_url("other.example.org/hks"))
    assert "tls" not in made[1]  # each server its own options


def test_options_pymongo_is_not_given_are_refused():
    from hks.mongo import mongo_settings
    for address, why in [("h/db?tls=maybe", "tls must be true or false"),
                         ("h/db?replicaSet=rs0", "unsupported option(s) replicaSet")]:
        with pytest.raises(ValueError, match=re.escape(why)):
            mongo_settings.mongo_url(address)


def test_a_remote_database_without_a_password_is_named_once():
    from hks.mongo import mongo_settings
    notice = mongo_settings.open_database_notice(mongo_settings.mongo_url("db.example.org/hks"))
    assert "without a user name and password: anyone who can reach it can run code" in notice
    for safe in ("127.0.0.1/hks", "localhost/hks", "mongodb://hks:pw@db.example.org/hks"):
        assert mongo_settings.open_database_notice(mongo_settings.mongo_url(safe)) == ""
