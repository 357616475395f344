"""Bearer tokens with roles: the token file, creating tokens, checking a presented token.

The token file is JSON Lines, one token a line, and never holds a token itself,
only its SHA-256::

    {"name": "labeling-ui", "sha256": "9f86d0...", "roles": ["score"], "created_at": "..."}

Why SHA-256 and not scrypt/PBKDF2: those slow hashes exist to protect guessable
passwords. Our tokens are 256 random bits (:func:`new_token`), so inverting
their SHA-256 is as hopeless as guessing the token, and a fast hash keeps the
check on every call in microseconds instead of adding a deliberately slow
(and CPU-exhaustible) step to each request. Blank lines and lines starting
with ``#`` are ignored. Errors name the file and line.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_PREFIX = "lw_"
"""Every token made here starts with this, so secret scanners and people recognise it."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = frozenset({"name", "sha256", "roles", "created_at"})


class Role(enum.Enum):
    """What a token may call. ``admin`` may call everything."""

    SCORE = "score"  # labelwatch.v1.LabelQuality: Score, ScoreStream, ScoreBatch, GetModelInfo
    WATCH = "watch"  # labelwatch.v1.FlagFeed: WatchFlags, AckFlags
    ADMIN = "admin"  # any other service, and every role above


ROLE_NAMES = tuple(r.value for r in Role)


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class TokenEntry:
    """One line of the token file: a name for logs, the token's SHA-256, its roles."""

    name: str
    sha256: bytes  # 32 raw bytes
    roles: frozenset[Role]
    created_at: str = ""

    def allows(self, role: Role) -> bool:
        """True if this token may call a method that needs ``role``."""
        return role in self.roles or Role.ADMIN in self.roles

    def to_line(self) -> str:
        """The JSON line stored in the token file (no newline)."""
        return json.dumps(
            {
                "name": self.name,
                "sha256": self.sha256.hex(),
                "roles": sorted(r.value for r in self.roles),
                "created_at": self.created_at,
            }
        )


def new_token() -> str:
    """A fresh token: ``lw_`` and 43 URL-safe characters (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 bytes (32 raw bytes)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_roles(values: Iterable[str]) -> frozenset[Role]:
    """Role names (each may be comma-separated) -> roles; ValueError names a bad one."""
    roles: set[Role] = set()
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            try:
                roles.add(Role(name))
            except ValueError:
                raise ValueError(
                    f"unknown role {part.strip()!r}; roles are {', '.join(ROLE_NAMES)}"
                ) from None
    if not roles:
        raise ValueError(f"give at least one role ({', '.join(ROLE_NAMES)})")
    return frozenset(roles)


def check_name(name: str) -> str:
    """Return ``name`` if it is a usable token name; ValueError says what is allowed."""
    if not _NAME.match(name):
        raise ValueError(
            f"token name {name!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _entry_from_line(line: str, where: str) -> TokenEntry:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TokenFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(raw, dict):
        raise TokenFileError(f"{where}: expected a JSON object per line")
    if "token" in raw:
        # someone pasted a plain token: refuse, and do not echo it back
        raise TokenFileError(
            f"{where}: plain tokens are not accepted; store the token's sha256 instead "
            "(`labelwatch token create` writes the line for you)"
        )
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise TokenFileError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"fields are {', '.join(sorted(_FIELDS))}"
        )
    name = raw.get("name")
    if not isinstance(name, str):
        raise TokenFileError(f"{where}: field 'name': must be a string")
    try:
        check_name(name)
    except ValueError as exc:
        raise TokenFileError(f"{where}: field 'name': {exc}") from None
    digest = raw.get("sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise TokenFileError(f"{where}: field 'sha256': must be 64 lowercase hex digits")
    roles = raw.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenFileError(f"{where}: field 'roles': must be a list of role names")
    try:
        parsed = parse_roles(roles)
    except ValueError as exc:
        raise TokenFileError(f"{where}: field 'roles': {exc}") from None
    created = raw.get("created_at", "")
    if not isinstance(created, str):
        raise TokenFileError(f"{where}: field 'created_at': must be a string")
    return TokenEntry(name, bytes.fromhex(digest), parsed, created)


def parse_token_lines(text: str, source: str) -> list[TokenEntry]:
    """Parse token-file text; ``source`` names it in errors. Names and hashes must be unique."""
    entries: list[TokenEntry] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source}: line {number}"
        entry = _entry_from_line(stripped, where)
        if entry.name in names:
            raise TokenFileError(
                f"{where}: name {entry.name!r} is already used on line {names[entry.name]}"
            )
        if entry.sha256 in digests:
            raise TokenFileError(f"{where}: same sha256 as line {digests[entry.sha256]}")
        names[entry.name] = number
        digests[entry.sha256] = number
        entries.append(entry)
    return entries


class TokenStore:
    """The accepted tokens. :meth:`verify` runs in time independent of which entry matches."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[TokenEntry, ...]:
        """The entries, in file order."""
        return self._entries

    def verify(self, token: str) -> TokenEntry | None:
        """The entry whose hash matches ``token``, or None.

        Every entry is compared with :func:`hmac.compare_digest`, with no early
        exit, so timing does not tell which entry (or how much of one) matched.
        """
        digest = token_digest(token)
        found: TokenEntry | None = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        return found


def load_tokens(path: Path) -> TokenStore:
    """Read and validate the token file at ``path``.

    Raises :class:`TokenFileError` (naming file and line) when it cannot be read
    or holds a bad line, or holds no token at all. Logs a warning when other
    users may write the file (they could add themselves a token).
    """
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc}") from exc
    entries = parse_token_lines(text, str(path))
    if not entries:
        raise TokenFileError(
            f"token file {path} holds no tokens: every call would be refused; "
            "create one with `labelwatch token create --role score --file "
            f"{path}`"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning(
            "event=token_file_writable_by_others path=%s mode=%o: anyone who can write it can "
            "grant themselves access; chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return TokenStore(entries)


def create_token(
    path: Path, roles: frozenset[Role], name: str | None = None
) -> tuple[str, TokenEntry]:
    """Make a token, append its hash to the file at ``path`` (created 0600); return both.

    The token itself is returned once and stored nowhere. Raises
    :class:`TokenFileError` if the existing file is invalid or ``name`` is taken,
    ValueError for a bad name.
    """
    existing: list[TokenEntry] = []
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"cannot read token file {path}: {exc}") from exc
        existing = parse_token_lines(text, str(path))
    else:
        text = ""
    token = new_token()
    digest = token_digest(token)
    chosen = check_name(name) if name is not None else f"token-{digest.hex()[:8]}"
    if any(e.name == chosen for e in existing):
        raise TokenFileError(f"{path}: a token named {chosen!r} exists already; pick another name")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry = TokenEntry(chosen, digest, roles, created)
    line = entry.to_line() + "\n"
    if text and not text.endswith("\n"):
        line = "\n" + line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)
    return token, entry
