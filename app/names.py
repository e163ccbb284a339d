"""Name policy and address rules (pure: no I/O).

A name is valid when all of these hold (checked on its NFC form):

- 3 to 32 characters (code points) and at most 32 UTF-8 bytes: the contract key is a `bytes32`.
- Allowed characters: ASCII letters and digits, `-`, `_`; Unicode letters (Lu, Ll, Lt, Lm, Lo);
  combining marks (Mn, Mc) only right after a letter or another such mark.
- Digits are ASCII `0-9` only: other scripts' digits (`٣`, `३`, `𝟏`) imitate Latin letters and
  digits.
- Everything else is refused: spaces, punctuation but `-` and `_` (so `/`, `.`, `@`), symbols,
  emoji, control and format characters (ZWJ, ZWNJ, soft hyphen, BOM), private use, unassigned,
  surrogates, and letters without a name in Python's Unicode database (Tangut ideographs).
- Invisible characters that are technically letters or marks are refused (Unicode
  Default_Ignorable: variation selectors, combining grapheme joiner, Hangul fillers, ...), and
  so is the Arabic tatweel: each would make a second name that displays like the first.
- NFKC-stable: `NFKC(name) == name`, which refuses compatibility characters (fullwidth Latin,
  halfwidth katakana, ligatures like `ﬁ`, superscripts, `ſ`) that imitate ordinary ones.
- No letter named `MODIFIER LETTER ...` (`ʼ` imitates an apostrophe).
- One script per name: the script of a non-ASCII letter is the first word of its Unicode name
  (`CJK` and `IDEOGRAPHIC` count as Han, `KATAKANA-HIRAGANA` as Katakana); ASCII letters are
  Latin; marks, digits, `-` and `_` belong to no script. A name's letters are all of one
  script, or all within Han + Hiragana + Katakana (Japanese), Han + Hangul (Korean) or Han +
  Bopomofo. This refuses `pаypal` with a Cyrillic `а`; it does not catch a name written wholly
  in look-alike letters of one script.
- Lookups (GET) are lenient about form: the name is NFC-normalised first (some keyboards send
  NFD) and ASCII uppercase is allowed, because current clients send the name as typed.
- Registrations (POST) are strict about form: the name must already be NFC and contain no
  ASCII `A-Z`. It is signed and written on-chain byte for byte, so the server cannot normalise
  it; clients ASCII-lowercase before registering, and a lowercase on-chain key keeps other name
  servers reading the same chain working. Non-ASCII uppercase (`É`) is allowed: clients do not
  lowercase it.
- Lookups and uniqueness use the fold `NFC(casefold(NFC(name)))`: `FooBar` finds `foobar`,
  `ß` matches `ss`, `ς` matches `σ`, `É` matches `é`, and only one of each can be registered.
"""  # noqa: RUF002 (the look-alike examples are the point)

import re
import unicodedata

__all__ = [
    "MAX_BYTES",
    "MAX_CHARS",
    "MIN_CHARS",
    "InvalidAddress",
    "InvalidName",
    "check_lookup_name",
    "check_registration_name",
    "decode_path_segment",
    "fold",
    "from_bytes32",
    "normalize_jami_id",
    "normalize_owner",
    "to_bytes32",
]

MIN_CHARS = 3
MAX_CHARS = 32
MAX_BYTES = 32

ZERO_OWNER = "0" * 40


class InvalidName(ValueError):
    """The name breaks the name policy; the message says why, for logs and tests."""


class InvalidAddress(ValueError):
    """A Jami ID or owner address that is not 40 hex digits (with its allowed prefixes)."""


_ASCII_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_ASCII_UPPERCASE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo"})
_MARK_CATEGORIES = frozenset({"Mn", "Mc"})
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

# Unicode 15 DerivedCoreProperties Default_Ignorable_Code_Point, plus U+0640 ARABIC TATWEEL.
# Only the letters and marks among them matter (the rest are Cf/Cn/Lo refused anyway), but the
# whole list is cheap and keeps the rule obvious.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x0640, 0x0640),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)

_SCRIPT_ALIASES = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "KATAKANA-HIRAGANA": "KATAKANA"}
_SCRIPT_COMBINATIONS = (
    frozenset({"HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"HAN", "HANGUL"}),
    frozenset({"HAN", "BOPOMOFO"}),
)

_JAMI_ID_RE = re.compile(r"(?:[jJ][aA][mM][iI]:|[rR][iI][nN][gG]:)?(?:0[xX])?([0-9a-fA-F]{40})")
_OWNER_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]{40})")


def decode_path_segment(raw: bytes | str) -> str:
    """Percent-decode a raw URL path segment as strict UTF-8 and return the text.

    `+` stays a `+` (it means a space only in query strings). A `%` not followed by two hex
    digits, invalid UTF-8, or a lone surrogate in `raw` raises InvalidName.
    """
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidName("not encodable as UTF-8") from exc
    decoded = bytearray()
    index = 0
    while index < len(raw):
        byte = raw[index]
        if byte == 0x25:  # '%'
            escape = raw[index + 1 : index + 3]
            if len(escape) != 2 or not all(chr(b) in _HEX_DIGITS for b in escape):
                raise InvalidName("malformed percent-escape")
            decoded.append(int(escape, 16))
            index += 3
        else:
            decoded.append(byte)
            index += 1
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidName("not valid UTF-8") from exc


