"""
Secrets stay out of the logs: :func:`nixeryd.core.text.without_secrets`,
and both log observers, which pass every line through it whatever field or
message carries the secret.
"""

from __future__ import annotations

import base64
import io
import json
import random

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app import logs
from nixeryd.app.logs import JSONLinesObserver, TextLinesObserver, event_as_json
from nixeryd.core import text as text_module
from nixeryd.core.text import hide_secret_patterns, may_hold_secret, without_secrets

PASSWORD = "Wonderland-7f3a"
BASIC = base64.b64encode(("alice:" + PASSWORD).encode()).decode()
JWT = ("eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9."
       "4L9v9M1gKK3gdlvAX6mRIedsROsdTOT6QOO2evFRUEiD8I3ow7govC36")
SIGNED = ("https://storage.googleapis.com/bucket/blobs/sha256/ab?X-Goog-Algorithm="
          "GOOG4-RSA-SHA256&X-Goog-Credential=svc%40proj.iam.gserviceaccount.com%2F20260101"
          "&X-Goog-Date=20260101T000000Z&X-Goog-Expires=600&X-Goog-SignedHeaders=host"
          "&X-Goog-Signature=0123456789abcdef0123456789abcdef")

#: Texts with a secret, and the secret.
CASES = [
    ("Authorization: Basic " + BASIC, BASIC),
    ("authorization: bearer " + JWT, JWT),
    ("token " + JWT + " given", JWT),
    ("redirect to " + SIGNED, "0123456789abcdef0123456789abcdef"),
    ("redirect to " + SIGNED, "svc%40proj"),
    ("POST /token grant_type=password&username=alice&password=" + PASSWORD, PASSWORD),
    ("GET /x?access_token=" + PASSWORD + "&y=1", PASSWORD),
    ("git https://alice:" + PASSWORD + "@example.org/pkgs.git", PASSWORD),
]


class WithoutSecretsTests(SynchronousTestCase):
    """:func:`without_secrets`."""

    def test_secrets_hidden(self) -> None:
        for text, secret in CASES:
            self.assertNotIn(secret, without_secrets(text), text)

    def test_what_stays(self) -> None:
        """What says what happened stays: names, paths, digests, the kind of credential."""
        self.assertEqual(without_secrets("Authorization: Basic " + BASIC),
                         "Authorization: Basic (hidden)")
        self.assertIn("X-Goog-Date=20260101T000000Z", without_secrets(SIGNED))
        self.assertIn("storage.googleapis.com/bucket/blobs/sha256/ab", without_secrets(SIGNED))
        plain = ("127.0.0.1 GET /v2/shell/git/blobs/sha256:" + "a" * 64 + " 200 1234 0.01"
                 " the user bob may not pull secret: basic rules; HTTPS, Basic authentication"
                 " (users of /etc/nixeryd/htpasswd), Bearer Authentication, bearer tokens")
        self.assertEqual(without_secrets(plain), plain)


