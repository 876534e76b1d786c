"""api.text: what a terminal would act on is shown escaped, everything else as it is."""

from __future__ import annotations

import json
import sys
import unicodedata

import pytest

from api.text import printable, printable_json, printable_lines

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def acted_on(char: str) -> bool:
    """What a terminal or a text view acts on instead of showing: C0, DEL and C1 controls, line and paragraph
    separators, bidirectional controls; and lone surrogates, which are no character."""
    return unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in BIDI_CONTROLS


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]52;c;cm0gLXJmIH4K\x07", r"\x1b]52;c;cm0gLXJmIH4K\x07"),
        ("\x1b]52;c;cm0gLXJmIH4K\x1b\\", "\\x1b]52;c;cm0gLXJmIH4K\\x1b\\"),  # ended by ST (ESC and a backslash)
        ("\x1b[2J\x1b[1;31mred\x1b[0m", r"\x1b[2J\x1b[1;31mred\x1b[0m"),
        ("build ok\rbuild FAILED", r"build ok\rbuild FAILED"),
        ("\x9b31mred\x9b0m", r"\x9b31mred\x9b0m"),
        ("one\x85two", r"one\x85two"),
        ("access\u202e\u2066txt.exe\u2069\u202c", r"access\u202e\u2066txt.exe\u2069\u202c"),
        ("tab\tnew\nline\x00nul\x7fdel", r"tab\tnew\nline\x00nul\x7fdel"),
        ("\u2028\u2029\u061c\u200e\u200f", r"\u2028\u2029\u061c\u200e\u200f"),
        ("half a pair: \ud83d, the other: \udfff", r"half a pair: \ud83d, the other: \udfff"),
    ],
    ids=["osc-52-bel", "osc-52-st", "csi", "carriage-return", "c1-csi", "nel", "bidi", "c0-del", "separators", "lone"],
)
def test_what_a_terminal_acts_on_is_shown_as_its_python_escape(text, shown):
    assert printable(text) == shown
    assert not any(acted_on(char) for char in printable(text))


@pytest.mark.parametrize(
    "text",
    [
        "Déjà vu, naïve, Ærøskøbing",
        "中文 日本語 한국어",
        "emoji 🚀 and a family 👨‍👩‍👧‍👦 joined by ZWJ",
        "flags 🇫🇷, skin tones 👋🏽, keycaps 1️⃣",
        "a\\x1b written as text, a backslash \\ and quotes ' \"",
        "",
    ],
)
def test_everything_else_is_shown_as_it_is(text):
    assert printable(text) == text


def test_exactly_what_a_terminal_acts_on_is_escaped_over_all_of_unicode():
    escaped = [code for code in range(sys.maxunicode + 1) if printable(chr(code)) != chr(code)]
    assert escaped == [code for code in range(sys.maxunicode + 1) if acted_on(chr(code))]


def test_an_escape_is_printable_as_it_is():
    text = "\x1b[31m\r\x9b\u202e\ud800"
    assert printable(printable(text)) == printable(text)


def test_lines_end_at_a_line_feed_only_and_each_is_printable():
    logs = "starting\r\nprogress 10%\rprogress 100%\n\x1b[31merror\x1b[0m\x85fake line\u2028\n\nlast\n"

    assert printable_lines(logs) == [
        "starting",
        r"progress 10%\rprogress 100%",
        r"\x1b[31merror\x1b[0m\x85fake line\u2028",
        "",
        "last",
    ]
    assert printable_lines("") == [] and printable_lines("one") == ["one"]


DOCUMENT = {
    "message": "\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\rforged\x9b0m\x85 \u202eevil\x7f\u2028\u2029\u061c\u200e\u2066",
    "commit": "déjà vu 中文 👨‍👩‍👧",
    "lone": "\ud800",
    "steps": [{"detail": "tab\there", "success": True, "seconds": 1.5, "host": None}],
}


@pytest.mark.parametrize("indent", [2, None])
def test_json_reads_back_the_same_with_no_raw_control_character(indent):
    text = printable_json(DOCUMENT, indent=indent)

    assert json.loads(text) == DOCUMENT
    assert not any(acted_on(char) for char in text.replace("\n", ""))
    assert "déjà vu 中文 👨‍👩‍👧" in text
    assert r"\u001b]52;c;" in text and r"\u009b0m\u0085 \u202eevil\u007f\u2028\u2029" in text
    assert r'"\ud800"' in text
