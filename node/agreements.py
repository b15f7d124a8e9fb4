"""Mutual-recognition agreements: what a partner's inspection must satisfy to stand here.

An agreement is made of terms, and each term is a small policy that looks at
one inspection (the partner's `ControlResult`, at the time of the decision,
with the seal chains since) and returns the reasons it is *not* satisfied —
none when it is. Terms compose with `AllOf`, which runs every term and keeps
every reason, so a decision explains all that is wrong rather than the first
thing. The shape follows sigstore's ``verify/policy.py``; unlike it, a policy
returns its reasons instead of raising, because an officer needs them all.

The terms (``[[agreements]]`` in ``mrx.toml``, docs/recognition.md):

=========================  ================================================  ===========================
term                       the inspection is recognised only if               reason when it is not
=========================  ================================================  ===========================
``control_types``          its control type is one of these                   OUTSIDE_AGREEMENT_SCOPE
``result_codes``           its result code is one of these                    RESULT_NOT_SATISFACTORY
``excluded_hs_prefixes``   none of its goods' HS codes starts with these      OUTSIDE_AGREEMENT_SCOPE
``max_age_hours``          it is no older than this at the decision           TOO_OLD
``require_intact_chain``   every container's seal chain since is INTACT       SEAL_CHAIN_BROKEN / _UNKNOWN
``unseal_offices``         (not a check: the partner offices whose unseal authorisations count in the chain)
=========================  ================================================  ===========================

Pure: values in, reasons out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from mrx.schemas.codes import ControlResultCode, ControlType, DecisionReason, SealChainVerdict
from mrx.schemas.messages import ControlResult, DecisionReasonEntry

from .sealchain import ChainVerdict


@dataclass(frozen=True, slots=True)
class Inspection:
    """A partner's control result as received: the record that carries it, and who made it."""

    message_id: UUID
    sender: str  # the partner node
    result: ControlResult


@dataclass(frozen=True, slots=True)
class Inspected:
    """What a policy judges: an inspection, when the decision is taken, and the seal chains since."""

    inspection: Inspection
    decided_at: datetime
    chains: tuple[ChainVerdict, ...]


class Policy(Protocol):
    def check(self, case: Inspected) -> list[DecisionReasonEntry]:
        """The reasons ``case`` does not satisfy this policy; empty when it does."""
        ...


def _reason(code: DecisionReason, description: str, case: Inspected) -> DecisionReasonEntry:
    return DecisionReasonEntry(code, description, (case.inspection.message_id,))


@dataclass(frozen=True, slots=True)
class ControlTypes:
    recognised: frozenset[ControlType]

    def check(self, case: Inspected) -> list[DecisionReasonEntry]:
        kind = case.inspection.result.control_type
        if kind in self.recognised:
            return []
        allowed = ", ".join(sorted(t.value for t in self.recognised)) or "none"
        return [
            _reason(
                DecisionReason.OUTSIDE_AGREEMENT_SCOPE,
                f"the inspection was {kind.value}; the agreement recognises {allowed} controls",
                case,
            )
        ]


@dataclass(frozen=True, slots=True)
class ResultCodes:
    recognised: frozenset[ControlResultCode]

    def check(self, case: Inspected) -> list[DecisionReasonEntry]:
        code = case.inspection.result.result
        if code in self.recognised:
            return []
        allowed = ", ".join(sorted(c.value for c in self.recognised)) or "none"
        return [
            _reason(
                DecisionReason.RESULT_NOT_SATISFACTORY,
                f"the inspection's result is {code.value}; the agreement recognises {allowed}",
                case,
            )
        ]


@dataclass(frozen=True, slots=True)
class GoodsOutOfScope:
    hs_prefixes: tuple[str, ...]

    def check(self, case: Inspected) -> list[DecisionReasonEntry]:
        hits = sorted(
            {code for code in case.inspection.result.hs_codes for prefix in self.hs_prefixes if code.startswith(prefix)}
        )
        if not hits:
            return []
        return [
            _reason(
                DecisionReason.OUTSIDE_AGREEMENT_SCOPE,
                f"goods under HS {', '.join(hits)} are outside the agreement "
                f"(excluded: {', '.join(self.hs_prefixes)})",
                case,
            )
        ]


@dataclass(frozen=True, slots=True)
class MaxAge:
    limit: timedelta

    def check(self, case: Inspected) -> list[DecisionReasonEntry]:
        age = case.decided_at - case.inspection.result.controlled_at
        if age <= self.limit:
            return []
        hours = age.total_seconds() / 3600
        return [
            _reason(
                DecisionReason.TOO_OLD,
                f"the inspection is {hours:.1f} h old; the agreement recognises inspections up to "
                f"{self.limit.total_seconds() / 3600:g} h old",
                case,
            )
        ]


@dataclass(frozen=True, slots=True)
class IntactSealChain:
    """Every container's seal chain from the inspection to the decision must be INTACT."""

    def check(self, case: Inspected) -> list[DecisionReasonEntry]:
        out = []
        if not case.chains:
            out.append(
                _reason(
                    DecisionReason.SEAL_CHAIN_UNKNOWN,
                    "no container of the consignment is known, so no seal chain can be checked",
                    case,
                )
            )
        for chain in case.chains:
            if chain.verdict is SealChainVerdict.INTACT:
                continue
            code = (
                DecisionReason.SEAL_CHAIN_BROKEN
                if chain.verdict is SealChainVerdict.BROKEN
                else DecisionReason.SEAL_CHAIN_UNKNOWN
            )
            out.extend(
                DecisionReasonEntry(
                    code, f"container {chain.container}: {finding.description}", (case.inspection.message_id, *finding.evidence)
                )
                for finding in chain.findings
                if finding.verdict is chain.verdict
            )
        return out


@dataclass(frozen=True, slots=True)
class AllOf:
    policies: tuple[Policy, ...]

    def check(self, case: Inspected) -> list[DecisionReasonEntry]:
        return [reason for policy in self.policies for reason in policy.check(case)]


@dataclass(frozen=True, slots=True)
class Agreement:
    """The arrangement with one partner: its policy, and whose unseal authorisations count."""

    agreement_id: str
    partner: str
    policy: Policy
    unseal_offices: frozenset[str]


def agreement(
    agreement_id: str,
    partner: str,
    *,
    control_types: Sequence[ControlType],
    result_codes: Sequence[ControlResultCode],
    excluded_hs_prefixes: Sequence[str] = (),
    max_age: timedelta | None = None,
    require_intact_chain: bool = True,
    unseal_offices: Sequence[str] = (),
) -> Agreement:
    """An agreement from its terms, as the config states them."""
    terms: list[Policy] = [ControlTypes(frozenset(control_types)), ResultCodes(frozenset(result_codes))]
    if excluded_hs_prefixes:
        terms.append(GoodsOutOfScope(tuple(excluded_hs_prefixes)))
    if max_age is not None:
        terms.append(MaxAge(max_age))
    if require_intact_chain:
        terms.append(IntactSealChain())
    return Agreement(agreement_id, partner, AllOf(tuple(terms)), frozenset(unseal_offices))
