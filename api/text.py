"""Text from elsewhere made safe to print on a terminal or in a CI log: shown, never obeyed.

A commit message, an error, a step's detail or a container's log line is written by someone else (a signer, a
host, a container), and may carry characters that a terminal or a log viewer acts on instead of showing: ESC
sequences that move the cursor, recolour, clear the screen or write the clipboard (OSC 52, `ESC ] 52 ; c ; <base64>
BEL`); a carriage return that prints over what came before; C1 controls (`\\x9b` is a one-byte CSI to a terminal
that takes 8-bit controls, `\\x85` a line break to some); line and paragraph separators; bidirectional controls that
show text in another order than it is read ("Trojan Source"). Each of them is shown as its Python escape instead
(`\\x1b`, `\\x9b`, `\\u202e`), visible and inert; every other character, accents, CJK, emoji and their ZWJ
sequences included, is shown as it is. A backslash is left as it is, so `\\x1b` may also be what was written.

The standard library only, and Python 3.9: the GitHub Action (action/deploy.py) prints with it on a runner's own
python3.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Besides the C0 controls: DEL and the C1 controls; ALM, LRM and RLM, the line and paragraph separators, the bidi
# embeddings and overrides, the bidi isolates; lone surrogates, which are no character and have no UTF-8 encoding.
_BEYOND_C0 = r"\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNPRINTABLE = re.compile(rf"[\x00-\x1f{_BEYOND_C0}]")
# json.dumps escapes the C0 controls itself, and the line breaks of its indentation are its own.
_LEFT_RAW_BY_JSON = re.compile(rf"[{_BEYOND_C0}]")
# As Python writes them in a str's repr; any other as \xNN or \uNNNN.
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _python_escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def printable(text: str) -> str:
    """`text` on one line, with every control character (C0, `\\t`, `\\n` and `\\r` included), DEL, C1, line
    separator, bidirectional control and lone surrogate as its Python escape."""
    return _UNPRINTABLE.sub(_python_escape, text)


def printable_lines(text: str) -> list[str]:
    """`text` line by line, each line printable. Lines end at `\\n` (or `\\r\\n`) only: a lone `\\r`, a `\\x85` or
    a `\\u2028` is shown escaped in its line rather than taken for a line break."""
    lines = text.split("\n")
    if lines[-1] == "":
        # A final newline ends the last line, as in str.splitlines.
        lines.pop()
    return [printable(line.removesuffix("\r")) for line in lines]


def printable_json(document: Any, indent: int | None = 2) -> str:
    """`document` as JSON that any parser reads back to the same values, with no character printable would escape
    left raw: json.dumps escapes the C0 controls, and the rest are written as `\\u` escapes too."""
    return _LEFT_RAW_BY_JSON.sub(_json_escape, json.dumps(document, indent=indent, ensure_ascii=False))
