"""Code lists used in mrx messages.

UN/EDIFACT lists keep their numeric or two-letter codes (4517 seal condition,
9303 sealing party, 4525 seal type); NCTS control result codes keep theirs
(A1 ...). mrx's own lists (event types, decision reasons) use lower-case or
upper-case tokens that read well in XML, JSON and logs alike. Each enum's
values are exactly the XSD enumeration named after it in ``xsd/common.xsd``
(``SealConditionCode`` -> ``SealConditionCodeContentType``); a test keeps
them equal.
"""

from __future__ import annotations

from enum import StrEnum


class SealEventType(StrEnum):
    """What a lock reported. EAEU navigation-seal codes map as noted."""

    SEALED = "sealed"
    POSITION = "position"
    TAMPER = "tamper"  # EAEU 01 sealing element integrity broken, 07 unauthorised actions
    HOUSING_BREACH = "housing-breach"  # EAEU 02
    ROUTE_DEVIATION = "route-deviation"  # EAEU 03
    MALFUNCTION = "malfunction"  # EAEU 04
    BATTERY_LOW = "battery-low"  # EAEU 05
    NO_SIGNAL = "no-signal"  # EAEU 06
    OPENED = "opened"  # the lock detected an opening, authorised or not
    UNSEALED = "unsealed"  # the lock was opened on an unseal authorisation


class SealConditionCode(StrEnum):
    """UN/EDIFACT 4517."""

    IN_RIGHT_CONDITION = "1"
    DAMAGED = "2"
    MISSING = "3"
    BROKEN = "4"
    FAULTY_ELECTRONIC_SEAL = "5"


class SealingPartyCode(StrEnum):
    """UN/EDIFACT 9303."""

    CONSOLIDATOR = "AA"
    UNKNOWN = "AB"
    QUARANTINE_AGENCY = "AC"
    CARRIER = "CA"
    CUSTOMS = "CU"
    SHIPPER = "SH"
    TERMINAL_OPERATOR = "TO"


class SealTypeCode(StrEnum):
    """UN/EDIFACT 4525."""

    MECHANICAL = "1"
    ELECTRONIC = "2"


class SealActionCode(StrEnum):
    """What an inspection did with a seal."""

    FOUND = "found"
    AFFIXED = "affixed"


class ConsignmentReferenceType(StrEnum):
    CIM = "CIM"  # CIM consignment note (field 62), Luhn check digit verified
    SMGS = "SMGS"  # SMGS consignment note; numbering unconfirmed, not checked
    MANIFEST = "MANIFEST"
    MRN = "MRN"  # transit movement reference number


class ControlType(StrEnum):
    DOCUMENTARY = "documentary"
    NON_INTRUSIVE = "non-intrusive"  # X-ray and other scanning
    PHYSICAL = "physical"


class ControlResultCode(StrEnum):
    """NCTS control results (CL196 and the older destination list)."""

    A1 = "A1"  # satisfactory
    A2 = "A2"  # considered satisfactory
    A3 = "A3"  # simplified procedure
    A4 = "A4"  # minor irregularities
    B1 = "B1"  # not satisfactory


class DecisionOutcome(StrEnum):
    RECOGNISED = "RECOGNISED"
    NOT_RECOGNISED = "NOT_RECOGNISED"


class DecisionReason(StrEnum):
    NO_CONTROL_RESULT = "NO_CONTROL_RESULT"
    RESULT_NOT_SATISFACTORY = "RESULT_NOT_SATISFACTORY"
    OUTSIDE_AGREEMENT_SCOPE = "OUTSIDE_AGREEMENT_SCOPE"
    TOO_OLD = "TOO_OLD"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    SEAL_CHAIN_BROKEN = "SEAL_CHAIN_BROKEN"
    SEAL_CHAIN_UNKNOWN = "SEAL_CHAIN_UNKNOWN"
    NATIONAL_TARGETING = "NATIONAL_TARGETING"


class SealChainVerdict(StrEnum):
    INTACT = "INTACT"
    BROKEN = "BROKEN"
    UNKNOWN = "UNKNOWN"


class AlarmType(StrEnum):
    """Why a node raised an alarm about a seal."""

    TAMPER = "TAMPER"  # the lock reported tamper or a housing breach
    UNAUTHORISED_OPENING = "UNAUTHORISED_OPENING"  # opened without a valid, unused unseal authorisation
    SEAL_CHAIN_BROKEN = "SEAL_CHAIN_BROKEN"  # a recognition decision found the chain broken


class ReceiptStatus(StrEnum):
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
