"""`forget --phone`: no trace of the person left in the journal, PostgreSQL or Airtable; an audit entry kept."""

import json
import sqlite3
from functools import partial

import pytest

from daemon.cli import EXIT_USAGE, main
from daemon.events import Rejected, normalize
from daemon.forget import forget_phone
from daemon.journal import MIGRATIONS, Journal
from daemon.sinks.base import TransientError
from daemon.sinks.postgres import PostgresSink, quote_ident
from daemon.sinks.postgres_rows import PostgresRows
from tests.integration.conftest import BASE, NAMES, RECEIVED, cid, message
from tests.support import write_config

PHONE = "5511900000002"  # contact c2, sent as "+55 11 900000002"
TRACES = ("900000002", cid("c2"))


def airtable_text(emulator):
    def read():
        base = emulator.emulator.bases[BASE]
        return json.dumps(
            {name: [base.table(name).by_name(r) for r in base.table(name).records.values()] for name in NAMES.values()}
        )

    return emulator.run(read)


async def postgres_text(conn, schema):
    s = quote_ident(schema)
    return "".join(
        [
            str(await conn.fetch(f"SELECT t::text FROM {s}.{table} AS t"))
            for table in ("conversations", "interactions", "escalations", "events")
        ]
    )


def journal_bytes(path):
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def forget(stores, pg_cluster, pg_schema, phone=PHONE, reference=None, dry_run=False):
    return await forget_phone(
        phone,
        stores.journal,
        postgres=partial(PostgresRows.open, pg_cluster.dsn(), pg_schema),
        airtable=(stores.client, NAMES),
        reference=reference,
        dry_run=dry_run,
    )


def audit_table(path):
    with sqlite3.connect(path) as conn:
        return (
            [column for _, column, *_ in conn.execute("PRAGMA table_info(audit)")],
            conn.execute("SELECT key FROM meta WHERE key LIKE '%salt%'").fetchall(),
        )


