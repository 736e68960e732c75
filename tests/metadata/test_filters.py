import pyarrow as pa
import pytest

from laion_hf.errors import FilterError
from laion_hf.filters import PRESETS, apply_filter, combine_filters, get_preset, keyword_filters, parse_filter
from laion_hf.schema import CANONICAL_COLUMNS, normalize_table


def _table(**cols):
    n = len(next(iter(cols.values())))
    base = {"url": [f"u{i}" for i in range(n)]}
    base.update(cols)
    return normalize_table(pa.table(base))


def _kept(expr_text, table):
    return apply_filter(table, parse_filter(expr_text, table.column_names).expression)


def test_issue_example_expression():
    t = _table(
        similarity=[0.30, 0.30, 0.27, 0.30, 0.30],
        punsafe=[0.05, 0.2, 0.05, 0.05, 0.05],
        width=[2000, 2000, 2000, 1000, 2000],
        height=[1100, 1100, 1100, 2000, 1100],
        language=["en", "en", "en", "de", "fr"],
    )
    kept = _kept("similarity >= 0.28 and punsafe < 0.1 and min(width, height) >= 1024 and language in ('en', 'de')", t)
    assert kept.column("url").to_pylist() == ["u0"]


def test_precedence_not_or_parentheses_and_arithmetic():
    t = _table(similarity=[0.1, 0.5, 0.3], width=[10, 20, 30], height=[10, 10, 30], caption=["a cat", None, "dog"])
    assert _kept("similarity > 0.4 or width == 10", t).column("url").to_pylist() == ["u0", "u1"]
    assert _kept("not (similarity > 0.4 or width == 10)", t).column("url").to_pylist() == ["u2"]
    assert _kept("width / height >= 2", t).column("url").to_pylist() == ["u1"]
    assert _kept("width * 2 - 10 = 50", t).column("url").to_pylist() == ["u2"]
    assert _kept("caption is null", t).column("url").to_pylist() == ["u1"]
    assert _kept("caption is not null and contains(lower(caption), 'cat')", t).column("url").to_pylist() == ["u0"]
    assert _kept("len(caption) = 3", t).column("url").to_pylist() == ["u2"]
    assert _kept("language not in ('en')", _table(language=["en", "de"])).column("url").to_pylist() == ["u1"]


def test_null_scores_do_not_pass_comparisons():
    t = _table(punsafe=[None, 0.01])
    assert _kept("punsafe < 0.1", t).column("url").to_pylist() == ["u1"]


def test_unknown_column_lists_known_columns():
    with pytest.raises(FilterError) as e:
        parse_filter("simlarity >= 0.28", CANONICAL_COLUMNS)
    msg = str(e.value)
    assert "'simlarity'" in msg and "known columns: key, url, caption" in msg


@pytest.mark.parametrize(
    "bad",
    [
        "similarity >=",
        "similarity >= 0.28 and",
        "(width > 1",
        "width > 1)",
        "__import__('os').system('x')",
        "width ; 1",
        "foo(width)",
        "",
    ],
)
def test_malformed_expressions_are_filter_errors(bad):
    with pytest.raises(FilterError):
        parse_filter(bad, CANONICAL_COLUMNS)


def test_parser_never_evaluates_python():
    # a name that would be a Python builtin is just an unknown column
    with pytest.raises(FilterError, match="unknown column"):
        parse_filter("open > 1", CANONICAL_COLUMNS)


# exact thresholds: the value at the threshold and the next float on the other side
@pytest.mark.parametrize(
    "preset,column,threshold,inclusive",
    [
        ("laion2b-en", "similarity", 0.28, True),
        ("laion-multi", "similarity", 0.26, True),
        ("laion400m", "similarity", 0.3, True),
        ("aesthetics-v2-5plus", "aesthetic", 5.0, True),
        ("aesthetics-v2-6plus", "aesthetic", 6.0, True),
        ("aesthetics-v2-6.5plus", "aesthetic", 6.5, True),
        ("research-safe", "punsafe", 0.45, True),
    ],
)
def test_single_column_presets_exact_threshold(preset, column, threshold, inclusive):
    import numpy as np

    below = float(np.nextafter(threshold, -np.inf))
    above = float(np.nextafter(threshold, np.inf))
    t = _table(**{column: [below, threshold, above]})
    spec = combine_filters(preset=preset, known_columns=t.column_names)
    kept = apply_filter(t, spec.expression).column(column).to_pylist()
    if column == "punsafe":  # upper bound: <= 0.45
        assert kept == [below, threshold]
    else:
        assert kept == [threshold, above]


def test_high_resolution_needs_both_sides():
    t = _table(width=[1024, 1023, 4000, 1024], height=[1024, 4000, 1023, 5000])
    spec = combine_filters(preset="high-resolution", known_columns=t.column_names)
    assert apply_filter(t, spec.expression).column("url").to_pylist() == ["u0", "u3"]


