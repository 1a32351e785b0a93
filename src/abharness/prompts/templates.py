"""Versioned prompt templates: ``prompts/<name>/v<N>.j2``.

A template is YAML front matter between ``---`` lines, then a Jinja body whose
top-level blocks are the messages: ``system``, ``user``, ``assistant`` (a suffix such
as ``user_2`` allows several few-shot turns), in the order they appear in the root
template; or one ``prompt`` block for raw completion. A child may ``{% extends %}`` an
earlier version and override any block, nested ones included.

Rendering is sandboxed with strict undefined variables. A template's identity is
``name@N`` plus a content hash over its own source and everything it extends,
includes or imports, so editing a parent changes every child's hash.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import (
    BaseLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import TemplateError
from ..hashing import content_hash
from ..spec.files import check_unique_keys, read_utf8

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.j2$")
_REF = re.compile(r"^([a-z0-9][a-z0-9_-]*)(?:@([1-9][0-9]*))?$")
_ROLE_BLOCK = re.compile(r"^(system|user|assistant)(?:_?[0-9]+)?$")


class TruncateRule(BaseModel):
    """One variable the builder may shorten; ``keep`` says which end survives."""

    model_config = ConfigDict(extra="forbid")
    var: str
    keep: Literal["head", "tail"] = "head"


class FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    variables: list[str] = Field(default_factory=list)
    truncate: list[TruncateRule] = Field(default_factory=list)


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class RenderedPrompt:
    """What a provider sends: chat ``messages`` or one raw ``prompt``, never both."""

    messages: tuple[Message, ...] = ()
    prompt: str | None = None

    @property
    def is_raw(self) -> bool:
        return self.prompt is not None

    @property
    def text(self) -> str:
        """Human-readable form stored as ``calls.prompt_text``."""
        if self.prompt is not None:
            return self.prompt
        return "\n\n".join(f"[{m.role}]\n{m.content}" for m in self.messages)

    def as_json(self) -> Any:
        if self.prompt is not None:
            return {"prompt": self.prompt}
        return {"messages": [{"role": m.role, "content": m.content} for m in self.messages]}


def split_front_matter(source: str, path: Path) -> tuple[dict[str, Any], str]:
    """Return (front matter, body) with the front matter replaced by blank lines,
    so Jinja's line numbers still match the file."""
    if not source.startswith("---"):
        return {}, source
    lines = source.split("\n")
    for end in range(1, len(lines)):
        if lines[end].rstrip() == "---":
            break
    else:
        raise TemplateError("front matter opened with '---' is never closed", file=path, line=1)
    try:
        text = "\n".join(lines[1:end])
        check_unique_keys(yaml.compose(text), path, TemplateError, line_offset=1)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        raise TemplateError(f"front matter is not valid YAML: {exc}", file=path, line=line) from exc
    if not isinstance(data, dict):
        raise TemplateError("front matter must be a YAML mapping", file=path, line=2)
    body = "\n" * (end + 1) + "\n".join(lines[end + 1 :])
    return data, body


