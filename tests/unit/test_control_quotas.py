"""Per-IP quotas with explicit time."""

from __future__ import annotations

from control import quotas
from control.quotas import Quotas, QuotaSettings


def make(**over: float) -> Quotas:
    base = dict(max_conns_per_ip=2, conn_rate_per_ip=3.0, max_password_failures=2,
                password_failure_window=10.0, max_rooms_per_ip=1)
    base.update(over)
    return Quotas(QuotaSettings(**base))  # type: ignore[arg-type]


def test_concurrent_connections_per_ip() -> None:
    q = make()
    assert q.open_connection("a") and q.open_connection("a")
    assert not q.open_connection("a")
    assert q.open_connection("b")
    q.close_connection("a")
    assert q.open_connection("a")
    for _ in range(3):
        q.close_connection("a")
    assert "a" not in q.conns and q.refused["conns"] == 1


def test_request_rate_bucket_refills() -> None:
    q = make()
    assert [q.allow_request("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert q.allow_request("b", 0.0)
    assert not q.allow_request("a", 0.2)  # 0.6 refilled
    assert q.allow_request("a", 0.4)  # 0.6 + 0.6 = 1.2


def test_bucket_table_is_bounded(monkeypatch: object) -> None:
    q = make()
    setattr(quotas, "MAX_TRACKED_IPS", 3)  # noqa: B010
    try:
        for i in range(10):
            q.allow_request(f"10.0.0.{i}", 0.0)
        assert len(q._buckets) <= 3
    finally:
        setattr(quotas, "MAX_TRACKED_IPS", 65_536)  # noqa: B010


def test_password_failures_block_within_window_then_expire() -> None:
    q = make()
    assert not q.password_blocked("a", "r", 0.0)
    q.password_failed("a", "r", 0.0)
    q.password_failed("a", "r", 1.0)
    assert q.password_blocked("a", "r", 2.0)
    assert not q.password_blocked("a", "other", 2.0)
    assert not q.password_blocked("b", "r", 2.0)
    assert not q.password_blocked("a", "r", 10.5)  # the first failure expired
    assert not q.password_blocked("a", "r", 11.5)
    assert q._failures == {}


def test_rooms_per_ip() -> None:
    q = make()
    assert q.may_host("a")
    q.room_opened("a")
    assert not q.may_host("a") and q.may_host("b")
    q.room_closed("a")
    assert q.may_host("a") and q.rooms == {}


def test_retry_after_says_how_long_to_wait() -> None:
    q = make()
    assert q.request_retry_after("a", 0.0) == 0.0  # unknown IP: a full bucket
    for _ in range(4):
        q.allow_request("a", 0.0)
    assert abs(q.request_retry_after("a", 0.0) - 1 / 3) < 1e-9  # 1 token at 3/s
    assert q.request_retry_after("a", 1.0) == 0.0
    assert make(conn_rate_per_ip=0.0).request_retry_after("a", 0.0) == 0.0
    assert q.password_retry_after("a", "r", 0.0) == 0.0
    q.password_failed("a", "r", 1.0)
    assert q.password_retry_after("a", "r", 2.0) == 0.0  # one failure: not blocked
    q.password_failed("a", "r", 3.0)
    assert q.password_blocked("a", "r", 4.0)
    assert q.password_retry_after("a", "r", 4.0) == 7.0  # the failure at 1.0 expires at 11
    assert q.password_retry_after("a", "r", 12.0) == 0.0
    assert [quotas.retry_seconds(w) for w in (0.0, 0.2, 1.0, 6.01)] == [1, 1, 1, 7]
    k = make(kdf_rate_per_ip=2.0)
    assert k.kdf_retry_after("a", 0.0) == 0.0
    assert [k.allow_kdf("a", 0.0) for _ in range(3)] == [True, True, False]
    assert k.kdf_retry_after("a", 0.0) == 0.5  # one derivation at 2/s
    assert k.kdf_retry_after("a", 0.5) == 0.0


def test_key_derivation_bucket_per_ip() -> None:
    q = make(kdf_rate_per_ip=2.0)
    assert [q.allow_kdf("a", 0.0) for _ in range(3)] == [True, True, False]
    assert q.allow_kdf("b", 0.0)  # another IP has its own bucket
    assert not q.allow_kdf("a", 0.4) and q.allow_kdf("a", 0.6)  # 2/s refill
    assert q.allow_request("a", 0.6)  # the request bucket is separate
    assert q.refused["kdf_rate"] == 2
