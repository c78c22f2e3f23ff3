"""Store many copies of one flow run straight in Prefect's database (bench/read_model.py
`--store sql`): each copy is the template's `flow_run` row and its current
`flow_run_state` row with new ids, its owner's tag and username, and an expected start
`i` seconds before the template's. Seconds for 10,000 instead of the 20 minutes the
Prefect API takes, and no event or service work left behind (the server is as quiet as
one that gathered its runs over weeks). Nothing reads these runs but the benchmark.

Fails loudly (the database's own error) on a schema this does not know.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable

SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"  # Prefect's own format on SQLite
SQLITE_EARLIER = "strftime('%Y-%m-%d %H:%M:%f000', expected_start_time, '-' || :seconds || ' seconds')"


def copy_of(template: dict, i: int, owners: tuple[str, ...]) -> dict:
    """Copy `i` of `template`: its name, and tags and parameters of its owner (the owners
    take turns)."""
    user_tag = next(t for t in template["tags"] if t.startswith("user:"))
    owner = owners[i % len(owners)]
    params = json.loads(json.dumps(template["parameters"]))
    params["job"]["username"] = owner
    tags = [t for t in template["tags"] if t != user_tag] + [f"user:{owner}"]
    return {"name": f"bench-copy-{i}", "tags": tags, "parameters": params}


def copies(template: dict, count: int, owners: tuple[str, ...]) -> list[dict]:
    """Per copy: its ids, name, owner's tags and parameters (as JSON text), offset."""
    rows = []
    for i in range(count):
        copy = copy_of(template, i, owners)
        rows.append({
            "run": str(uuid.uuid4()),
            "state": str(uuid.uuid4()),
            "name": copy["name"],
            "tags": json.dumps(copy["tags"]),
            "parameters": json.dumps(copy["parameters"]),
            "seconds": i + 1,
        })
    return rows


# Columns given new values in each statement; every other column is the template's.
def _insert(table: str, columns: list[str], fresh: dict[str, str], where: str) -> str:
    values = ", ".join(fresh.get(c, c) for c in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} FROM {table} WHERE {where}"


def store_sqlite(path: str, template: dict, rows: list[dict]) -> None:
    now = SQLITE_NOW
    with sqlite3.connect(path, timeout=60) as db:
        run_cols = [r[1] for r in db.execute("PRAGMA table_info(flow_run)")]
        state_cols = [r[1] for r in db.execute("PRAGMA table_info(flow_run_state)")]
        run_sql = _insert("flow_run", run_cols, {
            "id": ":run", "name": ":name", "tags": ":tags", "parameters": ":parameters", "created": now,
            "updated": now, "state_id": "NULL", "idempotency_key": "NULL",
            "expected_start_time": SQLITE_EARLIER,
        }, "id = :template")
        state_sql = _insert("flow_run_state", state_cols, {
            "id": ":state", "flow_run_id": ":run", "created": now, "updated": now,
        }, "id = :template_state")
        keys = {"template": template["id"], "template_state": template["state_id"]}
        db.executemany(run_sql, [{**row, **keys} for row in rows])
        db.executemany(state_sql, [{**row, **keys} for row in rows])
        db.executemany("UPDATE flow_run SET state_id = :state WHERE id = :run", rows)


async def store_postgres(dsn: str, template: dict, rows: list[dict]) -> None:
    import asyncpg

    db = await asyncpg.connect(dsn)
    try:
        async def columns(table: str) -> list[str]:
            found = await db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
                "AND table_schema = current_schema() ORDER BY ordinal_position", table,
            )
            return [r["column_name"] for r in found]

        run_sql = _insert("flow_run", await columns("flow_run"), {
            "id": "$1::uuid", "name": "$2", "tags": "$3::jsonb", "parameters": "$4::jsonb", "created": "now()",
            "updated": "now()", "state_id": "NULL", "idempotency_key": "NULL",
            "expected_start_time": "expected_start_time - make_interval(secs => $5)",
        }, "id = $6::uuid")
        state_sql = _insert("flow_run_state", await columns("flow_run_state"), {
            "id": "$1::uuid", "flow_run_id": "$2::uuid", "created": "now()", "updated": "now()",
        }, "id = $3::uuid")
        async with db.transaction():
            await db.executemany(run_sql, [
                (r["run"], r["name"], r["tags"], r["parameters"], float(r["seconds"]), template["id"]) for r in rows
            ])
            await db.executemany(state_sql, [(r["state"], r["run"], template["state_id"]) for r in rows])
            await db.executemany(
                "UPDATE flow_run SET state_id = $1::uuid WHERE id = $2::uuid", [(r["state"], r["run"]) for r in rows]
            )
    finally:
        await db.close()


def store(database_url: str, template: dict, count: int, owners: tuple[str, ...], log: Callable[[str], None]) -> None:
    """`count` copies of `template` (a flow run's JSON, as the Prefect API returns it)."""
    rows = copies(template, count, owners)
    if database_url.startswith("sqlite"):
        store_sqlite(database_url.split("///", 1)[1], template, rows)
    else:
        asyncio.run(store_postgres(database_url.replace("+asyncpg", ""), template, rows))
    log(f"  stored {count} copies by SQL")
