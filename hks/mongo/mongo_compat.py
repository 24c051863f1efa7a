"""Make hyperopt 0.3's MongoDB search (MongoTrials, MongoJobs, MongoWorker)
work with pymongo 4.

hyperopt 0.3.0 declares pymongo>=4, but hyperopt/mongoexp.py still calls
methods that pymongo 4 removed, so MongoTrials fails at the first fmin step
('Cursor' object has no attribute 'count'). `install()` gives pymongo's
Collection and Cursor classes back the few legacy methods hyperopt calls, each
a thin translation to its pymongo 4 equivalent, and replaces hyperopt's
connection function so that credentials go to MongoClient and an unreachable
server fails within seconds instead of hanging. Nothing else in pymongo
changes: the added names are ones pymongo 4 no longer has.

The call sites in hyperopt 0.3.0's mongoexp.py, and what covers each:

    Collection.find_and_modify  MongoJobs.reserve (a worker claims a job:
                                atomic, new=True returns the claimed doc) and
                                MongoTrials.new_trial_ids ($inc, upsert=True,
                                returns the doc before the change)
                                -> find_one_and_update / _replace / _delete
    Collection.insert           MongoJobs.insert, MongoTrials._insert_trial_docs
                                -> insert_one / insert_many (sets the doc's _id)
    Collection.update           MongoJobs.update ($set, one document)
                                -> update_one / update_many / replace_one
    Collection.remove           MongoJobs.delete, MongoJobs.delete_all
                                -> delete_many / delete_one
    Collection.count            MongoJobs.__len__ (inside a bare `except` that
                                returns 0, so a miss gives wrong numbers)
                                -> count_documents
    Cursor.count                MongoTrials.count_by_state_unsynced (fmin's
                                loop), number_of_jobs_in_db (--max-jobs-in-db)
                                -> count_documents with the cursor's filter
    Database.authenticate       connection_with_tunnel, when the URL has a user
                                -> `connect` below: credentials to MongoClient

tests/test_mongo_compat.py fails if mongoexp.py grows a call to a method
pymongo 4 removed that this module does not cover.

Use it before touching MongoTrials, in scripts and notebooks alike:

    from hks.mongo import mongo_compat
    mongo_compat.install()
    trials = MongoTrials("mongo://localhost:27017/hyperopt/jobs", exp_key="exp1")
"""

import urllib.parse
from collections.abc import Mapping

import pymongo
import pymongo.errors
from bson.errors import InvalidDocument
from bson.son import SON
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.cursor import Cursor

# An unreachable server is reported after this long instead of pymongo's 30 s.
SERVER_SELECTION_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 20.0  # no call of ours takes this long on a live server

# Methods pymongo 4 removed, by class; tests scan hyperopt's source for them.
REMOVED_IN_PYMONGO4 = {
    "Collection": ["count", "insert", "update", "remove", "find_and_modify", "save",
                   "ensure_index", "reindex", "group", "map_reduce",
                   "inline_map_reduce", "parallel_scan",
                   "initialize_ordered_bulk_op", "initialize_unordered_bulk_op"],
    "Cursor": ["count"],
    "Database": ["authenticate", "logout", "add_user", "remove_user", "eval",
                 "collection_names", "error", "last_status", "previous_error",
                 "reset_error_history", "current_op"],
    "MongoClient": ["database_names", "close_cursor", "kill_cursors", "fsync",
                    "unlock", "is_locked", "set_cursor_manager"],
}


def has_operators(document):
    """True for an update like {"$set": ...}, False for a whole replacement document."""
    return bool(document) and next(iter(document)).startswith("$")


def refuse_bad_keys(document):
    """What pymongo 3's check_keys=True did before sending a document: refuse
    field names that MongoDB reads as operators or paths."""
    for key, value in document.items():
        if key.startswith("$") or "." in key:
            raise InvalidDocument(f"key {key!r} must not start with '$' or contain '.'")
        if isinstance(value, Mapping):
            refuse_bad_keys(value)


def legacy_insert(self, doc_or_docs, manipulate=True, check_keys=True, **kwargs):
    """pymongo 3's Collection.insert: returns the new _id (a list for a list),
    and sets `_id` in the caller's document, as hyperopt relies on."""
    many = not isinstance(doc_or_docs, Mapping)
    docs = list(doc_or_docs) if many else [doc_or_docs]
    if check_keys:
        for doc in docs:
            refuse_bad_keys(doc)
    if many:
        return self.insert_many(docs, **kwargs).inserted_ids
    return self.insert_one(doc_or_docs, **kwargs).inserted_id


