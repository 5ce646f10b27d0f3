"""tools.conf: reading it, its typed settings, and `twistd vmtools --config`."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from twisted_vmtools.tap import Options, guest_info_interval, guest_info_source, primary_ip_option
from twisted_vmtools.toolsconf import ToolsConf, ToolsConfError, load_tools_conf

REAL_LOOKING = """\
# a vmtoolsd tools.conf, with settings we do not read
[logging]
log = false

[guestinfo]
poll-interval = 5
exclude-nics = docker*, veth* ,,lo
disable-query-diskinfo = TRUE

[powerops]
poweroff-script = /opt/site/off.sh
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tools.conf"
    path.write_text(text)
    return str(path)


def test_typed_settings(tmp_path: Path) -> None:
    conf = load_tools_conf(write(tmp_path, REAL_LOOKING))
    assert conf.get_float("guestinfo", "poll-interval") == 5.0
    assert conf.get_list("guestinfo", "exclude-nics") == ["docker*", "veth*", "lo"]
    assert conf.get_bool("guestinfo", "disable-query-diskinfo") is True
    assert conf.get("powerops", "poweroff-script") == "/opt/site/off.sh"
    assert conf.get("powerops", "poweron-script") is None
    assert conf.get_float("nosuch", "key") is None and conf.get_bool("nosuch", "key") is None


def test_malformed_values_name_the_file_group_and_key(tmp_path: Path) -> None:
    conf = load_tools_conf(write(tmp_path, "[guestinfo]\npoll-interval = soon\nflag = maybe\nneg = -1\n"))
    with pytest.raises(ToolsConfError, match=r"tools.conf: \[guestinfo\] poll-interval: expected a number"):
        conf.get_float("guestinfo", "poll-interval")
    with pytest.raises(ToolsConfError, match="expected true or false"):
        conf.get_bool("guestinfo", "flag")
    with pytest.raises(ToolsConfError, match="at least 0"):
        conf.get_float("guestinfo", "neg")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ToolsConfError, match="cannot read"):
        load_tools_conf(str(tmp_path / "missing.conf"))
    with pytest.raises(ToolsConfError, match="not a tools.conf key file"):
        load_tools_conf(write(tmp_path, "poll-interval = 5\n"))  # a key outside any group


def test_guestinfo_interval_from_option_then_file_then_default(tmp_path: Path) -> None:
    path = write(tmp_path, "[guestinfo]\npoll-interval = 7\n")
    options = Options()
    options.parseOptions(["--config", path, "--transport", "unix:/nowhere"])
    assert guest_info_interval(options["guestinfo-interval"], options["tools-conf"]) == 7.0
    options = Options()
    options.parseOptions(["--config", path, "--guestinfo-interval", "3", "--transport", "unix:/nowhere"])
    assert guest_info_interval(options["guestinfo-interval"], options["tools-conf"]) == 3.0
    assert guest_info_interval(None, ToolsConf()) == 30.0
    assert guest_info_interval(None, load_tools_conf(write(tmp_path, "[guestinfo]\npoll-interval = 0\n"))) is None


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="cannot read"):
        Options().parseOptions(["--config", str(tmp_path / "missing.conf")])
    with pytest.raises(usage.UsageError, match="poll-interval"):
        Options().parseOptions(["--config", write(tmp_path, "[guestinfo]\npoll-interval = x\n")])


def test_exclude_nics_reaches_the_nic_report_and_primary_ip(tmp_path: Path) -> None:
    conf = load_tools_conf(write(tmp_path, "[guestinfo]\nexclude-nics = eth*\n"))
    source = guest_info_source(conf)
    assert not source.nic_filter("eth0") and source.nic_filter("docker0")  # the file replaces the default list
    default = guest_info_source(ToolsConf())
    assert not default.nic_filter("docker0") and default.nic_filter("eth0")
    assert primary_ip_option("192.0.2.77", source) == "192.0.2.77"
    assert callable(primary_ip_option(None, source))
