"""The Airtable emulator, driven over real HTTP by the real pyairtable."""

import json
import subprocess
import sys
import urllib.request

import pytest
import requests
from pyairtable import Api
from pyairtable.formulas import AND, GTE, OR, Field, match

from daemon.testing.airtable import EmulatorThread
from tests.support import free_port

TOKEN = "patEMULATOR0000001.0123456789abcdef"
BASE = "appEMULATOR000001"

FIELDS = [
    {"name": "Name", "type": "singleLineText"},
    {"name": "Notes", "type": "multilineText"},
    {"name": "Count", "type": "number", "options": {"precision": 0}},
    {
        "name": "At",
        "type": "dateTime",
        "options": {"timeZone": "utc", "dateFormat": {"name": "iso"}, "timeFormat": {"name": "24hour"}},
    },
    {"name": "Status", "type": "singleSelect", "options": {"choices": [{"name": "active"}, {"name": "closed"}]}},
    {"name": "Done", "type": "checkbox", "options": {"color": "greenBright", "icon": "check"}},
]


def error_type(exc: requests.HTTPError) -> str:
    body = exc.response.json()["error"]
    return body if isinstance(body, str) else body["type"]


@pytest.fixture
def emulator():
    running = EmulatorThread.serving(TOKEN, BASE, rate=1000, lockout=30)
    yield running
    running.stop()


@pytest.fixture
def api(emulator):
    return Api(TOKEN, endpoint_url=emulator.url, retry_strategy=None, timeout=(5, 10))


@pytest.fixture
def table(api):
    api.base(BASE).create_table("Things", FIELDS)
    return api.table(BASE, "Things")