def legacy_update(self, spec, document, upsert=False, manipulate=False, multi=False,
                  check_keys=True, **kwargs):
    """pymongo 3's Collection.update: operators update one document (all with
    multi=True), a plain document replaces one. Returns the server's reply
    ({'n', 'nModified', 'updatedExisting', 'ok', ...})."""
    if has_operators(document):
        method = self.update_many if multi else self.update_one
        result = method(spec, document, upsert=upsert, **kwargs)
    elif multi:
        raise ValueError("multi=True needs update operators such as $set")
    else:
        result = self.replace_one(spec, document, upsert=upsert, **kwargs)
    reply = dict(result.raw_result)
    reply.setdefault("updatedExisting", result.matched_count > 0)
    return reply


def legacy_remove(self, spec_or_id=None, multi=True, **kwargs):
    """pymongo 3's Collection.remove: a filter (or an _id) deletes every match
    (one with multi=False). hyperopt passes whole job documents as filters."""
    if spec_or_id is None:
        spec_or_id = {}
    elif not isinstance(spec_or_id, Mapping):
        spec_or_id = {"_id": spec_or_id}
    method = self.delete_many if multi else self.delete_one
    return dict(method(spec_or_id, **kwargs).raw_result)


def legacy_find_and_modify(self, query=None, update=None, upsert=False, sort=None,
                           full_response=False, manipulate=False, new=False,
                           fields=None, remove=False, **kwargs):
    """pymongo 3's Collection.find_and_modify, atomic on the server: returns the
    document before the change, or after it with new=True; None if nothing
    matched (and nothing was upserted)."""
    if full_response:
        raise NotImplementedError("find_and_modify(full_response=True) is not translated")
    query = {} if query is None else query
    if isinstance(sort, Mapping):
        sort = list(sort.items())
    options = dict(projection=fields, sort=sort, **kwargs)
    if remove:
        return self.find_one_and_delete(query, **options)
    if update is None:
        raise ValueError("find_and_modify needs update=... or remove=True")
    after = ReturnDocument.AFTER if new else ReturnDocument.BEFORE
    method = self.find_one_and_update if has_operators(update) else self.find_one_and_replace
    return method(query, update, upsert=upsert, return_document=after, **options)


def legacy_collection_count(self, filter=None, session=None, **kwargs):
    """pymongo 3's Collection.count: documents matching `filter` (all by default)."""
    return self.count_documents({} if filter is None else filter, session=session, **kwargs)


def legacy_cursor_count(self, with_limit_and_skip=False):
    """pymongo 3's Cursor.count: documents matching the cursor's filter,
    ignoring its skip and limit unless with_limit_and_skip=True."""
    options = {}
    if with_limit_and_skip:
        options = {k: v for k, v in (("skip", self._skip), ("limit", self._limit)) if v}
    return self.collection.count_documents(self._spec or {}, session=self.session, **options)


LEGACY_METHODS = {
    Collection: {"insert": legacy_insert, "update": legacy_update, "remove": legacy_remove,
                 "find_and_modify": legacy_find_and_modify,
                 "count": legacy_collection_count},
    Cursor: {"count": legacy_cursor_count},
}


def connect(dbname, host="localhost", auth_dbname=None, port=27017, ssh=False,
            user="hyperopt", pw=None):
    """Stands in for hyperopt.mongoexp.connection_with_tunnel (same arguments,
    same return value: (client, ssh tunnel or None)). pymongo 4 has no
    Database.authenticate: the user name and password, percent-decoded as in
    any mongodb:// URL, go to MongoClient, with authSource `auth_dbname`
    (by default, as hyperopt did: admin for the user "hyperopt", else the
    URL's database). An unreachable server raises ServerSelectionTimeoutError
    after SERVER_SELECTION_TIMEOUT_S."""
    import hyperopt.mongoexp as mongoexp
    if ssh:  # the ssh tunnel needs nothing pymongo 4 removed
        return _original_connect(dbname, host, auth_dbname, port, ssh, user, pw)
    credentials = {}
    if user:
        pw = pw or mongoexp.read_pw()  # hyperopt's rule: ~/.hyperopt holds the password
        credentials = dict(username=urllib.parse.unquote(user),
                           password=urllib.parse.unquote(pw),
                           authSource=auth_dbname or ("admin" if user == "hyperopt" else dbname))
    timeout_ms = int(SERVER_SELECTION_TIMEOUT_S * 1000)
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    # socketTimeoutMS: a server that stops answering (paused, cut off) fails
    # a call in seconds instead of hanging it forever; the callers then wait
    # for it (mongo_search.wait_for_mongo).
    client = pymongo.MongoClient(host, port, document_class=SON, w=1, journal=True,
                                 serverSelectionTimeoutMS=timeout_ms,
                                 connectTimeoutMS=timeout_ms,
                                 socketTimeoutMS=int(SOCKET_TIMEOUT_S * 1000), **credentials,
                                 **_tls_by_server.get((host.strip("[]"), int(port)), {}))
    return client, None


