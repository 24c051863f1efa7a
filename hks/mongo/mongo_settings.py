"""The settings of the search over MongoDB, and MongoDB addresses: the
driver's (hyperopt_optimize.py --mongo) and the workers'
(hyperopt_mongo_worker.py) flags with their environment variables, the
address in any of the forms users write it (HOST:PORT/DB, a mongodb:// URL,
hyperopt's mongo://, or MONGO_DB_HOST and its friends), and the address as
it may be printed: without the password."""

import dataclasses
import functools
import ipaddress
import re
import urllib.parse

from hks.core import flags
from hks.mongo import mongo_compat

MONGO_DEFAULT_PORT = 27017
MONGO_DEFAULT_DB = "hyperopt"
MONGO_JOBS_COLLECTION = "jobs"
DEFAULT_EXP_KEY = "hyperopt_keras_cifar100"


# ------------------------------------------------------ addresses ----

def mongo_url(text):
    """A MongoDB address as hyperopt's MongoTrials wants it:
    `mongo://[user:password@]host:port/db/jobs[?authSource=db&tls=true...]`
    (mongo_compat.TLS_OPTIONS are kept for MongoClient). Accepts
    `HOST[:PORT][/DB]` (port 27017 and database `hyperopt` by default),
    `mongodb://[user:password@]HOST[:PORT]/DB[?authSource=db]` (user and
    password percent-encoded, as in any MongoDB URL) and hyperopt's own
    `mongo://HOST:PORT/DB/jobs`. Raises ValueError with the reason."""
    text = str(text).strip()
    shown = repr(redact(text))  # never print a password
    example = "expected HOST:PORT/DB or mongodb://USER:PASSWORD@HOST:PORT/DB?authSource=admin"
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "mongodb", text
    if scheme not in ("mongodb", "mongo"):
        raise ValueError(f"{shown}: scheme {scheme}:// is not supported ({example}; "
                         "mongodb+srv:// and ssh tunnels are not)")
    try:
        parts = urllib.parse.urlsplit("//" + rest)
    except ValueError:  # Python checks [IPv6] literals itself
        host = rest.partition("]")[0].rpartition("@")[2] + "]"
        raise ValueError(f"{shown}: {host} is not a valid IPv6 address") from None
    if "," in parts.netloc:
        raise ValueError(f"{shown}: one host only; hyperopt cannot use a replica-set list")
    try:
        port = parts.port or MONGO_DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{shown}: the port is not a number from 1 to 65535") from None
    path = [p for p in parts.path.split("/") if p]
    if path[1:] == [MONGO_JOBS_COLLECTION]:
        path = path[:1]
    path = path or [MONGO_DEFAULT_DB]
    if not parts.hostname or len(path) != 1:
        raise ValueError(f"{shown}: {example}")
    problem = host_problem(parts.netloc.rpartition("@")[2], parts.hostname)
    if problem:
        raise ValueError(f"{shown}: {problem}")
    database = path[0]
    if any(c in database for c in ' ."$\\') or len(database) > 63:
        raise ValueError(f"{shown}: {database!r} is not a valid MongoDB database name")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"authSource"} - set(mongo_compat.TLS_OPTIONS))
    if unknown:
        raise ValueError(f"{shown}: unsupported option(s) {', '.join(unknown)}; only "
                         f"authSource and {', '.join(mongo_compat.TLS_OPTIONS)} are understood")
    for name, values in query.items():
        if (mongo_compat.TLS_OPTIONS.get(name) is bool
                and values[-1].lower() not in ("true", "false")):
            raise ValueError(f"{shown}: {name} must be true or false")
    if parts.password is not None and not parts.username:
        raise ValueError(f"{shown}: a password needs a user name")
    auth = ""
    if parts.username:
        auth = parts.username + (f":{parts.password}" if parts.password is not None else "") + "@"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    kept = {name: values[-1] for name, values in query.items()
            if name in mongo_compat.TLS_OPTIONS or (name == "authSource" and values[-1])}
    tail = f"?{urllib.parse.urlencode(kept, safe='/')}" if kept else ""
    return f"mongo://{auth}{host}:{port}/{database}/{MONGO_JOBS_COLLECTION}{tail}"


def open_database_notice(url):
    """One line when `url` names a MongoDB on another machine without a user
    name: anyone who reaches it can run code on every worker; "" otherwise."""
    parts = urllib.parse.urlsplit(url)
    local = parts.hostname in ("localhost", "::1") or str(parts.hostname).startswith("127.")
    if local or parts.username:
        return ""
    return (f"warning: MongoDB at {redact(url)} is used without a user name and password: "
            "anyone who can reach it can run code on every worker (docs/mongodb.md, "
            "The trust boundary). Give it a password, keep it on a private network.")


HOST_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def host_problem(netloc, hostname):
    """Why a host cannot be a MongoDB server's name or address (spaces, empty
    labels, characters a DNS name cannot hold, a malformed IPv6 literal), or
    None. Caught here, it is refused at once instead of after a 5 s timeout."""
    if netloc.startswith("["):
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return f"[{hostname}] is not a valid IPv6 address"
        return None
    if len(hostname) > 253 or not all(HOST_LABEL.fullmatch(label)
                                      for label in hostname.split(".")):
        return (f"host {hostname!r} is not a valid host name or address (letters, digits, "
                "'-', '_' and '.' between non-empty parts)")
    return None


