"""
Tests for :mod:`nixeryd.core.text`: sizes, URLs without credentials and
package sources, as every part of nixeryd shows them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.core.text import describe_source_setting, human_size, without_credentials


class WithoutCredentialsTests(SynchronousTestCase):
    """:func:`without_credentials`."""

    def test_user_dropped(self) -> None:
        """The user part of a URL is left out; everything else stays."""
        for given, shown in (
                ("https://token@host/x.git", "https://host/x.git"),
                ("https://user:pass@host:8443/a/b?c", "https://host:8443/a/b?c"),
                ("https://host/x.git", "https://host/x.git"),
                ("file:///srv/pkgs", "file:///srv/pkgs"),
                ("git@github.com:o/r.git", "git@github.com:o/r.git"),
                ("/srv/pkgs", "/srv/pkgs"),
                ("error: cannot fetch 'https://u:t@git.example/p.git': denied",
                 "error: cannot fetch 'https://git.example/p.git': denied")):
            with self.subTest(given=given):
                self.assertEqual(without_credentials(given), shown)


class HumanSizeTests(SynchronousTestCase):
    """:func:`human_size`: decimal units, one decimal."""

    def test_sizes(self) -> None:
        self.assertEqual([human_size(n) for n in (0, 999, 1000, 1536, 999_949, 999_950,
                                                 12_345_678, 5 * 10 ** 9)],
                         ["0 B", "999 B", "1.0 kB", "1.5 kB", "999.9 kB", "1.0 MB",
                          "12.3 MB", "5.0 GB"])


class DescribeSourceSettingTests(SynchronousTestCase):
    """The configured source, as people read it."""

    def test_kinds(self) -> None:
        """Each kind by its name; git URLs without their user information."""
        self.assertEqual(describe_source_setting("path", "/srv/pkgs"), "path /srv/pkgs")
        self.assertEqual(describe_source_setting("channel", "nixos-unstable"),
                         "channel nixos-unstable")
        self.assertEqual(describe_source_setting(
            "repo", "https://user:secret@example.test/pkgs.git"),
            "git https://example.test/pkgs.git")
        self.assertEqual(describe_source_setting("repo", "git@example.test:pkgs.git"),
                         "git git@example.test:pkgs.git")
