"""Offline checks of a packet's corrections and case (no database, no network).

``kernel.export.verify`` runs these after its own checks, with the CSV's digest (which knows the
row of every key in ``disputed``) and the signed snapshot. A packet without ``corrections`` and
``case`` gets no extra check. Each failure has its stable reason:

| check | fails with |
|---|---|
| corrections | ``correction_malformed`` (the block, an entry, or a document that is not canonical) |
| correction:<n> | ``correction_hash_mismatch``, ``correction_other_site``, ``correction_chain_broken``, |
| | ``correction_other_snapshot``, ``credit_not_billable``, ``credit_proof_missing``, |
| | ``credit_duplicated``, and the signature's own reasons (``signature_invalid``, ``untrusted_key``, …) |
| net_invoice | ``credit_exceeds_invoice``, ``net_invoice_mismatch`` |
| case | ``case_malformed``, ``case_correction_missing`` |

The chain is walked from its first correction (``prev_correction_hash`` null), each link the
SHA-256 of the previous document's bytes; a correction of this month must name this month's
signed snapshot, and each key it credits must be a billable row of the CSV (bound to the signed
Merkle root by the ``merkle_root`` check) listed under ``disputed`` as billable, where the
packet's inclusion check proves it against the signed root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kernel.disputes.document import CREDIT_OUTCOMES, CorrectionDocument, correction_hash
from kernel.disputes.evidence import invoice_figures
from kernel.export.csv import CsvDigest
from kernel.export.verify import Check
from kernel.ledger import SnapshotDocument

__all__ = ["MAX_CHAIN_CORRECTIONS", "SignatureCheck", "correction_checks"]

# A packet carries a site's correction chain; beyond this it is refused before any hashing.
MAX_CHAIN_CORRECTIONS = 10_000
_ENTRY_TEXT = ("document", "correction_hash", "signature", "key_id", "public_key")

# (entry with public_key/key_id/signature, document bytes) -> the signature's Check
SignatureCheck = Callable[[dict[str, Any], bytes], Check]


def _fail(name: str, detail: str, reason: str) -> Check:
    return Check(name, False, detail, reason)


def correction_checks(
    manifest: dict[str, Any], digest: CsvDigest, snapshot: SnapshotDocument, signature_check: SignatureCheck
) -> list[Check]:
    """Every check of the packet's corrections and case (empty for a packet with neither)."""
    checks: list[Check] = []
    block = manifest.get("corrections")
    month_documents: list[CorrectionDocument] = []
    if block is not None:
        month_documents = _chain_checks(checks, manifest, block, digest, snapshot, signature_check)
    if "case" in manifest:
        checks.append(_case_check(manifest["case"], month_documents))
    return checks


def _chain_checks(
    checks: list[Check],
    manifest: dict[str, Any],
    block: Any,
    digest: CsvDigest,
    snapshot: SnapshotDocument,
    signature_check: SignatureCheck,
) -> list[CorrectionDocument]:
    chain = block.get("chain") if isinstance(block, dict) else None
    if not isinstance(chain, list) or not chain or len(chain) > MAX_CHAIN_CORRECTIONS:
        checks.append(_fail("corrections", "corrections.chain must be a non-empty list", "correction_malformed"))
        return []
    disputed = {str(d.get("idempotency_key")): d for d in manifest.get("disputed", []) if isinstance(d, dict)}
    site_id = str(manifest.get("site_id", "")).lower()
    month = str(manifest.get("year_month", ""))
    previous: str | None = None
    credited: dict[str, int] = {}
    month_documents: list[CorrectionDocument] = []
    for number, entry in enumerate(chain, start=1):
        name = f"correction:{number}"
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in _ENTRY_TEXT):
            checks.append(_fail(name, f"entry needs text fields {', '.join(_ENTRY_TEXT)}", "correction_malformed"))
            return []
        document_bytes = entry["document"].encode("utf-8")
        try:
            document = CorrectionDocument.from_bytes(document_bytes)
        except (ValueError, TypeError, KeyError) as exc:
            checks.append(_fail(name, f"not a correction document: {exc}", "correction_malformed"))
            return []
        problems: list[tuple[str, str]] = []
        actual = correction_hash(document_bytes)
        if actual != entry["correction_hash"]:
            problems.append(("correction_hash_mismatch", f"SHA-256 of the document is {actual}"))
        if document.site_id != site_id:
            problems.append(("correction_other_site", f"the correction is of site {document.site_id}"))
        if document.prev_correction_hash != previous:
            problems.append(
                ("correction_chain_broken", f"it follows {document.prev_correction_hash}, the chain says {previous}")
            )
        signature = signature_check(entry, document_bytes)
        if not signature.ok:
            problems.append((signature.reason or "signature_invalid", signature.detail))
        if document.year_month == month:
            month_documents.append(document)
            problems += _credit_problems(document, snapshot, digest, disputed, credited, number)
        previous = actual
        if problems:
            detail = "; ".join(text for _, text in problems)
            checks.append(_fail(name, detail, problems[0][0]))
        else:
            scope = f"credits {document.credited_count} of {month}" if document.year_month == month else "chain link"
            checks.append(Check(name, True, f"{document.correction_hash[:16]}… signed, chained, {scope}"))
    checks.append(_net_check(block, digest, snapshot, month_documents, credited))
    return month_documents


