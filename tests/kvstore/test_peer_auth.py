"""kvstore.peers.auth on its own: what a holder of the cluster secret can send, and
everything a network attacker (or a node of another cluster) could change about it —
body, sender, recipient, cluster, time, nonce, frames, the 410 removal answer — is
refused with a PeerAuthError (never another exception), in each of the three modes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.config import ConfigError, load_cluster_config
from kvstore.peers import auth as peer_auth
from kvstore.peers.auth import (
    AUTH_HEADER,
    CLUSTER_HEADER,
    INCARNATION_HEADER,
    MAX_SKEW_S,
    NONCE_HEADER,
    SENDER_HEADER,
    TIME_HEADER,
    URL_HEADER,
    PeerAuth,
    PeerAuthError,
    node_uri,
)

SECRET = b"k" * 32
CLUSTER = "prod"
URL = "http://127.0.0.1:7001"
INCARNATION = "ab" * 16
BODY = b"\x91\x01msgpack batch"


class Clock:
    """Stands in for time.time() in kvstore.peers.auth."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(peer_auth.time, "time", fake)
    yield fake


def node(node_id: str, secret: bytes | None = SECRET, cluster: str = CLUSTER) -> PeerAuth:
    return PeerAuth(cluster, node_id, secret, incarnation=INCARNATION)


def signed(sender: PeerAuth, recipient: str = "n2", body: bytes | None = BODY) -> dict[str, str]:
    headers, _ = sender.request_headers(recipient, URL, body)
    return headers


def refused(receiver: PeerAuth, headers: dict[str, str], body: bytes | None = BODY) -> str:
    with pytest.raises(PeerAuthError) as caught:
        receiver.verify(headers, None, body)
    return caught.value.code


# ------------------------------------------------------------------ requests


def test_a_signed_request_names_its_sender_url_and_incarnation(clock: Clock) -> None:
    verified = node("n2").verify(signed(node("n1")), None, BODY)
    assert (verified.sender, verified.sender_url, verified.incarnation) == ("n1", URL, INCARNATION)
    assert verified.frames is None and len(verified.nonce) == 32


def test_a_tampered_body_is_refused(clock: Clock) -> None:
    headers = signed(node("n1"))
    assert refused(node("n2"), headers, BODY + b"!") == "bad_signature"
    assert refused(node("n2"), headers, b"") == "bad_signature"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (SENDER_HEADER, "n3"),  # claims another node
        (URL_HEADER, "http://127.0.0.1:6666"),  # redirects the answers
        (INCARNATION_HEADER, "cd" * 16),  # claims another life of its data
        (NONCE_HEADER, "f" * 32),
        (AUTH_HEADER, "0" * 64),
    ],
)
def test_any_changed_header_is_refused(clock: Clock, header: str, value: str) -> None:
    headers = signed(node("n1"))
    headers[header] = value
    assert refused(node("n2"), headers) == "bad_signature"


def test_a_changed_time_is_refused(clock: Clock) -> None:
    headers = signed(node("n1"))
    headers[TIME_HEADER] = str(int(headers[TIME_HEADER]) + 1)
    assert refused(node("n2"), headers) == "bad_signature"


def test_a_dropped_header_is_refused(clock: Clock) -> None:
    for header in (URL_HEADER, INCARNATION_HEADER):
        headers = signed(node("n1"))
        del headers[header]
        assert refused(node("n2"), headers) == "bad_signature"
    for header in (TIME_HEADER, NONCE_HEADER, SENDER_HEADER):
        headers = signed(node("n1"))
        del headers[header]
        assert refused(node("n2"), headers) == "unauthenticated"


def test_a_request_for_another_node_is_refused(clock: Clock) -> None:
    """Sent to n2, replayed to n3: the recipient is under the MAC."""
    assert refused(node("n3"), signed(node("n1"), recipient="n2")) == "bad_signature"


def test_a_replayed_request_is_refused(clock: Clock) -> None:
    headers, receiver = signed(node("n1")), node("n2")
    receiver.verify(headers, None, BODY)
    assert refused(receiver, headers) == "replayed_request"
    clock.now += MAX_SKEW_S / 2
    assert refused(receiver, headers) == "replayed_request"


def test_a_replay_is_refused_at_every_later_time(clock: Clock) -> None:
    """The nonce is forgotten only once the time stamp is too old anyway."""
    headers, receiver = signed(node("n1")), node("n2")
    receiver.verify(headers, None, BODY)
    for step in range(1, 12):
        clock.now += MAX_SKEW_S / 4
        signed(node("n3"))  # other traffic meanwhile (prunes the nonces)
        receiver.verify(signed(node("n3")), None, BODY)
        assert refused(receiver, headers) in ("replayed_request", "stale_request"), step


