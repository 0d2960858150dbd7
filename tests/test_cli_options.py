"""The command line's shared options."""

from __future__ import annotations


def test_shared_cli_options_are_declared_once():
    """--set, --device and --format come from one parent parser each (issue: no option
    written twice)."""
    import inspect

    from betaweighter import cli

    source = inspect.getsource(cli)
    for option in ('"--set"', '"--device"', '"--format"', '"--arch"'):
        assert source.count(f"add_argument({option}") == 1, option
    parser = cli._parser()
    args = parser.parse_args(["evaluate", "ck.pt", "--task", "linear", "--device", "cpu",
                              "--set", "a.b=1", "--format", "moco"])
    assert (args.device, args.overrides, args.format) == ("cpu", ["a.b=1"], "moco")
    assert parser.parse_args(["run", "demo", "--set", "x=1"]).overrides == ["x=1"]
