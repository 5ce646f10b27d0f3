"""What the guest-info conformance scenarios compare of the decoded reports."""

from __future__ import annotations

from twisted_vmtools.vmx.conformance import _reports


def test_reports_keep_what_a_client_sees_and_drop_free_space() -> None:
    status: dict[str, object] = {
        "guest.ipStack": [{
            "dnsConfig": {"hostName": "vm", "domainName": "", "ipAddress": ["192.0.2.53"],
                          "searchDomain": ["a.example"]},
            "ipRouteConfig": {"ipRoute": [
                {"network": "ff00::", "prefixLength": 8, "gateway": {"ipAddress": None, "device": "0"}},
                {"network": "0.0.0.0", "prefixLength": 0, "gateway": {"ipAddress": "192.0.2.1", "device": "0"}},
            ]},
        }],
        "guest.disk": [{"diskPath": "/", "capacity": 10, "freeSpace": 3, "filesystemType": "ext4", "mappings": []}],
        "guest.guestId": "debian12_64Guest", "guest.guestFamily": "linuxGuest",
        "guest.guestFullName": "Linux", "guest.osName": "debian12-64",
    }
    seen = {name: observation.reply for name, observation in _reports(status).items()}
    assert seen["guest-routes"] == "0.0.0.0/0 via 192.0.2.1 dev 0; ff00::/8 via - dev 0"
    assert seen["guest-dns"] == "host vm domain  servers 192.0.2.53 search a.example"
    assert seen["guest-disks"] == "/ ext4 10"
    assert "guestId=debian12_64Guest" in seen["guest-os"]


def test_missing_reports_are_named() -> None:
    seen = {name: observation.reply for name, observation in _reports({}).items()}
    assert seen["guest-routes"] == "no route report" and seen["guest-disks"] == "no disk report"