def control(emulator, route, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(emulator.url + route, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_metadata_create_and_read_with_strict_pyairtable_parsing(api, table):
    schema = table.schema()
    assert [f.name for f in schema.fields] == [f["name"] for f in FIELDS]
    assert schema.primary_field_id == schema.fields[0].id and schema.id.startswith("tbl")
    status = schema.field("Status")
    assert [c.name for c in status.options.choices] == ["active", "closed"]
    assert all(c.id.startswith("sel") for c in status.options.choices)
    created = table.create_field("Extra", "number", options={"precision": 2})
    assert created.id.startswith("fld") and created.name == "Extra"
    with pytest.raises(requests.HTTPError) as exc:
        table.create_field("extra", "singleLineText")  # names are unique, case-insensitively
    assert exc.value.response.status_code == 422
    with pytest.raises(requests.HTTPError) as exc:
        table.create_field("NoPrecision", "number")
    assert error_type(exc.value) == "INVALID_FIELD_TYPE_OPTIONS_FOR_CREATE"
    with pytest.raises(requests.HTTPError) as exc:
        table.create_field("F", "formula", options={"formula": "1"})
    assert error_type(exc.value) == "UNSUPPORTED_FIELD_TYPE_FOR_CREATE"


def test_records_create_read_update_delete_and_empty_values_omitted(table):
    record = table.create({"Name": "a", "Count": 3, "At": "2026-11-25T12:00:00Z", "Done": False, "Notes": ""})
    assert record["fields"] == {"Name": "a", "Count": 3, "At": "2026-11-25T12:00:00.000Z"}
    assert table.get(record["id"])["fields"]["Name"] == "a"
    updated = table.update(record["id"], {"Count": None, "Status": "closed"})
    assert updated["fields"] == {"Name": "a", "At": "2026-11-25T12:00:00.000Z", "Status": "closed"}
    replaced = table.update(record["id"], {"Name": "b"}, replace=True)
    assert replaced["fields"] == {"Name": "b"}
    many = table.batch_create([{"Name": f"n{i}"} for i in range(25)])  # three requests of 10, 10, 5
    assert len(many) == 25 and len({r["id"] for r in many}) == 25
    table.batch_delete([r["id"] for r in many[:12]])
    table.delete(record["id"])
    assert len(table.all()) == 13
    with pytest.raises(requests.HTTPError) as exc:
        table.get(record["id"])
    assert exc.value.response.status_code == 404


def test_write_errors_are_airtables_and_a_batch_is_all_or_nothing(api, table):
    with pytest.raises(requests.HTTPError) as exc:
        table.batch_create([{"Name": "ok"}, {"Nope": 1}])
    assert error_type(exc.value) == "UNKNOWN_FIELD_NAME" and 'Unknown field name: "Nope"' in str(exc.value)
    assert table.all() == []  # the good record of that batch was not created either
    with pytest.raises(requests.HTTPError) as exc:
        table.create({"Count": "three"})
    assert error_type(exc.value) == "INVALID_VALUE_FOR_COLUMN"
    assert table.create({"Count": "3"}, typecast=True)["fields"]["Count"] == 3
    with pytest.raises(requests.HTTPError) as exc:
        table.create({"Status": "escalated"})
    assert error_type(exc.value) == "INVALID_MULTIPLE_CHOICE_OPTIONS"
    assert table.create({"Status": "escalated"}, typecast=True)["fields"]["Status"] == "escalated"
    assert "escalated" in [c.name for c in table.schema(force=True).field("Status").options.choices]
    eleven = {"records": [{"fields": {"Name": str(i)}} for i in range(11)]}
    with pytest.raises(requests.HTTPError) as exc:
        api.request("POST", table.urls.records, json=eleven)
    assert error_type(exc.value) == "INVALID_RECORDS"
    with pytest.raises(requests.HTTPError) as exc:
        api.table(BASE, "Missing").all()
    assert exc.value.response.status_code == 403
    assert error_type(exc.value) == "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND"


def test_upsert_creates_once_then_updates(table):
    first = table.batch_upsert([{"fields": {"Name": f"k{i}", "Count": i}} for i in range(12)], key_fields=["Name"])
    assert len(first["createdRecords"]) == 12 and first["updatedRecords"] == []
    again = table.batch_upsert([{"fields": {"Name": f"k{i}", "Count": i * 10}} for i in range(12)], key_fields=["Name"])
    assert again["createdRecords"] == [] and sorted(again["updatedRecords"]) == sorted(first["createdRecords"])
    rows = table.all()
    assert len(rows) == 12 and sorted(r["fields"]["Count"] for r in rows) == [i * 10 for i in range(12)]
    with pytest.raises(requests.HTTPError) as exc:
        table.batch_upsert([{"fields": {"Nope": "x"}}], key_fields=["Nope"])
    assert error_type(exc.value) == "UNKNOWN_FIELD_NAME"
    table.create({"Name": "twin"})
    table.create({"Name": "twin"})
    with pytest.raises(requests.HTTPError) as exc:  # several matches: the request fails, nothing changes
        table.batch_upsert([{"fields": {"Name": "twin", "Count": 1}}], key_fields=["Name"])
    assert exc.value.response.status_code == 422
    assert all("Count" not in r["fields"] for r in table.all(formula=match({"Name": "twin"})))


def test_a_records_cap_refuses_creates_alone_and_can_be_raised(emulator, api, table):
    other = api.base(BASE).create_table("Other", [{"name": "Name", "type": "singleLineText"}])
    table.batch_upsert([{"fields": {"Name": f"k{i}"}} for i in range(3)], key_fields=["Name"])
    api.table(BASE, other.id).create({"Name": "o"})
    assert control(emulator, "/_emulator/plan", {"base": BASE, "max_records": 5})["records"] == 4
    with pytest.raises(requests.HTTPError) as exc:  # 2 new records would make 6: the whole request fails
        table.batch_upsert([{"fields": {"Name": k}} for k in ("k0", "new1", "new2")], key_fields=["Name"])
    assert (exc.value.response.status_code, error_type(exc.value)) == (422, "BASE_RECORD_LIMIT_EXCEEDED")
    assert "maximum of 5 records" in exc.value.response.json()["error"]["message"]
    assert table.create({"Name": "new1"})["fields"] == {"Name": "new1"}  # one fits
    with pytest.raises(requests.HTTPError):
        table.create({"Name": "new2"})
    assert control(emulator, "/_emulator/stats")[BASE]["records"] == 5
    updated = table.batch_upsert([{"fields": {"Name": f"k{i}", "Count": i}} for i in range(3)], key_fields=["Name"])
    assert updated["createdRecords"] == [] and len(updated["updatedRecords"]) == 3  # updates add nothing
    control(emulator, "/_emulator/plan", {"base": BASE, "error": {"status": 403, "type": "PLAN_LIMIT"}})
    with pytest.raises(requests.HTTPError) as exc:
        table.create({"Name": "new2"})
    assert (exc.value.response.status_code, error_type(exc.value)) == (403, "PLAN_LIMIT")
    control(emulator, "/_emulator/plan", {"base": BASE, "max_records": None})
    assert table.create({"Name": "new2"})["fields"] == {"Name": "new2"}


def test_a_key_row_typed_twice_by_hand_fails_the_upsert(emulator, table):
    for _ in range(2):  # the API would upsert the second onto the first: the control route does not
        typed = control(
            emulator, "/_emulator/records", {"base": BASE, "table": "Things", "fields": {"Name": "twin", "Count": "7"}}
        )
        assert typed["fields"] == {"Name": "twin", "Count": 7}
    assert len(table.all(formula=match({"Name": "twin"}))) == 2
    with pytest.raises(requests.HTTPError) as exc:
        table.batch_upsert([{"fields": {"Name": "twin", "Notes": "x"}}], key_fields=["Name"])
    assert exc.value.response.status_code == 422
    assert all("Notes" not in r["fields"] for r in table.all())


def test_pagination_and_the_formulas_pyairtable_builds(table):
    table.batch_create(
        [
            {"Name": f"n{i:03d}", "Count": i, "At": f"2026-11-{1 + i % 28:02d}T10:00:00Z", "Done": i % 2 == 0}
            for i in range(250)
        ]
    )
    assert len(table.all()) == 250
    pages = list(table.iterate(page_size=7))
    assert len(pages) == 36 and sum(len(p) for p in pages) == 250
    assert [r["fields"]["Name"] for r in table.all(sort=["-Count"], max_records=3)] == ["n249", "n248", "n247"]
    assert len(table.all(formula=match({"Name": "n007"}))) == 1
    table.create({"Name": "it's {odd}"})
    assert table.first(formula=match({"Name": "it's {odd}"}))["fields"]["Name"] == "it's {odd}"
    assert len(table.all(formula=AND(GTE(Field("Count"), 240), Field("Done")))) == 5
    assert len(table.all(formula=OR(match({"Name": "n001"}), match({"Name": "n002"})))) == 2
    early = table.all(formula="IS_BEFORE({At}, DATETIME_PARSE('2026-11-02T00:00:00.000Z'))")
    assert {r["fields"]["At"] for r in early} == {"2026-11-01T10:00:00.000Z"}
    with pytest.raises(requests.HTTPError) as exc:
        table.all(formula="{FirstName}='x'")
    assert error_type(exc.value) == "INVALID_FILTER_BY_FORMULA" and "firstname" in str(exc.value)
    with pytest.raises(requests.HTTPError) as exc:
        table.all(formula="AND(")
    assert error_type(exc.value) == "INVALID_FILTER_BY_FORMULA"
    long = " OR ".join([f"{{Name}}='{'x' * 50}{i}'" for i in range(400)])
    assert table.all(formula=f"OR({long.replace(' OR ', ', ')})") == []  # > 16k URL: pyairtable POSTs listRecords


def test_auth_and_unknown_routes(emulator, table):
    bad = Api("patWRONG", endpoint_url=emulator.url, retry_strategy=None, timeout=(5, 10))
    with pytest.raises(requests.HTTPError) as exc:
        bad.table(BASE, "Things").all()
    assert exc.value.response.status_code == 401 and error_type(exc.value) == "AUTHENTICATION_REQUIRED"
    answer = requests.get(emulator.url + "/v0/nothing/here/at/all", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404 and answer.json() == {"error": "NOT_FOUND"}


def test_rate_limit_locks_the_base_out(api):
    running = EmulatorThread.serving(TOKEN, BASE, rate=5, lockout=30)
    try:
        fast = Api(TOKEN, endpoint_url=running.url, retry_strategy=None, timeout=(5, 10))
        answers = []
        for _ in range(7):
            try:
                fast.base(BASE).schema(force=True)
                answers.append(200)
            except requests.HTTPError as exc:
                answers.append((exc.response.status_code, error_type(exc)))
        assert answers[:5] == [200] * 5
        assert answers[5:] == [(429, "RATE_LIMIT_REACHED")] * 2  # the 7th is inside the lockout
        stats = control(running, "/_emulator/stats")[BASE]
        assert stats["rate_limited"] == 2 and stats["locked_for_s"] > 25
        control(running, "/_emulator/faults", {"unlock": True})
        fast.base(BASE).schema(force=True)
    finally:
        running.stop()


def test_quota_and_fault_injection(emulator, api, table):
    control(emulator, "/_emulator/faults", {"billing_exceeded": True})
    with pytest.raises(requests.HTTPError) as exc:
        table.all()
    assert (exc.value.response.status_code, error_type(exc.value)) == (429, "PUBLIC_API_BILLING_LIMIT_EXCEEDED")
    assert table.schema(force=True).name == "Things"  # metadata still answers
    control(emulator, "/_emulator/faults", {"clear": True, "status": 503, "count": 2})
    for _ in range(2):
        with pytest.raises(requests.HTTPError) as exc:
            table.all()
        assert (exc.value.response.status_code, error_type(exc.value)) == (503, "RETRIABLE_ERROR")
    assert table.all() == []
    control(emulator, "/_emulator/faults", {"down_seconds": 30})
    with pytest.raises(requests.ConnectionError):
        table.all()
    control(emulator, "/_emulator/faults", {"clear": True, "down_seconds": 0})
    control(emulator, "/_emulator/faults", {"latency": 2})
    slow = Api(TOKEN, endpoint_url=emulator.url, retry_strategy=None, timeout=(5, 0.5))
    with pytest.raises(requests.Timeout):
        slow.table(BASE, "Things").all()
    control(emulator, "/_emulator/faults", {"clear": True})


def test_a_renamed_field_is_unknown_under_its_old_name(api, table):
    field_id = table.schema().field("Name").id
    answer = api.request(
        "PATCH",
        api.build_url(f"meta/bases/{BASE}/tables/{table.schema().id}/fields/{field_id}"),
        json={"name": "Title"},
    )
    assert answer["name"] == "Title"
    with pytest.raises(requests.HTTPError) as exc:
        table.create({"Name": "x"})
    assert error_type(exc.value) == "UNKNOWN_FIELD_NAME"
    assert table.create({"Title": "x"})["fields"] == {"Title": "x"}


def test_standalone_command_serves_pyairtable():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon.testing.airtable", "--port", str(port), "--token", TOKEN, "--base", BASE],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "Airtable emulator on" in process.stdout.readline()
        api = Api(TOKEN, endpoint_url=f"http://127.0.0.1:{port}", retry_strategy=None, timeout=(5, 10))
        api.base(BASE).create_table("T", [{"name": "Name", "type": "singleLineText"}])
        assert api.table(BASE, "T").create({"Name": "hello"})["fields"] == {"Name": "hello"}
        assert [b.id for b in api.bases()] == [BASE]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_the_documented_base_parses_strictly_and_takes_what_airtable_documents(emulator, api):
    from daemon.testing.airtable.bases import documented_base, formula_options

    def build():
        base = documented_base(emulator.emulator.bases[BASE], "mixed")
        count = base.table("Conversations").field("MessageCount")
        count.type, count.options = "formula", formula_options()

    emulator.run(build)
    schema = api.base(BASE).schema(force=True)  # pyairtable's strict models take every table and field
    interactions = schema.table("Interactions")
    assert [f.name for f in interactions.fields][:4] == ["InteractionId", "ConversationId", "MessageId", "Direction"]
    assert (interactions.field("Timestamp").type, interactions.field("CreatedAt").type) == ("dateTime", "date")
    reason = schema.table("Escalations").field("Reason")
    assert reason.type == "singleSelect" and reason.options.choices == []
    assert schema.table("Conversations").field("CustomerPhone").type == "phoneNumber"

    table = api.table(BASE, "Interactions")
    record = table.create({"InteractionId": "i1", "CreatedAt": "2026-11-25"})
    assert record["fields"]["CreatedAt"] == "2026-11-25"
    for value in ("2026-11-25T23:30:00.000Z", "25/11/2026", 20261125):  # not the documented form
        with pytest.raises(requests.HTTPError) as exc:
            table.create({"InteractionId": "i2", "CreatedAt": value})
        assert error_type(exc.value) == "INVALID_VALUE_FOR_COLUMN"
    # typecast's best effort: a timestamp gives its date in UTC
    cast = table.create({"InteractionId": "i3", "CreatedAt": "2026-11-25T23:30:00-05:00"}, typecast=True)
    assert cast["fields"]["CreatedAt"] == "2026-11-26"
    escalations = api.table(BASE, "Escalations")
    with pytest.raises(requests.HTTPError) as exc:
        escalations.create({"EscalationId": "e1", "Reason": "wants a human"})
    assert error_type(exc.value) == "INVALID_MULTIPLE_CHOICE_OPTIONS"
    assert (
        escalations.create({"EscalationId": "e1", "Reason": "wants a human"}, typecast=True)["fields"]["Reason"]
        == "wants a human"
    )
    assert [c.name for c in api.base(BASE).schema(force=True).table("Escalations").field("Reason").options.choices] == [
        "wants a human"
    ]
    with pytest.raises(requests.HTTPError) as exc:  # a computed field refuses, typecast or not
        api.table(BASE, "Conversations").create({"ConversationId": "c", "MessageCount": 3}, typecast=True)
    assert error_type(exc.value) == "INVALID_VALUE_FOR_COLUMN" and "computed" in str(exc.value)


def test_a_token_without_the_schema_scope_gets_403_on_the_metadata_api(emulator, api, table):
    emulator.run(emulator.emulator.grant, "patDATAONLY", {"data.records:read", "data.records:write"})
    data_only = Api("patDATAONLY", endpoint_url=emulator.url, retry_strategy=None, timeout=(5, 10))
    for call in (
        lambda: data_only.base(BASE).schema(force=True),
        lambda: data_only.bases(force=True),
        lambda: data_only.table(BASE, "Things").create_field("X", "singleLineText"),
    ):
        with pytest.raises(requests.HTTPError) as exc:
            call()
        assert (exc.value.response.status_code, error_type(exc.value)) == (
            403,
            "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND",
        )
    things = data_only.table(BASE, "Things")
    assert things.create({"Name": "a"})["fields"] == {"Name": "a"}
    assert [r["fields"] for r in things.all(fields=["Name"])] == [{"Name": "a"}]
    with pytest.raises(requests.HTTPError) as exc:
        things.all(fields=["Nope"])
    assert error_type(exc.value) == "UNKNOWN_FIELD_NAME"


def test_standalone_command_serves_the_documented_base_and_a_token_without_schema():
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.testing.airtable",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--base",
            BASE,
            "--documented",
            "--token-without-schema",
            "patDATAONLY",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "Airtable emulator on" in process.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        schema = Api(TOKEN, endpoint_url=url, retry_strategy=None, timeout=(5, 10)).base(BASE).schema()
        assert [t.name for t in schema.tables] == ["Conversations", "Interactions", "Escalations"]
        assert schema.table("Interactions").field("Timestamp").type == "date"
        data_only = Api("patDATAONLY", endpoint_url=url, retry_strategy=None, timeout=(5, 10))
        assert data_only.table(BASE, "Interactions").all() == []
        with pytest.raises(requests.HTTPError):
            data_only.base(BASE).schema()
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