def mongo_url_from_parts(environ):
    """The original's variables: MONGO_DB_HOST (and MONGO_DB_PORT, MONGO_DB_NAME,
    MONGO_DB_USER, MONGO_DB_PASSWORD, MONGO_DB_AUTH_SOURCE) make a --mongo
    address: (where it came from, the address), or None without MONGO_DB_HOST."""
    host = environ.get("MONGO_DB_HOST", "").strip()
    if not host:
        return None
    port = environ.get("MONGO_DB_PORT", "").strip() or MONGO_DEFAULT_PORT
    database = environ.get("MONGO_DB_NAME", "").strip() or MONGO_DEFAULT_DB
    user = environ.get("MONGO_DB_USER", "")
    auth, tail = "", ""
    if user:
        password = environ.get("MONGO_DB_PASSWORD", "")
        quote = functools.partial(urllib.parse.quote, safe="")
        auth = quote(user) + (f":{quote(password)}" if password else "") + "@"
        tail = "?authSource=" + (environ.get("MONGO_DB_AUTH_SOURCE", "") or "admin")
    return ("MONGO_DB_HOST/MONGO_DB_PORT/MONGO_DB_NAME",
            f"mongodb://{auth}{host}:{port}/{database}{tail}")


def redact(url):
    """A MongoDB URL fit to print: the password replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url if "://" in url else "//" + url)
    except ValueError:  # a malformed [IPv6] host: hide whatever stands before the @
        return re.sub(r"^((?:[a-z]+://)?[^:/@]*):[^@]*@", r"\1:***@", url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


# ------------------------------------------------------- settings ----

def mongo_setting():
    return flags.setting(
        None, "--mongo", "HKS_MONGO", mongo_url,
        "the search's MongoDB (the driver then queues trials for workers): "
        "HOST:PORT/DB or mongodb://USER:PASSWORD@HOST:PORT/DB?authSource=admin; "
        "without HKS_MONGO, MONGO_DB_HOST (+ MONGO_DB_PORT, MONGO_DB_NAME, "
        "MONGO_DB_USER, MONGO_DB_PASSWORD) make one", fallback=mongo_url_from_parts)


def exp_key_setting():
    return flags.setting(DEFAULT_EXP_KEY, "--exp-key", "EXPERIMENT_NAME", str,
                         "name of the experiment in MongoDB; the same name resumes it")


def outage_setting():
    return flags.setting(
        300.0, "--outage-grace", "HKS_OUTAGE_GRACE", flags.positive_number,
        "seconds to wait, retrying, when MongoDB goes away during the search (running "
        "trials train on and their results are written once it is back); past it, exit "
        "with an error (run the same command again to resume)")


@dataclasses.dataclass
class DriverSettings:
    """What hyperopt_optimize.py --mongo reads on top of the search's."""

    mongo: str | None = mongo_setting()
    exp_key: str = exp_key_setting()
    queue_len: int = flags.setting(
        4, "--queue-len", "HKS_QUEUE_LEN", flags.positive_int,
        "trials kept queued for idle workers (about the number of workers; more "
        "makes TPE suggest with less feedback)")
    stale_after: float = flags.setting(
        120.0, "--stale-after", "HKS_STALE_AFTER", flags.positive_number,
        "seconds without a worker heartbeat after which a running trial is put "
        "back in the queue (several worker heartbeats)")
    max_requeues: int = flags.setting(
        2, "--max-requeues", "HKS_MAX_REQUEUES", flags.non_negative_int,
        "a trial whose worker died this many times more is given up (marked as an "
        "error) instead of being queued again")
    outage_grace: float = outage_setting()


@dataclasses.dataclass
class WorkerSettings(flags.MachineSettings):
    """What hyperopt_mongo_worker.py reads: this machine's folders (its own,
    whatever the driver's are), and how it takes trials. How a trial trains
    (epochs, data set size, ...) comes from the driver."""

    mongo: str | None = mongo_setting()
    exp_key: str = exp_key_setting()
    poll_interval: float = flags.setting(
        2.0, "--poll-interval", "HKS_POLL_INTERVAL", flags.positive_number,
        "seconds between looks for a queued trial (randomised below this)")
    reserve_timeout: float | None = flags.setting(
        None, "--reserve-timeout", "HKS_RESERVE_TIMEOUT", flags.seconds_or_forever,
        "exit after this many seconds without a queued trial (0: wait forever)")
    last_job_timeout: float | None = flags.setting(
        None, "--last-job-timeout", "HKS_LAST_JOB_TIMEOUT", flags.seconds_or_forever,
        "take no new trial once this many seconds have passed")
    max_consecutive_failures: int = flags.setting(
        4, "--max-consecutive-failures", "HKS_MAX_CONSECUTIVE_FAILURES", flags.positive_int,
        "exit after this many trials in a row could not run")
    max_jobs: int | None = flags.setting(
        None, "--max-jobs", "HKS_MAX_JOBS", flags.positive_int,
        "exit after running this many trials (default: no limit)")
    workdir: str | None = flags.setting(
        None, "--workdir", "HKS_WORKDIR", str,
        "folder trials run in (TensorBoard/ and weights/ land there; default: the "
        "current folder)")
    dataset: str | None = flags.setting(
        None, "--dataset", "HKS_DATASET", flags.dataset_spec,
        "the data set this worker trains on (default: the one the driver names). For a "
        "folder of images, its path on this machine; a trial of another data set is "
        "refused (the trial gets the error) and the worker exits")
    heartbeat: float = flags.setting(
        10.0, "--heartbeat", "HKS_HEARTBEAT", flags.positive_number,
        "seconds between the worker's signs of life for its running trial")
    outage_grace: float = outage_setting()
