"""Linux XFRM states as text: read ``ip xfrm state`` output, write ``ip xfrm state add`` commands.

Reading (:func:`parse_xfrm`) takes either of the two texts people have at hand:

* the listing ``ip xfrm state`` / ``ip -s xfrm state`` prints. Its shape is iproute2's
  ``ip/ipxfrm.c`` (``xfrm_state_info_print``, ``xfrm_xfrma_print``, ``__xfrm_algo_print``) and
  ``ip/xfrm_state.c``: a record starts at a line ``src A dst B`` (``Deleted``/``Updated``/
  ``Expired`` may precede it, as ``ip xfrm monitor`` prints), and tab-indented lines follow:
  ``proto esp spi 0x.. reqid N mode tunnel``, ``replay-window N flag ... esn``, the algorithms
  (``enc NAME 0xKEY``, ``auth-trunc NAME 0xKEY BITS``, ``aead NAME 0xKEY ICVBITS``, ``auth
  NAME 0xKEY``; with ``-s`` each key is followed by ``(N bits)``), ``encap type espinudp sport
  P dport P addr A``, ``anti-replay context: seq 0x.., oseq 0x.., bitmap 0x..`` or the ESN form
  (``anti-replay esn context:`` then `` seq-hi 0x.., seq 0x.., oseq-hi 0x.., oseq 0x..`` and
  `` replay_window N, bitmap-length N``), ``sel src P dst P [proto X] [sport N] [dport N]``,
  ``lifetime config:`` (``-s``), ``tfcpad N`` and, since iproute2 6.10, ``dir in|out``;
* ``ip xfrm state add|update ...`` command lines, such as :func:`xfrm_commands` writes (keys
  as ``0x`` hex, or a quoted string, which ``ip`` takes as the key's bytes).

Facts from the kernel (``net/xfrm/xfrm_algo.c``) that shape the mapping: ``auth NAME`` without a
truncation means the kernel's default truncation for that name, and for ``hmac(sha256)`` that is
96 bits, not RFC 4868's 128 (the long-standing Linux interoperability trap), so it is imported as
the explicit ``hmac-sha256-96``; AEAD ICV lengths and HMAC truncations are in bits.

What an XFRM state has and an SA description does not (reqid, marks, interface ids, output
marks, offload, ECN flags) is left out; what the description needs and a listing may lack
(``direction``) is taken from ``dir`` when present. IPComp and other non-ESP/AH states are
skipped with a note.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
from dataclasses import dataclass, field
from typing import Any

from ipsecsa.config.model import REPLAY_WINDOW_MAX, REPLAY_WINDOW_MIN, SaConfig
from ipsecsa.crypto.algorithms import lookup_encryption, lookup_integrity
from ipsecsa.errors import ConfigError
from ipsecsa.io.keytext import Imported, KeyTextError, hex_key

# --- Specification constants: Linux's algorithm names (net/xfrm/xfrm_algo.c) ----------------
#: Our encryption algorithm -> (ip xfrm keyword, kernel name, AEAD ICV length in bits or None).
XFRM_ENCRYPTION: dict[str, tuple[str, str, int | None]] = {
    "null": ("enc", "ecb(cipher_null)", None),
    "aes-cbc": ("enc", "cbc(aes)", None),
    "aes-ctr": ("enc", "rfc3686(ctr(aes))", None),
    "3des-cbc": ("enc", "cbc(des3_ede)", None),
    "des-cbc": ("enc", "cbc(des)", None),
    "aes-gcm-8": ("aead", "rfc4106(gcm(aes))", 64),
    "aes-gcm-12": ("aead", "rfc4106(gcm(aes))", 96),
    "aes-gcm-16": ("aead", "rfc4106(gcm(aes))", 128),
    "aes-ccm-8": ("aead", "rfc4309(ccm(aes))", 64),
    "aes-ccm-12": ("aead", "rfc4309(ccm(aes))", 96),
    "aes-ccm-16": ("aead", "rfc4309(ccm(aes))", 128),
    "chacha20-poly1305": ("aead", "rfc7539esp(chacha20,poly1305)", 128),
    "null-aes-gmac": ("aead", "rfc4543(gcm(aes))", 128),
}
#: Our integrity algorithm -> (kernel name, truncation in bits).
XFRM_INTEGRITY: dict[str, tuple[str, int]] = {
    "hmac-md5-96": ("hmac(md5)", 96),
    "hmac-sha1-96": ("hmac(sha1)", 96),
    "hmac-sha256-96": ("hmac(sha256)", 96),
    "hmac-sha256-128": ("hmac(sha256)", 128),
    "hmac-sha384-192": ("hmac(sha384)", 192),
    "hmac-sha512-256": ("hmac(sha512)", 256),
    "aes-xcbc-96": ("xcbc(aes)", 96),
    "aes-cmac-96": ("cmac(aes)", 96),
}
#: The kernel's default truncation of ``auth NAME`` (no explicit length): xfrm_algo.c's
#: ``icv_truncbits``. hmac(sha256) defaults to 96 bits.
KERNEL_DEFAULT_TRUNC_BITS = {
    "hmac(md5)": 96, "hmac(sha1)": 96, "hmac(sha256)": 96, "hmac(sha384)": 192,
    "hmac(sha512)": 256, "xcbc(aes)": 96, "cmac(aes)": 96, "digest_null": 0,
    "hmac(rmd160)": 96,
}
#: Encapsulation types (linux/udp.h): 2 is RFC 3948 ESP-in-UDP; 1 the pre-RFC non-IKE marker form.
ENCAP_ESPINUDP = "espinudp"
_XFRM_INF = 2**64 - 1
_PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132,
                "dccp": 33, "gre": 47, "esp": 50, "ah": 51, "any": 0}


@dataclass
class _State:
    """One XFRM state being read (listing or command)."""

    line: int
    src: str = ""
    dst: str = ""
    proto: str = ""
    spi: int | None = None
    mode: str = "transport"
    replay_window: int = 0
    esn_window: int | None = None
    flags: set[str] = field(default_factory=set)
    enc: tuple[str, str, int | None] | None = None  # (name, key hex, aead icv bits)
    auth: tuple[str, str, int | None] | None = None  # (name, key hex, trunc bits or None)
    encap: tuple[str, int, int] | None = None
    seq: int = 0
    oseq: int = 0
    seq_hi: int = 0
    oseq_hi: int = 0
    sel: dict[str, Any] | None = None
    limits: dict[str, int] = field(default_factory=dict)
    tfcpad: int = 0
    direction: str | None = None
    notes: list[str] = field(default_factory=list)


def _proto_number(text: str, line: int) -> int:
    t = text.lower()
    if t in _PROTO_NAMES:
        return _PROTO_NAMES[t]
    if t.isdigit():
        return int(t)
    try:
        return socket.getprotobyname(t)
    except OSError:
        raise KeyTextError(line, f"unknown protocol {text!r} in the selector") from None


def _int(text: str, line: int, what: str) -> int:
    try:
        return int(text.rstrip(","), 0)
    except ValueError:
        raise KeyTextError(line, f"{what}: {text!r} is not a number") from None


def _key(text: str, line: int, what: str) -> str:
    """A key as ip prints it (``0x`` hex) or takes it (hex, or a string used as bytes)."""
    if text.lower().startswith("0x"):
        return hex_key(text, line, what)
    return text.encode("utf-8").hex()


def _selector(tokens: list[str], line: int) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        word = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if word in ("src", "dst"):
            net = ipaddress.ip_network(nxt, strict=False)
            if net.prefixlen:
                sel[word] = str(net)
            i += 2
        elif word == "proto":
            proto = _proto_number(nxt, line)
            if proto:
                sel["protocol"] = proto
            i += 2
        elif word in ("sport", "dport"):
            port = _int(nxt, line, word)
            if port:
                sel[word] = port
            i += 2
        elif word in ("type", "code", "key"):
            raise KeyTextError(line, f"selector {word} (ICMP type/code, GRE key) cannot be "
                                     "expressed in an SA description")
        elif word in ("dev", "uid"):
            i += 2
        else:
            i += 1
    return sel


# ---------------------------------------------------------------------------- the listing
def _listing_line(st: _State, words: list[str], lineno: int) -> None:
    head = words[0]
    if head == "proto":
        st.proto = words[1]
        for i, w in enumerate(words):
            if w == "spi":
                st.spi = _int(words[i + 1].split("(")[0], lineno, "spi")
            elif w == "mode":
                st.mode = words[i + 1]
    elif head == "replay-window":
        st.replay_window = _int(words[1], lineno, "replay-window")
        if "flag" in words:
            for w in words[words.index("flag") + 1:]:
                if w.startswith("(") or w in ("extra_flag", "seq"):
                    break
                st.flags.add(w)
    elif head in ("enc", "aead", "auth", "auth-trunc"):
        _algorithm(st, words, lineno, listing=True)
    elif head == "encap":
        kv = dict(zip(words[1::2], words[2::2], strict=False))
        st.encap = (kv.get("type", ""), _int(kv.get("sport", "0"), lineno, "sport"),
                    _int(kv.get("dport", "0"), lineno, "dport"))
    elif head == "anti-replay" and len(words) > 2 and words[1] == "context:":
        kv = dict(zip(words[2::2], words[3::2], strict=False))
        st.seq = _int(kv.get("seq", "0"), lineno, "seq")
        st.oseq = _int(kv.get("oseq", "0"), lineno, "oseq")
    elif head in ("seq-hi",):
        kv = dict(zip(words[0::2], words[1::2], strict=False))
        st.seq_hi = _int(kv.get("seq-hi", "0"), lineno, "seq-hi")
        st.seq = _int(kv.get("seq", "0"), lineno, "seq")
        st.oseq_hi = _int(kv.get("oseq-hi", "0"), lineno, "oseq-hi")
        st.oseq = _int(kv.get("oseq", "0"), lineno, "oseq")
    elif head == "replay_window":
        st.esn_window = _int(words[1], lineno, "replay_window")
    elif head == "sel":
        sel = _selector(words[1:], lineno)
        st.sel = sel or None
    elif head == "limit:":
        # "limit: soft N(bytes), hard N(bytes)" (ip -s); (INF) is no limit.
        text = " ".join(words[1:])
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            which, value = part.split(None, 1)
            number, _, unit = value.partition("(")
            if value.startswith("(INF)"):
                continue
            unit = unit.rstrip(")")
            if number.isdigit() and unit in ("bytes", "packets") and int(number):
                st.limits[f"{unit[:-1] if unit == 'packets' else 'byte'}-{which}"] = int(number)
    elif head == "expire" and len(words) > 1 and words[1] == "add:":
        text = " ".join(words[2:])
        for part in text.split(","):
            which, value = part.strip().split(None, 1)
            number = value.split("(")[0]
            if number.isdigit() and int(number):
                st.limits[f"time-{which}"] = int(number)
    elif head == "tfcpad":
        st.tfcpad = _int(words[1], lineno, "tfcpad")
    elif head == "dir":
        st.direction = {"in": "inbound", "out": "outbound"}.get(words[1])
    elif head == "comp":
        st.notes.append("IPComp is not supported; the compression transform is ignored")
    # Everything else (mark, output-mark, lifetime current, stats, lastused, crypto offload,
    # if_id, pcpu-num, security context, bitmap words, "hard N" of an expire) carries nothing
    # an SA description has.


def _algorithm(st: _State, words: list[str], lineno: int, *, listing: bool) -> int:
    """Parse ``KIND NAME [KEY [(N bits)] [BITS]]`` starting at words[0]; return words used."""
    kind = words[0]
    if len(words) < 2:
        raise KeyTextError(lineno, f"{kind}: algorithm name missing")
    name = words[1]
    rest = words[2:]
    used = 2
    key = ""
    if rest and not (listing and rest[0].startswith("<<")):
        if kind == "enc" and name in ("ecb(cipher_null)", "cipher_null") and (
                not rest[0].lower().startswith("0x") and listing):
            pass  # ip prints no key for a keyless algorithm
        else:
            key = _key(rest[0], lineno, f"{kind} key")
            rest = rest[1:]
            used += 1
    elif rest and rest[0].startswith("<<"):
        raise KeyTextError(lineno, "the listing hides the keys (ip xfrm state list nokeys); "
                                   "run it without nokeys")
    if rest and rest[0].startswith("("):  # "(128 bits)" after the key, printed by ip -s
        rest = rest[2:] if len(rest) > 1 and rest[1].startswith("bits") else rest[1:]
        used += 2
    bits = None
    if kind in ("aead", "auth-trunc"):
        if not rest:
            raise KeyTextError(lineno, f"{kind} {name}: the ICV/truncation length is missing")
        bits = _int(rest[0], lineno, f"{kind} length")
        used += 1
    if kind in ("enc", "aead"):
        st.enc = (name, key, bits)
    else:
        st.auth = (name, key, bits)
    return used


def _split_records(text: str) -> list[tuple[int, list[str]]]:
    records: list[tuple[int, list[str]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split()
        while words and words[0] in ("Deleted", "Updated", "Expired"):
            words = words[1:]
        if words and words[0] == "src" and not raw[:1].isspace():
            records.append((lineno, [" ".join(words)]))
            records[-1][1].append(f"@{lineno}")
        elif records:
            records[-1][1].append(f"@{lineno} " + stripped)
        else:
            raise KeyTextError(lineno, "expected 'src ADDR dst ADDR' starting an XFRM state")
    return records


def _parse_listing(text: str) -> list[_State]:
    states = []
    for lineno, lines in _split_records(text):
        st = _State(lineno)
        first = lines[0].split()
        kv = dict(zip(first[0::2], first[1::2], strict=False))
        st.src, st.dst = kv.get("src", ""), kv.get("dst", "")
        current = lineno
        for entry in lines[1:]:
            tag, _, body = entry.partition(" ")
            current = int(tag[1:])
            words = body.split()
            if words:
                _listing_line(st, words, current)
        states.append(st)
    return states


# ---------------------------------------------------------------------------- add commands
_FLAG_WORDS = {"noecn", "decap-dscp", "nopmtudisc", "wildrecv", "icmp", "af-unspec", "align4",
               "esn"}


def _parse_command(words: list[str], lineno: int) -> _State:
    st = _State(lineno)
    i = 0
    n = len(words)
    while i < n:
        w = words[i]
        nxt = words[i + 1] if i + 1 < n else ""
        if w in ("src", "dst"):
            setattr(st, w, nxt)
            i += 2
        elif w == "proto":
            st.proto = nxt
            i += 2
        elif w == "spi":
            st.spi = _int(nxt, lineno, "spi")
            i += 2
        elif w == "mode":
            st.mode = nxt
            i += 2
        elif w == "replay-window":
            st.replay_window = _int(nxt, lineno, "replay-window")
            i += 2
        elif w in ("replay-seq", "replay-oseq", "replay-seq-hi", "replay-oseq-hi"):
            setattr(st, w.replace("replay-", "").replace("-", "_"), _int(nxt, lineno, w))
            i += 2
        elif w == "flag":
            i += 1
            while i < n and (words[i] in _FLAG_WORDS or words[i].isdigit()):
                st.flags.add(words[i])
                i += 1
        elif w in ("enc", "auth", "auth-trunc", "aead"):
            i += _algorithm(st, words[i:], lineno, listing=False)
        elif w == "encap":
            if i + 4 >= n:
                raise KeyTextError(lineno, "encap needs TYPE SPORT DPORT OADDR")
            st.encap = (nxt, _int(words[i + 2], lineno, "encap sport"),
                        _int(words[i + 3], lineno, "encap dport"))
            i += 5
        elif w == "sel":
            j = i + 1
            while j < n and words[j] in ("src", "dst", "proto", "sport", "dport", "type",
                                         "code", "key", "dev"):
                j += 2
            st.sel = _selector(words[i + 1:j], lineno) or None
            i = j
        elif w == "limit":
            i += 1
            while i + 1 < n and words[i] in ("byte-soft", "byte-hard", "packet-soft",
                                             "packet-hard", "time-soft", "time-hard",
                                             "time-use-soft", "time-use-hard"):
                value = _int(words[i + 1], lineno, words[i])
                if value and not words[i].startswith("time-use"):
                    st.limits[words[i]] = value
                i += 2
        elif w == "tfcpad":
            st.tfcpad = _int(nxt, lineno, "tfcpad")
            i += 2
        elif w == "dir":
            st.direction = {"in": "inbound", "out": "outbound"}.get(nxt)
            i += 2
        elif w in ("reqid", "if_id", "output-mark", "ctx", "extra-flag", "coa", "sec"):
            i += 2
        elif w == "mark":
            i += 4 if i + 2 < n and words[i + 2] == "mask" else 2
        elif w == "offload":
            i += 1
            while i + 1 < n and words[i] in ("crypto", "packet", "dev", "dir"):
                i += 1 if words[i] in ("crypto", "packet") else 2
        else:
            raise KeyTextError(lineno, f"unexpected word {w!r} in an ip xfrm state command")
    return st


def _command_lines(text: str) -> list[tuple[int, list[str]]]:
    out = []
    pending, start = "", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = lineno
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        words = shlex.split(pending, comments=True)
        pending = ""
        while words and words[0] in ("sudo", "ip") or (words and words[0].startswith("-")):
            words = words[1:]
        if len(words) < 2 or words[0] != "xfrm" or words[1] != "state" or len(words) < 3 \
                or words[2] not in ("add", "update", "a", "upd"):
            raise KeyTextError(start, "expected an 'ip xfrm state add' command")
        out.append((start, words[3:]))
    return out


# ---------------------------------------------------------------------------- to sa-format
def _to_sa(st: _State) -> Imported | None:
    line = st.line
    if st.proto not in ("esp", "ah"):
        return None
    if st.spi is None:
        raise KeyTextError(line, "no spi")
    if st.mode not in ("transport", "tunnel"):
        raise KeyTextError(line, f"mode {st.mode} is not supported (transport or tunnel)")
    sa: dict[str, Any] = {"spi": st.spi, "protocol": st.proto, "mode": st.mode,
                          "src": st.src, "dst": st.dst}
    if st.direction:
        sa["direction"] = st.direction
    esn = "esn" in st.flags
    sa["esn"] = esn
    if st.enc is not None:
        name, key, bits = st.enc
        alg_name = f"{name} {bits}" if bits is not None else name
        try:
            alg = lookup_encryption(alg_name).algorithm.name
        except ConfigError as exc:
            raise KeyTextError(line, f"{exc.field}: {exc.reason}") from None
        sa["encryption"] = {"algorithm": alg, "key": key} if key else {"algorithm": alg}
    if st.auth is not None:
        name, key, bits = st.auth
        if bits is None:
            bits = KERNEL_DEFAULT_TRUNC_BITS.get(name)
            if bits is None:
                raise KeyTextError(line, f"auth {name}: unknown default truncation; use "
                                         "auth-trunc with a length")
        alg = _integrity_name(name, bits, line)
        if alg != "none":
            sa["integrity"] = {"algorithm": alg, "key": key}
    if st.encap is not None:
        kind, sport, dport = st.encap
        if kind != ENCAP_ESPINUDP:
            raise KeyTextError(line, f"encap type {kind}: only espinudp (RFC 3948) is supported")
        sa["encapsulation"] = {"type": "udp", "sport": sport, "dport": dport}
    window: int | None = st.esn_window if st.esn_window is not None else st.replay_window
    if st.direction == "outbound":
        window = None  # an outbound state has no window (the kernel requires 0)
    if window is not None:
        if 0 < window < REPLAY_WINDOW_MIN:
            st.notes.append(f"replay window {window} raised to {REPLAY_WINDOW_MIN}, the "
                            "smallest ipsecsa accepts (RFC 4303 §3.4.3)")
            window = REPLAY_WINDOW_MIN
        elif window > REPLAY_WINDOW_MAX:
            st.notes.append(f"replay window {window} lowered to {REPLAY_WINDOW_MAX}")
            window = REPLAY_WINDOW_MAX
        sa["replay_window"] = window
    inbound = (st.seq_hi << 32 | st.seq) if esn else st.seq
    outbound = (st.oseq_hi << 32 | st.oseq) if esn else st.oseq
    sa["seq"] = (inbound if st.direction == "inbound" else outbound if st.direction == "outbound"
                 else max(inbound, outbound))
    if st.sel:
        sa["selectors"] = [st.sel]
    if st.limits:
        life: dict[str, dict[str, int]] = {}
        for key_, value in st.limits.items():
            kind_, which = key_.split("-")
            dim = {"byte": "bytes", "packet": "packets", "time": "seconds"}[kind_]
            if value != _XFRM_INF:
                life.setdefault(which, {})[dim] = value
        if life:
            sa["lifetime"] = life
    if st.tfcpad:
        sa["tfc_padding"] = st.tfcpad
    return Imported(line, sa, st.notes)


def _integrity_name(name: str, bits: int, line: int) -> str:
    if name == "digest_null":
        return "none"
    for ours, (kname, kbits) in XFRM_INTEGRITY.items():
        if kname == name and kbits == bits:
            return ours
    try:
        return lookup_integrity(f"{name} {bits}").algorithm.name
    except ConfigError as exc:
        raise KeyTextError(line, f"{exc.field}: {exc.reason}") from None


def parse_xfrm(text: str) -> tuple[list[Imported], list[str]]:
    """SA objects from ``ip xfrm state`` output or ``ip xfrm state add`` commands.

    Returns ``(imported, notes)``; notes say what was skipped or adjusted (never keys).
    """
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()
                  and not ln.strip().startswith("#")), "")
    if not first:
        raise KeyTextError(1, "no XFRM state in the input")
    words = first.split()
    while words and (words[0] in ("sudo", "ip") or words[0].startswith("-")):
        words = words[1:]
    if words[:2] == ["xfrm", "state"]:
        states = [_parse_command(w, ln) for ln, w in _command_lines(text)]
    else:
        states = _parse_listing(text)
    imported: list[Imported] = []
    notes: list[str] = []
    for st in states:
        item = _to_sa(st)
        if item is None:
            notes.append(f"line {st.line}: skipped a {st.proto or 'non-IPsec'} state "
                         "(only esp and ah are SAs here)")
            continue
        notes += [f"line {st.line}: {n}" for n in item.notes]
        imported.append(item)
    return imported, notes


# ---------------------------------------------------------------------------- export
def xfrm_commands(configs: list[SaConfig], *, with_direction: bool = True) -> list[str]:
    """``ip xfrm state add`` commands that install ``configs`` in a Linux kernel.

    Keys are on the command lines: write them to a private file, not a shared terminal log.
    ``with_direction`` adds ``dir in|out`` (iproute2 and Linux 6.10 or later) for SAs that have
    a direction; the kernel then wants no replay window on an outbound SA, and none is written.
    Raises ConfigError (``sas[i].<field>``) for what XFRM cannot express.
    """
    lines = []
    for i, cfg in enumerate(configs):
        try:
            lines.append(_command(cfg, with_direction))
        except ConfigError as exc:
            raise exc.at(f"sas[{i}]") from None
    return lines


def _command(cfg: SaConfig, with_direction: bool) -> str:
    parts = ["ip", "xfrm", "state", "add", "src", str(cfg.src), "dst", str(cfg.dst),
             "proto", cfg.protocol, "spi", f"0x{cfg.spi:08x}", "mode", cfg.mode]
    outbound = cfg.direction == "outbound" and with_direction
    if not outbound and (cfg.replay_window or cfg.esn):
        parts += ["replay-window", str(cfg.replay_window)]
    if cfg.esn:
        parts += ["flag", "esn"]
    low, high = cfg.seq & 0xFFFFFFFF, cfg.seq >> 32
    if cfg.seq:
        if cfg.direction != "outbound":
            parts += ["replay-seq", f"0x{low:x}"] + (["replay-seq-hi", f"0x{high:x}"]
                                                      if high else [])
        if cfg.direction != "inbound":
            parts += ["replay-oseq", f"0x{low:x}"] + (["replay-oseq-hi", f"0x{high:x}"]
                                                       if high else [])
    if cfg.encryption is not None:
        keyword, name, bits = XFRM_ENCRYPTION[cfg.encryption.name]
        key = cfg.encryption_key.hex() if cfg.encryption_key is not None else ""
        parts += [keyword, shlex.quote(name), f"0x{key}" if key else "''"]
        if bits is not None:
            parts.append(str(bits))
    if cfg.integrity is not None:
        if cfg.integrity.name not in XFRM_INTEGRITY:
            raise ConfigError("integrity.algorithm", f"{cfg.integrity.name} has no Linux XFRM "
                                                     f"equivalent for {cfg.protocol.upper()}")
        name, bits = XFRM_INTEGRITY[cfg.integrity.name]
        key = cfg.integrity_key.hex() if cfg.integrity_key is not None else ""
        parts += ["auth-trunc", shlex.quote(name), f"0x{key}", str(bits)]
    if cfg.encapsulation is not None:
        unspecified = "0.0.0.0" if cfg.src.version == 4 else "::"
        parts += ["encap", ENCAP_ESPINUDP, str(cfg.encapsulation.sport),
                  str(cfg.encapsulation.dport), unspecified]
    if len(cfg.selectors) > 1:
        raise ConfigError("selectors", "an XFRM state has one selector (more belong in XFRM "
                                       "policies); keep one selector or none")
    if cfg.selectors:
        sel = cfg.selectors[0].to_dict()
        parts.append("sel")
        for key_ in ("src", "dst"):
            if key_ in sel:
                parts += [key_, sel[key_]]
        if sel.get("protocol"):
            parts += ["proto", str(sel["protocol"])]
        for key_ in ("sport", "dport"):
            if sel.get(key_):
                parts += [key_, str(sel[key_])]
    limits = []
    for which, life in (("soft", cfg.soft), ("hard", cfg.hard)):
        for dim, word in (("bytes", "byte"), ("packets", "packet"), ("seconds", "time")):
            value = getattr(life, dim)
            if value is not None:
                limits += [f"{word}-{which}", str(int(-(-value // 1)))]
    if limits:
        parts += ["limit"] + limits
    if cfg.tfc_padding:
        parts += ["tfcpad", str(cfg.tfc_padding)]
    if with_direction and cfg.direction is not None:
        parts += ["dir", "out" if cfg.direction == "outbound" else "in"]
    return " ".join(parts)


__all__ = ["KERNEL_DEFAULT_TRUNC_BITS", "XFRM_ENCRYPTION", "XFRM_INTEGRITY", "parse_xfrm",
           "xfrm_commands"]
