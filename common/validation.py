"""Checks on incoming product text, shared by the text service and the gateway (which checks
before any stage is called); each error names the offending field."""

from __future__ import annotations

import re

from common.errors import InvalidInput, TooLarge

# C0 control characters and DEL, except tab, line feed and carriage return, which real
# descriptions contain. C1 controls (U+0080-U+009F) are accepted: 14 catalogue products hold
# them, Windows-1252 punctuation decoded as Latin-1 (U+0096 is an en dash there), and the
# pipeline drops them with the other non-alphanumerics.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_text_field(field: str, value: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise TooLarge.at(field, f"{len(value)} characters, the limit is {max_chars}")
    control = _CONTROL.search(value)
    if control:
        raise InvalidInput.at(field, f"control character U+{ord(control.group()):04X} at position {control.start()}")


def check_product_text(field: str, designation: str, description: str,
                       max_designation_chars: int, max_description_chars: int) -> None:
    """A product's text must not be empty (at least one field), too long or hold control characters."""
    if not designation.strip() and not description.strip():
        raise InvalidInput.at(field, "designation and description are both empty")
    check_text_field(f"{field}.designation", designation, max_designation_chars)
    check_text_field(f"{field}.description", description, max_description_chars)