class _FrontMatterLoader(BaseLoader):
    """Loads ``name/vN.j2`` from the prompts directory with front matter blanked out."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Any]:
        path = (self.root / template).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            raise TemplateNotFound(template)
        source = read_utf8(path, TemplateError)
        _, body = split_front_matter(source, path)
        mtime = path.stat().st_mtime
        return body, str(path), lambda: path.stat().st_mtime == mtime


@dataclass
class PromptTemplate:
    """One resolved ``name@N``, ready to render."""

    name: str
    version: int
    path: Path
    front: FrontMatter
    hash: str
    chain: list[str]  # this template, then its parents up to the root
    blocks: list[str]  # message blocks in document order of the root template
    _library: PromptLibrary = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, variables: dict[str, Any]) -> RenderedPrompt:
        """Render the message blocks; a missing variable is a `TemplateError`."""
        env = self._library.env
        try:
            templates = [env.get_template(name) for name in self.chain]
            ctx = templates[0].new_context(dict(variables))
            for parent in templates[1:]:
                for name, fn in parent.blocks.items():
                    ctx.blocks.setdefault(name, []).append(fn)
            rendered = {name: "".join(ctx.blocks[name][0](ctx)) for name in self.blocks}
        except UndefinedError as exc:
            raise TemplateError(f"{exc.message}; the case must provide it", file=self.path) from exc
        except SecurityError as exc:
            raise TemplateError(f"unsafe operation in template: {exc}", file=self.path) from exc
        if self.blocks == ["prompt"]:
            return RenderedPrompt(prompt=rendered["prompt"])
        messages = []
        for name in self.blocks:
            content = rendered[name].strip()
            if content:
                messages.append(Message(role=_ROLE_BLOCK.match(name).group(1), content=content))  # type: ignore[union-attr]
        return RenderedPrompt(messages=tuple(messages))


class PromptLibrary:
    """The templates under one prompts directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._loader = _FrontMatterLoader(self.root)
        self.env = ImmutableSandboxedEnvironment(
            loader=self._loader,
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            # a run renders the templates it hashed at its start: no stat() per render
            auto_reload=False,
        )
        self._cache: dict[str, PromptTemplate] = {}

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = (_VERSION_FILE.match(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def resolve(self, ref: str) -> PromptTemplate:
        """``name@N`` → that version; ``name`` → its highest version."""
        m = _REF.match(ref)
        if not m:
            raise TemplateError(
                f"prompt reference {ref!r} is not of the form name or name@N "
                "(name: lowercase letters, digits, '-' or '_'; N: 1, 2, ...)",
                file=self.root,
            )
        name, version = m.group(1), m.group(2)
        versions = self.versions(name)
        if not versions:
            raise TemplateError(
                f"no template for prompt {name!r}: expected {self.root / name}/v<N>.j2",
                file=self.root / name,
            )
        n = int(version) if version else versions[-1]
        if n not in versions:
            raise TemplateError(
                f"template file missing for {name}@{n}; versions present: "
                + ", ".join(f"v{v}" for v in versions),
                file=self.root / name / f"v{n}.j2",
            )
        key = f"{name}/v{n}.j2"
        if key not in self._cache:
            self._cache[key] = self._load(name, n, key)
        return self._cache[key]

    def _load(self, name: str, version: int, key: str) -> PromptTemplate:
        path = self.root / key
        front_raw, _ = split_front_matter(read_utf8(path, TemplateError), path)
        try:
            front = FrontMatter.model_validate(front_raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise TemplateError(f"front matter: {err['msg']}", file=path, key=loc) from exc

        chain: list[str] = []
        closure: dict[str, str] = {}
        self._walk(key, closure, chain, top=True)
        root_body, root_file = self._source(chain[-1])
        root_ast = self.env.parse(root_body, chain[-1], root_file)
        blocks = [b.name for b in _top_level_blocks(root_ast)]
        self._check_blocks(blocks, Path(self.root / chain[-1]))
        digest = content_hash([[n, closure[n]] for n in sorted(closure)])
        return PromptTemplate(name, version, path, front, digest, chain, blocks, self)

    def _source(self, key: str) -> tuple[str, str]:
        try:
            body, filename, _ = self._loader.get_source(self.env, key)
        except TemplateNotFound as exc:
            raise TemplateError("template file missing", file=self.root / key) from exc
        return body, filename

    def _walk(self, key: str, closure: dict[str, str], chain: list[str], top: bool) -> None:
        """Collect every referenced template's full source; `chain` follows extends."""
        if key in closure:
            if top:
                raise TemplateError(f"{key} extends itself in a cycle", file=self.root / key)
            return
        path = self.root / key
        try:
            raw = read_utf8(path, TemplateError)
        except FileNotFoundError as exc:
            raise TemplateError("template file missing", file=path) from exc
        closure[key] = raw
        body, filename = self._source(key)
        try:
            ast = self.env.parse(body, key, filename)
            self.env.get_template(key)  # compile now: syntax errors surface before any call
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"template syntax error: {exc.message}", file=path, line=exc.lineno
            ) from exc
        extends = next(iter(ast.find_all(nodes.Extends)), None)
        if top:
            chain.append(key)
        for ref in meta.find_referenced_templates(ast):
            if ref is None:
                raise TemplateError(
                    "extends/include/import must name a template literally, "
                    'e.g. {% extends "capitals/v1.j2" %}',
                    file=path,
                )
            is_parent = (
                top
                and extends is not None
                and isinstance(extends.template, nodes.Const)
                and extends.template.value == ref
            )
            if not (self.root / ref).is_file():
                raise TemplateError(f"referenced template {ref!r} does not exist", file=path)
            self._walk(ref, closure, chain, top=is_parent)

    @staticmethod
    def _check_blocks(blocks: list[str], path: Path) -> None:
        if not blocks:
            raise TemplateError(
                "no message blocks: expected {% block prompt %} or system/user/assistant blocks",
                file=path,
            )
        if "prompt" in blocks and len(blocks) > 1:
            raise TemplateError(
                "a 'prompt' block (raw completion) cannot be combined with other top-level blocks",
                file=path,
            )
        bad = [b for b in blocks if b != "prompt" and not _ROLE_BLOCK.match(b)]
        if bad:
            raise TemplateError(
                f"top-level block(s) {', '.join(bad)} are not messages: expected prompt, "
                "system, user or assistant (optionally numbered, e.g. user_2)",
                file=path,
            )

    def diff(self, ref_a: str, ref_b: str) -> str:
        a, b = self.resolve(ref_a), self.resolve(ref_b)
        return "".join(
            difflib.unified_diff(
                read_utf8(a.path, TemplateError).splitlines(keepends=True),
                read_utf8(b.path, TemplateError).splitlines(keepends=True),
                fromfile=str(a.path),
                tofile=str(b.path),
            )
        )


def _top_level_blocks(ast: nodes.Template) -> list[nodes.Block]:
    """Blocks not nested in another block, in document order."""
    out: list[nodes.Block] = []

    def visit(node: nodes.Node) -> None:
        for child in node.iter_child_nodes():
            if isinstance(child, nodes.Block):
                out.append(child)
            else:
                visit(child)

    visit(ast)
    return out