def test_laion_aesthetic_v1_thresholds():
    t = _table(
        aesthetic=[7.0, 7.01, 7.01, 7.01, 7.01],
        punsafe=[0.0, 0.0, 0.5, 0.49, 0.0],
        pwatermark=[0.0, 0.0, 0.0, 0.0, 0.8],
    )
    spec = combine_filters(preset="laion-aesthetic", known_columns=t.column_names)
    # > 7 strictly; punsafe < 0.5 strictly; pwatermark < 0.8 strictly
    assert apply_filter(t, spec.expression).column("url").to_pylist() == ["u1", "u3"]


def test_every_preset_documents_its_source():
    for p in PRESETS.values():
        assert p.source and p.description and parse_filter(p.where, CANONICAL_COLUMNS)
    assert set(PRESETS) >= {
        "laion2b-en",
        "laion-multi",
        "laion400m",
        "high-resolution",
        "aesthetics-v2-5plus",
        "aesthetics-v2-6plus",
        "aesthetics-v2-6.5plus",
        "laion-aesthetic",
        "research-safe",
    }


def test_unknown_preset_lists_known():
    with pytest.raises(FilterError, match="unknown preset 'laion5b'.*laion2b-en"):
        get_preset("laion5b")


def test_keyword_filters_and_combination_with_pyarrow_expression():
    import pyarrow.compute as pc

    assert keyword_filters(min_similarity=0.28, max_punsafe=0.1, language=["en", "de"], min_size=512) == [
        "similarity >= 0.28",
        "punsafe <= 0.1",
        "language in ('en', 'de')",
        "min(width, height) >= 512",
    ]
    t = _table(similarity=[0.3, 0.3, 0.2], language=["en", "fr", "en"], width=[600, 600, 600], height=[600] * 3)
    spec = combine_filters(
        where=pc.field("width") > 500, known_columns=t.column_names, min_similarity=0.28, language=["en"]
    )
    assert apply_filter(t, spec.expression).column("url").to_pylist() == ["u0"]
    assert len(spec.descriptions) == 3


@pytest.mark.parametrize(
    "text",
    [
        "similarity >= 0.28 and punsafe < 0.1 and min(width, height) >= 1024 and language in ('en', 'de')",
        "not (similarity > 0.4 or width == 10) or caption is null",
        "width / height >= 2 and len(caption) > 3 and startswith(lower(caption), 'a')",
        "-similarity < -0.3 and language not in ('fr')",
    ],
)
def test_direct_evaluation_equals_the_pyarrow_expression(text):
    """The hot path evaluates the tree with pyarrow compute; push-down uses the Expression:
    both must keep the same rows."""
    t = _table(
        similarity=[0.1, 0.5, 0.3, None, 0.29],
        width=[10, 2048, 30, 4000, 1100],
        height=[10, 1024, 30, 1024, 1100],
        caption=["a cat", None, "dog", "a big one", "an apple"],
        language=["en", "de", "fr", None, "en"],
        punsafe=[0.0, 0.05, 0.5, 0.0, 0.01],
    )
    spec = combine_filters(text, known_columns=t.column_names)
    assert spec.apply(t).equals(apply_filter(t, spec.expression))


def test_a_thousand_or_terms_work_and_deep_nesting_blames_the_expression(tmp_path, capsys):
    """Issue 11 item 12: no RecursionError reported as an unreadable data file."""
    import pyarrow.parquet as pq

    from laion_hf.cli import main
    from laion_hf.synth import synthesize

    synthesize(500, tmp_path / "m", seed=3)
    terms = " or ".join(["similarity == -1.0"] * 999 + ["similarity == 0.5"])
    wide = f"({terms}) or similarity >= 0.3"
    assert main(["filter", str(tmp_path / "m"), "--where", wide, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert (
        main(
            [
                "filter",
                str(tmp_path / "m"),
                "--where",
                "similarity >= 0.3 or similarity == 0.5",
                "--out",
                str(tmp_path / "b"),
                "--no-progress",
            ]
        )
        == 0
    )
    a, b = pq.read_table(tmp_path / "a" / "part-00000.parquet"), pq.read_table(tmp_path / "b" / "part-00000.parquet")
    assert a.num_rows == b.num_rows > 0 and a.column("key").equals(b.column("key"))
    capsys.readouterr()
    deep = "(" * 1000 + "similarity > 0" + ")" * 1000
    assert main(["filter", str(tmp_path / "m"), "--where", deep, "--out", str(tmp_path / "c"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "nested more than" in err and "parquet" not in err and "Traceback" not in err
    chain = " + ".join(["similarity"] * 1000) + " > 1"
    assert main(["filter", str(tmp_path / "m"), "--where", chain, "--out", str(tmp_path / "c"), "--no-progress"]) == 1
    assert "levels deep" in capsys.readouterr().err