async def test_forget_leaves_no_trace_in_any_store_and_keeps_an_audit_entry(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    assert all(trace in airtable_text(stores_emulator) for trace in TRACES)
    text = await postgres_text(pg_conn, pg_schema)
    assert all(trace in text for trace in TRACES)
    assert b"900000002" in journal_bytes(stores.journal.path)
    others_before = (await postgres_text(pg_conn, pg_schema)).count("900000001")

    report = await forget(stores, pg_cluster, pg_schema, reference="TICKET-42")

    assert report.complete and report.error is None
    assert report.stores["journal"] == {"events": 16, "conversations": 1, "quarantined": 0}
    assert report.stores["postgres"] == {"conversations": 1, "interactions": 15, "escalations": 0, "events": 16}
    assert report.stores["airtable"] == {"conversations": 1, "interactions": 15, "escalations": 0}
    assert not any(trace in airtable_text(stores_emulator) for trace in TRACES)
    text = await postgres_text(pg_conn, pg_schema)
    assert not any(trace in text for trace in TRACES)
    assert b"900000002" not in journal_bytes(stores.journal.path)  # secure_delete + WAL truncated
    assert (await postgres_text(pg_conn, pg_schema)).count("900000001") == others_before  # nobody else touched
    [entry] = await stores.journal.audit_entries()
    assert entry == {
        "id": 1,
        "at": report.audit["at"],
        "action": "forget",
        "last4": "0002",
        "reference": "TICKET-42",
        "report": {"stores": report.stores, "complete": True},
    }
    assert report.audit == {k: v for k, v in entry.items() if k != "id"}
    # nothing the number could be recovered from: no hash of it, no salt beside one
    assert audit_table(stores.journal.path) == (["id", "at", "action", "last4", "reference", "report"], [])

    again = await forget(stores, pg_cluster, pg_schema)  # nothing left: all zero, a second audit entry
    assert again.stores["journal"]["events"] == 0 and again.stores["airtable"]["interactions"] == 0
    assert len(await stores.journal.audit_entries()) == 2


async def test_a_dry_run_counts_in_every_store_what_forget_then_erases_and_erases_nothing(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    await stores.journal.append([], [Rejected("element has no title", '{"phone": "+55 11 900000002"}', RECEIVED)])
    before = (
        airtable_text(stores_emulator),
        await postgres_text(pg_conn, pg_schema),
        journal_bytes(stores.journal.path),
    )

    dry = await forget(stores, pg_cluster, pg_schema, reference="TICKET-43", dry_run=True)

    assert dry.dry_run and dry.complete and dry.error is None and dry.audit is None
    assert dry.stores == {
        "journal": {"events": 16, "conversations": 1, "quarantined": 1},
        "postgres": {"conversations": 1, "interactions": 15, "escalations": 0, "events": 16},
        "airtable": {"conversations": 1, "interactions": 15, "escalations": 0},
    }
    assert dry.as_dict()["dry_run"] is True
    assert airtable_text(stores_emulator) == before[0] and await postgres_text(pg_conn, pg_schema) == before[1]
    assert journal_bytes(stores.journal.path) == before[2]  # not a byte written
    assert await stores.journal.conversations_of_phone(PHONE) == [cid("c2")]
    assert (await stores.journal.counts())["quarantined"] == 1
    assert await stores.journal.audit_entries() == []  # a dry run is not an erasure: nothing audited

    real = await forget(stores, pg_cluster, pg_schema, reference="TICKET-43")
    assert real.complete and not real.dry_run and real.stores == dry.stores
    assert (await stores.journal.counts())["quarantined"] == 0
    assert not any(trace in airtable_text(stores_emulator) for trace in TRACES)


async def test_a_dry_run_without_airtable_or_postgres_says_they_are_not_configured(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", [])
    try:
        await journal.append([normalize(message(1, "c2", 60), RECEIVED)])
        dry = await forget_phone(PHONE, journal, postgres=None, airtable=None, dry_run=True)
        assert dry.stores == {
            "journal": {"events": 1, "conversations": 1, "quarantined": 0},
            "postgres": "not configured",
            "airtable": "not configured",
        }
        assert await journal.conversations_of_phone(PHONE) == [cid("c2")] and await journal.audit_entries() == []
    finally:
        await journal.close()


async def test_later_messages_from_a_forgotten_phone_are_stored_normally(stores, pg_cluster, pg_conn, pg_schema):
    await forget(stores, pg_cluster, pg_schema)
    result = await stores.journal.append([normalize(message(1000 + i, "c2", 90_000 + i), RECEIVED) for i in range(3)])
    assert result.accepted == 3
    sink = PostgresSink(pg_cluster.dsn(), pg_schema)
    await sink.deliver([e for e in await stores.journal.pending("postgres", 0, 10_000) if e.phone == PHONE])
    await sink.close()
    count = await pg_conn.fetchval(
        f"SELECT message_count FROM {quote_ident(pg_schema)}.conversations WHERE conversation_id = $1", cid("c2")
    )
    assert count == 3
    assert (await stores.journal.conversations([cid("c2")]))[cid("c2")].message_count == 3


async def test_an_unreachable_store_stops_forget_before_anything_is_erased(stores, pg_cluster, pg_conn, pg_schema):
    down = partial(PostgresRows.open, "postgresql://nobody@127.0.0.1:1/none", pg_schema)
    with pytest.raises(TransientError):
        await forget_phone(PHONE, stores.journal, postgres=down, airtable=(stores.client, NAMES))
    assert await stores.journal.conversations_of_phone(PHONE) == [cid("c2")]
    assert await stores.journal.audit_entries() == []
    assert "900000002" in await postgres_text(pg_conn, pg_schema)


QUARANTINED = {  # raw -> erased when 5511988887777 is forgotten
    "1": False,
    '{"phone": "+55 11 98888-7777"}': True,
    '{"phone": 5511988887777}': True,
    '{"id": 155119888877770}': False,
    '{"text": "call +55 (11) 98888-7777 now"}': True,
    '{"phone": "+55 11 98888-7776"}': False,
    '{"phone": "1"}': False,
}


async def test_forget_erases_quarantined_elements_holding_the_whole_number_only(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", [])
    try:
        await journal.append([], [Rejected("element has no title", raw, RECEIVED) for raw in QUARANTINED])
        counts, _ = await journal.forget("5511988887777", [])
        left = [raw for (raw,) in await journal.query("SELECT raw FROM quarantine ORDER BY id")]
    finally:
        await journal.close()
    assert left == [raw for raw, erased in QUARANTINED.items() if not erased]
    assert counts["quarantined"] == 3


@pytest.mark.parametrize("phone", ["1", "123456", "+55 11 98888-7777 0000 00000", "no digits"])
def test_forget_refuses_what_is_not_a_phone_number_and_does_nothing(tmp_path, capsys, phone):
    config = write_config(tmp_path)
    assert main(["forget", "--phone", phone, "--config", str(config)]) == EXIT_USAGE  # a bad parameter is a usage error
    assert "is not a phone number" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # not even the journal was opened


async def test_a_v3_journal_loses_its_audit_hashes_and_salt_on_upgrade(tmp_path):
    path = tmp_path / "old.sqlite"
    salt, digest = "5a17" * 8, "d1" * 32
    with sqlite3.connect(path) as conn:  # a journal as v3 wrote it, with one erasure audited
        for migration in MIGRATIONS[:3]:
            conn.executescript(migration)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_salt'", (salt,))
        conn.execute(
            "INSERT INTO audit (at, action, subject_hash, report) VALUES (?, 'forget', ?, ?)",
            ("2026-11-25T12:00:00.000Z", digest, '{"complete": true}'),
        )
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    assert salt.encode() in path.read_bytes() and digest.encode() in path.read_bytes()
    journal = await Journal.open(path, [])
    try:
        assert await journal.audit_entries() == [
            {
                "id": 1,
                "at": "2026-11-25T12:00:00.000Z",
                "action": "forget",
                "last4": None,
                "reference": None,
                "report": {"complete": True},
            }
        ]
        assert not any(secret in journal_bytes(path) for secret in (salt.encode(), digest.encode()))
        entry = await journal.audit("forget", {"complete": True}, last4="7777")
    finally:
        await journal.close()
    assert entry["last4"] == "7777" and audit_table(path)[1] == []


@pytest.mark.parametrize(
    "reference, says",
    [
        ("ticket\x07", "control character"),
        ("x" * 101, "at most 100 characters"),
        ("LGPD request from +55 11 98888-7777", "must not hold the phone number"),
    ],
)
def test_forget_refuses_a_reference_that_is_unprintable_long_or_holds_the_number(tmp_path, capsys, reference, says):
    config = write_config(tmp_path)
    args = ["forget", "--phone", "5511988887777", "--reference", reference, "--config", str(config)]
    assert main(args) == EXIT_USAGE
    assert says in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


async def test_forget_finds_the_person_through_the_mapped_names(renamed_stores, stores_emulator, pg_cluster, pg_schema):
    assert all(trace in airtable_text(stores_emulator) for trace in TRACES)
    report = await forget_phone(
        PHONE,
        renamed_stores.journal,
        postgres=partial(PostgresRows.open, pg_cluster.dsn(), pg_schema),
        airtable=(renamed_stores.client, renamed_stores.names),
    )
    assert report.complete and report.stores["airtable"] == {"conversations": 1, "interactions": 15, "escalations": 0}
    assert not any(trace in airtable_text(stores_emulator) for trace in TRACES)


async def test_airtable_deletions_of_forget_keep_the_records_count(stores, stores_emulator, pg_cluster, pg_schema):
    from daemon.sinks.airtable import AirtableSink

    sink = AirtableSink(stores.client, NAMES, stores.journal.conversations)
    sink.max_records = 1000
    await sink.check()
    before = sink.records
    report = await forget_phone(
        PHONE,
        stores.journal,
        postgres=partial(PostgresRows.open, pg_cluster.dsn(), pg_schema),
        airtable=(stores.client, NAMES),
        airtable_delete=sink.delete_records,
    )
    assert report.complete and sum(report.stores["airtable"].values()) == 16
    assert sink.records == before - 16 == stores_emulator.run(lambda: stores_emulator.emulator.bases[BASE].record_count)


async def test_fields_the_base_lacks_are_not_searched_and_the_report_says_what_that_leaves(
    stores, stores_emulator, pg_cluster, pg_schema
):
    """Conversations.CustomerPhone and Interactions.ConversationId missing are delivery warnings only: forget
    erases what it can still find, and says what it could not search, instead of erasing nothing."""

    def remove():
        base = stores_emulator.emulator.bases[BASE]
        base.table("Conversations").remove_field("CustomerPhone")
        base.table("Interactions").remove_field("ConversationId")

    stores_emulator.run(remove)

    report = await forget(stores, pg_cluster, pg_schema)

    assert report.complete and report.error is None
    assert report.stores["airtable"] == {"conversations": 1, "interactions": 0, "escalations": 0}
    assert cid("c2") not in airtable_text(stores_emulator)
    assert any(
        "Conversations.CustomerPhone is missing" in note and "looked up only by the ids" in note
        for note in report.notes
    )
    assert any("Interactions.ConversationId is missing" in note and "by hand" in note for note in report.notes)
    assert report.audit["report"]["notes"] == report.notes


def test_the_cli_prints_what_forget_could_not_search(tmp_path, capsys, monkeypatch):
    from daemon.cli import people

    note = "Airtable: Interactions.ConversationId is missing from the base: no interaction could be found"
    monkeypatch.setattr(
        people,
        "_forget_offline",
        lambda config, phone, reference, dry_run=False: {
            "stores": {"journal": {"events": 1}},
            "complete": True,
            "error": None,
            "notes": [note],
            "audit": {"at": "2026-12-03T00:00:00Z"},
        },
    )
    assert main(["forget", "--phone", PHONE, "--config", str(write_config(tmp_path))]) == 0
    assert note in capsys.readouterr().err
