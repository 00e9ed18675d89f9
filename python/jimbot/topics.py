"""Topic names and subscription patterns, as the bus reads them.

A topic is one or more tokens separated by ``.``: ``game_events``,
``game_events.hand_played``. A token is 1 to 64 bytes of printable ASCII
other than ``.``, ``*``, ``>`` and space; a topic has at most 16 tokens and
255 bytes. A pattern may also use ``*`` for exactly one token and, as its
last token only, ``>`` for one or more remaining tokens (as NATS subjects
do):

=================  ==============================================  =============================
pattern            matches                                         does not match
=================  ==============================================  =============================
``game_events.*``  ``game_events.hand_played``                     ``game_events``, ``game_events.a.b``
``game_events.>``  ``game_events.hand_played``, ``game_events.a.b``  ``game_events``
``*.b.>``          ``a.b.c``, ``x.b.c.d``                          ``a.b``, ``a.c.d``
=================  ==============================================  =============================

These rules mirror ``include/jimbot/topic.h`` (the C engine's) so that
:class:`jimbot.testing.MockEventBus` refuses and routes exactly what the
real bus does, and the client can refuse a bad topic before a round trip.
"""

from .errors import InvalidArgumentError

MAX_TOPIC_BYTES = 255
MAX_TOKENS = 16
MAX_TOKEN_BYTES = 64

__all__ = ["validate_topic", "validate_pattern", "matches", "MAX_TOPIC_BYTES", "MAX_TOKENS",
           "MAX_TOKEN_BYTES"]


def _token_char_ok(c: int) -> bool:
    return 0x20 < c < 0x7F and c not in (0x2E, 0x2A, 0x3E)  # '.', '*', '>'


def _validate(s: str, allow_wildcards: bool) -> None:
    what = "pattern" if allow_wildcards else "topic"
    if not isinstance(s, str):
        raise TypeError(f"{what} must be a str, not {type(s).__name__}")
    if not s:
        raise InvalidArgumentError(f"empty {what}")
    raw = s.encode("utf-8")
    if len(raw) > MAX_TOPIC_BYTES:
        raise InvalidArgumentError(f"{what} is {len(raw)} bytes long (at most {MAX_TOPIC_BYTES})")
    tokens = raw.split(b".")
    offset = 0
    for i, tok in enumerate(tokens):
        last = i == len(tokens) - 1
        if not tok:
            raise InvalidArgumentError(f"{what} '{s}' has an empty token at byte {offset}")
        if len(tok) > MAX_TOKEN_BYTES:
            raise InvalidArgumentError(
                f"{what} '{s}' has a token of {len(tok)} bytes (at most {MAX_TOKEN_BYTES})")
        wildcard = tok in (b"*", b">")
        if wildcard and not allow_wildcards:
            raise InvalidArgumentError(
                f"topic '{s}' contains the wildcard '{tok.decode()}' (only patterns may)")
        if tok == b">" and not last:
            raise InvalidArgumentError(f"pattern '{s}': '>' must be the last token")
        if not wildcard:
            for j, c in enumerate(tok):
                if not _token_char_ok(c):
                    hint = " (wildcards must be whole tokens)" if c in (0x2A, 0x3E) else ""
                    raise InvalidArgumentError(
                        f"{what} '{s}' has an invalid character 0x{c:02x} at byte "
                        f"{offset + j}{hint}")
        offset += len(tok) + 1
    if len(tokens) > MAX_TOKENS:
        raise InvalidArgumentError(f"{what} '{s}' has {len(tokens)} tokens (at most {MAX_TOKENS})")


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid topic (no wildcards).

    Raises :class:`jimbot.errors.InvalidArgumentError` with the reason
    otherwise (for example ``topic 'a..b' has an empty token at byte 2``).
    """
    _validate(topic, False)
    return topic


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise
    :class:`jimbot.errors.InvalidArgumentError`."""
    _validate(pattern, True)
    return pattern


def matches(pattern: str, topic: str) -> bool:
    """True if the valid ``pattern`` matches the valid ``topic``.

    ``*`` stands for exactly one token; ``>`` (last token only) for one or
    more remaining tokens. Neither argument is validated here.
    """
    p = pattern.split(".")
    t = topic.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(p) == len(t)