def fold(name: str) -> str:
    """Return the key that lookups and uniqueness compare: NFC(casefold(NFC(name)))."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def check_lookup_name(name: str) -> str:
    """Validate a name from a lookup (NFC-normalised first, ASCII uppercase allowed).

    Returns the folded name; raises InvalidName.
    """
    normalized = unicodedata.normalize("NFC", name)
    _check_characters(normalized)
    return fold(normalized)


def check_registration_name(name: str) -> str:
    """Validate a name from a registration, which is signed and stored exactly as given.

    It must already be NFC and hold no ASCII uppercase. Returns the folded name; raises
    InvalidName.
    """
    if unicodedata.normalize("NFC", name) != name:
        raise InvalidName("not in NFC form")
    if any(ch in _ASCII_UPPERCASE for ch in name):
        raise InvalidName("ASCII uppercase in a registered name")
    _check_characters(name)
    return fold(name)


def _check_characters(name: str) -> None:
    """Apply the length, character and script rules to a name already in NFC form."""
    if not MIN_CHARS <= len(name) <= MAX_CHARS:
        raise InvalidName(f"must be {MIN_CHARS} to {MAX_CHARS} characters")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidName("lone surrogate") from exc
    if size > MAX_BYTES:
        raise InvalidName(f"more than {MAX_BYTES} UTF-8 bytes")
    if unicodedata.normalize("NFKC", name) != name:
        raise InvalidName("compatibility character (not NFKC-stable)")

    scripts: set[str] = set()
    after_letter = False  # whether a combining mark may come next
    for ch in name:
        if ch in _ASCII_NAME_CHARS:
            after_letter = ch.isalpha()
            if after_letter:
                scripts.add("LATIN")
            continue
        if ch.isascii():
            raise InvalidName(f"character {ch!r} not allowed")
        if _is_invisible(ch):
            raise InvalidName(f"invisible character U+{ord(ch):04X}")
        category = unicodedata.category(ch)
        if category in _MARK_CATEGORIES:
            if not after_letter:
                raise InvalidName(f"combining mark U+{ord(ch):04X} not after a letter")
            continue
        if category not in _LETTER_CATEGORIES:
            raise InvalidName(f"character U+{ord(ch):04X} ({category}) not allowed")
        char_name = unicodedata.name(ch, "")
        if char_name.startswith("MODIFIER LETTER"):
            raise InvalidName(f"modifier letter U+{ord(ch):04X} not allowed")
        if not char_name:
            raise InvalidName(f"unnamed letter U+{ord(ch):04X} not allowed")
        script = char_name.split(" ", 1)[0]
        scripts.add(_SCRIPT_ALIASES.get(script, script))
        after_letter = True

    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_COMBINATIONS):
        raise InvalidName("mixes scripts: " + ", ".join(sorted(scripts)))


def _is_invisible(ch: str) -> bool:
    code = ord(ch)
    return any(low <= code <= high for low, high in _INVISIBLE_RANGES)


def normalize_jami_id(value: str) -> str:
    """Return a Jami ID as 40 lowercase hex digits, without prefix.

    Accepts an optional `jami:` or `ring:` prefix (any case), then an optional `0x`, then 40
    hex digits in any case. Anything else (whitespace included) raises InvalidAddress.
    """
    match = _JAMI_ID_RE.fullmatch(value)
    if match is None:
        raise InvalidAddress("not a Jami ID: 40 hex digits expected")
    return match.group(1).lower()


def normalize_owner(value: str | None) -> str:
    """Return an owner (Ethereum) address as 40 lowercase hex digits, without `0x`.

    None or "" means no owner and gives 40 zeros. Raises InvalidAddress.
    """
    if not value:
        return ZERO_OWNER
    match = _OWNER_RE.fullmatch(value)
    if match is None:
        raise InvalidAddress("not an owner address: 40 hex digits expected")
    return match.group(1).lower()


def to_bytes32(name: str) -> bytes:
    """Return the contract key for a name: its UTF-8 bytes right-padded with zeros to 32."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidName("lone surrogate") from exc
    if len(encoded) > MAX_BYTES:
        raise InvalidName(f"more than {MAX_BYTES} UTF-8 bytes")
    if b"\x00" in encoded:
        raise InvalidName("NUL in name")  # would not survive the zero padding
    return encoded.ljust(MAX_BYTES, b"\x00")


def from_bytes32(raw: bytes) -> str:
    """Return the name held in a contract key: the bytes up to the zero padding, as UTF-8.

    An all-zero key (the contract's "no name") gives "". Raises InvalidName for more than 32
    bytes, invalid UTF-8, or a zero byte followed by non-zero bytes.
    """
    if len(raw) > MAX_BYTES:
        raise InvalidName(f"more than {MAX_BYTES} bytes")
    stripped = bytes(raw).rstrip(b"\x00")
    if b"\x00" in stripped:
        raise InvalidName("NUL inside the name")
    try:
        return stripped.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidName("not valid UTF-8") from exc
