"""One TOML file configures every command: a table per command, keys are the command's option names.

    # memguard.toml
    [audit]
    steps = 50
    methods = "be,wen,ren"

    [generate]
    mitigate = "be-pe"

Keys are spelled like the options without their dashes (``n = 2`` for ``--n 2``, ``flag-method`` for
``--flag-method``). Command-line options override the file. Unknown tables or keys are errors, so a typo never passes silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from difflab_core.errors import DifflabError


def read_config(path: Path, commands: dict[str, click.Command]) -> dict[str, dict[str, Any]]:
    """Read ``path`` into click's ``default_map`` form: {command: {parameter_name: value}}."""
    if not path.is_file():
        raise DifflabError(f"{path}: config file not found")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise DifflabError(f"{path}: not valid TOML ({err})") from err
    out: dict[str, dict[str, Any]] = {}
    for table, values in doc.items():
        if table not in commands:
            raise DifflabError(f"{path}: unknown table [{table}]; tables are {', '.join(sorted(commands))}")
        if not isinstance(values, dict):
            raise DifflabError(f"{path}: [{table}] must be a table of options")
        names: dict[str, str] = {}  # option spelling (as on the command line, without dashes) -> parameter
        for param in commands[table].params:
            for opt in param.opts:
                if opt.startswith("--"):
                    names[opt[2:]] = param.name
        section: dict[str, Any] = {}
        for key, value in values.items():
            name = names.get(key) or names.get(key.replace("_", "-"))
            if name is None:
                raise DifflabError(
                    f"{path}: [{table}] has no option {key!r}; options are {', '.join(sorted(names))}"
                )
            section[name] = [str(v) for v in value] if isinstance(value, list) else value
        out[table] = section
    return out