_original_connect = None
_tls_by_server = {}  # (host, port): the TLS options of its address, which hyperopt drops

# The URL options that reach pymongo besides authSource: TLS (name: type).
TLS_OPTIONS = {"tls": bool, "tlsCAFile": str, "tlsCertificateKeyFile": str,
               "tlsAllowInvalidCertificates": bool, "tlsAllowInvalidHostnames": bool}


def tls_options(url):
    """The TLS options of a mongo:// address, as MongoClient keywords."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return {name: (values[-1].lower() == "true" if TLS_OPTIONS[name] is bool else values[-1])
            for name, values in query.items() if name in TLS_OPTIONS}


class MongoUnavailable(Exception):
    """MongoDB cannot be reached or refuses us; the message says what to check."""


def open_jobs(url):
    """hyperopt's MongoJobs for `url` (mongo://[user:pw@]host:port/db/jobs),
    with this layer installed and the server checked: raises MongoUnavailable
    with a clear message within SERVER_SELECTION_TIMEOUT_S instead of failing
    later inside hyperopt."""
    import urllib.parse as parse
    from hyperopt.mongoexp import MongoJobs
    install()
    parts = parse.urlsplit(url)
    where = f"{parts.hostname}:{parts.port}{parts.path.rsplit('/', 1)[0]}"
    _tls_by_server[(parts.hostname, parts.port)] = tls_options(url)
    try:
        jobs = MongoJobs.new_from_connection_str(url)
    except OSError:  # hyperopt looks for a missing password in ~/.hyperopt
        raise MongoUnavailable(
            f"no password for MongoDB user {parse.unquote(parts.username or '')!r}: put "
            "it in the URL (mongodb://USER:PASSWORD@...) or in MONGO_DB_PASSWORD") from None
    except (ValueError, pymongo.errors.ConfigurationError) as err:
        raise MongoUnavailable(f"cannot use the MongoDB address {where}: {err}") from None
    try:
        jobs.db.command("ping")
    except pymongo.errors.PyMongoError as err:
        jobs.conn.close()  # no client left behind with its monitor threads
        raise MongoUnavailable(unreachable_reason(err, where)) from None
    return jobs


def short_reason(err):
    """A pymongo error without its topology description, for one line."""
    return str(err).split(", Timeout:")[0].split(" (configured timeouts")[0][:200]


def unreachable_reason(err, where):
    """What a failed ping to MongoDB at `where` means, and what to check."""
    if isinstance(err, pymongo.errors.OperationFailure):
        return (f"MongoDB at {where} refused the connection: "
                f"{err.details.get('errmsg', err)}. Check the user name, password and "
                "authSource in --mongo (or MONGO_DB_USER/MONGO_DB_PASSWORD).")
    return (f"cannot reach MongoDB at {where} within {SERVER_SELECTION_TIMEOUT_S:g} s "
            f"({short_reason(err)}). Is mongod running there, and are the host and port right? "
            "(--mongo HOST:PORT/DB, HKS_MONGO or MONGO_DB_HOST/MONGO_DB_PORT)")


def install():
    """Apply the compatibility layer; calling it again does nothing."""
    global _original_connect
    import hyperopt.mongoexp as mongoexp
    for cls, methods in LEGACY_METHODS.items():
        for name, function in methods.items():
            if name not in vars(cls):
                setattr(cls, name, function)
    if mongoexp.connection_with_tunnel is not connect:
        _original_connect = mongoexp.connection_with_tunnel
        mongoexp.connection_with_tunnel = connect


def installed():
    import hyperopt.mongoexp as mongoexp
    return mongoexp.connection_with_tunnel is connect and all(
        vars(cls).get(name) is function
        for cls, methods in LEGACY_METHODS.items() for name, function in methods.items())
