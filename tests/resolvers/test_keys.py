"""The pure key checks of evlink/resolvers/auth.py that the format tests in test_auth.py
leave implicit: the hash, the entropy of a key, a cached key's user. No database."""

from __future__ import annotations

import hashlib

from evlink.cache import ReadCache, user_tag
from evlink.resolvers.auth import _ALPHABET, cached_user, hash_key, new_key


def _value(base62: str) -> int:
    value = 0
    for char in base62:
        value = value * 62 + _ALPHABET.index(char)
    return value


def test_a_key_is_stored_as_the_sha256_of_its_utf8_text() -> None:
    for key in ("evl_abc", "évl_ß", ""):
        assert hash_key(key) == hashlib.sha256(key.encode("utf-8")).hexdigest()


def test_the_random_part_is_192_bits_in_base62() -> None:
    """62**33 > 2**192: the random part's value stays below 2**192 and reaches its top
    bits (a key drawn from more or fewer bytes would not)."""
    values = [_value(new_key()[4:37]) for _ in range(200)]
    assert all(value < 2**192 for value in values)
    assert max(values) >= 2**190


def test_a_key_in_the_cache_gives_its_user_without_a_lookup() -> None:
    cache = ReadCache(5.0)
    user = object()
    digest = hash_key("evl_cached")
    assert cached_user(cache, digest) is None
    cache.put(("key", digest), user, tags=[user_tag(1)], began=cache.begin())
    assert cached_user(cache, digest) is user
    assert cached_user(cache, hash_key("evl_other")) is None
    cache.drop(user_tag(1))
    assert cached_user(cache, digest) is None
    off = ReadCache(0.0)
    assert cached_user(off, digest) is None
