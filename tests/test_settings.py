"""
Tests for :mod:`nixeryd.app.settings`: the definitions both commands share.
"""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.settings import (
    LAYER_BUDGET,
    NIX_OPTION,
    NIX_TIMEOUT,
    THREADS,
    SourceSetting,
    read_nix_options,
    read_source,
)
from nixeryd.core import defaults


class DescribeTests(SynchronousTestCase):
    """Help texts."""

    def test_defaults_from_one_place(self) -> None:
        """The help says the default and the range of nixeryd.core.defaults."""
        text = LAYER_BUDGET.describe(variables=True)
        self.assertIn("1 to %d" % (defaults.MAX_LAYER_BUDGET,), text)
        self.assertIn("(default %d)" % (defaults.LAYER_BUDGET,), text)
        self.assertIn("(default %d)" % (defaults.LAYER_THREADS,), THREADS.describe(True))
        self.assertIn("(default 600)", NIX_TIMEOUT.describe(True))

    def test_variable_only_where_read(self) -> None:
        """The variable is named only for a command that reads the environment."""
        self.assertTrue(NIX_TIMEOUT.describe(True).endswith(" [NIX_TIMEOUT]."))
        self.assertNotIn("NIX_TIMEOUT", NIX_TIMEOUT.describe(False))
        self.assertIn("[NIXERY_NIX_OPTIONS, ';'-separated]", NIX_OPTION.describe(True))

    def test_parameter(self) -> None:
        """The optParameters entry has no default, so an unset option is seen."""
        self.assertEqual(NIX_TIMEOUT.parameter(False),
                         ["nix-timeout", None, None, NIX_TIMEOUT.describe(False)])


class ReadTests(SynchronousTestCase):
    """Reading and checking a value."""

    def test_option_then_variable_then_default(self) -> None:
        """The option wins over the variable; the default comes last."""
        env = {"NIX_TIMEOUT": "30"}
        self.assertEqual(NIX_TIMEOUT.read({"nix-timeout": "5"}, env), 5.0)
        self.assertEqual(NIX_TIMEOUT.read({}, env), 30.0)
        self.assertEqual(NIX_TIMEOUT.read({}, {"NIX_TIMEOUT": ""}), defaults.NIX_TIMEOUT)

    def test_without_environment(self) -> None:
        """Without an environment, only the option counts."""
        self.assertEqual(NIX_TIMEOUT.read({}, None), defaults.NIX_TIMEOUT)

    def test_messages(self) -> None:
        """Errors are one line naming the variable only where it is read."""
        error = self.assertRaises(UsageError, LAYER_BUDGET.read,
                                  {"layer-budget": str(defaults.MAX_LAYER_BUDGET + 1)}, {})
        self.assertEqual(str(error), "NIXERY_LAYER_BUDGET/--layer-budget (1 to %d):"
                         " '%d' is out of range" % (defaults.MAX_LAYER_BUDGET,
                                                    defaults.MAX_LAYER_BUDGET + 1))
        error = self.assertRaises(UsageError, LAYER_BUDGET.read, {"layer-budget": "x"}, None)
        self.assertEqual(str(error), "--layer-budget (1 to %d): 'x' is not valid"
                         % (defaults.MAX_LAYER_BUDGET,))


class SourceTests(SynchronousTestCase):
    """The package source."""

    def test_options_before_variables(self) -> None:
        """Any source option wins over every variable."""
        self.assertEqual(read_source({"pkgs-path": "/p"}, {"NIXERY_CHANNEL": "c"}),
                         SourceSetting("path", "/p"))

    def test_missing_without_environment(self) -> None:
        """Without an environment, the message names only the options."""
        error = self.assertRaises(UsageError, read_source, {}, None)
        self.assertEqual(str(error),
                         "no package source: give --pkgs-path, --pkgs-repo or --channel")


class NixOptionTests(SynchronousTestCase):
    """Nix options."""

    def test_without_environment(self) -> None:
        """Without an environment, only the repeated option counts."""
        self.assertEqual(read_nix_options({"nix-option": ["a=1", "a=2", "b="]}, None),
                         (("a", "2"), ("b", "")))
