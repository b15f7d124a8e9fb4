"""Auditors' reads: find logged records by what they speak of, and the receipts that answer them.

Every function takes a ``sqlite3.Connection`` (the store's log reader, or a
command's read-only connection to a stopped node) and returns leaves in log
order. A record "speaks of" a container, seal, consignment or office through
the indexes the store keeps beside it: seal events and their claims, control
results, consignment links, decisions, alarms and unseal authorisations; a
container's consignments are those its sealing events and arrivals name.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from .sqlite_rows import select_in

_CONTAINER = """
    SELECT message_id FROM seal_events WHERE container = :container
    UNION SELECT message_id FROM seal_event_claims WHERE container = :container
    UNION SELECT message_id FROM alarms WHERE container = :container
    UNION SELECT message_id FROM unseal_authorizations WHERE container = :container
    UNION SELECT c.message_id FROM consignment_links c JOIN (
        SELECT ref_type, ref_id FROM consignment_links
            WHERE message_id IN (SELECT message_id FROM seal_events WHERE container = :container)
        UNION SELECT ref_type, ref_id FROM arrival_containers WHERE container = :container
    ) k ON c.ref_type = k.ref_type AND c.ref_id = k.ref_id
    UNION SELECT d.message_id FROM decisions d JOIN (
        SELECT ref_type, ref_id FROM consignment_links
            WHERE message_id IN (SELECT message_id FROM seal_events WHERE container = :container)
        UNION SELECT ref_type, ref_id FROM arrival_containers WHERE container = :container
    ) k ON d.ref_type = k.ref_type AND d.ref_id = k.ref_id
"""
_SEAL = """
    SELECT message_id FROM seal_events WHERE seal_id = :seal
    UNION SELECT message_id FROM unseal_authorizations WHERE seal_id = :seal
"""
_CONSIGNMENT = """
    SELECT message_id FROM consignment_links WHERE ref_type = :ref_type AND ref_id = :ref_id
    UNION SELECT message_id FROM decisions WHERE ref_type = :ref_type AND ref_id = :ref_id
"""
_OFFICE = """
    SELECT message_id FROM control_results WHERE office = :office
    UNION SELECT message_id FROM seal_events WHERE locode = :office
    UNION SELECT message_id FROM decisions WHERE office = :office
    UNION SELECT message_id FROM unseal_authorizations WHERE office = :office
"""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """What an auditor looks for; every given criterion must hold."""

    message_id: str | None = None
    container: str | None = None
    seal: str | None = None
    consignment: tuple[str, str] | None = None  # (reference type, ID)
    office: str | None = None
    since: str | None = None  # prepared at or after (sortable UTC text)
    until: str | None = None  # prepared before
    after_leaf: int = -1
    limit: int = 100


@dataclass(frozen=True, slots=True)
class Found:
    leaf_index: int
    message_id: str
    message_type: str
    sender: str
    prepared_at: str


def search(db: sqlite3.Connection, query: AuditQuery) -> list[Found]:
    """Logged records matching ``query``, in log order, after ``after_leaf``, at most ``limit``."""
    where, params = ["l.leaf_index > :after"], {"after": query.after_leaf, "limit": query.limit}
    if query.message_id is not None:
        where.append("r.message_id = :message_id")
        params["message_id"] = query.message_id
    for value, sql, names in (
        (query.container, _CONTAINER, ("container",)),
        (query.seal, _SEAL, ("seal",)),
        (query.consignment, _CONSIGNMENT, ("ref_type", "ref_id")),
        (query.office, _OFFICE, ("office",)),
    ):
        if value is not None:
            where.append(f"r.message_id IN ({sql})")
            params.update(zip(names, (value,) if isinstance(value, str) else value, strict=True))
    if query.since is not None:
        where.append("r.prepared_at >= :since")
        params["since"] = query.since
    if query.until is not None:
        where.append("r.prepared_at < :until")
        params["until"] = query.until
    rows = db.execute(
        "SELECT l.leaf_index, r.message_id, r.message_type, r.sender, r.prepared_at"
        " FROM records r JOIN log_leaves l ON l.record_seq = r.seq"
        f" WHERE {' AND '.join(where)} ORDER BY l.leaf_index LIMIT :limit",
        params,
    ).fetchall()
    return [Found(*row) for row in rows]


def receipts_of(db: sqlite3.Connection, message_ids: Iterable[str]) -> list[str]:
    """The message IDs of the receipts that answer these records: partners' receipts kept, and this node's."""
    ids = list(message_ids)
    rows = select_in(db, "SELECT receipt_message_id FROM outbox WHERE receipt_message_id IS NOT NULL"
                         " AND message_id IN ({})", ids)
    rows += select_in(db, "SELECT receipt_message_id FROM received WHERE message_id IN ({})", ids)
    rows += select_in(db, "SELECT receipt_message_id FROM receipts_issued WHERE received_message_id IN ({})", ids)
    return sorted({row[0] for row in rows})


def logged(db: sqlite3.Connection, message_ids: Iterable[str]) -> list[tuple[int, str, str, bytes]]:
    """(leaf index, message ID, sender, JWS) of these records, in log order."""
    rows = select_in(
        db,
        "SELECT l.leaf_index, r.message_id, r.sender, r.jws FROM records r JOIN log_leaves l ON l.record_seq = r.seq"
        " WHERE r.message_id IN ({})",
        list(set(message_ids)),
    )
    return sorted((row[0], row[1], row[2], bytes(row[3])) for row in rows)
