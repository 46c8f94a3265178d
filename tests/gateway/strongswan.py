"""strongSwan charons (Debian's packages, userspace ``kernel-libipsec`` data path) in network
namespaces, and the CHILD_SA keys read back out of charon's log.

Test support only. Each charon gets its own ``strongswan.conf`` (``STRONGSWAN_CONF``), vici socket
and log file in a directory of its own, and a private tmpfs on ``/run`` (its PID file lives there),
so two of them run side by side. This kernel has no XFRM ESP, hence ``kernel-libipsec``: charon
carries ESP itself (in UDP on port 4500, ``encap = yes``) through a TUN device of its own.

The keys come from charon's file log at ``chd`` level 4, which prints every derived CHILD_SA key
("encryption initiator key => 20 bytes @ ..." and a hex dump); the SPIs and traffic selectors from
its "CHILD_SA ... established with SPIs ..." line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .netns import Netns

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = shutil.which("swanctl") or "/usr/sbin/swanctl"
PLUGINS = ("random nonce openssl aes gcm chapoly sha1 sha2 hmac pem pkcs1 x509 pubkey "
           "curve25519 kdf kernel-libipsec kernel-netlink socket-default vici")

#: The ESP proposals of the interop tests, by the suite names of netns.SUITES.
ESP_PROPOSALS = {
    "aes-gcm-128": "aes128gcm16",
    "aes-256-cbc+hmac-sha256": "aes256-sha256",
    "chacha20-poly1305": "chacha20poly1305",
}


def skip_reason() -> str | None:
    if not os.path.exists(CHARON) or not os.path.exists(SWANCTL):
        return ("strongSwan's charon/swanctl are not installed (scripts/test.sh installs "
                "strongswan-charon, strongswan-swanctl, libcharon-extra-plugins and "
                "libstrongswan-standard-plugins)")
    for plugin in PLUGINS.split():
        if not os.path.exists(f"/usr/lib/ipsec/plugins/libstrongswan-{plugin}.so"):
            return (f"strongSwan's {plugin} plugin is not installed (kernel-libipsec: "
                    "libcharon-extra-plugins; chapoly, curve25519: libstrongswan-extra-plugins; "
                    "openssl, gcm: libstrongswan-standard-plugins)")
    return None


STRONGSWAN_CONF = """\
charon {{
  load = {plugins}
  port = 500
  port_nat_t = 4500
  install_virtual_ip = no
  retransmit_tries = 3
  filelog {{
    charon {{
      path = {log}
      time_format = %T
      append = no
      flush_line = yes
      default = 1
      ike = 1
      cfg = 1
      chd = 4
      lib = 1
      esp = 1
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{vici}
    }}
  }}
}}
"""

SWANCTL_CONF = """\
connections {{
  gw {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    encap = yes
    proposals = aes128-sha256-x25519
    dpd_delay = 0
    local {{
      auth = psk
      id = {local_id}
    }}
    remote {{
      auth = psk
      id = {remote_id}
    }}
    children {{
      net {{
        mode = tunnel
        local_ts = {local_ts}
        remote_ts = {remote_ts}
        esp_proposals = {esp}
        start_action = none
        rekey_time = 0
        life_time = 0
      }}
    }}
  }}
}}
secrets {{
  ike-gw {{
    id-a = left
    id-b = right
    secret = "ipsecsa interop test psk 7f3a9c"
  }}
}}
"""


@dataclass
class Charon:
    ns: Netns
    dir: Path
    proc: subprocess.Popen

    @property
    def log(self) -> Path:
        return self.dir / "charon.log"

    def swanctl(self, command: str, *args: str, check: bool = True
                ) -> subprocess.CompletedProcess:
        return self.ns.run(SWANCTL, command, "--uri", f"unix://{self.dir / 'charon.vici'}",
                           *args, check=check, timeout=30)


def start_charon(ns: Netns, workdir: Path, *, local: str, remote: str, local_id: str,
                 remote_id: str, local_ts: str, remote_ts: str, esp: str) -> Charon:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "strongswan.conf"
    conf.write_text(STRONGSWAN_CONF.format(plugins=PLUGINS, log=workdir / "charon.log",
                                           vici=workdir / "charon.vici"))
    swanctl = workdir / "swanctl.conf"
    swanctl.write_text(SWANCTL_CONF.format(local=local, remote=remote, local_id=local_id,
                                           remote_id=remote_id, local_ts=local_ts,
                                           remote_ts=remote_ts, esp=esp))
    os.chmod(swanctl, 0o600)
    env = dict(os.environ, STRONGSWAN_CONF=str(conf))
    # A private /run: charon keeps its PID file there, and two charons must not see each other's.
    with open(workdir / "stderr", "w") as err:  # the child keeps its own descriptor
        proc = ns.popen("sh", "-c", f"mount -t tmpfs tmpfs /run && exec {CHARON}", env=env,
                        stdout=subprocess.DEVNULL, stderr=err)
    c = Charon(ns, workdir, proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"charon exited ({proc.returncode}): "
                                 f"{(workdir / 'stderr').read_text()[-2000:]}")
        if (workdir / "charon.vici").exists():
            break
        time.sleep(0.05)
    else:
        raise AssertionError("charon did not open its vici socket")
    c.swanctl("--load-all", "--noprompt", "--file", str(swanctl))
    return c


_ESTABLISHED = re.compile(r"CHILD_SA (\S+)\{\d+\} established with SPIs ([0-9a-f]{8})_i "
                          r"([0-9a-f]{8})_o and TS (\S+) === (\S+)")
_KEY = re.compile(r"(encryption|integrity) (initiator|responder) key => (\d+) bytes")
_DUMP = re.compile(r"\s(\d+): ((?:[0-9A-F]{2} ){1,16})")


@dataclass
class ChildKeys:
    """A CHILD_SA as one charon logged it: its SPIs (inbound ``spi_in``, outbound ``spi_out``),
    traffic selectors, and the four keys (``encr_i`` protects initiator-to-responder traffic)."""

    spi_in: int
    spi_out: int
    local_ts: str
    remote_ts: str
    keys: dict[str, bytes]


def child_keys_from_log(text: str) -> ChildKeys:
    """The last CHILD_SA established in a charon log, with the keys derived for it."""
    keys: dict[str, bytes] = {}
    lines = text.splitlines()
    i = 0
    found: ChildKeys | None = None
    while i < len(lines):
        m = _KEY.search(lines[i])
        if m:
            name = ("encr_" if m.group(1) == "encryption" else "integ_") + m.group(2)[0]
            want = int(m.group(3))
            data = b""
            i += 1
            while len(data) < want and i < len(lines):
                d = _DUMP.search(lines[i])
                if d is None:
                    break
                data += bytes.fromhex(d.group(2).replace(" ", ""))
                i += 1
            assert len(data) == want, f"short hex dump for {name}"
            keys[name] = data
            continue
        m = _ESTABLISHED.search(lines[i])
        if m:
            found = ChildKeys(int(m.group(2), 16), int(m.group(3), 16), m.group(4), m.group(5),
                              dict(keys))
        i += 1
    if found is None:
        raise AssertionError("no CHILD_SA established in the charon log")
    return found


def sa_counts(charon: Charon) -> tuple[int, int]:
    """(packets in, packets out) of the CHILD_SA as charon counts them now."""
    out = charon.swanctl("--list-sas", "--raw").stdout
    pin = re.search(r"packets-in=(\d+)", out)
    pout = re.search(r"packets-out=(\d+)", out)
    return int(pin.group(1)) if pin else 0, int(pout.group(1)) if pout else 0


def kill_hard(charon: Charon) -> None:
    """SIGKILL: the charon sends no DELETE and its TUN disappears with it."""
    charon.proc.kill()
    charon.proc.wait(timeout=10)


def charon_sa_file_entries(child: ChildKeys, *, suite: str, local: str, remote: str,
                           initiator: bool, seq_out: int, seq_in: int) -> list[dict]:
    """The CHILD_SA of ``child`` (logged by a charon at ``local``) as this host's outbound and
    inbound SAs in the SA format. ``initiator``: whether that charon initiated the CHILD_SA
    (its outbound traffic is then protected with the initiator keys)."""
    from .netns import SUITES

    enc, _elen, integ, _ilen = SUITES[suite]
    mine, theirs = ("i", "r") if initiator else ("r", "i")

    def one(spi: int, direction: str, src: str, dst: str, side: str, ts_src: str, ts_dst: str,
            seq: int) -> dict:
        obj: dict = {
            "spi": spi, "protocol": "esp", "mode": "tunnel", "direction": direction,
            "src": src, "dst": dst,
            "encryption": {"algorithm": enc, "key": child.keys[f"encr_{side}"].hex()},
            "encapsulation": {"type": "udp", "sport": 4500, "dport": 4500},
            "selectors": [{"src": ts_src, "dst": ts_dst}], "seq": seq,
        }
        if integ:
            obj["integrity"] = {"algorithm": integ, "key": child.keys[f"integ_{side}"].hex()}
        return obj

    return [one(child.spi_out, "outbound", local, remote, mine, child.local_ts, child.remote_ts,
                seq_out),
            one(child.spi_in, "inbound", remote, local, theirs, child.remote_ts, child.local_ts,
                seq_in)]


def wait_established(charon: Charon, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "established with SPIs" in charon.log.read_text():
            return
        time.sleep(0.1)
    raise AssertionError("no CHILD_SA established: " + charon.log.read_text()[-3000:])


__all__ = ["ESP_PROPOSALS", "Charon", "ChildKeys", "charon_sa_file_entries",
           "child_keys_from_log", "kill_hard", "sa_counts", "skip_reason", "start_charon",
           "wait_established"]