@pytest.mark.parametrize("offset", [-MAX_SKEW_S - 1, MAX_SKEW_S + 1])
def test_a_time_too_far_from_the_receivers_clock_is_refused(clock: Clock, offset: float) -> None:
    headers = signed(node("n1"))
    clock.now += offset
    assert refused(node("n2"), headers) == "stale_request"


def test_another_cluster_is_refused(clock: Clock) -> None:
    other = node("n1", cluster="staging")
    assert refused(node("n2"), signed(other)) == "wrong_cluster"
    headers = signed(node("n1"))
    headers[CLUSTER_HEADER] = "staging"
    assert refused(node("n2"), headers) == "wrong_cluster"
    del headers[CLUSTER_HEADER]
    assert refused(node("n2"), headers) == "wrong_cluster"


def test_another_secret_is_refused(clock: Clock) -> None:
    assert refused(node("n2"), signed(node("n1", secret=b"x" * 32))) == "bad_signature"


def test_an_unsigned_request_is_refused_by_a_node_with_a_secret(clock: Clock) -> None:
    plain = signed(node("n1", secret=None))
    assert refused(node("n2"), plain) == "unauthenticated"


@pytest.mark.parametrize(
    ("stamp", "nonce"), [("", "a" * 32), ("12x", "a" * 32), ("1", "a" * 15), ("1", "a" * 65)]
)
def test_malformed_credentials_are_refused(clock: Clock, stamp: str, nonce: str) -> None:
    headers = signed(node("n1"))
    headers[TIME_HEADER], headers[NONCE_HEADER] = stamp, nonce
    assert refused(node("n2"), headers) == "unauthenticated"


def test_a_non_ascii_signature_is_refused_not_a_crash(clock: Clock) -> None:
    """aiohttp hands undecodable header bytes over as surrogate escapes; comparing
    such a str with hmac.compare_digest raises TypeError (an answer 500 and a
    traceback for one header byte) unless it is compared as bytes."""
    headers = signed(node("n1"))
    for bad in ("\udcff" * 64, "é" * 64, "\ud800" * 64):
        headers[AUTH_HEADER] = bad
        assert refused(node("n2"), headers) == "bad_signature"


def test_a_non_ascii_digit_time_is_refused_not_a_crash(clock: Clock) -> None:
    """'²'.isdigit() is True but int('²') raises: even a correctly signed request with
    such a time (only a holder of the secret can make one) must be a refusal."""
    sender = node("n1")
    headers = signed(sender)
    stamp, nonce = "1²", headers[NONCE_HEADER]
    mac, _ = sender._macs("n1", "n2", stamp, nonce, URL, INCARNATION, BODY)
    headers[TIME_HEADER], headers[AUTH_HEADER] = stamp, mac
    assert refused(node("n2"), headers) == "unauthenticated"


# ------------------------------------------------------------------ frame streams


def stream(sender: PeerAuth, receiver: PeerAuth):  # type: ignore[no-untyped-def]
    headers, tagger = sender.request_headers(receiver.self_id, URL, None)
    verified = receiver.verify(headers, None, None)
    assert tagger is not None and verified.frames is not None
    return tagger, verified.frames


def test_frames_in_order_pass(clock: Clock) -> None:
    tagger, checker = stream(node("n1"), node("n2"))
    for i in range(5):
        body = b"frame %d" % i
        checker.check(body, tagger.tag(body))


def test_a_tampered_frame_is_refused(clock: Clock) -> None:
    tagger, checker = stream(node("n1"), node("n2"))
    tag = tagger.tag(b"append entries")
    with pytest.raises(PeerAuthError, match="HMAC"):
        checker.check(b"append entrieZ", tag)


def test_reordered_or_replayed_frames_are_refused(clock: Clock) -> None:
    tagger, checker = stream(node("n1"), node("n2"))
    first, second = tagger.tag(b"one"), tagger.tag(b"two")
    with pytest.raises(PeerAuthError):
        checker.check(b"two", second)  # second before first
    tagger, checker = stream(node("n1"), node("n2"))
    first = tagger.tag(b"one")
    checker.check(b"one", first)
    with pytest.raises(PeerAuthError):
        checker.check(b"one", first)  # the same frame again


def test_a_frame_spliced_from_another_stream_is_refused(clock: Clock) -> None:
    tagger_a, _ = stream(node("n1"), node("n2"))
    _, checker_b = stream(node("n1"), node("n2"))
    with pytest.raises(PeerAuthError):
        checker_b.check(b"one", tagger_a.tag(b"one"))