def _credit_problems(
    document: CorrectionDocument,
    snapshot: SnapshotDocument,
    digest: CsvDigest,
    disputed: dict[str, Any],
    credited: dict[str, int],
    number: int,
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if document.snapshot_hash != snapshot.snapshot_hash:
        problems.append(("correction_other_snapshot", f"it corrects snapshot {document.snapshot_hash}"))
    for key in document.credited_keys:
        if key in credited:
            problems.append(("credit_duplicated", f"{key} was credited by correction {credited[key]} already"))
            continue
        credited[key] = number
        entry = disputed.get(key)
        row = digest.disputed.get(key)
        if entry is None:
            problems.append(("credit_proof_missing", f"{key} has no inclusion proof among the disputed rows"))
        elif row is None or not row.billable:
            problems.append(("credit_not_billable", f"{key} is not a billable row of the signed month"))
        elif entry.get("status") != "billable" or "proof" not in entry:
            problems.append(("credit_proof_missing", f"{key} is listed without its inclusion proof"))
    return problems


def _net_check(
    block: dict[str, Any],
    digest: CsvDigest,
    snapshot: SnapshotDocument,
    documents: list[CorrectionDocument],
    credited: dict[str, int],
) -> Check:
    total = sum(d.credited_count for d in documents)
    if total > snapshot.billable_count:
        detail = f"{total} events credited, the snapshot bills {snapshot.billable_count}"
        return _fail("net_invoice", detail, "credit_exceeds_invoice")
    overage = sum(
        1 for key in credited if (row := digest.disputed.get(key)) is not None and row.billing_state == "OVERAGE"
    )
    expected = invoice_figures(snapshot.billable_count, snapshot.overage_count, total, overage)
    stated = block.get("invoice")
    if stated != expected:
        return _fail(
            "net_invoice", f"the packet states {stated}, the signed documents give {expected}", "net_invoice_mismatch"
        )
    return Check(
        "net_invoice",
        True,
        f"billed {expected['billable']}, credited {total}, net {expected['net_billable']}"
        f" (overage {expected['overage']} - {overage} = {expected['net_overage']})",
    )


def _case_check(case: Any, documents: list[CorrectionDocument]) -> Check:
    if not isinstance(case, dict) or not isinstance(case.get("case_id"), str) or not isinstance(case.get("state"), str):
        return _fail("case", "case needs a case_id and a state", "case_malformed")
    outcome = case.get("outcome")
    if outcome in CREDIT_OUTCOMES and not any(d.case_id == case["case_id"].lower() for d in documents):
        return _fail(
            "case", f"the case is {outcome} but no correction of it is in the packet", "case_correction_missing"
        )
    return Check("case", True, f"case {case['case_id']}: {case['state']}" + (f" ({outcome})" if outcome else ""))
