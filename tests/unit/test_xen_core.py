"""The xen runner's pure core: xl config text, names, xl output parsing, end mapping, ownership.

The xl output samples follow xl 4.17's formats (tools/xl/xl_info.c: the ``%-40s %5d %5lu %5d
%c%c%c%c%c%c %8.1f`` row, ``-v`` adding the uuid and the hex reason code) and were checked
against the real xl in the Xen test bed.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.errors import ConfigError, DomainCollisionError, VmError
from edgeagent.vmm.xen import (
    DomainRecord,
    DomainRow,
    XenSpec,
    decide_cleanup,
    decide_start,
    describe_domain_end,
    domain_name,
    domain_result,
    foreign_domains,
    guest_exit_status,
    parse_domid,
    parse_list,
    parse_list_long,
    parse_records,
    plan_console_read,
    quote,
    render_config,
    render_records,
)

UUID = "3f2a9c1e-8d4b-4a6e-9f00-112233445566"
OTHER_UUID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
KEY = ("ticker", "2", "ab" * 32)


def spec(**kw: object) -> XenSpec:
    args: dict[str, object] = {
        "name": "edge-ticker-1234abcd",
        "kernel": "/var/lib/edgeagent/store/blobs/sha256/ab",
        "mem_mb": 32,
    }
    args.update(kw)
    return XenSpec(**args)  # type: ignore[arg-type]


# Config text -------------------------------------------------------------------------------


def test_config_has_pvh_kernel_memory_tsc_and_preserve_actions() -> None:
    text = render_config(spec(args=("interval_ms=100", "count=3")), UUID)
    lines = text.splitlines()
    assert 'name = "edge-ticker-1234abcd"' in lines
    assert f'uuid = "{UUID}"' in lines
    assert 'type = "pvh"' in lines
    assert 'kernel = "/var/lib/edgeagent/store/blobs/sha256/ab"' in lines
    assert "memory = 32" in lines
    assert "vcpus = 1" in lines
    assert 'tsc_mode = "native"' in lines
    for action in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog"):
        assert f'{action} = "preserve"' in lines
    assert 'cmdline = "interval_ms=100 count=3"' in lines


def test_config_without_args_has_no_cmdline() -> None:
    assert "cmdline" not in render_config(spec(), UUID)


def test_config_quotes_and_escapes_every_string() -> None:
    text = render_config(spec(args=('a"b', "c\\d", "e'f")), UUID)
    assert 'cmdline = "a\\"b c\\\\d e\'f"' in text.splitlines()
    assert quote('x"; disk=["/dev/sda"] #') == '"x\\"; disk=[\\"/dev/sda\\"] #"'


@pytest.mark.parametrize("bad", ["a\nb", "a\x00b", "tab\there", "caf\u00e9", "\x7f"])
def test_argument_injecting_a_new_config_line_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"args.*printable ASCII"):
        spec(args=(bad,))


def test_kernel_path_with_a_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="kernel"):
        spec(kernel="/store/x\nkernel=/etc/shadow")


def test_relative_kernel_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="absolute path"):
        spec(kernel="blobs/ab")


@pytest.mark.parametrize(
    ("field", "value"),
    [("mem_mb", 0), ("mem_mb", 5000), ("vcpus", 0), ("vcpus", 65), ("tsc_mode", "fast")],
)
def test_out_of_range_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        spec(**{field: value})


def test_tsc_mode_is_configurable() -> None:
    assert 'tsc_mode = "default"' in render_config(spec(tsc_mode="default"), UUID)


def test_malformed_uuid_is_refused() -> None:
    with pytest.raises(ConfigError, match="uuid"):
        render_config(spec(), 'x"\nname="other')


@given(st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)), max_size=5))
def test_any_printable_argument_stays_inside_its_quoted_value(args: list[str]) -> None:
    text = render_config(spec(args=tuple(args)), UUID)
    cmdline = [line for line in text.splitlines() if line.startswith("cmdline")]
    assert len(cmdline) == (1 if args else 0)
    if args:
        # Unescape as libxlu does and get the original back.
        body = cmdline[0][len('cmdline = "') : -1]
        out, i = [], 0
        while i < len(body):
            if body[i] == "\\":
                out.append(body[i + 1])
                i += 2
            else:
                assert body[i] != '"', "an unescaped quote would end the string"
                out.append(body[i])
                i += 1
        assert "".join(out) == " ".join(args)


# Names -------------------------------------------------------------------------------------


def test_domain_name_is_prefix_workload_and_a_digest_of_the_version() -> None:
    a = domain_name("edge-", "ticker", KEY)
    b = domain_name("edge-", "ticker", ("ticker", "3", "cd" * 32))
    assert a.startswith("edge-ticker-")
    assert len(a) == len("edge-ticker-") + 8
    assert a != b, "two versions overlapping during an OTA update need different names"
    assert a == domain_name("edge-", "ticker", KEY), "stable across agent restarts"


@pytest.mark.parametrize("bad", ["Ticker", "tick_er", "tick.er", "-ticker", "ticker-", "a b", ""])
def test_workload_names_that_are_not_domain_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="a-z, 0-9"):
        domain_name("edge-", bad, KEY)


def test_too_long_domain_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="63"):
        domain_name("edge-", "x" * 60, KEY)


@pytest.mark.parametrize("bad", ["Edge-", "edge_", "", "-edge"])
def test_bad_prefix_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="domain_prefix"):
        domain_name(bad, "ticker", KEY)


@pytest.mark.parametrize("bad", ["Domain-0", "edge_x", "-x", "x-", "a" * 64])
def test_spec_refuses_names_xl_or_we_could_misread(bad: str) -> None:
    with pytest.raises(ConfigError, match="domain name"):
        spec(name=bad)


# xl list -----------------------------------------------------------------------------------

LIST = """\
Name                                        ID   Mem VCPUs\tState\tTime(s)
Domain-0                                     0  1024     1     r-----      12.3
edge-ticker-1234abcd                         3    32     1     -b----       0.4
edge-hello-00000000                          4    32     1     ---s--       0.1
"""

HEADER_V = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    "   UUID                            Reason-Code\tSecurity Label"
)


def row_v(name: str, domid: int, mem: int, state: str, uuid: str, reason: str = "-") -> str:
    """One ``xl list -v`` row, formatted as xl_info.c prints it."""
    head = f"{name:<40} {domid:5d} {mem:5d} {1:5d}     {state}  {0.1:8.1f}"
    return f"{head} {uuid} {reason:>8} {'-':>16}"


LIST_V = "\n".join(
    [
        HEADER_V,
        row_v("Domain-0", 0, 1024, "r-----", "00000000-0000-0000-0000-000000000000"),
        row_v("edge-ticker-1234abcd", 3, 32, "-b----", UUID),
        row_v("edge-hello-00000000", 4, 32, "---s--", OTHER_UUID, "0"),
        row_v("edge-crash-00000000", 5, 32, "---sc-", OTHER_UUID[:-1] + "0", "3"),
        row_v("my domain with spaces", 6, 128, "--p---", OTHER_UUID[:-1] + "1"),
        row_v("(null)", 7, 0, "-----d", OTHER_UUID[:-1] + "2"),
    ]
)


def test_parses_xl_list() -> None:
    rows = parse_list(LIST)
    assert [(r.name, r.domid, r.state) for r in rows] == [
        ("Domain-0", 0, "r-----"),
        ("edge-ticker-1234abcd", 3, "-b----"),
        ("edge-hello-00000000", 4, "---s--"),
    ]
    assert rows[1].running
    assert not rows[1].shut_down
    assert rows[2].shut_down
    assert rows[2].shutdown_reason == 0
    assert rows[2].uuid is None


def test_parses_xl_list_verbose_with_uuid_reason_and_odd_names() -> None:
    rows = {r.name: r for r in parse_list(LIST_V)}
    assert rows["edge-ticker-1234abcd"].uuid == UUID
    assert rows["edge-ticker-1234abcd"].shutdown_reason is None
    assert rows["edge-hello-00000000"].shutdown_reason == 0
    crash = rows["edge-crash-00000000"]
    assert crash.shut_down
    assert crash.shutdown_reason == 3
    assert rows["my domain with spaces"].domid == 6
    assert rows["(null)"].dying
    assert not rows["(null)"].running


def test_crash_letter_alone_gives_the_reason_without_verbose() -> None:
    row = DomainRow(name="x", domid=1, state="---sc-")
    assert row.shutdown_reason == 3


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "libxl: error: cannot init xl context\n",
        "Name ID\nfoo\n",
        LIST + "edge-x  notanumber 32 1 -b---- 0.1\n",
        LIST_V.replace(UUID, "not-a-uuid"),
    ],
)
def test_garbage_xl_list_output_is_an_error_not_a_guess(garbage: str) -> None:
    with pytest.raises(VmError, match="xl list"):
        parse_list(garbage)


@given(st.text(max_size=300))
def test_parse_list_never_fails_other_than_vmerror(text: str) -> None:
    try:
        rows = parse_list(text)
    except VmError:
        return
    for r in rows:
        assert len(r.state) == 6


LIST_L = [
    {
        "domid": 3,
        "config": {
            "c_info": {"type": "pvh", "name": "edge-ticker-1234abcd", "uuid": UUID.upper()},
            "b_info": {"max_vcpus": 1, "kernel": "/store/ab", "type.pvh": {}},
            "on_poweroff": "preserve",
        },
    }
]


def test_parses_xl_list_long_json() -> None:
    (d,) = parse_list_long(json.dumps(LIST_L, indent=4))
    assert (d.domid, d.name, d.uuid, d.kernel, d.type) == (
        3,
        "edge-ticker-1234abcd",
        UUID,
        "/store/ab",
        "pvh",
    )


@pytest.mark.parametrize(
    "garbage",
    ["", "not json", "[1, 2]", '[{"domid": 1}]', '[{"config": {"c_info": {"name": 5}}}]', "3"],
)
def test_garbage_xl_list_long_is_an_error(garbage: str) -> None:
    with pytest.raises(VmError, match="xl list -l"):
        parse_list_long(garbage)


def test_parses_xl_domid() -> None:
    assert parse_domid("7\n") == 7


@pytest.mark.parametrize("garbage", ["", "seven", "-1", "12345678", "1 2"])
def test_garbage_xl_domid_is_an_error(garbage: str) -> None:
    with pytest.raises(VmError, match="xl domid"):
        parse_domid(garbage)


# End of a domain ---------------------------------------------------------------------------


def test_guest_exit_line_is_read_last_one_wins() -> None:
    lines = [
        "HEARTBEAT seq=1 uptime_ms=5",
        "EXIT status=3 reason=crash",
        "EXIT status=0 reason=poweroff",
    ]
    assert guest_exit_status(lines) == 0
    assert guest_exit_status(["EXIT status=300 reason=crash"]) == 255
    assert guest_exit_status(["EXIT status=-1 reason=crash"]) == 255
    assert guest_exit_status(["exit status 3", "EXIT status=3"]) is None


def test_poweroff_is_status_zero() -> None:
    info = describe_domain_end(end="shutdown", reason=0, printed_status=0)
    assert (info.guest_status, info.reason, info.exit_status) == (0, "halt", 0)
    silent = describe_domain_end(end="shutdown", reason=0, printed_status=None)
    assert (silent.guest_status, silent.reason, silent.exit_status) == (0, "shutdown", 0)


def test_crash_with_a_printed_status_is_that_status_and_not_ok() -> None:
    info = describe_domain_end(end="shutdown", reason=3, printed_status=7)
    assert (info.guest_status, info.reason, info.exit_status) == (7, "halt", 7)
    result = domain_result(info, reason=3, first_output_s=None, console_tail="", stderr_tail="")
    assert not result.ok
    assert result.runner == "xen"
    assert result.process_status == 3


def test_crash_without_a_status_is_an_abort() -> None:
    info = describe_domain_end(end="shutdown", reason=3, printed_status=None)
    assert (info.guest_status, info.reason, info.exit_status) == (255, "abort", 255)


def test_reboot_and_watchdog_are_failures() -> None:
    assert describe_domain_end(end="shutdown", reason=1, printed_status=None).guest_status is None
    assert describe_domain_end(end="shutdown", reason=4, printed_status=None).reason == "abort"


def test_stopped_and_vanished_domains_report_no_guest_status() -> None:
    stopped = describe_domain_end(
        end="stopped", reason=None, printed_status=0, stop_step="xl destroy"
    )
    assert (stopped.guest_status, stopped.reason, stopped.exit_status) == (None, "signal", 244)
    assert "xl destroy" in stopped.message
    gone = describe_domain_end(end="vanished", reason=None, printed_status=None)
    assert (gone.guest_status, gone.reason) == (None, "signal")
    ok = domain_result(gone, reason=None, first_output_s=1.0, console_tail="", stderr_tail="")
    assert not ok.ok
    assert ok.process_status == -1


# Ownership ---------------------------------------------------------------------------------

NAME = "edge-ticker-1234abcd"


def row(state: str = "-b----", uuid: str = UUID, name: str = NAME, domid: int = 3) -> DomainRow:
    return DomainRow(name=name, domid=domid, state=state, uuid=uuid)


def record(key: tuple[str, str, str] = KEY, uuid: str = UUID, name: str = NAME) -> DomainRecord:
    return DomainRecord(name=name, uuid=uuid, key=key, config=f"/state/xen/{name}.cfg")


def test_no_domain_of_that_name_is_created() -> None:
    assert decide_start(NAME, KEY, None, None, allow_adopt=True) == "create"
    assert decide_start(NAME, KEY, None, record(), allow_adopt=True) == "create"


def test_our_running_domain_of_the_same_version_is_adopted() -> None:
    assert decide_start(NAME, KEY, row(), record(), allow_adopt=True) == "adopt"


@pytest.mark.parametrize(
    ("live", "rec", "adopt"),
    [
        (row(state="---s--"), record(), True),  # shut down
        (row(state="-----d"), record(), True),  # dying
        (row(), record(key=("ticker", "1", "cd" * 32)), True),  # another version
        (row(), record(), False),  # adoption off (edgeagent boot)
    ],
)
def test_our_domain_that_cannot_be_adopted_is_replaced(
    live: DomainRow, rec: DomainRecord, adopt: bool
) -> None:
    assert decide_start(NAME, KEY, live, rec, allow_adopt=adopt) == "replace"


@pytest.mark.parametrize(
    "rec",
    [None, record(uuid=OTHER_UUID)],
    ids=["no-record", "record-with-another-uuid"],
)
def test_domain_name_collision_with_a_domain_we_did_not_create_is_refused_never_destroyed(
    rec: DomainRecord | None,
) -> None:
    # Someone created a domain with the exact name our next version needs (or reused the
    # name of one of ours after it died): refuse to start; "replace" would destroy it.
    with pytest.raises(DomainCollisionError, match="not created by edgeagent"):
        decide_start(NAME, KEY, row(), rec, allow_adopt=True)
    with pytest.raises(DomainCollisionError):
        decide_start(NAME, KEY, row(state="---s--"), rec, allow_adopt=False)


def test_collision_with_a_domain_that_lists_no_uuid_is_refused() -> None:
    with pytest.raises(DomainCollisionError):
        decide_start(NAME, KEY, DomainRow(NAME, 3, "-b----"), record(), allow_adopt=True)


def test_cleanup_keeps_desired_destroys_the_rest_forgets_the_gone() -> None:
    old_key = ("ticker", "1", "cd" * 32)
    records = {
        NAME: record(),
        "edge-ticker-00000001": record(key=old_key, name="edge-ticker-00000001", uuid=OTHER_UUID),
        "edge-hello-00000002": record(
            key=("hello", "1", "ef" * 32),
            name="edge-hello-00000002",
            uuid="aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeee9",
        ),
        "edge-gone-00000003": record(name="edge-gone-00000003"),
    }
    rows = [
        row(),
        row(name="edge-ticker-00000001", uuid=OTHER_UUID, domid=4),
        row(
            name="edge-hello-00000002", uuid="aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeee9", state="---s--"
        ),
    ]
    keep = [KEY, ("hello", "1", "ef" * 32)]
    actions = {rec.name: action for rec, action in decide_cleanup(records, rows, keep)}
    assert actions == {
        NAME: "keep",
        "edge-ticker-00000001": "destroy",  # old version left by an interrupted update
        "edge-hello-00000002": "destroy",  # ours, but it already shut down
        "edge-gone-00000003": "forget",
    }


def test_cleanup_never_touches_a_domain_we_did_not_create_even_with_our_prefix() -> None:
    intruder = row(name="edge-ticker-1234abcd", uuid=OTHER_UUID)
    stranger = row(name="edge-evil-00000000", uuid=OTHER_UUID, domid=9)
    records = {NAME: record()}
    actions = decide_cleanup(records, [intruder, stranger], keep=[])
    # Our record's domain is gone (the live one has another uuid): only the record is dropped.
    assert [(r.name, a) for r, a in actions] == [(NAME, "forget")]
    assert [r.name for r in foreign_domains([intruder, stranger], records, "edge-")] == [
        NAME,
        "edge-evil-00000000",
    ]


def test_records_round_trip_and_reject_garbage() -> None:
    records = {NAME: record()}
    assert parse_records(render_records(records), "domains.json") == records
    for bad in (b"", b"[]", b'{"schema": 2, "domains": []}', b'{"schema": 1, "domains": [{}]}'):
        with pytest.raises(ConfigError, match=r"domains\.json"):
            parse_records(bad, "domains.json")
    evil = {"schema": 1, "domains": [{**record().to_json(), "name": "Domain-0"}]}
    with pytest.raises(ConfigError, match="name"):
        parse_records(json.dumps(evil).encode(), "domains.json")


# Console log -------------------------------------------------------------------------------


def test_console_read_plan_follows_appends() -> None:
    plan = plan_console_read(100, 150)
    assert (plan.start, plan.length, plan.skipped, plan.restarted) == (100, 50, 0, False)
    assert plan_console_read(150, 150).length == 0


def test_truncated_or_replaced_log_is_read_from_the_start() -> None:
    assert plan_console_read(500, 20).start == 0
    assert plan_console_read(500, 20).restarted
    replaced = plan_console_read(10, 600, same_file=False)
    assert (replaced.start, replaced.length, replaced.restarted) == (0, 600, True)


def test_flooding_guest_console_is_bounded_oldest_bytes_skipped() -> None:
    plan = plan_console_read(0, 10 * 1024 * 1024, max_backlog=4096)
    assert plan.length == 4096
    assert plan.start == 10 * 1024 * 1024 - 4096
    assert plan.skipped == 10 * 1024 * 1024 - 4096


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.booleans())
def test_console_plan_never_reads_outside_the_file_or_more_than_the_backlog(
    offset: int, size: int, same: bool
) -> None:
    plan = plan_console_read(offset, size, same_file=same, max_backlog=65536)
    assert 0 <= plan.start <= size
    assert plan.start + plan.length == size
    assert plan.length <= 65536
