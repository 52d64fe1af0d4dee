"""``stoq plugin new NAME``: writes the skeleton of a plugin project, ready to test, install and run.

The project (``--dir``, default ``./NAME``) holds a ``pyproject.toml`` declaring the plugin in the
``stoq.plugins`` entry-point group, the package ``stoq_NAME`` with the plugin class (the shape of the
bundled ``basicworker``), a test that needs no broker, and a ``README.md`` page. Its test passes as
written. See docs/plugin-development.md.
"""

from __future__ import annotations

import keyword
from enum import Enum
from pathlib import Path
from string import Template
from typing import Annotated, Optional

import typer

from stoq.cli import ExitCode, StoqTyper, app, fail, say

plugin_app = StoqTyper(help="Plugin authoring (plugin new).", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")


class NewCategory(str, Enum):
    """The categories a skeleton can be written for: the scan plugins."""

    worker = "worker"
    carver = "carver"
    extractor = "extractor"
    decoder = "decoder"
    reader = "reader"


PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$summary"
requires-python = ">=3.11"
dependencies = ["stoq-analysis"]

[project.optional-dependencies]
test = ["pytest"]

# `pip install -e .` makes the plugin appear in `stoq list`: the entry-point name is the plugin's name.
[project.entry-points."stoq.plugins"]
$name = "$package.plugin:$cls"

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

PLUGIN = Template('''\
"""The ``$name`` $category."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import $base, Payload, PluginOptions, Result


class $cls($base):
    """$summary

    Output: ``{"size", "lines", "head"}``: the payload's size, its count of newlines, and its first
    ``head_bytes`` bytes as hex. Flag ``$name:empty`` for an empty payload.
    """

    name = "$name"  # the entry-point name, the queue in the cluster, what `--workers` names
    version = "0.1.0"

    class Options(PluginOptions):
        # Typed, with a default and a description; set with `-o $name.head_bytes=32`, stoq.toml or STOQ_*.
        head_bytes: int = Field(16, ge=0, le=4096, description="Leading bytes of the payload shown as hex.")

    # Plain code: never import Celery, never time yourself, never catch broadly. An exception is recorded
    # by the framework as this plugin's error on this payload; raise ToolMissing for a missing program.
    # A $category that finds payloads returns them as Result(children=[Extracted(content, filename)]).
    def scan(self, payload: Payload, options: Options) -> Result:
        content = payload.content
        data = {"size": payload.size, "lines": content.count(b"\\n"), "head": content[:options.head_bytes].hex()}
        return Result(data=data, flags=[] if content else ["$name:empty"])
''')

INIT = Template('''\
"""The ``$name`` stoq plugin."""

from $package.plugin import $cls

__all__ = ["$cls"]
''')

TEST = Template('''\
"""The ``$name`` plugin, in process: no broker, no engine."""

from __future__ import annotations

import hashlib

from stoq.plugin import Payload

from $package import $cls


def payload(content: bytes, mime: str = "application/octet-stream") -> Payload:
    """A depth-0 payload, as the framework builds it."""
    return Payload(content=content, payload_id="test", filename=None, mime=mime,
                   sha256=hashlib.sha256(content).hexdigest(), depth=0)


def test_counts_and_head() -> None:
    plugin = $cls()
    plugin.setup()
    result = plugin.scan(payload(b"MZ\\x90\\x00\\nline\\n"), $cls.Options(head_bytes=3))
    assert result.data == {"size": 10, "lines": 2, "head": "4d5a90"}
    assert result.children == [] and result.flags == []


def test_an_empty_payload_is_flagged() -> None:
    result = $cls().scan(payload(b""), $cls.Options())
    assert result.data == {"size": 0, "lines": 0, "head": ""} and result.flags == ["$name:empty"]
''')

README = Template('''\
# `$name` ($category)

$summary

## Install, test, run

```
pip install -e '.[test]'          # into the environment stoq runs from
pytest                            # the plugin's own tests: no broker needed
stoq list $name                   # its options
stoq doctor                       # ready to run here?
stoq scan FILE --workers $name    # embedded
celery -A stoq worker -Q $name    # in the cluster: a worker serving its own queue
```

## Options

| option | type | default | description |
|---|---|---|---|
| `head_bytes` | int, 0 to 4096 | `16` | Leading bytes of the payload shown as hex. |

## Output

`{"size", "lines", "head"}`: the payload's size, its count of newlines, its first `head_bytes` bytes as hex.

## Flags

| flag | when |
|---|---|
| `$name:empty` | the payload is empty. |
''')


def refusal(name: str) -> str | None:
    """Why ``name`` cannot name a new plugin, or None when it can."""
    from stoq.registry import NAME, Registry

    if not (name.isidentifier() and name.isascii() and name == name.lower() and NAME.match(name)) or keyword.iskeyword(name):
        return f"invalid plugin name {name!r}: a lower-case Python identifier of at most 64 characters"
    if name in Registry.discover().entries:
        return f"a plugin named {name!r} is already installed (see `stoq list {name}`)"
    return None


def skeleton(name: str, category: str) -> dict[str, str]:
    """The files of the project, by path relative to its directory."""
    package = f"stoq_{name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Plugin"
    fields = {"name": name, "category": category, "package": package, "cls": cls,
              "dist": f"stoq-plugin-{name.replace('_', '-')}", "base": f"{category.capitalize()}Plugin",
              "summary": "Counts a payload's bytes and lines and shows its first bytes as hex."}
    return {"pyproject.toml": PYPROJECT.substitute(fields), "README.md": README.substitute(fields),
            f"{package}/__init__.py": INIT.substitute(fields), f"{package}/plugin.py": PLUGIN.substitute(fields),
            f"tests/test_{name}.py": TEST.substitute(fields)}


@plugin_app.command("new")
def new(name: Annotated[str, typer.Argument(help="The plugin's name: a lower-case Python identifier, not an installed plugin's.")],
        dir: Annotated[Optional[Path], typer.Option("--dir", help="The project directory to write (default ./NAME); it must not exist.")] = None,
        category: Annotated[NewCategory, typer.Option("--category", "-c", help="worker, carver, extractor, decoder or reader.")] = NewCategory.worker) -> None:
    """Write the skeleton of a plugin project: pyproject with its entry point, the class, a test, a README."""
    problem = refusal(name)
    if problem:
        raise fail(problem, ExitCode.USAGE)
    target = dir if dir is not None else Path(name)
    try:
        target.mkdir(parents=True)  # never into an existing directory: nothing is overwritten
    except FileExistsError:
        raise fail(f"{target} exists: give a new directory with --dir", ExitCode.USAGE) from None
    except OSError as exc:
        raise fail(f"cannot create {target}: {exc.strerror}", ExitCode.USAGE) from None
    for relative, text in skeleton(name, category.value).items():
        path = target / relative
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    say(f"wrote the {category.value} plugin {name!r} in {target}: `pip install -e '{target}[test]'`, then `pytest {target}`")
