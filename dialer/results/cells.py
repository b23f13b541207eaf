"""Text in the CSV files a spreadsheet user opens: shown as typed, never run as a formula.

A results file carries text from outside (a lead's number as typed, its CRM external id,
the provider's disposition and agent); Excel, LibreOffice and Google Sheets evaluate a
CSV cell that looks like a formula, so ``=HYPERLINK(...)`` from a CRM would become a live
link, ``=WEBSERVICE(...)`` or a DDE call worse (OWASP "CSV injection"). ``csv_text`` is
the one rule every CSV writer of such a file applies; the Excel download stores text as
string cells instead (``ui/downloads.py``), which shows it as typed with no prefix.
"""

from __future__ import annotations

# What a phone number is spelled with: a cell of these after its leading + or - is at
# most arithmetic on digits (no function, no reference), and E.164 numbers and national
# spellings stay byte-identical for the machines that read the file.
_PHONEISH = frozenset("0123456789 ().-/+")


def csv_text(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet would evaluate it, else unchanged.

    A cell starting with ``=``, ``@``, tab or CR is always prefixed; one starting with
    ``+`` or ``-`` only when what follows holds anything but digits, spaces and ``().-/+``
    (``+14155550100`` and ``-5`` stay as they are; ``+SUM(A1)`` and ``-1+cmd|x`` do not).
    The ``'`` is what a spreadsheet shows as "text, as typed"; readers of the file see it.
    """
    first = value[:1]
    if first in ("=", "@", "\t", "\r"):
        return "'" + value
    if first in ("+", "-") and not _PHONEISH.issuperset(value[1:]):
        return "'" + value
    return value