def test_a_stream_head_is_not_a_request_and_back(clock: Clock) -> None:
    """The purpose is under the MAC: a stream's head cannot pass as an (empty-bodied)
    request, nor a request's head as a stream."""
    stream_head, _ = node("n1").request_headers("n2", URL, None)
    assert refused(node("n2"), stream_head, b"") == "bad_signature"
    assert refused(node("n2"), signed(node("n1"), body=b""), None) == "bad_signature"


def test_a_replayed_stream_head_is_refused(clock: Clock) -> None:
    headers, _ = node("n1").request_headers("n2", URL, None)
    receiver = node("n2")
    receiver.verify(headers, None, None)
    assert refused(receiver, headers, None) == "replayed_request"


# ------------------------------------------------------------------ removal answers


def test_a_removal_answer_is_genuine_only_from_a_holder_of_the_secret(clock: Clock) -> None:
    removed, member = node("n3"), node("n1")
    headers = signed(removed, recipient="n1")
    verified = member.verify(headers, None, BODY)
    answer = member.removal_headers(verified)
    nonce = headers[NONCE_HEADER]
    assert removed.removal_is_genuine({AUTH_HEADER.lower(): answer[AUTH_HEADER]}, "n1", nonce)
    forged = node("n1", secret=b"z" * 32).removal_headers(verified)
    assert not removed.removal_is_genuine({AUTH_HEADER.lower(): forged[AUTH_HEADER]}, "n1", nonce)
    assert not removed.removal_is_genuine({}, "n1", nonce)
    genuine = {AUTH_HEADER.lower(): answer[AUTH_HEADER]}
    assert not removed.removal_is_genuine(genuine, "n2", nonce)  # another responder
    assert not removed.removal_is_genuine(genuine, "n1", "0" * 32)  # another request
    assert not removed.removal_is_genuine(genuine, "n1", None)
    assert not removed.removal_is_genuine({AUTH_HEADER.lower(): "\udcff" * 64}, "n1", nonce)


def test_without_a_secret_there_is_nothing_to_sign(clock: Clock) -> None:
    open_node = node("n1", secret=None)
    assert open_node.removal_headers(None) == {}
    assert open_node.removal_is_genuine({}, "n2", None)
    verified = open_node.verify({}, None, BODY)  # loopback, no names at all
    assert (verified.sender, verified.frames) == (None, None)


# ------------------------------------------------------------------ TLS mode


def tls_node(node_id: str) -> PeerAuth:
    return PeerAuth(CLUSTER, node_id, None, tls=True)


def test_tls_takes_the_sender_from_the_certificate() -> None:
    headers = signed(tls_node("n1"))
    assert tls_node("n2").verify(headers, (CLUSTER, "n1"), BODY).sender == "n1"
    with pytest.raises(PeerAuthError) as caught:
        tls_node("n2").verify(headers, (CLUSTER, "n3"), BODY)  # n3's cert claiming n1
    assert caught.value.code == "wrong_certificate"
    with pytest.raises(PeerAuthError) as caught:
        tls_node("n2").verify(headers, ("staging", "n1"), BODY)  # another cluster's CA
    assert caught.value.code == "wrong_certificate"
    with pytest.raises(PeerAuthError) as caught:
        tls_node("n2").verify(headers, None, BODY)
    assert caught.value.code == "no_certificate"


def test_node_uri_quotes_the_cluster_id() -> None:
    assert node_uri("a:b/c", "n1") == "urn:pyraftkv:a%3Ab%2Fc:node:n1"


# ------------------------------------------------------------------ the secret itself


@pytest.mark.parametrize(("length", "ok"), [(0, False), (31, False), (32, True), (64, True)])
def test_the_secret_must_be_at_least_32_bytes(tmp_path: Path, length: int, ok: bool) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(
        '[cluster]\nname = "c"\ndata_dir = "d"\n[[nodes]]\nid = "n1"\n'
        'client_url = "http://127.0.0.1:7000"\npeer_url = "http://127.0.0.1:7001"\n'
        f'[peer_auth]\nsecret = "{"s" * length}"\n'
    )
    if ok:
        assert load_cluster_config(config).peer_secret == b"s" * length
    else:
        with pytest.raises(ConfigError, match="peer_auth"):
            load_cluster_config(config)


def test_the_mac_is_keyed_by_the_whole_secret(clock: Clock) -> None:
    """Secrets that share a 32-byte prefix are different keys (HMAC hashes long keys)."""
    long_a, long_b = b"p" * 64 + b"a", b"p" * 64 + b"b"
    assert (
        hmac.new(long_a, b"", hashlib.sha256).digest() != hmac.new(long_b, b"", "sha256").digest()
    )
    assert refused(node("n2", secret=long_b), signed(node("n1", secret=long_a))) == "bad_signature"
