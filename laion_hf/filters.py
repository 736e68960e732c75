"""Vectorized filters: a safe expression language, LAION's presets, keyword filters.

Filters compile to :class:`pyarrow.compute.Expression` objects, which run on whole Arrow
batches and prune parquet row groups by their statistics. Expression strings are parsed by
a small recursive-descent parser (never ``eval``)::

    similarity >= 0.28 and punsafe < 0.1 and min(width, height) >= 1024
    language in ('en', 'de') and not (caption is null)

Comparison with a null value is null, and a row whose filter is null is dropped: a row
with no ``punsafe`` does not pass ``punsafe < 0.1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from laion_hf.errors import FilterError


@dataclass(frozen=True)
class Preset:
    """A LAION subset definition: the filter, and where LAION documented it."""

    name: str
    where: str
    description: str
    source: str


_LAION5B = "LAION-5B paper (Schuhmann et al., NeurIPS 2022 Datasets and Benchmarks), Sec. 3"
_AESTHETICS = "laion.ai/blog/laion-aesthetics (LAION-Aesthetics V2 subsets, predictor on ViT-L/14)"
#: LAION's own subsets and thresholds (ECOSYSTEM.md cites them).
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "laion2b-en",
            "similarity >= 0.28",
            "laion2B-en: English pairs with OpenAI ViT-B/32 image-text cosine similarity >= 0.28",
            _LAION5B,
        ),
        Preset(
            "laion-multi",
            "similarity >= 0.26",
            "laion2B-multi: non-English pairs with MCLIP similarity >= 0.26",
            _LAION5B,
        ),
        Preset(
            "laion400m",
            "similarity >= 0.3",
            "LAION-400M: ViT-B/32 similarity >= 0.3",
            "LAION-400M release notes (laion.ai/blog/laion-400-open-dataset)",
        ),
        Preset(
            "high-resolution",
            "width >= 1024 and height >= 1024",
            "LAION-High-Resolution: both sides >= 1024 px",
            "laion.ai/blog/laion-5b (LAION-High-Resolution subset, 170M pairs)",
        ),
        Preset("aesthetics-v2-4.5plus", "aesthetic >= 4.5", "LAION-Aesthetics V2 4.5+", _AESTHETICS),
        Preset("aesthetics-v2-4.75plus", "aesthetic >= 4.75", "LAION-Aesthetics V2 4.75+", _AESTHETICS),
        Preset("aesthetics-v2-5plus", "aesthetic >= 5", "LAION-Aesthetics V2 5+", _AESTHETICS),
        Preset("aesthetics-v2-6plus", "aesthetic >= 6", "LAION-Aesthetics V2 6+", _AESTHETICS),
        Preset("aesthetics-v2-6.25plus", "aesthetic >= 6.25", "LAION-Aesthetics V2 6.25+", _AESTHETICS),
        Preset("aesthetics-v2-6.5plus", "aesthetic >= 6.5", "LAION-Aesthetics V2 6.5+", _AESTHETICS),
        Preset(
            "laion-aesthetic",
            "aesthetic > 7 and punsafe < 0.5 and pwatermark < 0.8",
            "LAION-Aesthetics V1 'laion-aesthetic': V1 score > 7 after punsafe < 0.5 and pwatermark < 0.8",
            "laion.ai/blog/laion-aesthetics (V1, linear head on ViT-B/32 / ViT-L/14)",
        ),
        Preset(
            "laion-art",
            "aesthetic > 8 and punsafe < 0.5 and pwatermark < 0.8",
            "LAION-Aesthetics V1 'laion-art': V1 score > 8 after punsafe < 0.5 and pwatermark < 0.8",
            "laion.ai/blog/laion-aesthetics (V1)",
        ),
        Preset(
            "research-safe",
            "punsafe <= 0.45",
            "Re-LAION-5B research-safe: drops pairs with punsafe > 0.45 (rows with unknown punsafe are dropped too)",
            "laion.ai/blog/relaion-5b (Re-LAION-5B, Aug 2024)",
        ),
        Preset("safe", "punsafe < 0.5", "LAION's NSFW cut: punsafe > 0.5 counted unsafe", _LAION5B),
        Preset(
            "no-watermark", "pwatermark < 0.8", "LAION's watermark cut: pwatermark > 0.8 counted watermarked", _LAION5B
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Look up a preset; an unknown name is a :class:`FilterError` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise FilterError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


# --------------------------------------------------------------------------- parser

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op><=|>=|==|!=|<>|<|>|=|\(|\)|,|\+|-|\*|/)
      | (?P<name>[A-Za-z_][A-Za-z0-9_.]*|`[^`]+`)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "none", "true", "false"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    value: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"cannot parse filter at position {pos}: {text[pos : pos + 20]!r} in {text!r}")
        kind = m.lastgroup
        value = m.group(kind)
        start = m.start(kind)
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        tokens.append(_Tok(kind, value, start))
        pos = m.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


# AST nodes are tuples: ("col", name) ("lit", value) ("cmp", op, a, b) ("and", a, b) ("or", a, b)
# ("not", a) ("in", a, values, negate) ("isnull", a, negate) ("call", fname, args) ("arith", op, a, b)
# ("neg", a)

_FUNCTIONS = {
    "min": (2, None),
    "max": (2, None),
    "abs": (1, 1),
    "len": (1, 1),
    "length": (1, 1),
    "lower": (1, 1),
    "upper": (1, 1),
    "contains": (2, 2),
    "startswith": (2, 2),
    "endswith": (2, 2),
}


MAX_NESTING = 64  # parentheses, `not` and unary minus; `and`/`or` chains of any length are fine
MAX_DEPTH = 200  # of the whole tree, e.g. `a + a + ... + a` (arithmetic is not re-associated)


def _balanced(op: str, nodes: list) -> tuple:
    """``a op b op c ...`` as a balanced tree (``and``/``or`` are associative), so that a chain
    of a thousand terms is ~10 levels deep, not a thousand."""
    while len(nodes) > 1:
        nodes = [(op, *nodes[i : i + 2]) if i + 1 < len(nodes) else nodes[i] for i in range(0, len(nodes), 2)]
    return nodes[0]


def _depth(tree: tuple) -> int:
    """The depth of a parsed tree, computed without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        for part in node[1:]:
            children = part if isinstance(part, list) else [part]
            stack.extend((c, d + 1) for c in children if isinstance(c, tuple))
    return deepest


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, kind: str, value: str | None = None) -> _Tok:
        tok = self.take()
        if tok.kind != kind or (value is not None and tok.value != value):
            want = value or kind
            got = tok.value or "end of expression"
            raise FilterError(f"expected {want!r} at position {tok.pos} but found {got!r} in {self.text!r}")
        return tok

    def at(self, kind: str, *values: str) -> bool:
        tok = self.peek()
        return tok.kind == kind and (not values or tok.value in values)

    def parse(self):
        node = self.or_expr()
        if not self.at("end"):
            tok = self.peek()
            raise FilterError(f"unexpected {tok.value!r} at position {tok.pos} in {self.text!r}")
        return node

    def or_expr(self):
        nodes = [self.and_expr()]
        while self.at("kw", "or"):
            self.take()
            nodes.append(self.and_expr())
        return _balanced("or", nodes)

    def and_expr(self):
        nodes = [self.not_expr()]
        while self.at("kw", "and"):
            self.take()
            nodes.append(self.not_expr())
        return _balanced("and", nodes)

    def not_expr(self):
        if self.at("kw", "not"):
            self.take()
            return ("not", self.nested(self.not_expr))
        return self.comparison()

    def nested(self, parse):
        """Parse one nesting level with ``parse``, refusing expressions nested too deeply."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise FilterError(f"filter expression nested more than {MAX_NESTING} levels deep: {self.text[:80]!r}...")
        try:
            return parse()
        finally:
            self.depth -= 1

    def comparison(self):
        left = self.sum()
        if self.at("op", "<", "<=", ">", ">=", "==", "!=", "<>", "="):
            op = self.take().value
            op = {"=": "==", "<>": "!="}.get(op, op)
            return ("cmp", op, left, self.sum())
        negate = False
        if self.at("kw", "not") and self.tokens[self.i + 1].kind == "kw" and self.tokens[self.i + 1].value == "in":
            self.take()
            negate = True
        if self.at("kw", "in"):
            self.take()
            self.expect("op", "(")
            values = [self.literal()]
            while self.at("op", ","):
                self.take()
                values.append(self.literal())
            self.expect("op", ")")
            return ("in", left, values, negate)
        if self.at("kw", "is"):
            self.take()
            neg = False
            if self.at("kw", "not"):
                self.take()
                neg = True
            tok = self.take()
            if tok.kind != "kw" or tok.value not in ("null", "none"):
                raise FilterError(f"expected 'null' after 'is' at position {tok.pos} in {self.text!r}")
            return ("isnull", left, neg)
        return left

    def literal(self):
        node = self.factor()
        if node[0] == "neg" and node[1][0] == "lit":
            return -node[1][1]
        if node[0] != "lit":
            raise FilterError(f"'in (...)' takes literal values only, in {self.text!r}")
        return node[1]

    def sum(self):
        node = self.term()
        while self.at("op", "+", "-"):
            op = self.take().value
            node = ("arith", op, node, self.term())
        return node

    def term(self):
        node = self.factor()
        while self.at("op", "*", "/"):
            op = self.take().value
            node = ("arith", op, node, self.factor())
        return node

    def factor(self):
        tok = self.take()
        if tok.kind == "number":
            text = tok.value
            return ("lit", float(text) if any(c in text for c in ".eE") else int(text))
        if tok.kind == "string":
            body = tok.value[1:-1]
            return ("lit", re.sub(r"\\(.)", r"\1", body))
        if tok.kind == "kw" and tok.value in ("true", "false"):
            return ("lit", tok.value == "true")
        if tok.kind == "kw" and tok.value in ("null", "none"):
            return ("lit", None)
        if tok.kind == "op" and tok.value == "-":
            return ("neg", self.nested(self.factor))
        if tok.kind == "op" and tok.value == "(":
            node = self.nested(self.or_expr)
            self.expect("op", ")")
            return node
        if tok.kind == "name":
            name = tok.value.strip("`")
            if self.at("op", "("):
                fname = name.lower()
                if fname not in _FUNCTIONS:
                    raise FilterError(
                        f"unknown function {name!r} at position {tok.pos}; known functions: {', '.join(_FUNCTIONS)}"
                    )
                self.take()
                args = [self.sum()]
                while self.at("op", ","):
                    self.take()
                    args.append(self.sum())
                self.expect("op", ")")
                lo, hi = _FUNCTIONS[fname]
                if len(args) < lo or (hi is not None and len(args) > hi):
                    raise FilterError(f"function {fname}() got {len(args)} arguments in {self.text!r}")
                return ("call", fname, args)
            return ("col", name)
        raise FilterError(f"unexpected {tok.value or 'end of expression'!r} at position {tok.pos} in {self.text!r}")


def _columns_of(node) -> set[str]:
    kind = node[0]
    if kind == "col":
        return {node[1]}
    if kind == "lit":
        return set()
    out: set[str] = set()
    for part in node[1:]:
        if isinstance(part, tuple):
            out |= _columns_of(part)
        elif isinstance(part, list):
            for p in part:
                if isinstance(p, tuple):
                    out |= _columns_of(p)
    return out


_CMP = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal, "==": pc.equal, "!=": pc.not_equal}
_ARITH = {"+": pc.add, "-": pc.subtract, "*": pc.multiply, "/": pc.divide}
_UNARY = {
    "abs": pc.abs,
    "len": pc.utf8_length,
    "length": pc.utf8_length,
    "lower": pc.utf8_lower,
    "upper": pc.utf8_upper,
}
_MATCH = {"contains": pc.match_substring, "startswith": pc.starts_with, "endswith": pc.ends_with}


def _compile(node, leaf: Any = None) -> Any:
    """Build the filter from its tree with pyarrow compute functions.

    ``leaf(name)`` gives a column: ``pc.field`` (the default) makes a pyarrow Expression (for
    parquet push-down and row-group pruning); ``table.column`` evaluates the filter directly
    on a table, which skips Acero's per-call overhead on the hot path.
    """
    leaf = leaf or pc.field
    kind = node[0]
    compile_kind = _COMPILERS.get(kind)
    if compile_kind is None:  # pragma: no cover
        raise FilterError(f"cannot compile filter node {kind!r}")
    return compile_kind(node, leaf)


def _negated(expr: Any, negate: bool) -> Any:
    return pc.invert(expr) if negate else expr


def _compile_arith(node, leaf) -> Any:
    _, op, a, b = node
    a, b = _compile(a, leaf), _compile(b, leaf)
    if op == "/":
        a = a.cast(pa.float64())
    return _ARITH[op](a, b)


def _compile_call(node, leaf) -> Any:
    _, fname, args = node
    cargs = [_compile(a, leaf) for a in args]
    if fname == "min":
        return pc.min_element_wise(*cargs)
    if fname == "max":
        return pc.max_element_wise(*cargs)
    if fname in _UNARY:
        return _UNARY[fname](cargs[0])
    pattern = args[1]
    if pattern[0] != "lit" or not isinstance(pattern[1], str):
        raise FilterError(f"{fname}() takes a string literal as its second argument")
    return _MATCH[fname](cargs[0], pattern=pattern[1])


#: node kind -> ``compile(node, leaf)``
_COMPILERS = {
    "col": lambda node, leaf: leaf(node[1]),
    "lit": lambda node, leaf: pa.scalar(node[1]),
    "neg": lambda node, leaf: pc.negate(_compile(node[1], leaf)),
    "cmp": lambda node, leaf: _CMP[node[1]](_compile(node[2], leaf), _compile(node[3], leaf)),
    "and": lambda node, leaf: pc.and_kleene(_compile(node[1], leaf), _compile(node[2], leaf)),
    "or": lambda node, leaf: pc.or_kleene(_compile(node[1], leaf), _compile(node[2], leaf)),
    "not": lambda node, leaf: pc.invert(_compile(node[1], leaf)),
    "in": lambda node, leaf: _negated(pc.is_in(_compile(node[1], leaf), value_set=pa.array(node[2])), node[3]),
    "isnull": lambda node, leaf: _negated(pc.is_null(_compile(node[1], leaf)), node[2]),
    "arith": _compile_arith,
    "call": _compile_call,
}


@dataclass(frozen=True)
class ParsedFilter:
    """A parsed filter: its text, the columns it reads, and the Arrow expression."""

    text: str
    columns: frozenset[str]
    expression: Any  # pc.Expression
    tree: tuple = ()

    def __str__(self) -> str:
        return self.text

    def renamed(self, rename: dict[str, str]) -> Any:
        """The same expression over renamed columns (used to push filters down to sources)."""
        return _compile(self.tree, lambda name: pc.field(rename.get(name, name)))

    def evaluate(self, table: pa.Table) -> Any:
        """The boolean mask of this filter over ``table`` (null where a value is null)."""
        return _compile(self.tree, table.column)


def parse_filter(text: str, known_columns: Iterable[str] | None = None) -> ParsedFilter:
    """Parse an expression string into a :class:`ParsedFilter`.

    With ``known_columns``, a name that is not a column is a :class:`FilterError` listing
    the known columns.
    """
    if not isinstance(text, str) or not text.strip():
        raise FilterError("empty filter expression")
    try:
        tree = _Parser(text).parse()
    except RecursionError:
        raise FilterError(f"filter expression too deeply nested: {text[:80]!r}...") from None
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise FilterError(f"filter expression is {depth} levels deep (at most {MAX_DEPTH}): {text[:80]!r}...")
    columns = _columns_of(tree)
    if known_columns is not None:
        known = list(known_columns)
        unknown = sorted(columns - set(known))
        if unknown:
            raise FilterError(
                f"unknown column(s) {', '.join(map(repr, unknown))} in filter {text!r}; "
                f"known columns: {', '.join(known)}"
            )
    try:
        expression = _compile(tree)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as e:
        raise FilterError(f"invalid filter {text!r}: {e}") from None
    return ParsedFilter(text=text, columns=frozenset(columns), expression=expression, tree=tree)


_KW_OPS = {"min": ">=", "max": "<=", "gt": ">", "lt": "<", "ge": ">=", "le": "<="}


def keyword_filters(**kwargs: Any) -> list[str]:
    """Turn keyword filters into expression strings.

    ``min_similarity=0.28`` -> ``similarity >= 0.28``; ``max_punsafe=0.1`` -> ``punsafe <= 0.1``;
    ``min_size=1024`` -> ``min(width, height) >= 1024``; ``language="en"`` or
    ``language=["en", "de"]`` -> ``language in ('en', 'de')``.
    """
    out = []
    for name, value in kwargs.items():
        if value is None:
            continue
        prefix, _, column = name.partition("_")
        if name == "min_size":
            out.append(f"min(width, height) >= {value!r}")
        elif name == "max_size":
            out.append(f"max(width, height) <= {value!r}")
        elif prefix in _KW_OPS and column:
            out.append(f"{column} {_KW_OPS[prefix]} {value!r}")
        elif isinstance(value, (list, tuple, set)):
            values = ", ".join(repr(v) for v in value)
            out.append(f"{name} in ({values})")
        else:
            out.append(f"{name} == {value!r}")
    return out


@dataclass
class FilterSpec:
    """Presets, expression strings, pyarrow expressions and keyword filters, ANDed.

    ``expression`` runs on canonical columns; ``parsed`` keeps the parsed strings so the
    filter can be pushed down to a source's own column names; ``descriptions`` are the
    human-readable texts (for stats and dataset cards).
    """

    expression: Any | None
    parsed: list[ParsedFilter]
    raw: list[Any]
    descriptions: list[str]
    columns: frozenset[str]

    def apply(self, table: pa.Table) -> pa.Table:
        """Keep the rows for which every filter is true (null counts as false)."""
        if self.expression is None:
            return table
        if self.raw:
            return apply_filter(table, self.expression)
        try:
            mask = None
            for p in self.parsed:
                m = p.evaluate(table)
                mask = m if mask is None else pc.and_kleene(mask, m)
            if isinstance(mask, (pa.Scalar,)):
                mask = pa.array([mask.as_py()] * table.num_rows, pa.bool_())
            return table.filter(mask, null_selection_behavior="drop")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, KeyError) as e:
            raise FilterError(
                f"filter {self.descriptions} cannot be applied to columns {table.column_names}: {e}"
            ) from None

    def pushdown(self, rename: dict[str, str]) -> Any | None:
        """The parsed part of the filter over source columns (None when nothing can be pushed)."""
        exprs = [p.renamed(rename) for p in self.parsed if p.columns <= set(rename)]
        if not exprs:
            return None
        out = exprs[0]
        for e in exprs[1:]:
            out = out & e
        return out


def combine_filters(
    where: str | Sequence[str] | Any | None = None,
    preset: str | Sequence[str] | None = None,
    known_columns: Iterable[str] | None = None,
    **kwargs: Any,
) -> FilterSpec:
    """AND together presets, expression strings, pyarrow expressions and keyword filters."""
    known = list(known_columns) if known_columns is not None else None
    parsed: list[ParsedFilter] = []
    raw: list[Any] = []
    texts: list[str] = []
    presets = [preset] if isinstance(preset, str) else list(preset or [])
    for name in presets:
        p = get_preset(name)
        parsed.append(parse_filter(p.where, known))
        texts.append(f"preset {p.name}: {p.where}")
    if where is None:
        wheres: list[Any] = []
    elif isinstance(where, (str, pc.Expression)):
        wheres = [where]
    else:
        wheres = list(where)
    wheres += keyword_filters(**kwargs)
    columns: set[str] = set()
    for w in wheres:
        if isinstance(w, pc.Expression):
            raw.append(w)
            texts.append(str(w))
            columns |= set(known or [])  # a raw expression may read any column
        else:
            parsed.append(parse_filter(w, known))
            texts.append(parsed[-1].text)
    exprs = [p.expression for p in parsed] + raw
    for p in parsed:
        columns |= p.columns
    combined = None
    for e in exprs:
        combined = e if combined is None else combined & e
    return FilterSpec(combined, parsed, raw, texts, frozenset(columns))


def apply_filter(table: pa.Table, expression: Any | None) -> pa.Table:
    """Keep the rows of ``table`` for which ``expression`` is true (null counts as false)."""
    if expression is None:
        return table
    try:
        return table.filter(expression)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise FilterError(f"filter {expression} cannot be applied to columns {table.column_names}: {e}") from None