class Shown:
    """An object that JSON cannot hold, logged as its ``repr``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return "Shown(%s)" % (self.text,)


class Segments(str):
    """
    A string whose own ``in``, ``lower`` and ``isascii`` speak of something
    else (as a path type's ``in`` may look for a segment): what it holds is
    what JSON and the patterns see.
    """

    def __contains__(self, part: object) -> bool:
        return False

    def lower(self) -> str:
        return ""

    def isascii(self) -> bool:
        return True


class QuickTestTests(SynchronousTestCase):
    """
    :func:`may_hold_secret`, the quick test that lets most lines skip the
    patterns, never lets through a text the patterns would change, neither
    as it is nor JSON-encoded.
    """

    #: Pieces the random texts are made of: parts of every pattern, in
    #: both cases, characters JSON escapes, and non-ASCII letters that
    #: case-blind matching takes for ASCII ones.
    PIECES = ["Basic ", "bearer ", "BEARER\t", "ba\u017fic ", "to\u212aen", "eyJ", "eyJhbGci",
              ".", "@", "://", "https", "user:pw", "token", "password", "X-Goog-Signature",
              "X-Amz-Credential", "=", "&", "?", '"', "\\", "\n", "/", " ", "abcDEF012",
              "QWxhZGRpbjpvcGVu", "-_~+", "\u00e9", "sha256:ab"]

    def texts(self) -> list[str]:
        chooser = random.Random(20261201)
        texts = [text for text, _ in CASES]
        for _ in range(20000):
            texts.append("".join(chooser.choice(self.PIECES)
                                 for _ in range(chooser.randint(1, 8))))
        return texts

    def test_never_misses(self) -> None:
        changed = 0
        for text in self.texts():
            if hide_secret_patterns(text) != text:
                changed += 1
                self.assertTrue(may_hold_secret(text), text)
                self.assertTrue(may_hold_secret(json.dumps(text)), text)
            self.assertEqual(without_secrets(text), hide_secret_patterns(text))
        # The random texts do reach the patterns.
        self.assertGreater(changed, 1000)

    def test_string_subclass(self) -> None:
        """What a string subclass holds counts, not what its methods say."""
        for text, secret in CASES:
            self.assertTrue(may_hold_secret(Segments(text)), text)
            self.assertNotIn(secret, without_secrets(Segments(text)), text)

    def events(self) -> list[dict[str, object]]:
        """
        Events with the random texts in every place a field can hold a
        string: as it is, in a list, a tuple, a dict's keys and values,
        nested, as a string subclass, as bytes or an object logged as its
        ``repr``, in the message, beside values JSON cannot hold.
        """
        chooser = random.Random(20261202)
        texts = self.texts()
        events: list[dict[str, object]] = []
        for _ in range(3000):
            one, two, three = (chooser.choice(texts) for _ in range(3))
            fields: list[object] = [
                one, [one, 1, None], (2.5, one), {one: two}, {"a": [{"b": one}], 1: two},
                Segments(one), one.encode("utf-8", "surrogatepass"), Shown(one),
                [Shown(one)], {(1, 2): one}, {True: one, None: [two]}]
            event: dict[str, object] = {
                "log_format": "{method} {path} {status}", "method": "GET", "path": three,
                "status": 200, "log_level": LogLevel.info, "log_namespace": "test",
                "log_time": 0.0}
            for number in range(chooser.randint(0, 3)):
                event["field%d" % (number,)] = chooser.choice(fields)
            events.append(event)
        return events

    def test_lines_as_without_quick_test(self) -> None:
        """
        Every JSON line is the one written when every string goes through
        every pattern.
        """
        events = self.events()
        quick = [event_as_json(event) for event in events]
        self.patch(text_module, "may_hold_secret", lambda text: True)
        self.patch(logs, "may_hold_secret", lambda text: True)
        for event, line in zip(events, quick):
            self.assertEqual(line, event_as_json(event))
        # Some lines skip the patterns, some do not; some are changed.
        skipped = sum(not may_hold_secret(line) for line in quick)
        self.assertGreater(skipped, 100)
        self.assertGreater(len(quick) - skipped, 100)

    def test_access_line_passes(self) -> None:
        """An access line, the most common, needs no pattern."""
        line = json.dumps({"method": "GET", "path": "/v2/shell/git/manifests/latest",
                           "status": 200, "bytes": 3047, "duration": 0.000147,
                           "client": "127.0.0.1", "user": None, "log_level": "info"})
        self.assertFalse(may_hold_secret(line))


class ObserverTests(SynchronousTestCase):
    """Both observers write no secret, whether in the message or in a field."""

    def events(self) -> list[dict[str, object]]:
        return [{"log_format": "Failed: {detail}", "detail": text, "other": text,
                 "log_level": LogLevel.warn, "log_namespace": "test", "log_time": 0.0}
                for text, _ in CASES]

    def test_json(self) -> None:
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        for event in self.events():
            observer(event)
        written = stream.getvalue()
        for _, secret in CASES:
            self.assertNotIn(secret, written)
        for line in written.splitlines():
            json.loads(line)

    def test_json_nested(self) -> None:
        """
        A secret in a dict's key or value, in a list, or in the ``repr`` of
        what JSON cannot hold is hidden too.
        """
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        for text, _ in CASES:
            observer({"log_format": "done", "headers": {text: [text, 1]}, "tried": (text,),
                      "object": Shown(text), "raw": text.encode(), "named": Segments(text),
                      "log_level": LogLevel.info, "log_namespace": "test", "log_time": 0.0})
        written = stream.getvalue()
        for _, secret in CASES:
            self.assertNotIn(secret, written)
        self.assertEqual(len([json.loads(line) for line in written.splitlines()]), len(CASES))

    def test_json_stays_json(self) -> None:
        """
        A secret followed by a quote or holding a backslash (a request's
        path is the client's to choose) is hidden, and every line stays
        one JSON object with the fields it had.
        """
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        paths = ['/v2/?token=ab"x', '/v2/token=ab\\"user":"admin', "/x?password=se\\cret&y=1"]
        for path in paths:
            observer({"log_format": "GET {path}", "path": path, "user": None,
                      "log_level": LogLevel.info, "log_namespace": "test", "log_time": 0.0})
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        self.assertEqual(len(lines), len(paths))
        for line in lines:
            self.assertIsNone(line["user"])
            self.assertIn("(hidden)", line["path"])
            self.assertEqual(line["log_text"], "GET " + line["path"])
        for secret in ("ab", "se\\cret", "cret"):
            self.assertNotIn(secret, stream.getvalue())

    def test_text(self) -> None:
        stream = io.StringIO()
        observer = TextLinesObserver(stream)
        for event in self.events():
            observer(event)
        for _, secret in CASES:
            self.assertNotIn(secret, stream.getvalue())
