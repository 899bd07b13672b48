"""Prompts as users type them: free text on the command line becomes a Hydra string override.

Hydra's override grammar reads `prompts.text=a storm, oil on canvas` as a sweep (and refuses it
without `-m`), and stops at characters such as `ó`, `!` or `'`. genart takes a prompt's text as
typed instead:

- without `-m`, a prompt key's value is one text, commas included;
- with `-m`, commas separate the wordings of a sweep (`prompts.left=forest,desert`), and each
  wording is taken as typed; quote one to keep a comma inside it: `'prompts.left="a, b",c'`;
- any other value that Hydra cannot read only because of its characters (`init.image=café.png`)
  is quoted whole.

Values Hydra already reads as intended (quoted strings, lists, `range(…)`, `choice(…)`) pass
through unchanged.
"""

from __future__ import annotations

import re

# Prompt keys whose value is free text (prompts.images holds paths, a list).
TEXT_KEYS = frozenset(
    f"prompts.{k}"
    for k in (
        "text",
        "left",
        "center",
        "right",
        "suffix",
        "template",
        "entrance",
        "composition",
        "best_match.prompts",
    )
)
MULTIRUN_FLAGS = frozenset({"-m", "--multirun"})
VALUE_FLAGS = frozenset(
    {
        "-c",
        "--cfg",
        "-p",
        "--package",
        "-cp",
        "--config-path",
        "-cn",
        "--config-name",
        "-cd",
        "--config-dir",
        "--experimental-rerun",
    }
)  # noqa: E501
_OVERRIDE = re.compile(r"^(\+\+|\+|~)?([\w./@-]+?)=(.*)$", re.DOTALL)  # prefix, key, value
_SWEEP_FUNCTION = re.compile(r"^\s*\w+\(")  # choice(…), range(…), glob(…), interval(…)


def key_of(override: str) -> str:
    """The dotted key a command-line override sets: `+a.b=1`, `~a.b` and `a.b=1` all give `a.b`."""
    return override.lstrip("+~").partition("=")[0]


def is_multirun(argv: list[str]) -> bool:
    return any(a in MULTIRUN_FLAGS or a.lower() == "hydra.mode=multirun" for a in argv)


def quote(text: str) -> str:
    r"""`text` as a single-quoted Hydra string: `'` becomes `\'`, and backslashes that end the
    text or precede a quote are doubled (Hydra's rule: only those need escaping)."""
    body = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{body}'"


def as_typed(argv: list[str]) -> list[str]:
    """The command line with free-text values quoted for Hydra (see the module docstring)."""
    multirun = is_multirun(argv)
    after_flag = [i > 0 and argv[i - 1] in VALUE_FLAGS for i in range(len(argv))]  # `--cfg job`
    return [a if flag else _as_typed(a, multirun) for a, flag in zip(argv, after_flag, strict=True)]


def _as_typed(arg: str, multirun: bool) -> str:
    match = _OVERRIDE.match(arg)
    if arg.startswith("-") or not match:
        return arg
    prefix, key, value = match.group(1) or "", match.group(2), match.group(3)
    parsed = _parse(arg)
    if key in TEXT_KEYS:
        value = _text_value(value, parsed, multirun)
    elif parsed is None and value[:1] not in "[{":
        value = quote(value)  # lists and dicts keep Hydra's own error
    else:
        return arg
    fixed = f"{prefix}{key}={value}"
    return fixed if _parse(fixed) is not None else arg  # never worse than what was typed


def _text_value(value: str, parsed, multirun: bool) -> str:
    if parsed is not None:
        if parsed.is_sweep_override():
            if multirun or _SWEEP_FUNCTION.match(value):
                return value
            return quote(value)  # one text with commas in it
        typed = parsed.value()
        return quote(value) if isinstance(typed, (int, float, bool)) else value  # "1984" is text
    if not multirun:
        return quote(value)
    words = [w.strip() for w in value.split(",")]
    return ",".join(w if _parse(f"k={w}") is not None else quote(w) for w in words)


def _parse(override: str):
    """Hydra's reading of one override, or None where its grammar refuses it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(override)
    except HydraException:
        return None
